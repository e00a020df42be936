"""Fingerprints of what the experiment layer writes, to check that a refactor changes nothing.

Runs (a) the tests' tiny config (``tests/runs.py``) as a single run, on the 8 simulated CPU
devices the tests use, and its variants on 2 devices (jit over a Mesh, and pmap) and with fused
steps (``dispatch="scan"``), an interruption resumed, and a pair through the group; then, as
subprocesses of the command line on one device, (b) a quick single run (``resetax train
--baseline false --num-steps 300``) and (c) a quick pair (``resetax train --num-steps 300``).
For each run directory it prints SHA-256 hashes of ``metrics.jsonl`` and ``summary.json`` (their
timing fields removed) and of the arrays of every checkpoint and of the best model.

    python benchmarks/experiment_fingerprint.py > fingerprint.txt

Two trees of the code agree when their outputs are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")
ROOT = Path(__file__).parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this tree's resetax, not an install

TIMING = ("wall_time_s", "compile_time_s", "diagnostics_time_s", "loop_time_s")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _json_hash(obj) -> str:
    return _sha(json.dumps(obj, sort_keys=True).encode())


def _arrays_hash(path: Path) -> str:
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(path.absolute())
    digest = hashlib.sha256()
    for keypath, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(keypath)} {array.dtype} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def fingerprint(run_dir: Path) -> list[str]:
    """One line per file: its relative path and the hash of its content without timings."""
    out = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        lines = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                 for line in metrics.read_text().splitlines() if line]
        out.append(f"metrics.jsonl {len(lines)} lines {_json_hash(lines)}")
    summary = run_dir / "summary.json"
    if summary.exists():
        s = {k: v for k, v in json.loads(summary.read_text()).items() if k not in TIMING}
        out.append(f"summary.json {_json_hash(s)} test_acc={s.get('test_acc')}")
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir():
        for step in sorted((p for p in checkpoints.iterdir() if p.name.isdigit()),
                           key=lambda p: int(p.name)):
            out.append(f"checkpoints/{step.name}/state {_arrays_hash(step / 'state')}")
    if (run_dir / "best").is_dir():
        out.append(f"best {_arrays_hash(run_dir / 'best')}")
    return out


def _report(name: str, run_dir: Path) -> None:
    for sub in sorted(p for p in run_dir.iterdir() if p.is_dir() and (p / "config.json").exists()):
        _report(f"{name}/{sub.name}", sub)
    for line in fingerprint(run_dir):
        print(f"{name}: {line}", flush=True)


def _library_runs(root: Path) -> None:
    from runs import tiny

    from resetax.experiment import group, train

    variants = {
        "tiny": tiny(),
        "tiny-2dev-sharded": tiny(num_devices=2),
        "tiny-2dev-pmap": tiny(num_devices=2, parallel="pmap"),
        "tiny-scan": tiny(dispatch="scan", num_devices=1),
        "tiny-diagnostics": tiny(num_devices=1, diagnostics_every=30),
    }
    for name, config in variants.items():
        train(config, root / name, progress=False)
        _report(name, root / name)
    resumed = root / "tiny-resumed"
    train(tiny(), resumed, progress=False, stop_after=60)
    train(tiny(), resumed, progress=False, resume=True)
    _report("tiny-resumed", resumed)
    pair = root / "tiny-pair"
    config = tiny(num_devices=1, baseline=False)
    group.train_group([group.GroupRun("baseline", config.replace(reset_prob=0.0),
                                      pair / "baseline"),
                       group.GroupRun("resetting", config, pair / "resetting")],
                      jobs=2, progress=False, announce=lambda _: None)
    _report("tiny-pair", pair)


def _cli_runs(root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env["PYTHONPATH"] = str(ROOT)
    for name, extra in (("quick-single", ["--baseline", "false"]), ("quick-pair", [])):
        subprocess.run([sys.executable, "-m", "resetax.experiment.cli", "train", "--quiet",
                        "--num-steps", "300", "--run-dir", str(root / name), *extra],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        _report(name, root / name)


def main() -> None:
    import resetax

    print(f"resetax from {Path(resetax.__file__).parent.relative_to(ROOT)}")
    with tempfile.TemporaryDirectory() as tmp:
        _library_runs(Path(tmp))
        _cli_runs(Path(tmp))


if __name__ == "__main__":
    main()
