"""Command line: ``resetax train`` and ``resetax compare``.

Every :class:`~resetax.experiment.config.Config` field is a flag (``--noise-rate 0.6``,
``--patience none``); a preset supplies the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

from resetax.experiment import config as config_lib


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resetax`` command; returns its exit status.

    ``argv`` defaults to ``sys.argv[1:]``. Bad input is reported on stderr with status 2, before
    anything is written; a run stopped by SIGTERM returns 143.

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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"resetax: error: {err}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from resetax.experiment import runner

    config = _config_from_args(args)
    _start_processes(args)
    run_dir = Path(args.run_dir or _default_run_dir(args.preset))
    if args.resume and not _overrides(args) and (run_dir / runner.CONFIG_FILE).exists():
        config = runner.load_config(run_dir)
    if args.baseline:
        summaries = {}
        runner.check_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)
        if not args.resume:
            runner.check_devices(config)  # fail before anything is written
            runner.load_data(config)
            runner.prepare_run_dir(run_dir, config, overwrite=False)
        for name, cfg in (("baseline", config.replace(reset_prob=0.0)), ("resetting", config)):
            _print(f"== {name} (reset_prob={cfg.reset_prob})")
            summaries[name] = _run_part(cfg, run_dir / name, args)
            if "stopped_at" in summaries[name]:
                return _stopped(summaries[name], run_dir)
        _print(_side_by_side(summaries))
        _print(f"run directory: {run_dir}")
        return 0
    summary = runner.train(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                           progress=not args.quiet)
    if "stopped_at" in summary:
        return _stopped(summary, run_dir)
    _print(json.dumps(summary, indent=2))
    _print(f"run directory: {run_dir}")
    return 0


def _compare(args) -> int:
    from resetax.experiment import distributed, report, runner

    config = _config_from_args(args)
    if config.reset_prob == 0:
        raise ValueError("reset_prob must be > 0 for compare (the baseline uses 0).")
    if args.seeds < 2:
        raise ValueError(f"seeds must be >= 2 for a standard error, got {args.seeds}.")
    _start_processes(args)
    run_dir = Path(args.run_dir or _default_run_dir(f"compare-{args.preset}"))
    runner.check_run_dir(run_dir, resume=args.resume, overwrite=args.overwrite)
    accuracy: dict[str, list[float]] = {"baseline": [], "resetting": []}
    for seed in range(config.seed, config.seed + args.seeds):
        for name, reset_prob in (("baseline", 0.0), ("resetting", config.reset_prob)):
            sub = run_dir / f"{name}-seed{seed}"
            _print(f"== {name}, seed {seed}")
            summary = _run_part(config.replace(seed=seed, reset_prob=reset_prob), sub, args)
            if "stopped_at" in summary:
                return _stopped(summary, run_dir)
            accuracy[name].append(summary["test_acc"])
    table = report.compare_table(accuracy["baseline"], accuracy["resetting"])
    markdown = report.compare_markdown(
        table, f"{args.preset}: noise {config.noise} {config.noise_rate}, "
               f"reset_prob {config.reset_prob}")
    _print(markdown)
    if distributed.is_primary():
        (run_dir / "compare.md").write_text(markdown)
        (run_dir / "compare.json").write_text(
            json.dumps(dict(table, **accuracy), indent=2) + "\n")
        report.plot_compare(accuracy["baseline"], accuracy["resetting"], run_dir / "compare.png")
    _print(f"run directory: {run_dir}")
    return 0


def _run_part(config: config_lib.Config, run_dir: Path, args) -> dict[str, Any]:
    """Trains one of several runs under a parent directory; a finished one is reused on resume."""
    from resetax.experiment import runner

    if args.resume and (run_dir / runner.SUMMARY_FILE).exists():
        return json.loads((run_dir / runner.SUMMARY_FILE).read_text())
    resume = args.resume and (run_dir / runner.CONFIG_FILE).exists()
    return runner.train(config, run_dir, resume=resume, overwrite=args.overwrite,
                        progress=not args.quiet)


def _stopped(result: dict[str, Any], run_dir: Path) -> int:
    """Reports a run stopped by SIGTERM; exits as a terminated process does (128 + 15)."""
    from resetax.experiment import distributed

    if distributed.is_primary():
        print(f"resetax: stopped by {result.get('signal', 'request')} at step "
              f"{result['stopped_at']}, after a checkpoint in {run_dir}; run the same command "
              f"with --run-dir {run_dir} --resume to continue.", file=sys.stderr, flush=True)
    return 128 + 15


def _start_processes(args) -> None:
    """Joins the other processes of a multi-process run (see ``resetax.experiment.distributed``)."""
    from resetax.experiment import distributed

    distributed.initialize(auto_detect=args.distributed)


def _print(text: str) -> None:
    """Prints on process 0 only, so that a multi-process run reports once."""
    from resetax.experiment import distributed

    if distributed.is_primary():
        print(text, flush=True)


def _side_by_side(summaries: dict[str, dict[str, Any]]) -> str:
    keys = ("test_acc", "last_test_acc", "best_val_loss", "best_step", "num_resets",
            "wall_time_s")
    lines = [f"{'':16}" + "".join(f"{name:>12}" for name in summaries)]
    for key in keys:
        cells = []
        for summary in summaries.values():
            v = summary[key]
            if key.endswith("acc"):
                cells.append(f"{100 * v:11.2f}%")
            else:
                cells.append(f"{v:12.4f}" if isinstance(v, float) else f"{v:>12}")
        lines.append(f"{key:16}" + "".join(cells))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resetax", description="Train with stochastic resetting on noisy labels.")
    commands = parser.add_subparsers(required=True)
    for name, func, help_text in (
        ("train", _train, "train one run (the quick preset also trains its baseline)"),
        ("compare", _compare, "baseline vs resetting over several seeds"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.set_defaults(command=func)
        sub.add_argument("--preset", default="quick", choices=sorted(config_lib.PRESETS))
        sub.add_argument("--run-dir", default=None,
                         help="where to write the run (default: runs/<preset>-<time>)")
        sub.add_argument("--resume", action="store_true", help="continue an interrupted run")
        sub.add_argument("--overwrite", action="store_true", help="replace an existing run")
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.add_argument("--distributed", action="store_true",
                         help="join a multi-process run that JAX detects from the cluster "
                              "(SLURM, Open MPI, Kubernetes, Cloud TPU); without it, one starts "
                              "when JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
                              "JAX_PROCESS_ID are set")
        if name == "train":
            sub.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=None,
                             help="also train the reset_prob=0 baseline (default: quick preset)")
        else:
            sub.add_argument("--seeds", type=int, default=3, help="number of paired seeds")
        docs = _field_docs()
        for field in dataclasses.fields(config_lib.Config):
            sub.add_argument(f"--{field.name.replace('_', '-')}", dest=f"cfg_{field.name}",
                             type=_parser_for(field), default=None, metavar="VALUE",
                             help=docs.get(field.name, "").replace("``", "").replace("%", "%%"))
    return parser


def _field_docs() -> dict[str, str]:
    """The ``Attributes:`` entries of the Config docstring, as flag help."""
    docs: dict[str, str] = {}
    name = None
    for line in (config_lib.Config.__doc__ or "").split("Attributes:")[-1].splitlines():
        text = line.strip()
        head, sep, rest = text.partition(": ")
        if sep and line.startswith("      ") and not line.startswith("        "):
            name = head
            docs[name] = rest
        elif name and text:
            docs[name] += " " + text
    return docs


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
        return base(text)

    parse.__name__ = base.__name__
    return parse


def _overrides(args) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg_") and v is not None}


def _config_from_args(args) -> config_lib.Config:
    config = config_lib.get_config(args.preset, **_overrides(args))
    if getattr(args, "baseline", False) is None:
        args.baseline = args.preset == "quick"
    return config


def _default_run_dir(name: str) -> str:
    return f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}"


if __name__ == "__main__":
    sys.exit(main())
