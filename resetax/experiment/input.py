"""The data of an experiment: load, inject label noise, hold out validation, place on devices."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from resetax.experiment.config import Config


class ExperimentData(NamedTuple):
    """Host-side splits of an experiment.

    Attributes:
      train: Training split with the labels training sees (noisy ones included).
      val: Validation split held out from the training data.
      test: The clean test split.
      num_classes: Number of classes.
    """

    train: Any
    val: Any
    test: Any
    num_classes: int


def load_data(config: Config) -> ExperimentData:
    """Loads the config's dataset, corrupts the training labels and splits off validation.

    The noise hits the training data before the validation split, so the validation set is as
    noisy as the training set unless ``clean_validation`` is set (the paper's two settings).
    """
    from resetax import data, noise

    train = data.load(config.dataset, split="train", label_variant=config.label_variant,
                      data_dir=config.data_dir, samples_per_class=config.num_per_class,
                      seed=config.seed)
    test = data.load(config.dataset, split="test", label_variant=config.label_variant,
                     data_dir=config.data_dir)
    if config.noise != "none" and config.noise_rate > 0:
        extra = {}
        if config.noise == "asymmetric_cifar100":
            extra["coarse_labels"] = train.coarse_labels
        if config.noise == "instance_dependent":
            extra["inputs"] = train.inputs
        noisy, _ = noise.apply_noise(config.noise, train.labels, config.noise_rate,
                                     train.num_classes, seed=config.seed, **extra)
        train = dataclasses.replace(train, labels=np.asarray(noisy, np.int32))
    train, val = data.train_val_split(train, config.val_fraction, seed=config.seed,
                                      clean_val=config.clean_validation)
    return ExperimentData(train, val, test, train.num_classes)


def preprocess(x: jax.Array) -> jax.Array:
    """Maps stored inputs to model inputs: uint8 images are normalized, floats pass through."""
    if x.dtype == jnp.uint8:
        from resetax.data import normalize

        return normalize(x)
    return x.astype(jnp.float32)


def pad_eval_set(inputs: np.ndarray, labels: np.ndarray, multiple: int):
    """Pads an eval set to a multiple of ``multiple`` examples; padding has weight 0."""
    n = len(inputs)
    padded = -(-n // multiple) * multiple
    weight = np.zeros(padded, np.float32)
    weight[:n] = 1.0
    pad = padded - n
    inputs = np.concatenate([inputs, np.repeat(inputs[:1], pad, 0)]) if pad else inputs
    labels = np.concatenate([labels, np.repeat(labels[:1], pad, 0)]) if pad else labels
    return inputs, labels.astype(np.int32), weight
