"""Tests of a group's runs trained side by side: same numbers, one build, stops and failures."""

import contextlib
import io
import re
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runs import one_line_error, read_lines, summary_without_time, tiny

from resetax.experiment import build, cli, control, group, placement, workdir


def test_a_pair_side_by_side_equals_the_pair_one_after_the_other(tmp_path):
    flags = ["--dataset=digits", "--model=mlp", "--noise-rate=0.4", "--num-steps=60",
             "--eval-every=10", "--steps-per-dispatch=10", "--checkpoint-every=30",
             "--reset-prob=0.1", "--patience=none", "--num-devices=1"]
    for jobs in ("1", "2"):
        assert cli.main(["train", "--quiet", "--jobs", jobs, "--run-dir",
                         str(tmp_path / jobs), *flags]) == 0
    for name in ("baseline", "resetting"):
        assert read_lines(tmp_path / "2" / name) == read_lines(tmp_path / "1" / name)
        assert summary_without_time(tmp_path / "2" / name) == summary_without_time(
            tmp_path / "1" / name)
    assert summary_without_time(tmp_path / "2" / "resetting")["num_resets"] > 0


def test_an_experiment_for_another_reset_prob_equals_a_fresh_one():
    baseline = tiny(reset_prob=0.0, baseline=False)
    inputs = build.load_inputs(baseline)
    shared = group.with_reset_prob(build.setup(baseline, inputs),
                                   baseline.replace(reset_prob=0.1))
    resetting = baseline.replace(reset_prob=0.1)
    fresh = build.setup(resetting, build.load_inputs(resetting))
    assert shared.config == fresh.config
    assert jax.tree.structure(shared.init_state) == jax.tree.structure(fresh.init_state)
    for ours, theirs in zip(jax.tree.leaves(shared.init_state),
                            jax.tree.leaves(fresh.init_state), strict=True):
        assert np.asarray(ours).dtype == np.asarray(theirs).dtype
        np.testing.assert_array_equal(ours, theirs)


def test_shared_experiments_build_once_for_runs_asking_at_the_same_time(monkeypatch):
    built, release = [], threading.Event()
    original = build.setup

    def slow_setup(config, inputs):
        built.append(config.reset_prob)
        release.wait(10)  # the second run asks while the first builds
        return original(config, inputs)

    monkeypatch.setattr(build, "setup", slow_setup)
    shared, config = group.SharedExperiments(size=2), tiny(baseline=False)
    inputs = build.load_inputs(config)
    results = {}
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(
        p, shared.get(config.replace(reset_prob=p), inputs))) for p in (0.0, 0.1)]
    for thread in threads:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert len(built) == 1
    assert results[0.0].run_steps is results[0.1].run_steps
    assert [results[p].config.reset_prob for p in (0.0, 0.1)] == [0.0, 0.1]


def test_a_failing_run_stops_the_others_at_their_window_end(tmp_path, monkeypatch):
    original = group.train_or_reuse
    first = tmp_path / "first"
    first_ended = threading.Event()  # if the first run ends early, the wait below ends too

    def train_or_reuse(config, run_dir, **kwargs):
        if run_dir.name == "failing":  # fails once the first run has written a window
            while not ((first / "metrics.jsonl").exists() and read_lines(first)):
                if first_ended.wait(0.05):
                    break
            raise workdir.RunError("the disk is full")
        try:
            return original(config, run_dir, **kwargs)
        finally:
            if run_dir == first:
                first_ended.set()

    monkeypatch.setattr(group, "train_or_reuse", train_or_reuse)
    config = tiny(num_steps=100_000, checkpoint_every=100_000, num_devices=1)
    runs = [group.GroupRun("first", config, first),
            group.GroupRun("failing", config, tmp_path / "failing"),
            group.GroupRun("third", config, tmp_path / "third")]
    with pytest.raises(workdir.RunError, match="the disk is full"):
        group.train_group(runs, jobs=2, progress=False, announce=lambda _: None)
    steps = sorted(int(p.name) for p in (first / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and steps[-1] % config.eval_every == 0 and steps[-1] < config.num_steps
    assert not (first / "summary.json").exists()  # stopped, resumable
    assert not (tmp_path / "third").exists()  # never started


def test_runs_on_several_devices_train_one_at_a_time(tmp_path, monkeypatch, capsys):
    # Two programs with collectives over the same devices in flight at once can hold each
    # other's devices: XLA:CPU then aborts the process after 40 s (found with 8 devices and
    # --jobs 2). Runs on several devices train one at a time, in the calling thread.
    threads = {}

    def train_or_reuse(config, run_dir, **kwargs):
        threads[run_dir.name] = threading.current_thread()
        return {"num_steps": 0}

    monkeypatch.setattr(group, "train_or_reuse", train_or_reuse)
    runs = [group.GroupRun(name, tiny(), tmp_path / name) for name in ("a", "b", "c")]  # 8 devices
    assert len(placement.devices(runs[0].config)) == 8
    group.train_group(runs, jobs="auto", progress=False, announce=lambda _: None)
    assert set(threads.values()) == {threading.main_thread()}
    with pytest.raises(ValueError, match=r"jobs must be 1 when each run trains on several "
                                         r"devices \(8\), got 2"):
        group.train_group(runs, jobs=2, progress=False, announce=lambda _: None)
    # One device each: side by side, in the pool's threads.
    threads.clear()
    runs = [group.GroupRun(name, tiny(num_devices=1), tmp_path / name) for name in ("a", "b", "c")]
    group.train_group(runs, jobs=2, progress=False, announce=lambda _: None)
    assert sorted(threads) == ["a", "b", "c"] and threading.main_thread() not in set(
        threads.values())
    # The CLI says so in one line, before anything is written.
    code = cli.main(["train", "--quiet", "--jobs", "2", "--run-dir", str(tmp_path / "pair"),
                     "--dataset=digits", "--model=mlp"])
    assert code == 2
    assert "jobs must be 1 when each run trains on several devices (8), got 2" in (
        one_line_error(capsys.readouterr().err))
    assert not (tmp_path / "pair").exists()


def test_compile_time_counts_the_timing_thread_only():
    other = threading.Thread(target=lambda: jax.jit(lambda x: x * 7.0 - 2.0)(jnp.ones(5)))
    with control.CompileTimer() as timer:
        other.start()
        other.join()
    assert timer.seconds == 0.0
    with control.CompileTimer() as timer:
        jax.jit(lambda x: x * 5.0 - 3.0)(jnp.ones(5))
    assert timer.seconds > 0.0


@pytest.mark.parametrize("jobs", ["0", "-1", "two"])
def test_bad_jobs_is_one_line(tmp_path, capsys, jobs):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--jobs", jobs, "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    shown = jobs if jobs.lstrip("-").isdigit() else repr(jobs)
    assert f"argument --jobs: jobs must be 'auto' or a positive integer, got {shown}." in err
    assert not (tmp_path / "run").exists()


def terminal_lines(text):
    """The lines a terminal shows after ``text``: the cursor moves of tqdm (carriage return,
    newline, ``ESC [ A`` one line up) applied, each character written over what was there."""
    screen, row, col = [[]], 0, 0
    for token in re.findall(r"\x1b\[A|\x1b|.|\n", text, re.DOTALL):
        if token == "\x1b[A":
            row = max(row - 1, 0)
        elif token == "\x1b":
            raise AssertionError(f"an escape sequence the test does not render: {text!r}")
        elif token == "\r":
            col = 0
        elif token == "\n":  # a terminal's newline (the tty adds the carriage return)
            row, col = row + 1, 0
            screen += [[]] * (row + 1 - len(screen))
            screen[row] = list(screen[row])
        else:
            line = screen[row]
            line.extend(" " * (col + 1 - len(line)))
            line[col] = token
            col += 1
    return ["".join(line).rstrip() for line in screen]


def test_a_pairs_bars_leave_the_cursor_on_a_fresh_line_for_the_table():
    # The first bar ends while the second still redraws below it: the table printed next went
    # over a stale copy of the second bar ("baseline   resetting0:09<00:00, 560.45step/s, ...").
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        first = control.ProgressBar(40, 0, control.Progress("baseline", 0))
        second = control.ProgressBar(40, 0, control.Progress("resetting", 1))
        window = [{"train_loss": 1.5, "val_loss": 1.25, "num_resets": 3}]
        first.show([{}] * 40, window)
        second.show([{}] * 30, window)
        first.__exit__(None, None, None)
        second.show([{}] * 10, window)
        second._bar.refresh()  # a redraw after the first ended (tqdm throttles its own)
        second.__exit__(None, None, None)
        sys.stderr.write("                    baseline   resetting\n")
    lines = [line for line in terminal_lines(stream.getvalue()) if line]
    assert lines[-1] == "                    baseline   resetting", lines
    assert [line.split(":")[0] for line in lines[:-1]] == ["baseline", "resetting"], lines
    assert all("40/40" in line and "loss=1.500" in line for line in lines[:-1]), lines


def test_resume_refuses_a_run_of_another_config_in_the_groups_directory(tmp_path, capsys):
    # A `resetax train` into a pair's not-yet-started run (or a run moved in) was reused by the
    # pair's --resume as its own run: the table mixed in a run of another config, exit 0.
    flags = ["--quiet", "--dataset=digits", "--model=mlp", "--num-steps=20", "--eval-every=10",
             "--checkpoint-every=10", "--num-devices=1"]
    group_dir = tmp_path / "pair"
    assert cli.main(["train", "--run-dir", str(group_dir), "--baseline", *flags]) == 0
    resetting = group_dir / "resetting"
    before = {path: path.read_bytes() for path in group_dir.rglob("*") if path.is_file()}
    saved = workdir.load_config(resetting)
    workdir.write_config(resetting, saved.replace(reset_prob=0.5))  # another run's config
    capsys.readouterr()
    assert cli.main(["train", "--run-dir", str(group_dir), "--resume", "--quiet"]) == 1
    line = one_line_error(capsys.readouterr().err)
    assert f"'{resetting}' holds a run of another config than its group's: reset_prob " \
           f"(saved 0.5, the group's {saved.reset_prob!r})" in line
    assert "move it out of" in line
    assert {path: path.read_bytes() for path in group_dir.rglob("*") if path.is_file()
            and path.name != "config.json"} == {
        path: data for path, data in before.items() if path.name != "config.json"}
