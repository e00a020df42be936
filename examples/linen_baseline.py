"""Flax linen on noisy digits, in the idiom of Flax's MNIST example (TrainState, BatchNorm).

``linen_baseline.py`` trains without stochastic resetting and ``linen_resetting.py`` with it; they
differ only where resetting needs them to (the README shows the diff). Run either:

    python examples/linen_resetting.py --num-epochs 60 --seed 0
"""

import argparse
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from digits import load_noisy_digits
from flax.training import train_state


class CNN(nn.Module):
    """A simple CNN with BatchNorm."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(features=32, kernel_size=(3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x)
        x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))  # flatten
        x = nn.Dense(features=128)(x)
        x = nn.relu(x)
        return nn.Dense(features=10)(x)


class TrainState(train_state.TrainState):
    batch_stats: Any


@jax.jit
def apply_model(state, images, labels):
    """Computes gradients, the new BatchNorm statistics, loss and accuracy for a single batch."""

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, images, train=True,
            mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, updates["batch_stats"])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (logits, batch_stats)), grads = grad_fn(state.params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return grads, batch_stats, loss, accuracy


@jax.jit
def update_model(state, grads, batch_stats):
    return state.apply_gradients(grads=grads, batch_stats=batch_stats)


@jax.jit
def evaluate(state, images, labels):
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def train_epoch(state, train_ds, batch_size, rng):
    """Train for a single epoch."""
    steps_per_epoch = len(train_ds["image"]) // batch_size
    perms = rng.permutation(len(train_ds["image"]))[: steps_per_epoch * batch_size]
    epoch_loss, epoch_accuracy = [], []
    for perm in perms.reshape((steps_per_epoch, batch_size)):
        grads, batch_stats, loss, accuracy = apply_model(
            state, train_ds["image"][perm], train_ds["label"][perm])
        state = update_model(state, grads, batch_stats)
        epoch_loss.append(loss)
        epoch_accuracy.append(accuracy)
    return state, np.mean(epoch_loss), np.mean(epoch_accuracy)


def create_train_state(rng, learning_rate, momentum):
    """Creates initial `TrainState`."""
    variables = CNN().init(rng, jnp.ones([1, 8, 8, 1]), train=False)
    tx = optax.sgd(learning_rate, momentum)
    return TrainState.create(
        apply_fn=CNN().apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"])


def train_and_evaluate(num_epochs, batch_size=32, learning_rate=0.05, momentum=0.9, seed=0):
    """Trains on noisy digits and returns the final state and its clean test accuracy."""
    train_ds, val_ds, test_ds = load_noisy_digits(seed=seed)
    rng = np.random.default_rng(seed)
    state = create_train_state(jax.random.key(seed), learning_rate, momentum)
    for epoch in range(1, num_epochs + 1):
        state, train_loss, train_accuracy = train_epoch(state, train_ds, batch_size, rng)
        val_loss, _ = evaluate(state, val_ds["image"], val_ds["label"])
        print(f"epoch: {epoch:3d}, train_loss: {train_loss:.4f}, "
              f"train_accuracy: {train_accuracy * 100:.2f}, val_loss: {val_loss:.4f}")
    _, test_accuracy = evaluate(state, test_ds["image"], test_ds["label"])
    print(f"test_accuracy: {test_accuracy * 100:.2f}")
    return state, float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_and_evaluate(args.num_epochs, seed=args.seed)
