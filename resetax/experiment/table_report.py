"""The report of a reproduced paper table: each cell's statistics over seeds, ``table.md`` and
``table.json`` beside the paper's numbers, and ``table.png``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from resetax.experiment.reproduce import Cell, Table


def summarize_table(table: Table, summaries: Mapping[str, Mapping[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """Per cell: the test accuracies of its finished runs and their mean ± standard error.

    Examples:
      >>> from resetax.experiment.reproduce import TABLES
      >>> from resetax.experiment.table_report import summarize_table
      >>> table = TABLES["table2-cifar-n"]
      >>> summaries = {"cifar100n-gce/baseline-seed0": {"test_acc": 0.55},
      ...              "cifar100n-gce/resetting-seed0": {"test_acc": 0.58},
      ...              "cifar100n-gce/baseline-seed1": {"test_acc": 0.57},
      ...              "cifar100n-gce/resetting-seed1": {"test_acc": 0.58}}
      >>> cell = summarize_table(table, summaries)["cifar100n-gce"]
      >>> cell["n"], cell["baseline"], cell["resetting"], cell["difference"]
      (2, {'mean': 56.0, 'se': 1.0}, {'mean': 58.0, 'se': 0.0}, {'mean': 2.0, 'se': 1.0})
      >>> cell["paper"]
      [55.8, 58.0]
    """
    from resetax.experiment import report

    out = {}
    for cell in table.cells:
        pairs = {}
        for path, summary in summaries.items():
            name, _, run = path.partition("/")
            kind, _, seed = run.partition("-seed")
            if name == cell.name and "test_acc" in summary:
                pairs.setdefault(seed, {})[kind] = 100 * summary["test_acc"]
        complete = [p for _, p in sorted(pairs.items()) if len(p) == 2]
        entry = {"n": len(complete), "paper": list(cell.paper) if cell.paper else None,
                 "row": cell.row, "column": cell.column}
        if complete:
            stats = report.compare_table([p["baseline"] for p in complete],
                                         [p["resetting"] for p in complete])
            entry.update({k: _rounded(stats[k]) for k in ("baseline", "resetting", "difference")})
        out[cell.name] = entry
    return out


def table_markdown(table: Table, cells: Mapping[str, Mapping[str, Any]], seeds: int) -> str:
    """The table in the paper's layout: for each row, the paper's line and ours.

    Examples:
      >>> from resetax.experiment.reproduce import TABLES
      >>> from resetax.experiment.table_report import table_markdown
      >>> table = TABLES["table2-cifar-n"]
      >>> cells = {"cifar100n-gce": {"n": 2, "paper": [55.8, 58.0],
      ...                            "baseline": {"mean": 56.0, "se": 1.0},
      ...                            "resetting": {"mean": 58.0, "se": 0.0},
      ...                            "difference": {"mean": 2.0, "se": 1.0}}}
      >>> print(table_markdown(table, cells, seeds=2))
      ### CIFAR-10N and CIFAR-100N, ...
      ...
      | CIFAR-100N | paper | 46.7 → 56.0 (+9.3) | 55.8 → 58.0 (+2.2) |
      | | ours | not run | 56.00 ± 1.00 → 58.00 ± 0.00 (+2.00 ± 1.00) |
    """
    by_place = {(c.row, c.column): c for c in table.cells}
    lines = [
        f"### {table.title}",
        "",
        "Test accuracy (%) of the best-validation model, without → with resetting; ours: mean ± "
        f"standard error over {seeds} seed(s) (the gain: paired over seeds). Paper: "
        f"{table.source}.",
        "",
        f"| {table.row_label} | | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for row in table.rows:
        paper, ours = [], []
        for column in table.columns:
            cell = by_place.get((row, column))
            paper.append(_paper_text(cell))
            ours.append(_ours_text(cell, cells, seeds))
        lines.append(f"| {row} | paper | " + " | ".join(paper) + " |")
        lines.append("| | ours | " + " | ".join(ours) + " |")
    return "\n".join(lines) + "\n"


def plot_table(table: Table, cells: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """``table.png``: per column, ours without and with resetting (mean ± s.e.) and the paper's
    numbers (crosses), row by row."""
    from resetax.experiment.report import _figure

    fig = _figure((4.5 * len(table.columns), 4))
    axes = np.atleast_1d(fig.subplots(1, len(table.columns), squeeze=False)[0])
    x = np.arange(len(table.rows))
    for ax, column in zip(axes, table.columns, strict=True):
        for offset, kind, color in ((-0.2, "baseline", "C0"), (0.2, "resetting", "C3")):
            means, errors, papers = [], [], []
            for row in table.rows:
                cell = next((c for c in table.cells if (c.row, c.column) == (row, column)), None)
                entry = cells.get(cell.name, {}) if cell else {}
                means.append(entry.get(kind, {}).get("mean", np.nan))
                errors.append(entry.get(kind, {}).get("se", np.nan))
                papers.append(cell.paper[kind == "resetting"] if cell and cell.paper else np.nan)
            label = "with" if kind == "resetting" else "without"
            ax.errorbar(x + offset, means, yerr=np.nan_to_num(errors), fmt="o", color=color,
                        capsize=3, label=f"ours, {label} resetting")
            ax.plot(x + offset, papers, "x", color=color, markersize=9, markeredgewidth=2,
                    label=f"paper, {label}")
        ax.set_xticks(x, table.rows, rotation=20)
        ax.set_xlim(-0.6, len(table.rows) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(column)
        ax.set_ylabel("test accuracy (%)")
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle(table.title, fontsize=9)
    fig.savefig(path, dpi=100)
    return path


def write_report(table: Table, summaries: Mapping[str, Mapping[str, Any]], run_dir: Path,
                 seeds: int) -> str:
    """Writes ``table.md``, ``table.json`` and ``table.png`` into ``run_dir``; returns the
    markdown."""
    from resetax.experiment import workdir

    cells = summarize_table(table, summaries)
    markdown = table_markdown(table, cells, seeds)
    (run_dir / "table.md").write_text(markdown)
    workdir.write_json(run_dir / "table.json", {"table": table.name, "seeds": seeds,
                                                "cells": cells})
    plot_table(table, cells, run_dir / "table.png")
    return markdown


def _rounded(stats: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 4) if math.isfinite(v) else v for k, v in stats.items()}


def _paper_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.paper is None:
        return "no number"
    without, with_ = cell.paper
    return f"{without:.1f} → {with_:.1f} ({with_ - without:+.1f})"


def _ours_text(cell: Cell | None, cells: Mapping[str, Mapping[str, Any]], seeds: int) -> str:
    if cell is None:
        return ""
    entry = cells.get(cell.name, {})
    if not entry.get("n"):
        return "not run"
    def fmt(stats, sign=""):
        # One seed has no standard error.
        se = f" ± {stats['se']:.2f}" if math.isfinite(stats["se"]) else ""
        return f"{stats['mean']:{sign}.2f}{se}"

    text = (f"{fmt(entry['baseline'])} → {fmt(entry['resetting'])} "
            f"({fmt(entry['difference'], '+')})")
    return text if entry["n"] == seeds else f"{text}, {entry['n']} of {seeds} seeds"
