"""Resetting for plasticity: re-initialization, shrink and perturb, and dormant-unit recycling.

Networks trained on a changing stream of tasks lose the ability to learn new ones; resetting
parts of them restores it. Each method here is an Optax transformation wrapping an inner
optimizer: its resets happen inside the jitted update, identically on every replica, and reset
the inner optimizer state of exactly the parameters (or units) they reset.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

# optax has no public name for its "params are required" message; it lives in optax._src.base.
from optax._src.base import NO_PARAMS_MSG

from resetax import _checks
from resetax._trees import is_masked, key_name, path_name
from resetax.resetting import (  # the private helpers are shared on purpose
    _INT32_MAX,
    ResettingState,
    _check_inner,
    _check_key,
    _check_reset_prob,
    _full_mask,
    _is_float,
    _key_data,
    _select,
    _where_tree,
    _wrap_key,
)

__all__ = [
    "RecycleDormantUnitsState",
    "ResetToInitState",
    "ShrinkAndPerturbState",
    "UnitWeights",
    "apply_reset_updates",
    "init_from_initializers",
    "recycle_dormant_units",
    "reinit_model_state",
    "reset_to_init",
    "shrink_and_perturb",
    "unit_activations",
]

_RESET_PROB = "a probability in [0, 1] (a float, a scalar array or a schedule step -> probability)"


class ResetToInitState(NamedTuple):
    """State of :func:`reset_to_init`.

    Attributes:
      count: Number of updates taken so far (``int32``).
      key: Raw PRNG key data for the next trigger draw and fresh values; split at every update.
      inner_state: State of the inner transformation.
      target: The values the chosen leaves took at the last reset (their initial values before
        the first), ``optax.MaskedNode`` on the other leaves; :func:`apply_reset_updates` lands
        on them bit for bit.
      did_reset: Whether this update re-initialized the chosen leaves (``bool``).
      num_resets: Number of resets so far (``int32``).

    Examples:
      >>> tx = resetax.reset_to_init(optax.sgd(0.1), lambda key: {"w": jnp.zeros(2)},
      ...                            key=0, every=10)
      >>> state = tx.init({"w": jnp.ones(2)})
      >>> state.target["w"], int(state.num_resets)
      (Array([1., 1.], dtype=float32), 0)
    """

    count: jax.Array
    key: jax.Array
    inner_state: optax.OptState
    target: optax.Params
    did_reset: jax.Array
    num_resets: jax.Array


class ShrinkAndPerturbState(NamedTuple):
    """State of :func:`shrink_and_perturb`.

    Attributes:
      count: Number of updates taken so far (``int32``).
      key: Raw PRNG key data for the next trigger draw and noise; split at every update.
      inner_state: State of the inner transformation.
      target: The values the chosen leaves took at the last shrink-and-perturb step (their
        initial values before the first), ``optax.MaskedNode`` on the other leaves.
      did_reset: Whether this update shrank and perturbed the chosen leaves (``bool``).
      num_resets: Number of shrink-and-perturb steps so far (``int32``).

    Examples:
      >>> tx = resetax.shrink_and_perturb(optax.sgd(0.1), lambda key: {"w": jnp.zeros(2)},
      ...                                 key=0, shrink=0.5, perturb=0.1, every=10)
      >>> int(tx.init({"w": jnp.ones(2)}).num_resets)
      0
    """

    count: jax.Array
    key: jax.Array
    inner_state: optax.OptState
    target: optax.Params
    did_reset: jax.Array
    num_resets: jax.Array


class RecycleDormantUnitsState(NamedTuple):
    """State of :func:`recycle_dormant_units`.

    Attributes:
      count: Number of updates taken so far (``int32``).
      key: Raw PRNG key data for the next trigger draw and fresh weights; split at every update.
      inner_state: State of the inner transformation.
      target: The values of the units' incoming and outgoing weight leaves after the last
        recycling check (their initial values before the first), ``optax.MaskedNode`` on the
        other leaves.
      did_reset: Whether this update was a recycling check (``bool``); the units found dormant
        then were recycled, possibly none.
      num_resets: Number of recycling checks so far (``int32``).
      num_recycled: Number of units recycled so far, over all layers (``int32``).
      dormant_fraction: For each layer of ``units``, the fraction of its units that were dormant
        in this update's ``activations`` (``float32``), measured at every update.
      recycled: For each layer of ``units``, which of its units this update recycled (``bool``,
        one per unit; all ``False`` but at a recycling check), for
        :func:`reinit_model_state`.

    Examples:
      >>> units = {"h": resetax.UnitWeights(incoming=["w1"], outgoing=["w2"])}
      >>> tx = resetax.recycle_dormant_units(
      ...     optax.sgd(0.1), lambda key: {"w1": jnp.ones((2, 3)), "w2": jnp.ones((3, 1))},
      ...     units, key=0, every=100)
      >>> state = tx.init({"w1": jnp.ones((2, 3)), "w2": jnp.ones((3, 1))})
      >>> int(state.num_recycled), state.dormant_fraction, state.recycled
      (0, {'h': Array(0., dtype=float32)}, {'h': Array([False, False, False], dtype=bool)})
    """

    count: jax.Array
    key: jax.Array
    inner_state: optax.OptState
    target: optax.Params
    did_reset: jax.Array
    num_resets: jax.Array
    num_recycled: jax.Array
    dormant_fraction: dict[str, jax.Array]
    recycled: dict[str, jax.Array]


class UnitWeights(NamedTuple):
    """The parameters holding one layer's units: their incoming and outgoing weights.

    Parameters are named by their path, e.g. ``"Dense_0/kernel"`` for a Flax parameter, and
    so are the leaves of the model's non-parameter state, e.g. ``"BatchNorm_0/mean"`` in Flax's
    ``"batch_stats"`` collection.

    Attributes:
      incoming: Paths of the parameters that compute the units, with the unit axis last (a
        Dense or Conv ``kernel`` and ``bias`` in Flax, a LayerNorm ``scale`` after them).
      outgoing: Paths of the parameters that read the units, with the unit axis second to last
        (the next Dense or Conv ``kernel``). When that axis is a multiple ``m`` of the number of
        units, unit ``i`` owns the entries ``j`` with ``j % num_units == i``: a channels-last
        feature map flattened before a Dense layer.
      model_state: Paths of the non-parameter state computed from the units' incoming weights,
        with the unit axis last: the running mean and variance of a BatchNorm that normalizes
        the units (whose ``scale`` and ``bias`` are then ``incoming``).
        :func:`reinit_model_state` resets them with the units; :func:`recycle_dormant_units`
        does not read them.

    Examples:
      >>> resetax.UnitWeights(incoming=["Dense_0/kernel", "Dense_0/bias"],
      ...                     outgoing=["Dense_1/kernel"])
      UnitWeights(incoming=['Dense_0/kernel', 'Dense_0/bias'], outgoing=['Dense_1/kernel'], \
model_state=())
    """

    incoming: Sequence[str]
    outgoing: Sequence[str]
    model_state: Sequence[str] = ()


def reset_to_init(
    inner: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], optax.Params],
    *,
    key: int | jax.Array,
    mask: str | Any | Callable[[optax.Params], Any] | None = None,
    every: int | None = None,
    reset_prob: float | jax.Array | optax.Schedule | None = None,
    reset_inner_state: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Re-initializes chosen parameters every ``every`` updates or with probability ``reset_prob``.

    At update :math:`t` with parameters :math:`\theta_t` and inner update :math:`u_t`, on the
    chosen leaves

    .. math::

      \Delta\theta_t = \begin{cases} \theta^{0}_t - \theta_t & \text{reset at } t \\
      u_t & \text{otherwise,} \end{cases} \qquad
      \theta^{0}_t = \texttt{init\_fn}(k_t),

    where a reset happens at the updates :math:`t` with :math:`(t + 1) \bmod k = 0`
    (``every=k``) or when :math:`\xi_t < r_t`, :math:`\xi_t \sim U[0, 1)` (``reset_prob``), and
    :math:`k_t` is a fresh key split from the state's. The other leaves always take :math:`u_t`.
    With ``reset_inner_state=True`` the floating-point inner state of the reset leaves (momentum,
    moments) takes the values ``inner.init`` gives for the fresh parameters; the rest of the
    inner state, integer counters included, goes on.

    The fresh values are drawn inside the jitted update (only on a reset step, under
    ``lax.cond``) from the same key on every replica, so data-parallel replicas stay identical.

    Args:
      inner: The optimizer whose updates are applied between resets, e.g. ``optax.adam(...)``.
      init_fn: ``key -> params`` drawing fresh parameters with the structure, shapes and dtypes
        of the optimized ones, e.g. ``lambda key: model.init(key, x)["params"]`` for a Flax
        model, or :func:`init_from_initializers` for per-leaf ``jax.nn.initializers``.
      key: An ``int`` seed or a ``jax.random.key``; the state carries it.
      mask: Which leaves reset: a regular expression searched in each parameter's path (e.g.
        ``r"Dense_2/"``, paths like ``"Dense_2/kernel"``), a pytree of bools with the params'
        structure (or a prefix of it), or a callable ``params -> pytree``. ``None``: all leaves.
      every: Reset at every ``every``-th update (a Python int >= 1).
      reset_prob: Probability of a reset per update: a float or concrete scalar in ``[0, 1]``, a
        traced scalar or a schedule ``step -> probability`` (clipped to ``[0, 1]``). Exactly one
        of ``every`` and ``reset_prob`` must be given.
      reset_inner_state: Whether a reset also re-initializes the inner state of the reset
        leaves (needs an inner transformation that supports ``optax.tree_map_params``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params`` and
      forwards extra arguments to ``inner``; its state is a :class:`ResetToInitState`.

    Examples:
      Reset the head of a Flax MLP to fresh initial values every 2 updates:

      >>> import flax.linen as nn
      >>> net = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
      >>> x = jnp.ones((4, 3))
      >>> params = net.init(jax.random.key(0), x)["params"]
      >>> tx = resetax.reset_to_init(optax.adam(1e-2),
      ...                            lambda key: net.init(key, x)["params"],
      ...                            key=1, mask=r"layers_2/", every=2)
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...   grads = jax.grad(lambda p: net.apply({"params": p}, x).sum())(params)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = resetax.apply_reset_updates(params, updates, state)
      >>> bool(state.did_reset), bool((params["layers_2"]["bias"] == 0).all())
      (True, True)

    References:
      Nikishin, Schwarzer, D'Oro, Bacon & Courville, `The Primacy Bias in Deep Reinforcement
      Learning <https://arxiv.org/abs/2205.07802>`_, ICML 2022.

    .. warning::
      The updates of a reset step are ``fresh - params`` on the reset leaves: they must reach
      the parameters unchanged, so put this transformation last in an ``optax.chain``, and
      apply them with :func:`apply_reset_updates` to land on the fresh values bit for bit
      (``optax.apply_updates`` lands within float rounding); inside
      :func:`resetax.stochastic_resetting`, :func:`resetax.apply_updates`,
      :class:`resetax.linen.TrainState` and :class:`resetax.nnx.Optimizer` land exactly too.

    .. note::
      With ``optax.inject_hyperparams``, pass ``static_args=("init_fn", "key", "every",
      "mask")`` (those you use): ``init_fn`` and a callable ``mask`` are not schedules, and
      ``key`` and ``every`` must stay Python ints.
    """
    trigger = _check_common(inner, init_fn, key, every, reset_prob, reset_inner_state)
    mask = _check_mask(mask)
    return _leaf_reset(ResetToInitState, inner, init_fn, key, mask, trigger, reset_inner_state,
                       lambda fresh, params, inner_updates: fresh)


def shrink_and_perturb(
    inner: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], optax.Params],
    *,
    key: int | jax.Array,
    shrink: float | jax.Array,
    perturb: float | jax.Array,
    mask: str | Any | Callable[[optax.Params], Any] | None = None,
    every: int | None = None,
    reset_prob: float | jax.Array | optax.Schedule | None = None,
    reset_inner_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Shrinks the parameters toward zero and adds noise from their initializer, on a schedule.

    At update :math:`t` with parameters :math:`\theta_t` and inner update :math:`u_t`, on the
    chosen leaves

    .. math::

      \theta_{t+1} = \begin{cases} \lambda\,(\theta_t + u_t) + \sigma\,\varepsilon_t &
      \text{at a shrink-and-perturb step} \\ \theta_t + u_t & \text{otherwise,} \end{cases}
      \qquad \varepsilon_t = \texttt{init\_fn}(k_t),

    with :math:`\lambda` the ``shrink`` factor, :math:`\sigma` the ``perturb`` scale and the
    noise :math:`\varepsilon_t` a fresh draw of the parameters' own initialization. The steps
    are the updates :math:`t` with :math:`(t + 1) \bmod k = 0` (``every=k``, e.g. the last
    update before each new task) or those where :math:`\xi_t < r_t` (``reset_prob``). The
    update of the step itself is kept, so a shrink-and-perturb at every update
    (``every=1``) is a form of weight decay with noise. ``shrink=0, perturb=1`` with
    ``reset_inner_state=True`` is :func:`reset_to_init`; ``shrink=1, perturb=0`` changes
    nothing.

    Args:
      inner: The optimizer, e.g. ``optax.adam(...)``.
      init_fn: ``key -> params`` drawing the noise :math:`\varepsilon`: the model's own
        initialization (see :func:`reset_to_init`).
      key: An ``int`` seed or a ``jax.random.key``; the state carries it.
      shrink: :math:`\lambda`, a number in ``[0, 1]`` (or a traced scalar).
      perturb: :math:`\sigma`, a finite number >= 0 (or a traced scalar).
      mask: Which leaves are shrunk and perturbed (as in :func:`reset_to_init`); ``None``: all.
      every: Shrink and perturb at every ``every``-th update.
      reset_prob: Probability of a shrink-and-perturb step per update. Exactly one of
        ``every`` and ``reset_prob`` must be given.
      reset_inner_state: Whether the floating-point inner state of the chosen leaves goes
        back to ``inner.init``'s values at each step (off by default: the parameters move, they
        are not replaced).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      :class:`ShrinkAndPerturbState`.

    Examples:
      >>> init = resetax.init_from_initializers(jax.nn.initializers.normal(1.0), jnp.zeros(3))
      >>> tx = resetax.shrink_and_perturb(optax.sgd(0.0), init, key=0, shrink=0.5,
      ...                                 perturb=0.0, every=2)
      >>> params = jnp.array([1.0, 2.0, 4.0])
      >>> state = tx.init(params)
      >>> for _ in range(4):
      ...   updates, state = tx.update(jnp.zeros(3), state, params)
      ...   params = resetax.apply_reset_updates(params, updates, state)
      ...   print(params)
      [1. 2. 4.]
      [0.5 1.  2. ]
      [0.5 1.  2. ]
      [0.25 0.5  1.  ]

    References:
      Ash & Adams, `On Warm-Starting Neural Network Training
      <https://arxiv.org/abs/1910.08475>`_, NeurIPS 2020.

    .. warning::
      The updates of a shrink-and-perturb step must reach the parameters unchanged: put this
      transformation last in an ``optax.chain`` and apply them with :func:`apply_reset_updates`.

    .. note::
      With ``optax.inject_hyperparams``, pass ``static_args=("init_fn", "key", "every",
      "mask")`` (those you use), so that ``shrink``, ``perturb`` and ``reset_prob`` become the
      injected hyperparameters.
    """
    trigger = _check_common(inner, init_fn, key, every, reset_prob, reset_inner_state)
    mask = _check_mask(mask)
    _checks.interval("shrink", shrink, 0.0, 1.0, scalar=True)
    _checks.finite_nonnegative("perturb", perturb, scalar=True)

    def perturbed(noise, params, inner_updates):
        return jax.tree.map(
            lambda e, p, u: e if is_masked(e)
            else (shrink * _plain_sum(p, u) + perturb * e).astype(p.dtype),
            noise, params, inner_updates, is_leaf=is_masked)

    return _leaf_reset(ShrinkAndPerturbState, inner, init_fn, key, mask, trigger,
                       reset_inner_state, perturbed)


def _initial_fields(inner, init_fn, key, mask_tree, params, reset_inner_state):
    """The fields every state of this module starts with, after checking ``init_fn``."""
    _check_init_fn(init_fn, params, mask_tree)
    inner_state = inner.init(params)
    if reset_inner_state:
        _check_tree_map_params(inner, inner_state, params)
    return dict(count=jnp.zeros([], jnp.int32), key=_key_data(key), inner_state=inner_state,
                target=_select(mask_tree, params), did_reset=jnp.asarray(False),
                num_resets=jnp.zeros([], jnp.int32))


def _leaf_reset(state_class, inner, init_fn, key, mask, trigger, reset_inner_state, new_values):
    """The transformation of :func:`reset_to_init` and :func:`shrink_and_perturb`.

    At a triggered update the chosen leaves land on ``new_values(fresh, params, inner_updates)``,
    ``fresh`` a draw of ``init_fn`` on them (``optax.MaskedNode`` elsewhere).
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn_(params):
        return state_class(**_initial_fields(
            inner, init_fn, key, _mask_tree(mask, params), params, reset_inner_state))

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        mask_tree = _mask_tree(mask, params)
        next_key, trigger_key, init_key = jax.random.split(_wrap_key(state.key, key), 3)
        did_reset = trigger(state.count, trigger_key)
        target = jax.lax.cond(
            did_reset,
            lambda: new_values(_fresh(init_fn, init_key, params, mask_tree), params,
                               inner_updates),
            lambda: state.target,
        )
        new_updates = _reset_updates(did_reset, target, inner_updates, params)
        if reset_inner_state:
            elementwise = jax.tree.map(lambda m: did_reset if m else False, mask_tree)
            inner_state = _reset_inner_state(
                inner, inner_state, _landed(target, params), elementwise)
        return new_updates, state_class(
            count=optax.safe_increment(state.count),
            key=jax.random.key_data(next_key),
            inner_state=inner_state,
            target=target,
            did_reset=did_reset,
            num_resets=state.num_resets + did_reset.astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init_fn_, update_fn)


def recycle_dormant_units(
    inner: optax.GradientTransformation,
    init_fn: Callable[[jax.Array], optax.Params],
    units: Mapping[str, UnitWeights],
    *,
    key: int | jax.Array,
    threshold: float | jax.Array = 0.1,
    every: int | None = None,
    reset_prob: float | jax.Array | optax.Schedule | None = None,
    axis_name: str | None = None,
    reset_inner_state: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Recycles dormant units (ReDo): re-initializes their incoming weights, zeroes their outgoing.

    For a layer with activations :math:`h_i(x)`, :math:`i = 1..H`, over this update's batch
    (all axes but the last), the score of unit :math:`i` is

    .. math::

      s_i = \frac{\mathbb{E}_x |h_i(x)|}{\frac{1}{H} \sum_{j=1}^{H} \mathbb{E}_x |h_j(x)|}

    (0 for every unit of a layer whose activations are all zero; NaN for every unit of a layer
    whose activations hold a NaN, so that none of them counts as dormant: a diverged layer is
    not a dead one), and unit :math:`i` is dormant when :math:`s_i \le \tau`, the
    ``threshold``. At a recycling check (every ``every``
    updates or with probability ``reset_prob``) the dormant units' incoming weights (the
    entries of the ``incoming`` parameters at the unit on their last axis) take fresh values
    from ``init_fn`` and their outgoing weights (the entries of the ``outgoing`` parameters at
    the unit on their second-to-last axis) become zero, so that the network's output is
    unchanged at the moment of recycling; these entries do not take this step's inner update.
    With ``reset_inner_state=True`` the entries of the floating-point inner state (momentum,
    Adam's moments) at those weights take ``inner.init``'s values. Everything else takes the
    inner update. A weight that is both incoming to a dormant unit and outgoing from another
    dormant unit is zeroed.

    Args:
      inner: The optimizer, e.g. ``optax.adam(...)``.
      init_fn: ``key -> params`` drawing fresh parameters (see :func:`reset_to_init`).
      units: For each layer name, the :class:`UnitWeights` (parameter paths) of its units. The
        names are those of the ``activations`` passed to ``update``.
      key: An ``int`` seed or a ``jax.random.key``; the state carries it.
      threshold: :math:`\tau`, a finite number >= 0; 0 recycles only units that never fire.
        The paper's default is 0.1.
      every: A recycling check at every ``every``-th update (the paper checks every 1000).
      reset_prob: Probability of a check per update. Exactly one of ``every`` and
        ``reset_prob`` must be given.
      axis_name: Under ``pmap`` (or ``shard_map``), the data-parallel axis name: the mean
        absolute activations are averaged over it, so that every replica recycles the same
        units. Not needed under ``jit`` over a ``Mesh``, where the batch mean is global.
      reset_inner_state: Whether recycled weights also get fresh inner state.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params, *,
      activations, **extra_args)`` requires ``params`` and ``activations``, a mapping from each
      layer name of ``units`` to an array whose last axis holds its units (post-activation,
      e.g. after the ReLU; :func:`unit_activations` collects them from a Flax model). Other
      extra arguments go to ``inner``. Its state is a :class:`RecycleDormantUnitsState`.

    Examples:
      A unit that never fires (here the second hidden unit, by its negative bias) is recycled:

      >>> params = {"w1": jnp.ones((2, 3)), "b1": jnp.array([0.0, -9.0, 0.0]),
      ...           "w2": jnp.ones((3, 1))}
      >>> init = resetax.init_from_initializers(
      ...     {"w1": jax.nn.initializers.constant(0.5), "b1": jax.nn.initializers.zeros,
      ...      "w2": jax.nn.initializers.constant(0.5)}, params)
      >>> units = {"h": resetax.UnitWeights(incoming=["w1", "b1"], outgoing=["w2"])}
      >>> tx = resetax.recycle_dormant_units(optax.sgd(0.0), init, units, key=0, every=1)
      >>> state = tx.init(params)
      >>> x = jnp.ones((5, 2))
      >>> h = jax.nn.relu(x @ params["w1"] + params["b1"])
      >>> updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params,
      ...                            activations={"h": h})
      >>> params = resetax.apply_reset_updates(params, updates, state)
      >>> print(params["w1"], params["b1"], params["w2"][:, 0], int(state.num_recycled))
      [[1.  0.5 1. ]
       [1.  0.5 1. ]] [0. 0. 0.] [1. 0. 1.] 1

    References:
      Sokar, Agarwal, Castro & Evci, `The Dormant Neuron Phenomenon in Deep Reinforcement
      Learning <https://arxiv.org/abs/2302.12902>`_, ICML 2023.

      Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood & Sutton, `Loss of plasticity in deep
      continual learning <https://doi.org/10.1038/s41586-024-07711-7>`_, Nature 632 (2024).

    .. warning::
      The updates of a recycling check must reach the parameters unchanged: put this
      transformation last in an ``optax.chain`` and apply them with :func:`apply_reset_updates`.

    .. note::
      With ``optax.inject_hyperparams``, pass ``static_args=("init_fn", "key", "every")``
      (those you use), so that ``threshold`` and ``reset_prob`` become the injected
      hyperparameters.
    """
    trigger = _check_common(inner, init_fn, key, every, reset_prob, reset_inner_state)
    units = _check_units(units)
    _checks.finite_nonnegative("threshold", threshold, scalar=True)
    if axis_name is not None and not isinstance(axis_name, str):
        raise ValueError(f"axis_name must be None or a str, got {axis_name!r}.")
    inner = optax.with_extra_args_support(inner)

    def init_fn_(params):
        return RecycleDormantUnitsState(
            **_initial_fields(inner, init_fn, key, _units_mask(units, params), params,
                              reset_inner_state),
            num_recycled=jnp.zeros([], jnp.int32),
            dormant_fraction={name: jnp.zeros([], jnp.float32) for name in units},
            recycled={name: jnp.zeros([size], bool)
                      for name, size in _unit_sizes(units, params).items()}
            if jax.tree.leaves(params) else {name: jnp.zeros([0], bool) for name in units},
        )

    def update_fn(updates, state, params=None, *, activations=None, **extra_args):
        if params is None:
            raise ValueError(NO_PARAMS_MSG)
        sizes = _unit_sizes(units, params)
        _check_activations(activations, sizes)
        inner_updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        mask_tree = _units_mask(units, params)
        next_key, trigger_key, init_key = jax.random.split(_wrap_key(state.key, key), 3)
        did_reset = trigger(state.count, trigger_key)

        dormant = {name: _dormant(activations[name], threshold, axis_name) for name in units}
        recycle = {name: d & did_reset for name, d in dormant.items()}
        incoming, outgoing = _unit_masks(units, params, recycle)

        def recycled():
            fresh = _fresh(init_fn, init_key, params, mask_tree)
            return jax.tree_util.tree_map_with_path(
                lambda path, f, p, u: f if is_masked(f) else jnp.where(
                    outgoing[path_name(path)], jnp.zeros_like(p),
                    jnp.where(incoming[path_name(path)], f, _plain_sum(p, u))).astype(p.dtype),
                fresh, params, inner_updates, is_leaf=is_masked)

        target = jax.lax.cond(did_reset, recycled, lambda: state.target)
        new_updates = _reset_updates(did_reset, target, inner_updates, params)
        if reset_inner_state:
            elementwise = jax.tree_util.tree_map_with_path(
                lambda path, m: incoming[path_name(path)] | outgoing[path_name(path)] if m
                else False, mask_tree)
            inner_state = _reset_inner_state(
                inner, inner_state, _landed(target, params), elementwise)
        num_recycled = sum(r.sum(dtype=jnp.int32) for r in recycle.values())
        return new_updates, RecycleDormantUnitsState(
            count=optax.safe_increment(state.count),
            key=jax.random.key_data(next_key),
            inner_state=inner_state,
            target=target,
            did_reset=did_reset,
            num_resets=state.num_resets + did_reset.astype(jnp.int32),
            num_recycled=state.num_recycled + num_recycled,
            dormant_fraction={name: d.mean(dtype=jnp.float32) for name, d in dormant.items()},
            recycled=recycle,
        )

    return optax.GradientTransformationExtraArgs(init_fn_, update_fn)


def apply_reset_updates(
    params: optax.Params, updates: optax.Updates, state: optax.OptState
) -> optax.Params:
    """Applies updates like ``optax.apply_updates``, landing bit for bit on every reset's values.

    On the leaves that a transformation of this module reset at this update, the result is the
    values it chose (fresh, shrunk and perturbed, or recycled) exactly, and on a reset of
    :func:`resetax.stochastic_resetting` its checkpoint exactly; elsewhere it is
    ``optax.apply_updates``. With nested resetting transformations the outer one wins where
    both reset the same leaf. Jittable.

    :func:`recycle_dormant_units` lands on whole leaves: at a recycling check, the entries of
    a unit's weights that it did not recycle take ``params + updates`` as
    ``optax.apply_updates`` computes it, so that a reset of an inner
    :func:`resetax.stochastic_resetting` at the same update lands on those entries within
    float rounding of its checkpoint, not bit for bit.

    Args:
      params: The parameters passed to ``update``.
      updates: The updates returned by ``update``.
      state: The optimizer state returned by the same ``update``, containing at least one state
        of a resetting transformation (this module's or :class:`resetax.ResettingState`).

    Returns:
      The new parameters.

    Examples:
      >>> tx = resetax.stochastic_resetting(
      ...     resetax.reset_to_init(optax.sgd(0.1), lambda key: jnp.full(2, 0.3), key=0,
      ...                           every=1),
      ...     reset_prob=0.0, key=1)
      >>> params = jnp.array([1.0, 2.0])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.ones(2), state, params, value=jnp.nan)
      >>> resetax.apply_reset_updates(params, updates, state)
      Array([0.3, 0.3], dtype=float32)
    """
    try:
        new_params = optax.apply_updates(params, updates)
    except (ValueError, TypeError):
        if jax.tree.structure(updates) != jax.tree.structure(params):
            raise ValueError(
                f"updates must have the structure of params: updates "
                f"{jax.tree.structure(updates)} vs params {jax.tree.structure(params)}."
            ) from None
        raise
    return _land_on_resets(new_params, state)


def reinit_model_state(
    model_state: Any, initial_model_state: Any, opt_state: optax.OptState,
    units: Mapping[str, UnitWeights],
) -> Any:
    """Resets the model state (BatchNorm statistics) of the units re-initialized at this update.

    The counterpart of :func:`resetax.reset_model_state` for the resets of this module: a unit
    whose incoming weights take fresh values should also forget the running statistics of the
    BatchNorm that normalizes it, or that BatchNorm would rescale the fresh unit with the old
    unit's mean and variance until its running averages catch up. For each layer of ``units``,
    the leaves of ``model_state`` at its ``model_state`` paths take the values of
    ``initial_model_state`` (for Flax's BatchNorm: mean 0, variance 1):

    - for :func:`recycle_dormant_units`, at the entries of the units it recycled at this update;
    - for :func:`reset_to_init`, whole, at a reset that re-initialized any of the layer's
      ``incoming`` parameters.

    :func:`shrink_and_perturb` moves the parameters without replacing them, so the statistics
    keep following them through their running averages; this leaves them as they are. Call it
    after ``update``, on the model state that the step's forward pass produced. Jittable.

    Args:
      model_state: The model's non-parameter state after this step's forward pass, e.g. the
        ``"batch_stats"`` collection.
      initial_model_state: The same collection as the model's initialization gives it.
      opt_state: The optimizer state returned by this step's ``update``, containing the state
        of :func:`reset_to_init` or :func:`recycle_dormant_units` (possibly inside a chain or
        :func:`resetax.stochastic_resetting`).
      units: For each layer, its :class:`UnitWeights`, with the ``model_state`` paths (for
        :func:`recycle_dormant_units`, the ``units`` it was given).

    Returns:
      ``model_state`` with the re-initialized units' entries at their initial values.

    Examples:
      >>> import flax.linen as nn
      >>> class Net(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x, train=False):
      ...     h = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
      ...     return nn.Dense(2)(nn.relu(h))
      >>> net, x = Net(), jax.random.normal(jax.random.key(1), (8, 3))
      >>> variables = net.init(jax.random.key(0), x)
      >>> units = {"h": resetax.UnitWeights(
      ...     incoming=["Dense_0/kernel", "Dense_0/bias", "BatchNorm_0/scale",
      ...               "BatchNorm_0/bias"],
      ...     outgoing=["Dense_1/kernel"], model_state=["BatchNorm_0/mean", "BatchNorm_0/var"])}
      >>> tx = resetax.reset_to_init(optax.sgd(0.1), lambda key: net.init(key, x)["params"],
      ...                            key=0, mask="Dense_0|BatchNorm_0", every=2)
      >>> params, stats = variables["params"], variables["batch_stats"]
      >>> state = tx.init(params)
      >>> def loss(params, stats):
      ...   y, new = net.apply({"params": params, "batch_stats": stats}, x, train=True,
      ...                      mutable=["batch_stats"])
      ...   return y.sum(), new["batch_stats"]
      >>> for _ in range(2):
      ...   grads, new_stats = jax.grad(loss, has_aux=True)(params, stats)
      ...   updates, state = tx.update(grads, state, params)
      ...   params = resetax.apply_reset_updates(params, updates, state)
      ...   stats = resetax.reinit_model_state(new_stats, variables["batch_stats"], state, units)
      ...   print(bool(state.did_reset), bool((stats["BatchNorm_0"]["mean"] == 0).all()))
      False False
      True True
    """
    units = _check_units(units)
    found = []
    _collect_reset_states(opt_state, found)
    found = [s for s in found if isinstance(s, (ResetToInitState, RecycleDormantUnitsState))]
    if not found:
        raise ValueError(
            "opt_state must contain the state of reset_to_init or recycle_dormant_units, the "
            "transformations that re-initialize parameters; found none.")
    current = _check_model_states(model_state, initial_model_state, found, units)
    reset = dict.fromkeys(current, False)
    for s in found:
        if isinstance(s, RecycleDormantUnitsState):
            layers = {name: s.recycled[name] for name in units if name in s.recycled}
        else:
            chosen = set(_param_paths(s.target))  # the MaskedNodes have no leaves
            layers = {name: s.did_reset for name, weights in units.items()
                      if chosen & set(weights.incoming)}
        for name, entries in layers.items():
            for path in units[name].model_state:
                reset[path] = reset[path] | entries
    return jax.tree_util.tree_map_with_path(
        lambda path, x, x0: x if reset[path_name(path)] is False
        else jnp.where(reset[path_name(path)], x0, x).astype(jnp.result_type(x)),
        model_state, initial_model_state)


def init_from_initializers(
    initializers: Any, params: optax.Params
) -> Callable[[jax.Array], optax.Params]:
    """Builds ``key -> params`` from per-leaf initializers such as ``jax.nn.initializers``.

    Args:
      initializers: One initializer ``(key, shape, dtype) -> array`` for every leaf, or a pytree
        of them with the structure of ``params`` (or a prefix of it).
      params: The parameters (or ``jax.ShapeDtypeStruct`` leaves) whose shapes and dtypes the
        fresh values take.

    Returns:
      A function ``key -> params`` drawing every leaf from its initializer with its own key.

    Examples:
      >>> init = resetax.init_from_initializers(
      ...     {"w": jax.nn.initializers.lecun_normal(), "b": jax.nn.initializers.zeros},
      ...     {"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
      >>> fresh = init(jax.random.key(0))
      >>> fresh["w"].shape, fresh["b"]
      ((3, 2), Array([0., 0.], dtype=float32))
    """
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(jnp.shape(p), jnp.result_type(p)),
                          params)
    try:
        per_leaf = jax.tree.map(
            lambda init, sub: jax.tree.map(lambda _: init, sub), initializers, shapes)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"initializers must be one initializer or a pytree of them with the structure of "
            f"the params (or a prefix of it); params: {jax.tree.structure(shapes)}.") from err
    if not all(callable(init) for init in jax.tree.leaves(per_leaf)):
        raise ValueError("initializers must be callables (key, shape, dtype) -> array.")

    def init_fn(key):
        if not (isinstance(key, jax.Array) and (
                jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.shape == (2,))):
            raise ValueError(
                f"the init_fn of init_from_initializers takes one jax.random.key (or a "
                f"jax.random.PRNGKey), got {key!r}; under optax.inject_hyperparams, pass "
                f"static_args=('init_fn', ...) so that it is not taken for a schedule.")
        leaves, treedef = jax.tree.flatten(shapes)
        keys = jax.random.split(key, len(leaves)) if leaves else []
        inits = treedef.flatten_up_to(per_leaf)
        return treedef.unflatten([
            init(k, s.shape, s.dtype) for init, k, s in zip(inits, keys, leaves, strict=True)])

    return init_fn


def unit_activations(
    intermediates: Any, activation: Callable[[jax.Array], jax.Array] | None = None
) -> dict[str, jax.Array]:
    """Collects a Flax model's intermediates as ``activations`` for :func:`recycle_dormant_units`.

    Flax stores what a module ``sow``\\ s, and what ``capture_intermediates=True`` records (each
    submodule's output), in a nested ``"intermediates"`` collection whose leaves sit in tuples;
    this names each leaf by its module path, without the tuple index and the ``__call__``
    entry: ``self.sow("intermediates", "h", x)`` in the top module gives ``"h"``, the output
    of submodule ``Dense_0`` captured gives ``"Dense_0"``. The top module's own output is left
    out.

    Args:
      intermediates: The ``"intermediates"`` collection returned by ``apply(..., mutable=
        ["intermediates"])`` (or the whole mutable-variables dict that contains it).
      activation: Applied to every array, e.g. ``jax.nn.relu`` when the captured outputs are
        the pre-activations of Dense layers.

    Returns:
      A dict from names to arrays.

    Examples:
      >>> import flax.linen as nn
      >>> class MLP(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x):
      ...     h = nn.relu(nn.Dense(4)(x))
      ...     self.sow("intermediates", "h", h)
      ...     return nn.Dense(2)(h)
      >>> net, x = MLP(), jnp.ones((3, 5))
      >>> variables = net.init(jax.random.key(0), x)
      >>> _, state = net.apply({"params": variables["params"]}, x, mutable=["intermediates"])
      >>> {name: a.shape for name, a in resetax.unit_activations(state).items()}
      {'h': (3, 4)}
    """
    if activation is not None and not callable(activation):
        raise ValueError(
            f"activation must be None or a callable array -> array (e.g. jax.nn.relu), got "
            f"{activation!r}.")
    if isinstance(intermediates, Mapping) and set(intermediates) == {"intermediates"}:
        intermediates = intermediates["intermediates"]
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
        names = [key_name(e) for e in path]
        if names and isinstance(path[-1], jax.tree_util.SequenceKey):
            names = names[:-1]
        if names and names[-1] == "__call__":
            names = names[:-1]
        if names:
            out["/".join(names)] = leaf if activation is None else activation(leaf)
    return out


# --------------------------------------------------------------------------- private helpers


def _check_common(inner, init_fn, key, every, reset_prob, reset_inner_state):
    """Checks the arguments every transformation here shares; returns its trigger function."""
    _check_inner(inner)
    if not callable(init_fn):
        raise ValueError(f"init_fn must be a callable key -> params, got {init_fn!r}.")
    _checks.instance("key", key, (int, np.integer, jax.Array, np.ndarray),
                     "an int seed or a jax.random.key")
    _check_key(key)
    _checks.instance("reset_inner_state", reset_inner_state, (bool,), "a Python bool")
    if (every is None) == (reset_prob is None):
        raise ValueError(
            "exactly one of every (reset every k-th update) and reset_prob (reset with a "
            "probability per update) must be given.")
    if every is not None:
        # The step count is int32 (and stops at its maximum): a larger period never comes.
        _checks.int_between("every", every, 1, _INT32_MAX)
        return lambda count, _: count % every == every - 1
    if not callable(reset_prob):
        _checks.check("reset_prob", reset_prob, lambda a: (a >= 0) & (a <= 1), _RESET_PROB,
                      scalar=True)
    _check_reset_prob(reset_prob)

    def draw(count, key):
        prob = reset_prob(count) if callable(reset_prob) else reset_prob
        # The draw lies in [0, 1): the clip does not change a decision made in range.
        return jax.random.uniform(key) < jnp.clip(prob, 0.0, 1.0)

    return draw


def _check_mask(mask):
    """Turns a regex mask into a callable; leaves pytrees and callables to ``_full_mask``."""
    if isinstance(mask, str):
        try:
            pattern = re.compile(mask)
        except re.error as err:
            raise ValueError(f"mask must be a valid regular expression, got {mask!r}: {err}.") \
                from err
        return lambda params: jax.tree_util.tree_map_with_path(
            lambda path, _: bool(pattern.search(path_name(path))), params)
    if mask is not None and not callable(mask) and not all(
        isinstance(m, (bool, np.bool_)) for m in jax.tree.leaves(mask)
    ):
        raise ValueError("mask must be a regular expression, a pytree of Python bools or a "
                         "callable params -> pytree.")
    return mask


def _mask_tree(mask, params):
    """``_full_mask``, except on ``optax.tree_map_params``' placeholder, which has no leaves."""
    if not jax.tree.leaves(params):
        return params
    return _full_mask(mask, params)


def _check_init_fn(init_fn, params, mask_tree):
    """``init_fn`` must give the structure of the params and their shapes on the chosen leaves."""
    if not jax.tree.leaves(params):  # optax.tree_map_params' placeholder
        return
    shapes = _like_params(jax.eval_shape(init_fn, jax.random.key(0)), params)
    try:
        # Under optax.masked, the params left out are MaskedNodes; init_fn gives them anyway.
        same = jax.tree.map(
            lambda m, s, p: is_masked(m) or not m or jnp.shape(s) == jnp.shape(p),
            mask_tree, shapes, params, is_leaf=is_masked)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"init_fn must return params with the structure of the optimized params: "
            f"{jax.tree.structure(shapes)} vs {jax.tree.structure(params)}.") from err
    if not all(jax.tree.leaves(same)):
        raise ValueError("init_fn must return params with the shapes of the optimized params.")


def _check_model_states(model_state, initial_model_state, found, units):
    """Checks :func:`reinit_model_state`'s arguments against the reset states ``found``;
    returns ``model_state``'s leaves by path."""
    if jax.tree.structure(model_state) != jax.tree.structure(initial_model_state):
        raise ValueError(
            f"initial_model_state must have the structure of model_state: "
            f"{jax.tree.structure(initial_model_state)} vs {jax.tree.structure(model_state)}.")
    current, initial = _param_paths(model_state), _param_paths(initial_model_state)
    recycled = {name: s.recycled[name].shape[0] for s in found
                if isinstance(s, RecycleDormantUnitsState) for name in s.recycled}
    param_paths = {path_name(path) for s in found if not isinstance(s, RecycleDormantUnitsState)
                   for path, _ in jax.tree_util.tree_flatten_with_path(
                       s.target, is_leaf=is_masked)[0]}
    for name, weights in units.items():
        unknown = [p for p in weights.incoming if p not in param_paths]
        if name not in recycled and unknown:
            known = [f"recycle_dormant_units' layers are {sorted(recycled)}"] if recycled else []
            if param_paths:
                known.append(f"{unknown[0]!r} is no parameter of reset_to_init's "
                             f"{sorted(param_paths)}")
            raise ValueError(
                f"units[{name!r}] is no layer that a reset in opt_state re-initializes: "
                f"{'; '.join(known)}.")
        for path in weights.model_state:
            if path not in current or path not in initial:
                raise ValueError(
                    f"units[{name!r}].model_state names {path!r}, which model_state or "
                    f"initial_model_state lacks; model_state has {sorted(current)}.")
            shape, initial_shape = jnp.shape(current[path]), jnp.shape(initial[path])
            if shape != initial_shape:
                raise ValueError(
                    f"initial_model_state {path!r} must have the shape of model_state's, "
                    f"{shape}, got {initial_shape}.")
            if name in recycled and (not shape or shape[-1] != recycled[name]):
                raise ValueError(
                    f"units[{name!r}].model_state {path!r} must have the layer's "
                    f"{recycled[name]} units on its last axis, got shape {shape}.")
    return current


def _check_tree_map_params(inner, inner_state, params):
    if not jax.tree.leaves(params):
        return
    try:
        optax.tree_map_params(inner, lambda s, _: s, inner_state, params, is_leaf=is_masked)
    except Exception as err:
        raise ValueError(
            "reset_inner_state=True needs an inner transformation that supports "
            "optax.tree_map_params (to find the inner state of the reset parameters); pass "
            "reset_inner_state=False otherwise.") from err


def _check_units(units):
    if not isinstance(units, Mapping) or not units:
        raise ValueError(
            f"units must be a non-empty mapping from layer names to UnitWeights, got {units!r}.")
    checked = {}
    for name, weights in units.items():
        if not isinstance(name, str):
            raise ValueError(f"units must have str layer names, got {name!r}.")
        try:
            incoming, outgoing, *rest = weights
            (model_state,) = rest or [()]
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"units[{name!r}] must be a UnitWeights(incoming, outgoing[, model_state]) of "
                f"path sequences, got {weights!r}.") from err
        for field, paths in (("incoming", incoming), ("outgoing", outgoing),
                             ("model_state", model_state)):
            if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
                raise ValueError(
                    f"units[{name!r}].{field} must be a sequence of parameter paths (str), "
                    f"got {paths!r}.")
        if not incoming:
            raise ValueError(f"units[{name!r}].incoming must name at least one parameter.")
        checked[name] = UnitWeights(tuple(incoming), tuple(outgoing), tuple(model_state))
    return dict(sorted(checked.items()))


def _param_paths(params):
    return {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _unit_sizes(units, params):
    """The number of units of each layer, checking the paths and shapes of its weights."""
    paths = _param_paths(params)
    sizes = {}
    for name, weights in units.items():
        for path in (*weights.incoming, *weights.outgoing):
            if path not in paths:
                shown = ", ".join(sorted(paths)[:12])
                raise ValueError(
                    f"units[{name!r}] names the parameter {path!r}, which the params lack; "
                    f"their paths: {shown}{', ...' if len(paths) > 12 else ''}.")
        widths = {path: jnp.shape(paths[path])[-1] if jnp.ndim(paths[path]) else None
                  for path in weights.incoming}
        if len(set(widths.values())) != 1 or None in widths.values():
            raise ValueError(
                f"units[{name!r}].incoming must all have the same unit axis (the last), got "
                f"shapes {({p: jnp.shape(paths[p]) for p in weights.incoming})}.")
        size = next(iter(widths.values()))
        for path in weights.outgoing:
            shape = jnp.shape(paths[path])
            if len(shape) < 2 or shape[-2] % size:
                raise ValueError(
                    f"units[{name!r}].outgoing {path!r} must have a second-to-last axis that is a "
                    f"multiple of the {size} units, got shape {shape}.")
        sizes[name] = size
    return sizes


def _units_mask(units, params):
    if jax.tree.leaves(params):  # not optax.tree_map_params' placeholder
        _unit_sizes(units, params)
    involved = {path for weights in units.values() for path in (*weights.incoming,
                                                                 *weights.outgoing)}
    return jax.tree_util.tree_map_with_path(lambda path, _: path_name(path) in involved, params)


def _check_activations(activations, sizes):
    if not isinstance(activations, Mapping):
        raise ValueError(
            "update requires activations=, a mapping from each layer name of units to its "
            f"activations (units on the last axis), got {type(activations).__name__}.")
    for name, size in sizes.items():
        if name not in activations:
            raise ValueError(
                f"activations must contain every layer of units; {name!r} is missing "
                f"(got {sorted(activations)}).")
        shape = jnp.shape(activations[name])
        if not shape or shape[-1] != size:
            raise ValueError(
                f"activations[{name!r}] must have the layer's {size} units on its last axis, "
                f"got shape {shape}.")


def _dormant(h, threshold, axis_name):
    """Which units score at most ``threshold`` (Sokar et al.'s normalized activation)."""
    h = jnp.asarray(h)
    mean_abs = jnp.abs(h.astype(jnp.float32)).mean(axis=tuple(range(h.ndim - 1)))
    if axis_name is not None:
        try:
            mean_abs = jax.lax.pmean(mean_abs, axis_name)
        except NameError:
            raise ValueError(
                f"axis_name={axis_name!r} is not bound here: it is the data-parallel axis of a "
                f"pmap or shard_map around the update; under jit over a Mesh (or on one "
                f"device) pass axis_name=None.") from None
    layer_mean = mean_abs.mean()
    score = jnp.where(layer_mean > 0, mean_abs / jnp.where(layer_mean > 0, layer_mean, 1.0),
                      jnp.where(layer_mean == 0, 0.0, jnp.nan))  # NaN: nothing is dormant
    return score <= threshold


def _unit_masks(units, params, recycle):
    """Per parameter path: bool arrays marking the weights incoming to / outgoing from recycled
    units (``False`` where a parameter is neither)."""
    paths = _param_paths(params)
    incoming = dict.fromkeys(paths, False)
    outgoing = dict.fromkeys(paths, False)
    for name, weights in units.items():
        r = recycle[name]
        for path in weights.incoming:
            shape = jnp.shape(paths[path])
            incoming[path] = incoming[path] | jnp.broadcast_to(r, shape)
        for path in weights.outgoing:
            shape = jnp.shape(paths[path])
            rows = jnp.tile(r, shape[-2] // r.shape[0])[:, None]
            outgoing[path] = outgoing[path] | jnp.broadcast_to(rows, shape)
    return incoming, outgoing


def _fresh(init_fn, key, params, mask_tree):
    """Fresh values on the chosen leaves (MaskedNode elsewhere), in the params' dtypes."""
    fresh = _like_params(init_fn(key), params)
    return jax.tree.map(
        lambda m, f, p: optax.MaskedNode() if is_masked(m) or not m
        else jnp.asarray(f, jnp.result_type(p)).reshape(jnp.shape(p)),
        mask_tree, fresh, params, is_leaf=is_masked)


def _like_params(fresh, params):
    """``fresh`` in the structure of ``params`` when only their wrappers differ (the same leaves
    in the same order, each path a prefix of the other): Flax NNX's ``nnx.Optimizer``
    initializes with ``nnx.Param`` variables (paths ``layer/kernel/value``) and updates with
    plain arrays (``layer/kernel``), and ``init_fn`` gives one of the two."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    fresh_leaves = jax.tree_util.tree_flatten_with_path(fresh)[0]
    if jax.tree.structure(fresh) == treedef or len(fresh_leaves) != len(leaves):
        return fresh
    for (path, _), (fresh_path, _) in zip(leaves, fresh_leaves, strict=True):
        names, fresh_names = [key_name(e) for e in path], [key_name(e) for e in fresh_path]
        n = min(len(names), len(fresh_names))
        if names[:n] != fresh_names[:n]:
            return fresh
    return treedef.unflatten([leaf for _, leaf in fresh_leaves])


def _plain_sum(p, u):
    """``p + u`` as ``optax.apply_updates`` computes it."""
    return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)


def _reset_updates(did_reset, target, inner_updates, params):
    """``target - params`` on the chosen leaves at a reset, the inner updates elsewhere."""
    return jax.tree.map(
        lambda t, u, p: u if is_masked(t) or is_masked(u)
        else jnp.where(did_reset, (t - p).astype(u.dtype), u),
        target, inner_updates, params, is_leaf=is_masked)


def _landed(target, params):
    """The params with the chosen leaves at their targets (for ``inner.init``)."""
    return jax.tree.map(lambda t, p: p if is_masked(t) else t, target, params, is_leaf=is_masked)


def _reset_inner_state(inner, inner_state, new_params, elementwise):
    """Sets the float inner state where ``elementwise`` is True to ``inner.init(new_params)``.

    ``elementwise`` has the params' structure; each leaf is ``False`` or a bool array
    broadcastable to the parameter (a scalar for a whole leaf, per entry for recycled units).
    """
    in_state = optax.tree_map_params(
        inner, lambda s, m: s if is_masked(s) else m, inner_state, elementwise,
        transform_non_params=lambda v: jax.tree.map(lambda _: False, v), is_leaf=is_masked)
    fresh = inner.init(new_params)

    def reset(s, f, m):
        if is_masked(s) or m is False or not _is_float(s):
            return s
        return jnp.where(m, f, s).astype(jnp.result_type(s))

    return jax.tree.map(reset, inner_state, fresh, in_state, is_leaf=is_masked)


_RESET_STATES = (ResettingState, ResetToInitState, ShrinkAndPerturbState,
                 RecycleDormantUnitsState)


def _is_reset_state(x):
    return isinstance(x, _RESET_STATES)


def _land_on_resets(new_params: optax.Params, state: optax.OptState) -> optax.Params:
    """``new_params`` with every leaf that a resetting transformation in ``state`` reset at this
    update replaced by the values it chose, bit for bit (inner transformations first, so the
    outer one wins); for a caller that applied the updates with ``optax.apply_updates`` itself.
    Shared with ``resetax.nnx``; :func:`apply_reset_updates` is the public way.
    """
    found = []
    _collect_reset_states(state, found)
    if not found:
        raise ValueError(
            "state must contain the state of a resetting transformation (reset_to_init, "
            "shrink_and_perturb, recycle_dormant_units or stochastic_resetting), found none.")
    for s in found:
        landing = s.checkpoint if isinstance(s, ResettingState) else s.target
        try:
            new_params = _where_tree(s.did_reset, landing, new_params)
        except (ValueError, TypeError):
            raise ValueError(
                f"state must be the optimizer state of these params: the {type(s).__name__} "
                f"in it holds {jax.tree.structure(landing, is_leaf=is_masked)}, the params are "
                f"{jax.tree.structure(new_params)}.") from None
    return new_params


def _collect_reset_states(tree, found):
    """Appends the resetting states in ``tree``, inner ones before the ones wrapping them."""
    for node in jax.tree.leaves(tree, is_leaf=_is_reset_state):
        if _is_reset_state(node):
            _collect_reset_states(node.inner_state, found)
            found.append(node)
