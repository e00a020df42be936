"""Pure train and eval steps: state in, state and metrics out, several steps per dispatch.

The same functions run on one device, jitted over a ``Mesh`` (sharded) or under ``jax.pmap``:
``axis_name`` is None except under pmap, where gradients, BatchNorm statistics and metrics are
averaged across replicas and each replica takes its slice of the global batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax.experiment.config import Config
from resetax.experiment.input import preprocess


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


class DeviceData(NamedTuple):
    """Arrays that live on the devices for the whole run.

    ``*_weight`` is 1 for real examples and 0 for the padding that makes eval sets divide evenly.
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
    """The learning-rate schedule of a config."""
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    return optax.constant_schedule(config.learning_rate)


def reset_mask(config: Config, params: Any) -> Any:
    """Bool tree over ``params``: True for the leaves whose ``/``-joined path matches."""
    if config.reset_layers is None:
        return None
    pattern = re.compile(config.reset_layers)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pattern.search(_path_name(path))), params)


def make_optimizer(config: Config, params: Any) -> optax.GradientTransformationExtraArgs:
    """The inner optimizer wrapped in stochastic resetting, as the config describes."""
    schedule = learning_rate_schedule(config)
    if config.optimizer == "adam":
        inner = optax.adam(schedule)
    else:
        inner = optax.sgd(schedule, momentum=config.momentum or None)
    if config.weight_decay:
        inner = optax.chain(optax.add_decayed_weights(config.weight_decay), inner)
    return resetax.stochastic_resetting(
        inner,
        reset_prob=config.reset_prob,
        key=jax.random.key(config.seed + 1),
        patience=config.patience,
        adaptive=config.adaptive,
        reset_inner_state=config.reset_inner_state,
        mask=reset_mask(config, params),
        mode="min",  # accuracies are negated before they reach the transformation
    )


def make_loss(config: Config, num_train: int, num_classes: int) -> tuple[Callable, Any]:
    """The config's loss as ``fn(logits, labels, indices, loss_state) -> (per-example, state)``.

    Returns the function and its initial state: ELR's per-sample target buffer, or
    ``optax.EmptyState()`` for the stateless losses.
    """
    from resetax import losses

    if config.loss == "elr":
        return losses.elr_loss, losses.elr_init(num_train, num_classes)
    per_example = losses.get_loss(config.loss)

    def loss_fn(logits, labels, indices, loss_state):
        return per_example(logits, labels), loss_state

    return loss_fn, optax.EmptyState()


def init_state(config: Config, model: Any, tx: optax.GradientTransformation,
               sample_input: jax.Array, loss_state: Any = None) -> TrainState:
    """Initializes model variables, optimizer and bookkeeping from the config's seed."""
    key = jax.random.key(config.seed)
    init_key, data_key = jax.random.split(key)
    variables = model.init({"params": init_key, "dropout": init_key}, preprocess(sample_input),
                           train=False)
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
    )


def make_evaluate(model: Any, axis_name: str | None, eval_batch_size: int) -> Callable:
    """Returns ``evaluate(params, batch_stats, x, y, weight) -> (mean loss, accuracy)``.

    The set is processed in chunks of ``eval_batch_size`` (per replica under pmap) with
    ``lax.map``; padded examples carry weight 0.
    """

    def evaluate(params, batch_stats, x, y, weight):
        n = x.shape[0]
        chunk = min(eval_batch_size, n)
        num_chunks = n // chunk

        def one(args):
            xc, yc, wc = args
            logits = model.apply({"params": params, "batch_stats": batch_stats}, preprocess(xc),
                                 train=False)
            loss = optax.softmax_cross_entropy_with_integer_labels(
                logits.astype(jnp.float32), yc)
            correct = (jnp.argmax(logits, -1) == yc).astype(jnp.float32)
            return jnp.stack([jnp.sum(loss * wc), jnp.sum(correct * wc), jnp.sum(wc)])

        split = lambda a: a[: num_chunks * chunk].reshape(num_chunks, chunk, *a.shape[1:])  # noqa: E731
        sums = jax.lax.map(one, (split(x), split(y), split(weight))).sum(0)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums[0] / sums[2], sums[1] / sums[2]

    return evaluate


def make_train_chunk(config: Config, model: Any, tx: optax.GradientTransformation,
                     loss_fn: Callable, num_train: int, *, axis_name: str | None = None,
                     batch_sharding: Any = None, eval_batch_size: int = 1024,
                     unroll: bool = False) -> Callable:
    """Returns ``run(state, data, num_steps) -> (state, metrics)``: ``num_steps`` fused steps.

    ``loss_fn`` is the first result of :func:`make_loss`. ``metrics`` holds one entry per step:
    ``train_loss``, ``learning_rate``, ``did_reset``,
    ``active``, ``num_resets``, ``distance`` (L2 distance of the params to the resetting
    checkpoint), and ``val_loss``, ``val_acc``, ``test_acc`` (NaN except on evaluation steps).
    Evaluation happens before the update of every step divisible by ``eval_every``, at the params
    that step starts from, and its metric is the ``value`` fed to resetting.

    ``unroll=True`` unrolls the fused steps: slower to compile, but on the CPU XLA runs
    convolutions inside a loop body many times slower than in straight-line code (30x for a
    ResNet-18 step here), so CPU benchmarks of conv nets unroll.
    """
    from resetax import losses
    from resetax.data import augment_cifar, batch_indices_at_step

    schedule = learning_rate_schedule(config)
    evaluate = make_evaluate(model, axis_name, eval_batch_size)
    nan = jnp.asarray(jnp.nan, jnp.float32)

    def mean(x):
        return x if axis_name is None else jax.lax.pmean(x, axis_name)

    def batch_indices(data_key, step):
        indices = batch_indices_at_step(data_key, step, num_train, config.batch_size)
        if axis_name is not None:  # each replica takes its slice of the global batch
            per_replica = config.batch_size // jax.lax.psum(1, axis_name)
            indices = jax.lax.dynamic_slice(
                indices, (jax.lax.axis_index(axis_name) * per_replica,), (per_replica,))
        return indices

    def step_fn(state: TrainState, data: DeviceData):
        data_key = jax.random.wrap_key_data(state.key)
        aug_key, dropout_key = jax.random.split(jax.random.fold_in(data_key, state.step))
        indices = batch_indices(data_key, state.step)
        x, y = data.train_x[indices], data.train_y[indices]
        if batch_sharding is not None:
            x, y = jax.lax.with_sharding_constraint((x, y), batch_sharding)
        if axis_name is not None:
            aug_key = jax.random.fold_in(aug_key, jax.lax.axis_index(axis_name))
            dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
        if config.augment:
            x = augment_cifar(aug_key, x)
        x = preprocess(x)

        def compute_eval(_):
            val_loss, val_acc = evaluate(state.params, state.batch_stats, data.val_x, data.val_y,
                                         data.val_weight)
            _, test_acc = evaluate(state.params, state.batch_stats, data.test_x, data.test_y,
                                   data.test_weight)
            return val_loss, val_acc, test_acc

        is_eval = state.step % config.eval_every == 0
        val_loss, val_acc, test_acc = jax.lax.cond(
            is_eval, compute_eval, lambda _: (nan, nan, nan), None)
        value = val_loss if config.select_by == "loss" else -val_acc

        def objective(params):
            logits, updated = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": dropout_key})
            loss, loss_state = loss_fn(logits.astype(jnp.float32), y, indices, state.loss_state)
            return jnp.mean(loss), (updated, loss_state)

        (train_loss, (updated, loss_state)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        grads, train_loss = mean(grads), mean(train_loss)
        if axis_name is not None and isinstance(loss_state, losses.ELRState):
            # Each replica updated the rows of its own samples: share them so that the
            # per-sample buffers stay identical on every replica.
            rows = jax.lax.all_gather(loss_state.targets[indices], axis_name)
            all_indices = jax.lax.all_gather(indices, axis_name).reshape(-1)
            loss_state = losses.ELRState(state.loss_state.targets.at[all_indices].set(
                rows.reshape(all_indices.shape[0], -1)))
        new_batch_stats = updated.get("batch_stats", {})
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=value)
        params = resetax.apply_updates(state.params, updates, opt_state)
        batch_stats, model_checkpoint = resetax.reset_model_state(
            state.batch_stats, new_batch_stats, state.model_checkpoint, opt_state)
        resetting = resetax.find_resetting_state(opt_state)

        improved = jnp.isfinite(value) & (value < state.best_value)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(improved, a, b), new, old)  # noqa: E731
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            model_checkpoint=model_checkpoint,
            best_params=keep(state.params, state.best_params),
            best_batch_stats=keep(state.batch_stats, state.best_batch_stats),
            best_value=jnp.where(improved, value, state.best_value),
            best_step=jnp.where(improved, state.step, state.best_step),
            loss_state=loss_state,
            key=state.key,
        )
        distance = optax.tree.norm(jax.tree.map(
            lambda c, p: p - c if not isinstance(c, optax.MaskedNode) else jnp.zeros([]),
            resetting.checkpoint, params, is_leaf=lambda c: isinstance(c, optax.MaskedNode)))
        metrics = dict(
            step=state.step, train_loss=train_loss, learning_rate=schedule(state.step),
            did_reset=resetting.did_reset, active=resetting.active,
            num_resets=resetting.num_resets, distance=distance,
            val_loss=val_loss, val_acc=val_acc, test_acc=test_acc,
        )
        return new_state, metrics

    def run(state: TrainState, data: DeviceData, num_steps: int):
        if not unroll:
            return jax.lax.scan(lambda s, _: step_fn(s, data), state, length=num_steps)
        outputs = []
        for _ in range(num_steps):
            state, metrics = step_fn(state, data)
            outputs.append(metrics)
        return state, jax.tree.map(lambda *m: jnp.stack(m), *outputs)

    return run


def _path_name(path) -> str:
    parts = []
    for entry in path:
        for attr in ("key", "name", "idx"):
            if hasattr(entry, attr):
                parts.append(str(getattr(entry, attr)))
                break
    return "/".join(parts)
