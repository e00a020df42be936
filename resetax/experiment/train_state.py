"""The train state of a run: its fields, the data on the devices beside it, and its
initialization from a config's seed."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

import resetax
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
      >>> from resetax.experiment import optimization, train_state
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = optimization.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = train_state.init_state(config, model, tx, sample, num_train=100)
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
      >>> from resetax.experiment.train_state import DeviceData
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


def init_variables(config: Config, model: Any, sample_input: jax.Array) -> dict[str, Any]:
    """The model's initial variables (``params``, ``batch_stats``...) from the config's seed.

    ``sample_input`` is one stored example with its batch axis, e.g. ``train.inputs[:1]``.

    Example:
      >>> from resetax import models
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.train_state import init_variables
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
      >>> from resetax.experiment import optimization, train_state
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> model = models.get_model("mlp", 10, hidden_sizes=(16,))
      >>> sample = jnp.zeros((1, 8, 8, 1))
      >>> tx = optimization.make_optimizer(config, jax.eval_shape(model.init, jax.random.key(0),
      ...                                                  sample)["params"])
      >>> state = train_state.init_state(config, model, tx, sample, num_train=100)
      >>> jax.tree.map(jnp.shape, state.params)
      {'BatchNorm_0': {'bias': (16,), 'scale': (16,)},
       'Dense_0': {'bias': (16,), 'kernel': (64, 16)},
       'Dense_1': {'bias': (10,), 'kernel': (16, 10)}}
      >>> kernel = lambda s: s.params["Dense_0"]["kernel"]
      >>> bool(jnp.array_equal(kernel(train_state.init_state(config, model, tx, sample,
      ...                                                       num_train=100)), kernel(state)))
      True
      >>> other = train_state.init_state(config.replace(seed=1), model, tx, sample, num_train=100)
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
