"""Accuracy of the ``quick`` preset: baseline (r = 0) vs resetting over paired seeds.

For each noise rate, trains the baseline and the resetting run on the same seeds and prints the
test accuracy of the best-validation model as mean ± standard error, the paired difference, and
the wall time per run. ``--tune`` first picks ``reset_prob`` and ``patience`` from a grid on
separate tuning seeds by the best *validation* loss (never the test set).

    python benchmarks/accuracy.py [--seeds 5] [--noise-rates 0.4 0.6] [--tune]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path

from resetax.experiment import report, runner
from resetax.experiment.config import get_config

TUNING_SEEDS = (100, 101)
GRID = {"reset_prob": (0.003, 0.01, 0.03), "patience": (200, 400)}


def run(config, root: Path, name: str):
    return runner.train(config, root / name, progress=False).summary


def tune(noise_rate: float, root: Path, overrides: dict) -> dict:
    """Grid point with the lowest mean best-validation loss over the tuning seeds."""
    scores = {}
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        losses = []
        for seed in TUNING_SEEDS:
            config = get_config("quick", noise_rate=noise_rate, seed=seed, **overrides, **point)
            name = f"tune-{noise_rate}-" + "-".join(f"{k}{v}" for k, v in point.items())
            losses.append(run(config, root, f"{name}-seed{seed}")["best_val_loss"])
        scores[values] = statistics.mean(losses)
        print(f"  tune noise {noise_rate}: {point} -> mean best val loss {scores[values]:.4f}",
              flush=True)
    best = min(scores, key=scores.get)
    return dict(zip(GRID, best, strict=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--noise-rates", type=float, nargs="+", default=[0.4, 0.6])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--out", default=None, help="directory for the runs (default: a temp dir)")
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="resetax-accuracy-"))
    base = get_config("quick")
    print(f"quick preset: {base.dataset}, {base.model}, {base.num_steps} steps; runs in {root}")
    for noise_rate in args.noise_rates:
        point = {}
        if args.tune:
            point = tune(noise_rate, root, {})
        acc = {"baseline": [], "resetting": []}
        times = {"baseline": [], "resetting": []}
        for seed in range(args.seeds):
            for name in acc:
                config = get_config("quick", noise_rate=noise_rate, seed=seed, **point)
                if name == "baseline":
                    config = config.replace(reset_prob=0.0)
                summary = run(config, root, f"{noise_rate}-{name}-seed{seed}")
                acc[name].append(summary["test_acc"])
                times[name].append(summary["wall_time_s"])
        table = report.compare_table(acc["baseline"], acc["resetting"])
        settings = get_config("quick", **point)
        print(report.compare_markdown(
            table, f"symmetric noise {noise_rate}, reset_prob {settings.reset_prob}, "
                   f"patience {settings.patience}"))
        print(f"wall time per run: baseline {statistics.mean(times['baseline']):.1f} s, "
              f"resetting {statistics.mean(times['resetting']):.1f} s\n", flush=True)


if __name__ == "__main__":
    main()
