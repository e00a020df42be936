"""Pure train and eval steps: state in, state and metrics out.

One step body serves every placement. Jitted over a ``Mesh`` (the default), it sees the global
batch and XLA partitions it; under ``jax.pmap`` it sees one replica's slice. Everything that
differs between the two is in :class:`Replicas`: with ``axis_name=None`` its collectives are
identities.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import resetax
from resetax.experiment import optimization
from resetax.experiment import train_state as train_state_lib
from resetax.experiment.config import Config
from resetax.experiment.data_input import preprocess
from resetax.experiment.optimization import learning_rate, validation_loss
from resetax.experiment.train_state import DeviceData, TrainState


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
      >>> from resetax.experiment import optimization, steps, train_state
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", eval_test=False)
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> state = train_state.init_state(config, model, optax.sgd(0.1), jnp.zeros((1, 4)),
      ...                                num_train=5)
      >>> x, y, w = jnp.ones((5, 4)), jnp.zeros(5, jnp.int32), jnp.ones(5)
      >>> data = train_state.DeviceData(x, y, x, y, w, x, y, w)
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
      >>> from resetax.experiment.steps import track_best
      >>> from resetax.experiment.train_state import TrainState
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
      >>> from resetax.experiment import optimization, steps, train_state
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", batch_size=4)
      >>> model = models.get_model("mlp", 3, hidden_sizes=(8,))
      >>> params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4)))["params"]
      >>> tx = optimization.make_optimizer(config, params)
      >>> loss_fn, loss_state = optimization.make_loss(config, 10, 3)
      >>> state = train_state.init_state(config, model, tx, jnp.zeros((1, 4)), loss_state,
      ...                                num_train=10)
      >>> x, y, w = jax.random.normal(jax.random.key(1), (10, 4)), jnp.arange(10) % 3, jnp.ones(10)
      >>> data = train_state.DeviceData(x, y, x, y, w, x, y, w)
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

    units, reinit_layers, collections = _plasticity_layers(config, model)

    def train_step(state: TrainState, data: DeviceData, evaluation: Evaluation):
        x, y, indices, dropout_key, order = sample_batch(state, data)
        value = evaluation.val_loss if config.select_by == "loss" else -evaluation.val_acc

        def objective(params):
            logits, updated = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                mutable=collections, rngs={"dropout": dropout_key})
            loss, loss_state = loss_fn(logits.astype(jnp.float32), y, indices, state.loss_state)
            activations = resetax.unit_activations(updated.get("intermediates", {}))
            return jnp.mean(loss), (updated.get("batch_stats", {}), loss_state, activations)

        (train_loss, (new_batch_stats, loss_state, activations)), grads = jax.value_and_grad(
            objective, has_aux=True)(state.params)
        grads, train_loss = replicas.mean((grads, train_loss))
        updates, opt_state = tx.update(grads, state.opt_state, state.params, value=value,
                                       **_extra_args(units, activations))
        params = resetax.apply_updates(state.params, updates, opt_state)
        new_batch_stats = _reinit_batch_stats(config, model, data, new_batch_stats, opt_state,
                                              reinit_layers)
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
        if config.plasticity:
            metrics.update(_plasticity_metrics(opt_state))
        return new_state, metrics

    return train_step


def _plasticity_layers(config: Config, model: Any) -> tuple[dict, dict, list[str]]:
    """The units whose activations ``recycle_dormant_units`` reads, the layers whose BatchNorm
    statistics a re-initialization resets (``resetax.reinit_model_state``), and the mutable
    collections of the forward pass (the activations are sown only when ReDo reads them)."""
    if config.plasticity == "recycle_dormant_units":
        units = optimization.plasticity_units(config, model)
        return units, units, ["batch_stats", "intermediates"]
    if config.plasticity == "reset_to_init":
        return {}, model.normalized_layers(), ["batch_stats"]
    # shrink_and_perturb moves the parameters without replacing them: the statistics follow.
    return {}, {}, ["batch_stats"]


def _extra_args(units: dict, activations: dict[str, jax.Array]) -> dict[str, Any]:
    """``recycle_dormant_units`` takes the activations of its units; the others nothing more."""
    return {"activations": {name: activations[name] for name in units}} if units else {}


def _reinit_batch_stats(config: Config, model: Any, data: DeviceData, batch_stats: Any,
                        opt_state: Any, layers: dict) -> Any:
    """The statistics of the BatchNorms after the re-initialized ``layers``, at their initial
    values (``resetax.reinit_model_state``); ``batch_stats`` as they are without layers."""
    if not layers:
        return batch_stats
    # Traced in the step, where XLA keeps only the constants (the parameters' draw is unused).
    initial = train_state_lib.init_variables(config, model, data.train_x[:1]).get("batch_stats",
                                                                               {})
    return resetax.reinit_model_state(batch_stats, initial, opt_state, layers)


def _plasticity_metrics(opt_state: Any) -> dict[str, jax.Array]:
    plasticity = optimization.plasticity_state(opt_state)
    metrics = {"did_plasticity_reset": plasticity.did_reset}
    if isinstance(plasticity, resetax.RecycleDormantUnitsState):
        metrics["num_recycled"] = plasticity.num_recycled
    return metrics


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
      >>> from resetax.experiment import optimization, steps, train_state
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.data_input import load_data, pad_eval_set
      >>> config = get_config("quick", dataset="digits", model="mlp", batch_size=32,
      ...                     num_steps=20, eval_every=10, steps_per_dispatch=10,
      ...                     checkpoint_every=20)
      >>> data = load_data(config)
      >>> model = models.get_model(config.model, data.num_classes, hidden_sizes=(32,))
      >>> sample = jnp.asarray(data.train.inputs[:1])
      >>> tx = optimization.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> loss_fn, loss_state = optimization.make_loss(config, len(data.train), data.num_classes)
      >>> state = train_state.init_state(config, model, tx, sample, loss_state,
      ...                          num_train=len(data.train))
      >>> device_data = train_state.DeviceData(data.train.inputs, data.train.labels,
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
