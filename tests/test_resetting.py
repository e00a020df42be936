"""Tests of resetax.stochastic_resetting and its helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# optax has no public name for its "params are required" message.
from optax._src.base import NO_PARAMS_MSG
from scipy import stats

import resetax

# --------------------------------------------------------------------------- reset statistics


def _reset_history(reset_prob, num_steps, key):
    tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob, key=key)
    params = jnp.zeros(3)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jnp.ones(3), state, params, value=jnp.nan)
        params = resetax.apply_updates(params, updates, state)
        return (params, state), state.did_reset

    (_, state), did_reset = jax.lax.scan(step, (params, tx.init(params)), length=num_steps)
    return np.asarray(did_reset), state


def test_reset_count_is_binomial():
    r, n = 0.01, 20_000
    did_reset, state = _reset_history(r, n, key=1)
    count = did_reset.sum()
    assert count == int(state.num_resets)
    mean, std = n * r, math.sqrt(n * r * (1 - r))
    assert abs(count - mean) < 4 * std, (count, mean, std)


def _geometric_p_value(gaps, r, num_bins=8):
    """Chi-square goodness of fit of gaps to Geometric(r) on {1, 2, ...}, equal-probability bins."""
    edges = [0] + [
        math.ceil(math.log(1 - q) / math.log(1 - r)) for q in np.arange(1, num_bins) / num_bins
    ] + [np.inf]
    observed = np.histogram(gaps, bins=np.array(edges) + 0.5)[0]
    survival = np.array([(1 - r) ** k for k in edges])  # P(gap > k)
    expected = (survival[:-1] - survival[1:]) * len(gaps)
    assert expected.min() >= 5
    return stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue


def test_gaps_between_resets_are_geometric():
    r, n = 0.01, 20_000
    did_reset, _ = _reset_history(r, n, key=2)
    gaps = np.diff(np.flatnonzero(did_reset))
    assert _geometric_p_value(gaps, r) > 1e-3


def test_geometric_check_can_fail():
    # The same statistic rejects evenly spaced resets with the right mean rate.
    assert _geometric_p_value(np.full(200, 100), 0.01) < 1e-3


def test_reset_prob_zero_and_one():
    never, _ = _reset_history(0.0, 500, key=0)
    always, _ = _reset_history(1.0, 500, key=0)
    assert never.sum() == 0
    assert always.all()


@pytest.mark.parametrize("reset_prob, every_step", [
    (jnp.array(1.0), True),  # a concrete array in range is accepted
    (lambda count: jnp.asarray(2.0), True),  # a schedule's output is clipped to [0, 1]
    (lambda count: jnp.asarray(-1.0), False),
    (lambda count: jnp.asarray(float("nan")), False),
])
def test_array_and_out_of_range_schedule_reset_probabilities(reset_prob, every_step):
    did_reset, _ = _reset_history(reset_prob, 50, key=0)
    assert did_reset.all() if every_step else not did_reset.any()


def test_same_key_same_resets_other_key_other_resets():
    a, _ = _reset_history(0.1, 300, key=7)
    b, _ = _reset_history(0.1, 300, key=7)
    c, _ = _reset_history(0.1, 300, key=8)
    typed, _ = _reset_history(0.1, 300, key=jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, typed)
    assert (a != c).any()


# --------------------------------------------------------------------------- exactness


def test_reset_lands_on_checkpoint():
    key = jax.random.key(3)
    params = {
        "w": jax.random.normal(key, (64, 32)) * 10.0 ** jax.random.uniform(key, (64, 32), minval=-4,
                                                                          maxval=4),
        "b": jnp.linspace(-3.0, 3.0, 32),
    }
    tx = resetax.stochastic_resetting(
        optax.sgd(1e-2, momentum=0.9), lambda count: jnp.where(count == 20, 1.0, 0.0), key=0)
    state = tx.init(params)
    update = jax.jit(tx.update)
    p = params
    for i in range(21):
        grads = jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 1)), p)
        before = p
        updates, state = update(grads, state, p, value=jnp.nan)
        plain = optax.apply_updates(p, updates)
        p = resetax.apply_updates(p, updates, state)
    assert bool(state.did_reset) and int(state.num_resets) == 1
    # Exact helper: bit for bit.
    for got, want in zip(jax.tree.leaves(p), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # optax.apply_updates: within one ulp of the larger of checkpoint and pre-reset params.
    for got, want, prev in zip(jax.tree.leaves(plain), jax.tree.leaves(params),
                               jax.tree.leaves(before), strict=True):
        ulp = np.spacing(np.maximum(np.abs(want), np.abs(prev)).astype(np.float32))
        assert (np.abs(np.asarray(got) - np.asarray(want)) <= ulp).all()


# --------------------------------------------------------------------------- checkpoint policy

# Each row: factory kwargs, scripted values, expected active flags, expected checkpoint (as the
# step index whose params it holds: params at step t equal t) and expected best values.
NAN, INF = float("nan"), float("inf")
POLICY_TABLE = {
    "min_adaptive": (
        dict(patience=2), [5, 3, 4, 4, 2, NAN, 6, 1],
        "FFFTTTTT", [0, 1, 1, 1, 4, 4, 4, 7], [5, 3, 3, 3, 2, 2, 2, 1]),
    "min_frozen": (
        dict(patience=2, adaptive=False), [5, 3, 4, 4, 2, NAN, 6, 1],
        "FFFTTTTT", [0, 1, 1, 1, 1, 1, 1, 1], [5, 3, 3, 3, 2, 2, 2, 1]),
    "max_mode": (
        dict(patience=1, mode="max"), [0.1, 0.5, 0.4, 0.6, NAN, 0.6],
        "FFTTTT", [0, 1, 1, 3, 3, 3], [0.1, 0.5, 0.5, 0.6, 0.6, 0.6]),
    "min_delta": (
        dict(patience=3, min_delta=0.5), [5, 4.6, 4.4, 4.0, 4.0, 4.0, 3.0],
        "FFFFFTT", [0, 0, 2, 2, 2, 2, 6], [5, 5, 4.4, 4.4, 4.4, 4.4, 3.0]),
    "no_patience_adaptive": (
        dict(patience=None), [NAN, NAN, 2, 3, 1],
        "TTTTT", [0, 0, 2, 2, 4], [INF, INF, 2, 2, 1]),
    "no_patience_frozen": (
        dict(patience=None, adaptive=False), [NAN, NAN, 2, 3, 1],
        "TTTTT", [0, 0, 0, 0, 0], [INF, INF, 2, 2, 1]),
    # Patience counts toward a checkpoint only once a measurement has selected one.
    "zero_patience": (
        dict(patience=0), [NAN, 3, 2],
        "FTT", [0, 1, 2], [INF, 3, 2]),
    "only_nan": (
        dict(patience=2), [NAN, NAN, NAN, NAN],
        "FFFF", [0, 0, 0, 0], [INF, INF, INF, INF]),
    "late_first_value": (
        dict(patience=2), [NAN, NAN, NAN, 4, 5],
        "FFFFF", [0, 0, 0, 3, 3], [INF, INF, INF, 4, 4]),
    "late_first_value_then_patience": (
        dict(patience=1), [NAN, NAN, 4, 5],
        "FFFT", [0, 0, 2, 2], [INF, INF, 4, 4]),
}


@pytest.mark.parametrize("name", list(POLICY_TABLE))
def test_checkpoint_policy(name):
    kwargs, values, active, checkpoint, best = POLICY_TABLE[name]
    tx = resetax.stochastic_resetting(optax.sgd(1.0), 0.0, key=0, **kwargs)
    params = jnp.zeros([])
    state = tx.init(params)
    got_active, got_checkpoint, got_best, got_count = [], [], [], []
    for value in values:
        updates, state = tx.update(-jnp.ones([]), state, params, value=value)
        params = optax.apply_updates(params, updates)  # params at step t equal t
        got_active.append("T" if state.active else "F")
        got_checkpoint.append(float(state.checkpoint))
        got_best.append(float(state.best_value))
        got_count.append(int(state.num_values))
    assert "".join(got_active) == active
    assert got_count == np.cumsum(np.isfinite(values)).tolist()
    assert got_checkpoint == checkpoint
    signed_inf = -INF if kwargs.get("mode") == "max" else INF
    np.testing.assert_allclose(got_best, [signed_inf if b == INF else b for b in best], rtol=1e-6)


def test_value_as_traced_array_and_checkpoint_updated_flag():
    tx = resetax.stochastic_resetting(optax.sgd(1.0), 0.0, key=0, patience=5)
    update = jax.jit(tx.update)
    params = jnp.zeros([])
    state = tx.init(params)
    flags = []
    for value in [1.0, 2.0, 0.5, NAN]:
        updates, state = update(-jnp.ones([]), state, params, value=jnp.float32(value))
        params = optax.apply_updates(params, updates)
        flags.append(bool(state.checkpoint_updated))
    assert flags == [True, False, True, False]
    assert int(state.steps_since_best) == 1


# --------------------------------------------------------------------------- inner state


def _momentum_run(reset_inner_state):
    schedule = optax.linear_schedule(0.1, 0.0, 100)
    inner = optax.sgd(schedule, momentum=0.9)
    reset_at = 6
    tx = resetax.stochastic_resetting(
        inner, lambda count: jnp.where(count == reset_at, 1.0, 0.0), key=0,
        reset_inner_state=reset_inner_state)
    params = jnp.array([1.0, -2.0])
    state, inner_state = tx.init(params), inner.init(params)
    history = []
    for t in range(reset_at + 1):
        grads = jnp.array([0.3, 1.0]) * (t + 1)
        history.append((params, inner_state))
        value = 0.0 if t == 3 else NAN  # the checkpoint is taken at step 3
        updates, state = tx.update(grads, state, params, value=value)
        _, inner_state = inner.update(grads, inner_state, params)
        params = resetax.apply_updates(params, updates, state)
    return params, state, history, inner_state


def test_reset_inner_state_restores_momentum_not_schedule():
    params, state, history, inner_after = _momentum_run(reset_inner_state=True)
    assert bool(state.did_reset)
    params_at_3, inner_at_3 = history[3]
    np.testing.assert_array_equal(params, params_at_3)
    trace = state.inner_state[0].trace
    np.testing.assert_array_equal(trace, inner_at_3[0].trace)
    assert float(jnp.abs(trace - inner_after[0].trace).max()) > 0.1
    assert int(state.inner_state[-1].count) == 7  # the schedule kept counting


def test_inner_state_continues_without_reset_inner_state():
    params, state, history, inner_after = _momentum_run(reset_inner_state=False)
    assert bool(state.did_reset)
    np.testing.assert_array_equal(params, history[3][0])
    np.testing.assert_allclose(state.inner_state[0].trace, inner_after[0].trace, rtol=1e-6)
    assert isinstance(state.checkpoint_inner_state, optax.EmptyState)


def test_reset_inner_state_with_mask_restores_only_masked_momentum():
    params = {"reset": jnp.ones(2), "keep": jnp.ones(2)}
    inner = optax.sgd(0.1, momentum=0.9)
    tx = resetax.stochastic_resetting(
        inner, lambda c: jnp.where(c == 3, 1.0, 0.0), key=0, reset_inner_state=True,
        mask={"reset": True, "keep": False})
    state, inner_state = tx.init(params), inner.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(4):
        updates, state = tx.update(grads, state, params, value=jnp.nan)
        _, inner_state = inner.update(grads, inner_state, params)
        params = resetax.apply_updates(params, updates, state)
    assert bool(state.did_reset)
    np.testing.assert_array_equal(state.inner_state[0].trace["reset"], jnp.zeros(2))
    np.testing.assert_allclose(state.inner_state[0].trace["keep"], inner_state[0].trace["keep"])
    assert isinstance(state.checkpoint_inner_state[0].trace["keep"], optax.MaskedNode)


# --------------------------------------------------------------------------- masks


@pytest.mark.parametrize("mask_kind", ["tree", "prefix", "callable"])
def test_masked_leaves_never_reset(mask_kind):
    params = {"head": {"w": jnp.ones(3), "b": jnp.ones(1)}, "body": {"w": jnp.ones(4)}}
    mask = {
        "tree": {"head": {"w": True, "b": True}, "body": {"w": False}},
        "prefix": {"head": True, "body": False},
        "callable": lambda p: {"head": True, "body": jax.tree.map(lambda _: False, p["body"])},
    }[mask_kind]
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.5, key=0, mask=mask)
    state = tx.init(params)
    assert isinstance(state.checkpoint["body"]["w"], optax.MaskedNode)
    update = jax.jit(tx.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(20):
        updates, state = update(grads, state, params, value=jnp.nan)
        params = resetax.apply_updates(params, updates, state)
    assert int(state.num_resets) > 0
    np.testing.assert_allclose(params["body"]["w"], jnp.full(4, 1.0 - 20 * 0.1), rtol=1e-5)
    # The head is back at its checkpoint (1.0) after each reset, so it never travelled far.
    assert float(params["head"]["w"][0]) > 1.0 - 20 * 0.1 + 0.05


def test_mask_structure_mismatch_raises():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.5, key=0, mask={"a": True, "c": False})
    with pytest.raises(ValueError, match="mask"):
        tx.init({"a": jnp.ones(1), "b": jnp.ones(1)})


@pytest.mark.parametrize("mask", [
    {"a": False, "b": {"c": False}},
    False,  # a prefix of every tree
    lambda p: jax.tree.map(lambda _: False, p),
    {"a": False, "b": True},  # True only on a subtree without leaves
])
def test_mask_that_resets_nothing_raises_at_init(mask):
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.5, key=0, mask=mask)
    params = {"a": jnp.ones(2), "b": {"c": jnp.ones(3)}}
    if isinstance(mask, dict) and mask["b"] is True:
        params = {"a": jnp.ones(2), "b": {}}
    with pytest.raises(ValueError, match="mask must be True on at least one"):
        tx.init(params)


# --------------------------------------------------------------------------- model state


def test_reset_model_state_snapshots_and_restores():
    tx = resetax.stochastic_resetting(
        optax.sgd(1.0), lambda c: jnp.where(c == 4, 1.0, 0.0), key=0, patience=1)
    params = jnp.zeros([])
    state = tx.init(params)
    model_state = {"mean": jnp.zeros(2)}
    checkpoint = resetax.init_model_state_checkpoint(model_state)
    for t, value in enumerate([3.0, 1.0, 2.0, 2.0, 2.0]):
        updates, state = tx.update(-jnp.ones([]), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        new_model_state = {"mean": jnp.full(2, t + 1.0)}  # the forward pass at step t
        model_state, checkpoint = resetax.reset_model_state(
            model_state, new_model_state, checkpoint, state)
    # The best value was measured at step 1, with params 1 and the model state before step 1.
    assert bool(state.did_reset)
    assert float(params) == 1.0
    np.testing.assert_array_equal(model_state["mean"], jnp.full(2, 1.0))


# --------------------------------------------------------------------------- non-finite rollback


def _poisoned_run(reset_inner_state, *, poison_at=5, best_at=2, num_steps=7):
    """Momentum SGD on a quadratic; the gradient of step ``poison_at`` is NaN.

    The only finite validation value is measured at step ``best_at``, so that step's params are
    the checkpoint. Patience is long: resetting never activates, and ``reset_prob=1`` shows that
    the rollback does not depend on it.
    """
    inner = optax.sgd(optax.linear_schedule(0.1, 0.05, 100), momentum=0.9)
    tx = resetax.stochastic_resetting(inner, 1.0, key=0, patience=1000, reset_on_nonfinite=True,
                                      reset_inner_state=reset_inner_state)
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    history = []
    for t in range(num_steps):
        grads = jax.tree.map(lambda p, t=t: 2 * p + t, params)
        if t == poison_at:
            grads["w"] = grads["w"].at[1].set(jnp.nan)
        history.append((params, state))
        value = 1.0 if t == best_at else float("nan")
        updates, state = update(grads, state, params, value=value)
        plain = optax.apply_updates(params, updates)
        params = resetax.apply_updates(params, updates, state)
    return params, plain, state, history


@pytest.mark.parametrize("reset_inner_state", [False, True])
def test_nonfinite_update_rolls_back_to_checkpoint(reset_inner_state):
    poison_at, best_at = 5, 2
    params, plain, state, history = _poisoned_run(reset_inner_state, poison_at=poison_at,
                                                  best_at=best_at, num_steps=poison_at + 1)
    best_params, best_state = history[best_at]
    before = history[poison_at][0]
    assert bool(state.did_reset) and not bool(state.active)
    assert int(state.num_nonfinite_resets) == 1 and int(state.num_resets) == 0
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(best_params), strict=True):
        np.testing.assert_array_equal(got, want)  # resetax.apply_updates: bit for bit
    for got, want, prev in zip(jax.tree.leaves(plain), jax.tree.leaves(best_params),
                               jax.tree.leaves(before), strict=True):
        ulp = np.spacing(np.maximum(np.abs(want), np.abs(prev)).astype(np.float32))
        assert (np.abs(np.asarray(got) - np.asarray(want)) <= ulp).all()
    trace = state.inner_state[0].trace
    # The momentum that produced a NaN update is never kept: back to the checkpoint's, or to
    # inner.init's (zeros) when the checkpoint's was not stored.
    want_trace = best_state.inner_state[0].trace if reset_inner_state else jax.tree.map(
        jnp.zeros_like, trace)
    for got, want in zip(jax.tree.leaves(trace), jax.tree.leaves(want_trace), strict=True):
        assert bool(jnp.isfinite(got).all())
        np.testing.assert_array_equal(got, want)
    assert float(jnp.abs(best_state.inner_state[0].trace["w"]).max()) > 0  # not zeros already
    assert int(state.inner_state[-1].count) == poison_at + 1  # the schedule kept counting


def test_nonfinite_rollback_only_when_asked():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.0, key=0)
    params = jnp.ones(2)
    state = tx.init(params)
    updates, state = tx.update(jnp.array([1.0, jnp.inf]), state, params, value=jnp.nan)
    assert not bool(state.did_reset) and int(state.num_nonfinite_resets) == 0
    assert not bool(jnp.isfinite(resetax.apply_updates(params, updates, state)).all())


def test_overflowing_params_roll_back_too():
    # Finite updates whose sum with the params overflows float32 also roll back.
    tx = resetax.stochastic_resetting(optax.sgd(1.0), 0.0, key=0, reset_on_nonfinite=True)
    params = jnp.array([3e38, 1.0])
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(jnp.array([-3e38, 0.0]), state, params, value=jnp.nan)
    assert int(state.num_nonfinite_resets) == 1
    np.testing.assert_array_equal(resetax.apply_updates(params, updates, state), params)


def _spiky_quadratic_run(reset_on_nonfinite, num_steps=400):
    """SGD with momentum in a chain on a quadratic, with gradients overflowing every 50 steps."""
    target = jnp.array([3.0, -1.0, 0.5])
    tx = optax.chain(
        optax.add_decayed_weights(1e-4),
        resetax.stochastic_resetting(optax.sgd(0.02, momentum=0.9), 0.0, key=0, patience=100,
                                     reset_on_nonfinite=reset_on_nonfinite))

    def step(carry, t):
        params, state = carry
        value, grads = jax.value_and_grad(lambda p: jnp.sum((p - target) ** 2))(params)
        grads = jnp.where(t % 50 == 25, grads * jnp.inf, grads)  # a loss spike: inf gradients
        updates, state = tx.update(grads, state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        return (params, state), jnp.isfinite(params).all()

    params = jnp.zeros(3)
    (params, state), finite = jax.jit(lambda c: jax.lax.scan(step, c, jnp.arange(num_steps)))(
        (params, tx.init(params)))
    return params, resetax.find_resetting_state(state), np.asarray(finite), target


def test_nonfinite_rollback_recovers_in_chain_under_scan():
    params, state, finite, target = _spiky_quadratic_run(reset_on_nonfinite=True)
    assert finite.all()
    assert int(state.num_nonfinite_resets) == 8 and int(state.num_resets) == 0
    np.testing.assert_allclose(params, target, atol=1e-2)
    # Without the rollback the first spike poisons the params for good.
    params, state, finite, _ = _spiky_quadratic_run(reset_on_nonfinite=False)
    assert not finite[25:].any() and int(state.num_nonfinite_resets) == 0


def test_nonfinite_rollback_with_mask_keeps_unmasked_leaves_in_place():
    tx = resetax.stochastic_resetting(optax.sgd(0.1, momentum=0.9), 0.0, key=0,
                                      mask={"head": True, "body": False},
                                      reset_on_nonfinite=True)
    params = {"head": jnp.ones(2), "body": jnp.full(3, 2.0)}
    state = tx.init(params)  # the checkpoint: the first params
    update = jax.jit(tx.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        updates, state = update(grads, state, params, value=jnp.nan)
        params = resetax.apply_updates(params, updates, state)
    before = params
    # The non-finite entry is on a leaf that never resets: it still triggers the rollback.
    updates, state = update({"head": jnp.ones(2), "body": jnp.array([1.0, jnp.nan, 1.0])},
                            state, params, value=jnp.nan)
    params = resetax.apply_updates(params, updates, state)
    assert bool(state.did_reset) and int(state.num_nonfinite_resets) == 1
    np.testing.assert_array_equal(params["head"], jnp.ones(2))  # back to the checkpoint
    np.testing.assert_array_equal(params["body"], before["body"])  # left where it was
    np.testing.assert_array_equal(optax.apply_updates(before, updates)["body"], before["body"])
    assert bool(jnp.isfinite(state.inner_state[0].trace["body"]).all())


def test_nonfinite_rollback_resets_model_state():
    tx = resetax.stochastic_resetting(optax.sgd(1.0), 0.0, key=0, patience=1000,
                                      reset_on_nonfinite=True)
    params = jnp.zeros(2)
    state = tx.init(params)
    model_state = {"mean": jnp.zeros(2)}
    checkpoint = resetax.init_model_state_checkpoint(model_state)
    for t, value in enumerate([3.0, 1.0, 2.0, float("nan")]):
        grads = jnp.full(2, jnp.nan) if t == 3 else -jnp.ones(2)
        updates, state = tx.update(grads, state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        new_model_state = {"mean": jnp.full(2, jnp.nan if t == 3 else t + 1.0)}  # forward pass
        model_state, checkpoint = resetax.reset_model_state(
            model_state, new_model_state, checkpoint, state)
    # The best value was measured at step 1: params 1 and the model state before step 1.
    assert bool(state.did_reset) and int(state.num_nonfinite_resets) == 1
    np.testing.assert_array_equal(params, jnp.ones(2))
    np.testing.assert_array_equal(model_state["mean"], jnp.full(2, 1.0))


# --------------------------------------------------------------------------- set_checkpoint


def test_set_checkpoint_in_chain():
    tx = optax.chain(optax.clip(10.0), resetax.stochastic_resetting(
        optax.sgd(0.1, momentum=0.5), 1.0, key=0, reset_inner_state=True))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.nan)
    inner = optax.sgd(0.1, momentum=0.5).init(params)
    inner = (inner[0]._replace(trace={"w": jnp.full(2, 7.0)}),) + tuple(inner[1:])
    state = resetax.set_checkpoint(state, {"w": jnp.array([4.0, 5.0])}, inner)
    updates, state = tx.update({"w": jnp.ones(2)}, state, params, value=jnp.nan)
    params = resetax.apply_updates(params, updates, state)
    np.testing.assert_array_equal(params["w"], [4.0, 5.0])
    np.testing.assert_array_equal(
        resetax.find_resetting_state(state).inner_state[0].trace["w"], [7.0, 7.0])


def test_set_checkpoint_errors():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 1.0, key=0)
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(ValueError, match="inner_state"):
        resetax.set_checkpoint(state, {"w": jnp.ones(2)}, optax.sgd(0.1).init({"w": jnp.ones(2)}))
    with pytest.raises(ValueError, match="params"):
        resetax.set_checkpoint(state, {"v": jnp.ones(2)})
    with pytest.raises(ValueError, match="exactly one ResettingState"):
        resetax.find_resetting_state((state, state))


# --------------------------------------------------------------------------- optax checklist


def _quadratic_run(tx, num_steps=300):
    target = jnp.array([3.0, -1.0, 0.5])
    loss = lambda p: jnp.sum((p - target) ** 2)  # noqa: E731
    params = jnp.zeros(3)

    def step(carry, _):
        params, state = carry
        value, grads = jax.value_and_grad(loss)(params)
        updates, state = tx.update(grads, state, params, value=value)
        return (resetax.apply_updates(params, updates, state), state), None

    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), length=num_steps)
    return params, state, target


def test_converges_inside_scan_on_quadratic():
    tx = resetax.stochastic_resetting(optax.sgd(0.05), 0.05, key=0, patience=None)
    params, state, target = jax.jit(_quadratic_run, static_argnums=(0, 1))(tx)
    assert int(state.num_resets) > 5
    np.testing.assert_allclose(params, target, atol=1e-3)


def test_works_in_chain():
    tx = optax.chain(
        optax.clip_by_global_norm(10.0),
        resetax.stochastic_resetting(optax.sgd(0.05), 0.05, key=0, patience=None))
    params, state, target = _quadratic_run(tx)
    assert int(resetax.find_resetting_state(state).num_resets) > 5
    np.testing.assert_allclose(params, target, atol=1e-3)


def test_inject_hyperparams_traced_reset_prob():
    tx = optax.inject_hyperparams(resetax.stochastic_resetting, static_args=("key", "patience"))(
        optax.sgd(0.1), reset_prob=0.0, key=0, patience=None)
    params = jnp.zeros(2)
    state = tx.init(params)
    traces = []

    @jax.jit
    def update(state, params):
        traces.append(None)
        return tx.update(jnp.ones(2), state, params, value=jnp.nan)

    for _ in range(3):
        updates, state = update(state, params)
        params = resetax.apply_updates(params, updates, state)
    assert int(state.inner_state.num_resets) == 0
    state.hyperparams["reset_prob"] = jnp.asarray(1.0, jnp.float32)
    updates, state = update(state, params)
    params = resetax.apply_updates(params, updates, state)
    assert bool(state.inner_state.did_reset)
    np.testing.assert_array_equal(params, jnp.zeros(2))
    assert len(traces) == 1


def test_multisteps():
    tx = optax.MultiSteps(
        resetax.stochastic_resetting(optax.sgd(0.1), 1.0, key=0, patience=1), every_k_schedule=2)
    params = jnp.zeros(2)
    state = tx.init(params)
    seen = []
    for value in [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]:
        updates, state = tx.update(jnp.ones(2), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        seen.append(float(params[0]))
    # Inner updates happen every 2nd call: a step, then patience runs out and it resets to 0.
    np.testing.assert_allclose(seen, [0.0, -0.1, -0.1, 0.0, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("reset_on_nonfinite", [False, True])
def test_optax_masked_wrapper(reset_on_nonfinite):
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    tx = optax.masked(resetax.stochastic_resetting(optax.sgd(0.1), 1.0, key=0,
                                                   reset_on_nonfinite=reset_on_nonfinite),
                      {"a": True, "b": False})
    state = tx.init(params)
    for _ in range(3):
        grads = {"a": jnp.ones(2), "b": jnp.ones(2)}
        updates, state = tx.update(grads, state, params, value=jnp.nan)
        params = resetax.apply_updates(params, updates, state)
    np.testing.assert_array_equal(params["a"], jnp.zeros(2))  # reset every step
    np.testing.assert_allclose(params["b"], jnp.full(2, 3.0))  # masked out: raw gradients applied


def test_tree_map_params():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = resetax.stochastic_resetting(optax.sgd(0.1, momentum=0.9), 0.1, key=0,
                                      reset_inner_state=True)
    state = tx.init(params)
    mapped = optax.tree_map_params(tx, lambda p: p.shape, state,
                                   transform_non_params=lambda _: None)
    assert mapped.checkpoint == {"w": (2, 3), "b": (3,)}
    assert mapped.inner_state[0].trace == {"w": (2, 3), "b": (3,)}
    assert mapped.count is None and mapped.key is None


def test_extra_args_ignored_without_recompiling():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.5, key=0)
    params = jnp.zeros(2)
    state = tx.init(params)
    traces = []

    @jax.jit
    def update(state, value, extra):
        traces.append(None)
        return tx.update(jnp.ones(2), state, params, value=value, unused_extra=extra)

    for i in range(3):
        _, state = update(state, jnp.float32(i), jnp.ones(4) * i)
    assert len(traces) == 1


@pytest.mark.parametrize("reset_on_nonfinite", [False, True])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
def test_dtypes_preserved_and_state_stable(dtype, reset_on_nonfinite, enable_x64):
    with enable_x64(dtype == jnp.float64):
        params = {"w": jnp.ones(4, dtype), "b": jnp.zeros(2, dtype)}
        tx = resetax.stochastic_resetting(optax.sgd(0.1, momentum=0.9), 0.5, key=0,
                                          patience=1, reset_inner_state=True,
                                          reset_on_nonfinite=reset_on_nonfinite)
        state = tx.init(params)
        grads = jax.tree.map(jnp.ones_like, params)
        updates, new_state = jax.jit(tx.update)(grads, state, params, value=1.0)
        for u in jax.tree.leaves(updates):
            assert u.dtype == dtype
        spec = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), s)  # noqa: E731
        assert jax.tree.structure(state) == jax.tree.structure(new_state)
        assert spec(state) == spec(new_state)
        for c in jax.tree.leaves(new_state.checkpoint):
            assert c.dtype == dtype

        @jax.jit
        def maybe_update(pred, state):
            return jax.lax.cond(pred, lambda s: tx.update(grads, s, params, value=2.0)[1],
                                lambda s: s, state)

        assert spec(maybe_update(True, state)) == spec(state)


def test_state_memory_is_one_params_copy():
    params = {"w": jnp.ones((100, 50)), "b": jnp.ones(50)}
    nbytes = lambda t: sum(x.nbytes for x in jax.tree.leaves(t))  # noqa: E731
    inner = optax.sgd(0.1, momentum=0.9)
    for adaptive in (True, False):
        state = resetax.stochastic_resetting(inner, 0.1, key=0, patience=10,
                                             adaptive=adaptive).init(params)
        overhead = nbytes(state) - nbytes(inner.init(params)) - nbytes(params)
        assert 0 <= overhead < 100  # a few scalars and the key
    state = resetax.stochastic_resetting(inner, 0.1, key=0, reset_inner_state=True).init(params)
    overhead = nbytes(state) - 2 * nbytes(inner.init(params)) - nbytes(params)
    assert 0 <= overhead < 100


# --------------------------------------------------------------------------- data parallel

NUM_DEVICES = 8
DP_STEPS = 2000
# Every 97th update from the 40th has a NaN in one training example (on one replica), so the
# replicas must also agree on non-finite rollbacks.
DP_NUM_POISONED = len(range(40, DP_STEPS, 97))


def _regression_problem():
    key_x, key_w, key_n, key_v = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(key_x, (64, 48))
    w_true = jax.random.normal(key_w, (48,))
    y = x @ w_true + 2.0 * jax.random.normal(key_n, (64,))  # noisy training targets
    x_val = jax.random.normal(key_v, (64, 48))
    return x, y, x_val, x_val @ w_true


def _dp_tx():
    return resetax.stochastic_resetting(optax.sgd(0.01), 0.05, key=42, patience=20,
                                        reset_on_nonfinite=True)


def _poison_row(row, replica=None):
    """Sets ``x[row, 0]`` to NaN at the poisoned steps (only on ``replica`` under pmap)."""

    def poison(x, count):
        bad = (count >= 40) & (count % 97 == 40)
        if replica is not None:
            bad &= jax.lax.axis_index("data") == replica
        return jnp.where(bad, x.at[row, 0].set(jnp.nan), x)

    return poison


def _dp_step(mean, poison):
    """One training step; ``mean`` averages a per-shard quantity over the data-parallel axis."""
    tx = _dp_tx()

    def step(carry, batch):
        params, state = carry
        x, y, x_val, y_val = batch
        x = poison(x, state.count)
        grads = mean(jax.grad(lambda w: jnp.mean((x @ w - y) ** 2))(params))
        value = mean(jnp.mean((x_val @ params - y_val) ** 2))
        updates, state = tx.update(grads, state, params, value=value)
        return (resetax.apply_updates(params, updates, state), state), state.did_reset

    return step


def _dp_run(step, batch, params, state):
    return jax.lax.scan(lambda c, _: step(c, batch), (params, state), length=DP_STEPS)


@pytest.fixture(scope="module")
def single_device_run():
    batch = _regression_problem()
    params = jnp.zeros(48)
    return jax.jit(lambda p, s: _dp_run(_dp_step(lambda v: v, _poison_row(40)), batch, p, s))(
        params, _dp_tx().init(params))


def test_pmap_replicas_identical_and_match_single_device(single_device_run):
    assert jax.device_count() == NUM_DEVICES
    batch = jax.tree.map(lambda a: a.reshape(NUM_DEVICES, -1, *a.shape[1:]), _regression_problem())
    params = jnp.zeros(48)
    state = _dp_tx().init(params)
    replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), t)  # noqa: E731
    # Global row 40 is row 0 of replica 5.
    step = _dp_step(lambda v: jax.lax.pmean(v, "data"), _poison_row(0, replica=5))
    run = jax.pmap(lambda b, p, s: _dp_run(step, b, p, s), axis_name="data")
    (params_dp, state_dp), did_reset_dp = run(batch, replicate(params), replicate(state))
    (params_1, state_1), did_reset_1 = single_device_run
    did_reset_dp = np.asarray(did_reset_dp)
    assert int(state_1.num_resets) > 20
    assert int(state_1.num_nonfinite_resets) == DP_NUM_POISONED
    np.testing.assert_array_equal(state_dp.num_nonfinite_resets, DP_NUM_POISONED)
    assert bool(jnp.isfinite(params_dp).all())
    for replica in range(1, NUM_DEVICES):
        np.testing.assert_array_equal(params_dp[replica], params_dp[0])
        np.testing.assert_array_equal(did_reset_dp[replica], did_reset_dp[0])
    np.testing.assert_array_equal(did_reset_dp[0], np.asarray(did_reset_1))
    np.testing.assert_allclose(params_dp[0], params_1, rtol=1e-4, atol=1e-4)


def test_sharded_jit_matches_single_device(single_device_run):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    data_sharding = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())
    batch = jax.device_put(_regression_problem(), data_sharding)
    params = jax.device_put(jnp.zeros(48), replicated)
    state = jax.device_put(_dp_tx().init(jnp.zeros(48)), replicated)
    run = jax.jit(lambda b, p, s: _dp_run(_dp_step(lambda v: v, _poison_row(40)), b, p, s),
                  out_shardings=(replicated, replicated))
    (params_s, state_s), did_reset_s = run(batch, params, state)
    (params_1, state_1), did_reset_1 = single_device_run
    assert params_s.sharding.is_fully_replicated
    shards = [np.asarray(s.data) for s in params_s.addressable_shards]
    for shard in shards[1:]:
        np.testing.assert_array_equal(shard, shards[0])
    np.testing.assert_array_equal(np.asarray(did_reset_s), np.asarray(did_reset_1))
    assert int(state_s.num_resets) == int(state_1.num_resets)
    assert int(state_s.num_nonfinite_resets) == DP_NUM_POISONED
    np.testing.assert_allclose(params_s, params_1, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- errors


def test_missing_params_raises_optax_message():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.ones(2), state)
    with pytest.raises(ValueError) as err:
        tx.update(jnp.ones(2), state)
    assert str(err.value) == NO_PARAMS_MSG


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reset_prob=-0.1), "reset_prob"),
        (dict(reset_prob=1.5), "reset_prob"),
        (dict(reset_prob=float("nan")), "reset_prob"),
        (dict(reset_prob=True), "reset_prob"),
        (dict(reset_prob=jnp.array(2.0)), "reset_prob"),
        (dict(reset_prob=jnp.array(-1.0)), "reset_prob"),
        (dict(reset_prob=jnp.array(float("nan"))), "reset_prob"),
        (dict(reset_prob=jnp.array([0.5, 0.5])), r"reset_prob .* got an array of shape \(2,\)"),
        (dict(reset_prob="0.1"), "reset_prob"),
        (dict(min_delta=jnp.array(-1.0)), "min_delta"),
        (dict(patience=jnp.array(-1)), "patience"),
        (dict(patience=-1), "patience"),
        (dict(patience=2.5), "patience"),
        (dict(mode="mean"), "mode"),
        (dict(min_delta=-1.0), "min_delta"),
        (dict(mask=["yes"]), "mask"),
        (dict(patience=2**40), r"patience must be None or an integer in \[0, 2147483647\]"),
        (dict(patience=jnp.array(2**31 - 1, jnp.uint32) + 1), "patience"),
        (dict(key=2**64), r"key must be an int seed in \[-2\*\*63"),
        (dict(key=jax.random.split(jax.random.key(0))), r"single jax.random.key .*shape \(2,\)"),
        (dict(key=np.arange(3, dtype=np.uint32)), r"raw key data of shape \(2,\)"),
        (dict(key=np.array([1.5, 2.0])), "key .* dtype float64"),
        (dict(adaptive=jnp.array(1.0)), "adaptive must be a bool .* dtype float32"),
        (dict(reset_prob=lambda count: jnp.full(2, 0.5)),
         r"reset_prob must be a schedule .* returning a real scalar, got .*shape=\(2,\)"),
        (dict(reset_prob=lambda count: [0.5][count]), "reset_prob must be a .* schedule .*"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    args = dict(reset_prob=0.1, key=0) | kwargs
    with pytest.raises(ValueError, match=match):
        resetax.stochastic_resetting(optax.sgd(0.1), **args)


@pytest.mark.parametrize("kwargs", [
    dict(reset_prob=jnp.array(0.5, jnp.bfloat16)),
    dict(reset_prob=jnp.array(0.5, jnp.float16)),
    dict(key=jax.random.PRNGKey(3)),  # raw key data
    dict(key=-1),
    dict(patience=2**31 - 1),
])
def test_accepted_arguments_are_checked_eagerly_and_run(kwargs):
    tx = resetax.stochastic_resetting(optax.sgd(0.1), **(dict(reset_prob=0.1, key=0) | kwargs))
    params = jnp.zeros(2)
    updates, state = jax.jit(tx.update)(jnp.ones(2), tx.init(params), params, value=1.0)
    assert int(state.num_values) == 1


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="inner"):
        resetax.stochastic_resetting(lambda g: g, 0.1, key=0)
    with pytest.raises(TypeError, match=r"got MultiSteps; pass optax.MultiSteps\(...\)"
                                        r".gradient_transformation\(\)"):
        resetax.stochastic_resetting(optax.MultiSteps(optax.sgd(0.1), 2), 0.1, key=0)
    with pytest.raises(TypeError, match="key"):
        resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key="seed")
    with pytest.raises(TypeError, match="reset_inner_state"):
        resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0, reset_inner_state=1)
    with pytest.raises(TypeError, match="reset_on_nonfinite"):
        resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0, reset_on_nonfinite=None)


def test_non_scalar_value_raises():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="value"):
        tx.update(jnp.ones(2), state, jnp.zeros(2), value=jnp.ones(3))


@pytest.mark.parametrize("value", ["0.3", 1 + 2j, True, object()])
def test_a_value_that_is_not_a_real_number_is_one_line_naming_value(value):
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0)
    state = tx.init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"^value must be a real number .*, got ") as err:
        tx.update(jnp.ones(2), state, jnp.zeros(2), value=value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mask, shown", [
    (lambda p: {"w": "no", "b": True}, "'no'"),
    (lambda p: 3, "3"),
    (lambda p: {"w": 1, "b": 0}, "0"),
])
def test_a_callable_mask_must_give_bools(mask, shown):
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 1.0, key=0, mask=mask)
    with pytest.raises(ValueError, match=f"^mask must give a bool for every parameter leaf .*, "
                                         f"got {shown}"):
        tx.init({"w": jnp.ones(2), "b": jnp.ones(2)})


def test_a_callable_mask_of_traced_arrays_under_jit_says_so():
    tx = resetax.stochastic_resetting(
        optax.sgd(0.1), 1.0, key=0, mask=lambda p: {"w": jnp.array(True), "b": jnp.array(False)})
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    assert isinstance(tx.init(params).checkpoint["b"], optax.MaskedNode)  # concrete: accepted
    with pytest.raises(ValueError, match="mask must give a bool .* got a traced array"):
        jax.jit(tx.init)(params)


def test_a_bool_params_leaf_that_may_reset_is_refused_at_init_naming_it():
    params = {"w": jnp.ones(2), "flag": jnp.array(True)}
    tx = resetax.stochastic_resetting(optax.set_to_zero(), 1.0, key=0)
    with pytest.raises(ValueError, match="params leaf 'flag' is a bool array"):
        tx.init(params)
    tx = resetax.stochastic_resetting(optax.set_to_zero(), 1.0, key=0,
                                      mask={"w": True, "flag": False})
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(2), "flag": jnp.array(False)}, state, params,
                               value=jnp.nan)
    assert bool(resetax.apply_updates(params, updates, state)["flag"])


# --------------------------------------------------------------------------- a missing value


def _wrapped(kind, **kwargs):
    """The resetting transform (reset_prob=1), bare or inside an optax wrapper."""
    kwargs = dict(reset_prob=1.0, key=0) | kwargs
    if kind == "inject_hyperparams":
        return optax.inject_hyperparams(resetax.stochastic_resetting, static_args=(
            "inner", "key", "patience"))(optax.sgd(0.1), **kwargs)
    tx = resetax.stochastic_resetting(optax.sgd(0.1), **kwargs)
    if kind == "chain":
        return optax.chain(optax.clip_by_global_norm(10.0), tx)
    if kind == "multisteps":
        return optax.MultiSteps(tx, every_k_schedule=2)
    return tx


WRAPPERS = ["bare", "chain", "inject_hyperparams", "multisteps"]


@pytest.mark.parametrize("kind", WRAPPERS)
@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("value", ["absent", None])
def test_update_without_value_is_one_line_type_error(kind, jit, value):
    tx = _wrapped(kind, patience=5)
    params = jnp.zeros(2)
    state = tx.init(params)
    kwargs = {} if value == "absent" else {"value": value}
    update = jax.jit(lambda s, p: tx.update(jnp.ones(2), s, p, **kwargs)) if jit else (
        lambda s, p: tx.update(jnp.ones(2), s, p, **kwargs))
    with pytest.raises(TypeError) as err:
        update(state, params)
    message = str(err.value).splitlines()[0]
    assert message == resetax.resetting.MISSING_VALUE_MSG
    assert message.startswith("value= is required") and "jnp.nan" in message


@pytest.mark.parametrize("kind", WRAPPERS)
def test_no_finite_value_never_switches_resetting_on(kind):
    """Without a measurement, patience runs out toward nothing: no reset ever, whatever r."""
    tx = _wrapped(kind, patience=2)
    params = jnp.array([1.0, -1.0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(20):
        updates, state = update(jnp.ones(2), state, params, value=jnp.float32(jnp.nan))
        params = resetax.apply_updates(params, updates, state)
    resetting = resetax.find_resetting_state(state)
    assert int(resetting.num_values) == 0 and not bool(resetting.active)
    assert int(resetting.num_resets) == 0
    # The initial params are never returned to: training went on (0.1 per inner update).
    inner_updates = 20 // (2 if kind == "multisteps" else 1)
    np.testing.assert_allclose(params, [1.0 - 0.1 * inner_updates, -1.0 - 0.1 * inner_updates],
                               atol=1e-6)


@pytest.mark.parametrize("kind", WRAPPERS)
def test_first_finite_value_selects_the_checkpoint_resets_return_to(kind):
    tx = _wrapped(kind, patience=2)
    k = 2 if kind == "multisteps" else 1
    params = jnp.array([1.0, -1.0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    measured_at = None
    for step in range(12 * k):
        # One measurement, at the params of inner update 3 (on the mini-step that updates).
        value = jnp.float32(2.0 if step == 4 * k - 1 else jnp.nan)
        if step == 4 * k - 1:
            measured_at = params
        updates, state = update(jnp.ones(2), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
    resetting = resetax.find_resetting_state(state)
    assert int(resetting.num_values) == 1 and float(resetting.best_value) == 2.0
    assert bool(resetting.active) and int(resetting.num_resets) > 0
    np.testing.assert_array_equal(resetting.checkpoint, measured_at)
    np.testing.assert_array_equal(params, measured_at)  # reset_prob=1: back there every step


def test_multisteps_takes_only_the_value_of_the_updating_mini_step():
    """Values passed on accumulation-only mini-steps are dropped, never taken as a best."""
    tx = _wrapped("multisteps", patience=3)
    params = jnp.zeros(2)
    state = tx.init(params)
    update = jax.jit(tx.update)
    best, counts = [], []
    for step in range(16):
        updating = step % 2 == 1  # MultiSteps(k=2) applies the inner update every 2nd call
        # The accumulation-only mini-steps carry values better than every updating one.
        value = jnp.float32(10.0 - step if updating else -100.0 - step)
        updates, state = update(jnp.ones(2), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        resetting = resetax.find_resetting_state(state)
        best.append(float(resetting.best_value))
        counts.append(int(resetting.num_values))
    assert best == [INF if s == 0 else 10.0 - (s if s % 2 else s - 1) for s in range(16)]
    assert counts == [(s + 1) // 2 for s in range(16)]
    assert int(resetting.num_resets) == 0  # each updating value improved: patience never ran out


def test_multisteps_values_on_other_mini_steps_only_never_reset():
    tx = _wrapped("multisteps", patience=1)
    params = jnp.array([1.0, 2.0])
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(12):
        value = jnp.float32(jnp.nan if step % 2 else 1.0)  # measured on the wrong mini-steps
        updates, state = update(jnp.ones(2), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
    resetting = resetax.find_resetting_state(state)
    assert int(resetting.num_values) == 0 and int(resetting.num_resets) == 0
    assert not bool(resetting.active)
    np.testing.assert_allclose(params, [1.0 - 0.6, 2.0 - 0.6], rtol=1e-6)


def test_multisteps_mini_steps_leave_the_model_state_checkpoint_alone():
    """The flags of the last update, still set on the next accumulation-only mini-step, must not
    snapshot or restore the model state a second time (the snapshot would no longer belong with
    the checkpointed params)."""
    tx = _wrapped("multisteps", patience=2)
    params = jnp.array([1.0])
    state = tx.init(params)
    checkpoint = resetax.init_model_state_checkpoint(jnp.float32(-1.0))
    update = jax.jit(tx.update)
    # Calls 1, 3, 5, ... apply the accumulated gradients; improvements at calls 1 and 3, then
    # patience runs out and every later update resets (reset_prob=1).
    values = {1: 3.0, 3: 2.0, 5: 4.0, 7: 4.0, 9: 4.0, 11: 4.0}
    snapshot_of, restored = None, []
    for call in range(12):
        model_state = jnp.float32(call)  # the model state this call receives, told apart by call
        new_model_state = jnp.float32(100 + call)  # what this call's forward pass made of it
        value = jnp.float32(values.get(call, jnp.nan))
        updates, state = update(jnp.ones(1), state, params, value=value)
        params = resetax.apply_updates(params, updates, state)
        out, checkpoint = resetax.reset_model_state(model_state, new_model_state, checkpoint,
                                                    state)
        resetting = resetax.find_resetting_state(state)
        updating = call % 2 == 1
        if updating and bool(resetting.checkpoint_updated):
            snapshot_of = call
        assert float(checkpoint.model_state) == (-1.0 if snapshot_of is None else snapshot_of)
        if updating and bool(resetting.did_reset):
            restored.append(call)
            assert float(out) == snapshot_of
        else:  # no reset at this call: the forward pass's state goes on
            assert float(out) == 100 + call
    assert snapshot_of == 3 and restored == [7, 9, 11]


def test_float32_nan_for_no_measurement_compiles_the_step_once():
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0, patience=2)
    params = jnp.zeros(2)
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(params, state, value):
        traces.append(None)
        updates, state = tx.update(jnp.ones(2), state, params, value=value)
        return resetax.apply_updates(params, updates, state), state

    measured = jnp.mean(jnp.ones(3))  # what an evaluation returns: a float32 device array
    for value in [jnp.float32(jnp.nan), measured, np.float32(np.nan), measured]:
        params, state = step(params, state, value)
    assert len(traces) == 1


def test_import_does_not_pull_heavy_dependencies():
    import subprocess
    import sys

    code = ("import sys, resetax; heavy = [m for m in ('flax', 'tensorflow', "
            "'tensorflow_datasets') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
