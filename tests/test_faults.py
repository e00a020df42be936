"""Faults injected into real runs: what the user sees, and that nothing written is lost or mixed.

Each case of issue 11 (wrong numbers, lost or mixed runs, tracebacks instead of messages) is
injected here: divergence, two runs in one directory, interrupted compares, corrupted and
unwritable checkpoints, bad run directories, signals, and ``kill -9`` at random moments.
"""

import argparse
import collections
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jax
import numpy as np
import pytest
from runs import (
    ROOT,
    TINY,
    cli_args,
    one_line_error,
    read_lines,
    resume_and_compare,
    start_cli_run,
    summary_without_time,
    tiny,
    wait_for,
    without_times,
)

from resetax.experiment import checkpoint, cli, control, group, runner, workdir


def run_cli(*args):
    """``resetax ...`` in a subprocess; returns (exit status, stderr)."""
    done = subprocess.run([sys.executable, "-m", "resetax.experiment.cli", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stderr


def strict_json_lines(run_dir):
    """The metrics lines, parsed as strict JSON (a bare NaN or Infinity is an error)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return [json.loads(line, parse_constant=refuse) for line in read_lines(run_dir)]


def test_divergence_with_rollback_recovers_and_says_so(tmp_path, capsys):
    # The trainer's default: every non-finite update is rolled back to the checkpoint.
    run_dir = tmp_path / "spiky"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    code = cli.main(["train", "--quiet", "--no-baseline", "--run-dir", str(run_dir), *flags,
                     "--learning-rate", "1e4"])
    assert code == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = strict_json_lines(run_dir)
    assert summary["num_steps"] == TINY["num_steps"] and summary["num_rollbacks"] > 0
    assert sum(len(r["rollback_steps"]) for r in rows) == summary["num_rollbacks"]
    assert sum(len(r["reset_steps"]) for r in rows) == summary["num_resets"]
    assert "diverged_at" not in summary  # rolled back each time: never a whole window of NaN
    assert f"{summary['num_rollbacks']} non-finite updates were rolled back" in (
        capsys.readouterr().err)


def test_divergence_without_rollback_is_logged_as_null_and_ends_the_run(tmp_path, capsys):
    run_dir = tmp_path / "diverged"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    code = cli.main(["train", "--quiet", "--no-baseline", "--run-dir", str(run_dir), *flags,
                     "--learning-rate", "1e4", "--no-reset-on-nonfinite"])
    assert code == 1
    error = one_line_error(capsys.readouterr().err)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"non-finite since step {summary['diverged_at']}" in error
    rows = strict_json_lines(run_dir)
    steps = [r["step"] for r in rows]
    assert steps == list(range(0, steps[-1] + 1, TINY["eval_every"]))  # windows close on NaN
    assert any(r["train_loss"] is None for r in rows)
    for r in rows:  # each window lists its own resets only
        assert all(r["step"] <= s < r["step"] + TINY["eval_every"] for s in r["reset_steps"])
    # It stopped one window after the loss turned non-finite, not at num_steps.
    assert summary["num_steps"] - summary["diverged_at"] <= 2 * TINY["eval_every"]
    assert summary["num_steps"] < TINY["num_steps"]
    # The summary's model is the best one before the divergence, with finite metrics.
    assert np.isfinite(summary["best_val_loss"]) and summary["best_step"] < summary["diverged_at"]
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"]) == 1


@pytest.mark.slow
def test_two_runs_into_one_directory(tmp_path):
    # Started together into a fresh directory: one trains, the other is refused, and the
    # directory holds the winner's config, metrics and summary only.
    target = tmp_path / "run"
    procs = {seed: start_cli_run(target, 600, "--seed", str(seed)) for seed in (1, 2)}
    lock = target / workdir.LOCK_FILE
    # Until the holder has written its pid into the lock, the file is there but empty.
    wait_for(procs[1], lambda: lock.exists() and lock.read_text())
    holder = lock.read_text()
    # While it runs, --resume and --overwrite (which pass the "already exists" check) are
    # refused by the lock, naming its holder; nothing of the run is touched. The holder is
    # paused meanwhile: on a busy machine it could otherwise finish before the checks run.
    holder_pid = int(holder.split()[1])
    os.kill(holder_pid, signal.SIGSTOP)
    try:
        for extra in (["--resume"], ["--overwrite"]):
            code, err = run_cli(*cli_args(target, "--no-baseline", "--num-steps", "600",
                                          "--checkpoint-every", "600", *extra)[3:])
            assert code == 2, err
            assert f"is in use by another run ({holder})" in one_line_error(err)
    finally:
        os.kill(holder_pid, signal.SIGCONT)
    results = {seed: (p.wait(timeout=600), p.stderr.read().decode()) for seed, p in procs.items()}
    assert sorted(code for code, _ in results.values()) == [0, 2], results
    winner = next(seed for seed, (code, _) in results.items() if code == 0)
    loser_error = one_line_error(results[3 - winner][1])
    assert "is in use by another run" in loser_error or "already exists" in loser_error
    config = tiny(num_steps=600, checkpoint_every=600, baseline=False, seed=winner)
    assert workdir.load_config(target) == config
    reference = tmp_path / "reference"
    runner.train(config, reference, progress=False)
    assert read_lines(target) == read_lines(reference)
    assert summary_without_time(target) == summary_without_time(reference)
    assert not (target / workdir.LOCK_FILE).exists()


def test_a_lock_left_behind_is_reported_and_taken_over(tmp_path, capsys):
    target = tmp_path / "run"
    target.mkdir()
    (target / workdir.LOCK_FILE).write_text("pid 4242 on elsewhere")  # unlocked: its run died
    runner.train(tiny(), target, progress=False)  # the tiny config's compiled steps, shared
    assert "a previous run (pid 4242 on elsewhere) ended without releasing" in (
        capsys.readouterr().err)
    assert (target / "summary.json").exists()


def test_the_locks_a_dead_group_left_are_noted_once(tmp_path, capsys):
    """A group's directory and each of its runs hold a lock: a pair killed with kill -9 left 3,
    a 3-seed compare 7, and taking them over printed a line each."""
    group, elsewhere = tmp_path / "group", tmp_path / "elsewhere"
    for run_dir in (group, group / "baseline", group / "resetting", elsewhere):
        run_dir.mkdir()
        (run_dir / workdir.LOCK_FILE).write_text("pid 4343 on elsewhere")
    with workdir.RunLock(group):
        for name in ("baseline", "resetting"):
            with workdir.RunLock(group / name):
                pass
    with workdir.RunLock(elsewhere):  # another directory the same dead run held: noted
        pass
    noted = [line for line in capsys.readouterr().err.splitlines() if "pid 4343" in line]
    assert len(noted) == 2 and str(group) in noted[0] and str(elsewhere) in noted[1], noted


@pytest.mark.slow
def test_compare_interrupted_then_resumed_matches_an_uninterrupted_one(tmp_path):
    # One device per run: the first two runs train side by side, and the signal stops both.
    flags = ("--seeds", "2", "--num-steps", "60", "--checkpoint-every", "30", "--num-devices", "1")
    reference = tmp_path / "reference"
    code, err = run_cli(*cli_args(reference, *flags, command="compare")[3:])
    assert code == 0, err
    target = tmp_path / "interrupted"
    proc = subprocess.Popen(cli_args(target, *flags, command="compare"), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    second = target / "resetting-seed0" / "metrics.jsonl"  # the second of four runs
    wait_for(proc, lambda: second.exists() and len(second.read_text().splitlines()) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err.decode()
    assert f"resetax compare --run-dir {target} --resume" in err.decode()
    code, err = run_cli("compare", "--quiet", "--run-dir", target, "--resume")
    assert code == 0, err
    for name in ("baseline-seed0", "resetting-seed0", "baseline-seed1", "resetting-seed1"):
        assert summary_without_time(target / name) == summary_without_time(reference / name)
    ours, theirs = (json.loads((d / "compare.json").read_text()) for d in (target, reference))
    assert ours == theirs
    code, err = run_cli("train", "--quiet", "--run-dir", target, "--resume")
    assert code == 2 and "resetax compare --run-dir" in one_line_error(err)


def test_resume_of_a_directory_without_checkpoints_says_so(tmp_path, capsys):
    target = tmp_path / "run"
    workdir.make_run_dir(target)
    workdir.write_config(target, tiny(baseline=False))
    code = cli.main(["train", "--quiet", "--run-dir", str(target), "--resume"])
    assert code == 0
    assert f"{str(target)!r} holds no checkpoint yet: starting from step 0" in (
        capsys.readouterr().err)
    assert json.loads((target / "summary.json").read_text())["num_steps"] == TINY["num_steps"]


def corrupt_latest(run_dir, how):
    latest = max(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    step_dir = run_dir / "checkpoints" / str(latest)
    if how == "truncated":  # the arrays' data files cut short
        for path in (step_dir / "state").rglob("*"):
            if path.is_file() and path.stat().st_size > 1000:
                path.write_bytes(path.read_bytes()[:100])
    else:  # empty metadata
        for path in (step_dir / "meta").rglob("*"):
            if path.is_file():
                path.write_text("")
    return latest


@pytest.mark.slow
@pytest.mark.parametrize("how", ["truncated", "empty_metadata"])
def test_a_corrupted_latest_checkpoint_falls_back_to_an_intact_one(long_reference, tmp_path,
                                                                  capsys, how):
    target = tmp_path / "run"
    runner.train(tiny(num_steps=600), target, progress=False, stop_after=180)
    latest = corrupt_latest(target, how)
    assert latest == 180
    resume_and_compare(target, long_reference)
    err = capsys.readouterr().err
    assert f"checkpoints/{latest}' is unreadable" in err and "trying an earlier one" in err
    assert len(err.splitlines()) <= 3  # one line per broken checkpoint, no tensorstore dump


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_line(tmp_path):
    target = tmp_path / "run"
    runner.train(tiny(num_steps=600), target, progress=False, stop_after=120)
    for step_dir in (target / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            shutil.rmtree(step_dir / "state" / "d", ignore_errors=True)
            for path in (step_dir / "state").rglob("*"):
                if path.is_file() and path.name not in ("_CHECKPOINT_METADATA",):
                    path.write_bytes(b"")
    code, err = run_cli("train", "--quiet", "--run-dir", target, "--resume")
    assert code == 1, err
    assert "no intact checkpoint in" in one_line_error(err)


def immutable_supported(path: Path) -> bool:
    probe = path / "probe"
    probe.mkdir()
    ok = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    return ok


@contextlib.contextmanager
def immutable(path: Path):
    """Makes ``path`` unwritable even for root (the immutable attribute)."""
    subprocess.run(["chattr", "+i", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_a_run_directory_that_becomes_unwritable(long_reference, tmp_path):
    if shutil.which("chattr") is None or not immutable_supported(tmp_path):
        pytest.skip("needs chattr +i (ext4-like filesystem) to make a directory unwritable")
    target = tmp_path / "run"
    proc = start_cli_run(target, 60)
    checkpoints = target / "checkpoints"
    wait_for(proc, lambda: (checkpoints / "60").exists())
    with immutable(checkpoints):
        _, err = proc.communicate(timeout=240)  # a hang guard: Orbax used to retry for minutes
    assert proc.returncode == 1, err.decode()
    error = one_line_error(err.decode())
    assert "cannot write the checkpoint of step" in error and "earlier checkpoints are intact" in (
        error)
    resume_and_compare(target, long_reference)  # from the last good checkpoint


@pytest.mark.parametrize("case", ["file", "proc", "read_only", "dangling_link"])
def test_bad_run_directories_are_one_line(tmp_path, capsys, case):
    if case == "file":
        run_dir = tmp_path / "a_file"
        run_dir.write_text("notes")
        message = "is a file, not a directory"
    elif case == "dangling_link":  # before: "cannot create run directory ...: File exists."
        run_dir = tmp_path / "link"
        run_dir.symlink_to("nowhere/deeper")
        message = (f"run directory '{run_dir}' is a symbolic link to 'nowhere/deeper', which does "
                   f"not exist; create that directory, or choose another --run-dir.")
    elif case == "proc":
        run_dir = Path("/proc/run")
        message = "cannot create run directory '/proc/run'"
    else:
        if shutil.which("chattr") is None or not immutable_supported(tmp_path):
            pytest.skip("needs chattr +i to make a directory unwritable")
        parent = tmp_path / "read_only"
        parent.mkdir()
        run_dir = parent / "run"
        message = "cannot create run directory"
    with immutable(run_dir.parent) if case == "read_only" else contextlib.nullcontext():
        code = cli.main(cli_args(run_dir, "--num-steps", "20", "--checkpoint-every", "20")[3:])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in one_line_error(err)
    if case == "file":
        assert run_dir.read_text() == "notes"


@pytest.mark.parametrize("command", ["train", "compare", "reproduce"])
def test_an_empty_run_dir_is_refused(tmp_path, capsys, monkeypatch, command):
    # Before: --run-dir "" trained into the default runs/<preset>-<time>, exit 0.
    monkeypatch.chdir(tmp_path)
    table = ["setting1"] if command == "reproduce" else []
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *table, "--run-dir", "", "--num-steps", "20"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "resetax: error: argument --run-dir: expected a directory, got ''; leave --run-dir out "
        "for the default")
    assert list(tmp_path.iterdir()) == []


def test_distributed_without_a_cluster_names_the_flag(tmp_path):
    # Before: 'resetax: error: coordinator_address should be defined.', JAX's words alone. (A
    # subprocess: jax.distributed starts only before the backend, which this process has.)
    code, err = run_cli("train", "--quiet", "--distributed", "--run-dir", tmp_path / "run",
                        "--dataset", "digits")
    assert code == 2
    assert one_line_error(err) == (
        "resetax: error: --distributed found no cluster to join (coordinator_address should be "
        "defined); run without --distributed, or set JAX_COORDINATOR_ADDRESS, "
        "JAX_NUM_PROCESSES and JAX_PROCESS_ID.")
    assert not (tmp_path / "run").exists()


def test_unknown_flag_is_one_line_then_a_pointer_to_help(tmp_path):
    code, err = run_cli("train", "--run-dir", tmp_path / "run", "--learning-rat", "0.1")
    assert code == 2 and "Traceback" not in err, err
    # What resetax writes: one error line, then a pointer to the help. (Lines before it, if
    # any, are warnings of the environment's packages at import, e.g. a mismatched JAX plugin.)
    ours = err[err.index("resetax: error:"):].rstrip().splitlines()
    assert ours == ["resetax: error: unrecognized arguments: --learning-rat 0.1; did you mean "
                    "--learning-rate?", "run `resetax train --help` for the usage."], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "fast"],
     "argument --preset: invalid choice: 'fast' (choose from 'cifar100n',"),
    (["train", "--num-steps"], "argument --num-steps: expected one argument"),
    (["train", "--num-steps", "abc"], "argument --num-steps: expected an integer, got 'abc'"),
    (["train", "--patience", "abc"],
     "argument --patience: expected an integer or none, got 'abc'"),
    (["compare", "--seed", "1", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["reproduce", "nope"], "argument table: invalid choice: 'nope' (choose from"),
])
def test_argument_errors_are_one_line_then_a_pointer_to_help(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = err.rstrip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"resetax: error: {message}"), err
    assert lines[1] == f"run `resetax {args[0]} --help` for the usage.", err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", "4294967296"])
def test_a_seed_out_of_range_is_one_line_before_writing(tmp_path, capsys, seed):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--seed", seed]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"resetax: error: seed must be an integer in [0, 4294967295], got {seed}.")
    assert not run_dir.exists()  # a retry needs no --overwrite


@contextlib.contextmanager
def _no_compilation_cache_yet(monkeypatch):
    """The process as the command finds it: no cache configured (the suite configures one)."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    configured = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", configured)


def test_a_compilation_cache_variable_that_cannot_be_used_is_one_line(tmp_path, monkeypatch,
                                                                      capsys):
    # Before: a file or /proc/nope was given to JAX, which warned in two lines at each compile;
    # 'OFF' was taken for a directory named OFF, made in the working directory.
    (tmp_path / "afile").write_text("mine")
    run_dir = tmp_path / "run"
    with _no_compilation_cache_yet(monkeypatch):
        for value, reason in ((str(tmp_path / "afile"), "a file"),
                              ("/proc/nope", "No such file or directory")):
            monkeypatch.setenv("RESETAX_COMPILATION_CACHE", value)
            assert cli.main(["train", "--run-dir", str(run_dir)]) == 2
            assert one_line_error(capsys.readouterr().err) == (
                f"resetax: error: RESETAX_COMPILATION_CACHE={value!r} cannot hold the compilation "
                f"cache ({reason}); set it to a directory that can be written, or to off.")
            assert not run_dir.exists()
        monkeypatch.setenv("RESETAX_COMPILATION_CACHE", "OFF")
        cli._use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
        # A default place that cannot be created: one note, and no cache.
        monkeypatch.delenv("RESETAX_COMPILATION_CACHE")
        monkeypatch.setenv("XDG_CACHE_HOME", "/proc/nope")
        cli._use_compilation_cache()
        assert jax.config.jax_compilation_cache_dir is None
    assert capsys.readouterr().err.startswith(
        "resetax: the compilation cache '/proc/nope/resetax/jax/")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_run_directory_named_in_chinese_draws_its_curves_without_warnings(tmp_path, capsys):
    # Before: Matplotlib's 'Glyph 23454 ... missing from font(s) DejaVu Sans' UserWarnings, 4
    # lines on the stderr of a run that ended well.
    import warnings

    run_dir = tmp_path / "résumé-实验"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["train", "--quiet", "--no-baseline", "--dataset", "digits", "--model",
                         "mlp", "--num-steps", "20", "--eval-every", "10", "--checkpoint-every",
                         "10", "--num-devices", "1", "--run-dir", str(run_dir)]) == 0
    assert [str(w.message) for w in caught if "Glyph" in str(w.message)] == []
    assert capsys.readouterr().err == ""
    assert (run_dir / "curves.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("platforms", ["cuda", "gpu"])
def test_jax_platforms_naming_a_missing_backend_is_one_line(tmp_path, platforms):
    if any(d.platform != "cpu" for d in jax.devices()):
        pytest.skip("needs a machine without an accelerator")
    run_dir = tmp_path / "run"
    done = subprocess.run(cli_args(run_dir, "--no-baseline"), cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": platforms})
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [one_line_error(done.stderr)], done.stderr
    assert f"JAX_PLATFORMS={platforms} names a backend that cannot start on this machine" in (
        done.stderr) and "what it has: cpu." in done.stderr, done.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "100000"], "batch_size (100000) must be at most"),
    (["--reset-layers", "Conv_9"], "matches no parameter of mlp; its layers are ['BatchNorm_0'"),
])
def test_checks_that_need_the_data_or_model_come_before_writing(tmp_path, capsys, flags,
                                                                message):
    for mode in ("--baseline", "--no-baseline"):
        run_dir = tmp_path / mode
        code = cli.main(cli_args(run_dir, mode, *flags)[3:])
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in one_line_error(err)
        assert not run_dir.exists()


def test_resume_of_a_pair_refuses_a_changed_config(tmp_path, capsys):
    run_dir = tmp_path / "pair"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), *flags,
                     "--num-steps", "20", "--checkpoint-every", "20"]) == 0
    before = summary_without_time(run_dir / "resetting")
    code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume",
                     "--noise-rate", "0.6"])
    assert code == 2
    assert "noise_rate (saved 0.4, given 0.6)" in one_line_error(capsys.readouterr().err)
    assert summary_without_time(run_dir / "resetting") == before


def test_resume_of_a_finished_run_says_so_and_touches_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli.main(["train", "--quiet", "--no-baseline", "--run-dir", str(run_dir), *flags,
                     "--num-steps", "20", "--checkpoint-every", "20"]) == 0
    capsys.readouterr()

    def files():
        return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns)
                for p in run_dir.rglob("*") if p.is_file()}

    before = files()
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"{run_dir} is a finished run (its summary.json is written): "
                                f"nothing to resume; every file is left as it was."], out
    summary = json.loads((run_dir / "summary.json").read_text())
    # The API reads it back too.
    assert runner.train(tiny(num_steps=20, checkpoint_every=20), run_dir, progress=False,
                        resume=True) == runner.Finished(summary)
    assert files() == before


def stop_message(results, run_dir, command="train"):
    """What the CLI prints for ``results`` stopped in ``run_dir``: (exit status, the line)."""
    args = argparse.Namespace(command_name=command)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli._stopped(results, Path(run_dir), args)
    return code, one_line_error(err.getvalue().replace("resetax: stopped", "resetax: error:"))


def pasted_command(line):
    """The command between backticks in ``line``, as a shell splits it."""
    return shlex.split(line.split("`")[1])


def test_the_resume_command_is_shell_quoted(tmp_path):
    run_dir = tmp_path / "my runs" / "exp (1)"
    code, line = stop_message({"run": runner.Stopped(60, "SIGTERM", 60)}, run_dir)
    assert code == 143
    assert f"at step 60, after a checkpoint in {run_dir};" in line
    assert pasted_command(line) == ["resetax", "train", "--run-dir", str(run_dir), "--resume"]


def test_a_pair_is_reported_at_each_runs_own_checkpoint(tmp_path):
    code, line = stop_message({"baseline": runner.Stopped(2600, "SIGINT", 2600),
                               "resetting": runner.Stopped(2700, "SIGINT", 2700)}, tmp_path)
    assert code == 130
    assert (f"in {tmp_path}: baseline at step 2600, after a checkpoint, resetting at step "
            f"2700, after a checkpoint; run `") in line and line.endswith("` to continue."), line


def test_runs_stopped_before_their_first_checkpoint_say_nothing_was_saved(tmp_path):
    code, line = stop_message({"baseline": runner.Stopped(0, "SIGTERM", None),
                               "resetting": runner.Stopped(0, "SIGTERM", None)}, tmp_path)
    assert code == 143
    assert "after a checkpoint" not in line and line.count("before its first checkpoint") == 2
    assert line.endswith("--resume` to start again from step 0."), line
    # A finished run beside them is kept: the resume continues the group.
    _, line = stop_message({"baseline": runner.Finished({}),
                            "resetting": runner.Stopped(0, "SIGTERM", None)}, tmp_path)
    assert "baseline" not in line and line.endswith("` to continue."), line


def test_a_pair_stopped_while_compiling_has_no_checkpoint(tmp_path, monkeypatch, capsys):
    handled = threading.Event()
    handle = control.StopRequest._handle

    def record(self, signum, frame):
        handle(self, signum, frame)
        handled.set()

    def setup(*args, **kwargs):  # the signal arrives while the pair's steps compile
        signal.raise_signal(signal.SIGTERM)
        assert handled.wait(30)
        return build_setup(*args, **kwargs)

    build_setup = group.build.setup
    monkeypatch.setattr(control.StopRequest, "_handle", record)
    monkeypatch.setattr(group.build, "setup", setup)
    run_dir = tmp_path / "pair"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), *flags, "--num-devices",
                     "1"])
    err = capsys.readouterr().err
    assert code == 143, err
    assert not [path for name in ("baseline", "resetting")
                for path in (run_dir / name / "checkpoints").glob("[0-9]*")]
    assert (f"stopped by SIGTERM in {run_dir}: baseline at step 0, before its first checkpoint "
            f"(nothing saved), resetting at step 0, before its first checkpoint (nothing "
            f"saved); run `") in err and "to start again from step 0." in err, err


@pytest.mark.slow
def test_ctrl_c_saves_at_the_window_end_then_resume_is_identical(long_reference, tmp_path):
    target = tmp_path / "interrupted"
    proc = start_cli_run(target, 600)
    metrics = target / "metrics.jsonl"
    wait_for(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err.decode()
    assert "stopped by SIGINT" in err.decode() and "--resume" in err.decode()
    assert "Traceback" not in err.decode()
    resume_and_compare(target, long_reference)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_identical(long_reference, tmp_path):
    # Killed after a random number of completed windows (seeded), and once in the middle of a
    # checkpoint write (Orbax's temporary directory present); every resume ends identical.
    rng = np.random.default_rng(0)
    moments = [("windows", int(n)) for n in rng.integers(1, 55, size=3)] + [("writing", 0)]
    for i, (kind, n) in enumerate(moments):
        target = tmp_path / f"killed{i}"
        proc = start_cli_run(target, 60)
        metrics, checkpoints = target / "metrics.jsonl", target / "checkpoints"
        if kind == "windows":
            wait_for(proc, lambda m=metrics, n=n: m.exists() and len(
                m.read_text().splitlines()) >= n, seconds=400)
        else:
            wait_for(proc, lambda c=checkpoints: c.exists() and any(
                "tmp" in p.name for p in c.iterdir()), seconds=400)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        resume_and_compare(target, long_reference)
        assert (target / "summary.json").exists(), (kind, n)


@pytest.mark.slow
def test_a_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(long_reference, tmp_path):
    target = tmp_path / "run"
    runner.train(tiny(num_steps=600), target, progress=False, stop_after=120)
    with open(target / "metrics.jsonl", "a") as f:
        f.write('{"step": 120, "val_lo')  # the process died while writing the next window
    resume_and_compare(target, long_reference)


def test_checkpoint_manager_falls_back_to_the_newest_intact_step(tmp_path, capsys):
    State = collections.namedtuple("State", ["step", "w"])
    manager = checkpoint.CheckpointManager(tmp_path, max_to_keep=3)
    for step in (10, 20, 30):
        manager.save(State(np.int32(step), np.full(3, step, np.float32)), {"at": step})
    for broken in ("20", "30"):
        for path in (tmp_path / broken / "meta").rglob("*"):
            if path.is_file():
                path.write_text("")
    restored, info = manager.restore_latest(State(np.int32(0), np.zeros(3, np.float32)))
    assert int(restored.step) == 10 and info == {"at": 10}
    assert restored.w.tolist() == [10.0, 10.0, 10.0]
    err = capsys.readouterr().err
    assert err.index("/30' is unreadable") < err.index("/20' is unreadable")


def test_an_internal_error_is_one_line_with_the_traceback_in_a_file(monkeypatch, tmp_path,
                                                                    capsys):
    """A bug (here a RuntimeError from inside the run) is not a traceback on the screen."""
    from pathlib import Path

    def broken(*args, **kwargs):
        raise RuntimeError("something inside went wrong\nsecond line")

    monkeypatch.setattr(runner, "train", broken)
    code = cli.main(["train", "--quiet", "--baseline", "false", "--run-dir",
                     str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("resetax: internal error: RuntimeError: something inside went "
                               "wrong; the traceback is in ")
    saved = Path(lines[0].split("the traceback is in ")[1].split(" (please report it)")[0])
    try:
        text = saved.read_text()
        assert "Traceback" in text and "second line" in text and "def broken" not in err
    finally:
        saved.unlink()


# Signals at any moment, from the first import to the last write (issue 23, item 2). The
# command runs as users run it (`resetax_cli`, the console script's module); each moment is
# found by polling what the process has loaded or written, not by sleeping.

def signal_env(cache=True):
    """The subprocess's environment; ``cache=False``: no compilation cache, so that the first
    compile takes seconds (the probe's setting)."""
    env = dict(os.environ)
    if not cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["RESETAX_COMPILATION_CACHE"] = "off"
    return env


def start_command(target, *extra, num_steps=600, checkpoint_every=60, command="train",
                  cache=True):
    args = [sys.executable, "-m", "resetax_cli", *cli_args(
        target, "--num-steps", str(num_steps), "--checkpoint-every", str(checkpoint_every),
        *extra, command=command)[3:]]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=signal_env(cache))


def has_loaded(proc, library):
    """Whether ``proc`` has mapped a shared library whose path holds ``library``."""
    try:
        return library in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def metrics_rows(target):
    path = target / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def checkpoint_being_written(target):
    checkpoints = target / "checkpoints"
    return checkpoints.exists() and any("tmp" in p.name for p in checkpoints.iterdir())


MOMENTS = {  # when to send the signal to a 600-step run: a test on the process and its files
    "import": lambda proc, target: has_loaded(proc, "jaxlib"),
    "setup": lambda proc, target: (target / "config.json").exists(),
    "first_compile": lambda proc, target: (target / "metrics.jsonl").exists(),
    "mid_loop": lambda proc, target: metrics_rows(target) >= 3,
    "checkpoint_save": lambda proc, target: checkpoint_being_written(target),
    "finishing": lambda proc, target: metrics_rows(target) >= 60,
}


def signalled(proc, target, moment, signum, seconds=240):
    """Sends ``signum`` to ``proc`` at ``moment``; returns its stderr once it has ended."""
    wait_for(proc, lambda: MOMENTS[moment](proc, target), seconds=seconds)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return err.decode()


def assert_stopped_cleanly(proc, err, signum):
    assert proc.returncode == 128 + signum, (proc.returncode, err)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "Segmentation fault" not in err, err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 3, err
    name = signal.Signals(signum).name
    # A second signal while the first is handled ends the run at once, with its own wording.
    assert re.match(f"resetax: stopped (by|at once by a second) {name}", lines[-1]), err


def continue_after_a_signal(target, err, long_reference):
    """Resumes what the stopped run left, if anything, as its message says, and checks the run
    ends identical to the uninterrupted one."""
    if not target.exists() or not (target / "config.json").exists():
        assert "before anything was written" in err, err
        return
    if (target / "summary.json").exists():  # stopped after the run ended
        assert "after the run ended" in err, err
        assert read_lines(target) == read_lines(long_reference[0])
        assert summary_without_time(target) == long_reference[1]
        return
    assert pasted_command(err.strip().splitlines()[-1]) == [
        "resetax", "train", "--run-dir", str(target), "--resume"], err
    assert not (target / workdir.LOCK_FILE).exists()  # no lock left behind
    resume_and_compare(target, long_reference)


def test_ctrl_c_during_the_first_compile_stops_cleanly_then_resumes(tmp_path):
    """The probe's case: the first compile (no compilation cache) interrupted by Ctrl-C."""
    target, reference = tmp_path / "run", tmp_path / "reference"
    proc = start_command(target, "--no-baseline", num_steps=120, cache=False)
    err = signalled(proc, target, "first_compile", signal.SIGINT)
    assert_stopped_cleanly(proc, err, signal.SIGINT)
    summary = runner.train(tiny(num_steps=120), reference, progress=False).summary
    continue_after_a_signal(target, err, (reference, without_times(summary)))


def test_a_signal_during_the_imports_ends_at_once_writing_nothing(tmp_path):
    target = tmp_path / "run"
    proc = start_command(target, "--no-baseline")
    err = signalled(proc, target, "import", signal.SIGTERM)
    assert_stopped_cleanly(proc, err, signal.SIGTERM)
    assert err.strip() == "resetax: stopped by SIGTERM before anything was written.", err
    assert not target.exists()


# A signal as the process ends: in an exit function (the command's handler: one line, 128 +
# its number) or in the interpreter's teardown (none: Python's default handler killed the
# process there with no line and status -signum). Each sent by the process to itself, so the
# moment is exact; `resetax --help` is the command (it ends with 0).
AT_THE_END = """
import atexit, builtins, os, signal, sys, time
import resetax_cli
def signal_now():
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(1)
class InTeardown:
    def __del__(self):
        signal_now()
if sys.argv[1] == "exit_function":
    atexit.register(signal_now)
else:
    builtins.in_teardown = InTeardown()
sys.argv = ["resetax", "--help"]
resetax_cli.main()
"""


@pytest.mark.parametrize("moment, status, line", [
    ("exit_function", 128 + signal.SIGTERM,
     "resetax: stopped by SIGTERM after the command ended."),
    ("teardown", 0, "")])
def test_a_signal_as_the_process_ends_is_the_commands_to_handle(moment, status, line):
    proc = subprocess.run([sys.executable, "-c", AT_THE_END, moment], cwd=ROOT,
                          capture_output=True, timeout=120)
    assert (proc.returncode, proc.stderr.decode().strip()) == (status, line)
    assert b"usage: resetax" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(MOMENTS))
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_at_any_moment_stops_cleanly_then_resumes(long_reference, tmp_path, moment,
                                                           signum):
    target = tmp_path / "run"
    proc = start_command(target, "--no-baseline", checkpoint_every=10 if (
        moment == "checkpoint_save") else 60, cache=moment not in ("setup", "first_compile"))
    err = signalled(proc, target, moment, signum)
    assert_stopped_cleanly(proc, err, signum)
    continue_after_a_signal(target, err, long_reference)


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_first_compile_stops_at_once(long_reference, tmp_path):
    target = tmp_path / "run"
    proc = start_command(target, "--no-baseline", cache=False)
    wait_for(proc, lambda: MOMENTS["first_compile"](proc, target))
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    err = err.decode()
    assert_stopped_cleanly(proc, err, signal.SIGINT)
    assert "second SIGINT" in err or "at step" in err, err
    continue_after_a_signal(target, err, long_reference)


# A full disk (issue 23, item 3): a small tmpfs, filled to leave a chosen number of bytes.

@contextlib.contextmanager
def mounted_tmpfs(mount, size):
    """A tmpfs of ``size`` at ``mount``; the test is skipped where mounting is not allowed."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs under ``tmp_path``."""
    with mounted_tmpfs(tmp_path / "disk", "8m") as mount:
        yield mount


def leave_free(mount, free_bytes):
    """Fills ``mount`` but for about ``free_bytes`` (whole pages), with a file ``filler``."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as file, contextlib.suppress(OSError):
        while True:
            file.write(b"\0" * 65536)
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - free_bytes // 4096 * 4096))


def assert_one_storage_line(code, err, path):
    assert code == 1, err
    assert "Traceback" not in err and "Event loop is closed" not in err and "absl" not in err, err
    assert len(err.strip().splitlines()) <= 3, err
    line = one_line_error(err)
    assert "cannot write" in line and f"'{path}'" in line, line
    assert "no space left on its disk" in line, line
    assert "free some space, then continue with --resume." in line, line
    return line


def train_in(run_dir, *extra):
    return cli.main(["train", "--quiet", "--no-baseline", "--run-dir", str(run_dir),
                     *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()], *extra])


@pytest.mark.parametrize("where", ["checkpoint", pytest.param("metrics", marks=pytest.mark.slow)])
def test_a_full_disk_is_one_line_naming_what_could_not_be_written(small_disk, capfd, where):
    run_dir = small_disk / "run"
    if where == "metrics":  # room for config.json and the lock, not for a metrics row
        leave_free(small_disk, 2 * 4096)
        path = run_dir / "metrics.jsonl"
    else:  # the second checkpoint does not fit (the probe's case)
        leave_free(small_disk, 2_000_000)
        path = run_dir / "checkpoints"
    code = train_in(run_dir, "--num-steps", "120", "--checkpoint-every", "20")
    assert_one_storage_line(code, capfd.readouterr().err, path)
    # Resumed on the still-full disk: the same line, no Orbax tracebacks.
    code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"])
    assert_one_storage_line(code, capfd.readouterr().err, path)
    assert not list(run_dir.glob("checkpoints/*tmp*")), "a partial checkpoint was left"
    # Space freed: --resume finishes the run, as an uninterrupted one.
    (small_disk / "filler").unlink()
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"]) == 0
    reference = small_disk.parent / "reference"
    runner.train(tiny(num_steps=120, checkpoint_every=20), reference, progress=False)
    assert read_lines(run_dir) == read_lines(reference)
    assert summary_without_time(run_dir) == summary_without_time(reference)


def test_a_dataset_not_prepared_is_the_message_alone(tmp_path, capfd):
    """No absl warning before resetax's message (the probe saw one), and no advice to install
    what ``resetax[train]`` installs."""
    code = cli.main(["train", "--preset", "setting1", "--data-dir", str(tmp_path / "none"),
                     "--run-dir", str(tmp_path / "run")])
    err = capfd.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("resetax: error: TFDS dataset 'cifar10' is not prepared in"), err
    assert len(lines) <= 3 and "WARNING" not in err and "importlib_resources" not in err, err
    assert not (tmp_path / "run").exists()


def disk_usage(path):
    """The bytes the files under ``path`` take on their disk (whole blocks)."""
    return sum(p.stat().st_blocks * 512 for p in Path(path).rglob("*") if p.is_file())


@pytest.mark.slow
def test_a_full_disk_while_saving_the_best_model_is_one_line(small_disk, capfd):
    flags = ("--num-steps", "20", "--checkpoint-every", "20")
    reference = small_disk / "reference"  # how much each part of the run takes on this disk
    assert train_in(reference, *flags) == 0
    best = disk_usage(reference / "best")
    needed = disk_usage(reference) - disk_usage(reference / "curves.png") - (
        disk_usage(reference / "summary.json"))
    shutil.rmtree(reference)
    capfd.readouterr()
    leave_free(small_disk, needed - best // 2)  # the last checkpoint fits, best/ does not
    run_dir = small_disk / "run"
    code = train_in(run_dir, *flags)
    assert_one_storage_line(code, capfd.readouterr().err, run_dir / "best")
    assert not (run_dir / "summary.json").exists()  # not finished: --resume writes it
    (small_disk / "filler").unlink()
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"]) == 0
    assert (run_dir / "best").is_dir() and (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_a_full_disk_in_a_group_is_one_line(tmp_path, capfd):
    """A compare of two seeds, its runs side by side, the second checkpoint of each too big."""
    with mounted_tmpfs(tmp_path / "disk", "32m") as disk:
        full_disk_in_a_group(disk, capfd)


def full_disk_in_a_group(small_disk, capfd):
    run_dir = small_disk / "compare"
    leave_free(small_disk, 3_500_000)
    args = ["compare", "--quiet", "--run-dir", str(run_dir), "--seeds", "2", "--num-devices", "1",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()], "--checkpoint-every",
            "20"]
    code = cli.main(args)
    err = capfd.readouterr().err
    line = assert_one_storage_line(code, err, run_dir / "baseline-seed0" / "checkpoints") if (
        "baseline-seed0" in err) else assert_one_storage_line(
        code, err, run_dir / "resetting-seed0" / "checkpoints")
    assert "the earlier checkpoints are intact" in line
    code = cli.main(["compare", "--quiet", "--run-dir", str(run_dir), "--resume"])
    assert code == 1 and one_line_error(capfd.readouterr().err)
    (small_disk / "filler").unlink()
    code = cli.main(["compare", "--quiet", "--run-dir", str(run_dir), "--resume"])
    assert code == 0, capfd.readouterr().err
    assert (run_dir / "compare.json").exists()
