"""Tests of the shared argument checks (resetax/_checks.py) and tree helpers (resetax/_trees.py)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resetax import _checks, _trees


def test_config_helpers_keep_their_messages():
    # resetax.experiment.config builds on these three; its messages are part of the CLI.
    with pytest.raises(ValueError, match=re.escape("mode must be one of ['min', 'max'], got 'x'.")):
        _checks.one_of("mode", "x", ("min", "max"))
    with pytest.raises(ValueError, match=re.escape("noise_rate must be in [0, 1], got 1.5.")):
        _checks.in_range("noise_rate", 1.5, 0, 1)
    with pytest.raises(ValueError, match=re.escape("steps must be an integer > 0, got 0.")):
        _checks.positive_int("steps", 0)
    _checks.one_of("mode", "min", ("min", "max"))
    _checks.in_range("noise_rate", 0, 0, 1)
    _checks.positive_int("steps", np.int64(3))


@pytest.mark.parametrize("value", [True, "0.5", None, float("nan"), np.array(0.5), [0.5]])
def test_in_range_takes_python_numbers_only(value):
    with pytest.raises(ValueError, match="noise_rate"):
        _checks.in_range("noise_rate", value, 0, 1)


@pytest.mark.parametrize("value", [True, np.bool_(True), 2.0, "3", None, -1])
def test_positive_int_rejects_bools_and_non_integers(value):
    with pytest.raises(ValueError, match="steps"):
        _checks.positive_int("steps", value)


def test_none_ok():
    _checks.int_at_least("patience", None, 0, none_ok=True)
    with pytest.raises(ValueError, match=re.escape("patience must be None or an integer >= 0")):
        _checks.int_at_least("patience", -1, 0, none_ok=True)
    with pytest.raises(ValueError, match="patience"):
        _checks.int_at_least("patience", None, 0)


@pytest.mark.parametrize("value", [True, "1.0", None, jnp.array([1.0, -1.0]), np.array(False)])
def test_numeric_checks_reject_bools_non_numbers_and_bad_entries(value):
    with pytest.raises(ValueError, match="distance must be a number > 0"):
        _checks.positive("distance", value)


def test_scalar_checks_name_the_shape():
    with pytest.raises(ValueError, match=re.escape("got an array of shape (2,)")):
        _checks.probability("reset_prob", jnp.array([0.5, 0.5]), scalar=True)
    _checks.probability("reset_prob", jnp.array(0.5), scalar=True)


def test_interval_ends():
    _checks.interval("k", 0.0, 0, 1, open_high=True)
    with pytest.raises(ValueError, match=re.escape("k must be a number in [0, 1), got 1.0.")):
        _checks.interval("k", 1.0, 0, 1, open_high=True)
    with pytest.raises(ValueError, match=re.escape("q must be a number in (0, 1]")):
        _checks.interval("q", 0.0, 0, 1, open_low=True)


def test_traced_values_pass_concrete_ones_do_not():
    @jax.jit
    def f(x):
        _checks.positive("x", x)
        _checks.label_range("labels", x.astype(jnp.int32), 3)
        return x

    assert float(f(-1.0)) == -1.0
    with pytest.raises(ValueError, match="x"):
        _checks.positive("x", jnp.asarray(-1.0))


def test_labels_and_transition_matrix():
    with pytest.raises(ValueError, match=re.escape("labels must lie in [0, 3), got values in")):
        _checks.labels("labels", np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="1-D integer"):
        _checks.labels("labels", np.array([0.0, 1.0]), 3)
    with pytest.raises(ValueError, match="rows must sum to 1"):
        _checks.transition_matrix("transition_matrix", [[0.5, 0.4], [0.0, 1.0]])
    np.testing.assert_array_equal(
        _checks.transition_matrix("transition_matrix", [[1, 0], [0, 1]]), np.eye(2))


def test_instance_refuses_bools_where_ints_are_asked():
    _checks.instance("key", 3, (int, jax.Array), "an int seed")
    with pytest.raises(TypeError, match="key must be an int seed, got bool"):
        _checks.instance("key", True, (int, jax.Array), "an int seed")
    _checks.instance("flag", True, (bool,), "a bool")


def test_path_name_and_is_masked():
    tree = {"Dense_0": {"kernel": 1}, "blocks": [2, (3,)], "skip": optax.MaskedNode()}
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    assert [_trees.path_name(p) for p, _ in paths] == [
        "Dense_0/kernel", "blocks/0", "blocks/1/0"]
    leaves = jax.tree.leaves(tree, is_leaf=_trees.is_masked)
    assert [_trees.is_masked(x) for x in leaves] == [False, False, False, True]


def test_python_number_takes_python_numbers_only():
    positive = lambda v: v > 0  # noqa: E731
    _checks.python_number("learning_rate", 0.1, positive, "a number > 0")
    _checks.python_number("learning_rate", np.float64(0.1), positive, "a number > 0")
    for value in (0.0, True, np.array(0.5), "0.1", None):
        with pytest.raises(ValueError, match=re.escape(
                f"learning_rate must be a number > 0, got {value!r}.")):
            _checks.python_number("learning_rate", value, positive, "a number > 0")


def test_multiple_of_names_both_arguments_and_passes_none():
    _checks.multiple_of("checkpoint_every", 200, "eval_every", 100)
    _checks.multiple_of("test_every", None, "eval_every", 100)
    with pytest.raises(ValueError, match=re.escape(
            "checkpoint_every (150) must be a multiple of eval_every (100), so that x.")):
        _checks.multiple_of("checkpoint_every", 150, "eval_every", 100, ", so that x")


def test_regex_reports_the_pattern_error():
    _checks.regex("reset_layers", "Dense_[01]$")
    _checks.regex("reset_layers", None)
    with pytest.raises(ValueError, match=re.escape("reset_layers must be a regular expression, "
                                                   "got 'Dense_[': ")):
        _checks.regex("reset_layers", "Dense_[")


@pytest.mark.parametrize("value", [0, -1, True, 2.0, "two", None])
def test_auto_or_positive_int_refuses_the_rest(value):
    _checks.auto_or_positive_int("jobs", "auto")
    _checks.auto_or_positive_int("jobs", 3)
    with pytest.raises(ValueError, match=re.escape(
            f"jobs must be 'auto' or a positive integer, got {value!r}.")):
        _checks.auto_or_positive_int("jobs", value)
