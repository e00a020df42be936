"""Building a run: its inputs loaded and checked once (data, model, optimizer, loss), then the
:class:`Experiment` the training loop reads (initial state, placement, compiled steps).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from resetax.experiment import optimization, train_state, workdir
from resetax.experiment import steps as steps_lib
from resetax.experiment.config import Config
from resetax.experiment.data_input import ExperimentData, load_data, preprocess
from resetax.experiment.placement import Placement, check_devices, placement_for

DIAGNOSTICS_SAMPLES = 4096  # training samples the diagnostics look at (the first ones)


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything :func:`train_loop` needs, built once by :func:`setup`.

    Attributes:
      config: The run's config.
      init_state: The initial :class:`~resetax.experiment.train_state.TrainState`, host arrays.
      placement: Where the state and data live
        (:class:`~resetax.experiment.placement.Placement`).
      run_steps: ``run_steps(state, step, num_steps) -> (state, metrics)``: ``num_steps`` train
        steps from ``step`` on the placed state, with the evaluations that fall in them;
        ``metrics`` has one entry per step (see :func:`~resetax.experiment.steps.fuse_steps`).
        Either one fused call or one call per step (:func:`resetax.experiment.build.dispatch_mode`).
      evaluate: ``evaluate(placed_state) -> Evaluation``: validation loss and accuracy and
        test accuracy at the state's params, compiled for the placement (the in-loop
        evaluation's program when it measures the test set too).
      diagnose: ``diagnose(host_state) -> dict``, the latent-gradient-bias diagnostics on the
        training set; None unless ``config.diagnostics_every``.
    """

    config: Config
    init_state: train_state.TrainState
    placement: Placement
    run_steps: Callable
    evaluate: Callable
    diagnose: Callable | None


class Inputs(NamedTuple):
    """What a run is built from, loaded and checked once (:func:`load_inputs`).

    Attributes:
      data: The host-side splits.
      model: The Flax model, without cross-replica BatchNorm.
      params: The shapes of the model's parameters (``jax.ShapeDtypeStruct`` leaves).
      tx: The optimizer: the inner one wrapped in stochastic resetting.
      loss_fn: The training loss (:func:`~resetax.experiment.optimization.make_loss`).
      loss_state: Its initial state.
    """

    data: ExperimentData
    model: Any
    params: Any
    tx: optax.GradientTransformationExtraArgs
    loss_fn: Callable
    loss_state: Any


Builder = Callable[[Config, Inputs], Experiment]  # setup, or a group's shared cache


def setup(config: Config, inputs: Inputs | None = None) -> Experiment:
    """Builds the initial state, device placement and compiled steps of a run of ``config``
    from its ``inputs`` (loaded and checked by :func:`load_inputs` when not given).

    Example:
      >>> from resetax.experiment import setup
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp", num_devices=2,
      ...                     steps_per_dispatch=5)
      >>> experiment = setup(config)
      >>> state = experiment.placement.place_state(experiment.init_state)
      >>> state, metrics = experiment.run_steps(state, 0, 5)  # steps 0 to 4
      >>> int(experiment.placement.fetch(state).step), metrics["step"].tolist()
      (5, [0, 1, 2, 3, 4])
      >>> len(experiment.placement.devices)
      2
    """
    inputs = inputs if inputs is not None else load_inputs(config)
    data, model, _, tx, loss_fn, _ = inputs
    placement = placement_for(config)
    replicas = placement.replicas
    synced = model.clone(axis_name=replicas.axis_name)  # cross-replica BatchNorm under pmap
    train_step, eval_step, chunk = steps_lib.make_steps(
        config, synced, tx, loss_fn, len(data.train), replicas=replicas,
        batch_sharding=placement.batch_sharding)
    device_data = placement.place_data(data)
    # The summary measures the test set whatever eval_test and test_every say: when the
    # in-loop evaluation tests at every window, one program serves both.
    tests_every_window = config.eval_test and config.test_every in (None, config.eval_every)
    evaluate = placement.compile_eval(eval_step if tests_every_window else steps_lib.make_eval_step(
        config.replace(eval_test=True, test_every=None), synced, steps_lib.EVAL_BATCH_SIZE,
        replicas))
    if dispatch_mode(config) == "scan":
        run_steps = placement.compile_chunk(chunk, device_data)
    else:
        run_steps = placement.compile_steps(
            train_step, evaluate if tests_every_window else placement.compile_eval(eval_step),
            config.eval_every, device_data)
    return Experiment(
        config=config, init_state=initial_state(config, inputs),
        placement=placement, run_steps=run_steps,
        evaluate=lambda state: evaluate(state, device_data),
        diagnose=(make_diagnose(model, data, config.dataset) if config.diagnostics_every
                  else None),
    )


def initial_state(config: Config, inputs: Inputs) -> train_state.TrainState:
    """The initial :class:`~resetax.experiment.train_state.TrainState` of a run of ``config``
    built from its ``inputs``, as host arrays.

    Example:
      >>> from resetax.experiment.build import initial_state, load_inputs
      >>> from resetax.experiment.config import get_config
      >>> config = get_config("quick", dataset="digits", model="mlp")
      >>> state = initial_state(config, load_inputs(config))
      >>> int(state.step), state.params["Dense_0"]["kernel"].shape
      (0, (64, 256))
    """
    data, model, _, tx, _, loss_state = inputs
    return jax.device_get(jax.jit(  # one compilation, not one per operation
        lambda x, loss_state: train_state.init_state(config, model, tx, x, loss_state,
                                                   num_train=len(data.train)))(
        jnp.asarray(data.train.inputs[:1]), loss_state))


def dispatch_mode(config: Config) -> str:
    """``config.dispatch``, with ``auto`` resolved for the default backend.

    On CPUs each step is its own call (XLA:CPU runs convolutions inside a ``lax.scan`` body
    several times slower than in straight-line code, see ``benchmarks/README.md``); on
    accelerators ``steps_per_dispatch`` steps are fused with ``lax.scan`` (no per-step launch).

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.build import dispatch_mode
      >>> dispatch_mode(get_config("quick"))  # the tests run on CPU
      'step'
      >>> dispatch_mode(get_config("quick", dispatch="scan"))
      'scan'
    """
    if config.dispatch != "auto":
        return config.dispatch
    return "step" if jax.default_backend() == "cpu" else "scan"


def load_inputs(config: Config) -> Inputs:
    """Loads the data of a run of ``config`` and builds its model, optimizer and loss, with
    every check that can run before a run writes anything.

    The devices must split the batch, the dataset must be available, the batch must fit in the
    training split, and ``reset_layers`` must match a parameter of the model.

    Example:
      >>> from resetax.experiment.build import load_inputs
      >>> from resetax.experiment.config import get_config
      >>> inputs = load_inputs(get_config("quick", dataset="digits", model="mlp"))
      >>> len(inputs.data.train), inputs.params["Dense_0"]["kernel"].shape
      (1294, (64, 256))
      >>> load_inputs(get_config("quick", dataset="digits", batch_size=4096))
      Traceback (most recent call last):
      ...
      ValueError: batch_size (4096) must be at most the number of training examples (1294).
    """
    check_devices(config)
    return inputs_for(config, load_data(config))


def inputs_for(config: Config, data: ExperimentData) -> Inputs:
    """:func:`load_inputs` for ``data`` given (e.g. synthetic), with the same checks but that of
    the devices.

    Example:
      >>> from resetax.experiment.build import inputs_for
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.data_input import load_data
      >>> config = get_config("quick", dataset="digits", model="mlp", reset_layers="Dense_9")
      >>> inputs_for(config, load_data(config))
      Traceback (most recent call last):
      ...
      ValueError: reset_layers 'Dense_9' matches no parameter of mlp; its layers are ...
    """
    if config.val_source == "test":
        workdir.note("val_source='test': the best model and the resetting checkpoint are chosen "
                     "on the test images (the official protocol, PARITY.md D3), so the test "
                     "accuracy it reports is optimistic.")
    if config.batch_size > len(data.train):
        raise ValueError(f"batch_size ({config.batch_size}) must be at most the number of "
                         f"training examples ({len(data.train)}).")
    from resetax import models  # imported here: it pulls in every architecture

    # bfloat16 computation only where asked: the float32 model is the one it always was.
    dtype = {"dtype": jnp.bfloat16} if config.dtype == "bfloat16" else {}
    model = models.get_model(config.model, data.num_classes, init_scheme=config.init, **dtype)
    params = jax.eval_shape(lambda x: train_state.init_variables(config, model, x),
                            jnp.asarray(data.train.inputs[:1]))["params"]
    _check_layer_patterns(config, optimization.param_paths(params))
    loss_fn, loss_state = optimization.make_loss(config, len(data.train), data.num_classes)
    sample = jnp.asarray(data.train.inputs[:1])

    def init_fn(key: jax.Array) -> Any:  # the model's own initialization, for plasticity resets
        return model.init({"params": key, "dropout": key},
                          preprocess(sample, config.dataset), train=False)["params"]

    units = None
    if config.plasticity == "recycle_dormant_units":
        units = optimization.plasticity_units(config, model)
        if not units:
            raise ValueError(
                f"plasticity_layers {config.plasticity_layers!r} matches no hidden layer's "
                f"incoming weights of {config.model}; its hidden layers are "
                f"{ {name: w.incoming[0] for name, w in model.units().items()} }.")
    return Inputs(data, model, params,
                  optimization.make_optimizer(config, params, init_fn, units),
                  loss_fn, loss_state)


def _check_layer_patterns(config: Config, paths: list[str]) -> None:
    """Refuses a ``reset_layers`` or ``plasticity_layers`` that matches no parameter path."""
    patterns = {"reset_layers": config.reset_layers}
    if config.plasticity is not None:
        patterns["plasticity_layers"] = config.plasticity_layers
    for name, pattern in patterns.items():
        if pattern is not None and not any(re.search(pattern, path) for path in paths):
            layers = sorted({path.rsplit("/", 1)[0] for path in paths})
            raise ValueError(f"{name} {pattern!r} matches no parameter of {config.model}; its "
                             f"layers are {layers}.")


def make_diagnose(model: Any, data: ExperimentData, dataset: str | None = None) -> Callable:
    """Returns ``diagnose(host_state) -> dict``: latent-gradient-bias diagnostics on the
    training set (its first ``DIAGNOSTICS_SAMPLES`` examples) at the state's params.

    ``dataset`` (the config's) picks the normalization of images.

    The keys are ``grad_*`` (cosines and norms of the correct-label and wrong-label gradient
    parts, :class:`resetax.diagnostics.GradientAlignment`) and ``mem_*`` (memorization fractions,
    :class:`resetax.diagnostics.MemorizationFractions`). Each process computes them on its own
    first device.
    """
    from resetax import diagnostics

    train = data.train
    if train.clean_labels is None:
        raise ValueError("diagnostics_every needs a dataset with known clean labels.")
    n = min(len(train), DIAGNOSTICS_SAMPLES)
    x = jnp.asarray(train.inputs[:n])
    noisy, clean = jnp.asarray(train.labels[:n]), jnp.asarray(train.clean_labels[:n])

    @jax.jit
    def run(params, batch_stats):
        def apply_fn(p, xb):
            return model.apply({"params": p, "batch_stats": batch_stats},
                               preprocess(xb, dataset), train=False)

        parts = diagnostics.decompose_gradients(
            apply_fn, optax.softmax_cross_entropy_with_integer_labels, params, x, noisy,
            noisy != clean, chunk_size=min(n, steps_lib.EVAL_BATCH_SIZE))
        logits = jax.lax.map(lambda xb: apply_fn(params, xb[None])[0], x,
                             batch_size=min(n, steps_lib.EVAL_BATCH_SIZE))
        return parts.overall, diagnostics.memorization_fractions(logits, noisy, clean)

    def diagnose(host_state: train_state.TrainState) -> dict[str, float]:
        alignment, memorization = run(host_state.params, host_state.batch_stats)
        out = {f"grad_{k}": float(v) for k, v in alignment._asdict().items()}
        out.update({f"mem_{k}": float(v) for k, v in memorization._asdict().items()
                    if not k.startswith("num_")})
        return out

    return diagnose
