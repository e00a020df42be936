"""Plots and tables of finished runs: curves with reset events, and baseline-vs-resetting."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from resetax.experiment.workdir import read_metrics, writing

__all__ = ["compare_markdown", "compare_table", "plot_compare", "plot_run", "read_metrics",
           "side_by_side", "write_compare"]


def plot_run(run_dir: str | os.PathLike) -> Path:
    """Writes ``curves.png``: validation loss and test accuracy over steps, resets marked (and
    rollbacks and plasticity resets, where the run had them).

    Rows with the latent-gradient-bias diagnostics (``grad_cos_cw``...) add two panels.

    Example:
      >>> import json
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.report import plot_run
      >>> run_dir = Path(tempfile.mkdtemp()) / "run"
      >>> run_dir.mkdir()
      >>> rows = [dict(step=s, val_loss=2.0 - s / 20, train_loss=2.1 - s / 15,
      ...              test_acc=0.3 + s / 50, reset_steps=[12] if s == 10 else [])
      ...         for s in (0, 10, 20)]
      >>> _ = (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows))
      >>> path = plot_run(run_dir)
      >>> path.name, path.parent == run_dir, path.is_file()
      ('curves.png', True, True)
    """
    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    resets = [s for r in rows for s in r.get("reset_steps", ())]
    rollbacks = [s for r in rows for s in r.get("rollback_steps", ())]
    plasticity = [s for r in rows for s in r.get("plasticity_steps", ())]
    diag = [r for r in rows if "grad_cos_cw" in r]
    fig = _figure((11, 8) if diag else (11, 4))
    axes = fig.subplots(2 if diag else 1, 2, squeeze=False)
    ax_loss, ax_acc = axes[0]
    if diag:
        _plot_diagnostics(*axes[1], diag)
    ax_loss.plot(steps, _column(rows, "val_loss"), label="validation loss")
    ax_loss.plot(steps, _column(rows, "train_loss"), label="train loss", alpha=0.6)
    ax_acc.plot(steps, 100 * _column(rows, "val_acc"), color="C1", label="validation accuracy")
    test_acc = _column(rows, "test_acc")
    tested = np.isfinite(test_acc)  # measured only with eval_test, every test_every steps
    if tested.any():
        ax_acc.plot(np.asarray(steps)[tested], 100 * test_acc[tested], color="C2",
                    label="test accuracy")
    for ax in axes.ravel():
        # One collection of lines per kind: thousands of axvline calls cost seconds.
        # Opaque enough to read as the title's red (at alpha 0.25 they looked pink).
        ax.vlines(resets, 0, 1, transform=ax.get_xaxis_transform(), color="red", alpha=0.6,
                  lw=0.6)
        ax.vlines(rollbacks, 0, 1, transform=ax.get_xaxis_transform(), color="k", alpha=0.5,
                  lw=0.8, linestyles="dotted")
        ax.vlines(plasticity, 0, 1, transform=ax.get_xaxis_transform(), color="C4", alpha=0.8,
                  lw=1.2, linestyles="dashed")
        ax.set_xlabel("step")
        ax.legend(loc="best")
    ax_loss.set_ylabel("loss")
    ax_acc.set_ylabel("accuracy (%)")
    title = f"{Path(run_dir).name}: {len(resets)} resets (red lines)"
    if rollbacks:
        title += f", {len(rollbacks)} rollbacks of non-finite updates (dotted)"
    if plasticity:
        title += f", {len(plasticity)} plasticity resets (purple, dashed)"
    fig.suptitle(title)
    out = Path(run_dir) / "curves.png"
    with writing(out):
        fig.savefig(out, dpi=100)
    return out


def _figure(size: tuple[float, float]):
    """A figure drawn by Agg, without pyplot (whose import and global state cost a second)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    # Fixed margins in inches: a constrained layout costs as much as drawing the curves.
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.15 / width, bottom=0.6 / height,
                        top=1 - 0.45 / height, wspace=0.25, hspace=0.35)
    return fig


def _column(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """One metric over the rows, NaN where it is missing or was not finite (``null``)."""
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)


def _plot_diagnostics(ax_grad, ax_mem, rows) -> None:
    """The paper's panels: gradient cosines and the wrong/correct drift ratio; memorization."""
    steps = [r["step"] for r in rows]
    for key, label in (("cos_cw", "cos(correct, wrong)"), ("cos_tw", "cos(total, wrong)"),
                       ("cos_tc", "cos(total, correct)")):
        ax_grad.plot(steps, _column(rows, f"grad_{key}"), label=label)
    ratio = _column(rows, "grad_norm_wrong") / np.maximum(_column(rows, "grad_norm_correct"),
                                                          1e-12)
    ax_grad.plot(steps, ratio, "k--", label="|wrong| / |correct|")
    ax_grad.set_ylabel("gradient alignment")
    for key, label in (("noisy_memorized", "noisy: memorized"), ("noisy_true", "noisy: true label"),
                       ("clean_correct", "clean: correct")):
        ax_mem.plot(steps, _column(rows, f"mem_{key}"), label=label)
    ax_mem.set_ylabel("fraction of training samples")


def compare_table(baseline: list[float], resetting: list[float]) -> dict[str, Any]:
    """Mean ± standard error of two paired samples of test accuracies and of their difference.

    Example:
      >>> from resetax.experiment.report import compare_table
      >>> baseline, resetting = [0.70, 0.72, 0.74], [0.73, 0.74, 0.78]  # seeds 0, 1, 2
      >>> compare_table(baseline, resetting)
      {'n': 3, 'baseline': {'mean': 0.72, 'se': 0.0115},
       'resetting': {'mean': 0.75, 'se': 0.0153},
       'difference': {'mean': 0.03, 'se': 0.0058}}
      >>> compare_table([0.7], [0.8])["difference"]  # one seed: no standard error
      {'mean': 0.1, 'se': nan}

      The paired difference has a smaller standard error than either sample: the seeds that
      are hard for the baseline are hard for resetting too.
    """
    baseline, resetting = np.asarray(baseline, float), np.asarray(resetting, float)
    diff = resetting - baseline

    def stats(x):
        se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
        return {"mean": float(x.mean()), "se": se}

    return {"n": len(diff), "baseline": stats(baseline), "resetting": stats(resetting),
            "difference": stats(diff)}


def compare_markdown(table: dict[str, Any], title: str) -> str:
    """Formats :func:`compare_table` as a markdown table (accuracies in %).

    Example:
      >>> from resetax.experiment.report import compare_markdown, compare_table
      >>> table = compare_table([0.70, 0.72, 0.74], [0.73, 0.74, 0.78])
      >>> print(compare_markdown(table, "digits, 40% noise"))
      ### digits, 40% noise (3 seeds, test accuracy % of the best-validation model)
      <BLANKLINE>
      | baseline | resetting | resetting − baseline (paired) |
      |---|---|---|
      | 72.00 ± 1.15 | 75.00 ± 1.53 | 3.00 ± 0.58 |
    """
    fmt = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['se']:.2f}"  # noqa: E731
    return (f"### {title} ({table['n']} seeds, test accuracy % of the best-validation model)\n\n"
            "| baseline | resetting | resetting − baseline (paired) |\n|---|---|---|\n"
            f"| {fmt(table['baseline'])} | {fmt(table['resetting'])} | "
            f"{fmt(table['difference'])} |\n")


def plot_compare(baseline: list[float], resetting: list[float], path: str | os.PathLike) -> Path:
    """Paired test accuracies per seed, baseline vs resetting, titled with the paired difference.

    Writes the figure to ``path`` (its suffix picks the format) and returns the path.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.report import plot_compare
      >>> path = Path(tempfile.mkdtemp()) / "compare.png"
      >>> plot_compare([0.70, 0.72, 0.74], [0.73, 0.74, 0.78], path) == path
      True
      >>> path.is_file(), path.read_bytes()[1:4] == b"PNG"
      (True, True)
    """
    fig = _figure((4, 4))
    ax = fig.subplots()
    for b, r in zip(baseline, resetting, strict=True):
        ax.plot([0, 1], [100 * b, 100 * r], "o-", color="C0", alpha=0.7)
    ax.set_xticks([0, 1], ["baseline", "resetting"])
    ax.set_ylabel("test accuracy (%) of the best-validation model")
    ax.set_xlim(-0.3, 1.3)
    difference = compare_table(baseline, resetting)["difference"]
    ax.set_title(f"{len(baseline)} seeds, resetting − baseline:\n"
                 f"{100 * difference['mean']:+.2f} ± {100 * difference['se']:.2f} points (paired)")
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=100)
    return Path(path)


def write_compare(summaries: dict[str, dict[str, Any]], config: Any, run_dir: Path) -> str:
    """``compare``'s report of its runs' ``summaries`` (named ``baseline-seed<k>`` and
    ``resetting-seed<k>``): writes ``compare.md``, ``compare.json`` (each arm's mean and standard
    error, with its per-seed accuracies in seed order) and ``compare.png`` into ``run_dir`` on
    process 0; returns the markdown.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.report import write_compare
      >>> summaries = {f"{arm}-seed{seed}": {"test_acc": acc}
      ...              for seed, accs in enumerate([(0.5, 0.6), (0.55, 0.6)])
      ...              for arm, acc in zip(("baseline", "resetting"), accs)}
      >>> run_dir = Path(tempfile.mkdtemp())
      >>> markdown = write_compare(summaries, get_config("quick"), run_dir)
      >>> sorted(p.name for p in run_dir.iterdir())
      ['compare.json', 'compare.md', 'compare.png']
      >>> json.loads((run_dir / "compare.json").read_text())["resetting"]["per_seed"]
      [0.6, 0.6]
    """
    from resetax.experiment import distributed

    accuracy = {name: [s["test_acc"] for run, s in summaries.items() if run.startswith(name)]
                for name in ("baseline", "resetting")}
    table = compare_table(accuracy["baseline"], accuracy["resetting"])
    markdown = compare_markdown(
        table, f"noise {config.noise} {config.noise_rate}, reset_prob {config.reset_prob}")
    if distributed.is_primary():
        with writing(run_dir / "compare.md"):
            (run_dir / "compare.md").write_text(markdown)
        result = {**table, **{name: {**table[name], "per_seed": accuracy[name]}
                              for name in accuracy}}
        with writing(run_dir / "compare.json"):
            (run_dir / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_compare(accuracy["baseline"], accuracy["resetting"], run_dir / "compare.png")
    return markdown


def side_by_side(summaries: dict[str, dict[str, Any]]) -> str:
    """The summaries of a pair's runs in columns, one line per number.

    Example:
      >>> from resetax.experiment.report import side_by_side
      >>> run = dict(test_acc=0.5, last_test_acc=0.25, best_val_loss=1.0, best_step=10,
      ...            num_resets=2, wall_time_s=3.0)
      >>> print(side_by_side({"baseline": run, "resetting": run}))  # doctest: +NORMALIZE_WHITESPACE
                          baseline   resetting
      test_acc                50.00%      50.00%
      last_test_acc           25.00%      25.00%
      best_val_loss           1.0000      1.0000
      best_step                   10          10
      num_resets                   2           2
      wall_time_s             3.0000      3.0000
    """
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
