"""Experiment configuration: a typed dataclass, the named presets, and eager validation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from resetax import _checks

PARALLEL_MODES = ("sharded", "pmap")
SELECT_BY = ("loss", "accuracy")
PLASTICITY = (None, "reset_to_init", "shrink_and_perturb", "recycle_dormant_units")
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
DISPATCH = ("auto", "scan", "step")
SUBSETS = ("random", "first")
VAL_SOURCES = ("train", "train_unused", "test")
VAL_LOSSES = ("ce", "train")
SCHEDULE_ON_RESET = ("continue", "restore")
BATCH_SAMPLING = ("epoch", "iid")
INITS = ("flax", "pytorch")
DEFAULT_VAL_SIZE = 10_000  # val_source="train_unused" with val_size=None


def _field(default: Any, help: str) -> Any:
    """A Config field; its ``help`` is shown by ``resetax train --help`` and in the doc."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run; each field is a flag of the CLI.

    The fields and their meanings are listed below (from each field's ``metadata["help"]``, which
    is also the flag's help text). A preset (:data:`PRESETS`, :func:`get_config`) overrides some of
    the defaults.

    Example:
      >>> from resetax.experiment.config import Config
      >>> config = Config(noise_rate=0.6)  # the dataclass defaults, without a preset
      >>> config.dataset, config.model, config.noise_rate
      ('mnist1d', 'cnn1d', 0.6)
      >>> config.replace(reset_prob=0.0).reset_prob  # a validated copy
      0.0
      >>> Config.help("adaptive")
      'The checkpoint follows each new best.'
    """

    dataset: str = _field("mnist1d", "A name from resetax.data.DATASETS.")
    label_variant: str | None = _field(
        None, "Which human label set of CIFAR-10N (aggre, worse, random1...).")
    num_per_class: int | None = _field(
        None, "Training examples kept per class (the paper's small-data setting); none: all.")
    subset: str = _field(
        "random", "Which num_per_class examples of each class: random (drawn with the seed), or "
                  "first (the first ones in the source's original order; for CIFAR-10 the "
                  "official setting 1's ciFAIR-10 trainval0).")
    noise: str = _field("symmetric", "A label-noise model from resetax.noise.NOISE_KINDS, or none.")
    noise_rate: float = _field(
        0.4, "Fraction of training labels the noise model corrupts, in [0, 1].")
    val_fraction: float = _field(
        0.1, "Share of the training data held out for validation, in (0, 1) (val_source "
             "train).")
    val_source: str = _field(
        "train", "Where the validation set comes from: train (val_fraction of the training data "
                 "held out), train_unused (val_size random training images outside the "
                 "num_per_class subset), or test (the test images with labels drawn from the "
                 "noise model: the official protocol, which selects the model on test images).")
    val_size: int | None = _field(
        None, f"Validation images with val_source=train_unused; none: {DEFAULT_VAL_SIZE}.")
    clean_validation: bool = _field(
        False, "Keep the validation labels clean (the noise hits only the train part).")
    val_loss: str = _field(
        "ce", "The validation loss fed to resetting and model selection: ce (cross-entropy), or "
              "train (the training loss with its hyperparameters, cross-entropy for elr and "
              "elr_official, as the official code).")
    model: str = _field("cnn1d", "A name from resetax.models.MODELS.")
    init: str = _field(
        "flax", "Weight initialization: flax (He normal convolutions in the ResNets, LeCun "
                "normal elsewhere, zero biases) or pytorch (PyTorch's defaults: kernels and "
                "biases uniform in +-1/sqrt(fan_in)).")
    loss: str = _field(
        "ce", "A name from resetax.losses.LOSSES, or elr (early-learning regularization with its "
              "per-sample targets kept in the train state), or elr_official (ELR without "
              "memory, as the official code runs it).")
    gce_q: float = _field(0.7, "GCE's exponent q (gce, truncated_gce), in (0, 1].")
    truncated_gce_k: float = _field(0.5, "Truncated GCE's threshold k, in [0, 1).")
    sce_alpha: float = _field(0.1, "SCE's weight of the cross-entropy, >= 0.")
    sce_beta: float = _field(1.0, "SCE's weight of the reverse cross-entropy, >= 0.")
    nce_rce_alpha: float = _field(1.0, "NCE+RCE's weight of the normalized cross-entropy, >= 0.")
    nce_rce_beta: float = _field(1.0, "NCE+RCE's weight of the reverse cross-entropy, >= 0.")
    elr_lambda: float = _field(3.0, "ELR's regularization strength lambda (elr, elr_official), "
                                    ">= 0.")
    elr_beta: float = _field(0.7, "ELR's target momentum beta (elr, elr_official), in [0, 1).")
    optimizer: str = _field("sgd", "sgd or adam.")
    learning_rate: float = _field(0.05, "Peak learning rate.")
    momentum: float = _field(0.9, "SGD momentum (0: plain SGD).")
    weight_decay: float = _field(0.0, "L2 weight decay added to the gradients.")
    schedule: str = _field("constant", "constant, or cosine (decay to 0 over num_steps).")
    schedule_on_reset: str = _field(
        "continue", "The learning rate after a reset: continue (the schedule's value at the "
                    "step) or restore (the rate of the checkpoint's step, scaled on by the "
                    "schedule's ratios since the reset, as PyTorch's scheduler after the "
                    "official code restores the optimizer; needs reset_inner_state).")
    batch_size: int = _field(32, "Global batch size; must divide by the number of devices.")
    batch_sampling: str = _field(
        "epoch", "How batches are drawn: epoch (a permutation per epoch, cut into batches) or "
                 "iid (a fresh draw without replacement at every step, as the official code).")
    num_steps: int = _field(4000, "Training steps.")
    eval_every: int = _field(
        20, "Steps between validation measurements (the value fed to resetting).")
    eval_test: bool = _field(
        True, "Also measure test accuracy at every evaluation (a full test pass each time; the "
              "summary's test accuracies are measured at the end either way).")
    test_every: int | None = _field(
        None, "Steps between test measurements with eval_test, a multiple of eval_every; none: "
              "eval_every.")
    dispatch: str = _field(
        "auto", "How steps reach the devices: scan (steps_per_dispatch steps fused into one call "
                "with lax.scan), step (one call per step, from Python), or auto: step on CPUs, "
                "where XLA runs convolutions inside a loop body several times slower, scan "
                "elsewhere.")
    steps_per_dispatch: int = _field(
        20, "Steps per device call with dispatch=scan; with dispatch=step, steps between two "
            "reads of the metrics.")
    reset_prob: float = _field(0.03, "Reset probability per step once resetting is on; 0 is the "
                                     "baseline.")
    patience: int | None = _field(
        200, "Steps without a better validation value before resetting starts; none: at once. "
             "The official code's --threshold-iter T with --log-iter E is patience "
             "E*ceil(T/E) - E (official_patience_steps).")
    adaptive: bool = _field(True, "The checkpoint follows each new best.")
    reset_inner_state: bool = _field(False, "Resets restore momentum as well.")
    reset_on_nonfinite: bool = _field(
        True, "Roll back to the checkpoint at once when an update would make the params "
              "non-finite (a loss spike), counted apart from the random resets.")
    reset_layers: str | None = _field(
        None, "Regular expression over parameter paths (/-joined); only matching layers reset "
              "(partial resetting). none: all layers.")
    select_by: str = _field(
        "loss", "Model selection and resetting metric: validation loss or accuracy.")
    augment: bool = _field(False, "CIFAR augmentation (random crop and flip) of training batches.")
    pad_mode: str = _field(
        "constant", "Padding of augment's random crops: constant (zeros) or reflect.")
    baseline: bool = _field(
        False, "Also train the reset_prob=0 baseline beside the resetting run, side by side.")
    seed: int = _field(
        0, "Seed of everything random in the run (noise, split, init, batches, resets), in "
           "[0, 4294967295].")
    parallel: str = _field("sharded", "sharded (jit over a Mesh) or pmap.")
    num_devices: int | None = _field(None, "How many of the local devices to use; none: all.")
    checkpoint_every: int = _field(
        1000, "Steps between resumable checkpoints (and one at the end); a multiple of "
              "eval_every.")
    diagnostics_every: int | None = _field(
        None, "Steps between latent-gradient-bias diagnostics (a multiple of eval_every; needs "
              "clean labels): gradient cosines and norms of the correct and wrong parts, "
              "memorization fractions. none: off.")
    data_dir: str | None = _field(None, "TFDS data directory for the datasets that need one.")
    dtype: str = _field(
        "float32", "The model's computation dtype: float32, or bfloat16 (parameters, optimizer "
                   "state and BatchNorm statistics stay float32; the logits and the loss are "
                   "float32).")
    plasticity: str | None = _field(
        None, "Resetting for plasticity inside the optimizer (resetax.plasticity): reset_to_init "
              "(the plasticity_layers take fresh initial values every plasticity_every steps) "
              "or shrink_and_perturb (theta <- shrink*theta + perturb*epsilon, epsilon a fresh "
              "initialization, every plasticity_every steps) or recycle_dormant_units (ReDo: "
              "every plasticity_every steps, the hidden units whose normalized activation is at "
              "most dormant_threshold get fresh incoming and zero outgoing weights). none: off.")
    plasticity_every: int = _field(1000, "Steps between two plasticity resets.")
    plasticity_layers: str | None = _field(
        None, "Regular expression over parameter paths (/-joined) that the plasticity reset "
              "acts on (recycle_dormant_units: the hidden layers with an incoming parameter "
              "that matches). none: all layers.")
    dormant_threshold: float = _field(
        0.1, "recycle_dormant_units' threshold tau on a unit's activation score (its mean "
             "absolute activation over the batch divided by its layer's mean), >= 0.")
    shrink: float = _field(0.8, "shrink_and_perturb's shrink factor, in [0, 1].")
    perturb: float = _field(0.01, "shrink_and_perturb's noise scale, >= 0.")
    log_to: str | None = _field(
        None, "Experiment tracking besides the run's files: tensorboard (event files in the run "
              "directory's tensorboard/), wandb (a Weights & Biases run; WANDB_MODE=offline "
              "needs no network), or both, comma-separated. none: off.")

    def __post_init__(self):
        validate(self)  # once, when the config is made: a Config is always valid

    def replace(self, **changes: Any) -> Config:
        """Returns a copy with fields changed (validated, as every Config is)."""
        return dataclasses.replace(self, **changes)

    def diff(self, other: Config | Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """The fields whose values differ from ``other``'s (a Config, or some fields' values):
        ``{name: (this value, other's)}``, in field order.

        Example:
          >>> from resetax.experiment.config import get_config
          >>> config = get_config("quick")
          >>> config.diff(config.replace(seed=3, noise_rate=0.6))
          {'noise_rate': (0.4, 0.6), 'seed': (0, 3)}
          >>> config.diff({"seed": 0, "batch_size": 64})
          {'batch_size': (32, 64)}
        """
        values = other if isinstance(other, Mapping) else dataclasses.asdict(other)
        return {f.name: (getattr(self, f.name), values[f.name])
                for f in dataclasses.fields(self)
                if f.name in values and getattr(self, f.name) != values[f.name]}

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field ``name``."""
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


Config.__doc__ += "\n    Attributes:\n" + "".join(
    f"      {f.name}: {f.metadata['help']}\n" for f in dataclasses.fields(Config))


def official_patience_steps(threshold_iter: int, log_iter: int) -> int:
    """The ``patience`` that matches the official code's ``--threshold-iter`` and ``--log-iter``.

    The official loop switches resetting on at the first evaluation whose best value is the one
    recorded ``ceil(T / E) - 1`` evaluations earlier (it indexes with ``-T//E``, which Python
    reads as ``(-T)//E``), so the first reset draw comes ``E * ceil(T / E) - E`` steps after
    the step whose parameters were best; ``patience`` counts those steps. With ``T <= E`` the
    official code switches on at its second evaluation whatever the values, which no patience
    reproduces. See PARITY.md, row 5.

    Args:
      threshold_iter: ``--threshold-iter`` ``T``, greater than ``log_iter``.
      log_iter: ``--log-iter`` ``E``, positive.

    Returns:
      The patience in steps.

    Examples:
      >>> from resetax.experiment.config import official_patience_steps
      >>> official_patience_steps(5000, 10), official_patience_steps(1000, 100)
      (4990, 900)
      >>> official_patience_steps(25, 10)  # T rounds up to whole evaluations
      20
    """
    if isinstance(log_iter, bool) or not isinstance(log_iter, int) or log_iter <= 0:
        raise ValueError(f"log_iter must be an integer > 0, got {log_iter!r}.")
    if isinstance(threshold_iter, bool) or not isinstance(threshold_iter, int) or (
        threshold_iter <= log_iter
    ):
        raise ValueError(
            f"threshold_iter must be an integer > log_iter ({log_iter}), got {threshold_iter!r}.")
    return log_iter * -(-threshold_iter // log_iter) - log_iter


# What the official code does, in every paper preset (PARITY.md): a reset restores momentum
# (--opt-reset 1) and the learning rate (--scheduler-reset 1), the validation loss is the
# training loss, batches are fresh draws, and the initialization is PyTorch's.
_OFFICIAL = dict(
    reset_inner_state=True, schedule_on_reset="restore", val_loss="train", batch_sampling="iid",
    init="pytorch", test_every=1000, gce_q=0.7, truncated_gce_k=0.5,
    # SCE ran with CIFAR-10's weights on every dataset (PARITY.md, D4).
    sce_alpha=0.1, sce_beta=1.0, nce_rce_alpha=1.0, nce_rce_beta=1.0, elr_lambda=3.0,
    elr_beta=0.7,
)
_CIFAR100_LOSSES = dict(elr_lambda=7.0, elr_beta=0.9, nce_rce_alpha=10.0, nce_rce_beta=0.1)

_SETTING2 = dict(
    _OFFICIAL,
    model="resnet34", loss="ce", optimizer="sgd", learning_rate=0.1, momentum=0.9,
    weight_decay=5e-4, schedule="cosine", batch_size=256, num_steps=50_000,
    # --log-iter 10 --threshold-iter 5000.
    eval_every=10, patience=official_patience_steps(5000, 10),
    steps_per_dispatch=50, reset_prob=1e-3, augment=True, checkpoint_every=5000,
    val_fraction=0.1, noise="symmetric", noise_rate=0.4,
    # The paper's setting-2 tables report the best-validation model's test accuracy only, which
    # the summary measures once at the end: no test pass in the evaluation windows.
    eval_test=False,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Offline default: MNIST-1D with 40% symmetric noise, small 1-D CNN, a small clean validation
    # split (as the paper's setting 1). reset_prob and patience were picked on the validation
    # loss of tuning seeds (benchmarks/accuracy.py --tune).
    # It trains the baseline too, and plots test accuracy over training, as the paper's figures.
    "quick": dict(clean_validation=True, baseline=True),
    # Paper's setting 1: ciFAIR-10's trainval0 (the first 50 CIFAR-10 training images of each
    # class), VCNN, plain SGD, batch 16, clean validation on 10,000 unused training images, the
    # official code's reflect-padded crops and flips and --log-iter 100; test accuracy over
    # training, as in the paper's figures.
    "setting1": dict(
        _OFFICIAL,
        dataset="cifar10", num_per_class=50, subset="first", val_source="train_unused",
        val_size=DEFAULT_VAL_SIZE, model="vcnn", optimizer="sgd", learning_rate=1e-2,
        momentum=0.0, batch_size=16, num_steps=30_000, eval_every=100, steps_per_dispatch=50,
        patience=official_patience_steps(1000, 100), reset_prob=0.01, clean_validation=True,
        augment=True, pad_mode="reflect", noise="symmetric", noise_rate=0.4,
        checkpoint_every=5000,
    ),
    "setting2-cifar10": dict(_SETTING2, dataset="cifar10"),
    "setting2-cifar100": dict(_SETTING2, **_CIFAR100_LOSSES, dataset="cifar100"),
    "cifar10n-aggre": dict(_SETTING2, dataset="cifar10_n", label_variant="aggre", noise="none",
                           noise_rate=0.0),
    "cifar10n-worse": dict(_SETTING2, dataset="cifar10_n", label_variant="worse", noise="none",
                           noise_rate=0.0),
    "cifar10n-random1": dict(_SETTING2, dataset="cifar10_n", label_variant="random1",
                             noise="none", noise_rate=0.0),
    "cifar100n": dict(_SETTING2, **_CIFAR100_LOSSES, dataset="cifar100_n", noise="none",
                      noise_rate=0.0),
}


def get_config(preset: str = "quick", **overrides: Any) -> Config:
    """Returns a preset's config with overrides applied, validated before any work is done.

    Args:
      preset: A name from ``PRESETS``.
      **overrides: Field values that replace the preset's.

    Returns:
      The validated :class:`Config`.

    Examples:
      >>> from resetax.experiment.config import get_config
      >>> get_config("quick", noise_rate=0.6).noise_rate
      0.6
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}.")
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; accepted: {sorted(fields)}.")
    return Config(**{**PRESETS[preset], **overrides})


MAX_SEED = 2**32 - 1  # seeds JAX's keys and NumPy's generators all take


def validate(config: Config) -> Config:
    """Checks every field, raising ValueError that names the field and the accepted values;
    every :class:`Config` is checked so when it is made.

    Returns:
      The config itself, when it is valid.

    Example:
      >>> from resetax.experiment.config import Config
      >>> Config(reset_prob=-0.1)
      Traceback (most recent call last):
      ...
      ValueError: reset_prob must be in [0.0, 1.0], got -0.1.
    """
    _check_choices(config)
    _check_numbers(config)
    _check_loss_hyperparameters(config)
    _check_schedule(config)
    _check_official_options(config)
    return config


def _check_choices(config: Config) -> None:
    from resetax import losses, noise

    datasets, models = _registries()
    _checks.one_of("dataset", config.dataset, datasets)
    _checks.one_of("model", config.model, models)
    _checks.one_of("loss", config.loss, (*losses.LOSSES, "elr"))
    for name, accepted in (("subset", SUBSETS), ("val_source", VAL_SOURCES),
                           ("val_loss", VAL_LOSSES), ("schedule_on_reset", SCHEDULE_ON_RESET),
                           ("batch_sampling", BATCH_SAMPLING), ("init", INITS)):
        _checks.one_of(name, getattr(config, name), accepted)
    _checks.one_of("noise", config.noise, ("none", *noise.NOISE_KINDS))
    _checks.one_of("optimizer", config.optimizer, OPTIMIZERS)
    _checks.one_of("schedule", config.schedule, SCHEDULES)
    _checks.one_of("select_by", config.select_by, SELECT_BY)
    _checks.one_of("parallel", config.parallel, PARALLEL_MODES)
    _checks.one_of("dispatch", config.dispatch, DISPATCH)
    from resetax.data import PAD_MODES

    _checks.one_of("pad_mode", config.pad_mode, PAD_MODES)
    for field in dataclasses.fields(config):
        if field.type == "bool":
            _checks.boolean(field.name, getattr(config, field.name))
    _checks.regex("reset_layers", config.reset_layers)
    _checks.one_of("plasticity", config.plasticity, PLASTICITY)
    _checks.one_of("dtype", config.dtype, DTYPES)
    _checks.regex("plasticity_layers", config.plasticity_layers)
    from resetax.experiment.tracking import BACKENDS

    for backend in tracking_backends(config):
        _checks.one_of("log_to", backend, tuple(BACKENDS))


def tracking_backends(config: Config) -> tuple[str, ...]:
    """The tracking backends ``config.log_to`` names, in order (none: an empty tuple).

    Example:
      >>> from resetax.experiment.config import get_config, tracking_backends
      >>> tracking_backends(get_config("quick", log_to="tensorboard,wandb"))
      ('tensorboard', 'wandb')
    """
    if config.log_to is None:
        return ()
    if not isinstance(config.log_to, str):
        raise ValueError(f"log_to must be None or a comma-separated str of tracking backends, "
                         f"got {config.log_to!r}.")
    return tuple(name.strip() for name in config.log_to.split(","))


def _check_numbers(config: Config) -> None:
    _checks.in_range("noise_rate", config.noise_rate, 0.0, 1.0)
    _checks.in_range("reset_prob", config.reset_prob, 0.0, 1.0)
    _checks.in_range("momentum", config.momentum, 0.0, 1.0)
    _checks.python_number("val_fraction", config.val_fraction, lambda v: 0 < v < 1, "in (0, 1)")
    _checks.python_number("learning_rate", config.learning_rate,
                          lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
    _checks.python_number("weight_decay", config.weight_decay,
                          lambda v: math.isfinite(v) and v >= 0, ">= 0")
    for name in ("num_per_class", "num_devices"):
        _checks.positive_int(name, getattr(config, name), none_ok=True)
    _checks.int_between("seed", config.seed, 0, MAX_SEED)
    _checks.positive_int("plasticity_every", config.plasticity_every)
    _checks.in_range("shrink", config.shrink, 0.0, 1.0)
    _checks.python_number("perturb", config.perturb, lambda v: math.isfinite(v) and v >= 0,
                          "a finite number >= 0")
    _checks.python_number("dormant_threshold", config.dormant_threshold,
                          lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
    if config.baseline and config.reset_prob == 0:
        raise ValueError("baseline=True trains a reset_prob=0 baseline beside the resetting run, "
                         "so reset_prob must be > 0.")


def _check_schedule(config: Config) -> None:
    """The step counts: positive, and windows that line up with checkpoints and diagnostics."""
    for name in ("batch_size", "num_steps", "eval_every", "steps_per_dispatch",
                 "checkpoint_every"):
        _checks.positive_int(name, getattr(config, name))
    _checks.multiple_of("checkpoint_every", config.checkpoint_every, "eval_every",
                        config.eval_every, ", so that a resumed run reports the same metrics")
    _checks.int_at_least("patience", config.patience, 0, none_ok=True)
    _checks.positive_int("diagnostics_every", config.diagnostics_every, none_ok=True)
    _checks.multiple_of("diagnostics_every", config.diagnostics_every, "eval_every",
                        config.eval_every)


def _check_loss_hyperparameters(config: Config) -> None:
    for name in ("sce_alpha", "sce_beta", "nce_rce_alpha", "nce_rce_beta", "elr_lambda"):
        _checks.python_number(name, getattr(config, name),
                              lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
    for name, ok, accepted in (("gce_q", lambda v: 0 < v <= 1, "in (0, 1]"),
                               ("truncated_gce_k", lambda v: 0 <= v < 1, "in [0, 1)"),
                               ("elr_beta", lambda v: 0 <= v < 1, "in [0, 1)")):
        _checks.python_number(name, getattr(config, name), ok, accepted)


def _check_official_options(config: Config) -> None:
    """The options that reproduce the official code, and the fields they need."""
    if config.schedule_on_reset == "restore" and not config.reset_inner_state:
        raise ValueError(
            "schedule_on_reset='restore' needs reset_inner_state=True: the learning rate comes "
            "back with the optimizer state, as the official code restores them together.")
    if config.val_source == "train_unused" and config.num_per_class is None:
        raise ValueError("val_source='train_unused' needs num_per_class: the validation images "
                         "are drawn from the training images outside the subset.")
    _checks.positive_int("val_size", config.val_size, none_ok=True)
    if config.val_size is not None and config.val_source != "train_unused":
        raise ValueError(f"val_size is only used with val_source='train_unused', got "
                         f"val_source={config.val_source!r}; leave val_size none.")
    _checks.positive_int("test_every", config.test_every, none_ok=True)
    _checks.multiple_of("test_every", config.test_every, "eval_every", config.eval_every)


def _registries() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from resetax.data import DATASETS
    from resetax.models import MODELS

    return tuple(DATASETS), tuple(MODELS)
