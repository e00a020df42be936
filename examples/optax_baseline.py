"""A plain JAX + Optax training loop on noisy digits: an MLP, no Flax.

``optax_baseline.py`` trains without stochastic resetting and ``optax_resetting.py`` with it;
they differ only where resetting needs them to (the README shows the diff). Run either:

    python examples/optax_resetting.py --num-steps 2000 --seed 0
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from digits import load_noisy_digits

tx = optax.sgd(0.05, momentum=0.9)


def init_params(key, sizes=(64, 256, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [{"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2 / m), "b": jnp.zeros(n)}
            for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]


def predict(params, images):
    x = images.reshape(images.shape[0], -1)
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


@jax.jit
def loss_fn(params, images, labels):
    return optax.softmax_cross_entropy_with_integer_labels(predict(params, images), labels).mean()


@jax.jit
def accuracy(params, images, labels):
    return jnp.mean(jnp.argmax(predict(params, images), -1) == labels)


@jax.jit
def train_step(params, opt_state, images, labels):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, loss


def main(num_steps, batch_size=32, seed=0):
    train, val, test = load_noisy_digits(seed=seed)
    params = init_params(jax.random.key(seed))
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    for step in range(num_steps):
        idx = rng.choice(len(train["label"]), batch_size, replace=False)
        params, opt_state, loss = train_step(
            params, opt_state, train["image"][idx], train["label"][idx])
        if step % 200 == 0:
            print(f"step: {step:5d}, train_loss: {loss:.4f}, "
                  f"val_loss: {loss_fn(params, val['image'], val['label']):.4f}")
    test_accuracy = accuracy(params, test["image"], test["label"])
    print(f"test_accuracy: {test_accuracy * 100:.2f}")
    return float(test_accuracy)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.num_steps, seed=args.seed)
