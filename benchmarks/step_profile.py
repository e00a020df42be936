"""Where a step of the ``quick`` preset's training goes, on the default backend.

Times the trainer's own functions on one device: a train step dispatched on its own (the CPU
default) and inside ``lax.scan`` (the accelerator default), the evaluation of the validation and
test sets, the bare forward and backward pass of the model, and the pieces of a step around it:
drawing an epoch's permutation of the training examples (which a step used to do every time),
the resetting update, the distance to the checkpoint and the best-model copy.

    python benchmarks/step_profile.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax.data import batch_indices_at_step
from resetax.diagnostics import distance_to_checkpoint
from resetax.experiment import build, steps
from resetax.experiment.config import get_config


def per_call_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    config = get_config("quick", num_devices=1, dispatch="step")
    inputs = build.load_inputs(config)
    data = inputs.data
    experiment = build.setup(config, inputs)
    # Step 1: not the first step of an epoch, where the epoch's permutation is drawn.
    state = jax.device_put(experiment.init_state._replace(step=jnp.int32(1)))
    model, tx, num_train = inputs.model, inputs.tx, len(data.train)
    run_steps = steps.make_steps(config, model, tx, inputs.loss_fn, num_train)
    train_step = jax.jit(run_steps.train)
    missing = jax.device_put(steps.Evaluation.missing())
    chunk = jax.jit(run_steps.chunk, static_argnums=2)
    eval_step = jax.jit(run_steps.evaluate)
    data_on_device = experiment.placement.place_data(data)
    x, y = data_on_device.train_x[:32], data_on_device.train_y[:32]

    def loss(params, batch_stats):
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated

    checkpoint = resetax.find_resetting_state(state.opt_state).checkpoint
    grads = jax.tree.map(jnp.ones_like, state.params)
    key = jax.random.wrap_key_data(state.key)
    n = args.repeats
    rows = [
        ("train step, one call per step", per_call_ms(
            lambda s: train_step(s, data_on_device, missing)[0], state, repeats=n)),
        ("train step inside lax.scan (per step; 20-step chunks, evaluation included)",
         per_call_ms(lambda s: chunk(s, data_on_device, 20)[0], state, repeats=n // 20) / 20),
        ("evaluation: 400 validation + 1000 test examples", per_call_ms(
            eval_step, state, data_on_device, repeats=max(n // 10, 1))),
        ("bare forward + backward, batch 32", per_call_ms(
            jax.jit(jax.value_and_grad(loss, has_aux=True)), state.params, state.batch_stats,
            repeats=n)),
        ("a permutation of the 3,600 training examples", per_call_ms(
            jax.jit(lambda k, s: batch_indices_at_step(k, s, num_train, 32)), key, state.step,
            repeats=n)),
        ("the resetting update and apply_updates", per_call_ms(
            jax.jit(lambda g, o, p: resetax.apply_updates(
                p, *tx.update(g, o, p, value=jnp.nan))), grads, state.opt_state, state.params,
            repeats=n)),
        ("distance to the checkpoint", per_call_ms(
            jax.jit(lambda p, c: distance_to_checkpoint(p, c).overall), state.params, checkpoint,
            repeats=n)),
        ("best-model copy (a where over params and batch stats)", per_call_ms(
            jax.jit(lambda s, v: steps.track_best(s, v)), state, jnp.float32(0.5), repeats=n)),
    ]
    device = jax.devices()[0]
    print(f"device: {device.platform}:{device.device_kind}, jax {jax.__version__}")
    print("| part | ms per call |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
