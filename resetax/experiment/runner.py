"""One training run, read top to bottom: :func:`train` claims the run directory, builds the run
(:mod:`~resetax.experiment.build`) and runs :func:`train_loop`, which trains, evaluates, logs and
checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from resetax.experiment import (
    checkpoint,
    control,
    distributed,
    report,
    tracking,
    train_state,
    workdir,
)
from resetax.experiment import config as config_lib
from resetax.experiment.build import Builder, Experiment, Inputs, load_inputs, setup
from resetax.experiment.config import Config


class Finished(NamedTuple):
    """A run that trained to its last step.

    Attributes:
      summary: Its ``summary.json``.
    """

    summary: dict[str, Any]


class Diverged(NamedTuple):
    """A run that ended on a train loss non-finite for a whole evaluation window.

    Attributes:
      summary: Its ``summary.json``, of the best model before; ``diverged_at`` in it is
        its ``step``.
    """

    summary: dict[str, Any]

    @property
    def step(self) -> int:
        """The first step of the non-finite stretch."""
        return self.summary["diverged_at"]


class Stopped(NamedTuple):
    """A run stopped before its last step, after a checkpoint there (if it had taken a step or
    had one already): resumable.

    Attributes:
      step: The step it stopped at (0 for a run of a group that never started).
      signal: The signal that stopped it (``"SIGTERM"``, ``"SIGINT"``); None when it was
        ``stop_after`` or a group's failed run.
      checkpoint: The step of its last checkpoint, the one ``--resume`` continues from; None
        if it has none (stopped before its first step: a resume starts from step 0).
    """

    step: int
    signal: str | None = None
    checkpoint: int | None = None


RunResult = Finished | Diverged | Stopped


def ended(summary: dict[str, Any]) -> Finished | Diverged:
    """The result of a run that wrote ``summary`` (a finished run's, read back).

    Example:
      >>> from resetax.experiment.runner import ended
      >>> ended({"num_steps": 120}), ended({"num_steps": 40, "diverged_at": 20}).step
      (Finished(summary={'num_steps': 120}), 20)
    """
    return Diverged(summary) if "diverged_at" in summary else Finished(summary)


def train(config: Config, run_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False, progress: bool | control.Progress = True,
          stop_after: int | None = None, build: Builder | None = None,
          stop: control.StopRequest | None = None) -> RunResult:
    """Trains one run and writes its directory; returns how it ended (:data:`RunResult`).

    ``config.baseline`` is ignored (recorded as False): this is one run, and ``resetax train
    --baseline`` calls it once for each run of the pair. Every check (config, run directory,
    device count, dataset availability) happens before anything is written, and the run
    directory is locked for the whole run (:class:`~resetax.experiment.workdir.RunLock`). With
    ``resume=True`` the run continues from its last intact checkpoint and ends identical to an
    uninterrupted one; a run that ended is read back
    (:func:`resetax.experiment.runner.ended`), nothing rewritten.
    ``stop_after`` stops at the first evaluation window that starts at or after that step, after
    a checkpoint there, as an interruption would. A SIGTERM or Ctrl-C stops the run at the end
    of the current evaluation window, after a checkpoint; the result is then
    ``Stopped(step, "SIGTERM")``.

    The runs of a group trained side by side (:func:`resetax.experiment.group.train_group`) pass
    how to ``build`` the experiment (:func:`setup` by default), the ``stop`` request they share
    (one of the run's own by default) and where their ``progress`` bar goes.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_steps=120,
      ...                     eval_every=10, checkpoint_every=60, reset_prob=0.1, patience=20,
      ...                     baseline=False)
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> runner.train(config, run_dir, progress=False, stop_after=60)  # as if interrupted
      Stopped(step=60, signal=None, checkpoint=60)
      >>> summary = runner.train(config, run_dir, progress=False, resume=True).summary
      >>> summary["num_steps"], summary["num_resets"] > 0, 0 <= summary["test_acc"] <= 1
      (120, True, True)
      >>> sorted(p.name for p in run_dir.iterdir())
      ['best', 'checkpoints', 'config.json', 'curves.png', 'metrics.jsonl', 'summary.json']
    """
    config = config.replace(baseline=False)  # one run; the CLI pairs two of them
    run_dir = Path(run_dir)
    if resume and (run_dir / workdir.SUMMARY_FILE).exists():  # ended: read back, not rewritten
        check_resumed_config(run_dir, config)
        return ended(workdir.read_summary(run_dir))

    def preflight() -> Inputs:
        if resume:
            check_resumed_config(run_dir, config)
        tracking.check_backends(config_lib.tracking_backends(config))  # their packages
        return load_inputs(config)

    with workdir.run_directory(run_dir, resume=resume, overwrite=overwrite, preflight=preflight,
                               write=lambda path: workdir.write_config(path, config)) as inputs:
        experiment = (build or setup)(config, inputs)
        return train_loop(experiment, run_dir, resume=resume, progress=progress,
                          stop_after=stop_after, stop=stop)


def check_resumed_config(run_dir: str | Path, config: Config) -> None:
    """Checks that the run in ``run_dir`` was started with ``config`` (``baseline`` aside).

    A run of a group (its parent holds the group's plan.json) whose config differs was not
    trained by the group (a ``resetax train`` into the group's directory, a run moved in):
    reusing it would mix it into the group's results, so it raises
    :class:`~resetax.experiment.workdir.RunError` naming it and the fields that differ. Any
    other run raises ``ValueError``.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import runner, workdir
      >>> from resetax.experiment.config import get_config
      >>> group = Path(tempfile.mkdtemp())
      >>> workdir.write_json(group / "plan.json", {"command": "train", "seeds": None})
      >>> (group / "resetting").mkdir()
      >>> workdir.write_config(group / "resetting", get_config("quick", num_steps=20))
      >>> runner.check_resumed_config(group / "resetting", get_config("quick"))
      Traceback (most recent call last):
      ...
      resetax.experiment.workdir.RunError: '.../resetting' holds a run of another config than its group's: num_steps (saved 20, the group's 4000); its group did not train it: move it out of '...', then --resume trains that run again from step 0.
    """  # noqa: E501
    run_dir = Path(run_dir)
    changed = workdir.load_config(run_dir).diff(config.replace(baseline=False))
    changed.pop("baseline", None)
    if not changed:
        return
    if workdir.in_group(run_dir):
        fields = ", ".join(f"{name} (saved {saved!r}, the group's {planned!r})"
                           for name, (saved, planned) in changed.items())
        raise workdir.RunError(
            f"{str(run_dir)!r} holds a run of another config than its group's: {fields}; its "
            f"group did not train it: move it out of {str(run_dir.parent)!r}, then --resume "
            f"trains that run again from step 0.")
    raise ValueError(f"cannot resume {str(run_dir)!r} with a different config: {list(changed)}.")


def train_loop(experiment: Experiment, run_dir: Path, *, resume: bool = False,
               progress: bool | control.Progress = True, stop_after: int | None = None,
               stop: control.StopRequest | None = None) -> RunResult:
    """Trains from the initial state, or from the last intact checkpoint with ``resume``.

    Writes ``metrics.jsonl`` as evaluation windows complete, a checkpoint every
    ``checkpoint_every`` steps, and at the end the best model, ``summary.json`` and
    ``curves.png``. Returns :class:`Finished`, or :class:`Stopped` when it stopped early (see
    :func:`train`). A run whose train loss stays non-finite for a whole evaluation window ends
    there, :class:`Diverged`: its summary (of the best model before that) holds
    ``"diverged_at"``, the first step of that stretch. It stops on ``stop``
    (:class:`~resetax.experiment.control.StopRequest`), a request of its own by default, and
    shows a ``progress`` bar (``True``, or where: :class:`~resetax.experiment.control.Progress`).
    """
    config = experiment.config
    manager = checkpoint.CheckpointManager(run_dir / "checkpoints")
    host_state, times = _initial_state(experiment, manager, resume, run_dir)
    tracker = tracking.open_tracker(
        config_lib.tracking_backends(config), run_dir, dataclasses.asdict(config),
        resume_step=int(host_state.step) if resume else None,
        process_index=jax.process_index())
    with tracker:
        return _loop(experiment, run_dir, manager, host_state, times, tracker,
                     progress=progress, stop_after=stop_after, stop=stop)


def _loop(experiment: Experiment, run_dir: Path, manager: checkpoint.CheckpointManager,
          host_state: Any, times: dict[str, float], tracker: tracking.Tracker, *,
          progress: bool | control.Progress, stop_after: int | None,
          stop: control.StopRequest | None) -> RunResult:
    """:func:`train_loop` from its initial state on, ``tracker`` open; ``times`` (the wall
    time and the diagnostics' time so far) grow as it runs."""
    config, placement = experiment.config, experiment.placement
    step = saved_step = int(host_state.step)
    state = placement.place_state(host_state)
    window, nonfinite_since = Window(), None
    own_stop = stop is None  # handled here; a shared one is entered by its owner
    stop = control.StopRequest() if own_stop else stop
    shown = (progress if isinstance(progress, control.Progress) else control.Progress()
             ) if progress else None
    with (stop if own_stop else contextlib.nullcontext()), control.CompileTimer() as compiling, \
            workdir.MetricsLog(run_dir, step, config.eval_every) as log, \
            control.ProgressBar(config.num_steps, step, shown) as bar:
        while step < config.num_steps:
            stopping = stop.agreed()  # the same decision on every process
            if _stops_here(step, config, stopping, stop_after) or _has_diverged(
                    nonfinite_since, step, config):
                break
            start, diagnostics = time.perf_counter(), None
            if diagnoses_at(step, config):
                compiled = compiling.seconds  # its compilation counts as compile time
                diagnostics = experiment.diagnose(placement.fetch(state))
                times["diagnostics_time"] += (time.perf_counter() - start
                                              - (compiling.seconds - compiled))
            state, metrics = experiment.run_steps(
                state, step, chunk_length(step, config, stopping=stopping))
            per_step = per_step_metrics(placement.fetch(metrics))
            times["wall_time"] += time.perf_counter() - start
            window, window_lines = fold_windows(window, per_step, config, diagnostics)
            log.write(window_lines)
            tracker.log_rows(window_lines)
            bar.show(per_step, window_lines)
            nonfinite_since = nonfinite_streak(nonfinite_since, per_step)
            step = per_step[-1]["step"] + 1
            if step % config.checkpoint_every == 0 or step == config.num_steps:
                saved_step = _save(manager, placement.fetch(state), times)
        if step < config.num_steps and saved_step != step:
            _save(manager, placement.fetch(state), times)
    timing = {"wall_time_s": times["wall_time"], "compile_time_s": compiling.seconds}
    if config.diagnostics_every:
        timing["diagnostics_time_s"] = times["diagnostics_time"]
    if _has_diverged(nonfinite_since, step, config):
        return Diverged(_finish(experiment, run_dir, state, timing, tracker,
                                diverged_at=nonfinite_since))
    if step < config.num_steps:
        return Stopped(step, stop.signal_name, manager.latest_step())
    return Finished(_finish(experiment, run_dir, state, timing, tracker))


def nonfinite_streak(since: int | None, per_step: list[dict[str, Any]]) -> int | None:
    """The first step of the current run of non-finite train losses, None if the last is finite.

    Example:
      >>> from resetax.experiment.runner import nonfinite_streak
      >>> per_step = [{"step": s, "train_loss": v} for s, v in ((4, 1.0), (5, float("nan")),
      ...                                                         (6, float("inf")))]
      >>> nonfinite_streak(None, per_step), nonfinite_streak(2, per_step[1:])
      (5, 2)
      >>> print(nonfinite_streak(5, [{"step": 7, "train_loss": 0.9}]))  # recovered
      None
    """
    for row in per_step:
        if math.isfinite(row["train_loss"]):
            since = None
        elif since is None:
            since = row["step"]
    return since


def chunk_length(step: int, config: Config, *, stopping: bool = False) -> int:
    """How many steps to run in one dispatch from ``step``.

    At most ``steps_per_dispatch``; a dispatch never crosses a checkpoint, a diagnostics step or
    the end of the run, nor, once a stop is requested, the end of the evaluation window.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.runner import chunk_length
      >>> config = get_config("quick", steps_per_dispatch=30, eval_every=20,
      ...                     checkpoint_every=100, num_steps=130)
      >>> [chunk_length(s, config) for s in (0, 90, 120)]  # to the checkpoint; to the end
      [30, 10, 10]
      >>> chunk_length(30, config, stopping=True)  # to the end of the window [20, 40)
      10
    """
    boundaries = [config.steps_per_dispatch, config.num_steps - step,
                  config.checkpoint_every - step % config.checkpoint_every]
    if stopping:
        boundaries.append(config.eval_every - step % config.eval_every)
    if config.diagnostics_every:
        boundaries.append(config.diagnostics_every - step % config.diagnostics_every)
        if step < _last_window(config):
            boundaries.append(_last_window(config) - step)
    return min(boundaries)


def diagnoses_at(step: int, config: Config) -> bool:
    """Whether the diagnostics are measured at ``step``: every ``diagnostics_every`` steps, and
    at the start of the last evaluation window, so that their curve reaches the run's end.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.runner import diagnoses_at
      >>> config = get_config("quick", num_steps=1000, eval_every=10, diagnostics_every=200)
      >>> [s for s in range(1000) if diagnoses_at(s, config)]
      [0, 200, 400, 600, 800, 990]
    """
    return bool(config.diagnostics_every) and (
        step % config.diagnostics_every == 0 or step == _last_window(config))


def _last_window(config: Config) -> int:
    """The first step of the run's last evaluation window."""
    return (config.num_steps - 1) // config.eval_every * config.eval_every


def per_step_metrics(metrics: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One dict of Python numbers per step, from the steps' metrics stacked.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.runner import per_step_metrics
      >>> per_step_metrics({"step": np.array([4, 5]), "did_reset": np.array([False, True]),
      ...              "train_loss": np.array([0.5, 0.25], np.float32)})
      [{'step': 4, 'did_reset': False, 'train_loss': 0.5},
       {'step': 5, 'did_reset': True, 'train_loss': 0.25}]
    """
    def python(v: np.ndarray):
        if v.dtype == np.bool_:
            return bool(v)
        return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)

    return [{k: python(v[i]) for k, v in metrics.items()} for i in range(len(metrics["step"]))]


class Window(NamedTuple):
    """The evaluation window being accumulated: steps ``[start, start + eval_every)``.

    Attributes:
      start: The window's first step, where validation (and test) were measured; -1 before the
        first window.
      measured: The window's measurements at ``start``: step, val_loss, val_acc, test_acc,
        learning_rate, and the diagnostics when they ran there.
      train_losses: The train losses of the window's steps so far.
      reset_steps: The window's steps that reset at random.
      rollback_steps: The window's steps whose non-finite update was rolled back.
      plasticity_steps: The window's steps where the config's ``plasticity`` reset acted.
    """

    start: int = -1
    measured: tuple[tuple[str, Any], ...] = ()
    train_losses: tuple[float, ...] = ()
    reset_steps: tuple[int, ...] = ()
    rollback_steps: tuple[int, ...] = ()
    plasticity_steps: tuple[int, ...] = ()


def fold_windows(window: Window, per_step: list[dict[str, Any]], config: Config,
              diagnostics: dict[str, float] | None = None) -> tuple[Window, list[dict[str, Any]]]:
    """Folds the metrics of consecutive steps (:func:`per_step_metrics`) into evaluation
    windows; returns the window still open and the lines (``metrics.jsonl``'s) of those closed.

    A window starts at each step divisible by ``eval_every`` and ends before the next one (or at
    the end of the run). Its line holds the measurements at its first step (validation and test,
    the learning rate, the ``diagnostics`` if they were taken at that step), the mean train loss
    of its steps, the steps that reset, and the resetting status after its last step.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.runner import Window, fold_windows
      >>> config = get_config("quick", eval_every=2, num_steps=4)
      >>> row = lambda step, loss, reset: dict(
      ...     step=step, train_loss=loss, did_reset=reset, val_loss=1.0, val_acc=0.5,
      ...     test_acc=0.5, learning_rate=0.1, active=True, num_resets=int(reset), distance=0.0)
      >>> window, window_lines = fold_windows(Window(), [row(0, 2.0, False), row(1, 1.0, True),
      ...                                      row(2, 0.5, False)], config)
      >>> [(line["step"], line["train_loss"], line["reset_steps"]) for line in window_lines]
      [(0, 1.5, [1])]
      >>> window.start, window.train_losses  # steps 2 and 3 make the next window
      (2, (0.5,))
    """
    window_lines = []
    for row in per_step:
        if row["step"] % config.eval_every == 0:
            measured = {k: row[k] for k in ("step", "val_loss", "val_acc", "test_acc",
                                            "learning_rate")}
            if diagnostics is not None and row["step"] == per_step[0]["step"]:
                measured.update(diagnostics)
            window = Window(start=row["step"], measured=tuple(measured.items()))
        window = window._replace(
            train_losses=(*window.train_losses, row["train_loss"]),
            reset_steps=(*window.reset_steps, row["step"]) if row["did_reset"]
            else window.reset_steps,
            rollback_steps=(*window.rollback_steps, row["step"]) if row.get("did_rollback")
            else window.rollback_steps,
            plasticity_steps=(*window.plasticity_steps, row["step"])
            if row.get("did_plasticity_reset") else window.plasticity_steps)
        end = row["step"] + 1
        if end % config.eval_every == 0 or end == config.num_steps:
            window_lines.append({
                **dict(window.measured), "reset_steps": list(window.reset_steps),
                "rollback_steps": list(window.rollback_steps),
                "train_loss": float(np.mean(window.train_losses)),
                "active": row["active"], "num_resets": row["num_resets"],
                "num_rollbacks": row.get("num_rollbacks", 0), "distance": row["distance"],
                **({"plasticity_steps": list(window.plasticity_steps)} if config.plasticity
                   else {}),
                **({"num_recycled": row["num_recycled"]} if "num_recycled" in row else {})})
    return window, window_lines


def summarize(experiment: Experiment, state: train_state.TrainState,
              final: train_state.TrainState, wall_time_s: float,
              compile_time_s: float = 0.0,
              diagnostics_time_s: float | None = None) -> dict[str, Any]:
    """The run's ``summary.json``: the best-validation model's metrics, measured anew.

    ``state`` is the final train state as placed on the devices, ``final`` its host copy.

    Returns best step, best validation loss and accuracy, the test accuracy of the best model and
    of the last params, the numbers of resets and of rollbacks of non-finite updates, steps,
    devices, and times: ``wall_time_s`` of the training loop (this session's part of it, on a
    resumed run), of which ``compile_time_s`` went to compiling, ``diagnostics_time_s`` (given
    when the diagnostics ran) to measuring the diagnostics, and ``loop_time_s``, the rest.
    """
    from resetax import find_resetting_state

    placement = experiment.placement
    best_model = placement.on_devices(
        lambda s: s._replace(params=s.best_params, batch_stats=s.best_batch_stats))
    best_val_loss, best_val_acc, best_test_acc = placement.fetch(
        experiment.evaluate(best_model(state)))
    last_test_acc = placement.fetch(experiment.evaluate(state)).test_acc
    devices = experiment.placement.devices
    diagnostics = {} if diagnostics_time_s is None else {
        "diagnostics_time_s": round(diagnostics_time_s, 3)}
    return {
        "best_step": int(final.best_step),
        "best_val_loss": float(best_val_loss),
        "best_val_acc": float(best_val_acc),
        "test_acc": float(best_test_acc),
        "last_test_acc": float(last_test_acc),
        "num_resets": int(find_resetting_state(final.opt_state).num_resets),
        "num_rollbacks": int(find_resetting_state(final.opt_state).num_nonfinite_resets),
        "reset_prob": experiment.config.reset_prob,
        "num_steps": int(final.step),
        "wall_time_s": round(wall_time_s, 3),
        "compile_time_s": round(compile_time_s, 3),
        **diagnostics,
        "loop_time_s": round(wall_time_s - compile_time_s - (diagnostics_time_s or 0.0), 3),
        "device": f"{len(devices)}x {devices[0].platform}:{devices[0].device_kind}",
        "num_processes": jax.process_count(),
        "parallel": experiment.config.parallel,
    }


def _stops_here(step: int, config: Config, stopping: bool, stop_after: int | None) -> bool:
    """Whether the loop stops before ``step``: only ever at the start of an evaluation window."""
    if step % config.eval_every:
        return False
    return stopping or (stop_after is not None and step >= stop_after)


def _has_diverged(nonfinite_since: int | None, step: int, config: Config) -> bool:
    """Whether the train loss has been non-finite for a whole evaluation window."""
    return nonfinite_since is not None and step - nonfinite_since >= config.eval_every


def _initial_state(experiment: Experiment, manager: checkpoint.CheckpointManager,
                   resume: bool, run_dir: Path) -> tuple[train_state.TrainState, dict[str, float]]:
    """The state the loop starts from, and the times of the loop so far (those its checkpoint
    holds: a checkpoint of before diagnostics_time holds only the wall time)."""
    restored = manager.restore_latest(experiment.init_state) if resume else None
    times = {"wall_time": 0.0, "diagnostics_time": 0.0}
    if restored is None:
        if resume:
            workdir.note(f"{str(run_dir)!r} holds no checkpoint yet: starting from step 0.")
        return experiment.init_state, times
    state, meta = restored
    return state, {**times, **meta}


def _save(manager: checkpoint.CheckpointManager, host_state: Any,
          times: dict[str, float]) -> int:
    manager.save(host_state, dict(times))
    return int(host_state.step)


def _finish(experiment: Experiment, run_dir: Path, state: train_state.TrainState,
            timing: dict[str, float], tracker: tracking.Tracker,
            diverged_at: int | None = None) -> dict[str, Any]:
    final = experiment.placement.fetch(state)
    checkpoint.save_best(run_dir / "best", final.best_params, final.best_batch_stats)
    summary = summarize(experiment, state, final, **timing)
    if diverged_at is not None:
        summary["diverged_at"] = diverged_at
    if distributed.is_primary():  # summary.json last: a run that has it is finished
        curves = report.plot_run(run_dir)
        workdir.write_json(run_dir / workdir.SUMMARY_FILE, summary)
        tracker.finish(summary, [curves])
    return summary
