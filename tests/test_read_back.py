"""Files resetax reads back, damaged by hand or by a crash: one line naming the file and the fix.

A damaged run file (config.json, plan.json, a finished run's summary.json) ends the command
with exit 1, the code of a run that cannot go on (as a run whose checkpoints are all unreadable):
the user's arguments are fine, the run's own state is not. ``metrics.jsonl`` is the exception:
``--resume`` keeps every complete row before its checkpoint, drops damaged lines and says in
one line which steps' rows are lost, and goes on.
"""

import json
import shutil

import pytest
from runs import TINY, cli_args, one_line_error, tiny

from resetax import _files
from resetax.experiment import cli, workdir


def resume(run_dir, capsys, command="train"):
    """``resetax COMMAND --run-dir RUN_DIR --resume`` in process: (exit status, stderr)."""
    code = cli.main([command, "--quiet", "--run-dir", str(run_dir), "--resume", "--jobs", "1"])
    return code, capsys.readouterr().err


def saved_run(run_dir, **changes):
    """A run directory as a run writes it before its first window: its config.json."""
    workdir.make_run_dir(run_dir)
    workdir.write_config(run_dir, tiny(baseline=False, **changes))
    return run_dir / "config.json"


@pytest.mark.parametrize("content, problem", [
    ('{"seed": 0, "colour": "blue"}', 'has an unknown key, "colour"'),
    ("[1, 2, 3]", "holds a list, not a JSON object"),
    ("", "is empty"),
    ('{"seed": 0, "noise_rate": ', "is not valid JSON (Expecting value at line 1, column 27)"),
    ('{"noise_rate": 7.5}', "holds a bad value (noise_rate must be in [0.0, 1.0], got 7.5)"),
    ('{"batch_size": [32]}', "holds a bad value"),
])
def test_a_damaged_config_json_is_one_line_naming_it(tmp_path, capsys, content, problem):
    config = saved_run(tmp_path / "run")
    config.write_text(content)
    code, err = resume(tmp_path / "run", capsys)
    assert code == 1, err
    error = one_line_error(err)
    assert f"{str(config)!r} {problem}" in error, error
    assert error.endswith("restore it, or start the run again with --overwrite."), error
    assert config.read_text() == content  # nothing rewritten


def test_a_damaged_plan_json_is_one_line_naming_it(tmp_path, capsys):
    run_dir = tmp_path / "compare"
    saved_run(run_dir)
    plan = run_dir / workdir.PLAN_FILE
    for content, problem, command in [
            ("", "is empty", "compare"),
            ('{"command": "compare"}', 'lacks "seeds"', "compare"),
            ('{"command": "compare", "seeds": "3"}',
             'holds "seeds": "3", not an integer or null', "compare"),
            ('{"command": "train", "extra": 1}', 'has an unknown key, "extra"', "train")]:
        plan.write_text(content)
        code, err = resume(run_dir, capsys, command)
        assert code == 1, (content, err)
        assert f"{str(plan)!r} {problem}; restore it" in one_line_error(err), err


def test_a_damaged_table_plan_is_one_line_naming_it(tmp_path, capsys):
    run_dir = tmp_path / "table"
    workdir.make_run_dir(run_dir)
    plan = run_dir / workdir.PLAN_FILE
    plan.write_text('{"command": "reproduce", "table": "setting1", "seeds": 1}')
    code = cli.main(["reproduce", "setting1", "--run-dir", str(run_dir), "--resume"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f'{str(plan)!r} lacks "cells", "overrides"' in one_line_error(err)


@pytest.mark.parametrize("content, problem", [
    ("", "is empty"),
    ('{"best_step": 3}', 'lacks "test_acc", "last_test_acc", "best_val_loss"'),
    ('{"test_acc": null, "last_test_acc": 0.5, "best_val_loss": 1.0, "best_step": 3, '
     '"num_resets": 0, "wall_time_s": 1.0}', 'holds "test_acc": null, not a number'),
])
def test_compare_resume_with_a_damaged_summary_is_one_line_naming_it(tmp_path, capsys,
                                                                     content, problem):
    # A compare whose first run finished (its summary.json read back and reused by --resume).
    run_dir = tmp_path / "compare"
    saved_run(run_dir)
    workdir.write_json(run_dir / workdir.PLAN_FILE, {"command": "compare", "seeds": 2})
    first = run_dir / "baseline-seed0"
    saved_run(first, reset_prob=0.0)
    (first / "summary.json").write_text(content)
    code, err = resume(run_dir, capsys, "compare")
    assert code == 1, err
    error = one_line_error(err)
    assert f"{str(first / 'summary.json')!r} {problem}" in error, error
    assert f"delete {str(first)!r} so that --resume trains that run again from step 0." in error
    assert not (run_dir / "resetting-seed0").exists()  # nothing else trained


def test_read_metrics_names_the_file_and_the_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "reset_steps": []}\n{"val_loss": 1}\n'
                                            '{"step": 20, "reset_steps": []}\n')
    with pytest.raises(_files.DamagedFile, match=r"metrics.jsonl' line 2 lacks \"step\"; "):
        workdir.read_metrics(tmp_path)


def test_a_damaged_tracking_state_names_the_file(tmp_path):
    from resetax.experiment import tracking

    path = tmp_path / "tracking.json"
    for content in ("", "[]", '{"wandb_id": 3}'):
        path.write_text(content)
        with pytest.raises(_files.DamagedFile, match="tracking.json' .*; remove it to start a "
                                                     "new W&B run"):
            tracking._read_state(path)


def finished_run(run_dir, num_steps, checkpoint_every):
    """A finished single run of the tiny config through the CLI; its metrics lines."""
    assert cli.main(cli_args(run_dir, "--no-baseline", "--num-steps", str(num_steps),
                             "--checkpoint-every", str(checkpoint_every))[3:]) == 0
    return (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)


def test_resume_after_a_cut_inside_a_row_before_the_checkpoint_says_which_row_is_lost(
        tmp_path, capsys):
    # Issue 23 item 6: checkpoints at 50 and 100; the one at 100 removed, metrics.jsonl cut at
    # byte 1500 (inside the row of step 40, whose window ends at checkpoint 50), --resume.
    run_dir = tmp_path / "run"
    lines = finished_run(run_dir, 100, 50)
    capsys.readouterr()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["100", "50"]
    ends = [sum(map(len, lines[:i + 1])) for i in range(len(lines))]
    steps = [json.loads(line)["step"] for line in lines]
    cut_row = next(i for i, end in enumerate(ends) if end > 1500)
    assert steps[cut_row] == 40 and ends[cut_row - 1] < 1500  # the cut is inside step 40's row
    shutil.rmtree(run_dir / "checkpoints" / "100")
    # An interrupted run (no summary yet): --resume leaves a finished run as it is.
    (run_dir / "summary.json").unlink()
    with open(run_dir / "metrics.jsonl", "r+") as file:
        file.truncate(1500)
    code, err = resume(run_dir, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    notes = [line for line in err.splitlines() if "metrics.jsonl" in line]
    assert notes == [f"resetax: {str(run_dir / 'metrics.jsonl')!r} lacks the rows of steps 40 "
                     f"(line 5 was damaged or cut short): they are lost, and the run goes on from "
                     f"step 50 without them."], err
    # Every complete row is kept, the resumed run's rows are the uninterrupted run's.
    assert (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True) == [
        line for line, step in zip(lines, steps, strict=True) if step != 40]


@pytest.mark.parametrize("damage, line", [
    (lambda text: text[:-40], 2),  # a row cut short in the middle: "Unterminated string"
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k != "step"}), 2),
    (lambda text: "[]", 2),
    # A value of the wrong type: kept, it failed when curves.png was drawn.
    (lambda text: json.dumps({**json.loads(text), "val_loss": "abc"}), 2),
    (lambda text: json.dumps({**json.loads(text), "reset_steps": ["12"]}), 2),
])
def test_resume_drops_a_damaged_metrics_line_and_says_so(tmp_path, capsys, damage, line):
    run_dir = tmp_path / "run"
    lines = finished_run(run_dir, 40, 20)  # checkpoints at 20 and 40
    capsys.readouterr()
    shutil.rmtree(run_dir / "checkpoints" / "40")
    (run_dir / "summary.json").unlink()  # interrupted: --resume leaves a finished run alone
    damaged = [*lines[:line - 1], damage(lines[line - 1].rstrip("\n")) + "\n", *lines[line:]]
    (run_dir / "metrics.jsonl").write_text("".join(damaged))
    code, err = resume(run_dir, capsys)
    assert code == 0 and "Traceback" not in err, err
    step = TINY["eval_every"] * (line - 1)
    assert f"lacks the rows of steps {step} (line {line} was damaged or cut short)" in err, err
    assert sum("metrics.jsonl" in e for e in err.splitlines()) == 1, err
    assert (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True) == [
        row for i, row in enumerate(lines) if i != line - 1]


def test_a_damaged_config_of_a_run_of_a_group_points_at_that_run(tmp_path, capsys):
    """Not at --overwrite, which would empty the whole group: at deleting that run alone."""
    run_dir = tmp_path / "pair"
    workdir.make_run_dir(run_dir)
    workdir.write_config(run_dir, tiny(baseline=True))
    workdir.write_json(run_dir / workdir.PLAN_FILE, {"command": "train", "seeds": None})
    baseline = run_dir / "baseline"
    config = saved_run(baseline, reset_prob=0.0)
    config.write_text('{"seed": 0, "colour": "blue"}')
    code, err = resume(run_dir, capsys)
    assert code == 1, err
    error = one_line_error(err)
    assert f"{str(config)!r} has an unknown key" in error and "--overwrite" not in error, error
    assert error.endswith(f"restore it, or delete {str(baseline)!r} so that --resume trains "
                          f"that run again from step 0."), error


def test_read_metrics_names_a_row_with_a_value_of_the_wrong_type(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "val_loss": 1.5, "active": true}\n'
                                            '{"step": 10, "val_loss": "abc"}\n')
    with pytest.raises(_files.DamagedFile, match=r"metrics.jsonl' line 2 holds \"val_loss\": "
                                                 r"\"abc\", not a number or null; "):
        workdir.read_metrics(tmp_path)
