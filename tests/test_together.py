"""Tests of runs trained together as one vmapped program: the same resets, checkpoints and
metrics as the runs trained one at a time, each run's own files, stops, resumes, divergence."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from runs import ROOT, cli_args, read_lines, summary_without_time, tiny, wait_for

from resetax import _files
from resetax.experiment import build, checkpoint, cli, group, runner, together, workdir

SEEDS = (0, 1)
# A small float tolerance: vmapped matrix products may sum in another order than a run's alone.
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def pair_runs(root, config):
    """Two seeds, each without and with resetting, in ``root``."""
    return [group.GroupRun(f"{name}-seed{seed}", config.replace(seed=seed, reset_prob=p),
                           root / f"{name}-seed{seed}")
            for seed in SEEDS for name, p in (("baseline", 0.0), ("resetting", 0.1))]


def quiet(_):
    pass


def lines(run_dir):
    return [json.loads(line) for line in read_lines(run_dir)]


def checkpoint_steps(run_dir):
    return sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())


def assert_close(ours, theirs):
    """Two runs' lines or summaries: the same keys, integers and step lists equal, floats equal
    within the tolerance."""
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, float) and value is not None:
            np.testing.assert_allclose(value, theirs[key], **TOLERANCE, err_msg=key)
        else:
            assert value == theirs[key], key


def assert_same_runs(root, reference, runs):
    for run in runs:
        ours, theirs = root / run.name, reference / run.name
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        assert checkpoint_steps(ours) == checkpoint_steps(theirs)
        assert len(lines(ours)) == len(lines(theirs)) > 0
        for mine, alone in zip(lines(ours), lines(theirs), strict=True):
            assert_close(mine, alone)  # reset_steps, num_resets, steps equal
        assert_close(summary_without_time(ours), summary_without_time(theirs))
        assert workdir.load_config(ours) == workdir.load_config(theirs)


CONFIG = dict(num_steps=40, eval_every=10, checkpoint_every=20, patience=None, baseline=False)


@pytest.mark.parametrize("placement", [dict(num_devices=1), dict(num_devices=None),
                                       dict(num_devices=None, parallel="pmap")],
                         ids=["one-device", "8-devices-sharded", "8-devices-pmap"])
def test_runs_together_equal_the_runs_one_at_a_time(tmp_path, placement):
    config = tiny(**CONFIG, **placement)
    alone = pair_runs(tmp_path / "alone", config)
    group.train_group(alone, jobs=1, progress=False, announce=quiet)
    runs = pair_runs(tmp_path / "together", config)
    results = together.train_runs(runs, runs_together=4, progress=False, announce=quiet)
    assert [type(r) for r in results.values()] == [runner.Finished] * 4
    assert_same_runs(tmp_path / "together", tmp_path / "alone", runs)
    resets = [summary_without_time(tmp_path / "together" / run.name)["num_resets"]
              for run in runs]
    assert resets[0] == resets[2] == 0 and resets[1] > 0 and resets[3] > 0  # something to match


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Four tiny runs trained together, uninterrupted, on one device."""
    root = tmp_path_factory.mktemp("together")
    config = tiny(**CONFIG, num_devices=1)
    together.train_together(pair_runs(root, config), progress=False, announce=quiet)
    return root, config


def test_a_stopped_group_resumes_as_if_uninterrupted(tmp_path, uninterrupted):
    reference, config = uninterrupted
    runs = pair_runs(tmp_path, config)
    stopped = together.train_together(runs, progress=False, stop_after=20, announce=quiet)
    assert set(stopped.values()) == {runner.Stopped(20, None, 20)}
    assert all(not (run.run_dir / "summary.json").exists() for run in runs)
    results = together.train_together(runs, resume=True, progress=False, announce=quiet)
    assert [type(r) for r in results.values()] == [runner.Finished] * 4
    for run in runs:  # bit-identical: the same program from the same checkpoints
        assert read_lines(run.run_dir) == read_lines(reference / run.name)
        assert summary_without_time(run.run_dir) == summary_without_time(reference / run.name)
    # Resumed again, the finished runs are read back and nothing is trained.
    again = together.train_together(runs, resume=True, progress=False, announce=quiet)
    assert {name: r.summary for name, r in again.items()} == {
        name: r.summary for name, r in results.items()}


def test_a_together_checkpoint_resumes_one_at_a_time(tmp_path, uninterrupted):
    reference, config = uninterrupted
    runs = pair_runs(tmp_path, config)
    together.train_together(runs, progress=False, stop_after=20, announce=quiet)
    # The checkpoints are a lone run's: each run resumes alone from its own.
    results = group.train_group(runs, jobs=1, resume=True, progress=False, announce=quiet)
    assert [type(r) for r in results.values()] == [runner.Finished] * 4
    assert_same_runs(tmp_path, reference, runs)


def test_a_diverging_run_ends_alone_and_the_others_go_on(tmp_path, monkeypatch):
    original = build.load_inputs

    def load_inputs(config):  # seed 1's training images are NaN: its loss is never finite
        inputs = original(config)
        if config.seed != 1:
            return inputs
        train = inputs.data.train
        nan = dataclasses.replace(train, inputs=np.full_like(train.inputs, np.nan))
        return inputs._replace(data=inputs.data._replace(train=nan))

    monkeypatch.setattr(build, "load_inputs", load_inputs)
    monkeypatch.setattr(runner, "load_inputs", load_inputs)
    config = tiny(**CONFIG, num_devices=1)
    runs = [group.GroupRun(f"seed{seed}", config.replace(seed=seed), tmp_path / "t" / str(seed))
            for seed in (0, 1, 2)]
    results = together.train_together(runs, progress=False, announce=quiet)
    assert [type(r) for r in results.values()] == [runner.Finished, runner.Diverged,
                                                   runner.Finished]
    assert results["seed1"].step == 0
    assert [r.summary["num_steps"] for r in results.values()] == [40, 10, 40]
    # As the same run diverges alone: the same step, lines and summary.
    alone = runner.train(runs[1].config, tmp_path / "alone", progress=False)
    assert isinstance(alone, runner.Diverged) and alone.step == 0
    assert checkpoint_steps(tmp_path / "alone") == checkpoint_steps(runs[1].run_dir) == [10]
    assert_close(summary_without_time(runs[1].run_dir), summary_without_time(tmp_path / "alone"))
    # The others' numbers do not depend on it.
    other = runner.train(runs[2].config, tmp_path / "other", progress=False)
    assert_close(summary_without_time(runs[2].run_dir), summary_without_time(tmp_path / "other"))
    assert other.summary["num_steps"] == 40


def test_only_runs_that_share_shapes_train_together(tmp_path):
    config = tiny(**CONFIG, num_devices=1)
    runs = [group.GroupRun(name, c, tmp_path / name) for name, c in (
        ("a", config), ("b", config.replace(seed=1, noise_rate=0.2)),
        ("c", config.replace(batch_size=16)), ("d", config.replace(seed=2, reset_prob=0.0)))]
    assert [[r.name for r in g] for g in together.plan_groups(runs, 0)] == [
        ["a", "b", "d"], ["c"]]
    assert [[r.name for r in g] for g in together.plan_groups(runs, 2)] == [
        ["a", "b"], ["c"], ["d"]]
    with pytest.raises(ValueError, match="may differ in seed, reset_prob, noise_rate, "
                                         "label_variant only"):
        together.train_together(runs, progress=False, announce=quiet)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_the_pair_trains_together_from_the_command_line(tmp_path, capsys):
    flags = ["--quiet", "--dataset=digits", "--model=mlp", "--num-steps=20", "--eval-every=10",
             "--checkpoint-every=20", "--reset-prob=0.1", "--patience=none", "--num-devices=1"]
    assert cli.main(["train", "--runs-together", "2", "--run-dir", str(tmp_path / "t"),
                     *flags]) == 0
    assert "== baseline, resetting together" in capsys.readouterr().out
    assert cli.main(["train", "--runs-together", "off", "--run-dir", str(tmp_path / "o"),
                     *flags]) == 0
    assert " together (" not in capsys.readouterr().out
    assert_same_runs(tmp_path / "t", tmp_path / "o", [group.GroupRun(name, None, None)
                                                      for name in ("baseline", "resetting")])


@pytest.mark.parametrize("value", ["0", "all", "-2"])
def test_a_bad_runs_together_is_one_line(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["compare", "--runs-together", value, "--run-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert (f"argument --runs-together: expected auto, off or a positive integer, got "
            f"{value!r}") in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sigint_stops_a_group_at_a_checkpoint_and_resume_finishes_it(tmp_path):
    target = tmp_path / "compare"
    args = cli_args(target, "--seeds", "2", "--num-steps", "600", "--checkpoint-every", "600",
                    "--num-devices", "1", "--runs-together", "4", command="compare")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ))
    first = target / "baseline-seed0"
    wait_for(proc, lambda: (first / "metrics.jsonl").exists() and read_lines(first))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err.decode()
    assert f"resetax compare --run-dir {target} --resume" in err.decode()
    names = [f"{kind}-seed{seed}" for seed in (0, 1) for kind in ("baseline", "resetting")]
    steps = {tuple(checkpoint_steps(target / name)) for name in names}
    assert len(steps) == 1  # every run at the same step
    (step,) = steps.pop()
    assert 0 < step < 600 and step % 10 == 0
    # The checkpoints restore as a lone run's do.
    state, _ = checkpoint.CheckpointManager(target / names[1] / "checkpoints").restore(
        build.setup(workdir.load_config(target / names[1])).init_state)
    assert int(state.step) == step
    # Without --runs-together, the resume trains them together as they were started (plan.json).
    assert json.loads((target / "plan.json").read_text())["runs_together"] == 4
    resumed = subprocess.run([sys.executable, "-m", "resetax.experiment.cli", "compare",
                              "--quiet", "--run-dir", str(target), "--resume"],
                             cwd=ROOT, capture_output=True, env=dict(os.environ))
    assert resumed.returncode == 0, resumed.stderr.decode()
    for name in names:
        assert [line["step"] for line in lines(target / name)] == list(range(0, 600, 10))
        assert summary_without_time(target / name)["num_steps"] == 600


@pytest.mark.slow
def test_a_tables_cells_train_together_as_one_at_a_time(tmp_path, capsys):
    from test_reproduce import TINY_FLAGS
    from tfds_mock import mock_cifar

    cells = "cifar10n-aggre-ce,cifar10n-worse-ce,cifar100n-ce"  # two label sets share shapes
    with mock_cifar(tmp_path / "metadata", 40):
        for mode in ("3", "off"):
            assert cli.main(["reproduce", "table2-cifar-n", "--seeds", "1", "--cells", cells,
                             "--runs-together", mode, "--num-devices", "1", "--run-dir",
                             str(tmp_path / mode), *TINY_FLAGS]) == 0
    out = capsys.readouterr().out
    assert ("runs together: 6 runs in 3 groups of runs that share shapes (3, 1, 2 runs)"
            in out)
    assert ("== cifar10n-aggre-ce/baseline-seed0, cifar10n-aggre-ce/resetting-seed0, "
            "cifar10n-worse-ce/baseline-seed0 together") in out
    runs = [group.GroupRun(f"{cell}/{kind}-seed0", None, None) for cell in cells.split(",")
            for kind in ("baseline", "resetting")]
    assert_same_runs(tmp_path / "3", tmp_path / "off", runs)
    assert (tmp_path / "3" / "table.md").read_text() == (tmp_path / "off" / "table.md").read_text()


def test_the_dry_run_says_which_configuration_its_estimate_assumes(capsys):
    for mode, expected in (
            ("off", "The estimate assumes the runs trained one at a time (--runs-together off)."),
            ("10", "--runs-together 10 trains these 90 runs in 9 groups of runs that share "
                   "shapes (3 kinds of run; up to 10 runs a group)."),
            ("auto", "--runs-together auto trains these 90 runs in 3 groups of runs that share "
                     "shapes (3 kinds of run; up to 30 runs a group; on an accelerator, one at "
                     "a time on a CPU).")):
        assert cli.main(["reproduce", "table1-cifar10", "--dry-run", "--runs-together",
                         mode]) == 0
        out = capsys.readouterr().out
        assert expected in out
        assert "90 runs, 4,500,000 steps: about 26.8 GPU hours on one H100" in out
        assert ("rates of runs trained together are not measured yet" in out) == (mode != "off")


@pytest.mark.parametrize("given, saved, resume, expected", [
    (None, 4, True, 4),          # a resume goes on as the group was started
    ("off", 4, True, "off"),     # unless told otherwise
    (None, 4, False, "auto"),    # a new group: the default
    (None, None, True, "auto"),  # a plan written before runs_together was recorded
])
def test_runs_together_of_a_resumed_group_is_the_saved_one(tmp_path, given, saved, resume,
                                                           expected):
    plan = {"command": "compare", "seeds": 2}
    if saved is not None:
        plan["runs_together"] = saved
    workdir.write_json(tmp_path / "plan.json", plan)
    argv = ["compare", "--run-dir", str(tmp_path)] + (["--resume"] if resume else [])
    argv += [] if given is None else ["--runs-together", given]
    args = cli.parser().parse_args(argv)
    assert cli._runs_together_of(tmp_path, args) == expected


def test_a_resume_told_another_runs_together_says_its_runs_will_differ(tmp_path, capsys):
    # Before: accepted without a word, and the resumed runs' metrics differed from an
    # uninterrupted group's in the last bits (probed: 84 of 300 rows of a pair).
    workdir.write_json(tmp_path / "plan.json", {"command": "compare", "seeds": 2,
                                                "runs_together": 2})
    args = cli.parser().parse_args(["compare", "--run-dir", str(tmp_path), "--resume",
                                    "--runs-together", "off"])
    assert cli._runs_together_of(tmp_path, args) == "off"
    assert capsys.readouterr().err == (
        f"resetax: --runs-together off, where {tmp_path} was started with 2: runs trained "
        f"together and apart differ in the last bits, so its runs will not equal an "
        f"uninterrupted group's.\n")
    args = cli.parser().parse_args(["compare", "--run-dir", str(tmp_path), "--resume",
                                    "--runs-together", "2"])
    assert cli._runs_together_of(tmp_path, args) == 2
    assert capsys.readouterr().err == ""


def test_a_damaged_runs_together_in_plan_json_is_named(tmp_path):
    workdir.write_json(tmp_path / "plan.json", {"command": "compare", "seeds": 2,
                                                "runs_together": "all"})
    with pytest.raises(_files.DamagedFile, match="plan.json.*runs_together 'all'"):
        workdir.read_plan(tmp_path)
