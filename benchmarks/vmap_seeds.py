"""Is training several seeds at once with ``vmap`` faster than one after another?

``resetax compare`` trains k seeds of baseline and resetting. This measures, for the ``quick``
preset's fused train step, k seeds run one after another against the same k seeds stacked along a
leading axis and run with ``jax.vmap`` in one dispatch (each seed with its own initialization,
label noise, split and reset key), on the default device.

    python benchmarks/vmap_seeds.py [--seeds 4] [--steps 200]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from resetax.experiment import build, steps, train_state
from resetax.experiment.config import get_config

CHECK_STEPS = 20


def experiment(seed: int):
    config = get_config("quick", seed=seed, num_devices=1)
    inputs = build.load_inputs(config)
    exp = build.setup(config, inputs)
    chunk = steps.make_steps(config, inputs.model, inputs.tx, inputs.loss_fn,
                             len(inputs.data.train)).chunk
    return exp, chunk, jax.device_get(exp.placement.place_data(inputs.data))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    exps = [experiment(seed) for seed in range(args.seeds)]
    # The train split has the same size for every seed, so one chunk function serves all.
    chunk = exps[0][1]
    run = functools.partial(chunk, num_steps=args.steps)
    one = jax.jit(run)
    # The step counter is shared, not batched: evaluation stays a real lax.cond under vmap
    # instead of becoming a select that would evaluate at every step.
    fields = train_state.TrainState._fields
    axes = train_state.TrainState(**{f: None if f == "step" else 0 for f in fields})
    many = jax.jit(jax.vmap(run, in_axes=(axes, 0), out_axes=(axes, 0)))
    states = [exp.init_state for exp, _, _ in exps]
    datas = [data for _, _, data in exps]
    stack = lambda trees: jax.tree.map(lambda *x: np.stack(x), *trees)  # noqa: E731
    stacked = stack(states)._replace(step=states[0].step)

    def sequential():
        return [one(s, d)[0] for s, d in zip(states, datas, strict=True)]

    def vmapped():
        return many(stacked, stack(datas))[0]

    timings = {}
    for name, fn in (("sequential", sequential), ("vmap", vmapped)):
        jax.block_until_ready(fn())  # compile
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            best = min(best, time.perf_counter() - start)
        timings[name] = best
    # Same results either way, to float tolerance: batched kernels may sum in another order, and
    # SGD amplifies such rounding differences over many steps, so compare after a few steps.
    check = functools.partial(chunk, num_steps=CHECK_STEPS)
    batched = jax.jit(jax.vmap(check, in_axes=(axes, 0), out_axes=(axes, 0)))(
        stacked, stack(datas))[0].params
    for i, (state, data) in enumerate(zip(states, datas, strict=True)):
        alone = jax.jit(check)(state, data)[0].params
        for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(batched), strict=True):
            np.testing.assert_allclose(a, b[i], rtol=1e-4, atol=1e-5)
    seq, vm = timings["sequential"], timings["vmap"]
    device = jax.devices()[0]
    print(f"device: {device.platform}:{device.device_kind}, jax {jax.__version__}")
    print(f"| seeds | steps | sequential s | vmap s | vmap speed-up |\n|---|---|---|---|---|\n"
          f"| {args.seeds} | {args.steps} | {seq:.2f} | {vm:.2f} | {seq / vm:.2f}x |")


if __name__ == "__main__":
    main()
