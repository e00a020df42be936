"""Tests of resetax.plasticity: reset_to_init, shrink_and_perturb, recycle_dormant_units."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

# optax has no public name for its "params are required" message.
from optax._src.base import NO_PARAMS_MSG

import resetax


def _keys(state):
    """The (trigger, init) keys an update draws from ``state.key``: split off as documented."""
    _, trigger_key, init_key = jax.random.split(jax.random.wrap_key_data(state.key), 3)
    return trigger_key, init_key


def _assert_bits(got, want):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _assert_close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


def _grads(i, params):
    """Gradients that do not depend on the params, so that runs can be compared leaf by leaf."""
    return jax.tree.map(lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)
                                          * (i + 1)), params)


PARAMS = {"body": {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)},
          "head": {"w": jnp.linspace(2.0, 3.0, 8).reshape(4, 2), "b": jnp.ones(2)}}


def _normal_init(key):
    return jax.tree.map(
        lambda p, k: 0.5 * jax.random.normal(k, p.shape), PARAMS,
        jax.tree.unflatten(jax.tree.structure(PARAMS), list(jax.random.split(key, 3))))


# --------------------------------------------------------------------------- reset_to_init


@pytest.mark.parametrize("mask", [r"^head/", {"body": False, "head": True},
                                  lambda p: {"body": False, "head": True}])
def test_reset_to_init_resets_exactly_the_chosen_leaves_and_their_moments(mask):
    inner = optax.adam(0.1)
    tx = resetax.reset_to_init(inner, _normal_init, key=3, mask=mask, every=3)
    update, plain_update = jax.jit(tx.update), jax.jit(inner.update)
    params, plain = PARAMS, PARAMS
    state, plain_state = tx.init(params), inner.init(PARAMS)
    drawn = []
    for i in range(6):
        _, init_key = _keys(state)
        updates, state = update(_grads(i, params), state, params)
        params = resetax.apply_reset_updates(params, updates, state)
        plain_updates, plain_state = plain_update(_grads(i, plain), plain_state, plain)
        plain = optax.apply_updates(plain, plain_updates)
        assert bool(state.did_reset) == (i % 3 == 2)
        # The body never resets: plain Adam's values (to rounding: another compiled program).
        _assert_close(params["body"]["w"], plain["body"]["w"])
        _assert_close(state.inner_state[0].mu["body"]["w"], plain_state[0].mu["body"]["w"])
        if state.did_reset:
            fresh = _normal_init(init_key)["head"]
            drawn.append(np.asarray(params["head"]["w"]))
            for name in ("w", "b"):
                _assert_bits(params["head"][name], fresh[name])
                _assert_bits(state.inner_state[0].mu["head"][name], 0.0)
                _assert_bits(state.inner_state[0].nu["head"][name], 0.0)
            assert int(state.inner_state[0].count) == i + 1  # Adam's counter keeps counting
            plain = {"body": plain["body"], "head": params["head"]}
            plain_state = (plain_state[0]._replace(
                mu={**plain_state[0].mu, "head": jax.tree.map(jnp.zeros_like, fresh)},
                nu={**plain_state[0].nu, "head": jax.tree.map(jnp.zeros_like, fresh)}),
                *plain_state[1:])
        else:
            for name in ("w", "b"):
                _assert_close(params["head"][name], plain["head"][name])
    assert int(state.num_resets) == 2
    # The two resets drew different values.
    assert not np.array_equal(drawn[0], drawn[1])


def test_reset_without_inner_state_reset_keeps_moments():
    tx = resetax.reset_to_init(optax.adam(0.1), _normal_init, key=0, mask="head", every=1,
                               reset_inner_state=False)
    state = tx.init(PARAMS)
    _, state = tx.update(_grads(0, PARAMS), state, PARAMS)
    assert bool(state.did_reset)
    assert (np.abs(state.inner_state[0].mu["head"]["w"]) > 0).all()


def _trigger_history(tx, num_steps):
    params = jnp.zeros(3)

    def step(carry, _):
        params, state = carry
        updates, state = tx.update(jnp.ones(3), state, params)
        return (resetax.apply_reset_updates(params, updates, state), state), state.did_reset

    (_, state), did_reset = jax.jit(lambda s: jax.lax.scan(step, (params, s), length=num_steps))(
        tx.init(params))
    return np.asarray(did_reset), state


def _zeros(key):
    return jnp.zeros(3)


@pytest.mark.parametrize("make", [
    lambda **kw: resetax.reset_to_init(optax.sgd(0.1), _zeros, **kw),
    lambda **kw: resetax.shrink_and_perturb(optax.sgd(0.1), _zeros, shrink=0.5, perturb=0.1,
                                            **kw),
])
def test_random_trigger_count_is_binomial_and_periodic_trigger_is_exact(make):
    r, n = 0.02, 10_000
    did_reset, state = _trigger_history(make(key=5, reset_prob=r), n)
    count = did_reset.sum()
    assert count == int(state.num_resets)
    assert abs(count - n * r) < 4 * math.sqrt(n * r * (1 - r)), count
    # Independent steps: the count of consecutive pairs is Binomial(n - 1, r^2) too.
    pairs = (did_reset[1:] & did_reset[:-1]).sum()
    assert abs(pairs - (n - 1) * r**2) < 4 * math.sqrt((n - 1) * r**2) + 1, pairs
    did_reset, state = _trigger_history(make(key=5, every=7), 100)
    np.testing.assert_array_equal(np.flatnonzero(did_reset), np.arange(6, 100, 7))
    assert int(state.num_resets) == 14
    # A schedule switches resets off, a traced zero too.
    did_reset, _ = _trigger_history(make(key=5, reset_prob=lambda count: 0.0 * count), 200)
    assert not did_reset.any()


def test_fresh_values_follow_the_initializer():
    n, std = 20_000, 2.0
    init = resetax.init_from_initializers(jax.nn.initializers.normal(std), jnp.zeros(n))
    tx = resetax.reset_to_init(optax.sgd(0.1), init, key=11, every=1)
    params = jnp.full(n, 7.0)
    state = tx.init(params)
    draws = []
    for _ in range(2):
        updates, state = tx.update(jnp.ones(n), state, params)
        draws.append(np.asarray(resetax.apply_reset_updates(params, updates, state)))
    for x in draws:
        assert abs(x.mean()) < 4 * std / math.sqrt(n)
        # The sample variance of n normals has a standard deviation of std^2 sqrt(2 / n).
        assert abs(x.var() - std**2) < 4 * std**2 * math.sqrt(2 / n)
    assert np.corrcoef(draws[0], draws[1])[0, 1] < 4 / math.sqrt(n)
    # The same key draws the same values.
    again = tx.update(jnp.ones(n), tx.init(params), params)[1].target
    _assert_bits(again, tx.update(jnp.ones(n), tx.init(params), params)[1].target)


def test_optax_apply_updates_lands_within_rounding_and_helper_exactly():
    scale = 10.0 ** jnp.linspace(-4, 4, 64)
    tx = resetax.reset_to_init(optax.sgd(0.1),
                               lambda key: jax.random.normal(key, (64,)) * scale, key=0, every=1)
    params = jnp.linspace(-5.0, 5.0, 64) * scale[::-1]
    state = tx.init(params)
    updates, state = tx.update(jnp.ones(64), state, params)
    exact = resetax.apply_reset_updates(params, updates, state)
    plain = optax.apply_updates(params, updates)
    _assert_bits(exact, state.target)
    ulp = np.spacing(np.maximum(np.abs(exact), np.abs(params)).astype(np.float32))
    assert (np.abs(np.asarray(plain) - np.asarray(exact)) <= ulp).all()


# --------------------------------------------------------------------------- shrink and perturb


def test_shrink_and_perturb_is_lambda_theta_plus_sigma_eps():
    shrink, perturb = 0.4, 0.3
    tx = resetax.shrink_and_perturb(optax.sgd(0.1), _normal_init, key=2, shrink=shrink,
                                    perturb=perturb, mask="head", every=2)
    update = jax.jit(tx.update)
    params = PARAMS
    state = tx.init(params)
    for i in range(4):
        _, init_key = _keys(state)
        grads = _grads(i, params)
        updates, state = update(grads, state, params)
        new = resetax.apply_reset_updates(params, updates, state)
        stepped = jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)
        _assert_bits(new["body"]["w"], stepped["body"]["w"])
        if i % 2 == 1:
            eps = _normal_init(init_key)["head"]
            for name in ("w", "b"):
                np.testing.assert_allclose(
                    new["head"][name], shrink * stepped["head"][name] + perturb * eps[name],
                    rtol=1e-6, atol=1e-6)
                _assert_bits(new["head"][name], state.target["head"][name])
        else:
            for name in ("w", "b"):
                np.testing.assert_allclose(new["head"][name], stepped["head"][name], rtol=1e-6)
        params = new
    assert int(state.num_resets) == 2


def test_shrink_one_perturb_zero_changes_nothing():
    tx = resetax.shrink_and_perturb(optax.sgd(0.1), _normal_init, key=0, shrink=1.0,
                                    perturb=0.0, every=1)
    state = tx.init(PARAMS)
    updates, state = tx.update(_grads(0, PARAMS), state, PARAMS)
    new = resetax.apply_reset_updates(PARAMS, updates, state)
    plain = optax.apply_updates(PARAMS, jax.tree.map(lambda g: -0.1 * g, _grads(0, PARAMS)))
    for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(plain), strict=True):
        _assert_bits(got, want)


# --------------------------------------------------------------------------- dormant units


def test_scores_are_normalized_mean_absolute_activations():
    # Per-unit mean |h| = [2, 1, 0, 1]: the layer mean is 1, so the scores are [2, 1, 0, 1].
    h = jnp.array([[2.0, -1.0, 0.0, 0.5], [-2.0, 1.0, 0.0, 1.5]])
    params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    units = {"h": resetax.UnitWeights(incoming=["w"], outgoing=["v"])}
    for threshold, dormant in [(1.0, [1, 2, 3]), (0.99, [2]), (0.0, [2]), (2.0, [0, 1, 2, 3])]:
        tx = resetax.recycle_dormant_units(optax.sgd(0.0), lambda k: jax.tree.map(
            jnp.zeros_like, params), units, key=0, threshold=threshold, every=1)
        state = tx.init(params)
        updates, state = tx.update(params, state, params, activations={"h": h})
        new = resetax.apply_reset_updates(params, updates, state)
        recycled = np.flatnonzero(np.asarray(new["w"][0]) == 0.0)
        np.testing.assert_array_equal(recycled, dormant)
        np.testing.assert_array_equal(np.flatnonzero(np.asarray(new["v"][:, 0]) == 0.0), dormant)
        assert int(state.num_recycled) == len(dormant)
        assert float(state.dormant_fraction["h"]) == len(dormant) / 4
    # A layer that never fires: every unit is dormant (no division by zero).
    _, state = tx.update(params, tx.init(params), params, activations={"h": jnp.zeros((2, 4))})
    assert int(state.num_recycled) == 4
    # A layer whose activations hold a NaN (a diverged network) is not a dead one: none.
    _, state = tx.update(params, tx.init(params), params,
                         activations={"h": h.at[0, 1].set(jnp.nan)})
    assert int(state.num_recycled) == 0


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        for width in (6, 5):
            x = nn.relu(nn.Dense(width, bias_init=nn.initializers.constant(0.1))(x))
            self.sow("intermediates", f"h{width}", x)
        return nn.Dense(3)(x)


MLP_UNITS = {
    "h6": resetax.UnitWeights(incoming=["Dense_0/kernel", "Dense_0/bias"],
                              outgoing=["Dense_1/kernel"]),
    "h5": resetax.UnitWeights(incoming=["Dense_1/kernel", "Dense_1/bias"],
                              outgoing=["Dense_2/kernel"]),
}


def _mlp_setup():
    net = _MLP()
    x = jax.random.normal(jax.random.key(0), (32, 4))
    params = net.init(jax.random.key(1), x)["params"]
    # Kill units 1 and 4 of the first layer and unit 2 of the second.
    params["Dense_0"]["bias"] = params["Dense_0"]["bias"].at[jnp.array([1, 4])].set(-100.0)
    params["Dense_1"]["bias"] = params["Dense_1"]["bias"].at[2].set(-100.0)
    return net, x, params


def test_recycling_resets_exactly_the_dormant_units_and_their_moments():
    net, x, params = _mlp_setup()
    inner = optax.adam(0.01)
    init_fn = lambda key: net.init(key, x)["params"]  # noqa: E731
    tx = resetax.recycle_dormant_units(inner, init_fn, MLP_UNITS, key=4, threshold=0.0, every=2)

    def loss(p):
        y, state = net.apply({"params": p}, x, mutable=["intermediates"])
        return jnp.mean(y**2), resetax.unit_activations(state)

    @jax.jit
    def step(params, state, plain_state):
        (_, acts), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, state = tx.update(grads, state, params, activations=acts)
        plain_updates, plain_state = inner.update(grads, plain_state, params)
        return (resetax.apply_reset_updates(params, updates, state), state,
                optax.apply_updates(params, plain_updates), plain_state)

    state, plain_state = tx.init(params), inner.init(params)
    _, init_key = _keys(state)
    p1, state, _, plain_state = step(params, state, plain_state)
    assert not bool(state.did_reset)
    assert state.dormant_fraction["h6"] == np.float32(2 / 6)
    assert state.dormant_fraction["h5"] == np.float32(1 / 5)
    _, init_key = _keys(state)
    p2, state, plain, plain_state = step(p1, state, plain_state)
    assert bool(state.did_reset) and int(state.num_recycled) == 3
    fresh = init_fn(init_key)
    in0, in1 = np.isin(np.arange(6), [1, 4]), np.isin(np.arange(5), [2])
    expect_w0 = np.where(in0[None], fresh["Dense_0"]["kernel"], plain["Dense_0"]["kernel"])
    expect_b0 = np.where(in0, fresh["Dense_0"]["bias"], plain["Dense_0"]["bias"])
    expect_w1 = np.where(in1[None], fresh["Dense_1"]["kernel"], plain["Dense_1"]["kernel"])
    expect_w1 = np.where(in0[:, None], 0.0, expect_w1)  # outgoing from dead h6 units: zero
    expect_b1 = np.where(in1, fresh["Dense_1"]["bias"], plain["Dense_1"]["bias"])
    expect_w2 = np.where(in1[:, None], 0.0, plain["Dense_2"]["kernel"])
    for got, want in [(p2["Dense_0"]["kernel"], expect_w0), (p2["Dense_0"]["bias"], expect_b0),
                      (p2["Dense_1"]["kernel"], expect_w1), (p2["Dense_1"]["bias"], expect_b1),
                      (p2["Dense_2"]["kernel"], expect_w2),
                      (p2["Dense_2"]["bias"], plain["Dense_2"]["bias"])]:
        _assert_bits(got, want)
    # Adam's moments: zero at the recycled weights, plain Adam's everywhere else.
    reset = {"Dense_0": {"kernel": np.broadcast_to(in0[None], (4, 6)), "bias": in0},
             "Dense_1": {"kernel": in1[None] | in0[:, None], "bias": in1},
             "Dense_2": {"kernel": np.broadcast_to(in1[:, None], (5, 3)),
                         "bias": np.zeros(3, bool)}}
    for moment in ("mu", "nu"):
        got = getattr(state.inner_state[0], moment)
        want = getattr(plain_state[0], moment)
        for g, w, m in zip(jax.tree.leaves(got), jax.tree.leaves(want), jax.tree.leaves(reset),
                           strict=True):
            _assert_bits(g, np.where(m, 0.0, w))
    # The network's function is unchanged by recycling (outgoing weights are zero) ...
    np.testing.assert_allclose(net.apply({"params": p2}, x), net.apply({"params": plain}, x),
                               rtol=1e-5, atol=1e-6)
    # ... and the recycled units fire again.
    _, acts = loss(p2)
    assert float((acts["h6"].mean(0) > 0).mean()) > 2 / 3


def test_outgoing_axis_a_multiple_of_the_units_is_a_flattened_feature_map():
    # 3 channels on a 2-position map, flattened channels-last: rows j with j % 3 == 1.
    params = {"conv": jnp.ones((2, 3)), "dense": jnp.ones((6, 2))}
    units = {"c": resetax.UnitWeights(incoming=["conv"], outgoing=["dense"])}
    tx = resetax.recycle_dormant_units(optax.sgd(0.0), lambda k: params, units, key=0, every=1)
    h = jnp.ones((4, 2, 3)).at[..., 1].set(0.0)
    updates, state = tx.update(params, tx.init(params), params, activations={"c": h})
    new = resetax.apply_reset_updates(params, updates, state)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(new["dense"][:, 0]) == 0), [1, 4])


def test_unit_activations_from_capture_intermediates_and_sow():
    net, x, params = _mlp_setup()
    _, state = net.apply({"params": params}, x, capture_intermediates=True,
                         mutable=["intermediates"])
    acts = resetax.unit_activations(state, activation=jax.nn.relu)
    assert set(acts) == {"Dense_0", "Dense_1", "Dense_2", "h6", "h5"}
    _assert_bits(acts["Dense_0"], acts["h6"])  # relu of the captured Dense output
    assert acts["h5"].shape == (32, 5)


# --------------------------------------------------------------------------- composition


def test_nested_in_stochastic_resetting_outer_wins():
    init = lambda key: jnp.full(2, 0.25)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(10.0),
        resetax.stochastic_resetting(
            resetax.reset_to_init(optax.sgd(0.1), init, key=0, every=3),
            reset_prob=lambda count: jnp.where(count == 5, 1.0, 0.0), key=1))
    params = jnp.array([1.0, 2.0])
    state = tx.init(params)
    seen = []
    for _ in range(6):
        updates, state = tx.update(jnp.ones(2), state, params, value=jnp.nan)
        params = resetax.apply_reset_updates(params, updates, state)
        seen.append(params)
    _assert_bits(seen[2], jnp.full(2, 0.25))  # the inner re-initialization, exactly
    _assert_bits(seen[5], jnp.array([1.0, 2.0]))  # both reset: the outer checkpoint wins
    resetting = resetax.find_resetting_state(state)
    assert int(resetting.num_resets) == 1 and int(resetting.inner_state.num_resets) == 2


@pytest.mark.parametrize("inner_key, same", [(0, True), (1, False)])
def test_nested_transforms_with_the_same_key_reset_on_the_same_steps(inner_key, same):
    """The README's advice (different keys for nested transforms) rests on this."""
    tx = resetax.stochastic_resetting(
        resetax.reset_to_init(optax.sgd(0.1), lambda key: jnp.zeros(2), key=inner_key,
                              reset_prob=0.3), reset_prob=0.3, key=0)
    params, state = jnp.ones(2), tx.init(jnp.ones(2))
    update = jax.jit(tx.update)
    outer, inner = [], []
    for _ in range(40):
        _, state = update(jnp.zeros(2), state, params, value=1.0)
        outer.append(bool(state.did_reset))
        inner.append(bool(state.inner_state.did_reset))
    assert sum(outer) > 0 and sum(inner) > 0
    assert (outer == inner) == same


def test_wrapping_stochastic_resetting_forwards_value():
    tx = resetax.shrink_and_perturb(
        resetax.stochastic_resetting(optax.sgd(0.1), 0.0, key=0, patience=1),
        lambda key: jnp.zeros(2), key=0, shrink=0.5, perturb=0.0, every=2)
    params = jnp.ones(2)
    state = tx.init(params)
    for value in (1.0, 2.0):
        updates, state = jax.jit(tx.update)(jnp.ones(2), state, params, value=value)
        params = resetax.apply_reset_updates(params, updates, state)
    assert bool(state.inner_state.active)
    np.testing.assert_allclose(params, 0.5 * 0.8, rtol=1e-6)


def test_extra_args_ignored_without_recompiling_and_tree_map_params():
    tx = resetax.reset_to_init(optax.sgd(0.1, momentum=0.9), _normal_init, key=0,
                               mask="head", reset_prob=0.5)
    state = tx.init(PARAMS)
    traces = []

    @jax.jit
    def update(state, extra):
        traces.append(None)
        return tx.update(_grads(0, PARAMS), state, PARAMS, unused_extra=extra)

    for i in range(3):
        _, state = update(state, jnp.ones(4) * i)
    assert len(traces) == 1
    shapes = optax.tree_map_params(tx, lambda p: p.shape, state,
                                   transform_non_params=lambda _: None)
    assert shapes.target["head"] == {"w": (4, 2), "b": (2,)}
    assert shapes.inner_state[0].trace["body"]["w"] == (3, 4)
    assert shapes.count is None and shapes.key is None


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("which", ["reinit", "shrink", "redo"])
def test_dtypes_preserved_and_state_stable(dtype, which):
    params = {"w": jnp.ones((3, 4), dtype), "v": jnp.ones((4, 2), dtype)}
    init = resetax.init_from_initializers(jax.nn.initializers.normal(1.0), params)
    inner = optax.adam(0.1)
    extra = {}
    if which == "reinit":
        tx = resetax.reset_to_init(inner, init, key=0, every=1)
    elif which == "shrink":
        tx = resetax.shrink_and_perturb(inner, init, key=0, shrink=0.5, perturb=0.1, every=1,
                                        reset_inner_state=True)
    else:
        tx = resetax.recycle_dormant_units(
            inner, init, {"h": resetax.UnitWeights(["w"], ["v"])}, key=0, every=1)
        extra = {"activations": {"h": jnp.zeros((2, 4), dtype).at[:, 0].set(1.0)}}
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, new_state = jax.jit(tx.update)(grads, state, params, **extra)
    assert bool(new_state.did_reset)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(resetax.apply_reset_updates(
            params, updates, new_state)), strict=True):
        assert u.dtype == dtype and p.dtype == dtype
    spec = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype, x.weak_type), s)  # noqa: E731
    assert spec(state) == spec(new_state)

    @jax.jit
    def maybe_update(pred, state):
        return jax.lax.cond(pred, lambda s: tx.update(grads, s, params, **extra)[1],
                            lambda s: s, state)

    assert spec(maybe_update(True, state)) == spec(state)


# --------------------------------------------------------------------------- data parallel, resume

NUM_DEVICES = 8
DP_STEPS = 40


def _dp_problem():
    net, _, params = _mlp_setup()
    kx, ky = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (64, 4))
    y = jax.random.randint(ky, (64,), 0, 3)
    return net, params, (x, y)


def _dp_tx(net, x, axis_name=None):
    init_fn = lambda key: net.init(key, x[:1])["params"]  # noqa: E731
    return resetax.stochastic_resetting(
        resetax.recycle_dormant_units(
            resetax.reset_to_init(optax.adam(0.05), init_fn, key=3, mask="Dense_2",
                                  reset_prob=0.1),
            init_fn, MLP_UNITS, key=4, threshold=0.1, every=6, axis_name=axis_name),
        reset_prob=0.05, key=5)


def _dp_step(net, tx, mean):
    def loss(p, x, y):
        logits, state = net.apply({"params": p}, x, mutable=["intermediates"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce, resetax.unit_activations(state)

    def step(carry, batch):
        params, state = carry
        (value, acts), grads = jax.value_and_grad(loss, has_aux=True)(params, *batch)
        updates, state = tx.update(mean(grads), state, params, value=mean(value),
                                   activations=acts)
        redo = state.inner_state
        flags = jnp.stack([state.did_reset, redo.did_reset, redo.inner_state.did_reset])
        return (resetax.apply_reset_updates(params, updates, state), state), (
            flags, redo.num_recycled)

    return step


def _dp_run(step, batch, params, state, num_steps=DP_STEPS):
    return jax.lax.scan(lambda c, _: step(c, batch), (params, state), length=num_steps)


@pytest.fixture(scope="module")
def single_device_run():
    net, params, batch = _dp_problem()
    tx = _dp_tx(net, batch[0])
    step = _dp_step(net, tx, lambda v: v)
    return jax.jit(lambda p, s: _dp_run(step, batch, p, s))(params, tx.init(params))


def test_single_device_run_exercises_every_reset(single_device_run):
    (params, state), (flags, recycled) = single_device_run
    flags = np.asarray(flags)
    assert flags.any(axis=0).all()  # each of the three transformations reset at least once
    assert int(recycled[-1]) >= 3
    assert all(bool(jnp.isfinite(p).all()) for p in jax.tree.leaves(params))


def test_pmap_replicas_identical_and_match_single_device(single_device_run):
    assert jax.device_count() == NUM_DEVICES
    net, params, batch = _dp_problem()
    tx = _dp_tx(net, batch[0], axis_name="data")
    batch = jax.tree.map(lambda a: a.reshape(NUM_DEVICES, -1, *a.shape[1:]), batch)
    replicate = lambda t: jax.tree.map(lambda x: jnp.stack([x] * NUM_DEVICES), t)  # noqa: E731
    step = _dp_step(net, tx, lambda v: jax.lax.pmean(v, "data"))
    run = jax.pmap(lambda b, p, s: _dp_run(step, b, p, s), axis_name="data")
    (params_dp, _), (flags_dp, recycled_dp) = run(batch, replicate(params),
                                                  replicate(tx.init(params)))
    (params_1, _), (flags_1, recycled_1) = single_device_run
    for replica in range(1, NUM_DEVICES):
        for leaf in jax.tree.leaves(params_dp):
            _assert_bits(leaf[replica], leaf[0])
        _assert_bits(flags_dp[replica], flags_dp[0])
    _assert_bits(flags_dp[0], flags_1)
    _assert_bits(recycled_dp[0], recycled_1)
    for got, want in zip(jax.tree.leaves(params_dp), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


def test_sharded_jit_matches_single_device(single_device_run):
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated = NamedSharding(mesh, P())
    net, params, batch = _dp_problem()
    tx = _dp_tx(net, batch[0])
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    params_r = jax.device_put(params, replicated)
    state = jax.device_put(tx.init(params), replicated)
    step = _dp_step(net, tx, lambda v: v)
    run = jax.jit(lambda b, p, s: _dp_run(step, b, p, s), out_shardings=replicated)
    (params_s, _), (flags_s, recycled_s) = run(batch, params_r, state)
    (params_1, _), (flags_1, recycled_1) = single_device_run
    for leaf in jax.tree.leaves(params_s):
        shards = [np.asarray(s.data) for s in leaf.addressable_shards]
        for shard in shards[1:]:
            _assert_bits(shard, shards[0])
    _assert_bits(flags_s, flags_1)
    _assert_bits(recycled_s, recycled_1)
    for got, want in zip(jax.tree.leaves(params_s), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_resume_from_serialized_state_is_bit_identical(single_device_run):
    net, params, batch = _dp_problem()
    tx = _dp_tx(net, batch[0])
    step = jax.jit(lambda p, s, n: _dp_run(_dp_step(net, tx, lambda v: v), batch, p, s, n),
                   static_argnums=2)
    (p_half, s_half), _ = step(params, tx.init(params), DP_STEPS // 2)
    blob = serialization.to_bytes((p_half, s_half))
    template = (params, tx.init(params))
    p_restored, s_restored = serialization.from_bytes(template, blob)
    (p_end, s_end), _ = step(p_restored, s_restored, DP_STEPS - DP_STEPS // 2)
    (params_1, state_1), _ = single_device_run
    for got, want in zip(jax.tree.leaves((p_end, s_end)), jax.tree.leaves((params_1, state_1)),
                         strict=True):
        _assert_bits(got, want)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(every=0), "every"),
    (dict(every=2.5), "every"),
    (dict(every=2, reset_prob=0.1), "exactly one of every"),
    (dict(), "exactly one of every"),
    (dict(reset_prob=1.5), "reset_prob"),
    (dict(reset_prob=jnp.array([0.1, 0.2])), "reset_prob"),
    (dict(every=1, mask="("), "mask must be a valid regular expression"),
    (dict(every=1, mask=["yes"]), "mask"),
    (dict(every=2**40), r"every must be an integer in \[1, 2147483647\]"),
    (dict(every=1, key=jax.random.split(jax.random.key(0))),
     r"key must be a single jax.random.key \(shape \(\)\)"),
    (dict(every=1, key=2**64), r"key must be an int seed in \[-2\*\*63"),
    (dict(reset_prob=lambda count: jnp.full(3, 0.5)),
     "reset_prob must be a schedule .* returning a real scalar"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resetax.reset_to_init(optax.sgd(0.1), _normal_init, **(dict(key=0) | kwargs))


@pytest.mark.parametrize("kwargs, match", [
    (dict(shrink=1.5, perturb=0.1), "shrink"),
    (dict(shrink=0.5, perturb=-0.1), "perturb"),
    (dict(shrink=0.5, perturb=float("inf")), "perturb"),
])
def test_bad_shrink_and_perturb_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resetax.shrink_and_perturb(optax.sgd(0.1), _normal_init, key=0, every=1, **kwargs)


@pytest.mark.parametrize("units, kwargs, match", [
    ({}, {}, "units must be a non-empty mapping"),
    ({"h": resetax.UnitWeights("Dense_0/kernel", [])}, {}, r"units\['h'\].incoming"),
    ({"h": resetax.UnitWeights([], [])}, {}, "at least one"),
    (MLP_UNITS, dict(threshold=-1.0), "threshold"),
    (MLP_UNITS, dict(axis_name=0), "axis_name"),
])
def test_bad_units_raise_value_error(units, kwargs, match):
    with pytest.raises(ValueError, match=match):
        resetax.recycle_dormant_units(optax.sgd(0.1), _normal_init, units, key=0, every=1,
                                      **kwargs)


def test_errors_at_init_and_update():
    net, x, params = _mlp_setup()
    init_fn = lambda key: net.init(key, x)["params"]  # noqa: E731
    bad = {"h": resetax.UnitWeights(["Dense_9/kernel"], [])}
    with pytest.raises(ValueError, match="Dense_9/kernel"):
        resetax.recycle_dormant_units(optax.sgd(0.1), init_fn, bad, key=0, every=1).init(params)
    bad = {"h": resetax.UnitWeights(["Dense_0/kernel"], ["Dense_2/kernel"])}
    with pytest.raises(ValueError, match="second-to-last axis"):
        resetax.recycle_dormant_units(optax.sgd(0.1), init_fn, bad, key=0, every=1).init(params)
    tx = resetax.recycle_dormant_units(optax.sgd(0.1), init_fn, MLP_UNITS, key=0, every=1)
    state = tx.init(params)
    with pytest.raises(ValueError, match="requires activations"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="'h5' is missing"):
        tx.update(params, state, params, activations={"h6": jnp.ones((2, 6))})
    with pytest.raises(ValueError, match=r"activations\['h5'\] must have the layer's 5 units"):
        tx.update(params, state, params,
                  activations={"h6": jnp.ones((2, 6)), "h5": jnp.ones((2, 4))})
    with pytest.raises(ValueError) as err:
        tx.update(params, state)
    assert str(err.value) == NO_PARAMS_MSG
    with pytest.raises(ValueError, match="init_fn must return params with the shapes"):
        resetax.reset_to_init(optax.sgd(0.1), lambda k: jnp.zeros(3), key=0, every=1).init(
            jnp.zeros(2))
    with pytest.raises(ValueError, match="init_fn must return params with the structure"):
        resetax.reset_to_init(optax.sgd(0.1), lambda k: {"a": jnp.zeros(2)}, key=0,
                              every=1).init({"b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="mask must be True on at least one"):
        resetax.reset_to_init(optax.sgd(0.1), _normal_init, key=0, every=1,
                              mask="nothing").init(PARAMS)
    with pytest.raises(ValueError, match="init_fn must be a callable"):
        resetax.reset_to_init(optax.sgd(0.1), None, key=0, every=1)
    with pytest.raises(TypeError, match="reset_inner_state"):
        resetax.reset_to_init(optax.sgd(0.1), _normal_init, key=0, every=1, reset_inner_state=1)
    with pytest.raises(ValueError, match="initializers"):
        resetax.init_from_initializers({"a": jax.nn.initializers.zeros}, {"b": jnp.zeros(2)})
    with pytest.raises(ValueError, match="state must contain the state of a resetting"):
        resetax.apply_reset_updates(jnp.zeros(2), jnp.zeros(2), optax.sgd(0.1).init(jnp.zeros(2)))


def test_a_seed_a_typed_key_and_a_legacy_key_give_the_same_resets():
    histories = []
    for key in (3, jax.random.key(3), jax.random.PRNGKey(3)):
        tx = resetax.reset_to_init(optax.sgd(0.1), lambda k: jnp.zeros(2), key=key,
                                   reset_prob=0.5)

        def step(state, _, tx=tx):
            _, state = tx.update(jnp.ones(2), state, jnp.ones(2))
            return state, state.did_reset

        histories.append(np.asarray(jax.lax.scan(step, tx.init(jnp.ones(2)), length=16)[1]))
    assert 0 < histories[0].sum() < 16
    for history in histories[1:]:
        _assert_bits(history, histories[0])


def test_init_from_initializers_takes_empty_params_and_names_a_key_that_is_not_one():
    assert resetax.init_from_initializers(jax.nn.initializers.zeros, {})(
        jax.random.key(0)) == {}
    init = resetax.init_from_initializers(jax.nn.initializers.zeros, {"w": jnp.ones(2)})
    for key in (jax.random.key(0), jax.random.PRNGKey(0)):
        _assert_bits(init(key)["w"], jnp.zeros(2))
    with pytest.raises(ValueError, match="init_fn of init_from_initializers takes one "
                                         "jax.random.key .* static_args=\\('init_fn'"):
        init(jnp.int32(0))  # what optax.inject_hyperparams passes to a "schedule"


def test_unit_activations_names_an_activation_that_is_not_callable():
    with pytest.raises(ValueError, match="activation must be None or a callable"):
        resetax.unit_activations({"intermediates": {"h": (jnp.ones(2),)}}, activation=3)


def test_an_axis_name_bound_nowhere_is_one_line_naming_it():
    tx = resetax.recycle_dormant_units(optax.sgd(0.1), lambda key: {"w": jnp.zeros(2)},
                                       {"h": resetax.UnitWeights(["w"], [])}, key=0, every=1,
                                       axis_name="batch")
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="axis_name='batch' is not bound here"):
        tx.update(params, tx.init(params), params, activations={"h": jnp.ones((3, 2))})


def test_inject_hyperparams_traced_shrink():
    tx = optax.inject_hyperparams(
        resetax.shrink_and_perturb, static_args=("init_fn", "key", "every"))(
        optax.sgd(0.0), init_fn=lambda key: jnp.ones(2), key=0, shrink=1.0, perturb=0.0, every=1)
    params = jnp.array([1.0, 4.0])
    state = tx.init(params)
    traces = []

    @jax.jit
    def update(state, params):
        traces.append(None)
        return tx.update(jnp.ones(2), state, params)

    updates, state = update(state, params)
    params = resetax.apply_reset_updates(params, updates, state)
    _assert_bits(params, jnp.array([1.0, 4.0]))
    state.hyperparams["shrink"] = jnp.asarray(0.5, jnp.float32)
    state.hyperparams["perturb"] = jnp.asarray(2.0, jnp.float32)
    updates, state = update(state, params)
    params = resetax.apply_reset_updates(params, updates, state)
    _assert_bits(params, jnp.array([2.5, 4.0]))
    assert len(traces) == 1


@pytest.mark.slow
def test_benchmark_script_prints_its_table():
    import os
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root), XLA_FLAGS="")
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "plasticity.py"), "--seeds", "2",
         "--warmup-steps", "100", "--steps", "100"],
        capture_output=True, text=True, check=True, env=env, cwd=root).stdout
    rows = re.findall(r"^(.+?)\s+(\d+\.\d+) ± +(\d+\.\d+) +(\d+\.\d+) ±", out, re.MULTILINE)
    assert [name.strip() for name, *_ in rows] == [
        "no reset", "fresh network", "reset_to_init, last layer", "reset_to_init, last 2 layers",
        "shrink_and_perturb 0.3, 0.1", "recycle_dormant_units 0.1"]
    assert all(0 <= float(acc) <= 100 for _, acc, _, _ in rows)


def test_shrink_zero_perturb_one_is_reset_to_init():
    common = dict(key=9, mask="head", every=2)
    a = resetax.shrink_and_perturb(optax.adam(0.1), _normal_init, shrink=0.0, perturb=1.0,
                                   reset_inner_state=True, **common)
    b = resetax.reset_to_init(optax.adam(0.1), _normal_init, **common)
    pa, pb = PARAMS, PARAMS
    sa, sb = a.init(pa), b.init(pb)
    for i in range(4):
        ua, sa = a.update(_grads(i, pa), sa, pa)
        ub, sb = b.update(_grads(i, pb), sb, pb)
        pa = resetax.apply_reset_updates(pa, ua, sa)
        pb = resetax.apply_reset_updates(pb, ub, sb)
        leaves_a = jax.tree.leaves((pa, sa.inner_state))
        for x, y in zip(leaves_a, jax.tree.leaves((pb, sb.inner_state)), strict=True):
            _assert_bits(x, y)
    assert int(sa.num_resets) == int(sb.num_resets) == 2


def test_optax_masked_and_multisteps_wrappers():
    tx = optax.masked(resetax.reset_to_init(optax.sgd(0.1), _normal_init, key=0, every=1),
                      {"body": False, "head": True})
    state = tx.init(PARAMS)
    updates, state = tx.update(_grads(0, PARAMS), state, PARAMS)
    new = resetax.apply_reset_updates(PARAMS, updates, state)
    _assert_bits(new["head"]["w"], state.inner_state.target["head"]["w"])
    _assert_bits(new["body"]["w"], optax.apply_updates(PARAMS, _grads(0, PARAMS))["body"]["w"])

    tx = optax.MultiSteps(resetax.reset_to_init(optax.sgd(0.1), lambda k: jnp.zeros(2), key=0,
                                                every=2), every_k_schedule=2)
    params = jnp.ones(2)
    state = tx.init(params)
    seen = []
    for _ in range(6):
        updates, state = tx.update(jnp.ones(2), state, params)
        params = resetax.apply_reset_updates(params, updates, state)
        seen.append(float(params[0]))
    # Inner updates every 2nd call; the inner transformation resets at its 2nd update.
    np.testing.assert_allclose(seen, [1.0, 0.9, 0.9, 0.0, 0.0, -0.1], atol=1e-7)


# --------------------------------------------------------------------------- model state


class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(6)(x)))
        self.sow("intermediates", "h", h)
        return nn.Dense(2)(h)


_BN_UNITS = {"h": resetax.UnitWeights(
    incoming=["Dense_0/kernel", "Dense_0/bias", "BatchNorm_0/scale", "BatchNorm_0/bias"],
    outgoing=["Dense_1/kernel"], model_state=["BatchNorm_0/mean", "BatchNorm_0/var"])}


def _bn_step(tx, net, variables, x, num_steps):
    """Trains ``num_steps`` and returns, per step, the state and the statistics before and after
    reinit_model_state."""
    params, stats = variables["params"], variables["batch_stats"]
    state, out = tx.init(params), []

    @jax.jit
    def step(params, stats, state):
        def loss(p):
            y, new = net.apply({"params": p, "batch_stats": stats}, x, train=True,
                               mutable=["batch_stats", "intermediates"])
            return (y ** 2).sum(), new
        grads, new = jax.grad(loss, has_aux=True)(params)
        acts = resetax.unit_activations(new["intermediates"])
        updates, state = tx.update(grads, state, params, activations=acts)
        params = resetax.apply_reset_updates(params, updates, state)
        reset = resetax.reinit_model_state(new["batch_stats"], variables["batch_stats"], state,
                                           _BN_UNITS)
        return params, new["batch_stats"], reset, state

    for _ in range(num_steps):
        params, before, stats, state = step(params, stats, state)
        out.append((state, before, stats))
    return out


def test_reinit_model_state_resets_the_recycled_units_statistics():
    net, x = _BNNet(), jax.random.normal(jax.random.key(0), (16, 3)) + 1.0
    variables = net.init(jax.random.key(1), x)
    # threshold 1: the units scoring below their layer's mean are recycled at the check.
    tx = resetax.recycle_dormant_units(optax.sgd(0.01), lambda k: net.init(k, x)["params"],
                                       {"h": _BN_UNITS["h"][:2]}, key=0, every=3, threshold=1.0)
    for t, (state, before, stats) in enumerate(_bn_step(tx, net, variables, x, 6)):
        recycled = np.asarray(state.recycled["h"])
        assert recycled.any() == (t % 3 == 2) and not recycled.all()
        for name, initial in (("mean", 0.0), ("var", 1.0)):
            got = np.asarray(stats["BatchNorm_0"][name])
            was = np.asarray(before["BatchNorm_0"][name])
            np.testing.assert_array_equal(got[recycled], initial)
            np.testing.assert_array_equal(got[~recycled], was[~recycled])
            assert (was != initial).all()  # the forward pass moved every statistic


def test_reinit_model_state_resets_whole_layers_after_reset_to_init():
    net, x = _BNNet(), jax.random.normal(jax.random.key(0), (16, 3)) + 1.0
    variables = net.init(jax.random.key(1), x)
    init_fn = lambda k: net.init(k, x)["params"]  # noqa: E731
    for mask, resets_stats in (("BatchNorm_0/scale", True), ("Dense_0/kernel", True),
                               ("Dense_1/", False)):
        tx = resetax.reset_to_init(optax.sgd(0.01), init_fn, key=0, every=2, mask=mask)
        for t, (_, before, stats) in enumerate(_bn_step(tx, net, variables, x, 4)):
            reset = resets_stats and t % 2 == 1
            want = variables["batch_stats"] if reset else before
            jax.tree.map(_assert_bits, stats, want)
    shrink = resetax.shrink_and_perturb(optax.sgd(0.01), init_fn, key=0, every=1, shrink=0.5,
                                        perturb=0.1)
    with pytest.raises(ValueError, match="reset_to_init or recycle_dormant_units"):
        resetax.reinit_model_state(variables["batch_stats"], variables["batch_stats"],
                                   shrink.init(variables["params"]), _BN_UNITS)
    tx = resetax.reset_to_init(optax.sgd(0.01), init_fn, key=0, every=2)
    bad = {"h": resetax.UnitWeights(["Dense_0/kernel"], [], ["BatchNorm_9/mean"])}
    with pytest.raises(ValueError, match="'BatchNorm_9/mean'"):
        resetax.reinit_model_state(variables["batch_stats"], variables["batch_stats"],
                                   tx.init(variables["params"]), bad)


_TINY = {"w": jnp.ones(2), "b": jnp.zeros(1)}
_STATS = {"bn": {"mean": jnp.ones(2)}}


def _tiny_states():
    """After one update: a reset_to_init state and a recycle_dormant_units state (layer "h")."""
    init = resetax.init_from_initializers(jax.nn.initializers.zeros, _TINY)
    rti = resetax.reset_to_init(optax.sgd(0.1), init, key=0, every=1)
    redo = resetax.recycle_dormant_units(optax.sgd(0.1), init,
                                         {"h": resetax.UnitWeights(["w"], [])}, key=0, every=1)
    return (rti.update(_TINY, rti.init(_TINY), _TINY)[1],
            redo.update(_TINY, redo.init(_TINY), _TINY, activations={"h": jnp.zeros((3, 2))})[1])


@pytest.mark.parametrize("which, units, stats, initial, match", [
    # These used to return the statistics untouched, without a word.
    (0, {"h": resetax.UnitWeights(["nope"], [], ["bn/mean"])}, _STATS, None,
     r"units\['h'\] is no layer .*'nope' is no parameter of reset_to_init's \['b', 'w'\]"),
    (1, {"g": resetax.UnitWeights(["w"], [], ["bn/mean"])}, _STATS, None,
     r"units\['g'\] is no layer .*recycle_dormant_units' layers are \['h'\]"),
    # These were jnp's broadcasting or pytree errors, naming no argument.
    (0, {"h": resetax.UnitWeights(["w"], [], ["bn/mean"])}, _STATS,
     {"bn": {"mean": jnp.zeros(3)}}, r"initial_model_state 'bn/mean' must have the shape"),
    (0, {"h": resetax.UnitWeights(["w"], [], ["bn/mean"])}, _STATS,
     {"bn": {"mean": jnp.zeros(2), "var": jnp.ones(2)}},
     "initial_model_state must have the structure of model_state"),
    (1, {"h": resetax.UnitWeights(["w"], [], ["bn/mean"])}, {"bn": {"mean": jnp.ones(5)}},
     None, r"units\['h'\].model_state 'bn/mean' must have the layer's 2 units"),
])
def test_reinit_model_state_names_what_does_not_fit(which, units, stats, initial, match):
    state = _tiny_states()[which]
    initial = jax.tree.map(jnp.zeros_like, stats) if initial is None else initial
    with pytest.raises(ValueError, match=match):
        resetax.reinit_model_state(stats, initial, state, units)


def test_apply_updates_name_updates_or_a_state_of_other_params():
    state = _tiny_states()[0]
    with pytest.raises(ValueError, match="^updates must have the structure of params"):
        resetax.apply_reset_updates(_TINY, {"w": jnp.ones(2)}, state)
    with pytest.raises(ValueError, match="^state must be the optimizer state of these params: "
                                         "the ResetToInitState in it holds"):
        resetax.apply_reset_updates({"v": jnp.ones(2)}, {"v": jnp.ones(2)}, state)
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 1.0, key=0)
    with pytest.raises(ValueError, match="^state must be the optimizer state .* ResettingState"):
        resetax.apply_updates(_TINY, _TINY, tx.init({"v": jnp.ones(2)}))


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "vcnn", "resnet"])
def test_every_model_maps_its_sown_units(name):
    """Each model sows one activation per unit layer, with its units on the last axis, and its
    unit map names parameters and statistics it has, with matching widths."""
    from resetax import models
    from resetax.plasticity import _param_paths, _unit_sizes

    model, x = {
        "mlp": (models.MLP(3, hidden_sizes=(8, 6)), jnp.ones((2, 10))),
        "cnn1d": (models.CNN1D(3, channels=(4, 5)), jnp.ones((2, 40))),
        "vcnn": (models.VCNN(3), jnp.ones((2, 32, 32, 3))),
        "resnet": (models.ResNet(stage_sizes=(1, 2), num_classes=3, num_filters=4),
                   jnp.ones((2, 8, 8, 3))),
    }[name]
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
    variables = jax.eval_shape(lambda: model.init(rngs, x))
    _, updated = jax.eval_shape(lambda v: model.apply(
        v, x, train=True, mutable=["batch_stats", "intermediates"], rngs=rngs), variables)
    activations = resetax.unit_activations(updated["intermediates"])
    units = model.units()
    assert sorted(activations) == sorted(units)
    sizes = _unit_sizes(units, variables["params"])
    assert {k: a.shape[-1] for k, a in activations.items()} == sizes
    stats = _param_paths(variables["batch_stats"])
    layers = model.normalized_layers()
    assert set(units) <= set(layers)
    for weights in layers.values():
        assert weights.model_state and all(p in stats for p in weights.model_state)
    # Every BatchNorm follows one of the layers.
    assert {p.rsplit("/", 1)[0] for p in stats} == {
        p.rsplit("/", 1)[0] for w in layers.values() for p in w.model_state}


# --------------------------------------------------------------------------- in the trainer


def _trace_entries(opt_state, path):
    traces = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(
        s, optax.TraceState)) if isinstance(s, optax.TraceState)]
    (trace,) = traces
    return np.asarray(trace.trace[path[0]][path[1]])


def _redo_config(**changes):
    from runs import tiny

    return tiny(plasticity="recycle_dormant_units", plasticity_every=20, dormant_threshold=0.9,
                num_steps=40, checkpoint_every=40, reset_prob=0.0, baseline=False, **changes)


@pytest.fixture(scope="module")
def redo_run(tmp_path_factory):
    from resetax.experiment import runner

    run_dir = tmp_path_factory.mktemp("redo") / "run"
    runner.train(_redo_config(), run_dir, progress=False)
    return run_dir


def _final_state(run_dir, config):
    from resetax.experiment import build, checkpoint

    return checkpoint.CheckpointManager(run_dir / "checkpoints").restore(
        build.setup(config).init_state)[0]


def test_trainer_recycles_dormant_units_at_the_checks(redo_run):
    from runs import read_lines

    from resetax.experiment import build, optimization
    from resetax.experiment.data_input import preprocess

    config = _redo_config()
    tmp_path = redo_run.parent
    rows = [json.loads(line) for line in read_lines(tmp_path / "run")]
    assert [s for r in rows for s in r["plasticity_steps"]] == [19, 39]
    recycled_counts = [r["num_recycled"] for r in rows]
    assert recycled_counts[0] == 0 < recycled_counts[1] == recycled_counts[2] < recycled_counts[3]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dormant_threshold"] == 0.9 and saved["plasticity"] == "recycle_dormant_units"

    final = _final_state(redo_run, config)
    redo = optimization.plasticity_state(final.opt_state)
    assert int(redo.num_recycled) == recycled_counts[-1]
    # The fresh draw of the last check (update 39): the key chain from the config's seed + 2.
    key = jax.random.key(config.seed + 2)
    for _ in range(40):
        key, _, init_key = jax.random.split(key, 3)
    inputs = build.load_inputs(config)
    sample = preprocess(inputs.data.train.inputs[:1], config.dataset)
    fresh = inputs.model.init({"params": init_key, "dropout": init_key}, sample,
                              train=False)["params"]
    params = final.params
    total, rows_kept = 0, slice(None)
    for layer in range(2):
        r = np.asarray(redo.recycled[f"hidden_{layer}"])
        total += r.sum()
        assert 0 < r.sum() < r.size
        dense, norm, out = f"Dense_{layer}", f"BatchNorm_{layer}", f"Dense_{layer + 1}"
        for module, leaf in ((dense, "kernel"), (dense, "bias"), (norm, "scale"), (norm, "bias")):
            got, want = np.asarray(params[module][leaf]), np.asarray(fresh[module][leaf])
            if leaf == "kernel" and module == dense:  # rows outgoing from recycled units: zero
                got, want = got[rows_kept], want[rows_kept]
            np.testing.assert_array_equal(got[..., r], want[..., r])  # incoming: fresh
            assert not np.array_equal(got[..., ~r], want[..., ~r])
            assert (_trace_entries(final.opt_state, (module, leaf))[..., r] == 0).all()
        outgoing = np.asarray(params[out]["kernel"])
        assert (outgoing[r] == 0).all() and (outgoing[~r] != 0).all()  # outgoing: zeros
        rows_kept = ~r
        trace = _trace_entries(final.opt_state, (out, "kernel"))
        assert (trace[r] == 0).all() and (trace[~r] != 0).any()  # their momentum reset
        stats = final.batch_stats[norm]
        np.testing.assert_array_equal(np.asarray(stats["mean"])[r], 0.0)
        np.testing.assert_array_equal(np.asarray(stats["var"])[r], 1.0)
        assert (np.asarray(stats["mean"])[~r] != 0).all()
    assert total == recycled_counts[-1] - recycled_counts[1]


def test_trainer_recycling_under_pmap_agrees_with_sharded(redo_run, tmp_path):
    """Under pmap each replica scores its part of the batch; the scores are averaged over the
    replicas (axis_name), so every replica recycles the units the global batch picks."""
    from runs import read_lines

    from resetax.experiment import optimization, runner

    assert jax.device_count() == 8
    config = _redo_config(parallel="pmap")
    runner.train(config, tmp_path / "pmap", progress=False)
    rows = {name: [json.loads(line) for line in read_lines(run_dir)]
            for name, run_dir in (("pmap", tmp_path / "pmap"), ("sharded", redo_run))}
    assert [r["num_recycled"] for r in rows["pmap"]] == [
        r["num_recycled"] for r in rows["sharded"]]
    pmap, sharded = _final_state(tmp_path / "pmap", config), _final_state(redo_run, config)
    for name, recycled in optimization.plasticity_state(pmap.opt_state).recycled.items():
        np.testing.assert_array_equal(
            recycled, optimization.plasticity_state(sharded.opt_state).recycled[name])
    for a, b in zip(jax.tree.leaves(pmap.params), jax.tree.leaves(sharded.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_trainer_resets_batch_norm_statistics_with_reset_to_init(tmp_path):
    from runs import tiny

    from resetax.experiment import build, checkpoint, runner

    config = tiny(plasticity="reset_to_init", plasticity_every=20,
                  plasticity_layers="BatchNorm_0|Dense_0/", num_steps=40, checkpoint_every=40,
                  reset_prob=0.0, baseline=False)
    experiment = build.setup(config)
    runner.train(config, tmp_path / "run", progress=False)
    final = checkpoint.CheckpointManager(tmp_path / "run" / "checkpoints").restore(
        experiment.init_state)[0]
    initial = experiment.init_state.batch_stats
    # Update 39 re-initialized Dense_0 and BatchNorm_0: that BatchNorm's statistics are back at
    # their initial values, bit for bit; the next one's went on.
    jax.tree.map(_assert_bits, final.batch_stats["BatchNorm_0"], initial["BatchNorm_0"])
    assert not np.array_equal(final.batch_stats["BatchNorm_1"]["mean"],
                              initial["BatchNorm_1"]["mean"])


@pytest.mark.parametrize("flags, message", [
    (["--plasticity", "recycle_dormant_units", "--plasticity-layers", "Dense_2/"],
     "plasticity_layers 'Dense_2/' matches no hidden layer's incoming weights of mlp"),
    (["--dormant-threshold", "-1"], "dormant_threshold must be a finite number >= 0"),
])
def test_bad_recycling_flags_fail_before_writing(tmp_path, capsys, flags, message):
    from resetax.experiment import cli

    run_dir = tmp_path / "run"
    code = cli.main(["train", "--quiet", "--run-dir", str(run_dir), "--dataset", "digits",
                     "--model", "mlp", *flags])
    assert code == 2 and message in capsys.readouterr().err
    assert not run_dir.exists()
