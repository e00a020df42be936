"""Tests of resetax.linen.TrainState: a drop-in for Flax linen's TrainState, BatchNorm included."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import resetax
import resetax.linen

NAN = float("nan")
VALUES = [3.0, 1.0, 2.0, 0.5, NAN, 2.0, 0.4, NAN, NAN, NAN, 0.3, NAN]


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> mean over positions -> Dense, on (batch, 8, 1) inputs."""

    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3,))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=self.axis_name)(x)
        return nn.Dense(2)(nn.relu(x).mean(axis=1))


def _data(step, n=16):
    rng = np.random.default_rng(step)
    return rng.normal(size=(n, 8, 1)).astype(np.float32), rng.integers(0, 2, n)


def _variables(seed=0):
    return jax.jit(lambda key: CNN().init(key, jnp.zeros((1, 8, 1)), train=False))(
        jax.random.key(seed))


@functools.cache  # one transformation per setting: the jitted steps then compile once for it
def _tx(reset_prob=0.3, patience=2):
    return resetax.stochastic_resetting(optax.sgd(0.1, momentum=0.9), reset_prob=reset_prob,
                                        key=1, patience=patience, reset_inner_state=True)


def _create(seed=0, **tx_kwargs):
    variables = _variables(seed)
    return resetax.linen.TrainState.create(
        apply_fn=CNN().apply, params=variables["params"], tx=_tx(**tx_kwargs),
        batch_stats=variables["batch_stats"])


def _loss_and_stats(apply_fn, params, batch_stats, x, y):
    logits, updated = apply_fn({"params": params, "batch_stats": batch_stats}, x, train=True,
                               mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated[
        "batch_stats"]


def _step(state, x, y, val_loss):
    grads, batch_stats = jax.grad(
        lambda p: _loss_and_stats(state.apply_fn, p, state.batch_stats, x, y), has_aux=True)(
        state.params)
    return state.apply_gradients(grads=grads, value=val_loss, batch_stats=batch_stats)


_train_step = jax.jit(_step)


def _flags(state):
    resetting = state.resetting_state
    return bool(resetting.did_reset), bool(resetting.checkpoint_updated)


def _run(state, steps, train_step=_train_step, first=0):
    flags = []
    for step in range(first, first + steps):
        state = train_step(state, *_data(step), np.float32(VALUES[step % len(VALUES)]))
        flags.append(_flags(state))
    return state, flags


def _equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        np.array_equal(u, v) for u, v in zip(leaves_a, leaves_b, strict=True))


def _max_abs_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(
        lambda u, v: float(np.max(np.abs(np.asarray(u) - np.asarray(v)))), a, b)))


def test_reset_lands_exactly_on_checkpoint_with_batch_stats():
    state = _create(reset_prob=1.0)
    # Step 1 measures the best value, so (params, batch_stats) as they were before step 1 become
    # the checkpoint; patience runs out at step 3, which resets with probability 1.
    before, did_reset = [], []
    for step, value in enumerate([3.0, 1.0, 2.0, NAN]):
        before.append((state.params, state.batch_stats))
        state = _train_step(state, *_data(step), np.float32(value))
        did_reset.append(_flags(state)[0])
    assert did_reset == [False, False, False, True]
    # Each step moved both, so only a reset to step 1's values can make these hold.
    assert not _equal(before[3][0], before[1][0]) and not _equal(before[3][1], before[1][1])
    assert _equal(state.params, before[1][0])
    assert _equal(state.batch_stats, before[1][1])
    assert _equal(state.batch_stats_checkpoint.model_state, before[1][1])
    assert int(state.step) == 4


def test_matches_the_core_path_bit_for_bit():
    """TrainState does what the documented core step does (update, apply, reset_model_state)."""
    state, flags = _run(_create(), 24)
    variables, tx = _variables(), _tx()
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state, bs_checkpoint = tx.init(params), resetax.init_model_state_checkpoint(batch_stats)

    @jax.jit
    def core_step(params, batch_stats, opt_state, bs_checkpoint, x, y, val_loss):
        grads, new_batch_stats = jax.grad(
            lambda p: _loss_and_stats(CNN().apply, p, batch_stats, x, y), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params, value=val_loss)
        params = resetax.apply_updates(params, updates, opt_state)
        new_batch_stats, bs_checkpoint = resetax.reset_model_state(
            batch_stats, new_batch_stats, bs_checkpoint, opt_state)
        return params, new_batch_stats, opt_state, bs_checkpoint

    core_flags = []
    for step in range(24):
        params, batch_stats, opt_state, bs_checkpoint = core_step(
            params, batch_stats, opt_state, bs_checkpoint, *_data(step),
            np.float32(VALUES[step % len(VALUES)]))
        resetting = resetax.find_resetting_state(opt_state)
        core_flags.append((bool(resetting.did_reset), bool(resetting.checkpoint_updated)))
    assert core_flags == flags and sum(r for r, _ in flags) >= 2
    assert _equal((state.params, state.batch_stats, state.opt_state, state.batch_stats_checkpoint),
                  (params, batch_stats, opt_state, bs_checkpoint))


def test_plasticity_resets_inside_land_exactly():
    """A shrink-and-perturb inside the resetting chain lands on its values bit for bit, where
    optax.apply_updates (Flax's TrainState) lands only within rounding."""
    variables = _variables()
    inner = resetax.shrink_and_perturb(
        optax.sgd(0.1, momentum=0.9),
        lambda key: CNN().init(key, jnp.zeros((1, 8, 1)), train=False)["params"],
        key=2, shrink=0.7, perturb=0.3, every=2)
    tx = resetax.stochastic_resetting(inner, reset_prob=0.0, key=1, patience=None)
    state = resetax.linen.TrainState.create(apply_fn=CNN().apply, params=variables["params"],
                                            tx=tx, batch_stats=variables["batch_stats"])
    train_step = jax.jit(_step)
    inexact = 0
    for step in range(4):
        before = state.params
        state = train_step(state, *_data(step), np.float32(NAN))
        plasticity = state.opt_state.inner_state
        assert bool(plasticity.did_reset) == (step % 2 == 1)
        if plasticity.did_reset:
            assert _equal(state.params, plasticity.target)
            updates = jax.tree.map(lambda t, p: t - p, plasticity.target, before)
            inexact += not _equal(optax.apply_updates(before, updates), plasticity.target)
    assert inexact >= 1  # the exact landing is not a coincidence of the values


def test_apply_gradients_without_value_is_a_one_line_type_error():
    state = _create()
    grads = jax.tree.map(jnp.zeros_like, state.params)
    for call in (lambda: state.apply_gradients(grads=grads),
                 lambda: jax.jit(lambda s: s.apply_gradients(grads=grads))(state)):
        with pytest.raises(TypeError) as err:
            call()
        assert str(err.value).splitlines()[0] == resetax.resetting.MISSING_VALUE_MSG


def test_bad_arguments_raise_value_errors_naming_them():
    params = _variables()["params"]
    with pytest.raises(ValueError, match="tx must contain exactly one .*train_state.TrainState"):
        resetax.linen.TrainState.create(apply_fn=CNN().apply, params=params, tx=optax.sgd(0.1))
    two = optax.chain(_tx(), _tx())
    with pytest.raises(ValueError, match="exactly one.*found 2"):
        resetax.linen.TrainState.create(apply_fn=CNN().apply, params=params, tx=two)
    state = resetax.linen.TrainState.create(apply_fn=CNN().apply, params=params, tx=_tx())
    with pytest.raises(ValueError, match="batch_stats was passed.*has none"):
        state.apply_gradients(grads=params, value=1.0, batch_stats={"mean": jnp.zeros(1)})
    for tx in (None, optax.sgd):
        with pytest.raises(TypeError, match="^tx must be an optax transformation .*, got "):
            resetax.linen.TrainState.create(apply_fn=CNN().apply, params=params, tx=tx)
    with pytest.raises(ValueError, match="^grads must have the structure of params"):
        state.apply_gradients(grads={"Conv_0": params["Conv_0"]}, value=1.0)
    state = _create()
    stats = jax.tree.map(lambda s: jnp.zeros(s.shape[:-1] + (5,)), state.batch_stats)
    with pytest.raises(ValueError, match=r"^batch_stats\['BatchNorm_0'\]\['mean'\] must have "
                                         r"shape \(4,\), as in the state's, got \(5,\)"):
        state.apply_gradients(grads=state.params, value=1.0, batch_stats=stats)


def test_without_batch_stats_behaves_like_the_parent_class_between_resets():
    params = _variables()["params"]
    ours = resetax.linen.TrainState.create(apply_fn=None, params=params,
                                           tx=_tx(reset_prob=0.0, patience=None))
    flax_state = ours.__class__.__mro__[1].create(apply_fn=None, params=params,
                                                  tx=optax.sgd(0.1, momentum=0.9))
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(3):
        ours = ours.apply_gradients(grads=grads, value=jnp.float32(NAN))
        flax_state = flax_state.apply_gradients(grads=grads)
    assert ours.batch_stats is None and ours.batch_stats_checkpoint is None
    assert _equal(ours.params, flax_state.params) and int(ours.step) == 3


@pytest.fixture(scope="module")
def one_device_run():
    return _run(_create(), 24)


def test_pmap_replicas_identical_and_match_one_device(one_device_run):
    """pmap on 8 devices, 2 examples each: cross-replica BatchNorm, gradients and value pmean'd."""
    assert jax.device_count() >= 8, "conftest.py simulates 8 CPU devices"
    state, flags = one_device_run
    n = 8
    variables = _variables()
    replicated = resetax.linen.TrainState.create(
        apply_fn=CNN(axis_name="batch").apply, params=variables["params"], tx=_tx(),
        batch_stats=variables["batch_stats"])
    replicated = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), replicated)

    @functools.partial(jax.pmap, axis_name="batch")
    def pmap_step(state, x, y, val_loss):
        grads, batch_stats = jax.grad(
            lambda p: _loss_and_stats(state.apply_fn, p, state.batch_stats, x, y),
            has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, "batch")
        return state.apply_gradients(
            grads=grads, value=jax.lax.pmean(val_loss, "batch"), batch_stats=batch_stats)

    pmap_flags = []
    for step in range(24):
        x, y = _data(step)
        value = np.full(n, VALUES[step % len(VALUES)], np.float32)
        replicated = pmap_step(replicated, x.reshape(n, -1, 8, 1), y.reshape(n, -1), value)
        resetting = replicated.resetting_state
        assert len(set(np.asarray(resetting.did_reset).tolist())) == 1
        pmap_flags.append((bool(resetting.did_reset[0]), bool(resetting.checkpoint_updated[0])))
    assert pmap_flags == flags and sum(r for r, _ in flags) >= 2
    for leaf in jax.tree.leaves(replicated):
        assert all(np.array_equal(leaf[0], leaf[i]) for i in range(1, n))
    first = jax.tree.map(lambda x: x[0], (replicated.params, replicated.batch_stats))
    # The batch statistics and the gradient mean are reduced across devices in another order:
    # float32 rounding (~1e-7 a step) stays far below 1e-5, while one other reset or checkpoint
    # would move the params by ~1e-2.
    assert _max_abs_diff(first, (state.params, state.batch_stats)) < 1e-5


def test_sharded_jit_matches_one_device(one_device_run):
    state, flags = one_device_run
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    sharded = jax.device_put(_create(), replicated)
    sharded_step = jax.jit(_step, out_shardings=replicated)

    def step(state, x, y, val_loss):
        return sharded_step(state, *jax.device_put((x, y), batch_sharded), val_loss)

    sharded, sharded_flags = _run(sharded, 24, step)
    assert sharded_flags == flags
    for leaf in jax.tree.leaves(sharded):
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    assert _max_abs_diff((sharded.params, sharded.batch_stats),
                         (state.params, state.batch_stats)) < 1e-5


def _resume_matches(restore):
    """Saves after 5 steps, restores into a state of another init seed, continues 7 steps."""
    state, _ = _run(_create(), 5)
    saved = restore(state)
    state, flags = _run(state, 7, first=5)
    # What follows the save point must exercise what was saved: the key, the checkpoints.
    assert any(r for r, _ in flags) and any(c for _, c in flags)
    restored, restored_flags = _run(saved(_create(seed=1)), 7, first=5)
    assert restored_flags == flags
    assert _equal(restored, state)


def test_flax_serialization_resumes_exactly():
    def restore(state):
        data = serialization.to_bytes(state)
        return lambda target: serialization.from_bytes(target, data)

    _resume_matches(restore)


def test_orbax_checkpoint_resumes_exactly(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")

    def restore(state):
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp_path / "state", state)
        checkpointer.wait_until_finished()

        def load(target):
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            return checkpointer.restore(tmp_path / "state", abstract)

        return load

    _resume_matches(restore)


def test_overwrite_with_gradient_leaves_take_their_gradients_as_in_flax():
    """Flax's fp8 convention: the _overwrite_with_gradient collection bypasses the optimizer."""
    owg = resetax.linen.train_state.OVERWRITE_WITH_GRADIENT
    params = {"params": {"w": jnp.ones(2)}, owg: {"scale": jnp.ones(1)}}
    state = resetax.linen.TrainState.create(apply_fn=None, params=params,
                                            tx=_tx(reset_prob=1.0, patience=None))
    grads = {"params": {"w": jnp.full(2, 3.0)}, owg: {"scale": jnp.full(1, 7.0)}}
    state = state.apply_gradients(grads=grads, value=jnp.float32(NAN))
    assert bool(state.resetting_state.did_reset)
    np.testing.assert_array_equal(state.params["params"]["w"], jnp.ones(2))  # reset, exactly
    np.testing.assert_array_equal(state.params[owg]["scale"], jnp.full(1, 7.0))
