"""Training and evaluation throughput (images/s) of the trainer's ResNet steps.

Runs the trainer's own fused step (on-device batch sampling, augmentation, forward, backward,
resetting update, BatchNorm reset) on a synthetic CIFAR-shaped source — random uint8 images, the
Flax fake-data benchmark convention, never used for accuracy — over all local devices with the
default sharded path. Evaluation is the trainer's batched eval pass.

    python benchmarks/throughput.py [--batch-size 256] [--steps 20] [--models resnet18 resnet34]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resetax import models
from resetax.experiment import optimization, steps, train_state
from resetax.experiment.config import get_config


def synthetic_data(num_train, num_eval, mesh):
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    labels = lambda n: rng.integers(0, 10, n, dtype=np.int32)  # noqa: E731
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    ones = np.ones(num_eval, np.float32)
    return train_state.DeviceData(
        *jax.device_put((images(num_train), labels(num_train)), replicated),
        *jax.device_put((images(num_eval), labels(num_eval), ones), sharded),
        *jax.device_put((images(num_eval), labels(num_eval), ones), sharded),
    )


def measure(model_name, args, mesh, data):
    config = get_config("setting2-cifar10", model=model_name, batch_size=args.batch_size,
                        num_steps=10**6, eval_every=10**6, checkpoint_every=10**6)
    model = models.get_model(model_name, 10)
    sample = jnp.zeros((1, 32, 32, 3), jnp.uint8)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), sample)["params"])
    tx = optimization.make_optimizer(config, params)
    replicated = NamedSharding(mesh, P())
    # Step 0 evaluates; start at step 1 so that the timed chunks only train.
    state = train_state.init_state(config, model, tx, sample, num_train=args.num_train)._replace(
        step=jnp.ones([], jnp.int32))
    state = jax.device_put(state, replicated)
    loss_fn, _ = optimization.make_loss(config, args.num_train, 10)
    chunk = steps.make_steps(config, model, tx, loss_fn, args.num_train,
                             batch_sharding=NamedSharding(mesh, P("data")),
                             eval_batch_size=args.eval_batch_size,
                             unroll=jax.default_backend() == "cpu").chunk
    run = jax.jit(chunk, static_argnums=2, donate_argnums=0, out_shardings=replicated)
    state, _ = run(state, data, args.steps)  # compile and warm up
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, _ = run(state, data, args.steps)
    jax.block_until_ready(state)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)

    evaluate = jax.jit(steps.make_evaluate(model, args.eval_batch_size))
    jax.block_until_ready(evaluate(state.params, state.batch_stats, data.val_x, data.val_y,
                                   data.val_weight))
    start = time.perf_counter()
    jax.block_until_ready(evaluate(state.params, state.batch_stats, data.val_x, data.val_y,
                                   data.val_weight))
    eval_rate = len(data.val_y) / (time.perf_counter() - start)
    print(f"| {model_name} | {args.batch_size} | {train_rate:,.0f} | {eval_rate:,.0f} |",
          flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-eval", type=int, default=10_000)
    parser.add_argument("--eval-batch-size", type=int, default=1000)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet34"])
    args = parser.parse_args()
    devices = jax.devices()
    print(f"devices: {len(devices)}x {devices[0].device_kind}, jax {jax.__version__}")
    mesh = Mesh(np.array(devices), ("data",))
    data = synthetic_data(args.num_train, args.num_eval, mesh)
    print("| model | global batch | train images/s | eval images/s |")
    print("|---|---|---|---|")
    for name in args.models:
        measure(name, args, mesh, data)


if __name__ == "__main__":
    main()
