"""The runs of a group (a baseline-plus-resetting pair, ``compare``'s seeds) trained side by side.

A small model's step on a CPU keeps about one core busy, so on a CPU the runs of a group train
two at a time, each in its own thread of one process: one import of JAX, one compilation for the
runs that differ in ``reset_prob`` only (:class:`SharedExperiments`), and a run's numbers
identical to those it has alone. On accelerators, or across processes, they train one after the
other.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from resetax import _checks
from resetax.experiment import build, control, placement, runner, workdir
from resetax.experiment.build import Experiment, Inputs
from resetax.experiment.config import Config


class GroupRun(NamedTuple):
    """One run of a group.

    Attributes:
      name: Its name (a pair's ``baseline``, compare's ``resetting-seed1``).
      config: Its config.
      run_dir: Its directory.
    """

    name: str
    config: Config
    run_dir: Path


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
    _checks.auto_or_positive_int("jobs", jobs)
    if jobs == "auto":
        cpu = jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2
        return 2 if cpu and jax.process_count() == 1 and num_devices == 1 else 1
    if jobs > 1 and jax.process_count() > 1:
        raise ValueError(f"jobs must be 1 in a multi-process run (its processes step together), "
                         f"got {jobs}.")
    if jobs > 1 and num_devices > 1:
        raise ValueError(f"jobs must be 1 when each run trains on several devices "
                         f"({num_devices}), got {jobs}.")
    return jobs


def train_group(runs: Sequence[GroupRun], *, jobs: int | str = 1, resume: bool = False,
                overwrite: bool = False, progress: bool = True,
                announce: Callable[[str], None] = print) -> dict[str, runner.RunResult]:
    """Trains the ``runs``, ``jobs`` at a time, in their order; returns their results by
    name (:data:`~resetax.experiment.runner.RunResult`).

    Each run is :func:`train_or_reuse`'s (with ``resume``, a finished run is read back and an
    interrupted one resumed). A SIGTERM or Ctrl-C stops every run at the end of its evaluation
    window, after a checkpoint, and starts no other: the runs stopped or never started are
    :class:`~resetax.experiment.runner.Stopped`. A run that fails stops the others the same way,
    and its error is raised once they have stopped.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import group
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_steps=20,
      ...                     eval_every=10, checkpoint_every=20, num_devices=1, baseline=False)
      >>> root = Path(tempfile.mkdtemp())
      >>> runs = [group.GroupRun("baseline", config.replace(reset_prob=0.0), root / "baseline"),
      ...         group.GroupRun("resetting", config, root / "resetting")]
      >>> results = group.train_group(runs, jobs=2, progress=False, announce=lambda _: None)
      >>> list(results), [r.summary["num_steps"] for r in results.values()]
      (['baseline', 'resetting'], [20, 20])
    """
    jobs = resolve_jobs(jobs, max(len(placement.devices(run.config)) for run in runs))
    shared = SharedExperiments(size=jobs)
    results: dict[str, runner.RunResult] = {}
    errors: list[BaseException] = []

    with control.StopRequest() as stop:  # installed here, in the main thread, for every run

        def train_one(index: int, run: GroupRun) -> None:
            name, config, run_dir = run
            if stop.requested:  # stopped before this run started
                return
            announce(f"== {name} (reset_prob={config.reset_prob}, seed {config.seed})")
            try:
                results[name] = train_or_reuse(
                    config, run_dir, resume=resume, overwrite=overwrite,
                    progress=progress and control.Progress(name, index % jobs),
                    build=shared.get, stop=stop)
            except BaseException as err:  # the others stop at their window ends
                errors.append(err)
                stop.request()

        if jobs == 1:
            for index, run in enumerate(runs):
                train_one(index, run)
        else:
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                pending = {pool.submit(train_one, index, run) for index, run in enumerate(runs)}
                while pending:  # in short waits: the main thread handles signals between them
                    _, pending = concurrent.futures.wait(pending, timeout=0.2)
    if errors:
        raise errors[0]
    return {run.name: results.get(run.name) or _not_started(run, stop.signal_name)
            for run in runs}


def _not_started(run: GroupRun, signal: str | None) -> runner.Stopped:
    """A run the stop came before, at the checkpoint it has from an earlier session if any."""
    steps = [int(p.name) for p in (run.run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    last = max(steps, default=None)
    return runner.Stopped(last or 0, signal, last)


def train_or_reuse(config: Config, run_dir: str | Path, *, resume: bool,
                   overwrite: bool = False, **train_options: Any) -> runner.RunResult:
    """One run of a group (a pair, ``compare``'s seeds, a paper table):
    :func:`~resetax.experiment.runner.train`, but with ``resume`` a finished run's summary is read
    back (:func:`~resetax.experiment.workdir.read_summary`), an interrupted one (its
    ``config.json`` written) is resumed and one that never started starts. ``train_options`` go
    to ``train``.

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import group
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> summary = dict(test_acc=0.5, last_test_acc=0.5, best_val_loss=1.0, best_step=10,
      ...                num_resets=2, wall_time_s=3.0)
      >>> _ = (run_dir / "summary.json").write_text(json.dumps(summary))
      >>> group.train_or_reuse(get_config("quick"), run_dir, resume=True).summary == summary
      True
    """
    run_dir = Path(run_dir)
    if resume and (run_dir / workdir.SUMMARY_FILE).exists():
        if (run_dir / workdir.CONFIG_FILE).exists():  # a run the group trained, not another
            runner.check_resumed_config(run_dir, config)
        return runner.ended(workdir.read_summary(run_dir))
    return runner.train(config, run_dir,
                        resume=resume and (run_dir / workdir.CONFIG_FILE).exists(),
                        overwrite=overwrite, **train_options)


def with_reset_prob(experiment: Experiment, config: Config) -> Experiment:
    """``experiment`` for ``config``, which may differ from ``experiment.config`` in
    ``reset_prob`` only: the compiled steps are the same (the probability is a hyperparameter in
    the optimizer state), only the initial state's probability changes.

    Example:
      >>> from resetax.experiment import build, group
      >>> from resetax.experiment.config import get_config
      >>> baseline = get_config("quick", dataset="digits", model="mlp", reset_prob=0.0,
      ...                       baseline=False)
      >>> experiment = build.setup(baseline)
      >>> resetting = group.with_reset_prob(experiment, baseline.replace(reset_prob=0.1))
      >>> resetting.run_steps is experiment.run_steps  # nothing built or compiled again
      True
      >>> float(resetting.init_state.opt_state.hyperparams["reset_prob"])
      0.1...
      >>> group.with_reset_prob(experiment, baseline.replace(seed=1))
      Traceback (most recent call last):
      ...
      ValueError: an experiment serves configs that differ in reset_prob only, not in ['seed'].
    """
    changed = [name for name in config.diff(experiment.config) if name != "reset_prob"]
    if changed:
        raise ValueError(f"an experiment serves configs that differ in reset_prob only, "
                         f"not in {changed}.")
    opt_state = experiment.init_state.opt_state
    old = opt_state.hyperparams["reset_prob"]
    hyperparams = {**opt_state.hyperparams,
                   "reset_prob": np.asarray(config.reset_prob, np.asarray(old).dtype)}
    init_state = experiment.init_state._replace(
        opt_state=opt_state._replace(hyperparams=hyperparams))
    return dataclasses.replace(experiment, config=config, init_state=init_state)


class SharedExperiments:
    """The group's shared-compilation cache: experiments built once for the runs that differ in
    ``reset_prob`` only (a pair, one seed of ``compare``); safe to share between threads.

    The first run to ask builds the experiment (:func:`~resetax.experiment.build.setup`); a run
    asking meanwhile waits for it rather than building and compiling the same steps a second time,
    then gets it for its own config (:func:`with_reset_prob`). The ``size`` most recently asked
    experiments are kept.

    Example:
      >>> from resetax.experiment import build, group
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", baseline=False)
      >>> shared, inputs = group.SharedExperiments(size=2), build.load_inputs(config)
      >>> baseline = shared.get(config.replace(reset_prob=0.0), inputs)
      >>> resetting = shared.get(config, inputs)
      >>> resetting.run_steps is baseline.run_steps, resetting.config.reset_prob
      (True, 0.03)
      >>> shared.get(config.replace(seed=1), inputs).run_steps is baseline.run_steps
      False
    """

    def __init__(self, size: int = 1):
        self.size = size
        self._lock = threading.Lock()
        # config with reset_prob 0 -> [lock, experiment or None while it is built]
        self._entries: collections.OrderedDict[Config, list] = collections.OrderedDict()

    def get(self, config: Config, inputs: Inputs) -> Experiment:
        """The experiment for ``config``, built from its ``inputs``."""
        key = config.replace(reset_prob=0.0)
        with self._lock:
            entry = self._entries.pop(key, None) or [threading.Lock(), None]
            self._entries[key] = entry  # the most recent last
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        lock = entry[0]
        with lock:  # one build; a second asker waits for it
            if entry[1] is None:
                entry[1] = build.setup(config, inputs)
        return with_reset_prob(entry[1], config)
