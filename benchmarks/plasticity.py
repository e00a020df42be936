"""Does resetting restore plasticity? A warm-up on random labels, then the real task, on MNIST-1D.

A network first trained to memorize random labels learns the true labels afterwards to 100 %
training accuracy but generalizes worse than a freshly initialized one trained on them for the
same number of steps: the warm start has lost plasticity (the warm-starting gap of Ash &
Adams 2020, here from a warm-up on random labels). Each method below trains an MLP
(40-256-256-10, ReLU, Adam 1e-3, batch 128) for ``--warmup-steps`` on the training inputs with
uniformly random labels, then for ``--steps`` on the true labels, with the plasticity
transformation wrapping Adam through both phases; "fresh network" trains only the second
phase. It prints the test accuracy at the end over ``--seeds`` seeds (each its own
initialization, random labels, batches and reset keys, run together with ``vmap``):

    python benchmarks/plasticity.py [--seeds 5] [--warmup-steps 3000] [--steps 1500] \
        [--plot benchmarks/plasticity.png]
    python benchmarks/plasticity.py --overhead [--chunk 200] [--repeats 41]  # a step's time


The boundary-aligned methods reset at the last warm-up update (``every=--warmup-steps``, which
recurs only if ``--steps`` is at least ``--warmup-steps``); ReDo checks every 1000 updates through
both phases, as the paper does.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import resetax
from resetax import data

HIDDEN = 256
BATCH = 128
LR = 1e-3
EVAL_EVERY = 100


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.relu(nn.Dense(HIDDEN)(x))
            self.sow("intermediates", f"h{i}", x)
        return nn.Dense(10)(x)


UNITS = {
    "h0": resetax.UnitWeights(incoming=["Dense_0/kernel", "Dense_0/bias"],
                              outgoing=["Dense_1/kernel"]),
    "h1": resetax.UnitWeights(incoming=["Dense_1/kernel", "Dense_1/bias"],
                              outgoing=["Dense_2/kernel"]),
}


def methods(warmup_steps: int, net: nn.Module, x: jax.Array) -> dict:
    """Name -> (optimizer factory of a seed's key, whether the warm-up phase runs, whether the
    optimizer is plain Adam, applied with ``optax.apply_updates``)."""
    init_fn = lambda key: net.init(key, x[:1])["params"]  # noqa: E731
    adam = optax.with_extra_args_support(optax.adam(LR))
    boundary = dict(every=warmup_steps)
    return {
        "no reset": (lambda key: adam, True, True),
        "fresh network": (lambda key: adam, False, True),
        "reset_to_init, last layer": (lambda key: resetax.reset_to_init(
            adam, init_fn, key=key, mask=r"^Dense_2/", **boundary), True, False),
        "reset_to_init, last 2 layers": (lambda key: resetax.reset_to_init(
            adam, init_fn, key=key, mask=r"^Dense_[12]/", **boundary), True, False),
        "shrink_and_perturb 0.3, 0.1": (lambda key: resetax.shrink_and_perturb(
            adam, init_fn, key=key, shrink=0.3, perturb=0.1, reset_inner_state=True,
            **boundary), True, False),
        "recycle_dormant_units 0.1": (lambda key: resetax.recycle_dormant_units(
            adam, init_fn, UNITS, key=key, threshold=0.1, every=1000), True, False),
    }


def make_step(tx, plain, net, x):
    """One training step ``((params, opt_state), key, labels) -> (params, opt_state)``."""

    def step(carry, key, labels):
        params, state = carry
        idx = jax.random.randint(key, (BATCH,), 0, x.shape[0])
        (_, acts), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, net, x[idx], labels[idx])
        updates, state = tx.update(grads, state, params, activations=acts)
        if plain:
            params = optax.apply_updates(params, updates)
        else:
            params = resetax.apply_reset_updates(params, updates, state)
        return params, state

    return step


def loss_fn(params, net, xb, yb):
    logits, state = net.apply({"params": params}, xb, mutable=["intermediates"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, resetax.unit_activations(state)


def run_method(make_tx, warm, plain, net, train, test, seeds, warmup_steps, steps):
    """Test accuracy every ``EVAL_EVERY`` steps of the real task, and the dormant fraction."""
    x, y = train
    x_test, y_test = test

    def one_seed(seed):
        k_init, k_labels, k_batches, k_tx = jax.random.split(jax.random.key(seed), 4)
        params = net.init(k_init, x[:1])["params"]
        tx = make_tx(k_tx)
        step = make_step(tx, plain, net, x)
        random_labels = jax.random.randint(k_labels, y.shape, 0, 10)
        k_warm, k_real = jax.random.split(k_batches)
        carry = (params, tx.init(params))
        if warm:
            carry, _ = jax.lax.scan(lambda c, k: (step(c, k, random_labels), None), carry,
                                    jax.random.split(k_warm, warmup_steps))

        def chunk(carry, keys):
            carry, _ = jax.lax.scan(lambda c, k: (step(c, k, y), None), carry, keys)
            logits = net.apply({"params": carry[0]}, x_test)
            return carry, (logits.argmax(-1) == y_test).mean()

        keys = jax.random.split(k_real, steps).reshape(steps // EVAL_EVERY, EVAL_EVERY)
        (params, _), curve = jax.lax.scan(chunk, carry, keys)
        train_acc = (net.apply({"params": params}, x).argmax(-1) == y).mean()
        _, acts = loss_fn(params, net, x, y)
        dead = jnp.mean(jnp.stack([(a.max(0) <= 0).mean() for a in acts.values()]))
        return curve, train_acc, dead

    return jax.jit(jax.vmap(one_seed))(jnp.arange(seeds))


def compiled_steps(make_tx, plain, net, train, steps):
    """A compiled run of ``steps`` training steps of one seed, and its arguments."""
    x, y = train
    params = net.init(jax.random.key(0), x[:1])["params"]
    tx = make_tx(jax.random.key(1))
    step = make_step(tx, plain, net, x)
    run = jax.jit(lambda carry, keys: jax.lax.scan(
        lambda c, k: (step(c, k, y), None), carry, keys)[0])
    args = (params, tx.init(params)), jax.random.split(jax.random.key(2), steps)
    jax.block_until_ready(run(*args))
    return run, args


def mean_sem(values: np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, np.float64)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--warmup-steps", type=int, default=3000)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--plot", default=None, help="write a PNG of the test-accuracy curves")
    parser.add_argument("--overhead", action="store_true",
                        help="time the train step of each method instead (one seed)")
    parser.add_argument("--chunk", type=int, default=200,
                        help="--overhead: steps per timed run (each run restarts at step 0)")
    parser.add_argument("--repeats", type=int, default=41, help="--overhead: timed repeats")
    args = parser.parse_args()
    if args.steps % EVAL_EVERY:
        parser.error(f"--steps must be a multiple of {EVAL_EVERY}, got {args.steps}.")
    train, test = data.load_mnist1d(split="train"), data.load_mnist1d(split="test")
    train = jnp.asarray(train.inputs), jnp.asarray(train.labels)
    test = jnp.asarray(test.inputs), jnp.asarray(test.labels)
    net = MLP()
    if args.overhead:
        print_overhead(net, train, args.warmup_steps, args.chunk, args.repeats)
        return
    print(f"MNIST-1D, {args.seeds} seeds, {args.warmup_steps} random-label steps then "
          f"{args.steps} true-label steps; device {jax.devices()[0].device_kind}")
    print(f"{'method':32s} {'test acc (%)':>16s} {'train acc (%)':>15s} {'dead units (%)':>15s}"
          f" {'time (s)':>9s}")
    curves = {}
    for name, (make_tx, warm, plain) in methods(args.warmup_steps, net, train[0]).items():
        start = time.perf_counter()
        curve, train_acc, dead = jax.device_get(run_method(
            make_tx, warm, plain, net, train, test, args.seeds, args.warmup_steps, args.steps))
        elapsed = time.perf_counter() - start
        curves[name] = curve
        acc, acc_sem = mean_sem(100 * curve[:, -1])
        tr, tr_sem = mean_sem(100 * train_acc)
        dd, dd_sem = mean_sem(100 * dead)
        print(f"{name:32s} {acc:7.2f} ± {acc_sem:5.2f} {tr:7.2f} ± {tr_sem:4.2f}"
              f" {dd:7.2f} ± {dd_sem:4.2f} {elapsed:9.1f}", flush=True)
    if args.plot:
        plot(curves, args.plot)


def print_overhead(net, train, warmup_steps, chunk, repeats):
    """Time per step of each method, the methods interleaved (in a shuffled order) in every
    repeat: min and median over the repeats, and the median of the per-repeat ratios to no
    reset (each repeat times all methods back to back, so its ratio cancels slow drifts of a
    loaded machine)."""
    runs = {name: compiled_steps(make_tx, plain, net, train, chunk)
            for name, (make_tx, warm, plain) in methods(warmup_steps, net, train[0]).items()
            if warm}  # the fresh network runs the same step as no reset
    # The cost of the resets themselves: one at every step.
    every_step = methods(1, net, train[0])
    for name in ("reset_to_init, last 2 layers", "shrink_and_perturb 0.3, 0.1"):
        make_tx, _, plain = every_step[name]
        runs[f"{name}, every step"] = compiled_steps(make_tx, plain, net, train, chunk)
    x = train[0]
    init_fn = lambda key: net.init(key, x[:1])["params"]  # noqa: E731
    adam = optax.with_extra_args_support(optax.adam(LR))
    runs["recycle_dormant_units, every step"] = compiled_steps(
        lambda key: resetax.recycle_dormant_units(adam, init_fn, UNITS, key=key, threshold=0.1,
                                                  every=1), False, net, train, chunk)
    times = {name: [] for name in runs}
    order = list(runs)
    rng = np.random.default_rng(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            run, args = runs[name]
            start = time.perf_counter()
            jax.block_until_ready(run(*args))
            times[name].append((time.perf_counter() - start) / chunk)
    print(f"train step, one seed, {repeats} interleaved repeats of {chunk} steps each (between "
          f"resets unless 'every step'); device {jax.devices()[0].device_kind}")
    print(f"{'method':45s} {'min us':>7s} {'median us':>10s} {'ratio to no reset':>28s}")
    base = np.asarray(times["no reset"])
    for name, seconds in times.items():
        ratios = np.asarray(seconds) / base
        q1, q2, q3 = np.percentile(ratios, [25, 50, 75])
        print(f"{name:45s} {1e6 * min(seconds):7.0f} {1e6 * np.median(seconds):10.0f} "
              f"{q2:10.3f} [{q1:.3f}, {q3:.3f}]")


def plot(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, curve in curves.items():
        steps = EVAL_EVERY * np.arange(1, curve.shape[1] + 1)
        mean = 100 * curve.mean(0)
        sem = 100 * curve.std(0, ddof=1) / np.sqrt(curve.shape[0])
        ax.plot(steps, mean, label=name)
        ax.fill_between(steps, mean - sem, mean + sem, alpha=0.2)
    ax.set_xlabel("steps on the true labels")
    ax.set_ylabel("test accuracy (%), mean ± sem over seeds")
    ax.set_title("MNIST-1D after a warm-up on random labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
