"""Stochastic resetting in a data-parallel step: jit over a Mesh of every local device.

The optax example's MLP on noisy digits, with the batch sharded across the devices and the
parameters, optimizer state and resetting state replicated. Under jit the loss and the
validation value are global means, so every device takes the same reset decision from the same
key in the replicated state. On a CPU, simulate devices to try it:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/data_parallel.py
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from digits import load_noisy_digits
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import resetax

NO_MEASUREMENT = jnp.float32(jnp.nan)
tx = resetax.stochastic_resetting(optax.sgd(0.05, momentum=0.9), reset_prob=0.03, key=0,
                                  patience=300)


def init_params(key, sizes=(64, 256, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2 / m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def predict(params, images):
    x = images.reshape(images.shape[0], -1)
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def loss_fn(params, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(predict(params, images), labels).mean()


def main(num_steps, batch_size=32, seed=0):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    if batch_size % mesh.size:
        raise ValueError(f"batch_size ({batch_size}) must be divisible by the {mesh.size} devices")

    @jax.jit
    def train_step(params, opt_state, images, labels, val_loss):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params, value=val_loss)
        return resetax.apply_updates(params, updates, opt_state), opt_state, loss

    evaluate = jax.jit(loss_fn)
    accuracy = jax.jit(lambda p, x, y: jnp.mean(jnp.argmax(predict(p, x), -1) == y))

    train, val, test = load_noisy_digits(seed=seed)
    params = jax.device_put(init_params(jax.random.key(seed)), replicated)
    opt_state = jax.device_put(tx.init(params), replicated)
    val = jax.device_put(val, replicated)
    rng = np.random.default_rng(seed)
    for step in range(num_steps):
        idx = rng.choice(len(train["label"]), batch_size, replace=False)
        images, labels = jax.device_put((train["image"][idx], train["label"][idx]), batch_sharded)
        val_loss = evaluate(params, val["image"], val["label"]) if step % 10 == 0 else (
            NO_MEASUREMENT)
        params, opt_state, loss = train_step(params, opt_state, images, labels, val_loss)
        if step % 500 == 0:
            print(f"step: {step:5d}, train_loss: {loss:.4f}, devices: {mesh.size}")
    state = resetax.find_resetting_state(opt_state)
    assert state.num_resets.sharding.is_fully_replicated  # one decision, on every device
    test_accuracy = accuracy(params, test["image"], test["label"])
    print(f"resets: {int(state.num_resets)}")
    print(f"test_accuracy: {test_accuracy * 100:.2f}")
    return float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.num_steps, seed=args.seed)
