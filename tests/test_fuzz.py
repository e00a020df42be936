"""Property-based tests: any value of any flag or Config field ends in one clear line, or runs.

Fixed seeds (hypothesis' derandomized mode) and a bounded number of examples keep the default
suite deterministic and fast; ``RESETAX_FUZZ_EXAMPLES`` raises the budget (the slow suite's
test does).
"""

import contextlib
import dataclasses
import io
import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resetax.experiment import cli, runner  # noqa: E402
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
