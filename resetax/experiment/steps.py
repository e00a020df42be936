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

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = steps.init_state(config, model, tx, sample)
      >>> int(state.step), int(state.best_step), float(state.best_value)  # nothing measured yet
      (0, -1, inf)
      >>> type(state.opt_state).__name__, sorted(state.batch_stats)
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


class DeviceData(NamedTuple):
    """Arrays that live on the devices for the whole run.

    ``*_weight`` is 1 for real examples and 0 for the padding that makes eval sets divide evenly.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.input import pad_eval_set
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
        lambda path, _: bool(pattern.search(_path_name(path))), params)


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
    """
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
    from resetax import losses

    if config.loss == "elr":
        return losses.elr_loss, losses.elr_init(num_train, num_classes)
    per_example = losses.get_loss(config.loss)

    def loss_fn(logits, labels, indices, loss_state):
        return per_example(logits, labels), loss_state

    return loss_fn, optax.EmptyState()


def init_state(config: Config, model: Any, tx: optax.GradientTransformation,
               sample_input: jax.Array, loss_state: Any = None) -> TrainState:
    """Initializes model variables, optimizer and bookkeeping from the config's seed.

    ``sample_input`` is one stored example with its batch axis, e.g. ``train.inputs[:1]``;
    ``loss_state`` is the second result of :func:`make_loss`.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = steps.init_state(config, model, tx, sample)
      >>> jax.tree.map(jnp.shape, state.params)
      {'BatchNorm_0': {'bias': (16,), 'scale': (16,)},
       'Dense_0': {'bias': (16,), 'kernel': (64, 16)},
       'Dense_1': {'bias': (10,), 'kernel': (16, 10)}}
      >>> kernel = lambda s: s.params["Dense_0"]["kernel"]
      >>> bool(jnp.array_equal(kernel(steps.init_state(config, model, tx, sample)), kernel(state)))
      True
      >>> other = steps.init_state(config.replace(seed=1), model, tx, sample)
      >>> bool(jnp.array_equal(kernel(other), kernel(state)))  # another seed, another init
      False
    """
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

    Example:
      >>> from resetax import models
      >>> from resetax.experiment.input import pad_eval_set
      >>> from resetax.experiment.steps import make_evaluate
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> x = jax.random.normal(jax.random.key(0), (6, 4))
      >>> variables = model.init(jax.random.key(1), x)
      >>> logits = model.apply(variables, x)
      >>> y = (jnp.argmax(logits, -1) + (jnp.arange(6) < 3)) % 3  # the first 3 are wrong
      >>> evaluate = jax.jit(make_evaluate(model, axis_name=None, eval_batch_size=4))
      >>> loss, accuracy = evaluate(variables["params"], variables["batch_stats"],
      ...                           *pad_eval_set(x, y, 4))  # 2 chunks of 4, 2 padded
      >>> float(accuracy)  # the padding (a copy of a wrong one) has no weight
      0.5
      >>> expected = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      >>> bool(jnp.isclose(loss, expected))
      True
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

    Example:
      >>> import numpy as np
      >>> from resetax import models
      >>> from resetax.experiment import steps
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.input import load_data, pad_eval_set
      >>> config = get_config("quick", dataset="digits", model="mlp", batch_size=32,
      ...                     num_steps=20, eval_every=10, steps_per_dispatch=10,
      ...                     checkpoint_every=20)
      >>> data = load_data(config)
      >>> model = models.get_model(config.model, data.num_classes, hidden_sizes=(32,))
      >>> sample = jnp.asarray(data.train.inputs[:1])
      >>> tx = steps.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> loss_fn, loss_state = steps.make_loss(config, len(data.train), data.num_classes)
      >>> state = steps.init_state(config, model, tx, sample, loss_state)
      >>> device_data = steps.DeviceData(data.train.inputs, data.train.labels,
      ...                                *pad_eval_set(data.val.inputs, data.val.labels, 1),
      ...                                *pad_eval_set(data.test.inputs, data.test.labels, 1))
      >>> run = jax.jit(steps.make_train_chunk(config, model, tx, loss_fn, len(data.train)),
      ...               static_argnums=2)  # num_steps is static
      >>> state, metrics = run(state, device_data, 10)
      >>> int(state.step), metrics["step"].tolist()
      (10, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      >>> sorted(metrics)
      ['active', 'did_reset', 'distance', 'learning_rate', 'num_resets', 'step', 'test_acc',
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
