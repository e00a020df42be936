"""A learning-rate schedule whose current rate a reset can restore (PyTorch's scheduler semantics).

An optax schedule is a function of an integer step count, which keeps counting through a reset:
after a reset the rate is the nominal ``schedule(t)``. PyTorch's schedulers instead multiply the
rate held by the optimizer, so loading a saved optimizer state brings back the rate saved with
it and the schedule continues from there. :func:`scale_by_restorable_schedule` keeps that rate
in float state, which :func:`resetax.stochastic_resetting` restores with
``reset_inner_state=True``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "ScaleByRestorableScheduleState",
    "restorable_learning_rate",
    "scale_by_restorable_schedule",
]


class ScaleByRestorableScheduleState(NamedTuple):
    """State of :func:`scale_by_restorable_schedule`.

    Attributes:
      count: Updates taken (``int32``); like every integer leaf it keeps counting on a reset.
      scale: The factor between the rate used and the nominal ``schedule(count - 1)``
        (``float32``), 1 until a reset restores an earlier rate.
      schedule_value: ``schedule(count - 1)``, the nominal rate of the last update
        (``float32``; ``schedule(0)`` before the first update). A reset restores it together
        with ``scale``, and the next update reads from the pair which rate was restored.

    Examples:
      >>> import resetax
      >>> tx = resetax.scale_by_restorable_schedule(optax.linear_schedule(1.0, 0.0, 10))
      >>> tx.init(jnp.zeros(2))
      ScaleByRestorableScheduleState(count=Array(0, dtype=int32),
        scale=Array(1., dtype=float32), schedule_value=Array(1., dtype=float32))
    """

    count: jax.Array
    scale: jax.Array
    schedule_value: jax.Array


def scale_by_restorable_schedule(schedule: optax.Schedule) -> optax.GradientTransformation:
    r"""Scales updates by a schedule's rate, carried in float state so that a reset restores it.

    At update :math:`t` with state :math:`(t, s, v)`, where :math:`v = \eta(t-1)` unless a reset
    restored an earlier pair:

    .. math::

      s_t = s \, \frac{v}{\eta(t - 1)} \;(t > 0,\ \eta(t-1) > 0), \qquad
      \text{rate}_t = s_t \, \eta(t), \qquad
      \text{state} \leftarrow (t + 1,\ s_t,\ \eta(t)),

    with :math:`\eta` the ``schedule``. Without resets :math:`v = \eta(t-1)`, so
    :math:`s_t = s = 1` exactly and the rate is ``schedule(t)``, bit for bit. Under
    :func:`resetax.stochastic_resetting` with ``reset_inner_state=True`` a reset at update
    :math:`t_r` to a checkpoint whose parameters update :math:`m` produced brings back
    :math:`(s_m, \eta(m))` while the count goes on, so that from then on

    .. math::

      \text{rate}_t = \text{rate}_m \, \frac{\eta(t)}{\eta(t_r)},

    PyTorch's recursive schedulers after ``optimizer.load_state_dict`` of a saved state (the
    official code's ``--scheduler-reset 1``). The rate is a product of two ratios of the
    schedule, not a running product, so it does not drift over long runs.

    It multiplies by the rate with its sign: chain ``optax.scale(-1.0)`` after it to descend.

    Args:
      schedule: The nominal learning rate, ``step -> rate``.

    Returns:
      An ``optax.GradientTransformation`` with state :class:`ScaleByRestorableScheduleState`.

    Examples:
      SGD with momentum whose rate a reset restores, as the official PyTorch code runs it:

      >>> import resetax
      >>> schedule = optax.cosine_decay_schedule(0.1, 1000)
      >>> inner = optax.chain(optax.trace(0.9), resetax.scale_by_restorable_schedule(schedule),
      ...                     optax.scale(-1.0))
      >>> tx = resetax.stochastic_resetting(inner, reset_prob=1e-3, key=0, patience=100,
      ...                                   reset_inner_state=True)
      >>> state = tx.init(jnp.zeros(3))
      >>> float(resetax.restorable_learning_rate(state, schedule))  # the first update's rate
      0.1

      Restored by hand, the rate of update 400 comes back at update 800, and the schedule
      continues from it:

      >>> tx = resetax.scale_by_restorable_schedule(schedule)
      >>> state = tx.init(jnp.zeros(1))
      >>> for t in range(801):
      ...   if t == 401:
      ...     saved = state  # after update 400
      ...   _, state = tx.update(jnp.ones(1), state)
      >>> state = state._replace(scale=saved.scale, schedule_value=saved.schedule_value)
      >>> updates, _ = tx.update(jnp.ones(1), state)  # update 801
      >>> expected = schedule(400) * schedule(801) / schedule(800)
      >>> bool(jnp.isclose(updates[0], expected)), float(schedule(801) / updates[0]) < 0.5
      (True, True)

    .. warning::
      With :func:`resetax.stochastic_resetting`, use ``reset_inner_state=True``: with it a reset
      (and a rollback of a non-finite update) restores the rate; without it a reset keeps the
      current rate, but a rollback re-initializes the state, jumping to the rate
      ``schedule(0) * schedule(t) / schedule(t - 1)``.
    """

    def init_fn(params):
        del params
        return ScaleByRestorableScheduleState(
            count=jnp.zeros([], jnp.int32),
            scale=jnp.ones([], jnp.float32),
            schedule_value=jnp.asarray(schedule(0), jnp.float32),
        )

    def update_fn(updates, state, params=None):
        del params
        scale, value = _scale_and_value(state, schedule)
        rate = scale * value
        updates = jax.tree.map(lambda u: (u * rate).astype(u.dtype), updates)
        return updates, ScaleByRestorableScheduleState(
            count=optax.safe_increment(state.count), scale=scale, schedule_value=value)

    return optax.GradientTransformation(init_fn, update_fn)


def restorable_learning_rate(state: optax.OptState, schedule: optax.Schedule) -> jax.Array:
    """The rate the next update of :func:`scale_by_restorable_schedule` will use.

    Args:
      state: An optimizer state that holds exactly one :class:`ScaleByRestorableScheduleState`
        (e.g. inside ``optax.chain`` or :func:`resetax.stochastic_resetting`, whose copy of it
        in the checkpoint does not count).
      schedule: The schedule the transformation was built with.

    Returns:
      The rate, a ``float32`` scalar; jittable.

    Examples:
      >>> import resetax
      >>> schedule = optax.linear_schedule(1.0, 0.0, 10)
      >>> tx = optax.chain(resetax.scale_by_restorable_schedule(schedule), optax.scale(-1.0))
      >>> state = tx.init(jnp.zeros(1))
      >>> _, state = tx.update(jnp.ones(1), state)
      >>> float(resetax.restorable_learning_rate(state, schedule))  # schedule(1)
      0.9
    """
    found = _find_states(state)
    if len(found) != 1:
        raise ValueError(
            f"state must contain exactly one ScaleByRestorableScheduleState (the state of "
            f"resetax.scale_by_restorable_schedule), found {len(found)}.")
    scale, value = _scale_and_value(found[0], schedule)
    return scale * value


def _scale_and_value(state: ScaleByRestorableScheduleState, schedule: optax.Schedule
                     ) -> tuple[jax.Array, jax.Array]:
    """``(scale, schedule(count))`` of the update at ``state.count``."""
    count = state.count
    previous = jnp.asarray(schedule(jnp.maximum(count - 1, 0)), jnp.float32)
    # A restored pair comes back as (s_m, schedule(m)): the ratio moves the rate of update m
    # forward to now. Without a restore the ratio is v / v, exactly 1.
    ratio = jnp.where((count > 0) & (previous > 0), state.schedule_value / previous, 1.0)
    return state.scale * ratio, jnp.asarray(schedule(count), jnp.float32)


def _find_states(tree: Any) -> list[ScaleByRestorableScheduleState]:
    """The live states in ``tree``: a resetting state's checkpoint copy does not count."""
    from resetax.resetting import ResettingState

    def stop(x):
        return isinstance(x, (ScaleByRestorableScheduleState, ResettingState))

    found = []
    for node in jax.tree.leaves(tree, is_leaf=stop):
        if isinstance(node, ResettingState):
            found += _find_states(node.inner_state)
        elif isinstance(node, ScaleByRestorableScheduleState):
            found.append(node)
    return found
