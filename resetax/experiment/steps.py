"""Pure train and eval steps: state in, state and metrics out.

One step body serves every placement. Jitted over a ``Mesh`` (the default), it sees the global
batch and XLA partitions it; under ``jax.pmap`` it sees one replica's slice. Everything that
differs between the two is in :class:`Replicas`: with ``axis_name=None`` its collectives are
identities.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax._trees import path_name
from resetax.experiment.config import Config
from resetax.experiment.data_input import preprocess


class TrainState(NamedTuple):
    """Everything that changes during training; a checkpoint of it resumes a run exactly.

    Attributes:
      step: Steps taken (``int32``).
      params: Model parameters.
      batch_stats: BatchNorm running statistics (``{}`` for models without BatchNorm).
      opt_state: Optimizer state, holding the :class:`resetax.ResettingState`.
      model_checkpoint: The BatchNorm statistics that go with the resetting checkpoint.
      best_params: Parameters at the best validation measurement (the reported model).
      best_batch_stats: BatchNorm statistics of the best model.
      best_value: Best validation metric so far, in "lower is better" sign.
      best_step: Step of the best validation measurement.
      loss_state: State of the loss (ELR's per-sample targets), ``optax.EmptyState()`` if none.
      key: Raw PRNG key data for batches, augmentation and dropout.
      epoch_order: The current epoch's order of the training examples
        (:func:`resetax.data.epoch_order`), drawn anew at each epoch's first step.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = steps.init_state(config, model, tx, sample, num_train=100)
      >>> int(state.step), int(state.best_step), float(state.best_value)  # nothing measured yet
      (0, -1, inf)
      >>> type(resetax.find_resetting_state(state.opt_state)).__name__, sorted(state.batch_stats)
      ('ResettingState', ['BatchNorm_0'])
      >>> host = jax.device_get(state)  # one pytree: fetch, checkpoint and restore it whole
      >>> type(host).__name__, host.key.shape, host.key.dtype
      ('TrainState', (2,), dtype('uint32'))
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    model_checkpoint: resetax.ModelStateCheckpoint
    best_params: Any
    best_batch_stats: Any
    best_value: jax.Array
    best_step: jax.Array
    loss_state: Any
    key: jax.Array
    epoch_order: jax.Array


class DeviceData(NamedTuple):
    """Arrays that live on the devices for the whole run.

    ``*_weight`` is 1 for real examples and 0 for the padding that makes eval sets divide evenly.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.data_input import pad_eval_set
      >>> from resetax.experiment.steps import DeviceData
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(10, 4)).astype(np.float32), rng.integers(0, 3, 10, np.int32)
      >>> val = pad_eval_set(x[:3], y[:3], multiple=4)  # 3 examples and 1 of padding
      >>> test = pad_eval_set(x[3:], y[3:], multiple=4)  # 7 examples and 1 of padding
      >>> data = jax.device_put(DeviceData(x, y, *val, *test))  # placed once, for the whole run
      >>> data.train_x.shape, data.val_x.shape, data.test_x.shape
      ((10, 4), (4, 4), (8, 4))
      >>> float(data.val_weight.sum()), float(data.test_weight.sum())  # the real examples
      (3.0, 7.0)
    """

    train_x: jax.Array
    train_y: jax.Array
    val_x: jax.Array
    val_y: jax.Array
    val_weight: jax.Array
    test_x: jax.Array
    test_y: jax.Array
    test_weight: jax.Array


def learning_rate_schedule(config: Config) -> optax.Schedule:
    """The learning-rate schedule of a config.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import learning_rate_schedule
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
      >>> from resetax.experiment.steps import reset_mask
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
      >>> from resetax.experiment.steps import param_paths
      >>> param_paths({"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}})
      ['Dense_0/bias', 'Dense_0/kernel']
    """
    return [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]


def make_optimizer(config: Config, params: Any) -> optax.GradientTransformationExtraArgs:
    """The inner optimizer wrapped in stochastic resetting, as the config describes.

    ``params`` (or a tree of their shapes) is only used to build the :func:`reset_mask`. The
    transformation's ``update`` takes the validation metric as ``value``, lower is better.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import make_optimizer
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
      >>> from resetax.experiment.steps import learning_rate
      >>> tx = make_optimizer(config, params)
      >>> float(learning_rate(config, tx.init(params), step=0))  # the rate of update 0
      0.1
    """
    inner = inner_optimizer(config)
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


def inner_optimizer(config: Config) -> optax.GradientTransformation:
    """The optimizer that :func:`make_optimizer` wraps in stochastic resetting.

    SGD (momentum ``config.momentum``) or Adam, after weight decay added to the gradients, at
    the rate of :func:`learning_rate_schedule`. With ``schedule_on_reset="restore"`` the rate is
    applied by :func:`resetax.scale_by_restorable_schedule`, whose float state a reset restores
    together with the momentum (the official code's ``--scheduler-reset 1``); the updates are
    the same as with ``"continue"`` until a reset.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import inner_optimizer
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
      >>> from resetax.experiment.steps import learning_rate, make_optimizer
      >>> config = get_config("quick", schedule="cosine", learning_rate=0.1, num_steps=10)
      >>> opt_state = make_optimizer(config, jnp.zeros(2)).init(jnp.zeros(2))
      >>> float(learning_rate(config, opt_state, jnp.int32(5)))  # half-way down the cosine
      0.05
    """
    schedule = learning_rate_schedule(config)
    if config.schedule_on_reset == "restore":
        return resetax.restorable_learning_rate(opt_state, schedule)
    return jnp.asarray(schedule(step), jnp.float32)


def loss_hyperparameters(config: Config) -> dict[str, float]:
    """The hyperparameters of ``config.loss`` from the config's fields, by their loss names.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import loss_hyperparameters
      >>> loss_hyperparameters(get_config("quick", loss="sce", sce_alpha=6.0, sce_beta=0.1))
      {'alpha': 6.0, 'beta': 0.1}
      >>> loss_hyperparameters(get_config("quick", loss="ce"))
      {}
    """
    return {
        "gce": dict(q=config.gce_q),
        "truncated_gce": dict(q=config.gce_q, k=config.truncated_gce_k),
        "sce": dict(alpha=config.sce_alpha, beta=config.sce_beta),
        "nce_rce": dict(alpha=config.nce_rce_alpha, beta=config.nce_rce_beta),
        "elr": dict(lam=config.elr_lambda, beta=config.elr_beta),
        "elr_official": dict(lam=config.elr_lambda, beta=config.elr_beta),
    }.get(config.loss, {})


def validation_loss(config: Config) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-example validation loss ``fn(logits, labels)`` of ``config.val_loss``.

    ``"ce"``: the cross-entropy. ``"train"``: the training loss with its hyperparameters, as
    the official code validates; the cross-entropy for ``elr`` and ``elr_official`` (whose
    regularizer needs training targets), as the official code too.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import validation_loss
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
      >>> from resetax.experiment.steps import make_loss
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


def init_variables(config: Config, model: Any, sample_input: jax.Array) -> dict[str, Any]:
    """The model's initial variables (``params``, ``batch_stats``...) from the config's seed.

    ``sample_input`` is one stored example with its batch axis, e.g. ``train.inputs[:1]``.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.steps import init_variables
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> config = get_config("quick")
      >>> shapes = jax.eval_shape(lambda x: init_variables(config, model, x), jnp.zeros((1, 4)))
      >>> sorted(shapes), shapes["params"]["Dense_0"]["kernel"].shape  # nothing computed
      (['batch_stats', 'params'], (4, 16))
    """
    init_key, _ = jax.random.split(jax.random.key(config.seed))
    return model.init({"params": init_key, "dropout": init_key},
                      preprocess(sample_input, config.dataset), train=False)


def init_state(config: Config, model: Any, tx: optax.GradientTransformation,
               sample_input: jax.Array, loss_state: Any = None, *, num_train: int
               ) -> TrainState:
    """Initializes model variables, optimizer and bookkeeping from the config's seed.

    ``sample_input`` is one stored example with its batch axis, e.g. ``train.inputs[:1]``;
    ``loss_state`` is the second result of :func:`make_loss`; ``num_train`` is the size of the
    training split.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = steps.init_state(config, model, tx, sample, num_train=100)
      >>> jax.tree.map(jnp.shape, state.params)
      {'BatchNorm_0': {'bias': (16,), 'scale': (16,)},
       'Dense_0': {'bias': (16,), 'kernel': (64, 16)},
       'Dense_1': {'bias': (10,), 'kernel': (16, 10)}}
      >>> kernel = lambda s: s.params["Dense_0"]["kernel"]
      >>> bool(jnp.array_equal(kernel(steps.init_state(config, model, tx, sample,
      ...                                                       num_train=100)), kernel(state)))
      True
      >>> other = steps.init_state(config.replace(seed=1), model, tx, sample, num_train=100)
      >>> bool(jnp.array_equal(kernel(other), kernel(state)))  # another seed, another init
      False
    """
    _, data_key = jax.random.split(jax.random.key(config.seed))
    variables = init_variables(config, model, sample_input)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        model_checkpoint=resetax.init_model_state_checkpoint(batch_stats),
        best_params=jax.tree.map(jnp.array, params),
        best_batch_stats=jax.tree.map(jnp.array, batch_stats),
        best_value=jnp.asarray(jnp.inf, jnp.float32),
        best_step=jnp.asarray(-1, jnp.int32),
        loss_state=optax.EmptyState() if loss_state is None else loss_state,
        key=jax.random.key_data(data_key),
        epoch_order=resetax.data.epoch_order(data_key, 0, num_train),
    )


class Replicas(NamedTuple):
    """The collectives of one step: pmap's, or identities when the step sees the global batch.

    Jitted over a ``Mesh``, a step computes on the global batch and XLA inserts the
    communication; under ``jax.pmap`` (``axis_name`` set) each replica takes its slice of the
    global batch and averages gradients and metrics across replicas explicitly.

    Example:
      >>> from resetax.experiment.steps import Replicas
      >>> indices = jnp.arange(8)
      >>> Replicas(None).local_batch(indices).tolist()  # the global batch
      [0, 1, 2, 3, 4, 5, 6, 7]
      >>> replicated = jnp.stack([indices, indices])  # every replica knows the global batch
      >>> jax.pmap(Replicas("data").local_batch, axis_name="data",
      ...          devices=jax.devices()[:2])(replicated).tolist()  # one half per replica
      [[0, 1, 2, 3], [4, 5, 6, 7]]
    """

    axis_name: str | None

    def local_batch(self, indices: jax.Array) -> jax.Array:
        """This replica's slice of the global batch's indices."""
        if self.axis_name is None:
            return indices
        per_replica = indices.shape[0] // jax.lax.psum(1, self.axis_name)
        start = jax.lax.axis_index(self.axis_name) * per_replica
        return jax.lax.dynamic_slice(indices, (start,), (per_replica,))

    def local_key(self, key: jax.Array) -> jax.Array:
        """A key of this replica's own, for randomness over its slice (augmentation, dropout)."""
        if self.axis_name is None:
            return key
        return jax.random.fold_in(key, jax.lax.axis_index(self.axis_name))

    def mean(self, tree: Any) -> Any:
        """The mean over replicas (gradients, losses)."""
        return tree if self.axis_name is None else jax.lax.pmean(tree, self.axis_name)

    def sum(self, tree: Any) -> Any:
        """The sum over replicas (evaluation counts)."""
        return tree if self.axis_name is None else jax.lax.psum(tree, self.axis_name)

    def share_loss_state(self, new: Any, old: Any, indices: jax.Array) -> Any:
        """Gives every replica the per-sample loss rows (ELR targets) the others updated."""
        if self.axis_name is None or not isinstance(new, resetax.losses.ELRState):
            return new
        rows = jax.lax.all_gather(new.targets[indices], self.axis_name)
        all_indices = jax.lax.all_gather(indices, self.axis_name).reshape(-1)
        return resetax.losses.ELRState(
            old.targets.at[all_indices].set(rows.reshape(all_indices.shape[0], -1)))


EVAL_BATCH_SIZE = 1000  # examples per evaluation batch, on each device
NO_REPLICAS = Replicas(None)  # no pmap replicas: the step sees the whole batch (jit, one device)


class Evaluation(NamedTuple):
    """Validation loss and accuracy and test accuracy at one step's params (NaN: not measured)."""

    val_loss: jax.Array
    val_acc: jax.Array
    test_acc: jax.Array

    @classmethod
    def missing(cls) -> Evaluation:
        """No measurement at this step: every field NaN."""
        nan = jnp.full([], jnp.nan, jnp.float32)
        return cls(nan, nan, nan)


def make_evaluate(model: Any, eval_batch_size: int, replicas: Replicas = NO_REPLICAS, *,
                  loss: Callable | None = None, dataset: str | None = None) -> Callable:
    """Returns ``evaluate(params, batch_stats, x, y, weight) -> (mean loss, accuracy)``.

    Every example counts exactly once, with its weight (0 for padding), whatever the set's size:
    the set is processed in chunks of ``eval_batch_size`` with ``lax.map`` and the remainder in
    one smaller chunk. Under pmap each replica evaluates its part and the sums are combined.
    ``loss`` is the per-example ``fn(logits, labels)`` averaged (the cross-entropy when None,
    see :func:`validation_loss`); ``dataset`` picks the normalization of images
    (:func:`~resetax.experiment.data_input.preprocess`).

    Example:
      >>> from resetax import models
      >>> from resetax.experiment.data_input import pad_eval_set
      >>> from resetax.experiment.steps import make_evaluate
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> x = jax.random.normal(jax.random.key(0), (7, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> logits = model.apply(variables, x)
      >>> y = (jnp.argmax(logits, -1) + (jnp.arange(7) < 3)) % 3  # the first 3 are wrong
      >>> evaluate = jax.jit(make_evaluate(model, eval_batch_size=4))
      >>> loss, accuracy = evaluate(variables["params"], variables["batch_stats"],
      ...                           x, y, jnp.ones(7))  # a chunk of 4, then one of 3
      >>> float(accuracy)  # 4 right out of 7
      0.5714...
      >>> expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      >>> bool(jnp.isclose(loss, expected))
      True
      >>> _, padded = evaluate(variables["params"], variables["batch_stats"],
      ...                      *pad_eval_set(x, y, 4))  # padding (a copy of a wrong one): no weight
      >>> float(padded) == float(accuracy)
      True
    """

    per_example = optax.softmax_cross_entropy_with_integer_labels if loss is None else loss

    def sums(params, batch_stats, x, y, weight):
        logits = model.apply({"params": params, "batch_stats": batch_stats},
                             preprocess(x, dataset), train=False)
        values = per_example(logits.astype(jnp.float32), y)
        correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
        return jnp.stack([jnp.sum(values * weight), jnp.sum(correct * weight), jnp.sum(weight)])

    def evaluate(params, batch_stats, x, y, weight):
        n = x.shape[0]
        chunk = min(eval_batch_size, n)
        full = n // chunk * chunk
        split = lambda a: a[:full].reshape(full // chunk, chunk, *a.shape[1:])  # noqa: E731
        total = jax.lax.map(lambda args: sums(params, batch_stats, *args),
                            (split(x), split(y), split(weight))).sum(0)
        if full < n:  # the remainder, as one smaller chunk
            total = total + sums(params, batch_stats, x[full:], y[full:], weight[full:])
        total = replicas.sum(total)
        return total[0] / total[2], total[1] / total[2]

    return evaluate


def make_eval_step(config: Config, model: Any, eval_batch_size: int,
                   replicas: Replicas = NO_REPLICAS) -> Callable:
    """Returns ``eval_step(state, data) -> Evaluation`` at the state's params.

    The validation loss is :func:`validation_loss`'s. The test accuracy is measured only with
    ``config.eval_test`` and at steps divisible by ``config.test_every`` (NaN otherwise).

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", eval_test=False)
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> state = steps.init_state(config, model, optax.sgd(0.1), jnp.zeros((1, 4)), num_train=5)
      >>> x, y, w = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32), jnp.ones(5)
      >>> data = steps.DeviceData(x, y, x, y, w, x, y, w)
      >>> evaluation = steps.make_eval_step(config, model, 100)(state, data)
      >>> sorted(evaluation._asdict()), bool(jnp.isnan(evaluation.test_acc))
      (['test_acc', 'val_acc', 'val_loss'], True)
      >>> every_20 = steps.make_eval_step(config.replace(eval_test=True, eval_every=10,
      ...                                                test_every=20), model, 100)
      >>> [bool(jnp.isnan(every_20(state._replace(step=jnp.int32(s)), data).test_acc))
      ...  for s in (0, 10, 20)]
      [False, True, False]
    """
    evaluate = make_evaluate(model, eval_batch_size, replicas, loss=validation_loss(config),
                             dataset=config.dataset)
    test_every = config.test_every or config.eval_every

    def test_accuracy(state: TrainState, data: DeviceData) -> jax.Array:
        _, accuracy = evaluate(state.params, state.batch_stats, data.test_x, data.test_y,
                               data.test_weight)
        return accuracy

    def eval_step(state: TrainState, data: DeviceData) -> Evaluation:
        val_loss, val_acc = evaluate(state.params, state.batch_stats, data.val_x, data.val_y,
                                     data.val_weight)
        test_acc = Evaluation.missing().test_acc
        if config.eval_test and test_every == config.eval_every:
            test_acc = test_accuracy(state, data)
        elif config.eval_test:
            test_acc = jax.lax.cond(state.step % test_every == 0, test_accuracy,
                                    lambda *_: test_acc, state, data)
        return Evaluation(val_loss, val_acc, test_acc)

    return eval_step


def track_best(state: TrainState, value: jax.Array) -> dict[str, Any]:
    """The best-model fields of the state after a validation ``value`` (lower is better).

    ``value`` was measured at ``state.params``; a NaN (no measurement) changes nothing.

    Example:
      >>> from resetax.experiment.steps import TrainState, track_best
      >>> state = TrainState(step=jnp.int32(5), params={"w": jnp.ones(2)}, batch_stats={},
      ...                    opt_state=None, model_checkpoint=None,
      ...                    best_params={"w": jnp.zeros(2)}, best_batch_stats={},
      ...                    best_value=jnp.float32(1.0), best_step=jnp.int32(0),
      ...                    loss_state=None, key=None, epoch_order=None)
      >>> best = track_best(state, jnp.float32(0.5))  # better: the params at step 5
      >>> best["best_params"]["w"].tolist(), float(best["best_value"]), int(best["best_step"])
      ([1.0, 1.0], 0.5, 5)
      >>> int(track_best(state, jnp.float32(jnp.nan))["best_step"])  # no measurement
      0
    """
    improved = jnp.isfinite(value) & (value < state.best_value)
    return dict(
        best_params=optax.tree.where(improved, state.params, state.best_params),
        best_batch_stats=optax.tree.where(improved, state.batch_stats, state.best_batch_stats),
        best_value=jnp.where(improved, value, state.best_value),
        best_step=jnp.where(improved, state.step, state.best_step),
    )


def make_train_step(config: Config, model: Any, tx: optax.GradientTransformation,
                    loss_fn: Callable, num_train: int, *, replicas: Replicas = NO_REPLICAS,
                    batch_sharding: Any = None) -> Callable:
    """Returns ``train_step(state, data, evaluation) -> (state, metrics)``: one update.

    ``evaluation`` was measured at ``state.params`` (:func:`make_eval_step`), or is
    :meth:`Evaluation.missing` on steps without a measurement; its validation loss (or negated
    accuracy, with ``select_by="accuracy"``) is the ``value`` fed to resetting. ``loss_fn`` is
    the first result of :func:`make_loss`. ``metrics`` holds ``step``, ``train_loss``,
    ``learning_rate``, ``did_reset`` (a random reset), ``did_rollback`` (a rollback of a
    non-finite update), ``active``, ``num_resets``, ``num_rollbacks``, ``distance`` (L2 distance
    of the new params to the resetting checkpoint) and the evaluation's fields.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", batch_size=4)
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4)))["params"]
      >>> tx = steps.make_optimizer(config, params)
      >>> loss_fn, loss_state = steps.make_loss(config, 10, 3)
      >>> state = steps.init_state(config, model, tx, jnp.zeros((1, 4)), loss_state, num_train=10)
      >>> x, y, w = jax.random.normal(jax.random.key(1), (10, 4)), jnp.arange(10) % 3, jnp.ones(10)
      >>> data = steps.DeviceData(x, y, x, y, w, x, y, w)
      >>> train_step = jax.jit(steps.make_train_step(config, model, tx, loss_fn, 10))
      >>> state, metrics = train_step(state, data, steps.Evaluation.missing())
      >>> int(state.step), int(metrics["step"]), sorted(metrics)[:4]
      (1, 0, ['active', 'did_reset', 'did_rollback', 'distance'])
    """
    from resetax.data import (
        augment_cifar,
        batch_from_order,
        epoch_order,
        sample_batch_indices,
    )
    from resetax.diagnostics import distance_to_checkpoint

    num_batches = num_train // config.batch_size

    def batch_indices(state: TrainState, data_key: jax.Array, step_key: jax.Array):
        """The global batch's indices, the epoch's order and the step's other keys."""
        if config.batch_sampling == "iid":
            # A fresh draw without replacement at every step, as the official loop's
            # next(iter(DataLoader(shuffle=True))).
            aug_key, dropout_key, batch_key = jax.random.split(step_key, 3)
            indices = sample_batch_indices(batch_key, num_train, config.batch_size,
                                           replace=False)
            return indices, state.epoch_order, aug_key, dropout_key
        aug_key, dropout_key = jax.random.split(step_key)
        # The epoch's order is drawn at its first step only: a permutation costs more than a
        # small model's step on a CPU. It equals batch_indices_at_step's at every step.
        order = jax.lax.cond(
            state.step % num_batches == 0,
            lambda: epoch_order(data_key, state.step // num_batches, num_train),
            lambda: state.epoch_order)
        return batch_from_order(order, state.step, config.batch_size), order, aug_key, dropout_key

    def sample_batch(state: TrainState, data: DeviceData):
        data_key = jax.random.wrap_key_data(state.key)
        global_indices, order, aug_key, dropout_key = batch_indices(
            state, data_key, jax.random.fold_in(data_key, state.step))
        indices = replicas.local_batch(global_indices)
        x, y = data.train_x[indices], data.train_y[indices]
        if batch_sharding is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
        if config.augment:
            x = augment_cifar(replicas.local_key(aug_key), x, pad_mode=config.pad_mode)
        return (preprocess(x, config.dataset), y, indices, replicas.local_key(dropout_key),
                order)

    def window_end_distance(state: TrainState, params: Any, checkpoint: Any) -> jax.Array:
        # Logged once per evaluation window, for its last step: not worth a pass every step.
        end = state.step + 1
        return jax.lax.cond(
            (end % config.eval_every == 0) | (end == config.num_steps),
            lambda: distance_to_checkpoint(params, checkpoint).overall,
            lambda: jnp.full([], jnp.nan, jnp.float32))

    def train_step(state: TrainState, data: DeviceData, evaluation: Evaluation):
        x, y, indices, dropout_key, order = sample_batch(state, data)
        value = evaluation.val_loss if config.select_by == "loss" else -evaluation.val_acc

        def objective(params):
            logits, updated = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": dropout_key})
            loss, loss_state = loss_fn(logits.astype(jnp.float32), y, indices, state.loss_state)
            return jnp.mean(loss), (updated.get("batch_stats", {}), loss_state)

        (train_loss, (new_batch_stats, loss_state)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        grads, train_loss = replicas.mean((grads, train_loss))
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=value)
        params = resetax.apply_updates(state.params, updates, opt_state)
        batch_stats, model_checkpoint = resetax.reset_model_state(
            state.batch_stats, new_batch_stats, state.model_checkpoint, opt_state)
        new_state = state._replace(
            step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
            model_checkpoint=model_checkpoint,
            loss_state=replicas.share_loss_state(loss_state, state.loss_state, indices),
            epoch_order=order, **track_best(state, value))
        before = resetax.find_resetting_state(state.opt_state)
        resetting = resetax.find_resetting_state(opt_state)
        metrics = dict(
            step=state.step, train_loss=train_loss,
            learning_rate=learning_rate(config, state.opt_state, state.step),
            did_reset=resetting.num_resets > before.num_resets,
            did_rollback=resetting.num_nonfinite_resets > before.num_nonfinite_resets,
            active=resetting.active, num_resets=resetting.num_resets,
            num_rollbacks=resetting.num_nonfinite_resets,
            distance=window_end_distance(state, params, resetting.checkpoint),
            **evaluation._asdict())
        return new_state, metrics

    return train_step


class Steps(NamedTuple):
    """The steps of a run, before compilation (:func:`make_steps`).

    Attributes:
      train: ``train(state, data, evaluation) -> (state, metrics)``, :func:`make_train_step`'s.
      evaluate: ``evaluate(state, data) -> Evaluation``, :func:`make_eval_step`'s.
      chunk: ``chunk(state, data, num_steps) -> (state, metrics)``: ``num_steps`` fused steps,
        each an evaluation on the steps divisible by ``eval_every`` then a train step
        (:func:`fuse_steps`). ``metrics`` stacks the steps' metrics along a leading axis (NaN
        evaluation fields on the steps without one).
    """

    train: Callable
    evaluate: Callable
    chunk: Callable


def make_steps(config: Config, model: Any, tx: optax.GradientTransformation,
               loss_fn: Callable, num_train: int, *, replicas: Replicas = NO_REPLICAS,
               batch_sharding: Any = None, eval_batch_size: int = EVAL_BATCH_SIZE,
               unroll: bool = False) -> Steps:
    """The train step, the eval step and the chunk of fused steps of a run of ``config``.

    The chunk's steps are a ``lax.scan``; ``unroll=True`` writes them out instead: slower to
    compile, but XLA:CPU runs convolutions inside a loop body several times slower than in
    straight-line code.

    Example:
      >>> import numpy as np
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.data_input import load_data, pad_eval_set
      >>> config = get_config("quick", dataset="digits", model="mlp", batch_size=32,
      ...                     num_steps=20, eval_every=10, steps_per_dispatch=10,
      ...                     checkpoint_every=20)
      >>> data = load_data(config)
      >>> model = models.get_model(config.model, data.num_classes, hidden_sizes=(32,))
      >>> sample = jnp.asarray(data.train.inputs[:1])
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> loss_fn, loss_state = steps.make_loss(config, len(data.train), data.num_classes)
      >>> state = steps.init_state(config, model, tx, sample, loss_state,
      ...                          num_train=len(data.train))
      >>> device_data = steps.DeviceData(data.train.inputs, data.train.labels,
      ...                                *pad_eval_set(data.val.inputs, data.val.labels, 1),
      ...                                *pad_eval_set(data.test.inputs, data.test.labels, 1))
      >>> run = jax.jit(steps.make_steps(config, model, tx, loss_fn, len(data.train)).chunk,
      ...               static_argnums=2)  # num_steps is static
      >>> state, metrics = run(state, device_data, 10)
      >>> int(state.step), metrics["step"].tolist()
      (10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      >>> sorted(metrics)
      ['active', 'did_reset', 'did_rollback', 'distance', 'learning_rate', 'num_resets',
       'num_rollbacks', 'step', 'test_acc',
       'train_loss', 'val_acc', 'val_loss']
      >>> np.isfinite(metrics["val_loss"]).tolist()  # eval_every=10: evaluated at step 0 only
      [True, False, False, False, False, False, False, False, False, False]
      >>> first_val_loss = metrics["val_loss"][0]
      >>> state, metrics = run(state, device_data, 10)  # the next chunk, without recompiling
      >>> int(state.step), int(metrics["step"][0])
      (20, 10)
      >>> bool(metrics["val_loss"][0] < first_val_loss), int(state.best_step)  # a new best
      (True, 10)
    """
    train_step = make_train_step(config, model, tx, loss_fn, num_train, replicas=replicas,
                                 batch_sharding=batch_sharding)
    eval_step = make_eval_step(config, model, eval_batch_size, replicas)
    return Steps(train_step, eval_step,
                 fuse_steps(train_step, eval_step, config.eval_every, unroll=unroll))


def fuse_steps(train_step: Callable, eval_step: Callable, eval_every: int, *,
               unroll: bool = False) -> Callable:
    """Returns ``run(state, data, num_steps) -> (state, metrics)`` from the two steps.

    Each step evaluates first (``eval_step``) when ``state.step`` is divisible by
    ``eval_every``, under ``lax.cond``, then trains (``train_step``). See
    :func:`make_steps`, which builds both steps from a config.

    Example:
      >>> import collections
      >>> from resetax.experiment.steps import Evaluation, fuse_steps
      >>> Counter = collections.namedtuple("Counter", "step")  # stands in for a TrainState
      >>> def train_step(state, data, evaluation):
      ...     return Counter(state.step + 1), {"step": state.step, **evaluation._asdict()}
      >>> def eval_step(state, data):
      ...     return Evaluation(*[jnp.float32(state.step)] * 3)
      >>> run = fuse_steps(train_step, eval_step, eval_every=2)
      >>> state, metrics = run(Counter(jnp.int32(0)), None, 4)
      >>> int(state.step), metrics["val_loss"].tolist()  # measured at steps 0 and 2
      (4, [0.0, nan, 2.0, nan])
    """

    def step(state: TrainState, data: DeviceData):
        evaluation = jax.lax.cond(state.step % eval_every == 0, eval_step,
                                  lambda *_: Evaluation.missing(), state, data)
        return train_step(state, data, evaluation)

    def run(state: TrainState, data: DeviceData, num_steps: int):
        if not unroll:
            return jax.lax.scan(lambda s, _: step(s, data), state, length=num_steps)
        outputs = []
        for _ in range(num_steps):
            state, metrics = step(state, data)
            outputs.append(metrics)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *outputs)

    return run
