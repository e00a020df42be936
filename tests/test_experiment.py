"""Tests of the trainer: configs, runner, resume, parallel modes, partial resets, CLI errors."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from runs import (
    TINY,
    final_state_leaves,
    one_line_error,
    read_lines,
    resume_and_compare,
    start_cli_run,
    summary_without_time,
    tiny,
    wait_for,
)

from resetax.experiment import build, checkpoint, cli, optimization, runner, steps, train_state
from resetax.experiment import placement as placement_lib
from resetax.experiment.config import PRESETS, Config, get_config
from resetax.experiment.data_input import ExperimentData, load_data, preprocess


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    summary = runner.train(tiny(), run_dir, progress=False).summary
    return run_dir, summary


def test_presets_validate():
    for name, overrides in PRESETS.items():
        config = get_config(name)
        assert {k: getattr(config, k) for k in overrides} == overrides, name
        # Windows line up with checkpoints and dispatches, and patience spans whole windows.
        assert config.checkpoint_every % config.eval_every == 0, name
        assert config.patience is None or config.patience % config.eval_every == 0, name
        assert config.patience is None or config.patience < config.num_steps, name
        assert 0 < config.reset_prob <= 0.1 and config.batch_size <= 256, name
    assert get_config("quick").baseline and not get_config("setting2-cifar10").baseline
    assert not get_config("setting2-cifar10").eval_test and get_config("setting1").eval_test


def test_end_to_end_files_metrics_and_best_model(reference_run):
    run_dir, summary = reference_run
    for name in ("config.json", "metrics.jsonl", "summary.json", "curves.png"):
        assert (run_dir / name).exists(), name
    rows = [json.loads(line) for line in read_lines(run_dir)]
    assert [r["step"] for r in rows] == list(range(0, 120, 10))
    for r in rows:
        assert 0 <= r["val_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and r["val_loss"] > 0
        assert np.isfinite(r["train_loss"]) and r["distance"] >= 0
    assert summary["num_resets"] > 0
    assert summary["num_resets"] == sum(len(r["reset_steps"]) for r in rows)
    assert rows[-1]["active"]
    # Learning happened: the best model is far above chance (10 classes) on clean test labels.
    assert summary["test_acc"] > 0.5
    # The reported accuracy is that of the saved best checkpoint, re-evaluated from disk.
    config = tiny()
    inputs = build.load_inputs(config)
    data, model = inputs.data, inputs.model
    variables = checkpoint.load_best(run_dir / "best")
    logits = model.apply(variables, preprocess(data.test.inputs), train=False)
    acc = np.mean(np.argmax(logits, -1) == data.test.labels)
    assert float(acc) == pytest.approx(summary["test_acc"], abs=1e-6)
    best_row = next(r for r in rows if r["step"] == summary["best_step"])
    assert best_row["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)


def test_same_seed_twice_identical(reference_run, tmp_path):
    run_dir, _ = reference_run
    runner.train(tiny(), tmp_path / "again", progress=False)
    assert read_lines(tmp_path / "again") == read_lines(run_dir)
    assert summary_without_time(tmp_path / "again") == summary_without_time(run_dir)


def test_stop_and_resume_is_identical(reference_run, tmp_path):
    run_dir, _ = reference_run
    out = runner.train(tiny(), tmp_path / "run", progress=False, stop_after=60)
    assert out == runner.Stopped(60, None, 60)
    assert not (tmp_path / "run" / "summary.json").exists()
    runner.train(tiny(), tmp_path / "run", progress=False, resume=True)
    assert read_lines(tmp_path / "run") == read_lines(run_dir)
    assert summary_without_time(tmp_path / "run") == summary_without_time(run_dir)
    template = build.setup(tiny()).init_state
    for a, b in zip(final_state_leaves(tmp_path / "run", template),
                    final_state_leaves(run_dir, template), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_then_resume_is_identical(long_reference, tmp_path):
    target = tmp_path / "killed"
    proc = start_cli_run(target, checkpoint_every=60)
    checkpoints = target / "checkpoints"
    wait_for(proc, lambda: checkpoints.exists() and len(
        [p for p in checkpoints.iterdir() if p.name.isdigit()]) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resume_and_compare(target, long_reference)


@pytest.mark.slow
def test_sigterm_saves_at_the_window_end_then_resume_is_identical(long_reference, tmp_path):
    # No periodic checkpoint before the end: what resumes is the one SIGTERM wrote.
    target = tmp_path / "terminated"
    proc = start_cli_run(target, checkpoint_every=600)
    metrics = target / "metrics.jsonl"
    wait_for(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "stopped by SIGTERM" in err.decode() and "--resume" in err.decode()
    saved = [int(p.name) for p in (target / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 0 < saved[0] < 600 and saved[0] % TINY["eval_every"] == 0
    lines = read_lines(target)
    assert json.loads(lines[-1])["step"] == saved[0] - TINY["eval_every"]
    assert not (target / "summary.json").exists()
    resume_and_compare(target, long_reference)


def test_pmap_agrees_with_sharded(reference_run, tmp_path):
    run_dir, summary = reference_run
    assert jax.device_count() == 8
    out = runner.train(tiny(parallel="pmap"), tmp_path / "pmap", progress=False).summary
    _assert_close_runs(tmp_path / "pmap", run_dir)
    assert out["num_resets"] == summary["num_resets"]


def test_one_device_agrees_with_eight(reference_run, tmp_path):
    run_dir, summary = reference_run
    out = runner.train(tiny(num_devices=1), tmp_path / "one", progress=False).summary
    assert out["device"].startswith("1x")
    _assert_close_runs(tmp_path / "one", run_dir)
    assert out["num_resets"] == summary["num_resets"]


def _assert_close_runs(a, b):
    rows_a = [json.loads(line) for line in read_lines(a)]
    rows_b = [json.loads(line) for line in read_lines(b)]
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        assert ra["reset_steps"] == rb["reset_steps"]
        np.testing.assert_allclose(ra["val_loss"], rb["val_loss"], rtol=1e-4)
        np.testing.assert_allclose(ra["train_loss"], rb["train_loss"], rtol=1e-4)


TWO_PROCESS_SCRIPT = """
import json, signal, sys
import jax
from resetax.experiment import control, distributed, placement, runner
from resetax.experiment.config import get_config

assert distributed.initialize()
config = get_config("quick", **json.loads(sys.argv[2]))
stop = control.StopRequest()  # a SIGTERM on one process stops both
stop.signum = signal.SIGTERM if jax.process_index() == 1 else None
assert stop.agreed()
for field, bad in (("parallel", "pmap"), ("num_devices", 4)):
    try:
        placement.check_devices(config.replace(**{field: bad}))
        raise AssertionError(f"{field}={bad} accepted in a multi-process run")
    except ValueError as err:
        assert field in str(err), err
stopped = runner.train(config, sys.argv[1], progress=False, stop_after=60)
assert stopped == runner.Stopped(60, None, 60)
runner.train(config, sys.argv[1], progress=False, resume=True)
"""


@pytest.mark.slow
def test_two_processes_agree_with_one_and_resume(reference_run, tmp_path):
    # Two processes of 4 CPU devices each train over one 8-device mesh through jax.distributed,
    # stop after a checkpoint and resume: the same run as one process with 8 devices.
    run_dir, summary = reference_run
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = tmp_path / "two"
    config = dict(TINY, diagnostics_every=60)
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(target), json.dumps(config)],
            cwd=Path(__file__).parents[1], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE))
    deadline = time.time() + 300
    while time.time() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
    errors = [p.stderr.read().decode()[-3000:] for p in procs]
    assert [p.wait() for p in procs] == [0, 0], errors
    _assert_close_runs(target, run_dir)
    two = json.loads((target / "summary.json").read_text())
    assert two["num_processes"] == 2 and two["device"].startswith("8x")
    assert two["num_resets"] == summary["num_resets"]
    assert two["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6)
    rows = [json.loads(line) for line in read_lines(target)]
    assert [r["step"] for r in rows if "grad_cos_cw" in r] == [0, 60, 110]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"JAX_COORDINATOR_ADDRESS": "nohost"}, "JAX_COORDINATOR_ADDRESS must be host:port"),
        ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need JAX_COORDINATOR_ADDRESS"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
         "JAX_PROCESS_ID must be an integer in [0, 2)"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
         "JAX_NUM_PROCESSES must be a positive integer"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"}, "set both"),
    ],
)
def test_bad_multiprocess_environment_fails_before_writing(tmp_path, capsys, monkeypatch, env,
                                                           message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--dataset", "digits"]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_partial_reset_by_pattern(tmp_path):
    # Reset at every step once active (patience 0): the matching layer stays at its first value.
    config = tiny(reset_layers="Dense_1", reset_prob=1.0, patience=0, num_steps=40,
                  checkpoint_every=40)
    experiment = build.setup(config)
    mask = optimization.reset_mask(config, experiment.init_state.params)
    assert sorted(k for k, v in mask.items() if all(jax.tree.leaves(v))) == ["Dense_1"]
    initial = experiment.init_state.params
    runner.train(config, tmp_path / "run", progress=False)
    final = checkpoint.CheckpointManager(tmp_path / "run" / "checkpoints").restore(
        experiment.init_state)[0].params
    np.testing.assert_array_equal(final["Dense_1"]["kernel"], initial["Dense_1"]["kernel"])
    assert np.abs(final["Dense_0"]["kernel"] - initial["Dense_0"]["kernel"]).max() > 1e-3


def test_plasticity_reset_from_the_config_lands_on_fresh_values(tmp_path):
    config = tiny(plasticity="reset_to_init", plasticity_every=20, plasticity_layers="Dense_1",
                  num_steps=40, checkpoint_every=40)
    experiment = build.setup(config)
    initial = experiment.init_state.params
    runner.train(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in read_lines(tmp_path / "run")]
    assert [s for r in rows for s in r["plasticity_steps"]] == [19, 39]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plasticity_every"] == 20
    final = checkpoint.CheckpointManager(tmp_path / "run" / "checkpoints").restore(
        experiment.init_state)[0]
    fresh = optimization.plasticity_state(final.opt_state).target
    # The last update (39) re-initialized Dense_1: it holds the fresh draw, bit for bit, which is
    # not its first initialization; Dense_0 trained on.
    np.testing.assert_array_equal(final.params["Dense_1"]["kernel"], fresh["Dense_1"]["kernel"])
    assert not np.array_equal(fresh["Dense_1"]["kernel"], initial["Dense_1"]["kernel"])
    assert np.abs(final.params["Dense_0"]["kernel"] - initial["Dense_0"]["kernel"]).max() > 1e-3


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state(tmp_path):
    config = tiny(dtype="bfloat16", num_steps=40, checkpoint_every=40)
    experiment = build.setup(config)
    state = experiment.init_state
    floats = [x for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
              if np.issubdtype(x.dtype, np.floating)]
    assert floats and all(x.dtype == np.float32 for x in floats)
    bf16, f32 = build.load_inputs(config), build.load_inputs(tiny())
    x = preprocess(bf16.data.test.inputs[:256], config.dataset)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = bf16.model.apply(variables, x, train=False)
    exact = f32.model.apply(variables, x, train=False)
    # The same float32 parameters, computed in bfloat16 (8 bits of mantissa): logits within a
    # few bfloat16 roundings of the float32 ones, but not equal to them.
    assert logits.dtype == np.float32
    gap = float(np.max(np.abs(np.asarray(logits) - np.asarray(exact))))
    assert 1e-4 < gap < 0.1 * float(np.max(np.abs(np.asarray(exact))))
    summary = runner.train(config, tmp_path / "run", progress=False).summary
    assert summary["test_acc"] > 0.5  # it learns (chance is 0.1)


def test_runs_without_plasticity_write_no_plasticity_field(reference_run):
    run_dir, _ = reference_run
    assert all("plasticity_steps" not in json.loads(line) for line in read_lines(run_dir))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset", "nope"], "preset"),
        (["--plasticity", "redo"], "plasticity must be one of"),
        (["--dtype", "float16"], "dtype must be one of ['float32', 'bfloat16']"),
        (["--shrink", "2"], "shrink must be in"),
        (["--plasticity-layers", "Dense_("], "plasticity_layers"),
        (["--plasticity", "reset_to_init", "--plasticity-layers", "Nope"],
         "plasticity_layers 'Nope' matches no parameter"),
        (["--dataset", "imagenet"], "dataset"),
        (["--model", "vgg"], "model"),
        (["--loss", "hinge"], "loss"),
        (["--noise-rate", "1.5"], "noise_rate"),
        (["--reset-prob", "-0.1"], "reset_prob"),
        (["--batch-size", "36"], "divisible by the number of devices"),
        (["--dataset", "cifar10", "--model", "vcnn", "--data-dir", "{tmp}/tfds"], "tfds build"),
        # Before: exit 0, the initial parameters validated alone and reported as the best model.
        (["--num-steps", "20", "--eval-every", "50"],
         "eval_every (50) must be at most num_steps (20): the run would validate its initial "
         "parameters only"),
        # Before: exit 0, the flag read by no part of the run.
        (["--dormant-threshold", "0.2"], "--dormant-threshold has no effect with --plasticity "
         "none: it is read with --plasticity recycle_dormant_units."),
        (["--plasticity", "reset_to_init", "--shrink", "0.5"],
         "--shrink has no effect with --plasticity reset_to_init"),
        (["--gce-q", "0.5"], "--gce-q has no effect with --loss ce: it is read with --loss gce "
         "or truncated_gce."),
    ],
)
def test_bad_input_fails_before_writing(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "run"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    try:  # argparse rejects a bad choice (--preset) itself, by exiting with status 2
        code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), *flags])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        # Before: planning 2e8 runs, for hours, without a word.
        (["--seeds", "100000000"], "--seeds must be at most 10000, got 100000000."),
        # Before: 'seed must be an integer in [0, 4294967295], got 4294967296', naming no --seeds.
        (["--seed", "4294967295", "--seeds", "2"],
         "--seeds 2 from --seed 4294967295 goes past the largest seed, 4294967295"),
        # Before: 'baseline=True trains a reset_prob=0 baseline beside...', a flag not given.
        (["--reset-prob", "0"], "reset_prob must be > 0 for compare (the baseline uses 0)."),
    ],
)
def test_bad_compare_input_is_one_line_before_writing(tmp_path, capsys, flags, message):
    run_dir = tmp_path / "compare"
    assert cli.main(["compare", "--quiet", "--dataset", "digits", "--model", "mlp",
                     "--run-dir", str(run_dir), *flags]) == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not run_dir.exists()


def test_existing_run_dir_is_refused(reference_run, capsys):
    run_dir, _ = reference_run
    before = read_lines(run_dir)
    code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--dataset", "digits"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert read_lines(run_dir) == before


def test_elr_loss_trains_and_agrees_across_parallel_modes(tmp_path):
    config = tiny(loss="elr", num_steps=60, checkpoint_every=60)
    runs = {}
    for parallel in ("sharded", "pmap"):
        run_dir = tmp_path / parallel
        runner.train(config.replace(parallel=parallel), run_dir, progress=False)
        experiment = build.setup(config)
        state, _ = checkpoint.CheckpointManager(run_dir / "checkpoints").restore(
            experiment.init_state)
        runs[parallel] = state.loss_state.targets
    # The first epoch (40 batches of 32 distinct samples) alone gives 1280 samples a target row.
    seen = (np.abs(runs["sharded"]).sum(1) > 0).sum()
    assert 40 * 32 <= seen <= len(load_data(config).train)
    np.testing.assert_allclose(runs["pmap"], runs["sharded"], rtol=1e-4, atol=1e-6)
    _assert_close_runs(tmp_path / "pmap", tmp_path / "sharded")


def test_cli_quick_trains_baseline_and_resetting_side_by_side(tmp_path, capsys):
    run_dir = tmp_path / "quick"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), *flags]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "resetting" in out and "test_acc" in out
    baseline = json.loads((run_dir / "baseline" / "summary.json").read_text())
    resetting = json.loads((run_dir / "resetting" / "summary.json").read_text())
    assert baseline["num_resets"] == 0 and baseline["reset_prob"] == 0.0
    assert resetting["num_resets"] > 0
    # Resuming a finished pair reuses both runs and prints the same table.
    assert cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--resume"]) == 0
    assert f"{100 * resetting['test_acc']:11.2f}%" in capsys.readouterr().out


def test_compare_writes_paired_table(tmp_path, capsys):
    run_dir = tmp_path / "compare"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "num_steps"]
    code = cli.main(["compare", "--quiet", "--seeds", "2", "--run-dir", str(run_dir),
                     "--num-steps", "60", "--checkpoint-every", "60", "--num-devices", "1",
                     *flags])  # one device per run: two runs side by side
    assert code == 0
    assert "resetting − baseline" in capsys.readouterr().out
    table = json.loads((run_dir / "compare.json").read_text())
    baseline, resetting = table["baseline"]["per_seed"], table["resetting"]["per_seed"]
    assert len(baseline) == len(resetting) == 2
    for name, accs in (("baseline", baseline), ("resetting", resetting)):
        assert accs == [json.loads((run_dir / f"{name}-seed{s}" / "summary.json").read_text())[
            "test_acc"] for s in (0, 1)]
        assert table[name]["mean"] == pytest.approx(np.mean(accs))
    diffs = np.subtract(resetting, baseline)
    assert table["difference"]["mean"] == pytest.approx(diffs.mean())
    assert table["difference"]["se"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(2))
    for name in ("baseline-seed0", "resetting-seed1"):
        assert json.loads((run_dir / name / "config.json").read_text())["seed"] == int(name[-1])
    assert (run_dir / "compare.md").exists() and (run_dir / "compare.png").exists()


def test_diagnostics_logged_timed_and_plotted(tmp_path):
    config = tiny(diagnostics_every=40)  # the steps are the tiny config's, compiled once
    pause = 0.25  # added to each measurement of the diagnostics: their time must show

    def slow_diagnostics(config, inputs):
        experiment = build.setup(config, inputs)

        def diagnose(host_state):
            time.sleep(pause)
            return experiment.diagnose(host_state)

        return dataclasses.replace(experiment, diagnose=diagnose)

    summary = runner.train(config, tmp_path / "run", progress=False,
                           build=slow_diagnostics).summary
    rows = [json.loads(line) for line in read_lines(tmp_path / "run")]
    with_diag = [r for r in rows if "grad_cos_cw" in r]
    # Every 40 steps, and the last window's (110 of 120) too: the curve reaches the end.
    assert [r["step"] for r in with_diag] == [0, 40, 80, 110]
    # The wall time covers the diagnostics, and its parts add up to it.
    assert summary["diagnostics_time_s"] >= len(with_diag) * pause
    assert summary["wall_time_s"] >= summary["diagnostics_time_s"] + summary["compile_time_s"]
    parts = ("compile_time_s", "diagnostics_time_s", "loop_time_s")
    assert sum(summary[k] for k in parts) == pytest.approx(summary["wall_time_s"], abs=2e-3)
    for r in with_diag:
        for key in ("grad_cos_cw", "grad_cos_tw", "grad_cos_tc"):
            assert -1 <= r[key] <= 1
        assert r["grad_norm_wrong"] > 0 and r["grad_norm_correct"] > 0
        assert r["mem_clean_correct"] + r["mem_clean_wrong"] == pytest.approx(1, abs=1e-5)
        assert (r["mem_noisy_true"] + r["mem_noisy_memorized"] + r["mem_noisy_neither"]
                == pytest.approx(1, abs=1e-5))
    # Early learning: the net first fits the clean pattern, also on the wrongly-labelled samples.
    first, last = with_diag[0], with_diag[-1]
    assert last["mem_clean_correct"] > first["mem_clean_correct"] + 0.2
    assert last["mem_noisy_true"] > first["mem_noisy_true"] + 0.2
    assert (tmp_path / "run" / "curves.png").exists()


@pytest.fixture(scope="module")
def eval_sets():
    """A tiny model and evaluation sets of sizes below, at and above the eval batch (1000) and
    1000 x devices, primes included, with their exact loss and accuracy computed in float64 from
    the logits of all examples at once (evaluation mode: each example's logits are its own)."""
    from resetax import models

    model = models.get_model("mlp", 3, hidden_sizes=(8,))
    rng = np.random.default_rng(0)
    variables = model.init(jax.random.key(0), np.zeros((1, 5), np.float32))
    sizes = (1, 7, 997, 1000, 1001, 1500, 2003, 8009)
    xs = [rng.normal(size=(n, 5)).astype(np.float32) for n in sizes]
    ys = [rng.integers(0, 3, n).astype(np.int32) for n in sizes]
    all_logits = np.asarray(jax.jit(model.apply)(variables, np.concatenate(xs)), np.float64)
    sets, start = [], 0
    for x, y in zip(xs, ys, strict=True):
        n = len(x)
        logits, start = all_logits[start:start + n], start + n
        top = logits.max(1, keepdims=True)
        log_probs = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
        sets.append((x, y, -log_probs[np.arange(n), y].mean(), (logits.argmax(1) == y).mean()))
    return model, variables, sets


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("parallel", ["sharded", "pmap"])
def test_evaluation_counts_every_example_once(eval_sets, num_devices, parallel):
    from resetax import data as data_lib

    model, variables, sets = eval_sets
    placement = placement_lib.placement_for(tiny(num_devices=num_devices, parallel=parallel))
    eval_step = steps.make_eval_step(tiny(eval_test=True), model, steps.EVAL_BATCH_SIZE,
                                     placement.replicas)
    compiled = placement.compile_eval(eval_step)
    state = placement.place_state(train_state.TrainState(
        step=0, params=variables["params"], batch_stats=variables["batch_stats"],
        opt_state=(), model_checkpoint=(), best_params=(), best_batch_stats=(), best_value=0.0,
        best_step=0, loss_state=(), key=0, epoch_order=0))
    for x, y, expected_loss, expected_acc in sets:
        n = len(x)
        split = data_lib.Dataset(x, y, y, np.arange(n), 3)
        device_data = placement.place_data(ExperimentData(split, split, split, 3))
        evaluation = placement.fetch(compiled(state, device_data))
        assert float(evaluation.val_acc) == pytest.approx(expected_acc, abs=1e-6), n
        assert float(evaluation.test_acc) == pytest.approx(expected_acc, abs=1e-6), n
        assert float(evaluation.val_loss) == pytest.approx(expected_loss, rel=1e-5), n


def test_pmap_fetch_returns_the_first_replica_of_each_leaf():
    placement = placement_lib.Pmap(tuple(jax.devices()[:4]))
    stacked = {"w": np.arange(12.0, dtype=np.float32).reshape(4, 3),
               "n": np.arange(4, dtype=np.int32) + 7}
    placed = jax.device_put(stacked, NamedSharding(placement.mesh, P("data")))
    from_pmap = jax.pmap(lambda t: jax.tree.map(lambda x: x * 2, t),
                         devices=placement.devices)(placed)
    for tree, scale in ((placed, 1), (from_pmap, 2), (stacked, 1)):  # host metrics too
        fetched = placement.fetch(tree)
        assert isinstance(fetched["w"], np.ndarray) and fetched["w"].shape == (3,)
        assert fetched["w"].tolist() == [0.0, scale * 1.0, scale * 2.0]
        assert fetched["n"].shape == () and int(fetched["n"]) == scale * 7


def test_summary_evaluation_counts_every_example_once(eval_sets):
    # The summary's evaluation runs on the unpadded set outside any placement.
    model, variables, sets = eval_sets
    evaluate = jax.jit(steps.make_evaluate(model, steps.EVAL_BATCH_SIZE))
    for x, y, expected_loss, expected_acc in sets:
        n = len(x)
        loss, acc = evaluate(variables["params"], variables["batch_stats"], x, y,
                             np.ones(n, np.float32))
        assert float(acc) == pytest.approx(expected_acc, abs=1e-6), n
        assert float(loss) == pytest.approx(expected_loss, rel=1e-5), n


def test_help_comes_from_field_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert ">>>" not in text
    for field in ("data_dir", "reset_prob", "eval_test", "baseline"):
        assert Config.help(field).split(".")[0] in text, field
    assert "[default: 0.05; quick: 0.05]" in text  # learning_rate
    assert "[default: false; quick: true]" in text  # baseline, the quick preset's pair
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "setting1", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[default: 0.05; setting1: 0.01]" in text
    # A preset given twice: the last one counts, in the run and in the help (it showed the first).
    argv = ["train", "--preset", "quick", "--preset=setting1"]
    assert cli.config_from_args(cli.parser().parse_args(argv)).learning_rate == 0.01
    with pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    assert "[default: 0.05; setting1: 0.01]" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", [["train"], ["compare"], ["reproduce", "setting1"]])
def test_every_flag_is_in_its_commands_help(capsys, command):
    # Before: the --no-NAME form of each boolean (--no-baseline, which the README uses) was
    # accepted but hidden from --help.
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    text = re.sub(r"-\s+", "-", " ".join(capsys.readouterr().out.split()))
    sub = cli.parser()._subparsers._group_actions[0].choices[command[0]]
    flags = [flag for action in sub._actions for flag in action.option_strings]
    assert "--no-baseline" in flags
    assert [flag for flag in flags if flag not in text] == []


def test_bool_flags_and_no_mutation():
    parser = cli.parser()
    for flags, expected in ((["--no-baseline"], False), (["--baseline"], True),
                            (["--baseline", "false"], False), ([], True)):
        args = parser.parse_args(["train", *flags])
        before = dict(vars(args))
        assert cli.config_from_args(args).baseline is expected, flags
        assert vars(args) == before


def test_resume_needs_only_the_run_dir_and_keeps_the_run_mode(reference_run, tmp_path, capsys):
    # A single run (no baseline), interrupted, resumed from --run-dir alone: still a single run.
    run_dir, _ = reference_run
    target = tmp_path / "single"
    assert runner.train(tiny(baseline=False), target, progress=False,
                        stop_after=60) == runner.Stopped(60, None, 60)
    assert cli.main(["train", "--quiet", "--run-dir", str(target), "--resume"]) == 0
    assert not (target / "baseline").exists()
    assert read_lines(target) == read_lines(run_dir)
    assert summary_without_time(target) == summary_without_time(run_dir)


@pytest.mark.parametrize("flags", [["--noise-rate", "0.6"], ["--preset", "setting1"],
                                   ["--baseline"]])
def test_resume_refuses_a_changed_config(tmp_path, capsys, flags):
    target = tmp_path / "run"
    runner.train(tiny(baseline=False), target, progress=False, stop_after=10)
    before = sorted(p.name for p in target.rglob("*"))
    code = cli.main(["train", "--quiet", "--run-dir", str(target), "--resume", *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume continues" in err and "would change it" in err
    name = {"--noise-rate": "noise_rate", "--preset": "dataset", "--baseline": "baseline"}
    assert name[flags[0]] in err
    assert sorted(p.name for p in target.rglob("*")) == before


def test_checkpoints_read_by_field_name_with_plain_orbax(reference_run):
    import orbax.checkpoint as ocp

    run_dir, summary = reference_run
    raw = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / "120" / "state")
    assert set(raw) == set(train_state.TrainState._fields)
    assert int(raw["step"]) == 120 and int(raw["best_step"]) == summary["best_step"]
    # The optimizer state: inject_hyperparams' state around the ResettingState's fields.
    assert float(raw["opt_state"]["hyperparams"]["reset_prob"]) == pytest.approx(0.1)
    assert int(raw["opt_state"]["inner_state"]["num_resets"]) == summary["num_resets"]
    best = checkpoint.load_best(run_dir / "best")
    for a, b in zip(jax.tree.leaves(raw["best_params"]), jax.tree.leaves(best["params"]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoints_of_the_first_release_still_load(tmp_path):
    # resetax 0.1.0 stored the state's leaves under keys "00000", "00001"...
    import orbax.checkpoint as ocp

    template = build.setup(tiny()).init_state
    state = jax.tree.map(lambda x: np.asarray(x) + 1, template)._replace(step=np.int32(40))
    legacy = ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(create=True))
    leaves = {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(state))}
    legacy.save(40, args=ocp.args.Composite(state=ocp.args.StandardSave(leaves),
                                            meta=ocp.args.JsonSave({"wall_time": 3.0})))
    legacy.wait_until_finished()
    restored, meta = checkpoint.CheckpointManager(tmp_path).restore(template)
    assert meta == {"wall_time": 3.0}
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_whose_arrays_differ_from_their_checksum_is_skipped(tmp_path, capsys):
    # A flipped byte in the array files can read back without an error (the fault fuzz found
    # one): the CRC-32 saved in the metadata catches it, and the earlier checkpoint is used.
    template = build.setup(tiny()).init_state
    manager = checkpoint.CheckpointManager(tmp_path)
    states = {step: jax.tree.map(lambda x, s=step: (np.asarray(x) + s).astype(x.dtype),
                                 template)._replace(
        step=np.int32(step)) for step in (20, 40)}
    for step, state in states.items():
        manager.save(state, {"wall_time": float(step)})
    path = tmp_path / "40" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    assert set(meta) == {"wall_time", "arrays_crc32"}
    path.write_text(json.dumps({**meta, "arrays_crc32": meta["arrays_crc32"] ^ 1}))
    restored, meta = checkpoint.CheckpointManager(tmp_path).restore_latest(template)
    assert meta == {"wall_time": 20.0}  # the checksum is not part of what restore returns
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(states[20]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "differ from the checksum" in capsys.readouterr().err
