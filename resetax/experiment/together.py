"""Runs that share shapes trained together: one ``jax.vmap``-ed program steps them all, each run
keeping its own seed, data, label noise, reset draws and run directory.

The runs of a group (a baseline-plus-resetting pair, ``compare``'s seeds, a paper table's cells)
that differ in ``seed``, ``reset_prob``, ``noise_rate`` or ``label_variant`` only change the
train state (keys, the reset probability) or the data (labels, splits), not the program: the
single-run steps of :mod:`~resetax.experiment.steps`, vmapped over a leading run axis of the
state and of the data that differ, train them as one. The host loop is
:mod:`~resetax.experiment.runner`'s, kept once per run on its slice of the stacked state: its
``metrics.jsonl``, checkpoints (the same as a run trained alone, so either can resume the
other), divergence, best model and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resetax import _checks
from resetax.experiment import (
    build,
    checkpoint,
    control,
    group,
    runner,
    tracking,
    train_state,
    workdir,
)
from resetax.experiment import config as config_lib
from resetax.experiment import steps as steps_lib
from resetax.experiment.build import Experiment, Inputs
from resetax.experiment.config import Config
from resetax.experiment.placement import AXIS, JitMesh, Placement, placement_for

# What may differ between the runs of one program: the state (keys, reset probability) and the
# host data (labels, splits) hold it; every other field shapes or compiles the steps.
MAY_DIFFER = ("seed", "reset_prob", "noise_rate", "label_variant")


def resolve(runs_together: int | str) -> int:
    """The most runs trained as one program: ``runs_together``, 1 for ``"off"``, and for
    ``"auto"`` unbounded (0) on accelerators and 1 (run by run) on a CPU, where vmapping runs
    measured no gain (``benchmarks/README.md``, ``vmap_seeds.py``).

    Example:
      >>> from resetax.experiment.together import resolve
      >>> resolve(4), resolve("off"), resolve("auto")  # the tests run on CPU
      (4, 1, 1)
      >>> resolve("all")
      Traceback (most recent call last):
      ...
      ValueError: runs_together must be 'auto', 'off' or a positive integer, got 'all'.
    """
    check_runs_together(runs_together)
    if runs_together == "off":
        return 1
    if runs_together == "auto":
        return 1 if jax.default_backend() == "cpu" else 0
    return runs_together


def compatible(config: Config) -> Config:
    """The part of ``config`` that runs trained together share: all but :data:`MAY_DIFFER`.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.together import compatible
      >>> config = get_config("quick", baseline=False)
      >>> compatible(config) == compatible(config.replace(seed=3, reset_prob=0.0))
      True
      >>> compatible(config) == compatible(config.replace(batch_size=64))
      False
    """
    return config.replace(seed=0, reset_prob=0.0, noise_rate=0.0, label_variant=None,
                          baseline=False)


def plan_groups(runs: Sequence[group.GroupRun], size: int) -> list[list[group.GroupRun]]:
    """The runs in groups trained as one program each: runs with :func:`compatible` configs,
    at most ``size`` of them (0: no bound), in the order of their first run.

    Example:
      >>> from pathlib import Path
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.group import GroupRun
      >>> from resetax.experiment.together import plan_groups
      >>> config = get_config("quick", baseline=False)
      >>> runs = [GroupRun(f"{name}-seed{seed}", config.replace(seed=seed, reset_prob=p),
      ...                  Path(f"{name}-seed{seed}"))
      ...         for seed in range(3) for name, p in (("baseline", 0.0), ("resetting", 0.03))]
      >>> runs.append(GroupRun("bigger-batch", config.replace(batch_size=64), Path("b")))
      >>> [[run.name for run in g] for g in plan_groups(runs, size=4)]
      [['baseline-seed0', 'resetting-seed0', 'baseline-seed1', 'resetting-seed1'],
       ['baseline-seed2', 'resetting-seed2'], ['bigger-batch']]
    """
    by_key: dict[Config, list[list[group.GroupRun]]] = {}
    order: list[list[group.GroupRun]] = []
    for run in runs:
        groups = by_key.setdefault(compatible(run.config), [])
        if not groups or (size and len(groups[-1]) >= size):
            groups.append([])
            order.append(groups[-1])
        groups[-1].append(run)
    return order


def train_runs(runs: Sequence[group.GroupRun], *, runs_together: int | str = "auto",
               jobs: int | str = 1, resume: bool = False, overwrite: bool = False,
               progress: bool = True, announce: Callable[[str], None] = print
               ) -> dict[str, runner.RunResult]:
    """Trains the ``runs`` of a group; returns their results by name, as
    :func:`~resetax.experiment.group.train_group` does.

    With ``runs_together`` resolved to 1 (:func:`resolve`) that is ``train_group``'s, ``jobs``
    at a time; otherwise the runs train in groups of compatible runs (:func:`plan_groups`), each
    group as one program (:func:`train_together`), one group after the other. A SIGTERM or Ctrl-C
    stops the group training at its next evaluation window, after a checkpoint of each of its
    runs, and starts no other group.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import group, together
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_steps=20,
      ...                     eval_every=10, checkpoint_every=20, num_devices=1, baseline=False)
      >>> root = Path(tempfile.mkdtemp())
      >>> runs = [group.GroupRun(f"seed{seed}", config.replace(seed=seed), root / f"seed{seed}")
      ...         for seed in range(3)]
      >>> results = together.train_runs(runs, runs_together=3, progress=False, announce=print)
      == seed0, seed1, seed2 together (seeds 0, 1, 2; reset_prob 0.03, 0.03, 0.03)
      >>> [r.summary["num_steps"] for r in results.values()]
      [20, 20, 20]
    """
    size = resolve(runs_together)
    if size == 1:
        return group.train_group(runs, jobs=jobs, resume=resume, overwrite=overwrite,
                                 progress=progress, announce=announce)
    batches = plan_groups(runs, size)
    if len(batches) > 1:
        announce(f"runs together: {len(runs)} runs in {len(batches)} groups of runs that share "
                 f"shapes ({', '.join(str(len(b)) for b in batches)} runs); the groups train one "
                 f"after the other.")
    results: dict[str, runner.RunResult] = {}
    with control.StopRequest() as stop:
        for batch in batches:
            if stop.requested:
                break
            if len(batch) == 1:
                name, config, run_dir = batch[0]
                announce(f"== {name} (reset_prob={config.reset_prob}, seed {config.seed})")
                results[name] = group.train_or_reuse(
                    config, run_dir, resume=resume, overwrite=overwrite,
                    progress=progress and control.Progress(name), stop=stop)
            else:
                results.update(train_together(batch, resume=resume, overwrite=overwrite,
                                              progress=progress, stop=stop, announce=announce))
    return {run.name: results.get(run.name) or group._not_started(run, stop.signal_name)
            for run in runs}


def train_together(runs: Sequence[group.GroupRun], *, resume: bool = False,
                   overwrite: bool = False, progress: bool | control.Progress = True,
                   stop: control.StopRequest | None = None, stop_after: int | None = None,
                   announce: Callable[[str], None] = print) -> dict[str, runner.RunResult]:
    """Trains compatible ``runs`` (:func:`compatible`) as one program; returns their results by
    name (:data:`~resetax.experiment.runner.RunResult`).

    Each run directory is claimed, checked and written as :func:`~resetax.experiment.runner.train`
    does it, and ends holding the same files. With ``resume`` a finished run is read back and the
    others continue from their last checkpoints, those at the same step together. A run that
    diverges ends there (:class:`~resetax.experiment.runner.Diverged`) while the others go on;
    ``stop`` (or ``stop_after``, as in ``train``) stops every run at the start of an evaluation
    window, after a checkpoint.
    """
    keys = {compatible(run.config) for run in runs}
    if len(keys) > 1:
        raise ValueError(f"runs trained together may differ in {', '.join(MAY_DIFFER)} only.")
    results: dict[str, runner.RunResult] = {}
    todo = []
    for run in runs:
        if resume and (run.run_dir / workdir.SUMMARY_FILE).exists():
            results[run.name] = group.train_or_reuse(run.config, run.run_dir, resume=True)
        else:
            todo.append(run)
    own_stop = stop is None
    stop = control.StopRequest() if own_stop else stop
    with contextlib.ExitStack() as claimed, (stop if own_stop else contextlib.nullcontext()):
        members = [_claim(claimed, run, resume=resume, overwrite=overwrite) for run in todo]
        starts: dict[int, list[_Member]] = {}
        for member in members:
            starts.setdefault(int(member.host_state.step), []).append(member)
        for step in sorted(starts):
            if stop.requested:
                break
            batch = starts[step]
            announce(f"== {', '.join(m.run.name for m in batch)} together (seeds "
                     f"{', '.join(str(m.run.config.seed) for m in batch)}; reset_prob "
                     f"{', '.join(str(m.run.config.reset_prob) for m in batch)})")
            results.update(_train_stacked(batch, progress=progress, stop=stop,
                                          stop_after=stop_after))
    return {run.name: results.get(run.name) or group._not_started(run, stop.signal_name)
            for run in runs}


@dataclasses.dataclass
class _Member:
    """One run of a group being trained together, and its host-side bookkeeping."""

    run: group.GroupRun
    resume: bool
    inputs: Inputs
    host_state: train_state.TrainState
    times: dict[str, float]
    manager: checkpoint.CheckpointManager
    window: runner.Window = runner.Window()
    nonfinite_since: int | None = None
    saved_step: int = 0
    log: workdir.MetricsLog | None = None
    tracker: tracking.Tracker | None = None
    diagnose: Callable | None = None

    def open(self, files: contextlib.ExitStack, step: int) -> None:
        """Opens the run's ``metrics.jsonl`` and trackers from ``step`` on, in ``files``."""
        config, run_dir = self.run.config, self.run.run_dir
        self.log = files.enter_context(workdir.MetricsLog(run_dir, step, config.eval_every))
        self.tracker = files.enter_context(tracking.open_tracker(
            config_lib.tracking_backends(config), run_dir, dataclasses.asdict(config),
            resume_step=step if self.resume else None, process_index=jax.process_index()))
        if config.diagnostics_every:
            self.diagnose = build.make_diagnose(self.inputs.model, self.inputs.data,
                                                config.dataset)

    def record(self, metrics: dict[str, np.ndarray], seconds: float,
               diagnostics: dict[str, float] | None, bar: control.ProgressBar | None) -> None:
        """Folds the run's metrics of a chunk of steps into its windows and writes those that
        closed; ``seconds`` is the chunk's wall time."""
        self.times["wall_time"] += seconds
        per_step = runner.per_step_metrics(metrics)
        self.window, window_lines = runner.fold_windows(self.window, per_step, self.run.config,
                                                        diagnostics)
        self.log.write(window_lines)
        self.tracker.log_rows(window_lines)
        if bar is not None:
            bar.show(per_step, window_lines)
        self.nonfinite_since = runner.nonfinite_streak(self.nonfinite_since, per_step)

    def save_at(self, step: int, host_state: Any) -> None:
        """A checkpoint of the run at ``step`` (its ``host_state``), unless it has one."""
        if self.saved_step != step:
            self.manager.save(host_state, dict(self.times))
            self.saved_step = step

    def timing(self, compile_seconds: float, config: Config) -> dict[str, float]:
        """The times its summary reports."""
        timing = {"wall_time_s": self.times["wall_time"], "compile_time_s": compile_seconds}
        if config.diagnostics_every:
            timing["diagnostics_time_s"] = self.times["diagnostics_time"]
        return timing


def _claim(claimed: contextlib.ExitStack, run: group.GroupRun, *, resume: bool,
           overwrite: bool) -> _Member:
    """Claims ``run``'s directory for the group (as :func:`runner.train` does) and reads its
    initial state, or its last checkpoint's."""
    config, run_dir = run.config.replace(baseline=False), Path(run.run_dir)
    resume = resume and (run_dir / workdir.CONFIG_FILE).exists()

    def preflight() -> Inputs:
        if resume:
            runner.check_resumed_config(run_dir, config)
        tracking.check_backends(config_lib.tracking_backends(config))
        return build.load_inputs(config)

    inputs = claimed.enter_context(workdir.run_directory(
        run_dir, resume=resume, overwrite=overwrite, preflight=preflight,
        write=lambda path: workdir.write_config(path, config)))
    init_state = build.initial_state(config, inputs)
    manager = checkpoint.CheckpointManager(run_dir / "checkpoints")
    restored = manager.restore_latest(init_state) if resume else None
    times = {"wall_time": 0.0, "diagnostics_time": 0.0}
    state = init_state
    if restored is not None:
        state, meta = restored
        times.update(meta)
    elif resume:
        workdir.note(f"{str(run_dir)!r} holds no checkpoint yet: starting from step 0.")
    return _Member(run._replace(config=config), resume, inputs, state, times, manager,
                   saved_step=int(state.step))


class _Program:
    """The compiled steps of a group: the single-run steps vmapped over the runs."""

    def __init__(self, members: Sequence[_Member]):
        config = members[0].run.config
        inputs = members[0].inputs
        self.placement = placement = placement_for(config)
        replicas = placement.replicas
        synced = inputs.model.clone(axis_name=replicas.axis_name)
        num_train = len(inputs.data.train)
        train_step, eval_step, _ = steps_lib.make_steps(
            config, synced, inputs.tx, inputs.loss_fn, num_train, replicas=replicas,
            batch_sharding=placement.batch_sharding)
        host = [_host_data(placement, m.inputs.data) for m in members]
        if len({tuple(np.shape(a) for a in h) for h in host}) > 1:
            raise ValueError("runs trained together must have data splits of the same shapes.")
        # A field every run has alike is placed once, not once per run.
        axes = train_state.DeviceData(*[
            None if all(np.array_equal(h[i], host[0][i]) for h in host[1:]) else 0
            for i in range(len(host[0]))])
        self.data = _place_data(placement, host, axes)
        vtrain = _vmap_runs(train_step, (0, axes, 0))
        veval = _vmap_runs(eval_step, (0, axes))
        count = len(members)

        def missing():
            return steps_lib.Evaluation(*[jnp.full((count,), jnp.nan, jnp.float32)] * 3)

        def chunk(state, data, num_steps):
            def step(state, _):
                evaluation = jax.lax.cond(state.step[0] % config.eval_every == 0, veval,
                                          lambda *_: missing(), state, data)
                return vtrain(state, data, evaluation)

            return jax.lax.scan(step, state, length=num_steps)

        if build.dispatch_mode(config) == "scan":
            self.run_steps = placement.compile_chunk(chunk, self.data)
        else:
            train = placement.compile(vtrain, donate_argnums=(0,))
            evaluate = placement.compile(veval)
            absent = placement.constant(missing)

            def run_steps(state, step: int, num_steps: int):
                metrics = []
                for s in range(step, step + num_steps):
                    evaluation = evaluate(state, self.data) if s % config.eval_every == 0 \
                        else absent
                    state, step_metrics = train(state, self.data, evaluation)
                    metrics.append(step_metrics)
                return state, placement.stack_steps(metrics)

            self.run_steps = run_steps
        # A run's summary is measured alone on its own data, by the program a lone run's is.
        tests_every_window = config.eval_test and config.test_every in (None, config.eval_every)
        self.evaluate = placement.compile_eval(eval_step if tests_every_window else
                                               steps_lib.make_eval_step(
            config.replace(eval_test=True, test_every=None), synced, steps_lib.EVAL_BATCH_SIZE,
            replicas))

    def experiment(self, member: _Member) -> Experiment:
        """One run's :class:`~resetax.experiment.build.Experiment`, for its summary."""
        data = self.placement.place_data(member.inputs.data)
        return Experiment(config=member.run.config, init_state=member.host_state,
                          placement=self.placement, run_steps=None,
                          evaluate=lambda state: self.evaluate(state, data), diagnose=None)


def _vmap_runs(step_fn: Callable, in_axes: tuple) -> Callable:
    """``step_fn(state, ...)`` vmapped over the runs, their common step count unbatched.

    The runs of a group are always at the same step: given as one scalar, the steps' ``lax.cond``
    on it (a new epoch's order, the window's distance, the test pass) stay conditionals, where a
    batched predicate would run both branches at every step.
    """

    def one_run(state, step, *args):
        return step_fn(state._replace(step=step), *args)

    batched = jax.vmap(one_run, in_axes=(in_axes[0], None, *in_axes[1:]))
    return lambda state, *args: batched(state, state.step[0], *args)


def _host_data(placement: Placement, data: Any) -> tuple[np.ndarray, ...]:
    """A run's data as :class:`~resetax.experiment.train_state.DeviceData` fields on the host,
    the evaluation splits padded for the placement's devices."""
    return (data.train.inputs, data.train.labels.astype(np.int32), *placement.padded(data.val),
            *placement.padded(data.test))


def _place_data(placement: Placement, host: list[tuple[np.ndarray, ...]],
                axes: train_state.DeviceData) -> train_state.DeviceData:
    """The group's data on the devices: a field that differs between runs stacked along a
    leading run axis; the training split whole on every device, the evaluation splits split over
    the devices along their examples, as :meth:`Placement.place_data` places one run's."""
    n = len(placement.devices)
    fields = []
    for i, axis in enumerate(axes):
        value = host[0][i] if axis is None else np.stack([h[i] for h in host])
        evaluation = i >= 2  # val and test: split over the devices along their examples
        if isinstance(placement, JitMesh):
            spec = P(*([None] * (axis is not None)), AXIS) if evaluation else P()
            fields.append(jax.device_put(value, NamedSharding(placement.mesh, spec)))
            continue
        if evaluation:  # pmap: [device, (run,) examples / devices, ...]
            lead = value.shape[:1] if axis is not None else ()
            value = value.reshape(*lead, n, -1, *value.shape[len(lead) + 1:])
            value = np.moveaxis(value, len(lead), 0)
        else:
            value = np.broadcast_to(value, (n, *value.shape))
        fields.append(jax.device_put(value, placement.sharded))
    return train_state.DeviceData(*fields)


def _stack(states: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *states)


def _slice(tree: Any, index: int) -> Any:
    return jax.tree.map(lambda x: x[index], tree)


def _train_stacked(members: list[_Member], *, progress: bool | control.Progress,
                   stop: control.StopRequest, stop_after: int | None
                   ) -> dict[str, runner.RunResult]:
    """The loop of :func:`runner.train_loop`, once for the group's program and once per run
    for the host's bookkeeping; the runs all start at the same step."""
    program = _Program(members)
    placement, config = program.placement, members[0].run.config
    step = int(members[0].host_state.step)
    state = placement.place_state(_stack([m.host_state for m in members]))
    if progress is True:
        progress = control.Progress(f"{len(members)} runs together")
    with contextlib.ExitStack() as files, control.CompileTimer() as compiling:
        for m in members:
            m.open(files, step)
        bar = files.enter_context(control.ProgressBar(config.num_steps, step, progress or None))
        ending = _Ending(program, members, compiling)
        while step < config.num_steps and ending.active:
            stopping = stop.agreed()
            ending.diverged(step, state)
            if not ending.active or runner._stops_here(step, config, stopping, stop_after):
                break
            start = time.perf_counter()
            diagnostics = _diagnose(members, ending.active, step, placement.fetch, state,
                                    compiling)
            state, metrics = program.run_steps(
                state, step, runner.chunk_length(step, config, stopping=stopping))
            metrics = placement.fetch(metrics)  # [step, run]
            for index in ending.active:
                members[index].record({k: v[:, index] for k, v in metrics.items()},
                                      time.perf_counter() - start, diagnostics.get(index),
                                      bar if index == ending.active[0] else None)
            step += len(metrics["step"])
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                host = placement.fetch(state)
                for index in ending.active:
                    members[index].save_at(step, _slice(host, index))
        ending.rest(step, state, stop.signal_name)
    return ending.results


class _Ending:
    """How the runs of a group end: diverged while the others go on, then finished or stopped
    together."""

    def __init__(self, program: _Program, members: list[_Member],
                 compiling: control.CompileTimer):
        self.program, self.members, self.compiling = program, members, compiling
        self.active = list(range(len(members)))
        self.results: dict[str, runner.RunResult] = {}

    def diverged(self, step: int, state: Any) -> None:
        """Ends the runs whose train loss has been non-finite for a whole window, at ``step``
        (after a checkpoint, as a run alone)."""
        config = self.members[0].run.config
        for index in [i for i in self.active
                      if runner._has_diverged(self.members[i].nonfinite_since, step, config)]:
            host = self.program.placement.fetch(state)
            self.members[index].save_at(step, _slice(host, index))
            self._end(index, host, runner.Diverged, self.members[index].nonfinite_since)

    def rest(self, step: int, state: Any, signal: str | None) -> None:
        """Ends the runs still active at ``step``: finished at the last step, else stopped after
        a checkpoint."""
        host = self.program.placement.fetch(state)
        for index in list(self.active):
            m = self.members[index]
            if step == m.run.config.num_steps:
                self._end(index, host, runner.Finished)
            else:
                m.save_at(step, _slice(host, index))
                self.results[m.run.name] = runner.Stopped(step, signal, m.manager.latest_step())

    def _end(self, index: int, host: Any, result: type, diverged_at: int | None = None) -> None:
        m, placement = self.members[index], self.program.placement
        single = placement.place_state(_slice(host, index))
        self.results[m.run.name] = result(runner._finish(
            self.program.experiment(m), m.run.run_dir, single,
            m.timing(self.compiling.seconds, m.run.config), m.tracker, diverged_at=diverged_at))
        self.active.remove(index)


def _diagnose(members: list[_Member], active: list[int], step: int, fetch: Callable,
              state: Any, compiling: control.CompileTimer) -> dict[int, dict[str, float]]:
    """The diagnostics of the active runs at ``step``, if they are measured there; their time
    (less compilation) counts in each run's diagnostics time."""
    config = members[0].run.config
    if not runner.diagnoses_at(step, config):
        return {}
    start, compiled = time.perf_counter(), compiling.seconds
    host = fetch(state)
    diagnostics = {i: members[i].diagnose(_slice(host, i)) for i in active}
    spent = time.perf_counter() - start - (compiling.seconds - compiled)
    for i in active:
        members[i].times["diagnostics_time"] += spent
    return diagnostics


def check_runs_together(value: int | str) -> None:
    """Checks a ``runs_together`` value: ``"auto"``, ``"off"`` or a positive integer.

    Example:
      >>> from resetax.experiment.together import check_runs_together
      >>> check_runs_together("off")  # fine: returns None
      >>> check_runs_together(0)
      Traceback (most recent call last):
      ...
      ValueError: runs_together must be 'auto', 'off' or a positive integer, got 0.
    """
    if value != "off":
        try:
            _checks.auto_or_positive_int("runs_together", value)
        except ValueError:
            raise ValueError(f"runs_together must be 'auto', 'off' or a positive integer, got "
                             f"{value!r}.") from None
