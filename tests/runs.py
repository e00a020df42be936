"""Shared pieces of the trainer's tests: a tiny config, run files, CLI subprocesses."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax

from resetax.experiment import checkpoint, runner, workdir
from resetax.experiment.config import get_config

ROOT = Path(__file__).parents[1]

TINY = dict(dataset="digits", model="mlp", noise="symmetric", noise_rate=0.4, batch_size=32,
            num_steps=120, eval_every=10, steps_per_dispatch=10, checkpoint_every=60,
            reset_prob=0.1, patience=20, learning_rate=0.05, momentum=0.9)


def tiny(**changes):
    return get_config("quick", **{**TINY, **changes})


def read_lines(run_dir):
    return (Path(run_dir) / "metrics.jsonl").read_text().splitlines()


def without_times(summary):
    """A summary without its timings (wall, compile and loop time), which vary run to run."""
    return {k: v for k, v in summary.items() if not k.endswith("_time_s")}


def summary_without_time(run_dir):
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    return without_times(summary)


def final_state_leaves(run_dir, template):
    manager = checkpoint.CheckpointManager(Path(run_dir) / "checkpoints")
    state, _ = manager.restore(template)
    return jax.tree.leaves(state)


def one_line_error(err: str) -> str:
    """The error a user sees: exactly one ``resetax: error:`` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("resetax: error:")]
    assert len(lines) == 1, err
    return lines[0]


def cli_args(target, *extra, command="train"):
    """``resetax COMMAND`` with the tiny config's flags, as a subprocess's argv."""
    args = [sys.executable, "-m", "resetax.experiment.cli", command, "--quiet",
            "--run-dir", str(target)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return [*args, *extra]


def start_cli_run(target, checkpoint_every, *extra):
    """A 600-step single run of the tiny config in a subprocess (stderr piped)."""
    args = cli_args(target, "--no-baseline", "--num-steps", "600", "--checkpoint-every",
                    str(checkpoint_every), *extra)
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ))


def wait_for(proc, ready, seconds=240):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()


def resume_and_compare(target, long_reference):
    reference_dir, reference = long_reference
    config = workdir.load_config(target)  # checkpoint_every may differ from the reference's
    summary = runner.train(config, target, progress=False, resume=True).summary
    assert read_lines(target) == read_lines(reference_dir)
    assert without_times(summary) == reference


