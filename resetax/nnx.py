"""Stochastic resetting for Flax NNX: an ``nnx.Optimizer`` that resets BatchNorm statistics too.

``flax.nnx.Optimizer`` already runs :func:`resetax.stochastic_resetting`, but it applies a reset
with ``optax.apply_updates`` (within rounding of the checkpoint) and leaves ``nnx.BatchStat``
running averages where the forward pass put them. :class:`Optimizer` lands exactly on the
checkpoint and resets the statistics with the parameters. This is the only resetax module that
imports Flax NNX.
"""

from __future__ import annotations

from typing import Any, TypeVar

import flax
import jax
import optax
from flax import nnx
from flax.nnx import filterlib
from flax.nnx.training.optimizer import to_opt_state

from resetax.plasticity import _land_on_resets
from resetax.resetting import (
    _MISSING,
    ModelStateCheckpoint,
    ResettingState,
    _check_resetting_tx,
    find_resetting_state,
    init_model_state_checkpoint,
    reset_model_state,
)

__all__ = ["Optimizer"]

# Tested with flax 0.12.4 and 0.12.8; nnx.Optimizer changed its interface in 0.11.
if tuple(int(p) for p in flax.__version__.split(".")[:2]) < (0, 12):
    raise ImportError(
        f"resetax.nnx needs flax >= 0.12 (nnx.Optimizer(model, tx, wrt=...).update(model, "
        f"grads)); found flax {flax.__version__}."
    )

# Recent flax renamed nnx.pure to nnx.as_pure and deprecated the old name.
_as_pure = getattr(nnx, "as_pure", None) or nnx.pure

M = TypeVar("M")


class Optimizer(nnx.Optimizer[M]):
    """``nnx.Optimizer`` for :func:`resetax.stochastic_resetting`: exact resets, BatchNorm included.

    A drop-in replacement for ``flax.nnx.Optimizer`` when ``tx`` contains a
    :func:`resetax.stochastic_resetting` transformation. On every :meth:`update`:

    - the parameters (the ``wrt`` variables) are updated as by ``nnx.Optimizer``, except on a
      reset, where they take the checkpoint's values bit for bit (like
      :func:`resetax.apply_updates`), and so on a reset of a plasticity transformation inside
      ``tx`` (e.g. :func:`resetax.reset_to_init`, whose ``init_fn`` may return
      ``nnx.state(fresh_model, nnx.Param)``);
    - the variables selected by ``model_state`` (every ``nnx.BatchStat`` by default) are
      checkpointed at the same moments as the parameters, and restored with them on a reset.

    A reset restores the model state that went with the checkpointed parameters: the state as the
    previous :meth:`update` left it, before this step's forward pass changed it. The optimizer
    keeps that state, and its checkpoint, in two copies of the ``model_state`` variables (small
    for BatchNorm). Everything is jittable: call :meth:`update` inside ``nnx.jit``.

    The whole object is NNX state: ``nnx.split``/``nnx.merge``, ``nnx.state``/``nnx.update`` and
    Orbax checkpointing of ``nnx.state(optimizer)`` carry the resetting state, both checkpoints
    and the key, so a restored run continues exactly as the original.

    Attributes:
      step: Number of updates so far (an ``OptState`` variable), as in ``nnx.Optimizer``.
      tx: The optax transformation.
      opt_state: Its state; it contains the :class:`resetax.ResettingState`.
      wrt: Filter of the optimized variables.
      model_state: Filter of the variables reset together with the parameters.
      model_state_before: The ``model_state`` variables as the last update left them.
      model_state_checkpoint: Their values when the parameters were last checkpointed.
      model_state_checkpoint_count: The resetting state's ``count`` at the last update (see
        :class:`resetax.ModelStateCheckpoint`).

    Examples:
      >>> from flax import nnx
      >>> class Net(nnx.Module):
      ...   def __init__(self, rngs):
      ...     self.linear = nnx.Linear(3, 4, rngs=rngs)
      ...     self.bn = nnx.BatchNorm(4, rngs=rngs)
      ...   def __call__(self, x):
      ...     return self.bn(self.linear(x)).sum()
      >>> model = Net(nnx.Rngs(0))
      >>> kernel = model.linear.kernel[...]
      >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=0.5, key=0, patience=10)
      >>> optimizer = resetax.nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> @nnx.jit
      ... def train_step(model, optimizer, x, val_loss):
      ...   grads = nnx.grad(lambda m: m(x))(model)  # updates the BatchNorm statistics
      ...   optimizer.update(model, grads, value=val_loss)
      >>> train_step(model, optimizer, jnp.ones((8, 3)), 1.0)
      >>> bool((model.linear.kernel[...] != kernel).any()), int(optimizer.step[...])
      (True, 1)
      >>> int(optimizer.resetting_state.num_resets)
      0

    .. note::
      The optimizer assumes that only the training forward passes change the ``model_state``
      variables between two updates. If you replace them otherwise (e.g. load weights into the
      model after creating the optimizer), restore the optimizer's state with them, or create
      the optimizer afterwards: a reset would bring back the statistics it recorded.
    """

    def __init__(
        self,
        model: M,
        tx: optax.GradientTransformation,
        *,
        wrt: filterlib.Filter,
        model_state: filterlib.Filter = nnx.BatchStat,
        graph: bool | None = None,
    ):
        """Creates the optimizer state and the model-state checkpoint.

        Args:
          model: An NNX module.
          tx: An optax transformation containing exactly one
            :func:`resetax.stochastic_resetting` (e.g. the transformation itself, or a chain
            ending with it).
          wrt: Filter of the variables to optimize, as in ``nnx.Optimizer`` (e.g. ``nnx.Param``);
            it must match the ``wrt`` of the ``nnx.grad`` that makes the gradients.
          model_state: Filter of the non-parameter variables that are checkpointed and reset
            together with the parameters: ``nnx.BatchStat`` (the default) for BatchNorm's
            running averages; a tuple such as ``(nnx.BatchStat, MyStat)`` for more types;
            ``False`` for none. It must not select any ``wrt`` variable.
          graph: Passed to ``nnx.Optimizer`` (graph or tree mode); ``None`` follows flax's
            current mode.

        Raises:
          ValueError: if ``tx`` does not contain exactly one resetting transformation, or
            ``model_state`` selects a variable that ``wrt`` selects too.
        """
        graph_kwargs = {} if graph is None else {"graph": graph}
        params = nnx.state(model, wrt, **graph_kwargs)
        _check_resetting_tx(tx, _as_pure(params), "flax.nnx.Optimizer")
        state = nnx.state(model, model_state, **graph_kwargs)
        overlap = _paths(params) & _paths(state)
        if overlap:
            raise ValueError(
                f"model_state must select variables that wrt does not (they are reset with the "
                f"params, not optimized), but both select {sorted(overlap)}."
            )
        super().__init__(model, tx, wrt=wrt, **graph_kwargs)
        self.model_state = model_state
        self.model_state_before = nnx.data(to_opt_state(state))
        checkpoint = init_model_state_checkpoint(state)
        self.model_state_checkpoint = nnx.data(to_opt_state(checkpoint.model_state))
        self.model_state_checkpoint_count = nnx.data(to_opt_state(checkpoint.count))

    def update(self, model: M, grads: Any, /, *, value: Any = _MISSING, **kwargs: Any) -> Any:
        """Takes one step: the resetting update, then the exact reset of params and model state.

        Call it after the forward and backward pass of the step (which may have changed the
        BatchNorm statistics), with the validation value measured at the model as the previous
        update left it.

        Args:
          model: The module whose ``wrt`` variables are updated, as in ``nnx.Optimizer``.
          grads: Gradients from ``nnx.grad`` (with the same ``wrt``).
          value: Required: the validation metric measured at the current parameters, or
            ``jnp.float32(jnp.nan)`` when none was measured this step (see
            :func:`resetax.stochastic_resetting`). Without it the update raises a ``TypeError``.
          **kwargs: Further arguments for ``tx.update``.

        Returns:
          What ``nnx.Optimizer.update`` returns (the updates, in recent flax).

        Examples:
          With ``reset_prob=1`` and ``patience=None`` every update resets to the first
          parameters and BatchNorm statistics, bit for bit:

          >>> from flax import nnx
          >>> model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
          ...                        nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
          >>> start = nnx.clone(model)
          >>> tx = resetax.stochastic_resetting(optax.sgd(0.1), reset_prob=1.0, key=0)
          >>> optimizer = resetax.nnx.Optimizer(model, tx, wrt=nnx.Param)
          >>> grads = nnx.grad(lambda m: m(jnp.ones((4, 2))).sum())(model)
          >>> _ = optimizer.update(model, grads, value=jnp.nan)
          >>> same = jax.tree.map(lambda a, b: bool((a == b).all()),
          ...                     nnx.state(model), nnx.state(start))
          >>> all(jax.tree.leaves(same)), bool(optimizer.resetting_state.did_reset)
          (True, True)
        """
        updates = super().update(model, grads, value=value, **kwargs)
        graph_kwargs = self._graph_kwargs()
        resetting = self.resetting_state
        # nnx.Optimizer applied checkpoint - params (and a plasticity transformation's
        # target - params) with optax.apply_updates: land exactly.
        params = _as_pure(nnx.state(model, self.wrt, **graph_kwargs))
        nnx.update(model, _land_on_resets(params, _as_pure(self.opt_state)))

        new_model_state, checkpoint = reset_model_state(
            _as_pure(self.model_state_before),
            _as_pure(nnx.state(model, self.model_state, **graph_kwargs)),
            ModelStateCheckpoint(_as_pure(self.model_state_checkpoint),
                                 _as_pure(self.model_state_checkpoint_count)),
            resetting,
        )
        nnx.update(model, new_model_state)
        nnx.update(self.model_state_before, new_model_state)
        nnx.update(self.model_state_checkpoint, checkpoint.model_state)
        self.model_state_checkpoint_count[...] = checkpoint.count
        return updates

    @property
    def resetting_state(self) -> ResettingState:
        """The :class:`resetax.ResettingState` in ``opt_state``, as arrays (e.g. ``num_resets``).

        Examples:
          >>> from flax import nnx
          >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
          >>> tx = optax.chain(optax.clip_by_global_norm(1.0),
          ...                  resetax.stochastic_resetting(optax.sgd(0.1), 0.1, key=0))
          >>> optimizer = resetax.nnx.Optimizer(model, tx, wrt=nnx.Param)
          >>> state = optimizer.resetting_state
          >>> bool(state.active), int(state.num_resets)
          (True, 0)
        """
        return find_resetting_state(_as_pure(self.opt_state))

    def _graph_kwargs(self) -> dict[str, bool]:
        graph = getattr(self, "graph", None)  # older flax has no graph argument
        return {} if graph is None else {"graph": graph}


def _paths(state):
    leaves = jax.tree_util.tree_leaves_with_path(
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return {jax.tree_util.keystr(path) for path, _ in leaves}

