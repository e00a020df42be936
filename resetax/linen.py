"""Stochastic resetting for Flax linen: a ``TrainState`` whose ``apply_gradients`` takes ``value``.

``flax.training.train_state.TrainState.apply_gradients`` calls ``tx.update(grads, opt_state,
params)`` with no validation value and applies a reset with ``optax.apply_updates`` (within
rounding of the checkpoint), and it knows nothing of BatchNorm statistics. :class:`TrainState`
is its drop-in subclass for a ``tx`` containing :func:`resetax.stochastic_resetting`: it passes
``value``, lands exactly on the checkpoint and resets ``batch_stats`` with the parameters. This is
the only resetax module that imports Flax linen's training utilities.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from resetax.resetting import (
    _MISSING,
    ModelStateCheckpoint,
    ResettingState,
    _check_resetting_tx,
    apply_updates,
    find_resetting_state,
    init_model_state_checkpoint,
    reset_model_state,
)

__all__ = ["TrainState"]


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` for :func:`resetax.stochastic_resetting`.

    A drop-in subclass: :meth:`create` takes ``batch_stats`` (the model's ``"batch_stats"``
    collection, as in Flax's ImageNet example) and :meth:`apply_gradients` requires ``value``,
    the validation metric measured at the current ``params``. On every
    :meth:`apply_gradients`:

    - ``params`` are updated as by the parent class, except on a reset, where they take the
      checkpoint's values bit for bit (:func:`resetax.apply_updates`), and so on a reset of a
      plasticity transformation inside ``tx`` (e.g. :func:`resetax.reset_to_init`);
    - ``batch_stats`` (when the state has them) are checkpointed at the same moments as the
      parameters and restored with them on a reset (:func:`resetax.reset_model_state`).

    The state is a pytree: it goes through ``jax.jit``, ``jax.pmap`` (replicate it, and
    ``lax.pmean`` the gradients and ``value`` over the devices) and jit over a ``Mesh``, and it
    is saved and restored whole by Orbax or ``flax.serialization`` (the resetting state, the key
    and both checkpoints included), so that a restored run continues exactly.

    Attributes:
      batch_stats: The model's non-parameter state that resets with the parameters (BatchNorm
        running averages), or ``None``.
      batch_stats_checkpoint: Their values when the parameters were last checkpointed, or
        ``None`` when the state has no ``batch_stats``.

    Examples:
      The change from Flax's ``TrainState`` is the class, ``tx`` and ``value=``:

      >>> import flax.linen as nn
      >>> class Net(nn.Module):
      ...   @nn.compact
      ...   def __call__(self, x, train):
      ...     x = nn.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
      ...     return nn.Dense(2)(nn.relu(x))
      >>> x, y = jnp.ones((8, 3)), jnp.zeros(8, jnp.int32)
      >>> variables = Net().init(jax.random.key(0), x, train=False)
      >>> state = resetax.linen.TrainState.create(
      ...     apply_fn=Net().apply, params=variables["params"],
      ...     batch_stats=variables["batch_stats"],
      ...     tx=resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=0.01, key=0,
      ...                                     patience=100))
      >>> @jax.jit
      ... def train_step(state, x, y, val_loss):
      ...   def loss_fn(params):
      ...     logits, updates = state.apply_fn(
      ...         {"params": params, "batch_stats": state.batch_stats}, x, train=True,
      ...         mutable=["batch_stats"])
      ...     loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      ...     return loss, updates["batch_stats"]
      ...   grads, batch_stats = jax.grad(loss_fn, has_aux=True)(state.params)
      ...   return state.apply_gradients(grads=grads, value=val_loss, batch_stats=batch_stats)
      >>> state = train_step(state, x, y, jnp.float32(jnp.nan))  # nothing measured yet
      >>> state = train_step(state, x, y, jnp.float32(0.7))  # a validation loss
      >>> int(state.step), float(state.resetting_state.best_value)
      (2, 0.7)
    """

    batch_stats: Any = None
    batch_stats_checkpoint: ModelStateCheckpoint | None = None

    @classmethod
    def create(
        cls, *, apply_fn: Any, params: Any, tx: optax.GradientTransformation,
        batch_stats: Any = None, **kwargs: Any,
    ) -> TrainState:
        """Creates the state with ``step=0``, the optimizer state and the statistics' checkpoint.

        Args:
          apply_fn: Usually the module's ``apply``, as in Flax's ``TrainState``.
          params: The parameters to optimize (``variables["params"]``).
          tx: An optax transformation containing exactly one
            :func:`resetax.stochastic_resetting` (the transformation itself, or a chain ending
            with it).
          batch_stats: The model's ``"batch_stats"`` collection, reset together with the
            parameters; ``None`` for a model without BatchNorm.
          **kwargs: Further fields of a subclass.

        Returns:
          The new state.

        Raises:
          ValueError: if ``tx`` does not contain exactly one resetting transformation.

        Examples:
          >>> params = {"w": jnp.zeros(3)}
          >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.01, key=0)
          >>> state = resetax.linen.TrainState.create(apply_fn=None, params=params, tx=tx)
          >>> int(state.step), state.batch_stats is None
          (0, True)
        """
        _check_resetting_tx(tx, _optimized(params), "flax.training.train_state.TrainState")
        checkpoint = None if batch_stats is None else init_model_state_checkpoint(batch_stats)
        return super().create(
            apply_fn=apply_fn, params=params, tx=tx, batch_stats=batch_stats,
            batch_stats_checkpoint=checkpoint, **kwargs)

    def apply_gradients(
        self, *, grads: Any, value: Any = _MISSING, batch_stats: Any = None, **kwargs: Any
    ) -> TrainState:
        """Takes one step: the resetting update, then the exact reset of params and statistics.

        Args:
          grads: Gradients with the structure of ``params``.
          value: Required: the validation metric measured at the current ``params`` (a
            scalar, the same on every replica), or ``jnp.float32(jnp.nan)`` on steps that
            measured nothing. Without it the call raises a ``TypeError``.
          batch_stats: The ``"batch_stats"`` this step's forward pass produced; ``None`` keeps
            the current ones (they still reset with the parameters).
          **kwargs: Further fields to replace, as in Flax's ``TrainState``.

        Returns:
          The state after the step, with ``step`` incremented by one.

        Examples:
          With ``reset_prob=1`` and ``patience=None`` every step resets to the first params:

          >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=1.0, key=0)
          >>> state = resetax.linen.TrainState.create(
          ...     apply_fn=None, params=jnp.ones(2), tx=tx, batch_stats={"mean": jnp.zeros(2)})
          >>> state = state.apply_gradients(grads=jnp.ones(2), value=jnp.float32(jnp.nan),
          ...                               batch_stats={"mean": jnp.ones(2)})
          >>> state.params, state.batch_stats["mean"]
          (Array([1., 1.], dtype=float32), Array([0., 0.], dtype=float32))
        """
        overwritten = _optimized(grads) is not grads
        params = _optimized(self.params)
        _same_tree("grads", _optimized(grads), "params", params)
        if batch_stats is not None and self.batch_stats is not None:
            _same_tree("batch_stats", batch_stats, "the state's", self.batch_stats)
        updates, opt_state = self.tx.update(
            _optimized(grads), self.opt_state, params, value=value)
        new_params = apply_updates(params, updates, opt_state)
        if overwritten:  # Flax's fp8 convention: these leaves take the gradients as they are
            new_params = {"params": new_params, train_state.OVERWRITE_WITH_GRADIENT:
                          grads[train_state.OVERWRITE_WITH_GRADIENT]}

        new_batch_stats, checkpoint = self.batch_stats, self.batch_stats_checkpoint
        if self.batch_stats is not None:
            new_batch_stats, checkpoint = reset_model_state(
                self.batch_stats, self.batch_stats if batch_stats is None else batch_stats,
                checkpoint, opt_state)
        elif batch_stats is not None:
            raise ValueError(
                "batch_stats was passed to apply_gradients, but the state has none: create it "
                "with TrainState.create(..., batch_stats=variables['batch_stats']).")
        return self.replace(
            step=self.step + 1, params=new_params, opt_state=opt_state,
            batch_stats=new_batch_stats, batch_stats_checkpoint=checkpoint, **kwargs)

    @property
    def resetting_state(self) -> ResettingState:
        """The :class:`resetax.ResettingState` in ``opt_state`` (e.g. ``num_resets``).

        Examples:
          >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.01, key=0, patience=10)
          >>> state = resetax.linen.TrainState.create(apply_fn=None, params=jnp.ones(2), tx=tx)
          >>> bool(state.resetting_state.active), int(state.resetting_state.num_values)
          (False, 0)
        """
        return find_resetting_state(self.opt_state)


def _same_tree(name, tree, other_name, other):
    """One line naming ``name`` unless ``tree`` has the structure and shapes of ``other``."""
    if jax.tree.structure(tree) != jax.tree.structure(other):
        raise ValueError(
            f"{name} must have the structure of {other_name}: {jax.tree.structure(tree)} vs "
            f"{jax.tree.structure(other)}.")
    for (path, leaf), want in zip(jax.tree_util.tree_leaves_with_path(tree),
                                  jax.tree.leaves(other), strict=True):
        if jnp.shape(leaf) != jnp.shape(want):
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)} must have shape {jnp.shape(want)}, as in "
                f"{other_name}, got {jnp.shape(leaf)}.")


def _optimized(tree):
    """The part of ``params`` (or ``grads``) that the optimizer updates (Flax's fp8 convention)."""
    if not isinstance(tree, jax.Array) and train_state.OVERWRITE_WITH_GRADIENT in tree:
        return tree["params"]
    return tree
