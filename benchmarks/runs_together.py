"""Runs trained together (``--runs-together N``) against the same runs one at a time.

Times ``resetax compare`` (or the baseline-plus-resetting pair, ``--seeds 1``) of a preset with
``--runs-together off --jobs 1`` (one run after another), ``off --jobs 2`` (two side by side,
the CPU's default) and ``--runs-together`` all the runs as one vmapped program, the modes
interleaved and repeated so that a busy machine weighs on each alike. Each command runs in a
fresh process with the persistent compilation cache off, so its wall time counts compilation;
it says whether each run's best step and number of resets were the same in every mode.

    python benchmarks/runs_together.py [--preset quick] [--seeds 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(mode: list[str], args, run_dir: Path) -> tuple[float, dict]:
    """One command's wall time, and each run's best step and number of resets."""
    command = ["train"] if args.seeds == 1 else ["compare", "--seeds", str(args.seeds)]
    argv = [sys.executable, "-m", "resetax.experiment.cli", *command, "--quiet", "--preset",
            args.preset, "--num-devices", "1", "--run-dir", str(run_dir), *mode]
    env = {**os.environ, "RESETAX_COMPILATION_CACHE": "off"}
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    summaries = {p.parent.name: json.loads(p.read_text())
                 for p in run_dir.glob("*/summary.json")}
    return wall, {name: (s["best_step"], s["num_resets"]) for name, s in summaries.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--seeds", type=int, default=1, help="1: the pair; more: compare")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    count = 2 * args.seeds
    modes = {"one at a time (--runs-together off --jobs 1)": ["--jobs", "1",
                                                              "--runs-together", "off"],
             "two side by side (--runs-together off --jobs 2)": ["--jobs", "2",
                                                                 "--runs-together", "off"],
             f"together (--runs-together {count})": ["--runs-together", str(count)]}
    walls: dict[str, list[float]] = {name: [] for name in modes}
    outcomes = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, mode) in enumerate(modes.items()):
                wall, outcome = run(mode, args, Path(tmp) / f"{repeat}-{i}")
                walls[name].append(wall)
                outcomes.append(outcome)
                print(f"repeat {repeat}: {name}: {wall:.1f} s", flush=True)
    print(f"\n{args.preset}, {count} runs of {'a pair' if args.seeds == 1 else 'compare'}, "
          f"{os.cpu_count()} CPUs; wall time per command (compilation included), "
          f"{args.repeats} interleaved repeats:")
    for name, values in walls.items():
        print(f"  {name:52s} {min(values):6.1f}-{max(values):6.1f} s  "
              f"(median {sorted(values)[len(values) // 2]:.1f})")
    same = all(o == outcomes[0] for o in outcomes)
    print(f"each run's best step and number of resets: {'the same' if same else 'NOT the same'}"
          f" in every mode and repeat")
    if not same:
        print(outcomes)


if __name__ == "__main__":
    main()
