"""``resetax reproduce TABLE``: every cell of one of the paper's tables, beside the paper's numbers.

A table is a grid of cells (noise rate or label set × loss); a cell is a pair of runs, without
and with resetting, for each seed, built from a preset with the cell's overrides. Each run is
:func:`resetax.experiment.runner.train` into its own directory
(``RUN_DIR/<cell>/<baseline|resetting>-seed<k>``), so that an interrupted table resumes where it
stopped, and ``table.md``, ``table.json`` and ``table.png`` put the test accuracy of the
best-validation model (mean ± standard error over seeds) beside the paper's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resetax.experiment.config import Config, get_config

if TYPE_CHECKING:  # the runner imports JAX, which a dry run does without
    from resetax.experiment.runner import RunResult

DEFAULT_SEEDS = 5  # the paper's runs per cell
ROBUST_LEARNING_RATE = 0.01  # the paper's rate for MAE, GCE and SCE (PARITY.md, row 26)

# The times from which --dry-run estimates GPU hours, measured on one H100 80GB (jax 0.11.2)
# with benchmarks/setting2_steps.py on synthetic CIFAR-shaped data (45,000 train / 5,000
# validation images), the trainer's loop with lax.scan dispatch. ResNet-34, batch 256: 21.43
# ms/step validating every 10 steps, 15.89 every 100; so 15.27 ms per training step and 61.6 ms
# per validation pass of 5,000 images. VCNN, batch 16: 1.37 ms/step validating 5,000 images
# every 100 steps, not split into its parts.
RESNET34_STEP_S = 15.27e-3
RESNET34_EVAL_S_PER_IMAGE = 61.6e-3 / 5_000
VCNN_STEP_S = 1.37e-3
TIMING_SOURCE = (
    "times measured on one H100 with benchmarks/setting2_steps.py: ResNet-34 at batch 256 takes "
    "15.27 ms per step plus 61.6 ms per 5,000 images evaluated (21.4 ms/step validating every "
    "10 steps); setting 1's VCNN 1.37 ms/step with 5,000 validation images every 100 steps "
    "(its 10,000 add a pass that was not measured)")


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of a paper table: a preset with overrides, run without and with resetting.

    Attributes:
      name: The cell's directory name, e.g. ``"sym40-gce"``.
      row: The table row it sits in, e.g. ``"40%"``.
      column: The table column, e.g. ``"GCE"``.
      preset: The preset it starts from.
      overrides: Config fields the cell sets (noise rate, loss, learning rate).
      paper: The paper's test accuracies (%) without and with resetting, or None where the
        paper gives no number.
    """

    name: str
    row: str
    column: str
    preset: str
    overrides: Mapping[str, Any]
    paper: tuple[float, float] | None


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of the paper: its cells in the paper's layout.

    Attributes:
      name: The name ``resetax reproduce`` takes.
      title: What the table shows.
      row_label: The header of the rows' column.
      rows: The rows, in the paper's order.
      columns: The columns (losses), in the paper's order.
      cells: The cells that hold a number in the paper.
      source: Where the paper's numbers come from.
    """

    name: str
    title: str
    row_label: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: tuple[Cell, ...]
    source: str

    def cell(self, name: str) -> Cell:
        """The cell named ``name``."""
        return next(c for c in self.cells if c.name == name)


def _loss_overrides(loss: str) -> dict[str, Any]:
    """The loss of a cell, with the paper's learning rate for the robust losses (row 26)."""
    if loss == "ce":
        return {"loss": "ce"}
    return {"loss": loss, "learning_rate": ROBUST_LEARNING_RATE}


def _symmetric_table(name: str, dataset: str, preset: str,
                     paper: Mapping[str, Sequence[tuple[float, float]]]) -> Table:
    rates = (0.2, 0.4, 0.6)
    cells = tuple(
        Cell(name=f"sym{round(100 * rate)}-{loss}", row=f"{round(100 * rate)}%",
             column=loss.upper(), preset=preset,
             overrides={"noise_rate": rate, **_loss_overrides(loss)},
             paper=paper[loss][i])
        for loss in paper for i, rate in enumerate(rates))
    return Table(
        name=name, title=f"{dataset}, symmetric noise (Table 1 of the paper)",
        row_label="noise", rows=tuple(f"{round(100 * r)}%" for r in rates),
        columns=tuple(loss.upper() for loss in paper), cells=cells,
        source="Bae, Song & Jeong, MLST 2025, Table 1")


_CIFAR_N_CELLS = (
    # (row, preset, loss, paper's numbers)
    ("CIFAR-10N rand1", "cifar10n-random1", "ce", (82.8, 87.8)),
    ("CIFAR-10N aggre", "cifar10n-aggre", "ce", (86.1, 90.2)),
    ("CIFAR-10N worst", "cifar10n-worse", "ce", (73.8, 79.7)),
    ("CIFAR-100N", "cifar100n", "ce", (46.7, 56.0)),
    ("CIFAR-100N", "cifar100n", "gce", (55.8, 58.0)),
)

TABLES: dict[str, Table] = {
    "table1-cifar10": _symmetric_table("table1-cifar10", "CIFAR-10", "setting2-cifar10", {
        "ce": [(84.8, 90.0), (80.8, 86.3), (72.9, 79.5)],
        "gce": [(90.6, 91.0), (85.3, 87.1), (76.2, 79.1)],
        "sce": [(91.3, 91.4), (86.6, 87.9), (80.1, 81.6)],
    }),
    "table1-cifar100": _symmetric_table("table1-cifar100", "CIFAR-100", "setting2-cifar100", {
        "ce": [(62.7, 64.5), (45.6, 56.9), (32.9, 44.1)],
        "gce": [(68.3, 69.3), (61.2, 63.2), (50.1, 53.1)],
        "sce": [(66.8, 68.6), (60.4, 63.1), (50.4, 54.1)],
    }),
    "table2-cifar-n": Table(
        name="table2-cifar-n", title="CIFAR-10N and CIFAR-100N, human labels (the paper's "
        "real-world noise table; ANIMAL-10N is not offered)",
        row_label="labels",
        rows=("CIFAR-10N rand1", "CIFAR-10N aggre", "CIFAR-10N worst", "CIFAR-100N"),
        columns=("CE", "GCE"),
        cells=tuple(
            Cell(name=f"{preset}-{loss}", row=row, column=loss.upper(), preset=preset,
                 overrides=_loss_overrides(loss), paper=paper)
            for row, preset, loss, paper in _CIFAR_N_CELLS),
        source="Bae, Song & Jeong, MLST 2025, table of real-world noise"),
    "setting1": Table(
        name="setting1", title="setting 1: ciFAIR-10 trainval0 (50 images per class), VCNN, "
        "symmetric noise",
        row_label="noise", rows=("20%", "40%", "60%"), columns=("CE",),
        cells=tuple(
            Cell(name=f"sym{p}-ce", row=f"{p}%", column="CE", preset="setting1",
                 overrides={"noise_rate": p / 100, "loss": "ce"}, paper=None)
            for p in (20, 40, 60)),
        source="the paper shows setting 1 in figures only: no number to put beside ours"),
}
"""The tables ``resetax reproduce`` runs, by name."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a table: a cell's run without or with resetting, for one seed.

    Attributes:
      cell: The cell's name.
      name: ``baseline-seed<k>`` or ``resetting-seed<k>``.
      config: The run's config.
    """

    cell: str
    name: str
    config: Config

    @property
    def path(self) -> str:
        """The run's directory under the table's."""
        return f"{self.cell}/{self.name}"


def plan_runs(table: Table, seeds: int, overrides: Mapping[str, Any] | None = None,
              cells: Sequence[str] | None = None) -> list[Run]:
    """Every run of ``table`` (or of the ``cells`` named), validated before any work is done.

    Each cell runs, for seeds ``seed, seed + 1, ...`` (``seed`` from ``overrides``, 0 by
    default), the preset with the cell's overrides and then ``overrides`` once with
    ``reset_prob=0`` (the baseline) and once with the preset's ``reset_prob``: the two runs of
    a seed share everything but the resets.

    Args:
      table: A table of :data:`TABLES`.
      seeds: Seeds per cell, >= 1.
      overrides: Config fields applied to every run (e.g. ``data_dir``); not the fields the
        cells set, nor ``reset_prob`` or ``baseline``.
      cells: Names of the cells to run; None: all.

    Returns:
      The runs, cell by cell, seed by seed, baseline first.

    Examples:
      >>> from resetax.experiment.reproduce import TABLES, plan_runs
      >>> runs = plan_runs(TABLES["table1-cifar10"], seeds=2)
      >>> len(runs), runs[0].path, runs[1].path
      (36, 'sym20-ce/baseline-seed0', 'sym20-ce/resetting-seed0')
      >>> gce = [r for r in runs if r.cell == "sym40-gce"][1].config
      >>> gce.loss, gce.learning_rate, gce.noise_rate, gce.reset_prob
      ('gce', 0.01, 0.4, 0.001)
      >>> plan_runs(TABLES["setting1"], seeds=1, overrides={"noise_rate": 0.3})
      Traceback (most recent call last):
      ...
      ValueError: reproduce sets noise_rate in the cells of setting1; it cannot be given.
    """
    from resetax import _checks

    _checks.positive_int("seeds", seeds)
    overrides = dict(overrides or {})
    fixed = sorted(({"reset_prob", "baseline"} | {k for c in table.cells for k in c.overrides})
                   & set(overrides))
    if fixed:
        raise ValueError(f"reproduce sets {', '.join(fixed)} in the cells of {table.name}; it "
                         f"cannot be given.")
    known = [c.name for c in table.cells]
    unknown = [c for c in cells or () if c not in known]
    if cells is not None and not cells:
        raise ValueError(f"cells must name one or more of {known}, got none.")
    if unknown:
        raise ValueError(f"cells must be among {known}, got {unknown}.")
    first_seed = overrides.pop("seed", 0)
    runs = []
    for cell in table.cells:
        if cells is not None and cell.name not in cells:
            continue
        config = get_config(cell.preset, **{**cell.overrides, **overrides})
        for seed in range(first_seed, first_seed + seeds):
            for name, reset_prob in (("baseline", 0.0), ("resetting", config.reset_prob)):
                runs.append(Run(cell.name, f"{name}-seed{seed}",
                                config.replace(seed=seed, reset_prob=reset_prob)))
    return runs


def estimate_seconds(config: Config) -> float:
    """The GPU time of one run on one H100, in seconds, from the measured times above.

    A ResNet run costs its training steps and its evaluations: the validation set every
    ``eval_every`` steps (5,000 images, 10,000 with ``val_source="test"``) and, with
    ``eval_test``, the 10,000 test images every ``test_every`` steps. Other models are
    counted at the VCNN's measured rate. Compilation (about 25 s) is not counted.

    Examples:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.reproduce import estimate_seconds
      >>> round(estimate_seconds(get_config("setting2-cifar10")) / 60, 1)  # minutes
      17.9
      >>> round(estimate_seconds(get_config("setting2-cifar10", eval_every=100)) / 60, 1)
      13.2
    """
    if not config.model.startswith("resnet"):
        return config.num_steps * VCNN_STEP_S
    val_images = 10_000 if config.val_source == "test" else 5_000
    per_step = RESNET34_STEP_S + RESNET34_EVAL_S_PER_IMAGE * val_images / config.eval_every
    if config.eval_test:
        per_step += RESNET34_EVAL_S_PER_IMAGE * 10_000 / (config.test_every or config.eval_every)
    return config.num_steps * per_step


def dry_run(table: Table, runs: Sequence[Run], runs_together: int | str = "off") -> str:
    """The text ``--dry-run`` prints: every run, its config's changes, and the estimate, with
    the configuration it assumes (:func:`together_note`).

    Examples:
      >>> from resetax.experiment.reproduce import TABLES, dry_run, plan_runs
      >>> table = TABLES["setting1"]
      >>> print(dry_run(table, plan_runs(table, seeds=1, overrides={"data_dir": "/data"})))
      setting1: setting 1: ciFAIR-10 trainval0 (50 images per class), VCNN, symmetric noise
      run                       preset    steps  reset_prob  minutes  changes
      sym20-ce/baseline-seed0   setting1  30000  0.0         0.7      noise_rate=0.2 loss=ce data_dir=/data
      sym20-ce/resetting-seed0  setting1  30000  0.01        0.7      noise_rate=0.2 loss=ce data_dir=/data
      sym40-ce/baseline-seed0   setting1  30000  0.0         0.7      noise_rate=0.4 loss=ce data_dir=/data
      ...
      6 runs, 180,000 steps: about 0.1 GPU hours on one H100; times measured on one H100 ...
    """  # noqa: E501
    header = ("run", "preset", "steps", "reset_prob", "minutes", "changes")
    lines = [header]
    for run in runs:
        cell = table.cell(run.cell)
        preset = get_config(cell.preset)
        # The cell's own fields, then whatever else differs from the preset.
        names = [*cell.overrides, *(f.name for f in dataclasses.fields(Config)
                                    if f.name not in ("seed", "reset_prob", *cell.overrides)
                                    and getattr(run.config, f.name) != getattr(preset, f.name))]
        changes = " ".join(f"{name}={getattr(run.config, name)}" for name in names)
        lines.append((run.path, cell.preset, str(run.config.num_steps),
                      str(run.config.reset_prob), f"{estimate_seconds(run.config) / 60:.1f}",
                      changes))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    text = [f"{table.name}: {table.title}"]
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1]
             for line in lines]
    steps = sum(r.config.num_steps for r in runs)
    hours = sum(estimate_seconds(r.config) for r in runs) / 3600
    text.append(f"{len(runs)} runs, {steps:,} steps: about {hours:.1f} GPU hours on one H100; "
                f"{TIMING_SOURCE}.")
    text.append(together_note(runs, runs_together))
    if any(r.config.val_source == "test" for r in runs):
        text.append("val_source=test: the best model and the resetting checkpoint are chosen on "
                    "the test images, as the official code does (PARITY.md, D3).")
    return "\n".join(line.rstrip() for line in text)


def together_note(runs: Sequence[Run], runs_together: int | str) -> str:
    """Which configuration the dry run's estimate assumes: the runs one at a time, the only one
    whose rates are measured; with ``runs_together``, how the runs would group instead.

    Example:
      >>> from resetax.experiment.reproduce import TABLES, plan_runs, together_note
      >>> runs = plan_runs(TABLES["table1-cifar10"], seeds=5)
      >>> print(together_note(runs, "off"))
      The estimate assumes the runs trained one at a time (--runs-together off).
      >>> print(together_note(runs, 10))  # the cells of one loss share shapes
      The estimate assumes the runs trained one at a time: the rates of runs trained together
      are not measured yet (benchmarks/setting2_steps.py, on a GPU), so it does not count their
      gain.
      --runs-together 10 trains these 90 runs in 9 groups of runs that share shapes (3 kinds of
      run; up to 10 runs a group).
    """
    from resetax.experiment import group, together

    if runs_together in ("off", 1):
        return "The estimate assumes the runs trained one at a time (--runs-together off)."
    size = 0 if runs_together == "auto" else runs_together
    groups = together.plan_groups(
        [group.GroupRun(run.path, run.config, Path(run.path)) for run in runs], size)
    kinds = len({together.compatible(run.config) for run in runs})
    where = "; on an accelerator, one at a time on a CPU" if runs_together == "auto" else ""
    return (f"The estimate assumes the runs trained one at a time: the rates of runs trained "
            f"together are not measured yet (benchmarks/setting2_steps.py, on a GPU), so it does "
            f"not count their gain.\n--runs-together {runs_together} trains these {len(runs)} "
            f"runs in {len(groups)} group{'s' * (len(groups) > 1)} of runs that share shapes "
            f"({kinds} kind{'s' * (kinds > 1)} of run; up to {max(len(g) for g in groups)} "
            f"runs a group{where}).")


def run_table(table: Table, runs: Sequence[Run], run_dir: Path, *, resume: bool,
              train: Callable[[Config, Path, bool], RunResult],
              announce: Callable[[str], None] = print, runs_together: int | str = "off",
              progress: bool = True) -> dict[str, RunResult]:
    """Trains ``runs`` one after the other under ``run_dir``; returns their results by path.

    ``train(config, run_dir, resume)`` trains one run, or with ``resume`` reuses a finished one
    and resumes an interrupted one (the CLI passes
    :func:`~resetax.experiment.group.train_or_reuse`); a reused run is not announced. It stops
    at the first run that is :class:`~resetax.experiment.runner.Stopped` (a signal), returning the
    results so far and that one. With ``runs_together`` other than 1 once resolved
    (:func:`resetax.experiment.together.resolve`), the runs that share shapes train together
    instead, group after group (:func:`resetax.experiment.together.train_runs`, with a
    ``progress`` bar), and ``train`` is not called.
    """
    from resetax.experiment import group, together, workdir
    from resetax.experiment.runner import Stopped

    if together.resolve(runs_together) != 1:
        results = together.train_runs(
            [group.GroupRun(run.path, run.config, run_dir / run.path) for run in runs],
            runs_together=runs_together, resume=resume, progress=progress, announce=announce)
        # After a stop, the runs that never started are left out, as above.
        return {path: result for path, result in results.items()
                if not isinstance(result, Stopped) or (run_dir / path).exists()}
    results = {}
    for i, run in enumerate(runs):
        path = run_dir / run.path
        if not (resume and (path / workdir.SUMMARY_FILE).exists()):  # finished runs are reused
            announce(f"== [{i + 1}/{len(runs)}] {table.name} {run.path} "
                     f"(reset_prob={run.config.reset_prob}, seed {run.config.seed})")
        results[run.path] = train(run.config, path, resume)
        if isinstance(results[run.path], Stopped):
            break
    return results


def _flag_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def resume_plan(run_dir: Path, table: Table, overrides: Mapping[str, Any],
                seeds: int | None, cells: Sequence[str] | None
                ) -> tuple[dict[str, Any], int, list[str] | None]:
    """The saved ``(overrides, seeds, cells)`` of the table being resumed in ``run_dir``.

    What is given again must equal what was saved: a resumed table runs the same runs.

    Examples:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment import reproduce
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> table = reproduce.TABLES["setting1"]
      >>> reproduce.write_plan(run_dir, table, {"data_dir": "/data"}, 3, None)
      >>> reproduce.resume_plan(run_dir, table, {}, None, None)
      ({'data_dir': '/data'}, 3, None)
      >>> reproduce.resume_plan(run_dir, table, {}, 5, None)
      Traceback (most recent call last):
      ...
      ValueError: --resume continues the table in '...' with its saved plan; these flags would change it: --seeds 5 (saved 3).
    """  # noqa: E501
    from resetax.experiment import workdir

    path = Path(run_dir) / workdir.PLAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"nothing to resume: {str(run_dir)!r} holds no {path.name}.")
    plan = workdir.read_plan(run_dir)
    if plan.get("command") != "reproduce" or plan.get("table") != table.name:
        saved = plan.get("table") or f"a `resetax {plan.get('command')}` run"
        raise ValueError(f"{str(run_dir)!r} holds {saved}, not {table.name}.")
    given = {**{f"--{k.replace('_', '-')}": (v, plan["overrides"].get(k))
                for k, v in overrides.items()},
             "--seeds": (seeds, plan["seeds"]), "--cells": (cells, plan["cells"])}
    changed = [f"{flag} {_flag_text(value)} (saved {_flag_text(saved)})"
               for flag, (value, saved) in given.items()
               if value is not None and _plain(value) != saved]
    if changed:
        raise ValueError(f"--resume continues the table in {str(run_dir)!r} with its saved plan; "
                         f"these flags would change it: {', '.join(changed)}.")
    return plan["overrides"], plan["seeds"], plan["cells"]


def write_plan(run_dir: Path, table: Table, overrides: Mapping[str, Any], seeds: int,
               cells: Sequence[str] | None, runs_together: int | str = "auto") -> None:
    """Writes ``plan.json``: what :func:`resume_plan` reads back, and ``runs_together``, which
    a resume without ``--runs-together`` keeps."""
    from resetax.experiment import workdir

    workdir.write_json(Path(run_dir) / workdir.PLAN_FILE, {
        "command": "reproduce", "table": table.name, "seeds": seeds,
        "cells": None if cells is None else list(cells), "overrides": dict(overrides),
        "runs_together": runs_together})
