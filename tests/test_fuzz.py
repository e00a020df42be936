"""Property-based tests: any value of any flag or Config field ends in one clear line, or runs.

Fixed seeds (hypothesis' derandomized mode) and a bounded number of examples keep the default
suite deterministic and fast; ``RESETAX_FUZZ_EXAMPLES`` raises the budget (the slow suite's
test does).
"""

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from runs import TINY, tiny, wait_for, without_times
from test_faults import MOMENTS, has_loaded, metrics_rows, start_command

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resetax.experiment import cli, runner, workdir  # noqa: E402
from resetax.experiment.config import Config, get_config  # noqa: E402

FIELDS = [f.name for f in dataclasses.fields(Config)]
NASTY_TEXT = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-1", "0", "1.5",
              "99999999999999999999", "-99999999999999999999", "none", "None", "true", "abc",
              "ümlaut", "日本", "\x00", "1,2", "--", "0x10", "1_000", " 3 ", "(", "[a-", ".*"]
NASTY_VALUES = [None, True, False, 0, -1, 2**63, -(2**63) - 1, 2**200, 1.5, -0.0,
                float("nan"), float("inf"), -float("inf"), 1e-320, "", "x", "日本", [], [1], {},
                (1, 2), b"bytes", object()]

BUDGET = int(os.environ.get("RESETAX_FUZZ_EXAMPLES", "60"))


def _settings(examples=BUDGET):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


CONFIG_VALUES = dict(field=st.sampled_from(FIELDS),
                     value=st.one_of(st.sampled_from(NASTY_VALUES), st.integers(), st.floats(),
                                     st.text(max_size=12)))
FLAG_VALUES = dict(field=st.sampled_from(FIELDS),
                   text=st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=10),
                                  st.integers().map(str), st.floats().map(repr)))


def config_value_is_valid_or_a_one_line_value_error(field, value):
    """The Python API: a Config is made or refused with ValueError/TypeError naming the field."""
    try:
        get_config("quick", **{field: value})
    except (ValueError, TypeError) as err:
        message = str(err)
        assert "\n" not in message, message
        assert field in message, (field, value, message)


@pytest.fixture
def no_training(monkeypatch):
    """The CLI up to the run: runner.train records the config it would train instead."""
    seen = []

    def record(config, *args, **kwargs):
        seen.append(config)
        return runner.Finished(summary={})

    monkeypatch.setattr(runner, "train", record)
    return seen


def _flag(field):
    return "--" + field.replace("_", "-")


def flag_value_ends_in_one_line_or_reaches_the_run(field, text, no_training,
                                                   tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fuzz") / "run"
    stderr = io.StringIO()
    before = len(no_training)
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(["train", "--quiet", "--baseline", "false", "--run-dir",
                               str(run_dir), _flag(field), text])
        except SystemExit as exit_:  # argparse's own exits
            status = exit_.code
    err = stderr.getvalue()
    assert "Traceback" not in err, err
    if status == 0:
        assert len(no_training) == before + 1  # the run was reached, with a valid Config
        return
    assert status == 2, (field, text, status, err)
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("resetax: error: "), err
    assert not run_dir.exists(), "bad input wrote a run directory"


test_any_config_value_is_valid_or_a_one_line_value_error = _settings()(
    given(**CONFIG_VALUES)(config_value_is_valid_or_a_one_line_value_error))
test_any_flag_value_ends_in_one_line_or_reaches_the_run = _settings()(
    given(**FLAG_VALUES)(flag_value_ends_in_one_line_or_reaches_the_run))


@pytest.mark.slow
def test_a_larger_budget_of_values(no_training, tmp_path_factory):
    """The slow suite's budget, ten times the default suite's, of the two properties above."""
    _settings(10 * BUDGET)(given(**CONFIG_VALUES)(
        config_value_is_valid_or_a_one_line_value_error))()
    _settings(10 * BUDGET)(given(**FLAG_VALUES)(
        lambda field, text: flag_value_ends_in_one_line_or_reaches_the_run(
            field, text, no_training, tmp_path_factory)))()


# Random damage to each run file before --resume (issue 23, item 4a). One tiny run is trained
# per module, interrupted at its checkpoint (and one uninterrupted, the reference; and a finished
# pair); each example damages a copy.

DAMAGE_BUDGET = int(os.environ.get("RESETAX_FUZZ_DAMAGE_EXAMPLES", "8"))
CONFIG = dict(num_steps=40, checkpoint_every=20, baseline=False)
JSON_VALUES = [None, True, 0, -1, 2**70, 1.5, "", "x", [], [1], {}, {"a": 1}]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """An interrupted run (config.json, metrics.jsonl, checkpoints/20), the uninterrupted run
    (its reference, also the finished run whose summary.json is damaged), a finished pair."""
    root = tmp_path_factory.mktemp("saved")
    interrupted, reference = root / "interrupted", root / "reference"
    assert isinstance(runner.train(tiny(**CONFIG), interrupted, progress=False, stop_after=20),
                      runner.Stopped)
    runner.train(tiny(**CONFIG), reference, progress=False)
    pair = root / "pair"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["train", "--quiet", "--baseline", "--num-devices", "1", "--jobs", "1",
                         "--run-dir", str(pair), *flags, "--num-steps", "20",
                         "--checkpoint-every", "20"]) == 0
    return {"interrupted": interrupted, "reference": reference, "finished": reference,
            "pair": pair}


# (which saved run, which file of it); "checkpoint" is any file of its checkpoint.
TARGETS = [("interrupted", "config.json"), ("interrupted", "metrics.jsonl"),
           ("interrupted", "checkpoint"), ("finished", "summary.json"), ("pair", "plan.json"),
           ("pair", "baseline/summary.json"), ("pair", "resetting/config.json")]


def damage(path, data):
    """Damages ``path`` as ``data`` draws: truncated anywhere, a byte flipped, deleted, replaced
    by another JSON type, or a key added or set to a value of any type. Returns the byte range
    of the original the damage touched (for metrics.jsonl's rows)."""
    original = path.read_bytes()
    try:
        json.loads(original)
        kinds = ["truncate", "flip", "delete", "json", "key"]
    except ValueError:  # binary, or JSON lines: "key" damages one line
        kinds = ["truncate", "flip", "delete"] + (["json", "key"] if path.suffix == ".jsonl"
                                                  else [])
    kind = data.draw(st.sampled_from(kinds))
    if kind == "truncate":
        at = data.draw(st.integers(0, max(0, len(original) - 1)))
        path.write_bytes(original[:at])
        return at, len(original)
    if kind == "flip" and original:
        at = data.draw(st.integers(0, len(original) - 1))
        flipped = bytes([original[at] ^ data.draw(st.integers(1, 255))])
        path.write_bytes(original[:at] + flipped + original[at + 1:])
        return at, at + 1
    if kind == "delete" or not original:
        path.unlink()
        return 0, len(original)
    lines = original.decode().splitlines(keepends=True) if path.suffix == ".jsonl" else [
        original.decode()]
    index = data.draw(st.integers(0, len(lines) - 1))
    start = sum(map(len, lines[:index]))
    if kind == "json":
        new = json.dumps(data.draw(st.sampled_from(JSON_VALUES)))
    else:
        obj = json.loads(lines[index])
        obj = obj if isinstance(obj, dict) else {}
        key = data.draw(st.one_of(st.sampled_from(sorted(obj) or ["step"]), st.text(max_size=6)))
        obj[key] = data.draw(st.one_of(st.sampled_from(JSON_VALUES), st.floats(),
                                       st.integers()))
        new = json.dumps(obj)
    lines[index] = new + ("\n" if path.suffix == ".jsonl" else "")
    path.write_text("".join(lines))
    return start, start + len(lines[index])


def resume_damaged_run(saved_runs, tmp_path_factory, target, data):
    which, name = target
    copy = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(saved_runs[which], copy)
    if name == "checkpoint":
        files = sorted(p for p in (copy / "checkpoints").rglob("*") if p.is_file())
        path = files[data.draw(st.integers(0, len(files) - 1))]
    else:
        path = copy / name
    before = path.read_text().splitlines(keepends=True) if name == "metrics.jsonl" else None
    touched = damage(path, data)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        status = cli.main(["train", "--quiet", "--run-dir", str(copy), "--resume", "--jobs",
                           "1"])
    err = stderr.getvalue()
    assert status in (0, 1, 2), (target, status, err)
    assert "Traceback" not in err and "internal error" not in err, (target, err)
    assert len(err.strip().splitlines()) <= 3, (target, err)
    assert [p.name for p in copy.parent.iterdir()] == ["run"]  # nothing written beside it
    if status == 0 and which == "interrupted":
        same_as_reference(copy, saved_runs["reference"], name, before, touched)


def same_as_reference(copy, reference, name, before, touched):
    """The resumed run equals the uninterrupted one where the damage left it the same config:
    its summary, and its metrics rows but those of the lines the damage touched."""
    if workdir.load_config(copy) != tiny(**CONFIG).replace(baseline=False):
        return  # a config changed into another valid one: another run
    summary = json.loads((copy / "summary.json").read_text())
    assert without_times(summary) == without_times(
        json.loads((reference / "summary.json").read_text())), name
    ours, theirs = (Path(d / "metrics.jsonl").read_text().splitlines() for d in (copy, reference))
    if name != "metrics.jsonl":
        assert ours == theirs, name
        return
    lost, position = set(), 0
    for line in before:  # the lines the damage touched are lost or changed
        if position < touched[1] and position + len(line) > touched[0]:
            lost.add(line.rstrip("\n"))
        position += len(line)
    assert [line for line in theirs if line not in lost] == [
        line for line in ours if line in theirs and line not in lost]
    assert all(line in ours for line in theirs if json.loads(line)["step"] >= 20)


test_random_damage_to_a_run_file_before_resume = _settings(DAMAGE_BUDGET)(given(
    target=st.sampled_from(TARGETS), data=st.data())(resume_damaged_run))


@pytest.mark.slow
def test_random_damage_with_a_larger_budget(saved_runs, tmp_path_factory):
    _settings(20 * DAMAGE_BUDGET)(given(target=st.sampled_from(TARGETS), data=st.data())(
        lambda target, data: resume_damaged_run(saved_runs, tmp_path_factory, target, data)))()


# Signals at random moments of a run and of a group (issue 23, item 4b): `resetax train` in a
# subprocess (a single run, or a baseline-plus-resetting pair side by side), SIGINT or SIGTERM
# sent a random delay after a moment found by polling; then --resume, as the message says.

SIGNAL_BUDGET = int(os.environ.get("RESETAX_FUZZ_SIGNAL_EXAMPLES", "1"))
SIGNAL_STEPS = 100
SIGNAL_MOMENTS = {**MOMENTS, "import": lambda proc, target: has_loaded(proc, "jaxlib"),
                  "finishing": lambda proc, target: metrics_rows(target) >= SIGNAL_STEPS // 10}


def pair_flags(group):
    return ["--baseline", "--num-devices", "1"] if group else ["--no-baseline"]


@pytest.fixture(scope="module")
def signal_references(tmp_path_factory):
    """The uninterrupted single run and pair that the signalled ones must end equal to."""
    root = tmp_path_factory.mktemp("references")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    for group in (False, True):
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli.main(["train", "--quiet", "--run-dir", str(root / str(group)), *flags,
                             *pair_flags(group), "--num-steps", str(SIGNAL_STEPS)]) == 0
    return root


def results(run_dir, group):
    """A run's (or each run of a pair's) metrics lines and summary without its timings."""
    runs = [run_dir / "baseline", run_dir / "resetting"] if group else [run_dir]
    return [((r / "metrics.jsonl").read_text(),
             without_times(json.loads((r / "summary.json").read_text()))) for r in runs]


def signal_at_a_random_moment(signal_references, tmp_path_factory, group, moment, signum,
                              delay):
    target = tmp_path_factory.mktemp("signalled") / "run"
    proc = start_command(target, *pair_flags(group), num_steps=SIGNAL_STEPS,
                         checkpoint_every=20 if moment == "checkpoint_save" else 60,
                         cache=moment not in ("setup", "first_compile"))
    watched = target / "baseline" if group and moment not in ("import", "setup") else target
    wait_for(proc, lambda: SIGNAL_MOMENTS[moment](proc, watched))
    time.sleep(delay)
    proc.send_signal(signum)
    err = proc.communicate(timeout=300)[1].decode()
    assert proc.returncode in (0, 128 + signum), (moment, proc.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) <= 3, err
    assert [p.name for p in target.parent.iterdir()] in ([], ["run"])
    if proc.returncode != 0 and not (target / "config.json").exists():
        assert "before anything was written" in err, err
        return
    if proc.returncode != 0:
        assert any(words in err for words in (
            "--resume", "after the run ended", "after the command ended")), err
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            status = cli.main(["train", "--quiet", "--run-dir", str(target), "--resume"])
        assert status == 0, stderr.getvalue()
    assert results(target, group) == results(signal_references / str(group), group)


SIGNALS = dict(group=st.booleans(), moment=st.sampled_from(list(SIGNAL_MOMENTS)),
               signum=st.sampled_from([signal.SIGINT, signal.SIGTERM]),
               delay=st.floats(0.0, 1.0))

test_a_signal_at_a_random_moment_of_a_run_or_a_group = _settings(SIGNAL_BUDGET)(given(
    **SIGNALS)(signal_at_a_random_moment))


@pytest.mark.slow
def test_signals_at_random_moments_with_a_larger_budget(signal_references, tmp_path_factory):
    _settings(16 * SIGNAL_BUDGET)(given(**SIGNALS)(
        lambda **drawn: signal_at_a_random_moment(signal_references, tmp_path_factory,
                                                  **drawn)))()
