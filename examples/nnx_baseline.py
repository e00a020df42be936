"""Flax NNX on noisy digits, in the idiom of Flax's NNX MNIST tutorial, with BatchNorm.

``nnx_baseline.py`` trains without stochastic resetting and ``nnx_resetting.py`` with it; they
differ only where resetting needs them to (the README shows the diff). Run either:

    python examples/nnx_resetting.py --num-steps 2000 --seed 0
"""

import argparse

import numpy as np
import optax
from digits import load_noisy_digits
from flax import nnx


class CNN(nnx.Module):
    """A simple CNN with BatchNorm."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.linear1 = nnx.Linear(4 * 4 * 32, 128, rngs=rngs)
        self.linear2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.linear1(x))
        return self.linear2(x)


def loss_fn(model: CNN, batch):
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits=logits, labels=batch["label"]).mean()
    return loss, logits


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, metrics: nnx.MultiMetric, batch):
    """Train for a single step."""
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    optimizer.update(model, grads)


@nnx.jit
def eval_step(model: CNN, metrics: nnx.MultiMetric, batch):
    loss, logits = loss_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])


def main(num_steps, batch_size=32, eval_every=200, seed=0):
    train, val, test = load_noisy_digits(seed=seed)
    model = CNN(rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    metrics = nnx.MultiMetric(
        accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    rng = np.random.default_rng(seed)
    for step in range(num_steps):
        idx = rng.choice(len(train["label"]), batch_size, replace=False)
        model.train()  # BatchNorm uses and updates the batch statistics
        train_step(model, optimizer, metrics, {k: v[idx] for k, v in train.items()})
        if step % eval_every == 0 or step == num_steps - 1:
            train_metrics = metrics.compute()
            metrics.reset()
            model.eval()  # BatchNorm uses its running averages
            eval_step(model, metrics, val)
            val_metrics = metrics.compute()
            metrics.reset()
            print(f"step: {step:5d}, train_loss: {train_metrics['loss']:.4f}, "
                  f"train_accuracy: {train_metrics['accuracy'] * 100:.2f}, "
                  f"val_loss: {val_metrics['loss']:.4f}")
    model.eval()
    eval_step(model, metrics, test)
    test_accuracy = metrics.compute()["accuracy"]
    print(f"test_accuracy: {test_accuracy * 100:.2f}")
    return float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.num_steps, seed=args.seed)
