"""The run directory: its checks, its ``config.json`` and its ``metrics.jsonl``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from resetax import _checks, _files
from resetax.experiment import control, distributed
from resetax.experiment.config import Config
from resetax.experiment.tracking import STATE_FILE as TRACKING_FILE

CONFIG_FILE, METRICS_FILE, SUMMARY_FILE = "config.json", "metrics.jsonl", "summary.json"
LOCK_FILE = ".lock"
PLAN_FILE = "plan.json"  # a group of runs (a pair, compare's seeds, a paper table): its plan
# What resetax writes in a run directory (and in the runs of a group, its subdirectories):
# --overwrite removes a directory only when everything in it is one of these.
RUN_FILES = frozenset({
    CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, LOCK_FILE, PLAN_FILE, TRACKING_FILE, "curves.png",
    "compare.md", "compare.json", "compare.png", "table.md", "table.json", "table.png"})
RUN_FOLDERS = frozenset({"best", "checkpoints", "tensorboard", "wandb"})
# What a finished run's summary.json must hold to be reused by a group's --resume (the pair's
# table shows them all).
SUMMARY_KEYS = ("test_acc", "last_test_acc", "best_val_loss", "best_step", "num_resets",
                "wall_time_s")
_RESTART = "restore it, or start the run again with --overwrite"


T = TypeVar("T")


class RunError(RuntimeError):
    """A run could not go on (unwritable or corrupted checkpoints, divergence); one-line message."""


class StorageError(RunError):
    """A file or directory of a run could not be written (a full disk, a read-only one).

    Example:
      >>> import errno
      >>> from resetax.experiment.workdir import StorageError
      >>> print(StorageError("run/metrics.jsonl", OSError(errno.ENOSPC, "No space left on device")))
      cannot write 'run/metrics.jsonl': no space left on its disk; free some space, then continue with --resume.
    """  # noqa: E501

    def __init__(self, path: str | os.PathLike, error: BaseException,
                 then: str = "continue with --resume"):
        self.path, self.error = Path(path), error
        super().__init__(f"cannot write {str(path)!r}: {storage_problem(error)}; "
                         f"{storage_fix(error)}, then {then}.")


def storage_problem(error: BaseException) -> str:
    """What went wrong writing, in a few words (``error`` may be tensorstore's, for Orbax)."""
    if is_disk_full(error):
        return "no space left on its disk"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[0].lower() + error.strerror[1:]
    line = next(iter(str(error).strip().splitlines()), type(error).__name__)
    return line if len(line) <= 200 else line[:200] + "..."


def storage_fix(error: BaseException) -> str:
    return "free some space" if is_disk_full(error) else "make it writable"


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (an ``OSError``, or tensorstore's for Orbax) says the disk is full."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "os_error_code='28'" in str(error)


@contextlib.contextmanager
def writing(path: str | os.PathLike, then: str = "continue with --resume") -> Iterator[None]:
    """Turns an ``OSError`` while writing ``path`` into a :class:`StorageError` naming it."""
    try:
        yield
    except OSError as err:
        raise StorageError(path, err, then) from None


@contextlib.contextmanager
def run_directory(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                  write: Callable[[Path], None], preflight: Callable[[], T] | None = None,
                  marker: str = CONFIG_FILE) -> Iterator[T | None]:
    """The run-directory protocol of every command (a run, a pair, ``compare``, ``reproduce``),
    held for the whole run; yields what ``preflight()`` returns.

    1. Check (:func:`check_run_dir`): an existing run is touched only to resume it (it must hold
       ``marker``) or to overwrite it.
    2. ``preflight()``: every other check that can run before anything is written (devices,
       datasets).
    3. Lock (:class:`RunLock`), until the run ends.
    4. Check again, under the lock: another run may have written there since.
    5. Prepare, unless resuming: the directory is created, emptied with ``overwrite`` (all but
       the lock), and ``write(run_dir)`` writes what a resume reads back (``config.json``, a
       group's ``plan.json``); in a multi-process run process 0 does it while the others wait.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> write = lambda path: workdir.write_config(path, get_config("quick"))
      >>> with workdir.run_directory(run_dir, resume=False, overwrite=False, write=write,
      ...                            preflight=lambda: "checked") as checked:
      ...     checked, sorted(p.name for p in run_dir.iterdir())
      ('checked', ['.lock', 'config.json'])
      >>> with workdir.run_directory(run_dir, resume=False, overwrite=False, write=write):
      ...     pass
      Traceback (most recent call last):
      ...
      FileExistsError: run directory '...run' already exists; pass --resume to continue it or ...
    """
    run_dir = check_run_dir(run_dir, resume=resume, overwrite=overwrite, marker=marker)
    checked = preflight() if preflight is not None else None
    with RunLock(run_dir):
        check_run_dir(run_dir, resume=resume, overwrite=overwrite, marker=marker)
        if not resume:
            with control.critical():  # a signal waits: never a half-emptied directory
                _prepare(run_dir, write, overwrite=overwrite)
        PREPARED.add(run_dir.absolute())
        yield checked


# The run directories this process prepared (or resumes): a signal's message points at them.
PREPARED: set[Path] = set()


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool,
                  marker: str = CONFIG_FILE) -> Path:
    """Refuses to touch an existing run unless asked to resume or overwrite it; a run to resume
    must hold ``marker`` (its ``config.json``, a table's ``plan.json``).

    Returns:
      ``run_dir`` as a ``Path``. Nothing is created.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> root = Path(tempfile.mkdtemp())
      >>> workdir.check_run_dir(root / "new", resume=False, overwrite=False).name
      'new'
      >>> (root / "old").mkdir(); (root / "old" / "metrics.jsonl").write_text("")
      0
      >>> workdir.check_run_dir(root / "old", resume=False, overwrite=False)
      Traceback (most recent call last):
      ...
      FileExistsError: run directory '...old' already exists; pass --resume to continue it or ...
      >>> workdir.check_run_dir(root / "old" / "metrics.jsonl", resume=False, overwrite=False)
      Traceback (most recent call last):
      ...
      NotADirectoryError: run directory '...metrics.jsonl' is a file, not a directory.
    """
    run_dir = Path(run_dir)
    check_resume_or_overwrite(resume, overwrite)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"run directory {str(run_dir)!r} is a file, not a directory.")
    if run_dir.is_symlink() and not run_dir.exists():  # mkdir said only "File exists"
        raise FileNotFoundError(
            f"run directory {str(run_dir)!r} is a symbolic link to {os.readlink(run_dir)!r}, "
            f"which does not exist; create that directory, or choose another --run-dir.")
    if _has_content(run_dir) and not (resume or overwrite):
        raise FileExistsError(
            f"run directory {str(run_dir)!r} already exists; pass --resume to continue it or "
            f"--overwrite to replace it."
        )
    if resume:
        _check_resumable(run_dir, marker)
    if overwrite and _has_content(run_dir):
        _check_overwritable(run_dir)
    return run_dir


def _check_overwritable(run_dir: Path) -> None:
    """Refuses ``--overwrite`` on anything but resetax's own runs, none of them running.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> folder = Path(tempfile.mkdtemp())
      >>> (folder / "notes.txt").write_text("mine")
      4
      >>> workdir.check_run_dir(folder, resume=False, overwrite=True)
      Traceback (most recent call last):
      ...
      FileExistsError: --overwrite refuses to empty '...': it holds 'notes.txt', which resetax ...
    """
    foreign = _foreign_entry(run_dir)
    if foreign is not None:
        raise FileExistsError(
            f"--overwrite refuses to empty {str(run_dir)!r}: it holds "
            f"{str(foreign.relative_to(run_dir))!r}, which resetax did not write; choose another "
            f"--run-dir, or remove what is yours first.")
    # A run in progress inside (this directory's own lock is taken, and checked, by RunLock).
    for lock in sorted(run_dir.glob(f"*/**/{LOCK_FILE}")):
        holder = _lock_holder(lock)
        if holder is not None:
            raise FileExistsError(
                f"--overwrite refuses to empty {str(run_dir)!r}: a run is in progress in "
                f"{str(lock.parent)!r} ({holder}); wait for it or stop it first.")


def _foreign_entry(directory: Path) -> Path | None:
    """The first entry under ``directory`` that resetax does not write, or ``None``."""
    for entry in sorted(directory.iterdir()):
        if entry.is_symlink():
            return entry
        if entry.is_dir():
            if entry.name in RUN_FOLDERS or _is_orbax_temporary(entry.name):
                continue
            inner = _foreign_entry(entry)  # a group's run, or a paper table's cell
            if inner is not None:
                return inner
        elif entry.name not in RUN_FILES and not _is_temporary(entry.name):
            return entry
    return None


def _is_temporary(name: str) -> bool:
    """``write_json``'s temporary file (``summary.tmp``), left behind by a crash."""
    return name.endswith(".tmp") and any(
        name == Path(known).with_suffix(".tmp").name for known in RUN_FILES)


def _is_orbax_temporary(name: str) -> bool:
    """Orbax's temporary directory for ``best/`` (``best.orbax-checkpoint-tmp``), left behind by
    a process killed or stopped while it saved the best model."""
    return any(name.startswith(f"{folder}.orbax-checkpoint-tmp") for folder in RUN_FOLDERS)


def _lock_holder(lock: Path) -> str | None:
    """Who holds the ``flock`` on ``lock`` (its pid and host as written), or ``None``."""
    import fcntl

    try:
        with open(lock, "a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                file.seek(0)
                return file.read().strip() or "pid unknown"
            fcntl.flock(file, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuses ``resume`` and ``overwrite`` together.

    Example:
      >>> from resetax.experiment.workdir import check_resume_or_overwrite
      >>> check_resume_or_overwrite(True, True)
      Traceback (most recent call last):
      ...
      ValueError: resume and overwrite exclude each other; pass at most one.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other; pass at most one.")


def _check_resumable(run_dir: Path, marker: str) -> None:
    if not (run_dir / marker).exists():
        raise FileNotFoundError(f"nothing to resume: {str(run_dir)!r} holds no {marker}.")


class RunLock:
    """An exclusive lock on a run directory, held for the whole run.

    The directory is created if needed, and ``.lock`` in it is locked with ``flock`` (released by
    the kernel however the process ends, ``kill -9`` included) and holds the holder's pid and
    host. A second run into the same directory is refused with a message naming the holder. A
    ``.lock`` left by a run that ended without removing it is reported and taken over. In a
    multi-process run only process 0 locks.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.workdir import RunLock
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> with RunLock(run_dir):
      ...     with RunLock(run_dir):  # a second run into the same directory
      ...         pass
      Traceback (most recent call last):
      ...
      resetax.experiment.workdir.RunLocked: run directory '...run' is in use by another run (pid...
      >>> (run_dir / ".lock").exists()  # released and removed on exit
      False
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self._file: Any = None

    def __enter__(self) -> RunLock:
        if not distributed.is_primary():
            return self
        import fcntl

        make_run_dir(self.run_dir)
        path = self.run_dir / LOCK_FILE
        file = open(path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise RunLocked(
                f"run directory {str(self.run_dir)!r} is in use by another run ({holder}); "
                f"wait for it to end, or choose another --run-dir.") from None
        file.seek(0)
        stale = file.read().strip()
        if stale and not _noted_above(stale, self.run_dir):
            _note(f"a previous run ({stale}) ended without releasing {path}; taking it over.")
            _STALE_LOCKS_NOTED.append((stale, self.run_dir.resolve()))
        with contextlib.suppress(OSError):  # a full disk: the flock still holds, unnamed
            file.seek(0)
            file.truncate()
            file.write(f"pid {os.getpid()} on {socket.gethostname()}")
            file.flush()
        self._file = file
        control.on_exit(id(self), path.unlink)  # a signal ending the process removes it too
        return self

    def __exit__(self, *exc_info) -> None:
        control.on_exit(id(self), None)
        if self._file is not None:
            (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            self._file.close()  # closing releases the flock
            self._file = None


class RunLocked(FileExistsError):
    """The run directory is locked by another run (see :class:`RunLock`)."""


def make_run_dir(run_dir: Path) -> None:
    """Creates ``run_dir`` (and its parents), or says in one line why it cannot (``OSError``).

    Example:
      >>> from pathlib import Path
      >>> from resetax.experiment.workdir import make_run_dir
      >>> make_run_dir(Path("/proc/run"))
      Traceback (most recent call last):
      ...
      OSError: cannot create run directory '/proc/run': ...
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OSError(f"cannot create run directory {str(run_dir)!r}: "
                      f"{err.strerror or err}.") from None


def load_config(run_dir: str | os.PathLike) -> Config:
    """Reads the config a run directory was started with (its ``config.json``).

    A ``config.json`` that is empty, not JSON, not an object, or holds a key or a value that is
    not a :class:`Config` field's raises :class:`~resetax._files.DamagedFile` naming it.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> workdir.write_config(run_dir, get_config("quick", noise_rate=0.6))
      >>> workdir.load_config(run_dir) == get_config("quick", noise_rate=0.6)
      True
      >>> _ = (run_dir / "config.json").write_text('{"seed": 0, "note": "mine"}')
      >>> workdir.load_config(run_dir)
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...config.json' has an unknown key, "note"; restore it, ...
    """
    _check_resumable(Path(run_dir), CONFIG_FILE)
    path = Path(run_dir) / CONFIG_FILE
    fix = _restart(Path(run_dir))
    fields = _files.read_json(path, fix=fix,
                              known=[field.name for field in dataclasses.fields(Config)])
    try:
        return Config(**fields)
    except (TypeError, ValueError) as err:
        reason = next(iter(str(err).splitlines()), type(err).__name__).rstrip(".")
        raise _files.damaged(path, f"holds a bad value ({reason})", fix) from None


def _restart(run_dir: Path) -> str:
    """What to do about a damaged file of the run in ``run_dir``: a run of a group (its parent
    holds the group's plan.json) is trained again alone, the group's other runs kept
    (``--overwrite`` would empty the whole group).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> group = Path(tempfile.mkdtemp())
      >>> workdir.write_json(group / "plan.json", {"command": "train", "seeds": None})
      >>> workdir._restart(group / "baseline")
      "restore it, or delete '.../baseline' so that --resume trains that run again from step 0"
      >>> workdir._restart(group)
      'restore it, or start the run again with --overwrite'
    """
    if in_group(run_dir):
        return (f"restore it, or delete {str(run_dir)!r} so that --resume trains that run again "
                f"from step 0")
    return _RESTART


def read_summary(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``summary.json`` of a finished run, read back (a group's ``--resume`` reuses it).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> _ = (run_dir / "summary.json").write_text('{"best_step": 3}')
      >>> workdir.read_summary(run_dir)
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...summary.json' lacks "test_acc", ... so that --resume ends the run again from its last checkpoint.
    """  # noqa: E501
    numbers = (float, type(None))
    return _files.read_json(
        Path(run_dir) / SUMMARY_FILE, required=SUMMARY_KEYS,
        types={**{key: numbers for key in SUMMARY_KEYS}, "test_acc": (float,)},
        fix=_restart(Path(run_dir)) if in_group(Path(run_dir)) else
        "restore it, or delete it so that --resume ends the run again from its last checkpoint")


def in_group(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` is a run of a group (its parent holds the group's plan.json).

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> group = Path(tempfile.mkdtemp())
      >>> workdir.write_json(group / "plan.json", {"command": "train", "seeds": None})
      >>> workdir.in_group(group / "baseline"), workdir.in_group(group)
      (True, False)
    """
    run_dir = Path(run_dir)
    return (run_dir.parent / PLAN_FILE).exists() and not (run_dir / PLAN_FILE).exists()


def read_plan(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``plan.json`` of a group of runs (a pair, a ``compare``, a paper table), read back.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> workdir.write_json(run_dir / "plan.json", {"command": "compare", "seeds": 3})
      >>> workdir.read_plan(run_dir)
      {'command': 'compare', 'seeds': 3}
      >>> workdir.write_json(run_dir / "plan.json", {"command": "compare"})
      >>> workdir.read_plan(run_dir)
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...plan.json' lacks "seeds"; restore it, or start the run ...
    """
    path = Path(run_dir) / PLAN_FILE
    types = {"command": (str,), "seeds": (int, type(None)), "table": (str,),
             "cells": (list, type(None)), "overrides": (dict,), "runs_together": (int, str)}
    plan = _files.read_json(path, fix=_RESTART, known=types, required=["command"], types=types)
    if plan.get("runs_together", "off") != "off":
        try:
            _checks.auto_or_positive_int("runs_together", plan["runs_together"])
        except ValueError:
            raise _files.damaged(path, f"holds runs_together {plan['runs_together']!r}, not "
                                 f"auto, off or a positive integer", _RESTART) from None
    required = {"compare": ["seeds"], "reproduce": ["table", "seeds", "cells", "overrides"]}
    _files.check_object(path, plan, fix=_RESTART, required=required.get(plan["command"], []),
                        types={"seeds": (int,)} if plan["command"] != "train" else {})
    return plan


def write_config(run_dir: str | os.PathLike, config: Config) -> None:
    """Writes ``config.json``, from which a run is resumed (see :func:`load_config`).

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> from resetax.experiment.config import get_config
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> workdir.write_config(run_dir, get_config("quick"))
      >>> saved = json.loads((run_dir / "config.json").read_text())
      >>> saved["dataset"], saved["baseline"]  # the quick preset trains a pair
      ('mnist1d', True)
    """
    write_json(Path(run_dir) / CONFIG_FILE, dataclasses.asdict(config))


def _prepare(run_dir: Path, write: Callable[[Path], None], *, overwrite: bool) -> None:
    """Creates the run directory (emptied with ``overwrite``) and ``write``s its files, once every
    process has checked it.

    In a multi-process run, process 0 writes (the run directory must be on a filesystem all
    hosts share) and the others wait for it.
    """
    distributed.barrier("resetax: run directory checked")
    if distributed.is_primary():
        make_run_dir(run_dir)
        if overwrite:  # everything but the lock, which this run holds
            for entry in run_dir.iterdir():
                if entry.name != LOCK_FILE:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        try:
            write(run_dir)
        except StorageError as err:  # nothing to resume yet: the same command again
            raise StorageError(err.path, err.error, "run the same command again") from None
    distributed.barrier("resetax: run directory prepared")


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as strict JSON (non-finite numbers as ``null``), atomically.

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.workdir import write_json
      >>> path = Path(tempfile.mkdtemp()) / "summary.json"
      >>> write_json(path, {"loss": float("nan"), "acc": 0.5})
      >>> json.loads(path.read_text())
      {'loss': None, 'acc': 0.5}
    """
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n")
        os.replace(tmp, path)
    except OSError as err:  # a full disk: no half-written file left behind
        tmp.unlink(missing_ok=True)
        raise StorageError(path, err) from None


class MetricsLog:
    """``metrics.jsonl``: one strict-JSON line per evaluation window, appended as the run goes.

    Non-finite numbers (a diverged loss) are written as ``null``, so that every line is valid
    JSON. Opened for a run that starts at ``step``, it first drops the lines of steps at or after
    it (written after the checkpoint a resumed run starts from) and the damaged ones, keeping
    every complete row before it; given the run's ``eval_every``, it says in one line which rows
    before ``step`` are lost (see :func:`_kept_rows`). In a multi-process run only process 0
    writes; the others write nothing.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.workdir import MetricsLog, read_metrics
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> with MetricsLog(run_dir, step=0) as log:
      ...     log.write([{"step": 0, "val_loss": 2.3}, {"step": 20, "val_loss": float("inf")}])
      >>> print((run_dir / "metrics.jsonl").read_text().strip())
      {"step": 0, "val_loss": 2.3}
      {"step": 20, "val_loss": null}
      >>> with MetricsLog(run_dir, step=20) as log:  # resumed from the checkpoint at step 20
      ...     log.write([{"step": 20, "val_loss": 1.9}])
      >>> [line["val_loss"] for line in read_metrics(run_dir)]
      [2.3, 1.9]
    """

    def __init__(self, run_dir: str | os.PathLike, step: int, eval_every: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        self._file: Any = None
        self._start, self._eval_every = step, eval_every

    def __enter__(self) -> MetricsLog:
        if distributed.is_primary():
            kept = _kept_rows(self.path, self._start, self._eval_every)
            tmp = self.path.with_suffix(".tmp")
            try:
                tmp.write_text("".join(_json_line(line) for line in kept))
                os.replace(tmp, self.path)
                self._file = open(self.path, "a")
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise StorageError(self.path, err) from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # what could not be flushed was reported
                self._file.close()

    def write(self, lines: list[dict[str, Any]]) -> None:
        """Appends ``lines`` and flushes them to disk."""
        if self._file is not None:
            with writing(self.path):  # a full disk: a line cut short, which --resume drops
                self._file.write("".join(_json_line(line) for line in lines))
                self._file.flush()


def read_metrics(run_dir: str | os.PathLike, *, partial_last: bool = False
                 ) -> list[dict[str, Any]]:
    """The evaluation rows of a run's ``metrics.jsonl`` (none if it does not exist yet).

    ``partial_last=True`` drops a last line cut short (a process killed while writing it);
    otherwise it is an error, as any line that is not a row is
    (:class:`~resetax._files.DamagedFile`, naming the file and the line).

    Example:
      >>> import json
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.workdir import read_metrics
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> read_metrics(run_dir)
      []
      >>> rows = [{"step": 0, "val_loss": 2.3, "reset_steps": []},
      ...         {"step": 10, "val_loss": None, "reset_steps": [12, 17]}]
      >>> text = "".join(json.dumps(r) + "\\n" for r in rows)
      >>> _ = (run_dir / "metrics.jsonl").write_text(text)
      >>> read_metrics(run_dir) == rows
      True
      >>> _ = (run_dir / "metrics.jsonl").write_text(text + '{"step": 20, "val_')  # killed
      >>> read_metrics(run_dir, partial_last=True) == rows
      True
      >>> read_metrics(run_dir)
      Traceback (most recent call last):
      ...
      resetax._files.DamagedFile: '...metrics.jsonl' line 3 is not valid JSON (Unterminated ...
    """
    path = Path(run_dir) / METRICS_FILE
    rows, lines = [], list(_metrics_lines(path))
    for i, (number, row) in enumerate(lines):
        if isinstance(row, str):
            if partial_last and i == len(lines) - 1:
                continue
            raise _files.damaged(path, f"line {number} {row}", _restart(Path(run_dir)))
        rows.append(row)
    return rows


def _metrics_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """``metrics.jsonl``'s lines as :func:`~resetax._files.json_lines` reads them; a row with a
    value of the wrong type (a string where a number goes, a step list of strings) is a
    damaged line, as one that is not JSON: ``--resume`` drops it, saying so, and the plots
    never see it."""
    for number, row in _files.json_lines(path, fix=_RESTART, required=("step",),
                                         types={"step": (int,)}):
        yield number, row if isinstance(row, str) else (_row_problem(row) or row)


def _row_problem(row: dict[str, Any]) -> str:
    """What is wrong with a metrics row's values ("" if nothing): the ``*_steps`` lists hold
    steps, ``active`` is a boolean and every other value a number or null."""
    for key, value in row.items():
        if key.endswith("_steps"):
            fine = isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)
            kind = "a list of steps"
        elif key == "active":
            fine, kind = isinstance(value, bool), "a boolean"
        else:
            fine = value is None or (isinstance(value, (int, float))
                                     and not isinstance(value, bool))
            kind = "a number or null"
        if not fine:
            shown = json.dumps(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            return f"holds {json.dumps(key)}: {shown}, not {kind}"
    return ""


def _kept_rows(path: Path, start: int, eval_every: int | None) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` before ``start`` (where a resumed run goes on).

    A damaged line (cut short by a kill or a full disk, or edited) is dropped. If rows that the
    resumed run will not write again are missing (one per ``eval_every`` steps before
    ``start``), one line says which; without ``eval_every``, one line names damaged lines other
    than a last one cut short.

    Example:
      >>> import contextlib, io, tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import workdir
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> _ = (run_dir / "metrics.jsonl").write_text(
      ...     '{"step": 0}\\n{"step": 10}\\n{"step": 20, "val_')
      >>> with contextlib.redirect_stderr(io.StringIO()) as err:
      ...     with workdir.MetricsLog(run_dir, step=40, eval_every=10):
      ...         pass
      >>> print(err.getvalue().strip())
      resetax: '...metrics.jsonl' lacks the rows of steps 20, 30 (line 3 was damaged or cut short): they are lost, and the run goes on from step 40 without them.
      >>> (run_dir / "metrics.jsonl").read_text()
      '{"step": 0}\\n{"step": 10}\\n'
    """  # noqa: E501
    rows, damaged = [], []
    lines = list(_metrics_lines(path))
    for number, row in lines:
        if isinstance(row, str):
            damaged.append(number)
        elif row["step"] < start:
            rows.append(row)
    cause = (f"line{'s' if len(damaged) > 1 else ''} {', '.join(map(str, damaged))} "
             f"{'were' if len(damaged) > 1 else 'was'} damaged or cut short" if damaged
             else "missing")
    if eval_every is not None:
        kept = {row["step"] for row in rows}
        lost = [step for step in range(0, start, eval_every) if step not in kept]
        if lost:
            shown = ", ".join(map(str, lost[:10])) + (
                f" and {len(lost) - 10} more" if len(lost) > 10 else "")
            note(f"{str(path)!r} lacks the rows of steps {shown} ({cause}): they are lost, and "
                 f"the run goes on from step {start} without them.")
    elif [number for number in damaged if number != lines[-1][0]]:
        note(f"{str(path)!r}: {cause}; dropped, the run goes on from step {start}.")
    return rows


def note(message: str) -> None:
    """Prints a one-line notice on stderr (process 0 only)."""
    if distributed.is_primary():
        print(f"resetax: {message}", file=sys.stderr, flush=True)


_note = note

_STALE_LOCKS_NOTED: list[tuple[str, Path]] = []
"""The locks taken over from runs that died, as (holder, run directory), noted once: the runs
of a group hold a lock each, inside the group's directory."""


def _noted_above(holder: str, run_dir: Path) -> bool:
    """Whether a lock that ``holder`` left in ``run_dir`` or a directory above it was noted."""
    here = run_dir.resolve()
    return any(h == holder and (d == here or d in here.parents) for h, d in _STALE_LOCKS_NOTED)


def _has_content(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds anything besides a lock."""
    return run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir())


def _json_line(obj: Any) -> str:
    return json.dumps(_finite(obj), allow_nan=False) + "\n"


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
