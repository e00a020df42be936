"""Time of a setting-2 run: the trainer's own loop on synthetic CIFAR-shaped data, projected.

Builds the run with the trainer's public pieces (``build.setup``, ``runner.train_loop``) on a
synthetic CIFAR-10-shaped source (random uint8 images and labels, 45,000 train / 5,000 validation
/ 10,000 test, never used for accuracy), so that no dataset is needed. Prints:

- the steady-state time of the preset's evaluation windows (train steps plus the validation pass
  at each window's start), measured after a warm-up window;
- the time of one checkpoint;
- the projected time of the full run: windows x steady-state + checkpoints;
- the wall time of ``train_loop`` over the first ``--num-steps`` steps as a user runs it
  (compilation, checkpoints, metrics and the final summary included).

    python benchmarks/setting2_steps.py [--preset setting2-cifar10] [--num-steps 2000]
    python benchmarks/setting2_steps.py --preset setting1 --sizes 500 10000 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from resetax import data as data_lib
from resetax.experiment import build, checkpoint, runner, workdir
from resetax.experiment.config import get_config
from resetax.experiment.data_input import ExperimentData


def synthetic(num: int, seed: int) -> data_lib.Dataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num, dtype=np.int32)
    images = rng.integers(0, 256, (num, 32, 32, 3), dtype=np.uint8)
    return data_lib.Dataset(images, labels, labels, np.arange(num), 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="setting2-cifar10")
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--windows", type=int, default=5, help="timed evaluation windows")
    parser.add_argument("--model", default=None, help="override the preset's model")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--dispatch", default=None, choices=("scan", "step"))
    parser.add_argument("--smoke", action="store_true",
                        help="2,000/500/500 examples instead of 45,000/5,000/10,000 (a CPU check)")
    parser.add_argument("--sizes", type=int, nargs=3, default=None,
                        metavar=("TRAIN", "VAL", "TEST"),
                        help="examples per split (setting 1: 500 10000 10000)")
    args = parser.parse_args()
    overrides = {k: v for k, v in (("model", args.model), ("batch_size", args.batch_size),
                                   ("eval_every", args.eval_every),
                                   ("dispatch", args.dispatch)) if v}
    if args.eval_every:
        overrides.update(checkpoint_every=args.eval_every, patience=args.eval_every)
    full = get_config(args.preset, **overrides)
    config = full.replace(num_steps=args.num_steps, checkpoint_every=min(
        full.checkpoint_every, args.num_steps // full.eval_every * full.eval_every))
    sizes = args.sizes or ((2_000, 500, 500) if args.smoke else (45_000, 5_000, 10_000))
    data = ExperimentData(*(synthetic(n, seed) for seed, n in enumerate(sizes)), 10)
    devices = jax.devices()
    print(f"devices: {len(devices)}x {devices[0].device_kind}, jax {jax.__version__}, "
          f"{config.model}, batch {config.batch_size}, dispatch "
          f"{build.dispatch_mode(config)}, eval every {config.eval_every}")

    inputs = build.inputs_for(config, data)
    experiment = build.setup(config, inputs)
    state = experiment.placement.place_state(experiment.init_state)
    window = config.eval_every
    start = time.perf_counter()
    state, metrics = experiment.run_steps(state, 0, window)
    jax.block_until_ready(metrics)
    print(f"first window (compilation included): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    for i in range(1, args.windows + 1):
        state, metrics = experiment.run_steps(state, i * window, window)
        experiment.placement.fetch(metrics)  # the loop reads the metrics once per dispatch
    per_window = (time.perf_counter() - start) / args.windows
    images_per_s = window * config.batch_size / per_window
    host = experiment.placement.fetch(state)
    with tempfile.TemporaryDirectory() as tmp:
        manager = checkpoint.CheckpointManager(Path(tmp) / "checkpoints")
        start = time.perf_counter()
        manager.save(host, {"wall_time": 0.0})
        save_s = time.perf_counter() - start
    windows, saves = full.num_steps // window, full.num_steps // full.checkpoint_every
    projected = windows * per_window + saves * save_s
    print(f"steady state: {per_window * 1e3 / window:.2f} ms/step ({images_per_s:,.0f} train "
          f"images/s with the validation passes); one checkpoint {save_s:.2f} s")
    print(f"projected {full.num_steps:,}-step run: {projected / 60:.1f} min "
          f"({windows} windows, {saves} checkpoints; compilation not included)")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_dir = Path(tmp) / "run"
        with workdir.run_directory(run_dir, resume=False, overwrite=False,
                                   write=lambda path: workdir.write_config(path, config)):
            summary = runner.train_loop(build.setup(config, inputs), run_dir,
                                        progress=False).summary
        total = time.perf_counter() - start
    print(f"train_loop, {config.num_steps} steps end to end: {total:.1f} s "
          f"(summary wall_time_s {summary['wall_time_s']:.1f}, {summary['num_resets']} resets)")


if __name__ == "__main__":
    main()
