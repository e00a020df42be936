"""Tests of the run directory's protections: --overwrite touches only what resetax wrote."""

import contextlib
import io

import pytest

from resetax.experiment import cli, workdir


def _a_finished_run(path):
    """The files and folders a finished run leaves (contents do not matter here)."""
    path.mkdir(parents=True)
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png", "tracking.json"):
        (path / name).write_text("{}")
    for folder in ("best", "checkpoints/100", "tensorboard", "wandb/offline-run-1"):
        (path / folder).mkdir(parents=True)
        (path / folder / "data").write_text("x")
    return path


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.mark.parametrize("layout", ["single", "pair", "table", "crash leftovers", "empty"])
def test_overwrite_accepts_what_resetax_wrote(tmp_path, layout):
    run_dir = tmp_path / "run"
    if layout == "single":
        _a_finished_run(run_dir)
    elif layout == "pair":
        _a_finished_run(run_dir / "baseline")
        _a_finished_run(run_dir / "resetting")
        (run_dir / "plan.json").write_text("{}")
    elif layout == "table":  # reproduce: cells holding seeds' runs, and the table's reports
        _a_finished_run(run_dir / "sym20-ce" / "baseline-seed0")
        for name in ("plan.json", "table.md", "table.json", "table.png"):
            (run_dir / name).write_text("{}")
    elif layout == "crash leftovers":  # a crash between a temporary file and its rename
        _a_finished_run(run_dir)
        (run_dir / "summary.tmp").write_text("{")
        (run_dir / ".lock").write_text("pid 1 on elsewhere")  # released: nobody holds it
        partial = run_dir / "best.orbax-checkpoint-tmp" / "d"  # stopped while saving best/
        partial.mkdir(parents=True)
        (partial / "0123abcd").write_bytes(b"\0")
        (partial.parent / "_CHECKPOINT_METADATA").write_text("{}")
    else:
        run_dir.mkdir()
    assert workdir.check_run_dir(run_dir, resume=False, overwrite=True) == run_dir


@pytest.mark.parametrize("foreign", ["notes.txt", "src/main.py", "thesis/chapter1.tex",
                                     "baseline/notes.md", "checkpoints.txt", "link"])
def test_overwrite_refuses_a_directory_holding_anything_else(tmp_path, foreign):
    run_dir = _a_finished_run(tmp_path / "run")
    (run_dir / "baseline").mkdir()
    path = run_dir / foreign
    path.parent.mkdir(parents=True, exist_ok=True)
    if foreign == "link":  # a link resetax never makes: what it points to is not its to judge
        path.symlink_to(tmp_path)
    else:
        path.write_text("the user's")
    with pytest.raises(FileExistsError) as err:
        workdir.check_run_dir(run_dir, resume=False, overwrite=True)
    message = str(err.value)
    assert len(message.splitlines()) == 1
    assert f"holds '{foreign}', which resetax did not write" in message


def test_overwrite_refuses_the_parent_of_a_running_run(tmp_path):
    nest = tmp_path / "nest"
    _a_finished_run(nest / "inner")
    with workdir.RunLock(nest / "inner"):
        with pytest.raises(FileExistsError, match=r"a run is in progress in '.*inner' \(pid \d+"):
            workdir.check_run_dir(nest, resume=False, overwrite=True)
    # Released: the same directory may now be overwritten.
    workdir.check_run_dir(nest, resume=False, overwrite=True)


def test_cli_overwrite_of_a_users_folder_is_one_line_and_removes_nothing(tmp_path,
                                                                          monkeypatch):
    """The probe's reproduction: `--run-dir . --overwrite` in a folder of the user's."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.py").write_text("print('mine')\n")
    (tmp_path / "notes.txt").write_text("notes\n")
    before = _tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = cli.main(["train", "--baseline", "false", "--dataset", "digits", "--model", "mlp",
                           "--num-steps", "20", "--eval-every", "10", "--quiet", "--run-dir", ".",
                           "--overwrite"])
    assert status == 2
    lines = stderr.getvalue().strip().splitlines()
    assert lines == ["resetax: error: --overwrite refuses to empty '.': it holds 'notes.txt', "
                     "which resetax did not write; choose another --run-dir, or remove what is "
                     "yours first."]
    assert _tree(tmp_path) == before
    assert (tmp_path / "notes.txt").read_text() == "notes\n"
