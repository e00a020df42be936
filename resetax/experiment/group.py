"""The runs of a group (a baseline-plus-resetting pair, ``compare``'s seeds) trained side by side.

A small model's step on a CPU keeps about one core busy, so on a CPU the runs of a group train
two at a time, each in its own thread of one process: one import of JAX, one compilation for the
runs that differ in ``reset_prob`` only (:class:`~resetax.experiment.runner.Setups`), and a run's
numbers identical to those it has alone. On accelerators, or across processes, they train one
after the other.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

from resetax.experiment import control, placement, runner
from resetax.experiment.config import Config

Part = tuple[str, Config, Path]  # a run's name, config and directory


def resolve_jobs(jobs: int | str, num_devices: int = 1) -> int:
    """How many runs of a group train at once: ``jobs``, or for ``"auto"`` 2 on a CPU with two
    cores or more, in a single process, when each run trains on one device; 1 otherwise.

    Runs on several devices each (``num_devices``) train one at a time: their collectives wait
    for every device's part of one program, and two programs in flight at once can hold each
    other's devices (XLA:CPU aborts after 40 s waiting), so ``jobs > 1`` is refused for them.

    Example:
      >>> from resetax.experiment.group import resolve_jobs
      >>> resolve_jobs(3)
      3
      >>> resolve_jobs("auto") in (1, 2), resolve_jobs("auto", num_devices=8)
      (True, 1)
      >>> resolve_jobs(0)
      Traceback (most recent call last):
      ...
      ValueError: jobs must be 'auto' or a positive integer, got 0.
      >>> resolve_jobs(2, num_devices=8)
      Traceback (most recent call last):
      ...
      ValueError: jobs must be 1 when each run trains on several devices (8), got 2.
    """
    if jobs == "auto":
        cpu = jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2
        return 2 if cpu and jax.process_count() == 1 and num_devices == 1 else 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be 'auto' or a positive integer, got {jobs!r}.")
    if jobs > 1 and jax.process_count() > 1:
        raise ValueError(f"jobs must be 1 in a multi-process run (its processes step together), "
                         f"got {jobs}.")
    if jobs > 1 and num_devices > 1:
        raise ValueError(f"jobs must be 1 when each run trains on several devices "
                         f"({num_devices}), got {jobs}.")
    return jobs


def train_group(parts: Sequence[Part], *, jobs: int | str = 1, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                announce: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Trains the runs ``parts``, ``jobs`` at a time, in their order; returns their summaries.

    Each run is :func:`~resetax.experiment.runner.train_or_reuse`'s (with ``resume``, a finished
    run is read back and an interrupted one resumed). A SIGTERM or Ctrl-C stops every run at the
    end of its evaluation window, after a checkpoint, and starts no other: the summaries of the
    runs stopped or never started are ``{"stopped_at": step, "signal": name}``. A run that fails
    stops the others the same way, and its error is raised once they have stopped.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import group
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_steps=20,
      ...                     eval_every=10, checkpoint_every=20, num_devices=1, baseline=False)
      >>> root = Path(tempfile.mkdtemp())
      >>> parts = [("baseline", config.replace(reset_prob=0.0), root / "baseline"),
      ...          ("resetting", config, root / "resetting")]
      >>> summaries = group.train_group(parts, jobs=2, progress=False, announce=lambda _: None)
      >>> list(summaries), [s["num_steps"] for s in summaries.values()]
      (['baseline', 'resetting'], [20, 20])
    """
    jobs = resolve_jobs(jobs, max(len(placement.devices(config)) for _, config, _ in parts))
    setups = runner.Setups(size=jobs)
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []

    with control.StopRequest() as stop:  # installed here, in the main thread, for every run

        def run_part(index: int, part: Part) -> None:
            name, config, run_dir = part
            if stop.requested:  # stopped before this run started
                return
            announce(f"== {name} (reset_prob={config.reset_prob}, seed {config.seed})")
            member = runner.GroupMember(stop, setups, label=name, position=index % jobs)
            try:
                results[name] = runner.train_or_reuse(
                    config, run_dir, resume=resume, overwrite=overwrite, progress=progress,
                    member=member)
            except BaseException as err:  # the others stop at their window ends
                errors.append(err)
                stop.request()

        if jobs == 1:
            for index, part in enumerate(parts):
                run_part(index, part)
        else:
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                pending = {pool.submit(run_part, index, part) for index, part in enumerate(parts)}
                while pending:  # in short waits: the main thread handles signals between them
                    _, pending = concurrent.futures.wait(pending, timeout=0.2)
    if errors:
        raise errors[0]
    never_started = {"stopped_at": 0, **({"signal": stop.signal_name} if stop.signum else {})}
    return {name: results.get(name, never_started) for name, _, _ in parts}
