"""Command line: ``resetax train``, ``resetax compare`` and ``resetax reproduce``.

Every :class:`~resetax.experiment.config.Config` field is a flag (``--noise-rate 0.6``,
``--patience none``); a preset supplies the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resetax.experiment import config as config_lib

DEFAULT_PRESET = "quick"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resetax`` command; returns its exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Bad input is reported in one line on stderr with
    status 2, before anything is written; a run that cannot go on (unwritable or corrupted
    checkpoints, a damaged run file, divergence) ends with status 1 and one line; a run stopped
    by SIGTERM or Ctrl-C returns 143 or 130 after a checkpoint.

    Example:
      >>> import contextlib, io, tempfile
      >>> from resetax.experiment import cli
      >>> run_dir = tempfile.mkdtemp() + "/run"
      >>> with contextlib.redirect_stderr(io.StringIO()) as err:
      ...     cli.main(["train", "--run-dir", run_dir, "--noise-rate", "1.5"])
      2
      >>> print(err.getvalue().strip())
      resetax: error: noise_rate must be in [0.0, 1.0], got 1.5.
    """
    from resetax.experiment import control

    # First: from here on a signal is recorded, never a KeyboardInterrupt inside JAX or XLA.
    with control.handle_signals(_signal_message), _quiet_third_party():
        status = _main(argv)
        signum = control.received_signal()
        if status == 0 and signum is not None:  # it came as the last window ended: honoured
            print(f"resetax: stopped by {signal.Signals(signum).name} in "
                  f"{_RUN.get('run_dir', '.')} after the run ended; its results are written.",
                  file=sys.stderr)
            return 128 + signum
        return status


@contextlib.contextmanager
def _quiet_third_party() -> Iterator[None]:
    """Keeps the libraries' own reports of what resetax reports in one line off stderr.

    absl's log (TFDS's warnings, Orbax's errors from its writer threads), asyncio's (the
    failed writes' futures) and Matplotlib's (a config directory it cannot create under
    ``XDG_CACHE_HOME``) are not shown, nor Matplotlib's warnings of characters its font lacks
    (a run directory named in Chinese: 4 lines a figure); the "Event loop is closed" errors
    that Orbax's and tensorstore's futures raise when they complete after a failed write are
    dropped; any other error raised where it cannot be caught is shown as Python shows it.
    """
    import gc
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "matplotlib")]
    levels, hook = [logger.level for logger in loggers], sys.unraisablehook
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.unraisablehook = _without_closed_loop_errors(hook)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font",
                                    category=UserWarning)
            yield
    finally:
        gc.collect()  # the failed write's futures, while their errors are still dropped
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        sys.unraisablehook = hook


def _without_closed_loop_errors(hook):
    """``hook`` (a ``sys.unraisablehook``) but for the "Event loop is closed" errors of futures
    completing after their loop closed (a failed Orbax write's)."""
    def unraisable(report) -> None:
        if not (isinstance(report.exc_value, RuntimeError)
                and str(report.exc_value) == "Event loop is closed"):
            hook(report)

    return unraisable


def exit_quietly(status: int) -> typing.NoReturn:
    """Ends the ``resetax`` process with ``status``, keeping the closed-loop errors of futures
    finalized at interpreter shutdown off stderr (see ``_quiet_third_party``).

    Example:
      >>> import sys
      >>> from resetax.experiment import cli
      >>> hook = sys.unraisablehook
      >>> try:
      ...     cli.exit_quietly(3)
      ... except SystemExit as exit_:
      ...     print(exit_.code)
      ... finally:
      ...     sys.unraisablehook = hook
      3
    """
    sys.unraisablehook = _without_closed_loop_errors(sys.unraisablehook)
    sys.exit(status)


def _main(argv: list[str] | None) -> int:
    from resetax._files import DamagedFile
    from resetax.experiment import workdir
    from resetax.experiment.workdir import RunError, check_resume_or_overwrite

    _RUN.clear()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser(_preset_in(argv), _table_in(argv)).parse_known_args(argv)
    if unknown:  # named by the command's own parser, not the top-level one
        args.parser.error(_unrecognized(args.parser, unknown))
    try:
        _use_compilation_cache()
        check_resume_or_overwrite(args.resume, args.overwrite)
        return args.command(args)
    except (RunError, DamagedFile) as err:  # a run that cannot go on, a damaged run file
        print(f"resetax: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as err:  # bad input: arguments, run directory, dataset
        if isinstance(err, OSError) and workdir.is_disk_full(err):  # storage: not bad input
            print(f"resetax: error: {workdir.StorageError(err.filename or '.', err)}",
                  file=sys.stderr)
            return 1
        print(f"resetax: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug of resetax or below it: one line, the traceback in a file
        print(f"resetax: internal error: {type(err).__name__}: {_first_line(err)}; the "
              f"traceback is in {_save_traceback()} (please report it).", file=sys.stderr)
        return 1


# The command's run directory and resume command, once known: what a signal's message names.
_RUN: dict[str, Any] = {}


def _expect_run(run_dir: Path, args, marker: str = "config.json") -> None:
    _RUN.update(run_dir=run_dir, marker=marker, command=_resume_command(run_dir, args),
                resume=args.resume)


def _resume_command(run_dir: Path, args) -> str:
    """The command that continues the run in ``run_dir``, shell-quoted."""
    import shlex

    return shlex.join(["resetax", args.command_name, *([args.table] if "table" in args else []),
                       "--run-dir", str(run_dir), "--resume"])


def _signal_message(name: str, second: bool) -> str:
    """The line a signal that ends the process at once prints (see ``control.handle_signals``):
    where the run stands on disk, and the command that continues it."""
    from resetax.experiment import workdir

    run_dir = _RUN.get("run_dir")
    if run_dir is None or not (_RUN["resume"] or run_dir.absolute() in workdir.PREPARED) or (
            not (run_dir / _RUN["marker"]).exists()):  # no run of this command to continue
        return f"resetax: stopped by {name} before anything was written."
    if second:
        return (f"resetax: stopped at once by a second {name} in {run_dir}; run "
                f"`{_RUN['command']}` to continue from its last checkpoint.")
    if any((run_dir / file).exists() for file in ("summary.json", "compare.json", "table.json")):
        return (f"resetax: stopped by {name} in {run_dir} after the run ended; its results are "
                f"written.")
    return f"resetax: stopped by {name} in {run_dir}; run `{_RUN['command']}` to continue."


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _save_traceback() -> str:
    """Writes the exception being handled, with its traceback, to a new temporary file."""
    import tempfile
    import traceback

    with tempfile.NamedTemporaryFile("w", prefix="resetax-error-", suffix=".txt",
                                     delete=False) as file:
        traceback.print_exc(file=file)
    return file.name


def _train(args) -> int:
    from resetax.experiment import runner, workdir

    run_dir = Path(args.run_dir or _default_run_dir(args.preset or DEFAULT_PRESET))
    _expect_run(run_dir, args)
    config = _resumed_config(args, run_dir) if args.resume else _new_config(args)
    plan = _plan(run_dir, args)  # a resumed group of runs must be a pair, not a compare
    if args.resume and not (config.baseline or plan) and _finished(run_dir):
        result = runner.ended(workdir.read_summary(run_dir))
        _print(f"{run_dir} is a finished run (its summary.json is written): nothing to "
               f"resume; every file is left as it was.")
        return _report_divergence({"run": result})  # 1 if it ended diverged
    _start_processes(args)
    if config.baseline or plan:
        return _run_group(run_dir, config, _pair(config), args, _report_pair)
    result = runner.train(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                          progress=not args.quiet)
    if isinstance(result, runner.Stopped):
        return _stopped({"run": result}, run_dir, args)
    _print(json.dumps(result.summary, indent=2))
    _print(f"run directory: {run_dir}")
    return _report_divergence({"run": result})


def _new_config(args) -> config_lib.Config:
    """The config of a new run or compare (:func:`config_from_args`), refused if a flag given
    would change nothing (``--dormant-threshold`` without ``--plasticity
    recycle_dormant_units``) or its run would validate its initial parameters only."""
    from resetax.experiment.optimization import readers_of

    config = config_from_args(args)
    for name in _overrides(args):
        found = readers_of(name)
        if found is None:
            continue
        method, readers = found
        chosen = getattr(config, method)
        if chosen not in readers:
            flag = f"--{method.replace('_', '-')}"
            raise ValueError(
                f"--{name.replace('_', '-')} has no effect with {flag} "
                f"{'none' if chosen is None else chosen}: it is read with {flag} "
                f"{' or '.join(readers)}.")
    return _evaluated(config)


def _evaluated(config: config_lib.Config) -> config_lib.Config:
    """``config``, if its run validates after its first step: ``eval_every`` at most
    ``num_steps`` (else the run validated its initial parameters only and reported them as its
    best model, exit 0)."""
    if config.eval_every > config.num_steps:
        raise ValueError(f"eval_every ({config.eval_every}) must be at most num_steps "
                         f"({config.num_steps}): the run would validate its initial parameters "
                         f"only, and take them for its best model.")
    return config


def _finished(run_dir: Path) -> bool:
    """Whether the single run in ``run_dir`` ended (it wrote its summary)."""
    from resetax.experiment import workdir

    return (run_dir / workdir.SUMMARY_FILE).exists()


def _pair(config: config_lib.Config) -> list[tuple[str, config_lib.Config]]:
    """The two runs of a baseline-plus-resetting pair, each a single run."""
    return [("baseline", config.replace(reset_prob=0.0, baseline=False)),
            ("resetting", config.replace(baseline=False))]


def _report_pair(summaries: dict[str, dict[str, Any]], config, run_dir: Path) -> None:
    from resetax.experiment import report

    _print(report.side_by_side(summaries))


def _compare(args) -> int:
    run_dir = Path(args.run_dir or _default_run_dir(f"compare-{args.preset or DEFAULT_PRESET}"))
    _expect_run(run_dir, args)
    if args.resume:
        config = _resumed_config(args, run_dir)
        saved_seeds = _plan(run_dir, args)["seeds"]
        if args.seeds not in (None, saved_seeds):
            raise ValueError(f"--resume continues {str(run_dir)!r} with its saved config; "
                             f"--seeds {args.seeds} would change it (saved {saved_seeds}).")
        args = argparse.Namespace(**{**vars(args), "seeds": saved_seeds})
    else:
        if _overrides(args).get("reset_prob") == 0:  # before the preset's baseline=True objects
            raise ValueError("reset_prob must be > 0 for compare (the baseline uses 0).")
        config = _new_config(args)
    seeds = 3 if args.seeds is None else args.seeds
    if config.reset_prob == 0:
        raise ValueError("reset_prob must be > 0 for compare (the baseline uses 0).")
    if seeds < 2:
        raise ValueError(f"seeds must be >= 2 for a standard error, got {seeds}.")
    _check_seeds(seeds, config.seed)
    _start_processes(args)
    named_configs = [(f"{name}-seed{seed}", config.replace(seed=seed, reset_prob=reset_prob,
                                                            baseline=False))
             for seed in range(config.seed, config.seed + seeds)
             for name, reset_prob in (("baseline", 0.0), ("resetting", config.reset_prob))]
    return _run_group(run_dir, config, named_configs,
                      argparse.Namespace(**{**vars(args), "seeds": seeds}), _report_compare)


MAX_SEEDS = 10_000
"""The most seeds of a ``compare`` or of each cell of a table (planning 10,000 takes a second;
``--seeds 100000000`` planned for hours without a word)."""


def _check_seeds(seeds: int, first_seed: int) -> None:
    """``--seeds`` from ``--seed`` on: at most :data:`MAX_SEEDS` of them, none past the largest
    seed."""
    if seeds > MAX_SEEDS:
        raise ValueError(f"--seeds must be at most {MAX_SEEDS}, got {seeds}.")
    last = first_seed + seeds - 1
    if first_seed <= config_lib.MAX_SEED < last:  # a --seed out of range: the config names it
        raise ValueError(f"--seeds {seeds} from --seed {first_seed} goes past the largest seed, "
                         f"{config_lib.MAX_SEED} (to {last}); lower --seed or --seeds.")


def _report_compare(summaries: dict[str, dict[str, Any]], config, run_dir: Path) -> None:
    from resetax.experiment import report

    _print(report.write_compare(summaries, config, run_dir))


def _reproduce(args) -> int:
    """``resetax reproduce TABLE``: every run of a paper table, then the table beside the paper's
    (:mod:`resetax.experiment.reproduce`)."""
    from resetax.experiment import build, distributed, group, reproduce, table_report, workdir

    table = reproduce.TABLES[args.table]
    run_dir = Path(args.run_dir or _default_run_dir(f"reproduce-{args.table}"))
    _expect_run(run_dir, args, marker=workdir.PLAN_FILE)
    overrides, seeds = _overrides(args), args.seeds
    cells = None if args.cells is None else [c.strip() for c in args.cells.split(",")
                                             if c.strip()]
    if cells == []:
        raise ValueError(f"--cells {args.cells!r} names no cell; give one or more of "
                         f"{', '.join(c.name for c in table.cells)}, separated by commas.")
    if args.resume:
        overrides, seeds, cells = reproduce.resume_plan(run_dir, table, overrides, seeds, cells)
    seeds = reproduce.DEFAULT_SEEDS if seeds is None else seeds
    runs = _planned_runs(table, seeds, overrides, cells, args.resume)
    runs_together = _runs_together_of(run_dir, args)
    if args.dry_run:
        _print(reproduce.dry_run(table, runs, runs_together=runs_together))
        return 0
    _start_processes(args)

    def preflight() -> None:  # devices and every dataset
        if not args.resume:
            datasets = {(run.config.dataset, run.config.label_variant): run.config
                        for run in runs}
            for config in datasets.values():
                build.load_inputs(config)

    # An existing table is continued (--resume) or replaced (--overwrite), never mixed into.
    with workdir.run_directory(
            run_dir, resume=args.resume, overwrite=args.overwrite, preflight=preflight,
            marker=workdir.PLAN_FILE,
            write=lambda path: reproduce.write_plan(path, table, overrides, seeds, cells,
                                                    runs_together)):
        results = reproduce.run_table(
            table, runs, run_dir, resume=args.resume, announce=_print,
            train=lambda config, path, resume: group.train_or_reuse(
                config, path, resume=resume, progress=not args.quiet),
            runs_together=runs_together, progress=not args.quiet)
        if _first_stopped(results):
            return _stopped(results, run_dir, args)
        if distributed.is_primary():
            _print(table_report.write_report(table, _summaries(results), run_dir, seeds))
    _print(f"run directory: {run_dir}")
    return _report_divergence(results)


def _planned_runs(table, seeds: int, overrides: dict[str, Any], cells: list[str] | None,
                  resume: bool) -> list:
    """The runs of ``table`` (:func:`~resetax.experiment.reproduce.plan_runs`), checked as a
    new table's: ``--seeds`` in range, each run validated after its first step."""
    from resetax.experiment import reproduce

    if seeds > 0:  # plan_runs names a count below 1
        _check_seeds(seeds, overrides.get("seed", 0))
    runs = reproduce.plan_runs(table, seeds, overrides, cells)
    for run in runs if not resume else ():
        _evaluated(run.config)
    return runs


def _run_group(run_dir: Path, config: config_lib.Config,
               named_configs: list[tuple[str, config_lib.Config]], args, report) -> int:
    """Trains several runs under one directory (a pair, or compare's seeds), resumably.

    The directory holds the group's config, its plan and one subdirectory per run; a finished run
    is reused on ``--resume`` and an interrupted one resumed. ``--jobs`` of them train at once
    (:func:`~resetax.experiment.group.train_group`).
    """
    from resetax.experiment import build, group, placement, together, workdir

    def preflight() -> int:
        jobs = group.resolve_jobs(args.jobs, len(placement.devices(config)))
        if not args.resume:
            build.load_inputs(config)
        return jobs

    runs_together = _runs_together_of(run_dir, args)

    def write(path: Path) -> None:
        workdir.write_config(path, config)
        workdir.write_json(path / workdir.PLAN_FILE, {
            "command": args.command_name, "seeds": getattr(args, "seeds", None),
            "runs_together": runs_together})

    with workdir.run_directory(run_dir, resume=args.resume, overwrite=args.overwrite,
                               preflight=preflight, write=write) as jobs:
        results = together.train_runs(
            [group.GroupRun(name, run_config, run_dir / name)
             for name, run_config in named_configs], jobs=jobs,
            runs_together=runs_together,
            resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
            announce=_print)
        if _first_stopped(results):
            return _stopped(results, run_dir, args)
        report(_summaries(results), config, run_dir)
    _print(f"run directory: {run_dir}")
    return _report_divergence(results)


def _runs_together_of(run_dir: Path, args) -> int | str:
    """``--runs-together`` as given; when not given, on ``--resume`` as the group was started
    (its ``plan.json``), so that it goes on bit-identically; else ``auto``. A resume told
    otherwise says that its runs will not equal an uninterrupted group's."""
    from resetax.experiment import workdir

    if args.resume and (run_dir / workdir.PLAN_FILE).exists():
        saved = workdir.read_plan(run_dir).get("runs_together", "auto")
        if args.runs_together not in (None, saved):
            workdir.note(f"--runs-together {args.runs_together}, where {run_dir} was started "
                         f"with {saved}: runs trained together and apart differ in the last "
                         f"bits, so its runs will not equal an uninterrupted group's.")
        return saved if args.runs_together is None else args.runs_together
    return "auto" if args.runs_together is None else args.runs_together


def _plan(run_dir: Path, args) -> dict[str, Any] | None:
    """The plan of the group of runs being resumed in ``run_dir`` (None for a single run).

    It must be a group of the same command: a compare is resumed by ``compare``, a pair by
    ``train``.
    """
    from resetax.experiment import workdir

    path = run_dir / workdir.PLAN_FILE
    command = args.command_name
    if not args.resume or not (path.exists() or command == "compare"):
        return None
    plan = workdir.read_plan(run_dir) if path.exists() else {"command": "train"}
    if plan["command"] != command:
        raise ValueError(f"{str(run_dir)!r} holds a `resetax {plan['command']}` run; resume it "
                         f"with `resetax {plan['command']} --run-dir {run_dir} --resume`.")
    return plan


def _first_stopped(results: dict[str, Any]) -> Any:
    """The first run of ``results`` that was stopped, None if none was."""
    from resetax.experiment.runner import Stopped

    return next((r for r in results.values() if isinstance(r, Stopped)), None)


def _summaries(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summaries of runs that ended (none of them stopped)."""
    return {name: result.summary for name, result in results.items()}


def _report_divergence(results: dict[str, Any]) -> int:
    """Reports rollbacks and the runs that ended on a non-finite loss; 1 if any did, else 0."""
    from resetax.experiment import workdir
    from resetax.experiment.runner import Diverged

    for name, s in _summaries(results).items():
        if s.get("num_rollbacks"):
            workdir.note(f"{name}: {s['num_rollbacks']} non-finite updates were rolled back to "
                         f"the checkpoint (rollback_steps in metrics.jsonl).")
    diverged = {name: r.step for name, r in results.items() if isinstance(r, Diverged)}
    for name, step in diverged.items():
        print(f"resetax: error: {name} diverged: its train loss has been non-finite since step "
              f"{step}; its summary reports the best model before that. Lower the learning "
              f"rate.", file=sys.stderr)
    return 1 if diverged else 0


def _stopped(results: dict[str, Any], run_dir: Path, args) -> int:
    """Reports runs stopped by a signal (:class:`~resetax.experiment.runner.Stopped`), each at
    its own step and checkpoint, and the resume command; exits as the signal would (128 + its
    number)."""
    from resetax.experiment import distributed
    from resetax.experiment.runner import Stopped

    stopped = {name: r for name, r in results.items() if isinstance(r, Stopped)}
    name = next(r.signal for r in stopped.values()) or "SIGTERM"
    command = _resume_command(run_dir, args)
    if len(results) == 1:
        where = f"{_stopped_at(*stopped.values())} in {run_dir}"
    else:
        where = f"in {run_dir}: " + ", ".join(
            f"{run} {_stopped_at(r)}" for run, r in stopped.items())
    saved = any(r.checkpoint is not None for r in stopped.values()) or len(stopped) < len(
        results)  # a checkpoint, or a finished run that --resume reuses
    then = "to continue" if saved else "to start again from step 0"
    if distributed.is_primary():
        print(f"resetax: stopped by {name} {where}; run `{command}` {then}.",
              file=sys.stderr, flush=True)
    return 128 + signal.Signals[name].value


def _stopped_at(result: Any) -> str:
    """Where a stopped run stopped: its step, and its last checkpoint's."""
    if result.checkpoint is None:
        return f"at step {result.step}, before its first checkpoint (nothing saved)"
    if result.checkpoint == result.step:
        return f"at step {result.step}, after a checkpoint"
    return f"at step {result.step}, its last checkpoint at step {result.checkpoint}"


def _use_compilation_cache() -> None:
    """Keeps compiled steps across runs in JAX's persistent compilation cache.

    The second run of a pair, and every later run of the same shapes, then starts without
    compiling (about 5 s of the quick preset's 10 s of compilation on a 2-core CPU). The cache
    lives in ``$RESETAX_COMPILATION_CACHE``, else ``$XDG_CACHE_HOME/resetax/jax`` (or
    ``~/.cache/resetax/jax``) in a folder per processor model, so that a home directory shared
    by machines of different CPUs never serves one's code to another. ``RESETAX_COMPILATION_CACHE
    =off`` (in any case) turns it off; a cache the user configured for JAX is left as it is.
    A ``RESETAX_COMPILATION_CACHE`` that cannot be a directory (a file, an unwritable place) is
    refused with a ``ValueError`` naming it; a default directory that cannot be created is
    skipped with a one-line note (JAX warned at each compile).
    """
    import hashlib
    import os
    import platform

    import jax

    from resetax.experiment import workdir

    setting = os.environ.get("RESETAX_COMPILATION_CACHE")
    if (setting or "").strip().lower() == "off" or os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
            jax.config.jax_compilation_cache_dir):
        return
    if setting:
        directory = Path(setting)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        cpu = platform.processor() or platform.machine()
        if Path("/proc/cpuinfo").exists():
            cpu += next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")), "")
        directory = base / "resetax" / "jax" / hashlib.sha256(cpu.encode()).hexdigest()[:12]
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "a file" if directory.is_file() else err.strerror or type(err).__name__
        if setting:
            raise ValueError(f"RESETAX_COMPILATION_CACHE={setting!r} cannot hold the compilation "
                             f"cache ({reason}); set it to a directory that can be written, or "
                             f"to off.") from None
        workdir.note(f"the compilation cache {str(directory)!r} cannot be created ({reason}); "
                     f"compiling without it (set RESETAX_COMPILATION_CACHE to a directory that "
                     f"can be written).")
        return
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def _start_processes(args) -> None:
    """Joins the other processes of a multi-process run (see ``resetax.experiment.distributed``)."""
    from resetax.experiment import distributed

    distributed.initialize(auto_detect=args.distributed)
    _check_platforms()


def _check_platforms() -> None:
    """The backends ``JAX_PLATFORMS`` names start, or one line (a ``RunError``) naming it and
    what this machine has instead (JAX's own error is a 34-line traceback)."""
    import os

    import jax

    from resetax.experiment.workdir import RunError

    setting = os.environ.get("JAX_PLATFORMS")
    if not setting:
        return
    try:
        jax.devices()
    except (RuntimeError, AssertionError) as err:  # AssertionError: JAX's, for CUDA missing
        reason = str(err).partition(" (set JAX_PLATFORMS")[0].rstrip(".")
        raise RunError(
            f"JAX_PLATFORMS={setting} names a backend that cannot start on this machine"
            f"{f' ({reason})' if reason else ''}; what it has: {_available_platforms()}. Unset "
            f"JAX_PLATFORMS, or set it to one of those.") from None


def _available_platforms() -> str:
    """The platforms JAX finds without ``JAX_PLATFORMS`` (asked of a fresh process: this one's
    backends are set)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    code = "import jax; print(' '.join(sorted({d.platform for d in jax.devices()})))"
    try:
        found = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "unknown (JAX took over 2 minutes to start without it)"
    return found.stdout.strip() or "unknown (JAX does not start without it either)"


def _print(text: str) -> None:
    """Prints on process 0 only, so that a multi-process run reports once."""
    from resetax.experiment import distributed

    if distributed.is_primary():
        print(text, flush=True)


def parser(preset: str | None = None, table: str | None = None) -> argparse.ArgumentParser:
    """The ``resetax`` parser; each Config field's help shows its default and ``preset``'s value
    (``reproduce``'s: the value of ``table``'s presets, or that the table's cells set it).

    Example:
      >>> from resetax.experiment import cli
      >>> args = cli.parser().parse_args(["train", "--noise-rate", "0.6", "--no-baseline"])
      >>> config = cli.config_from_args(args)
      >>> config.noise_rate, config.baseline
      (0.6, False)
    """
    root = _Parser(
        prog="resetax", description="Train with stochastic resetting on noisy labels.",
        allow_abbrev=False)
    commands = root.add_subparsers(required=True)
    shown = preset if preset in config_lib.PRESETS else DEFAULT_PRESET
    for name, func, help_text in (
        ("train", _train, "train one run, or a baseline-plus-resetting pair (--baseline)"),
        ("compare", _compare, "baseline vs resetting over several seeds"),
        ("reproduce", _reproduce, "every run of one of the paper's tables, and the table beside "
                                  "the paper's numbers (table.md, table.png)"),
    ):
        # No abbreviated flags: among 40 flags a typo must not silently pick one.
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  allow_abbrev=False)
        sub.set_defaults(command=func, command_name=name, parser=sub)
        if name == "reproduce":
            _add_reproduce_arguments(sub)
        else:
            sub.add_argument("--preset", default=None, choices=sorted(config_lib.PRESETS),
                             help=f"the defaults of the fields below (default: {DEFAULT_PRESET})")
        sub.add_argument("--run-dir", default=None, type=_run_dir,
                         help=f"where to write the run (default: {RUN_DIR_DEFAULTS[name]})")
        sub.add_argument("--resume", action="store_true",
                         help="continue the interrupted run in --run-dir with its saved config")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing run")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.add_argument("--distributed", action="store_true",
                         help="join a multi-process run that JAX detects from the cluster "
                              "(SLURM, Open MPI, Kubernetes, Cloud TPU); without it, one starts "
                              "when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                              "JAX_PROCESS_ID are set")
        if name == "compare":
            sub.add_argument("--seeds", type=int, default=None,
                             help="number of paired seeds (default: 3)")
        if name != "reproduce":
            sub.add_argument("--jobs", type=_jobs, default="auto",
                             help="runs of a pair or a compare trained at once, side by side "
                                  "(default: auto, 2 on a CPU when each run trains on one "
                                  "device, else 1); the results do not depend on it")
        sub.add_argument("--runs-together", type=_runs_together, default=None,
                         help="runs that share shapes (seed, reset_prob, noise_rate and "
                              "label_variant apart) trained as one vmapped program, at most "
                              "this many; off: one at a time (default: auto, together on an "
                              "accelerator, off on a CPU; --resume: as the group was started); "
                              "each run keeps its own files")
        for field in dataclasses.fields(config_lib.Config):
            preset_value = config_lib.PRESETS[shown].get(field.name, field.default)
            _add_field(sub, field, _reproduce_value(field.name, table) if name == "reproduce"
                       else f"{shown}: {_show(preset_value)}")
    return root


RUN_DIR_DEFAULTS = {"train": "runs/<preset>-<time>", "compare": "runs/compare-<preset>-<time>",
                    "reproduce": "runs/reproduce-<table>-<time>"}


def _reproduce_value(name: str, table_name: str | None) -> str:
    """What ``reproduce TABLE`` trains with for the Config field ``name``: each cell starts from
    its own preset, with the cell's own fields."""
    from resetax.experiment import reproduce

    if table_name not in reproduce.TABLES:
        return "each table's own presets: `resetax reproduce TABLE --help` shows their values"
    table = reproduce.TABLES[table_name]
    if name in {"reset_prob", "baseline"} | {k for c in table.cells for k in c.overrides}:
        return f"set by each cell of {table_name}; cannot be given"
    default = config_lib.Config.__dataclass_fields__[name].default
    values = {preset: _show(config_lib.PRESETS[preset].get(name, default))
              for preset in dict.fromkeys(c.preset for c in table.cells)}
    if len(set(values.values())) == 1:
        return f"{table_name}'s preset{'s' if len(values) > 1 else ''}: {values.popitem()[1]}"
    return "; ".join(f"{preset}: {value}" for preset, value in values.items())


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, then a pointer to the command's help
    (not the whole usage)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"resetax: error: {message}\nrun `{self.prog} --help` for the usage.\n")


def _unrecognized(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """The error for flags ``parser`` does not know, with the closest known flag if any."""
    import difflib

    message = f"unrecognized arguments: {' '.join(unknown)}"
    flag = next((arg.partition("=")[0] for arg in unknown if arg.startswith("--")), None)
    known = [s for action in parser._actions for s in action.option_strings
             if action.help != argparse.SUPPRESS]
    close = difflib.get_close_matches(flag, known, n=1) if flag else []
    return f"{message}; did you mean {close[0]}?" if close else message


def _run_dir(text: str) -> str:
    """``--run-dir``: a path, not empty (an empty one silently meant the default)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}; leave --run-dir "
                                         f"out for the default")
    return text


def _jobs(text: str) -> int | str:
    """``--jobs``: ``auto`` or a positive integer, checked as the group checks it."""
    from resetax import _checks

    value = int(text) if text.lstrip("-").isdigit() else text
    try:
        _checks.auto_or_positive_int("jobs", value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _runs_together(text: str) -> int | str:
    """``--runs-together``: ``auto``, ``off`` or a positive integer."""
    value = int(text) if text.isdigit() else text
    if value not in ("auto", "off") and not (isinstance(value, int) and value > 0):
        raise argparse.ArgumentTypeError(f"expected auto, off or a positive integer, got "
                                         f"{text!r}")
    return value


def _add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    from resetax.experiment import reproduce

    parser.add_argument("table", choices=sorted(reproduce.TABLES),
                        help="the paper table to reproduce")
    parser.add_argument("--seeds", type=int, default=None,
                        help=f"seeds per cell (default: {reproduce.DEFAULT_SEEDS}, the paper's)")
    parser.add_argument("--cells", default=None,
                        help="comma-separated names of the cells to run (default: all; "
                             "--dry-run lists them)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and an estimate of the GPU hours; run nothing")


def _add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, shown: str) -> None:
    """A flag for one Config field, its help ending in its default and ``shown`` (the value a
    preset gives it); booleans also take ``--name`` and ``--no-name``."""
    flag = f"--{field.name.replace('_', '-')}"
    parse = _parser_for(field)
    negation = f" {flag} alone: true; --no-{flag[2:]}: false." if parse.__name__ == "bool" else ""
    help_text = (f"{field.metadata['help']}{negation} [default: {_show(field.default)}; "
                 f"{shown}]").replace("%", "%%")
    if parse.__name__ == "bool":
        parser.add_argument(flag, dest=f"cfg_{field.name}", type=parse, nargs="?", const=True,
                            default=argparse.SUPPRESS, metavar="BOOL", help=help_text)
        parser.add_argument(f"--no-{flag[2:]}", dest=f"cfg_{field.name}", action="store_false",
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    else:  # absent unless given: "--patience none" is given, and None
        parser.add_argument(flag, dest=f"cfg_{field.name}", type=parse,
                            default=argparse.SUPPRESS, metavar="VALUE", help=help_text)


def _show(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _parser_for(field: dataclasses.Field):
    hints = typing.get_type_hints(config_lib.Config)
    kind = hints[field.name]
    args = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    optional = type(None) in args
    base = next(a for a in args if a is not type(None))

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
            return text.lower() in ("true", "1", "yes")
        try:
            return base(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(base, base.__name__)
            raise argparse.ArgumentTypeError(
                f"expected {kind}{' or none' if optional else ''}, got {text!r}") from None

    parse.__name__ = base.__name__
    return parse


def _overrides(args) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_")}


def config_from_args(args) -> config_lib.Config:
    """The Config that parsed command-line ``args`` ask for: the preset with the given flags.

    ``args`` is not changed.

    Example:
      >>> from resetax.experiment import cli
      >>> args = cli.parser().parse_args(["train", "--preset", "setting1", "--seed", "3"])
      >>> config = cli.config_from_args(args)
      >>> config.model, config.seed
      ('vcnn', 3)
      >>> args = cli.parser().parse_args(["train", "--patience", "none"])  # quick's is 200
      >>> cli.config_from_args(args).patience is None
      True
    """
    return config_lib.get_config(args.preset or DEFAULT_PRESET, **_overrides(args))


def _resumed_config(args, run_dir: Path) -> config_lib.Config:
    """The config saved in ``run_dir``; flags given with ``--resume`` must not change it."""
    from resetax.experiment import workdir

    saved = workdir.load_config(run_dir)
    given = _overrides(args)
    if args.preset is not None:  # every field of that preset counts as given
        given = dataclasses.asdict(config_from_args(args))
    changed = [f"{name} (saved {_show(was)}, given {_show(value)})"
               for name, (was, value) in saved.diff(given).items()]
    if changed:
        raise ValueError(
            f"--resume continues {str(run_dir)!r} with its saved config; these flags would "
            f"change it: {', '.join(changed)}. Resume without them, or start a new run "
            f"(another --run-dir).")
    return saved


def _preset_in(argv: list[str]) -> str | None:
    """The ``--preset`` given in ``argv`` (for the help text), if any: the last one, as
    argparse takes it."""
    preset = None
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            preset = argv[i + 1]
        elif arg.startswith("--preset="):
            preset = arg.partition("=")[2]
    return preset


def _table_in(argv: list[str]) -> str | None:
    """The table of a ``reproduce`` command in ``argv`` (for the help text), if any."""
    from resetax.experiment import reproduce

    if "reproduce" not in argv:
        return None
    return next((arg for arg in argv if arg in reproduce.TABLES), None)


def _default_run_dir(name: str) -> str:
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


if __name__ == "__main__":
    exit_quietly(main())
