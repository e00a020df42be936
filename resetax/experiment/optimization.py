"""The optimizer and the losses of a run, from its config: the inner optimizer wrapped in
stochastic resetting (which layers reset, the learning-rate schedule), the training loss and the
validation loss."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax._trees import path_name
from resetax.experiment.config import Config


def learning_rate_schedule(config: Config) -> optax.Schedule:
    """The learning-rate schedule of a config.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import learning_rate_schedule
      >>> config = get_config("quick", schedule="cosine", learning_rate=0.1, num_steps=100)
      >>> schedule = learning_rate_schedule(config)
      >>> float(schedule(0)), float(schedule(50)), float(schedule(100))
      (0.1, 0.05, 0.0)
      >>> float(learning_rate_schedule(config.replace(schedule="constant"))(100))
      0.1
    """
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    return optax.constant_schedule(config.learning_rate)


def reset_mask(config: Config, params: Any) -> Any:
    """Bool tree over ``params``: True for the leaves whose ``/``-joined path matches.

    The pattern is ``config.reset_layers``, searched anywhere in the path; ``None`` when it is
    unset (all layers reset).

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import reset_mask
      >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
      ...           "Dense_1": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
      >>> reset_mask(get_config("quick", reset_layers="Dense_1"), params)  # the last layer
      {'Dense_0': {'bias': False, 'kernel': False}, 'Dense_1': {'bias': True, 'kernel': True}}
      >>> reset_mask(get_config("quick", reset_layers="kernel$"), params)  # weights, not biases
      {'Dense_0': {'bias': False, 'kernel': True}, 'Dense_1': {'bias': False, 'kernel': True}}
      >>> reset_mask(get_config("quick"), params) is None
      True
    """
    if config.reset_layers is None:
        return None
    pattern = re.compile(config.reset_layers)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pattern.search(path_name(path))), params)


def param_paths(params: Any) -> list[str]:
    """The ``/``-joined paths of the parameter leaves, which ``reset_layers`` is matched against.

    Example:
      >>> from resetax.experiment.optimization import param_paths
      >>> param_paths({"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
      ['Dense_0/bias', 'Dense_0/kernel']
    """
    return [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def make_optimizer(config: Config, params: Any,
                   init_fn: Callable[[jax.Array], Any] | None = None,
                   units: dict[str, resetax.UnitWeights] | None = None,
                   ) -> optax.GradientTransformationExtraArgs:
    """The inner optimizer wrapped in stochastic resetting, as the config describes.

    ``params`` (or a tree of their shapes) is only used to build the :func:`reset_mask`. The
    transformation's ``update`` takes the validation metric as ``value``, lower is better. With
    ``config.plasticity``, the inner optimizer is wrapped first in
    :func:`resetax.reset_to_init`, :func:`resetax.shrink_and_perturb` or
    :func:`resetax.recycle_dormant_units` (over ``units``, :func:`plasticity_units`), which draw
    from ``init_fn`` (``key -> params``, the model's own initialization).

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import make_optimizer
      >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))},
      ...           "Dense_1": {"kernel": jnp.ones((2, 2))}}
      >>> config = get_config("quick", reset_prob=1.0, patience=None, reset_layers="Dense_1")
      >>> tx = make_optimizer(config, params)
      >>> opt_state = tx.init(params)
      >>> grads = jax.tree.map(jnp.ones_like, params)
      >>> updates, opt_state = tx.update(grads, opt_state, params, value=1.0)
      >>> params = resetax.apply_updates(params, updates, opt_state)
      >>> float(params["Dense_0"]["kernel"][0, 0]), float(params["Dense_1"]["kernel"][0, 0])
      (0.95, 1.0)
      >>> int(resetax.find_resetting_state(opt_state).num_resets)
      1

      The quick preset's SGD (learning rate 0.05) moved ``Dense_0``; resetting, on from the
      start (``patience=None``) with ``reset_prob=1``, sent ``Dense_1`` back to its checkpoint.

      With ``schedule_on_reset="restore"`` the learning rate is carried in the optimizer state
      (:func:`resetax.scale_by_restorable_schedule`), which a reset restores with the momentum:

      >>> config = get_config("quick", schedule="cosine", num_steps=100, learning_rate=0.1,
      ...                     reset_inner_state=True, schedule_on_reset="restore")
      >>> from resetax.experiment.optimization import learning_rate
      >>> tx = make_optimizer(config, params)
      >>> float(learning_rate(config, tx.init(params), step=0))  # the rate of update 0
      0.1
    """
    inner = plasticity_optimizer(config, inner_optimizer(config), init_fn, units)
    # reset_prob is a hyperparameter in the state, not a constant of the compiled step: a
    # baseline (0) and its resetting run (r) then compile to the same program, which the
    # persistent compilation cache serves the second time.
    static = ("inner", "key", "patience", "adaptive", "reset_inner_state", "reset_on_nonfinite",
              "mask", "mode")
    return optax.inject_hyperparams(resetax.stochastic_resetting, static_args=static)(
        inner,
        reset_prob=config.reset_prob,
        key=config.seed + 1,
        patience=config.patience,
        adaptive=config.adaptive,
        reset_inner_state=config.reset_inner_state,
        reset_on_nonfinite=config.reset_on_nonfinite,
        mask=reset_mask(config, params),
        mode="min",  # accuracies are negated before they reach the transformation
    )


def plasticity_optimizer(config: Config, inner: optax.GradientTransformation,
                         init_fn: Callable[[jax.Array], Any] | None,
                         units: dict[str, resetax.UnitWeights] | None = None,
                         ) -> optax.GradientTransformation:
    """``inner`` wrapped in the config's plasticity reset, or ``inner`` itself without one.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import plasticity_optimizer
      >>> config = get_config("quick", plasticity="reset_to_init", plasticity_every=2)
      >>> tx = plasticity_optimizer(config, optax.sgd(0.1), lambda key: {"w": jnp.zeros(2)})
      >>> params = {"w": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> for _ in range(2):
      ...     updates, state = tx.update({"w": jnp.ones(2)}, state, params)
      ...     params = resetax.apply_reset_updates(params, updates, state)
      >>> params["w"], int(state.num_resets)  # the second update re-initialized w
      (Array([0., 0.], dtype=float32), 1)
    """
    if config.plasticity is None:
        return inner
    if init_fn is None:
        raise ValueError(f"plasticity={config.plasticity!r} needs init_fn, the model's "
                         f"initialization (key -> params).")
    if config.plasticity == "recycle_dormant_units":
        if not units:
            raise ValueError("plasticity='recycle_dormant_units' needs units, the model's hidden "
                             "units (plasticity_units).")
        from resetax.experiment.placement import AXIS  # imported here: placement imports steps

        # Under pmap each replica sees its part of the batch: the scores are averaged over them.
        return resetax.recycle_dormant_units(
            inner, init_fn, units, key=config.seed + 2, threshold=config.dormant_threshold,
            every=config.plasticity_every, axis_name=AXIS if config.parallel == "pmap" else None)
    common = dict(key=config.seed + 2, mask=config.plasticity_layers,
                  every=config.plasticity_every)
    if config.plasticity == "reset_to_init":
        return resetax.reset_to_init(inner, init_fn, **common)
    return resetax.shrink_and_perturb(inner, init_fn, shrink=config.shrink,
                                      perturb=config.perturb, **common)


def plasticity_state(opt_state: Any) -> Any:
    """The state of the plasticity transformation inside ``opt_state`` (it has ``did_reset``
    and ``num_resets``).

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import make_optimizer, plasticity_state
      >>> config = get_config("quick", plasticity="shrink_and_perturb")
      >>> params = {"w": jnp.ones(2)}
      >>> tx = make_optimizer(config, params, init_fn=lambda key: {"w": jnp.zeros(2)})
      >>> int(plasticity_state(tx.init(params)).num_resets)
      0
    """
    kinds = (resetax.ResetToInitState, resetax.ShrinkAndPerturbState,
             resetax.RecycleDormantUnitsState)
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(s, kinds)]
    return found[0]


def plasticity_units(config: Config, model: Any) -> dict[str, resetax.UnitWeights]:
    """The model's hidden units that the config's plasticity reset acts on.

    Those of ``model.units()`` (every model of :mod:`resetax.models` has them) with an incoming
    parameter matching ``plasticity_layers`` (all of them when it is unset). The model state
    they name (BatchNorm statistics) is reset with them (:func:`resetax.reinit_model_state`).

    Example:
      >>> from resetax import models
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import plasticity_units
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8, 8))
      >>> config = get_config("quick", plasticity="recycle_dormant_units")
      >>> list(plasticity_units(config, model))
      ['hidden_0', 'hidden_1']
      >>> list(plasticity_units(config.replace(plasticity_layers="Dense_1/"), model))
      ['hidden_1']
    """
    units = model.units()
    if config.plasticity_layers is None:
        return units
    pattern = re.compile(config.plasticity_layers)
    return {name: weights for name, weights in units.items()
            if any(pattern.search(path) for path in weights.incoming)}


def inner_optimizer(config: Config) -> optax.GradientTransformation:
    """The optimizer that :func:`make_optimizer` wraps in stochastic resetting.

    SGD (momentum ``config.momentum``) or Adam, after weight decay added to the gradients, at
    the rate of :func:`learning_rate_schedule`. With ``schedule_on_reset="restore"`` the rate is
    applied by :func:`resetax.scale_by_restorable_schedule`, whose float state a reset restores
    together with the momentum (the official code's ``--scheduler-reset 1``); the updates are
    the same as with ``"continue"`` until a reset.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import inner_optimizer
      >>> config = get_config("quick", momentum=0.0, learning_rate=0.1)
      >>> tx = inner_optimizer(config)
      >>> updates, _ = tx.update(jnp.ones(2), tx.init(jnp.zeros(2)))
      >>> updates.tolist()
      [-0.1, -0.1]
      >>> restoring = inner_optimizer(config.replace(reset_inner_state=True,
      ...                                            schedule_on_reset="restore"))
      >>> bool((restoring.update(jnp.ones(2), restoring.init(jnp.zeros(2)))[0] == updates).all())
      True
    """
    schedule = learning_rate_schedule(config)
    momentum = config.momentum or None
    if config.schedule_on_reset == "continue":
        parts = [optax.adam(schedule) if config.optimizer == "adam"
                 else optax.sgd(schedule, momentum=momentum)]
    else:
        # optax.sgd and optax.adam with their rate step taken apart, so that it can be restored.
        parts = [optax.scale_by_adam()] if config.optimizer == "adam" else (
            [optax.trace(momentum)] if momentum else [])
        parts += [resetax.scale_by_restorable_schedule(schedule), optax.scale(-1.0)]
    if config.weight_decay:
        parts.insert(0, optax.add_decayed_weights(config.weight_decay))
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def learning_rate(config: Config, opt_state: Any, step: jax.Array) -> jax.Array:
    """The learning rate of the update at ``step`` from ``opt_state`` (the state before it).

    The schedule's value, or with ``schedule_on_reset="restore"`` the rate the optimizer state
    carries (:func:`resetax.restorable_learning_rate`), which a reset may have restored.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import learning_rate, make_optimizer
      >>> config = get_config("quick", schedule="cosine", learning_rate=0.1, num_steps=10)
      >>> opt_state = make_optimizer(config, jnp.zeros(2)).init(jnp.zeros(2))
      >>> float(learning_rate(config, opt_state, jnp.int32(5)))  # half-way down the cosine
      0.05
    """
    schedule = learning_rate_schedule(config)
    if config.schedule_on_reset == "restore":
        return resetax.restorable_learning_rate(opt_state, schedule)
    return jnp.asarray(schedule(step), jnp.float32)


LOSS_FIELDS: dict[str, dict[str, str]] = {
    "gce": {"q": "gce_q"},
    "truncated_gce": {"q": "gce_q", "k": "truncated_gce_k"},
    "sce": {"alpha": "sce_alpha", "beta": "sce_beta"},
    "nce_rce": {"alpha": "nce_rce_alpha", "beta": "nce_rce_beta"},
    "elr": {"lam": "elr_lambda", "beta": "elr_beta"},
    "elr_official": {"lam": "elr_lambda", "beta": "elr_beta"},
}
"""For each loss with hyperparameters, the Config field of each (by the loss's argument name)."""

PLASTICITY_FIELDS: dict[str, tuple[str, ...]] = {
    "reset_to_init": ("plasticity_every", "plasticity_layers"),
    "shrink_and_perturb": ("plasticity_every", "plasticity_layers", "shrink", "perturb"),
    "recycle_dormant_units": ("plasticity_every", "plasticity_layers", "dormant_threshold"),
}
"""The Config fields each ``plasticity`` method reads (see :func:`with_plasticity`)."""


def readers_of(field: str) -> tuple[str, tuple[str, ...]] | None:
    """For a field that one method reads (a loss's or a plasticity method's hyperparameter),
    the field choosing the method and the values of it that read ``field``; None for a field
    every run reads.

    Example:
      >>> from resetax.experiment.optimization import readers_of
      >>> readers_of("gce_q")
      ('loss', ('gce', 'truncated_gce'))
      >>> readers_of("dormant_threshold")
      ('plasticity', ('recycle_dormant_units',))
      >>> print(readers_of("learning_rate"))
      None
    """
    for method, table in (("loss", {k: tuple(v.values()) for k, v in LOSS_FIELDS.items()}),
                          ("plasticity", PLASTICITY_FIELDS)):
        readers = tuple(value for value, fields in table.items() if field in fields)
        if readers:
            return method, readers
    return None


def loss_hyperparameters(config: Config) -> dict[str, float]:
    """The hyperparameters of ``config.loss`` from the config's fields, by their loss names.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import loss_hyperparameters
      >>> loss_hyperparameters(get_config("quick", loss="sce", sce_alpha=6.0, sce_beta=0.1))
      {'alpha': 6.0, 'beta': 0.1}
      >>> loss_hyperparameters(get_config("quick", loss="ce"))
      {}
    """
    return {arg: getattr(config, field)
            for arg, field in LOSS_FIELDS.get(config.loss, {}).items()}


def validation_loss(config: Config) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-example validation loss ``fn(logits, labels)`` of ``config.val_loss``.

    ``"ce"``: the cross-entropy. ``"train"``: the training loss with its hyperparameters, as
    the official code validates; the cross-entropy for ``elr`` and ``elr_official`` (whose
    regularizer needs training targets), as the official code too.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import validation_loss
      >>> logits, labels = jnp.log(jnp.array([[0.25, 0.75]])), jnp.array([0])
      >>> validation_loss(get_config("quick", loss="mae"))(logits, labels)  # cross-entropy
      Array([1.3862944], dtype=float32)
      >>> validation_loss(get_config("quick", loss="mae", val_loss="train"))(logits, labels)
      Array([1.5], dtype=float32)
    """
    from resetax import losses

    if config.val_loss == "ce" or config.loss in ("elr", "elr_official"):
        return optax.softmax_cross_entropy_with_integer_labels
    return losses.get_loss(config.loss, **loss_hyperparameters(config))


def make_loss(config: Config, num_train: int, num_classes: int) -> tuple[Callable, Any]:
    """The config's loss as ``fn(logits, labels, indices, loss_state) -> (per-example, state)``.

    Returns the function and its initial state: ELR's per-sample target buffer, or
    ``optax.EmptyState()`` for the stateless losses.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.optimization import make_loss
      >>> loss_fn, loss_state = make_loss(get_config("quick", loss="ce"), 100, num_classes=10)
      >>> loss_state
      EmptyState()
      >>> logits, labels, indices = jnp.zeros((2, 10)), jnp.array([3, 7]), jnp.array([0, 1])
      >>> per_example, loss_state = loss_fn(logits, labels, indices, loss_state)
      >>> per_example  # log(10): uniform predictions
      Array([2.3025851, 2.3025851], dtype=float32)
      >>> _, elr_state = make_loss(get_config("quick", loss="elr"), 100, num_classes=10)
      >>> elr_state.targets.shape  # one target distribution per training example
      (100, 10)
    """
    import functools

    from resetax import losses

    hyperparameters = loss_hyperparameters(config)
    if config.loss == "elr":
        return (functools.partial(losses.elr_loss, **hyperparameters),
                losses.elr_init(num_train, num_classes))
    per_example = losses.get_loss(config.loss, **hyperparameters)

    def loss_fn(logits, labels, indices, loss_state):
        return per_example(logits, labels), loss_state

    return loss_fn, optax.EmptyState()
