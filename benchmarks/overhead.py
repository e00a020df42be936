"""Cost of stochastic resetting: train-step time and optimizer-state memory, wrapper vs bare.

For a small MLP and for CIFAR ResNet-18 (11.2M parameters), times a full jitted training step
(forward, backward, update, BatchNorm statistics) with ``resetax.stochastic_resetting`` around
SGD with momentum, divided by the same step with the bare SGD, measured in the same run with the
two interleaved, and the ratio of the FLOPs and memory traffic XLA counts in the two compiled
steps. Also prints the optimizer-state bytes of both.

    python benchmarks/overhead.py [--repeats 15] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax import models


def make_step(model, tx, wrapped):
    def loss_fn(params, batch_stats, x, y):
        logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                      train=True, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updated.get("batch_stats", {})

    def step(params, batch_stats, opt_state, x, y, value):
        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, batch_stats, x, y)
        if wrapped:
            updates, opt_state = tx.update(grads, opt_state, params, value=value)
            params = resetax.apply_updates(params, updates, opt_state)
        else:
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params, batch_stats, opt_state

    return jax.jit(step, donate_argnums=(0, 1, 2))


def nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def bench(name, model, x, y, repeats, steps):
    variables = model.init(jax.random.key(0), x, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    inner = optax.sgd(1e-3, momentum=0.9)
    wrapper = resetax.stochastic_resetting(inner, reset_prob=1e-3, key=0, patience=100)
    runs = {}
    for label, tx, wrapped in (("bare", inner, False), ("resetting", wrapper, True)):
        state = (jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, batch_stats),
                 tx.init(params))
        runs[label] = [make_step(model, tx, wrapped), state, []]
    value = jnp.float32(jnp.nan)
    # XLA's own count of the compiled step's work: deterministic, unlike wall time on a shared CPU.
    cost = {label: run[0].lower(*run[1], x, y, value).compile().cost_analysis()
            for label, run in runs.items()}
    flops_ratio = cost["resetting"]["flops"] / cost["bare"]["flops"]
    bytes_ratio = cost["resetting"]["bytes accessed"] / cost["bare"]["bytes accessed"]
    for _ in range(repeats + 1):  # the first round compiles and warms up, and is discarded
        for run in runs.values():
            step, state, times = run
            jax.block_until_ready(state)
            start = time.perf_counter()
            for _ in range(steps):
                state = step(*state, x, y, value)
            jax.block_until_ready(state)
            times.append((time.perf_counter() - start) / steps)
            run[1] = state
    bare_times, wrapped_times = runs["bare"][2][1:], runs["resetting"][2][1:]
    bare, wrapped = statistics.median(bare_times), statistics.median(wrapped_times)
    # Each round times both back to back, so the per-round ratio cancels slow drifts.
    ratios = sorted(w / b for w, b in zip(wrapped_times, bare_times, strict=True))
    low, high = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    state_bare = nbytes(inner.init(params))
    state_wrapped = nbytes(wrapper.init(params))
    num_params = sum(p.size for p in jax.tree.leaves(params))
    print(f"| {name} | {num_params / 1e6:.2f}M | {1e3 * bare:.2f} | {1e3 * wrapped:.2f} | "
          f"{statistics.median(ratios):.3f} [{low:.3f}, {high:.3f}] | "
          f"{state_bare / 2**20:.2f} | {state_wrapped / 2**20:.2f} | "
          f"{(state_wrapped - state_bare) / nbytes(params):.4f} | {flops_ratio:.4f} | "
          f"{bytes_ratio:.4f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--mlp-batch", type=int, default=256)
    parser.add_argument("--resnet-batch", type=int, default=32)
    args = parser.parse_args()
    print(f"devices: {jax.device_count()}x {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| model | params | bare ms/step | resetting ms/step | ratio, median [quartiles] | "
          "bare state MiB | "
          "resetting state MiB | extra state / params bytes | FLOPs ratio | bytes-accessed ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    key = jax.random.key(1)
    x = jax.random.normal(key, (args.mlp_batch, 784))
    y = jax.random.randint(key, (args.mlp_batch,), 0, 10)
    bench("MLP 784-512-512-10", models.get_model("mlp", 10, hidden_sizes=(512, 512)), x, y,
          args.repeats, args.steps * 10)
    x = jax.random.normal(key, (args.resnet_batch, 32, 32, 3))
    y = jax.random.randint(key, (args.resnet_batch,), 0, 10)
    bench(f"ResNet-18, batch {args.resnet_batch}", models.get_model("resnet18", 10), x, y,
          args.repeats, args.steps)


if __name__ == "__main__":
    main()
