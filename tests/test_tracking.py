"""Tests of resetax.experiment.tracking: TensorBoard and W&B logs, read back."""

import json
import math
import re
import struct
import time

import numpy as np
import pytest

from resetax.experiment import tracking

CONFIG = {"reset_prob": 0.03, "model": "mlp", "patience": None, "hidden": [32, 32]}


def _rows(steps, offset=0.0):
    """metrics.jsonl rows; resets at 12 and 27, a rollback at 20, a null validation loss."""
    rows = []
    for step in steps:
        rows.append({
            "step": step, "val_loss": None if step == 40 else 1.0 / (step + 1) + offset,
            "val_acc": 0.5 + offset, "active": step >= 10, "num_resets": 0,
            "reset_steps": [s for s in (12, 27) if step - 10 < s <= step],
            "rollback_steps": [20] if step == 20 else [],
        })
    return rows


def _png(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [0, 1], color="red")
    fig.savefig(path)
    plt.close(fig)
    return path


def test_check_backends_names_the_argument_and_the_fix(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.check_backends(["wandb", "tensorboard", "wandb"]) == ("wandb", "tensorboard")
    with pytest.raises(ValueError, match=r"log_to must be among \['tensorboard', 'wandb'\]"):
        tracking.check_backends(["tensorbord"])
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"needs the wandb package: .*'resetax\[wandb\]'"):
        tracking.check_backends(["wandb"])


def test_wandb_without_a_login_or_offline_mode_is_refused_before_the_run(tmp_path,
                                                                         monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no `wandb login`
    with pytest.raises(ValueError, match=r"log_to=wandb needs a W&B login .* WANDB_MODE=offline"):
        tracking.check_backends(["wandb"])
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password 0123456789\n")
    (tmp_path / ".netrc").chmod(0o600)  # what `wandb login` writes
    assert tracking.check_backends(["wandb"]) == ("wandb",)
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / ".netrc").unlink()
    assert tracking.check_backends(["wandb"]) == ("wandb",)


@pytest.mark.parametrize("variable, value, reason", [
    ("WANDB_MODE", "OFFLINE", "Input should be 'online', 'offline'"),
    ("WANDB_MODE", "bogus", "Input should be 'online', 'offline'"),
    ("WANDB_PROJECT", "a/b c", "Invalid project name 'a/b c'"),
])
def test_a_wandb_variable_that_wandb_refuses_is_one_line_before_the_run(
        tmp_path, monkeypatch, capsys, variable, value, reason):
    # Before: wandb.init refused it once the run had started (config.json written): a 4-line
    # pydantic report, exit 2, or `internal error: UsageError`, exit 1.
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=rf"^log_to=wandb: {variable}='{value}' is refused by "
                                         rf"W&B \({re.escape(reason)}"):
        tracking.check_backends(["wandb"])
    from resetax.experiment import cli

    run_dir = tmp_path / "run"
    assert cli.main(["train", "--no-baseline", "--dataset", "digits", "--model", "mlp",
                     "--log-to", "wandb", "--quiet", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and variable in err, err
    assert not run_dir.exists()


def test_a_tensorboard_directory_that_cannot_be_written_is_a_storage_error(tmp_path):
    # Before: the OSError reached the command as bad input: `resetax: error: [Errno 1] ...`,
    # exit 2, on a run that --resume continues once the directory is writable.
    from resetax.experiment import workdir

    (tmp_path / "tensorboard").write_text("the user's notes")
    with pytest.raises(workdir.StorageError, match=r"cannot write '.*tensorboard.*': not a "
                                                   r"directory; .*continue with --resume"):
        tracking.open_tracker(["tensorboard"], tmp_path, CONFIG)
    assert (tmp_path / "tensorboard").read_text() == "the user's notes"


def test_other_processes_and_no_backend_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for tracker in (tracking.open_tracker(["tensorboard", "wandb"], tmp_path, CONFIG,
                                          process_index=1),
                    tracking.open_tracker([], tmp_path, CONFIG)):
        tracker.log_rows(_rows([0, 10]))
        tracker.finish({"test_acc": 0.5}, [])
        tracker.close()
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- TensorBoard


def _tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {tag: {e.step: e.value for e in accumulator.Scalars(tag)}
               for tag in accumulator.Tags()["scalars"]}
    return accumulator, scalars


def test_tensorboard_logs_every_field_at_its_step_with_events_config_and_figures(tmp_path):
    tracker = tracking.open_tracker(["tensorboard"], tmp_path, CONFIG)
    tracker.log_rows(_rows([0, 10, 20]))
    tracker.log_rows(_rows([30, 40]))
    tracker.finish({"test_acc": 0.61, "best_step": 30}, [_png(tmp_path / "curves.png")])
    tracker.close()

    accumulator, scalars = _tensorboard(tmp_path)
    assert scalars["val_acc"] == {s: 0.5 for s in (0, 10, 20, 30, 40)}
    assert scalars["val_loss"][10] == pytest.approx(1 / 11) and math.isnan(scalars["val_loss"][40])
    assert scalars["active"] == {0: 0.0, 10: 1.0, 20: 1.0, 30: 1.0, 40: 1.0}
    assert scalars["reset"] == {12: 1.0, 27: 1.0} and scalars["rollback"] == {20: 1.0}
    assert scalars["summary/test_acc"] == {40: pytest.approx(0.61)}
    assert accumulator.Tags()["images"] == ["curves"]
    plugins = accumulator.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    start = plugins["_hparams_/session_start_info"].decode("latin-1")
    assert "reset_prob" in start and "hidden" in start


def test_tensorboard_resume_supersedes_the_steps_after_the_checkpoint(tmp_path):
    first = tracking.open_tracker(["tensorboard"], tmp_path, CONFIG)
    first.log_rows(_rows([0, 10, 20, 30, 40]))  # interrupted after step 40, checkpoint at 20
    first.close()
    second = tracking.open_tracker(["tensorboard"], tmp_path, CONFIG, resume_step=20)
    second.log_rows(_rows([20, 30, 40, 50], offset=1.0))  # the run goes on from step 20
    second.close()
    _, scalars = _tensorboard(tmp_path)
    assert scalars["val_acc"] == {0: 0.5, 10: 0.5, 20: 1.5, 30: 1.5, 40: 1.5, 50: 1.5}


# --------------------------------------------------------------------------- W&B (offline)


def _wandb_records(run_dir):
    """The records of every offline W&B run file under ``run_dir/wandb``, in order.

    A ``.wandb`` file is a 7-byte header, then LevelDB-log blocks of 32 KiB holding records
    (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last), each a protobuf
    ``Record``.
    """
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            block_left = 32768 - pos % 32768
            if block_left < 7:
                pos += block_left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            pending += data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append((path.parent.name, record))
                pending = b""
            elif kind == 0:
                break
    return records


def _finished_wandb_records(run_dir, runs=1):
    """The records once every run has its ``exit`` record: W&B's service may still be writing
    the file when ``finish`` returns (seen here: a file of 7 bytes, complete a moment later)."""
    deadline = time.monotonic() + 60  # a guard against a hang, not a speed check
    while True:
        records = _wandb_records(run_dir)
        exits = sum(r.WhichOneof("record_type") == "exit" for _, r in records)
        if exits >= runs or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _history(records):
    rows = []
    for _, record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            rows.append(items)
    return rows


@pytest.fixture
def offline_wandb(monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_wandb_offline_run_logs_rows_events_config_summary_and_figures(tmp_path, offline_wandb):
    tracker = tracking.open_tracker(["wandb"], tmp_path, CONFIG)
    tracker.log_rows(_rows([0, 10, 20]))
    tracker.finish({"test_acc": 0.61}, [_png(tmp_path / "curves.png")])
    tracker.close()

    records = _finished_wandb_records(tmp_path)
    history = _history(records)
    by_step = {row["_step"]: row for row in history}
    assert sorted(by_step) == [0, 10, 12, 20]
    assert by_step[10]["val_acc"] == 0.5 and by_step[10]["active"] == 1.0
    assert by_step[12]["reset"] == 1.0 and by_step[20]["rollback"] == 1.0
    assert by_step[20]["curves/_type"] == "image-file"
    # The config comes with the run record (and any later config record).
    configs = [r.run.config if r.WhichOneof("record_type") == "run" else r.config
               for _, r in records if r.WhichOneof("record_type") in ("run", "config")]
    logged = {item.key: json.loads(item.value_json) for c in configs for item in c.update}
    assert logged["reset_prob"] == 0.03 and logged["hidden"] == [32, 32]
    summary = [r for _, r in records if r.WhichOneof("record_type") == "summary"]
    assert any(item.key == "test_acc" and json.loads(item.value_json) == 0.61
               for r in summary for item in r.summary.update)


def test_wandb_resume_continues_the_same_run_without_logging_a_step_twice(
        tmp_path, offline_wandb):
    first = tracking.open_tracker(["wandb"], tmp_path, CONFIG)
    first.log_rows(_rows([0, 10, 20, 30]))  # interrupted after step 30, checkpoint at 10
    first.close()
    run_id = json.loads((tmp_path / tracking.STATE_FILE).read_text())["wandb_id"]
    second = tracking.open_tracker(["wandb"], tmp_path, CONFIG, resume_step=10)
    second.log_rows(_rows([20, 30, 40]))
    second.close()

    records = _finished_wandb_records(tmp_path, runs=2)
    run_ids = {r.run.run_id for _, r in records if r.WhichOneof("record_type") == "run"}
    assert run_ids == {run_id}
    steps = [row["_step"] for row in _history(records)]
    assert steps == [0, 10, 12, 20, 27, 30, 40]


def test_several_backends_at_once(tmp_path, offline_wandb):
    tracker = tracking.open_tracker(["tensorboard", "wandb"], tmp_path, CONFIG)
    tracker.log_rows(_rows([0, 10]))
    tracker.close()
    _, scalars = _tensorboard(tmp_path)
    assert scalars["val_acc"] == {0: 0.5, 10: 0.5}
    assert [row["_step"] for row in _history(_finished_wandb_records(tmp_path))] == [0, 10]
    assert np.isfinite(json.loads((tmp_path / tracking.STATE_FILE).read_text())[
        "wandb_last_step"])


# --------------------------------------------------------------------------- from the trainer


def test_trainer_logs_every_metrics_field_and_a_resumed_run_continues_the_same_runs(
        tmp_path, offline_wandb):
    from runs import tiny

    from resetax.experiment import runner

    config = tiny(num_steps=120, checkpoint_every=60, reset_prob=0.3, log_to="tensorboard,wandb",
                  baseline=False)
    run_dir = tmp_path / "run"
    assert runner.train(config, run_dir, progress=False, stop_after=60).step == 60
    summary = runner.train(config, run_dir, progress=False, resume=True).summary

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    accumulator, scalars = _tensorboard(run_dir)
    for field in ("val_loss", "val_acc", "train_loss", "num_resets", "active", "distance"):
        assert scalars[field] == pytest.approx({r["step"]: float(r[field]) for r in rows}), field
    resets = sorted(s for r in rows for s in r["reset_steps"])
    assert resets and sorted(scalars["reset"]) == resets
    last = max({r["step"] for r in rows} | set(resets))
    assert scalars["summary/test_acc"] == {last: pytest.approx(summary["test_acc"])}
    assert accumulator.Tags()["images"] == ["curves"]

    records = _finished_wandb_records(run_dir, runs=2)
    assert len({r.run.run_id for _, r in records if r.WhichOneof("record_type") == "run"}) == 1
    steps = [row["_step"] for row in _history(records)]
    assert steps == sorted(set(steps)), "a step logged twice, or out of order"
    assert set(steps) == {r["step"] for r in rows} | set(resets)
