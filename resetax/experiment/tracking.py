"""Experiment tracking: a run's metrics, reset events, config and figures in TensorBoard or W&B.

The trainer writes ``metrics.jsonl`` and ``summary.json`` whatever is tracked; a tracker sends
the same numbers to where users watch their runs. ``tensorboard`` writes event files under the
run directory's ``tensorboard/`` (with ``tensorboardX``); ``wandb`` logs a Weights & Biases run
whose files go under the run directory's ``wandb/`` (``WANDB_MODE=offline`` needs no network).
Only process 0 of a multi-host run logs. A resumed run continues the same TensorBoard run (its
events after the restart point are superseded) and the same W&B run (its id is kept in
``tracking.json``), so that no step is logged twice.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from resetax import _files

__all__ = ["BACKENDS", "Tracker", "check_backends", "open_tracker"]

BACKENDS = {"tensorboard": "tensorboardX", "wandb": "wandb"}
"""Each backend ``--log-to`` accepts, with the package it needs (the extra of the same name)."""

STATE_FILE = "tracking.json"
_EVENTS = {"reset_steps": "reset", "rollback_steps": "rollback",
           "plasticity_steps": "plasticity_reset"}


def check_backends(log_to: Iterable[str]) -> tuple[str, ...]:
    """Checks the ``--log-to`` backends before any work: known names, their packages installed.

    Args:
      log_to: Backend names (see :data:`BACKENDS`); duplicates are dropped.

    Returns:
      The backends, in the order given, without duplicates.

    Raises:
      ValueError: naming ``log_to``, for an unknown name or a backend whose package is missing
        (with the command that installs it).

    Examples:
      >>> from resetax.experiment import tracking
      >>> tracking.check_backends([])
      ()
      >>> tracking.check_backends(["mlflow"])
      Traceback (most recent call last):
      ...
      ValueError: log_to must be among ['tensorboard', 'wandb'], got 'mlflow'.
    """
    backends = tuple(dict.fromkeys(log_to))
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(f"log_to must be among {sorted(BACKENDS)}, got {name!r}.")
        if importlib.util.find_spec(BACKENDS[name]) is None:
            raise ValueError(
                f"log_to={name} needs the {BACKENDS[name]} package: "
                f"pip install 'resetax[{name}]'.")
    if "wandb" in backends:
        _check_wandb_environment()
        if not _wandb_can_start():
            raise ValueError(
                "log_to=wandb needs a W&B login (run `wandb login` or set WANDB_API_KEY), or "
                "WANDB_MODE=offline to log without one (`wandb sync` uploads later).")
    return backends


def _check_wandb_environment() -> None:
    """``WANDB_MODE`` and ``WANDB_PROJECT`` as W&B takes them, or a ``ValueError`` naming the
    variable (W&B's own errors came from ``wandb.init``, after the run had started: a
    four-line pydantic report, or an internal error)."""
    import wandb

    for variable, setting in (("WANDB_MODE", "mode"), ("WANDB_PROJECT", "project")):
        value = os.environ.get(variable)
        if not value:
            continue
        try:
            wandb.Settings(**{setting: value})
        except Exception as err:  # pydantic's ValidationError, W&B's UsageError
            errors = getattr(err, "errors", None)
            reason = errors()[0]["msg"] if callable(errors) else str(err).splitlines()[0]
            raise ValueError(f"log_to=wandb: {variable}={value!r} is refused by W&B ({reason})"
                             f"; set it to a value W&B accepts, or unset it.") from None


def _wandb_can_start() -> bool:
    """Whether W&B runs offline, or has an API key (the environment, or ``wandb login``'s
    netrc entry), so that ``wandb.init`` will not stop the run asking for one."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    """Where a run's numbers go besides its files; this base class sends them nowhere.

    Examples:
      >>> from resetax.experiment import tracking
      >>> tracker = tracking.Tracker()
      >>> tracker.log_rows([{"step": 0, "val_loss": 1.0}])
      >>> tracker.close()
    """

    def log_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        """Logs ``metrics.jsonl`` rows, in step order, with the resets and rollbacks they list."""

    def finish(self, summary: dict[str, Any], figures: Sequence[Path]) -> None:
        """Logs the run's summary and its figures (PNG files) at its end."""

    def close(self) -> None:
        """Flushes and closes; the run may be resumed later."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_tracker(
    log_to: Iterable[str],
    run_dir: str | Path,
    config: dict[str, Any],
    *,
    resume_step: int | None = None,
    process_index: int = 0,
) -> Tracker:
    """Opens the trackers of a run (none: a :class:`Tracker` that does nothing).

    Args:
      log_to: Backend names (see :data:`BACKENDS`).
      run_dir: The run directory; the trackers write under it only.
      config: The run's config as a flat dict (logged as hyperparameters).
      resume_step: The step a resumed run restarts from (its checkpoint's step), or ``None`` for
        a run that starts from the beginning.
      process_index: ``jax.process_index()``; processes other than 0 log nothing.

    Returns:
      The tracker; call :meth:`Tracker.close` at the end, also when the run stops early.

    Examples:
      >>> import tempfile
      >>> from resetax.experiment import tracking
      >>> run_dir = tempfile.mkdtemp()
      >>> tracker = tracking.open_tracker(["tensorboard"], run_dir, {"reset_prob": 0.03})
      >>> tracker.log_rows([{"step": 0, "val_loss": 2.3, "reset_steps": []}])
      >>> tracker.close()
      >>> sorted(p.name for p in Path(run_dir).iterdir())
      ['tensorboard']
    """
    backends = check_backends(log_to)
    if process_index != 0 or not backends:
        return Tracker()
    run_dir = Path(run_dir)
    trackers = []
    try:
        for name in backends:
            backend = _TensorBoard if name == "tensorboard" else _WandB
            trackers.append(backend(run_dir, config, resume_step))
    except BaseException as err:
        for tracker in trackers:
            tracker.close()
        if isinstance(err, OSError):  # storage, not the arguments: the run can be resumed
            from resetax.experiment.workdir import StorageError

            raise StorageError(err.filename or run_dir, err) from err
        raise
    return trackers[0] if len(trackers) == 1 else _Several(trackers)


class _Several(Tracker):
    def __init__(self, trackers: list[Tracker]):
        self._trackers = trackers

    def log_rows(self, rows):
        for tracker in self._trackers:
            tracker.log_rows(rows)

    def finish(self, summary, figures):
        for tracker in self._trackers:
            tracker.finish(summary, figures)

    def close(self):
        for tracker in self._trackers:
            tracker.close()


class _TensorBoard(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None):
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        logdir = run_dir / "tensorboard"
        # A file of its own for each start (the default name holds the time in seconds, and a
        # resume within the same second would overwrite the first file); TensorBoard hides the
        # earlier files' events from purge_step on: those logged from the checkpoint on before
        # the interruption, which the resumed run logs again.
        parts = len(list(logdir.glob("events.out.tfevents.*"))) if logdir.exists() else 0
        self._writer = SummaryWriter(
            logdir=str(logdir), filename_suffix=f".{parts:04d}", purge_step=resume_step)
        if resume_step is None:
            for summary in hparams(_hyperparameters(config), {}):
                self._writer.file_writer.add_summary(summary)
        self._last_step = 0

    def log_rows(self, rows):
        for step, scalars in _by_step(rows):
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, step)
            self._last_step = step
        self._writer.flush()

    def finish(self, summary, figures):
        import matplotlib.image

        for key, value in _scalars(summary).items():
            self._writer.add_scalar(f"summary/{key}", value, self._last_step)
        for path in figures:
            image = matplotlib.image.imread(path)[..., :3]
            self._writer.add_image(Path(path).stem, image, self._last_step, dataformats="HWC")
        self._writer.flush()

    def close(self):
        self._writer.close()


class _WandB(Tracker):
    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None):
        import wandb

        self._state_path = run_dir / STATE_FILE
        state = _read_state(self._state_path) if resume_step is not None else {}
        run_id = state.get("wandb_id") or uuid.uuid4().hex[:12]
        # Steps up to the last one logged before an interruption are not logged again.
        self._last_logged = state.get("wandb_last_step", -1)
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "resetax"), dir=str(run_dir), id=run_id,
            resume="allow", config=config, name=run_dir.name, reinit="create_new",
            # The trainer prints its own progress; W&B's console capture would mix with it.
            settings=wandb.Settings(silent=True, console="off"))
        self._save_state(run_id)
        self._run_id = run_id

    def log_rows(self, rows):
        for step, scalars in _by_step(rows):
            if step > self._last_logged:
                self._run.log(scalars, step=step)
                self._last_logged = step
        self._save_state(self._run_id)

    def finish(self, summary, figures):
        import wandb

        self._run.summary.update(_scalars(summary))
        self._run.log({Path(p).stem: wandb.Image(str(p)) for p in figures},
                      step=max(self._last_logged, 0))

    def close(self):
        self._run.finish()

    def _save_state(self, run_id):
        state = {"wandb_id": run_id, "wandb_last_step": self._last_logged}
        tmp = self._state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(self._state_path)


def _read_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return _files.read_json(
        path, fix="remove it to start a new W&B run for this run directory",
        known=["wandb_id", "wandb_last_step"],
        types={"wandb_id": (str,), "wandb_last_step": (int,)})


def _by_step(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, float]]]:
    """Each row's scalars at its step, and a 1 for each reset or rollback at its own step."""
    logged: dict[int, dict[str, float]] = {}
    for row in rows:
        for field, name in _EVENTS.items():
            for step in row.get(field) or ():
                logged.setdefault(int(step), {})[name] = 1.0
        scalars = _scalars({k: v for k, v in row.items() if k != "step"})
        logged.setdefault(int(row["step"]), {}).update(scalars)
    return sorted(logged.items())


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (bools as 0/1, a null as NaN); lists and strings are left out."""
    out = {}
    for key, value in record.items():
        if value is None:
            out[key] = math.nan
        elif isinstance(value, (bool, int, float)):
            out[key] = float(value)
    return out


def _hyperparameters(config: dict[str, Any]) -> dict[str, Any]:
    """Config values TensorBoard's hyperparameter table takes: numbers, bools, strings."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in config.items()}
