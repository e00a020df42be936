"""Stochastic resetting of SGD as an Optax gradient transformation.

With probability ``reset_prob`` per step, the parameters jump back to a checkpoint (the best
validation parameters); otherwise the inner optimizer's update is applied. Everything — the random
draw, best tracking, the patience trigger and the snapshot — happens inside one jittable update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax has no public name for its "params are required" message; it lives in optax._src.base.
from optax._src.base import NO_PARAMS_MSG

from resetax import _checks
from resetax._trees import is_masked, path_name

__all__ = [
    "ModelStateCheckpoint",
    "ResettingState",
    "apply_updates",
    "find_resetting_state",
    "init_model_state_checkpoint",
    "reset_model_state",
    "set_checkpoint",
    "stochastic_resetting",
]

_MODES = ("min", "max")
# The one line every missing `value` raises: the transform's update, nnx.Optimizer.update and
# linen.TrainState.apply_gradients all forward to the same check.
MISSING_VALUE_MSG = (
    "value= is required: the validation value measured at the params of this update (a scalar), "
    "or value=jnp.float32(jnp.nan) on a step with no measurement."
)
_MISSING = object()
_INT32_MAX = int(np.iinfo(np.int32).max)  # the step counters are int32
_RESET_PROB = "a probability in [0, 1] (a float, a scalar array or a schedule step -> probability)"


class ResettingState(NamedTuple):
    """State of :func:`stochastic_resetting`.

    Attributes:
      count: Number of updates taken so far (``int32``); a ``reset_prob`` schedule is evaluated
        at it.
      key: Raw PRNG key data for the next reset draw; split at every update.
      inner_state: State of the inner transformation.
      checkpoint: The parameters a reset returns to, on the leaves that may reset
        (``optax.MaskedNode`` on the others, so they cost no memory). Before resetting is
        active it holds the best parameters seen so far (the first params until a first
        measurement), the checkpoint-to-be.
      checkpoint_inner_state: With ``reset_inner_state=True``, the floating-point leaves of the
        inner state taken together with ``checkpoint`` (``optax.MaskedNode`` elsewhere);
        otherwise ``optax.EmptyState()``.
      best_value: Best validation value seen so far (``float32``; ``+inf`` in ``"min"`` mode and
        ``-inf`` in ``"max"`` mode before the first measurement).
      steps_since_best: Updates since ``best_value`` last improved, or since the first update
        while nothing was measured (``int32``).
      active: Whether random resets are switched on (``bool``); once on, it stays on.
      did_reset: Whether this update sent the parameters to the checkpoint (``bool``): a random
        reset or, with ``reset_on_nonfinite=True``, a non-finite update rolled back.
      checkpoint_updated: Whether this update copied ``params`` into ``checkpoint`` (``bool``);
        non-parameter model state is snapshotted at the same moments
        (see :func:`reset_model_state`).
      num_resets: Number of random resets so far (``int32``); rollbacks of non-finite updates
        are not counted here.
      num_nonfinite_resets: Number of updates found non-finite and rolled back to the
        checkpoint (``int32``); always 0 unless ``reset_on_nonfinite=True``. An update can
        count in both ``num_resets`` and here.
      num_values: Number of finite ``value`` measurements received so far (``int32``). While it
        is 0 no measurement has selected a checkpoint, and ``patience`` cannot switch
        resetting on.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import resetax
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=0.5, key=0)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> state = resetax.find_resetting_state(state)
      >>> print(state.checkpoint["w"], int(state.num_resets), bool(state.active))
      [1. 1.] 0 True
    """

    count: jax.Array
    key: jax.Array
    inner_state: optax.OptState
    checkpoint: optax.Params
    checkpoint_inner_state: Any
    best_value: jax.Array
    steps_since_best: jax.Array
    active: jax.Array
    did_reset: jax.Array
    checkpoint_updated: jax.Array
    num_resets: jax.Array
    num_nonfinite_resets: jax.Array
    num_values: jax.Array


class ModelStateCheckpoint(NamedTuple):
    """Snapshot of non-parameter model state (e.g. BatchNorm ``batch_stats``).

    Attributes:
      model_state: The model state taken at the moments the parameters were copied into
        :attr:`ResettingState.checkpoint`.
      count: The :attr:`ResettingState.count` that :func:`reset_model_state` last acted on
        (``int32``), so that a call after no new update (an accumulation-only mini-step of
        ``optax.MultiSteps``) changes nothing; ``None`` (a checkpoint built by hand) acts on
        every call.

    Examples:
      >>> import jax.numpy as jnp
      >>> import resetax
      >>> stats = {"mean": jnp.zeros(2)}
      >>> snapshot = resetax.init_model_state_checkpoint(stats)
      >>> isinstance(snapshot, resetax.ModelStateCheckpoint), snapshot.model_state["mean"]
      (True, Array([0., 0.], dtype=float32))
    """

    model_state: Any
    count: Any = None


def stochastic_resetting(
    inner: optax.GradientTransformation,
    reset_prob: float | jax.Array | optax.Schedule,
    *,
    key: int | jax.Array,
    patience: int | None = None,
    adaptive: bool = True,
    reset_inner_state: bool = False,
    mask: Any | Callable[[optax.Params], Any] | None = None,
    mode: str = "min",
    min_delta: float = 0.0,
    reset_on_nonfinite: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic resetting: with probability ``reset_prob`` jump back to a checkpoint.

    At update :math:`t` with parameters :math:`\theta_t`, inner update :math:`u_t`, and an optional
    validation value :math:`v_t` measured at :math:`\theta_t` (``"min"`` mode shown):

    .. math::

      \text{improved}_t &= v_t < b_{t-1} - \delta, \qquad
      b_t = \text{improved}_t \; ? \; v_t : b_{t-1} \\
      s_t &= \text{improved}_t \; ? \; 0 : s_{t-1} + 1, \qquad
      a_t = a_{t-1} \lor (s_t \ge T \land b_t < \infty) \\
      c_t &= \theta_t \text{ if } t = 0 \text{ or } \big(\text{improved}_t \land
      (\lnot a_{t-1} \lor \text{adaptive})\big), \text{ else } c_{t-1} \\
      \Delta\theta_t &= \begin{cases} c_t - \theta_t & a_t \land \xi_t < r_t,
      \quad \xi_t \sim U[0, 1) \\ u_t & \text{otherwise,} \end{cases}

    where :math:`T` is ``patience``, :math:`\delta` is ``min_delta``, :math:`c_t` the checkpoint
    and :math:`r_t` the reset probability. A non-finite ``value`` is no measurement, and
    ``patience`` only counts once a finite one has arrived (:math:`b_t` finite): resetting never
    switches on toward a checkpoint that no measurement selected. With ``patience=None``
    resetting is active from the first update, whose ``params`` become the checkpoint.
    ``reset_prob=0`` is plain training with the inner optimizer; ``reset_prob=1`` keeps the
    parameters at the checkpoint once active (early stopping).

    On a reset the inner state keeps the state the inner update produced (its integer
    counters, and so learning-rate schedules, keep counting); with ``reset_inner_state=True``
    its floating-point leaves (momentum, moments) instead take the values they had when the
    checkpoint was taken.

    With ``reset_on_nonfinite=True``, an update whose result :math:`\theta_t + u_t` has a NaN or
    infinite entry (on any leaf, also one the ``mask`` keeps from resetting) is rolled back, at
    any step, active or not: the leaves that may reset go to the checkpoint (the best
    parameters so far), the others keep their current values, and the floating-point leaves of
    the inner state are restored, because the momentum that produced a non-finite update is
    likely non-finite or huge itself, and keeping it would blow up the next step again: they
    take their checkpoint values with ``reset_inner_state=True``, otherwise the values
    ``inner.init`` gives for the rolled-back parameters (zero momentum and moments for SGD and
    Adam). Integer leaves keep counting. ``did_reset`` is set, so :func:`apply_updates` and
    :func:`reset_model_state` (BatchNorm statistics) treat the rollback like a reset; it is
    counted in ``num_nonfinite_resets``, not in ``num_resets``.

    Under data parallelism the decision is identical on every replica as long as the state
    (and so the key) is replicated and ``value`` is the same everywhere (``lax.pmean`` it); never
    fold a device index into the key.

    Args:
      inner: The optimizer whose updates are applied between resets, e.g. ``optax.sgd(...)``.
      reset_prob: Probability of a reset per update once resetting is active, in ``[0, 1]``: a
        Python float or concrete scalar array (both checked here), a traced scalar (so that
        ``optax.inject_hyperparams`` can change it) or a schedule ``step -> probability``.
        Traced values and a schedule's outputs are the caller's responsibility; they are
        clipped to ``[0, 1]`` (NaN never resets).
      key: An ``int`` seed or a ``jax.random.key``; the state carries it and splits it every
        update.
      patience: Updates without a better ``value`` before resetting switches on (the paper's
        threshold :math:`T`). ``None``: on from the first update.
      adaptive: If ``True``, the checkpoint follows every new best, also once resetting is
        active. If ``False`` it stops following when resetting switches on: resets return to the
        best parameters seen before activation (with ``patience=None``, the first params).
      reset_inner_state: If ``True``, a reset also restores the floating-point leaves of the inner
        state to their values at the checkpoint; integer leaves keep counting.
      mask: Which parameter leaves may reset: a pytree of bools with the structure of the params
        (or a prefix of it), or a callable ``params -> pytree``. ``False`` leaves never reset and
        take no checkpoint memory; at least one leaf must be ``True``. ``None``: all leaves.
      mode: ``"min"`` if a lower ``value`` is better (a loss), ``"max"`` if higher is better (an
        accuracy).
      min_delta: Margin by which ``value`` must beat the best to count as an improvement.
      reset_on_nonfinite: If ``True``, roll back every update that would make a parameter NaN
        or infinite (see above). It costs one reduction over the parameters per update.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
      value, **extra_args)`` requires ``params`` and ``value`` (as
      ``optax.contrib.reduce_on_plateau`` does) and forwards the extra arguments to ``inner``.
      ``value`` is the validation metric measured at ``params``, a scalar; pass
      ``jnp.float32(jnp.nan)`` on the steps that measured nothing. Its state is a
      :class:`ResettingState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import resetax
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.5), reset_prob=1.0, key=0, patience=2)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> state = tx.init(params)
      >>> for value in [3.0, 1.0, 2.0, 2.0]:  # validation loss measured at `params`
      ...   grads = {"w": jnp.ones(2)}
      ...   updates, state = tx.update(grads, state, params, value=value)
      ...   params = resetax.apply_updates(params, updates, state)
      ...   print(bool(state.active), bool(state.did_reset), params["w"])
      False False [0.5 1.5]
      False False [0. 1.]
      False False [-0.5  0.5]
      True True [0.5 1.5]

      The best value (1.0) was measured at ``[0.5, 1.5]``; two updates later patience ran out,
      resetting switched on and, with ``reset_prob=1``, sent the parameters back there.

      With ``reset_on_nonfinite=True`` a NaN gradient rolls back to the checkpoint instead of
      poisoning the parameters:

      >>> tx = resetax.stochastic_resetting(optax.sgd(0.5), reset_prob=0.0, key=0,
      ...                                   reset_on_nonfinite=True)
      >>> params = jnp.array([1.0, 2.0])
      >>> state = tx.init(params)  # the first params are the checkpoint
      >>> for grads in [jnp.ones(2), jnp.array([1.0, jnp.nan])]:
      ...   updates, state = tx.update(grads, state, params, value=jnp.nan)
      ...   params = resetax.apply_updates(params, updates, state)
      ...   print(params, int(state.num_nonfinite_resets))
      [0.5 1.5] 0
      [1. 2.] 1

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, Machine Learning: Science and Technology 6,
      015062 (2025).

      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://arxiv.org/abs/1102.2704>`_, Physical Review Letters 106, 160601 (2011).

    .. warning::
      The updates of a reset step are ``checkpoint - params``: they must reach
      ``optax.apply_updates`` unchanged, so put this transformation last in an ``optax.chain``
      (like ``optax.lookahead``). ``optax.apply_updates`` then lands within float rounding of the
      checkpoint; :func:`apply_updates` lands on it bit for bit.

    .. note::
      ``value`` is required on every call, so that a training loop that never passes it (e.g.
      flax's ``TrainState.apply_gradients``, which calls ``tx.update(grads, opt_state,
      params)``) fails at once instead of resetting to parameters no measurement chose; use
      :class:`resetax.linen.TrainState` there. Inside your own jitted step, pass "no
      measurement" as ``jnp.float32(jnp.nan)`` (or ``np.float32``), not ``float("nan")``: a
      Python float is weakly typed, so alternating it with a measured float32 array compiles
      the step twice.

    .. note::
      Under ``optax.MultiSteps(tx, every_k_schedule=k)`` the inner transformation runs on every
      mini-step but keeps its new state only on the mini-step that applies the accumulated
      gradients (every ``k``-th): only the ``value`` passed on that call counts; values passed
      on the other mini-steps are dropped. Measure at the mini-steps where
      ``MultiSteps.has_updated`` will be true, i.e. after the ``(k-1)``-th accumulation.

    .. note::
      With ``optax.inject_hyperparams``, pass ``static_args=("key", "patience", "mask")`` (those
      you use) so that only ``reset_prob`` and ``min_delta`` become injected hyperparameters.
    """
    _check_inner(inner)
    _check_reset_prob(reset_prob)
    _checks.instance("key", key, (int, np.integer, jax.Array, np.ndarray),
                     "an int seed or a jax.random.key")
    _check_key(key)
    _check_patience(patience)
    _check_adaptive(adaptive)
    _checks.instance("reset_inner_state", reset_inner_state, (bool,),
                     "a Python bool (it decides the state's structure)")
    _checks.instance("reset_on_nonfinite", reset_on_nonfinite, (bool,), "a Python bool")
    _check_mask(mask)
    _checks.one_of("mode", mode, _MODES)
    _checks.finite_nonnegative("min_delta", min_delta, scalar=True)
    inner = optax.with_extra_args_support(inner)
    sign = 1.0 if mode == "min" else -1.0

    def init_fn(params):
        mask_tree = _full_mask(mask, params)
        inner_state = inner.init(params)
        checkpoint_inner_state = optax.EmptyState()
        if reset_inner_state:
            checkpoint_inner_state = _select(
                _inner_state_mask(inner, inner_state, mask_tree), inner_state)
        return ResettingState(
            count=jnp.zeros([], jnp.int32),
            key=_key_data(key),
            inner_state=inner_state,
            checkpoint=_select(mask_tree, params),
            checkpoint_inner_state=checkpoint_inner_state,
            best_value=jnp.asarray(sign * jnp.inf, jnp.float32),
            steps_since_best=jnp.zeros([], jnp.int32),
            active=jnp.asarray(patience is None),
            did_reset=jnp.asarray(False),
            checkpoint_updated=jnp.asarray(False),
            num_resets=jnp.zeros([], jnp.int32),
            num_nonfinite_resets=jnp.zeros([], jnp.int32),
            num_values=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=_MISSING, **extra_args):
        _check_update_args(params, value)
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)

        value = jnp.asarray(value, jnp.float32)
        measured = jnp.isfinite(value)
        improved = measured & (sign * value < sign * state.best_value - min_delta)
        best_value = jnp.where(improved, value, state.best_value)
        steps_since_best = jnp.where(improved, 0, optax.safe_increment(state.steps_since_best))
        take = (state.count == 0) | (improved & (~state.active | jnp.asarray(adaptive)))
        # Patience runs out only toward a checkpoint that a measurement selected (a finite best).
        active = state.active if patience is None else (
            state.active | ((steps_since_best >= patience) & jnp.isfinite(best_value)))

        next_key, draw_key = jax.random.split(_wrap_key(state.key, key))
        prob = reset_prob(state.count) if callable(reset_prob) else reset_prob
        # The draw lies in [0, 1), so the clip does not change the decision; it pins down the
        # probability that applies when a traced value or a schedule leaves [0, 1].
        random_reset = active & (jax.random.uniform(draw_key) < jnp.clip(prob, 0.0, 1.0))
        # A rollback: an update that would leave non-finite params (only when asked for).
        nonfinite = (~_all_finite(params, inner_updates) if reset_on_nonfinite
                     else jnp.asarray(False))
        did_reset = random_reset | nonfinite

        checkpoint = _where_tree(take, params, state.checkpoint)

        def leaf_update(c, u, p):
            if not is_masked(c):
                return jnp.where(did_reset, (c - p).astype(u.dtype), u)
            # A leaf that never resets has no checkpoint: a rollback leaves it where it is
            # (a MaskedNode update, under optax.masked, stays one).
            return u if is_masked(u) else jnp.where(nonfinite, jnp.zeros_like(u), u)

        updates = jax.tree.map(leaf_update, checkpoint, inner_updates, params, is_leaf=is_masked)
        checkpoint_inner_state = state.checkpoint_inner_state
        if reset_inner_state:
            checkpoint_inner_state = _where_tree(take, state.inner_state, checkpoint_inner_state)
            inner_state = _where_tree(random_reset, checkpoint_inner_state, inner_state)
        if reset_on_nonfinite:
            restored = _restored_inner_state(
                inner, inner_state, checkpoint_inner_state, checkpoint, params)
            inner_state = _where_tree(nonfinite, restored, inner_state)

        return updates, ResettingState(
            count=optax.safe_increment(state.count),
            key=jax.random.key_data(next_key),
            inner_state=inner_state,
            checkpoint=checkpoint,
            checkpoint_inner_state=checkpoint_inner_state,
            best_value=best_value,
            steps_since_best=steps_since_best,
            active=active,
            did_reset=did_reset,
            checkpoint_updated=take,
            num_resets=state.num_resets + random_reset.astype(jnp.int32),
            num_nonfinite_resets=state.num_nonfinite_resets + nonfinite.astype(jnp.int32),
            num_values=jnp.where(measured, optax.safe_increment(state.num_values),
                                 state.num_values),
        )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_resetting_state(state: optax.OptState) -> ResettingState:
    """Returns the one :class:`ResettingState` inside an optimizer state.

    The resetting transformation may sit inside ``optax.chain``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps`` or ``optax.masked``; this finds its state wherever it is.

    Args:
      state: An optimizer state that contains exactly one :class:`ResettingState`.

    Returns:
      That :class:`ResettingState`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import resetax
      >>> tx = optax.chain(optax.clip_by_global_norm(1.0),
      ...                  resetax.stochastic_resetting(optax.sgd(0.1), 0.01, key=0))
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> int(resetax.find_resetting_state(state).num_resets)
      0
    """
    found = [s for s in jax.tree.leaves(state, is_leaf=_is_resetting_state)
             if _is_resetting_state(s)]
    if len(found) != 1:
        raise ValueError(
            f"state must contain exactly one ResettingState (the state of "
            f"resetax.stochastic_resetting), found {len(found)}."
        )
    return found[0]


def apply_updates(
    params: optax.Params, updates: optax.Updates, state: optax.OptState
) -> optax.Params:
    """Applies updates like ``optax.apply_updates``, landing exactly on the checkpoint on a reset.

    ``optax.apply_updates(params, checkpoint - params)`` equals the checkpoint only to within float
    rounding; this returns the checkpoint's own values, bit for bit, on the leaves that reset at
    this step, and ``optax.apply_updates`` elsewhere. It is jittable. A plasticity
    transformation inside the chain (:func:`resetax.reset_to_init`,
    :func:`resetax.shrink_and_perturb`, :func:`resetax.recycle_dormant_units`) lands exactly on
    its values too, as with :func:`resetax.apply_reset_updates`.

    Args:
      params: The parameters passed to ``update``.
      updates: The updates returned by ``update``.
      state: The optimizer state returned by the same ``update`` (it may wrap the
        :class:`ResettingState`, e.g. in an ``optax.chain``); it must contain exactly one.

    Returns:
      The new parameters.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import resetax
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.3), reset_prob=1.0, key=0)
      >>> params = jnp.array([0.1, 0.7])
      >>> state = tx.init(params)
      >>> # A reset to the first params (patience=None: resetting is on from the start).
      >>> updates, state = tx.update(jnp.ones(2), state, params, value=jnp.nan)
      >>> new_params = resetax.apply_updates(params, updates, state)
      >>> bool(state.did_reset), bool((new_params == params).all())
      (True, True)
    """
    find_resetting_state(state)  # exactly one
    from resetax.plasticity import apply_reset_updates  # imported here: it imports this module

    return apply_reset_updates(params, updates, state)


def set_checkpoint(
    state: optax.OptState, params: optax.Params, inner_state: optax.OptState | None = None
) -> optax.OptState:
    """Makes ``params`` (and optionally an inner state) the checkpoint that resets return to.

    For users who pick the checkpoint themselves, e.g. after evaluating a candidate more
    thoroughly than the per-step ``value`` allows. Only the leaves that may reset are stored.
    A later ``update`` still replaces it whenever it takes a checkpoint itself (at the first
    update, at a new best while resetting is inactive, and at every new best with
    ``adaptive=True``). A :class:`ModelStateCheckpoint` is not touched: replace its
    ``model_state`` yourself if the model has one.

    Args:
      state: An optimizer state containing one :class:`ResettingState`.
      params: The new checkpoint parameters, with the structure of the optimized params.
      inner_state: With ``reset_inner_state=True``, the inner optimizer state to restore on a
        reset (its floating-point leaves are stored); must be ``None`` otherwise.

    Returns:
      ``state`` with the checkpoint replaced.

    Examples:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import resetax
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=1.0, key=0)
      >>> params = jnp.zeros(2)
      >>> state = tx.init(params)
      >>> state = resetax.set_checkpoint(state, jnp.array([5.0, 6.0]))
      >>> # Update 0 snapshots `params` ...
      >>> _, state = tx.update(jnp.zeros(2), state, params, value=jnp.nan)
      >>> state = resetax.set_checkpoint(state, jnp.array([5.0, 6.0]))  # ... so set it after
      >>> updates, state = tx.update(jnp.zeros(2), state, params, value=jnp.nan)
      >>> resetax.apply_updates(params, updates, state)
      Array([5., 6.], dtype=float32)
    """

    def replace(resetting: ResettingState) -> ResettingState:
        checkpoint = _replace_leaves(resetting.checkpoint, params, "params")
        checkpoint_inner_state = resetting.checkpoint_inner_state
        if inner_state is not None:
            if isinstance(checkpoint_inner_state, optax.EmptyState):
                raise ValueError(
                    "inner_state can only be set when the transformation was built with "
                    "reset_inner_state=True."
                )
            checkpoint_inner_state = _replace_leaves(
                checkpoint_inner_state, inner_state, "inner_state")
        return resetting._replace(
            checkpoint=checkpoint, checkpoint_inner_state=checkpoint_inner_state)

    find_resetting_state(state)
    return jax.tree.map(
        lambda s: replace(s) if _is_resetting_state(s) else s, state, is_leaf=_is_resetting_state)


def init_model_state_checkpoint(model_state: Any) -> ModelStateCheckpoint:
    """Starts a checkpoint of non-parameter model state, e.g. BatchNorm ``batch_stats``.

    Args:
      model_state: The model state at initialization.

    Returns:
      A :class:`ModelStateCheckpoint` holding one copy of it, to be threaded through the train
      step with :func:`reset_model_state`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import resetax
      >>> checkpoint = resetax.init_model_state_checkpoint({"mean": jnp.zeros(3)})
      >>> checkpoint.model_state["mean"].shape
      (3,)
    """
    return ModelStateCheckpoint(jax.tree.map(jnp.array, model_state), jnp.zeros([], jnp.int32))


def reset_model_state(
    model_state: Any,
    new_model_state: Any,
    checkpoint: ModelStateCheckpoint,
    opt_state: optax.OptState,
) -> tuple[Any, ModelStateCheckpoint]:
    """Resets non-parameter model state (BatchNorm statistics) together with the params.

    Call it in the train step right after the resetting update. It snapshots ``model_state`` —
    the state that belongs with the ``params`` passed to ``update`` — whenever those params were
    copied into the checkpoint, and returns the snapshot in place of ``new_model_state`` (the
    state after this step's forward pass) whenever the update was a reset or a rollback of a
    non-finite update. Jittable.

    Under ``optax.MultiSteps`` the resetting state of an accumulation-only mini-step is the one
    the last real update left, flags included; the checkpoint's ``count`` tells such a call
    apart, and it returns ``new_model_state`` and the checkpoint unchanged, so that statistics
    are never snapshotted apart from the parameters they belong with.

    Args:
      model_state: The model state that goes with the ``params`` given to ``update`` (before this
        step's forward pass updated it).
      new_model_state: The model state after this step's forward pass.
      checkpoint: The :class:`ModelStateCheckpoint` threaded through training.
      opt_state: The optimizer state returned by the resetting update.

    Returns:
      ``(model_state, checkpoint)``: the model state to carry into the next step and the
      updated checkpoint.

    Examples:
      A train step for a Flax model with BatchNorm, resetting ``batch_stats`` with the params:

      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp, optax, resetax
      >>> class Net(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x, train):
      ...     x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
      ...     return nn.Dense(2)(nn.relu(x))
      >>> net = Net()
      >>> x, y = jnp.ones((8, 3)), jnp.zeros(8, jnp.int32)
      >>> variables = net.init(jax.random.key(0), x, train=False)
      >>> params, batch_stats = variables["params"], variables["batch_stats"]
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=0.5, key=0)
      >>> opt_state = tx.init(params)
      >>> bs_checkpoint = resetax.init_model_state_checkpoint(batch_stats)
      >>> @jax.jit
      ... def train_step(params, batch_stats, opt_state, bs_checkpoint, val_loss):
      ...   def loss_fn(p):
      ...     logits, updated = net.apply({"params": p, "batch_stats": batch_stats}, x,
      ...                                 train=True, mutable=["batch_stats"])
      ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      ...     return loss, updated["batch_stats"]
      ...   grads, new_batch_stats = jax.grad(loss_fn, has_aux=True)(params)
      ...   updates, opt_state = tx.update(grads, opt_state, params, value=val_loss)
      ...   new_params = resetax.apply_updates(params, updates, opt_state)
      ...   new_batch_stats, bs_checkpoint = resetax.reset_model_state(
      ...       batch_stats, new_batch_stats, bs_checkpoint, opt_state)
      ...   return new_params, new_batch_stats, opt_state, bs_checkpoint
      >>> out = train_step(params, batch_stats, opt_state, bs_checkpoint, jnp.nan)
      >>> params, batch_stats, opt_state, bs_checkpoint = out
    """
    resetting = find_resetting_state(opt_state)
    count = checkpoint.count
    new_update = jnp.asarray(True) if count is None else resetting.count != count
    snapshot = _where_tree(resetting.checkpoint_updated & new_update, model_state,
                           checkpoint.model_state)
    model_state = _where_tree(resetting.did_reset & new_update, snapshot, new_model_state)
    return model_state, ModelStateCheckpoint(
        snapshot, None if count is None else jnp.asarray(resetting.count, jnp.int32))


def _check_resetting_tx(tx: optax.GradientTransformation, params: Any, plain: str) -> None:
    """Raises a one-line ValueError unless ``tx`` holds exactly one resetting transformation.

    ``plain`` names what to use for training without resetting. The check traces ``tx.init``
    abstractly: it costs no memory and no computation.
    """
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(
            f"tx must be an optax transformation (init and update) containing "
            f"resetax.stochastic_resetting, got {type(tx).__name__}.")
    try:
        find_resetting_state(jax.eval_shape(tx.init, params))
    except ValueError as err:
        raise ValueError(
            f"tx must contain exactly one resetax.stochastic_resetting transformation (for "
            f"training without resetting use {plain}); {err}"
        ) from None


def _check_update_args(params, value) -> None:
    if params is None:
        raise ValueError(NO_PARAMS_MSG)
    if value is _MISSING or value is None:
        raise TypeError(MISSING_VALUE_MSG)
    try:
        dtype = jnp.result_type(value)
    except TypeError:
        dtype = np.dtype(object)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise ValueError(
            f"value must be a real number (the validation metric measured at the params, or "
            f"jnp.nan when none was measured), got {value!r}.")
    if jnp.ndim(value) != 0:
        raise ValueError(
            f"value must be a scalar (the validation metric), got shape {jnp.shape(value)}.")


def _full_mask(mask, params):
    """Broadcasts a mask (pytree prefix of bools, or callable) to the full params structure."""
    mask_tree = jax.tree.map(lambda _: True, params) if mask is None else (
        mask(params) if callable(mask) else mask)
    for leaf in jax.tree.leaves(mask_tree):
        if not _is_concrete_bool(leaf):
            shown = "a traced array (it must be concrete: a mask decides the state's structure"
            shown = (f"{shown}; return Python bools from a callable mask)"
                     if isinstance(leaf, jax.core.Tracer) else repr(leaf))
            raise ValueError(f"mask must give a bool for every parameter leaf (True: it may "
                             f"reset), got {shown}.")
    try:
        full = jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask_tree, params)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"mask must have the structure of the params (or a prefix of it): "
            f"mask {jax.tree.structure(mask_tree)} vs params {jax.tree.structure(params)}."
        ) from err
    leaves = jax.tree.leaves(full)
    if leaves and not any(leaves):
        raise ValueError(
            f"mask must be True on at least one parameter leaf; it is False on all {len(leaves)} "
            f"leaves of the params, so every reset would move nothing."
        )
    for path, (m, p) in _paths_and_leaves(full, params):
        if m and jnp.result_type(p) == jnp.bool_:
            raise ValueError(
                f"params leaf {path!r} is a bool array, which a reset cannot move (updates are "
                f"differences); leave it out with a mask that is False there.")
    return full


def _is_concrete_bool(x) -> bool:
    if isinstance(x, (bool, np.bool_)):
        return True
    return (isinstance(x, (np.ndarray, jax.Array)) and not isinstance(x, jax.core.Tracer)
            and x.shape == () and x.dtype == np.bool_)


def _paths_and_leaves(full, params):
    """``(path, (mask_leaf, param_leaf))`` over the params' leaves, paths as ``a/b``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(path_name(path), (m, p))
            for m, (path, p) in zip(jax.tree.leaves(full), flat, strict=True)]


def _inner_state_mask(inner, inner_state, mask_tree):
    """Marks the inner-state leaves restored by a reset: floats belonging to resettable params."""
    if all(jax.tree.leaves(mask_tree)):
        return jax.tree.map(_is_float, inner_state)
    try:
        param_mask = optax.tree_utils.tree_map_params(
            inner, lambda _, m: m, inner_state, mask_tree,
            transform_non_params=lambda v: jax.tree.map(lambda _: True, v),
        )
    except Exception as err:
        raise ValueError(
            "reset_inner_state=True with a mask needs an inner transformation that supports "
            "optax.tree_map_params, to know which inner-state leaves belong to masked params."
        ) from err
    return jax.tree.map(lambda m, x: bool(m) and _is_float(x), param_mask, inner_state)


def _all_finite(params, updates):
    """Whether ``optax.apply_updates(params, updates)`` is finite everywhere (a traced bool).

    A non-finite update, or one that overflows the params' dtype, makes the sum non-finite.
    """
    finite = jax.tree.leaves(jax.tree.map(
        lambda p, u: jnp.isfinite((p + u).astype(jnp.result_type(p))).all(), params, updates))
    return jnp.stack(finite).all() if finite else jnp.asarray(True)


def _restored_inner_state(inner, inner_state, checkpoint_inner_state, checkpoint, params):
    """The inner state a non-finite update rolls back to.

    Floating-point leaves take their stored checkpoint values where ``reset_inner_state=True``
    keeps some, otherwise the values ``inner.init`` gives for the rolled-back parameters; integer
    leaves (step counts) keep the values the update produced.
    """
    rolled_back = jax.tree.map(lambda c, p: p if is_masked(c) else c, checkpoint, params,
                               is_leaf=is_masked)
    fresh = jax.tree.map(
        lambda new, init: jnp.asarray(init, jnp.result_type(new)) if _is_float(new) else new,
        inner_state, inner.init(rolled_back))
    if isinstance(checkpoint_inner_state, optax.EmptyState):
        return fresh
    return jax.tree.map(lambda stored, x: x if is_masked(stored) else stored,
                        checkpoint_inner_state, fresh, is_leaf=is_masked)


def _select(mask_tree, tree):
    """Copies the leaves of ``tree`` where ``mask_tree`` is True; MaskedNode elsewhere."""
    return jax.tree.map(
        lambda m, x: jnp.array(x) if m else optax.MaskedNode(), mask_tree, tree)


def _where_tree(pred, on_true, on_false):
    """``jnp.where(pred, a, b)`` leafwise; where either side is a MaskedNode, ``b`` is kept."""
    return jax.tree.map(
        lambda a, b: b if is_masked(a) or is_masked(b)
        else jnp.where(pred, a, b).astype(jnp.result_type(b)),
        on_true, on_false, is_leaf=is_masked,
    )


def _replace_leaves(stored, new, name):
    try:
        return jax.tree.map(
            lambda s, x: s if is_masked(s) else jnp.asarray(x, s.dtype).reshape(s.shape),
            stored, new, is_leaf=is_masked,
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{name} must have the structure and shapes of the optimized {name}: "
            f"{jax.tree.structure(new)}."
        ) from err


def _check_patience(patience) -> None:
    if isinstance(patience, jax.Array):
        _checks.check("patience", patience,
                      lambda a: (a >= 0) & (a <= _INT32_MAX) & np.issubdtype(a.dtype, np.integer),
                      f"None or an integer in [0, {_INT32_MAX}]", scalar=True)
    else:
        _checks.int_between("patience", patience, 0, _INT32_MAX, none_ok=True)


def _check_inner(inner) -> None:
    if isinstance(inner, optax.MultiSteps):
        raise TypeError(
            "inner must be an optax.GradientTransformation, got MultiSteps; pass "
            "optax.MultiSteps(...).gradient_transformation(), or wrap the resetting "
            "transformation in MultiSteps instead.")
    _checks.instance("inner", inner, (optax.GradientTransformation,),
                     "an optax.GradientTransformation")


def _check_reset_prob(reset_prob) -> None:
    """A probability, or a schedule whose value (traced abstractly, at no cost) is a scalar."""
    if not callable(reset_prob):
        _checks.probability("reset_prob", reset_prob, scalar=True)
        return
    try:
        out = jax.eval_shape(reset_prob, jax.ShapeDtypeStruct((), jnp.int32))
    except Exception as err:  # a schedule that cannot take a traced step count
        raise ValueError(
            f"reset_prob must be a probability or a schedule step -> probability that takes a "
            f"traced int32 step count; calling it raised {type(err).__name__}: {err}") from None
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape != () or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(
            dtype, jnp.floating)):
        raise ValueError(
            f"reset_prob must be a schedule step -> probability returning a real scalar, got a "
            f"schedule returning {out}.")


def _check_adaptive(adaptive) -> None:
    _checks.instance("adaptive", adaptive, (bool, np.bool_, jax.Array), "a bool")
    if isinstance(adaptive, jax.Array) and (adaptive.shape or adaptive.dtype != jnp.bool_):
        raise ValueError(
            f"adaptive must be a bool (or a boolean scalar array), got an array of dtype "
            f"{adaptive.dtype} and shape {adaptive.shape}.")


def _check_mask(mask) -> None:
    if mask is not None and not callable(mask) and not all(
        isinstance(m, (bool, np.bool_)) for m in jax.tree.leaves(mask)
    ):
        raise ValueError("mask must be a pytree of Python bools or a callable params -> pytree.")


def _check_key(key) -> None:
    """One key, usable by ``update``: a typed key of shape (), raw key data, or an int seed."""
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape:
            raise ValueError(
                f"key must be a single jax.random.key (shape ()), got a key array of shape "
                f"{key.shape}; pass one of them, e.g. key[0].")
        return
    if isinstance(key, (int, np.integer)):
        if not -(2**63) <= int(key) < 2**63:
            raise ValueError(f"key must be an int seed in [-2**63, 2**63 - 1], got {key}.")
        return
    if isinstance(key, jax.core.Tracer):
        return
    expected = jax.random.key_data(jax.random.key(0)).shape
    if np.shape(key) != expected or not np.issubdtype(np.asarray(key).dtype, np.integer):
        raise ValueError(
            f"key must be an int seed, a jax.random.key or raw key data of shape {expected} "
            f"(jax.random.PRNGKey), got an array of shape {np.shape(key)} and dtype "
            f"{np.asarray(key).dtype}.")


def _key_data(key):
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if jnp.ndim(key) == 0:
        return jax.random.key_data(jax.random.key(key))
    return jnp.asarray(key, jnp.uint32)


def _wrap_key(data, key):
    impl = None
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(key)
    return jax.random.wrap_key_data(data, impl=impl)


def _is_float(x):
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _is_resetting_state(x):
    return isinstance(x, ResettingState)
