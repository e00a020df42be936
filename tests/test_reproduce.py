"""Tests of ``resetax reproduce``: the tables' runs, dry run, end to end on mocked CIFAR, resume."""

import json

import pytest
from runs import one_line_error, without_times
from tfds_mock import mock_cifar

from resetax.experiment import cli, reproduce, runner, workdir
from resetax.experiment.config import PRESETS

# A tiny version of every run: an MLP for a few steps on mocked CIFAR (40 images per split).
TINY_FLAGS = ["--quiet", "--model", "mlp", "--num-steps", "20", "--eval-every", "10",
              "--checkpoint-every", "10", "--steps-per-dispatch", "10", "--patience", "0",
              "--batch-size", "8", "--data-dir", "/ignored/by/the/mock"]
CELLS = "cifar10n-aggre-ce,cifar100n-gce"


def test_tables_hold_the_papers_cells():
    assert set(reproduce.TABLES) >= {"table1-cifar10", "table1-cifar100", "table2-cifar-n",
                                     "setting1"}
    for table in reproduce.TABLES.values():
        assert len({c.name for c in table.cells}) == len(table.cells), table.name
        for cell in table.cells:
            assert cell.preset in PRESETS and cell.row in table.rows, cell
            assert cell.column in table.columns, cell
    # Every number of the paper's tables (PAPER.md, section 5; ANIMAL-10N is out of scope).
    numbers = {(t, c.row, c.column): c.paper for t, table in reproduce.TABLES.items()
               for c in table.cells}
    assert numbers[("table1-cifar10", "40%", "CE")] == (80.8, 86.3)
    assert numbers[("table1-cifar100", "60%", "SCE")] == (50.4, 54.1)
    assert numbers[("table2-cifar-n", "CIFAR-100N", "GCE")] == (55.8, 58.0)
    assert sum(p is not None for p in numbers.values()) == 9 + 9 + 5


def test_cells_set_noise_loss_and_the_robust_losses_learning_rate():
    runs = reproduce.plan_runs(reproduce.TABLES["table1-cifar100"], seeds=3)
    assert len(runs) == 9 * 2 * 3
    by_path = {r.path: r.config for r in runs}
    ce, sce = by_path["sym60-ce/resetting-seed2"], by_path["sym60-sce/baseline-seed1"]
    assert (ce.dataset, ce.noise_rate, ce.loss, ce.learning_rate, ce.seed) == (
        "cifar100", 0.6, "ce", 0.1, 2)
    assert ce.reset_prob == 1e-3 and sce.reset_prob == 0.0
    assert (sce.loss, sce.learning_rate, sce.sce_alpha, sce.sce_beta) == ("sce", 0.01, 0.1, 1.0)
    # A pair differs in its resets only.
    base = by_path["sym20-gce/baseline-seed0"]
    assert base.replace(reset_prob=1e-3) == by_path["sym20-gce/resetting-seed0"]


def test_cells_may_be_separated_by_a_comma_and_spaces(capsys):
    # Before: --cells "sym20-ce, sym40-ce" was refused: "got [' sym40-ce']".
    assert cli.main(["reproduce", "setting1", "--dry-run", "--seeds", "1", "--cells",
                     "sym20-ce, sym40-ce "]) == 0
    out = capsys.readouterr().out
    assert "sym20-ce/resetting-seed0" in out and "sym40-ce/resetting-seed0" in out
    assert "sym60-ce" not in out


def test_dry_run_lists_the_runs_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "table"
    code = cli.main(["reproduce", "table1-cifar10", "--dry-run", "--seeds", "2", "--run-dir",
                     str(run_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert out.count("-seed0 ") == 18 and out.count("-seed1 ") == 18
    assert "sym60-sce/resetting-seed1" in out and "loss=sce learning_rate=0.01" in out
    # 36 runs of 50,000 steps at 21.43 ms/step (validation every 10 steps): 10.7 hours.
    assert "36 runs, 1,800,000 steps: about 10.7 GPU hours on one H100" in out
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--noise-rate", "0.3"], "reproduce sets noise_rate"),
        (["--reset-prob", "0.1"], "reproduce sets reset_prob"),
        (["--cells", "sym90-ce"], "cells must be among"),
        (["--cells", ","], "--cells ',' names no cell; give one or more of sym20-ce, sym40-ce"),
        (["--cells", ""], "--cells '' names no cell; give one or more of sym20-ce, sym40-ce"),
        (["--cells", ",", "--dry-run"], "--cells ',' names no cell"),
        (["--cells", " , "], "--cells ' , ' names no cell"),
        (["--num-steps", "5"], "eval_every (10) must be at most num_steps (5)"),
        (["--seeds", "0"], "seeds must be"),
        (["--seeds", "1000000000", "--dry-run"], "--seeds must be at most 10000"),  # hung
        (["--seed", "4294967294", "--seeds", "3"], "goes past the largest seed, 4294967295"),
        (["--data-dir", "{tmp}/tfds"], "tfds build cifar10"),
    ],
)
def test_bad_input_fails_before_writing(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "table"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert cli.main(["reproduce", "table1-cifar10", "--quiet", "--run-dir", str(run_dir),
                     *flags]) == 2
    err = capsys.readouterr().err
    assert message in (one_line_error(err) if "--cells" in flags else err)
    assert not run_dir.exists()


def test_an_empty_list_of_cells_is_refused():
    with pytest.raises(ValueError, match=r"cells must name one or more of \['sym20-ce'"):
        reproduce.plan_runs(reproduce.TABLES["table1-cifar10"], seeds=1, cells=[])


@pytest.mark.slow
def test_table_end_to_end_with_an_interruption_and_resume(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "table"
    calls = []
    train = runner.train

    def interrupted(config, path, *, resume=False, progress=True, **kwargs):
        calls.append((path.relative_to(run_dir).as_posix(), resume))
        if calls == [("cifar10n-aggre-ce/baseline-seed0", False),
                     ("cifar10n-aggre-ce/resetting-seed0", False)]:
            kwargs["stop_after"] = 10  # the second run stops after step 10, as on a SIGTERM
        return train(config, path, resume=resume, progress=progress, **kwargs)

    monkeypatch.setattr(runner, "train", interrupted)
    args = ["reproduce", "table2-cifar-n", "--seeds", "1", "--cells", CELLS, "--run-dir",
            str(run_dir), *TINY_FLAGS]
    with mock_cifar(tmp_path / "metadata", 40):
        assert cli.main(args) == 128 + 15  # stopped as by a SIGTERM
        err = capsys.readouterr().err
        assert f"resetax reproduce table2-cifar-n --run-dir {run_dir} --resume" in err
        assert not (run_dir / "table.md").exists()
        # Given again, the flags must be the saved ones.
        assert cli.main([*args[:2], "--seeds", "2", "--run-dir", str(run_dir), "--resume"]) == 2
        assert "--seeds 2 (saved 1)" in capsys.readouterr().err

        calls.clear()
        assert cli.main(["reproduce", "table2-cifar-n", "--run-dir", str(run_dir), "--resume",
                         "--quiet"]) == 0
        # The finished run is kept, the stopped one resumed, the others started.
        assert calls == [("cifar10n-aggre-ce/resetting-seed0", True),
                         ("cifar100n-gce/baseline-seed0", False),
                         ("cifar100n-gce/resetting-seed0", False)]
        # The resumed run ends as an uninterrupted one does.
        resumed = json.loads((run_dir / "cifar10n-aggre-ce/resetting-seed0/summary.json")
                             .read_text())
        config = workdir.load_config(run_dir / "cifar10n-aggre-ce/resetting-seed0")
        whole = train(config, tmp_path / "whole", progress=False).summary
    assert without_times(resumed) == without_times(whole)

    markdown = (run_dir / "table.md").read_text()
    assert markdown in capsys.readouterr().out
    table = json.loads((run_dir / "table.json").read_text())
    for cell, kind in (("cifar10n-aggre-ce", "baseline"), ("cifar100n-gce", "resetting")):
        summary = json.loads((run_dir / cell / f"{kind}-seed0" / "summary.json").read_text())
        assert table["cells"][cell][kind]["mean"] == pytest.approx(100 * summary["test_acc"],
                                                                   abs=1e-4)
        assert table["cells"][cell]["n"] == 1
    assert table["cells"]["cifar10n-random1-ce"]["n"] == 0
    lines = markdown.splitlines()
    # The paper's layout: a paper line and an ours line per row, the paper's numbers beside.
    assert "| labels | | CE | GCE |" in lines
    assert "| CIFAR-10N aggre | paper | 86.1 → 90.2 (+4.1) |  |" in lines
    assert lines[lines.index("| CIFAR-10N rand1 | paper | 82.8 → 87.8 (+5.0) |  |") + 1] == (
        "| | ours | not run |  |")
    aggre = table["cells"]["cifar10n-aggre-ce"]
    assert (f"| | ours | {aggre['baseline']['mean']:.2f} → {aggre['resetting']['mean']:.2f} "
            f"({aggre['difference']['mean']:+.2f}) |  |") in lines
    assert (run_dir / "table.png").read_bytes()[1:4] == b"PNG"


def help_text(capsys, *args):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--help"])
    assert exit_.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_reproduce_help_says_what_each_table_trains_with(capsys):
    text = help_text(capsys, "reproduce")
    assert "(default: runs/reproduce-<table>-<time>)" in text
    assert "<preset>" not in text and "setting2-cifar10:" not in text  # no preset of its own
    assert ("[default: 32; each table's own presets: `resetax reproduce TABLE --help` shows "
            "their values]") in text  # batch_size
    text = help_text(capsys, "reproduce", "setting1")
    assert "[default: 32; setting1's preset: 16]" in text  # batch_size
    assert "[default: false; set by each cell of setting1; cannot be given]" in text  # baseline
    text = help_text(capsys, "reproduce", "table1-cifar10")
    assert "[default: 32; table1-cifar10's preset: 256]" in text
    assert "[default: 0.05; set by each cell of table1-cifar10; cannot be given]" in text  # lr
    assert "(default: runs/compare-<preset>-<time>)" in help_text(capsys, "compare")
