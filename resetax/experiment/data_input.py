"""The data of an experiment, on the host: loaded, its labels corrupted, validation held out,
evaluation sets padded (:mod:`~resetax.experiment.placement` puts them on the devices)."""

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

    Example:
      >>> import numpy as np
      >>> from resetax import data
      >>> from resetax.experiment.data_input import ExperimentData
      >>> def split(n):
      ...     labels = np.arange(n, dtype=np.int32) % 2
      ...     return data.Dataset(np.zeros((n, 3), np.float32), labels, labels, np.arange(n), 2)
      >>> experiment = ExperimentData(train=split(8), val=split(2), test=split(4), num_classes=2)
      >>> train, val, test, num_classes = experiment  # a NamedTuple: unpacks in field order
      >>> len(train), len(val), len(test), num_classes
      (8, 2, 4, 2)
    """

    train: Any
    val: Any
    test: Any
    num_classes: int


def load_data(config: Config) -> ExperimentData:
    """Loads the config's dataset, corrupts the training labels and sets up validation.

    With ``val_source="train"`` the noise hits the training data before the validation split,
    so the validation set is as noisy as the training set unless ``clean_validation`` is set
    (the paper's two settings). With ``"train_unused"`` the validation set is ``val_size``
    random training images outside the ``num_per_class`` subset, with ``"test"`` the test
    images; in both their labels are drawn from the noise model with a seed of their own unless
    ``clean_validation`` is set.

    Example:
      >>> from resetax.experiment.config import get_config
      >>> from resetax.experiment.data_input import load_data
      >>> config = get_config("quick", dataset="digits", model="mlp", noise_rate=0.4)
      >>> data = load_data(config)  # scikit-learn's 8x8 digits, bundled: no download
      >>> data.num_classes, len(data.train), len(data.val), len(data.test)
      (10, 1294, 144, 359)
      >>> data.train.inputs.shape[1:], data.train.inputs.dtype
      ((8, 8, 1), dtype('float32'))
      >>> round(float(data.train.is_noisy.mean()), 2), bool(data.val.is_noisy.any())
      (0.39, False)
      >>> noisy_val = load_data(config.replace(clean_validation=False)).val
      >>> round(float(noisy_val.is_noisy.mean()), 2)  # as noisy as the training split
      0.41

      The noise flipped 40% of the training labels to another class before the split (0.39 and
      0.41 of its two parts); the quick preset gives the validation part its true labels back.
      The test split is always clean.
    """
    from resetax import data

    full = data.load(config.dataset, split="train", label_variant=config.label_variant,
                     data_dir=config.data_dir)
    test = data.load(config.dataset, split="test", label_variant=config.label_variant,
                     data_dir=config.data_dir)
    train = full
    if config.num_per_class is not None:
        train = data.subset_per_class(full, config.num_per_class, seed=config.seed,
                                      how=config.subset)
    train = _corrupt(config, train, config.seed)
    if config.val_source == "train":
        train, val = data.train_val_split(train, config.val_fraction, seed=config.seed,
                                          clean_val=config.clean_validation)
    elif config.val_source == "train_unused":
        val = _validation_from(config, _unused_images(config, full, train))
    else:
        val = _validation_from(config, test)
    return ExperimentData(train, val, test, train.num_classes)


def _corrupt(config: Config, dataset: Any, seed: Any) -> Any:
    """``dataset`` with its labels drawn from the config's noise model."""
    from resetax import noise

    if config.noise == "none" or config.noise_rate == 0:
        return dataset
    extra = {}
    if config.noise == "asymmetric_cifar100":
        extra["coarse_labels"] = dataset.coarse_labels
    if config.noise == "instance_dependent":
        extra["inputs"] = dataset.inputs
    noisy, _ = noise.apply_noise(config.noise, dataset.labels, config.noise_rate,
                                 dataset.num_classes, seed=seed, **extra)
    return dataclasses.replace(dataset, labels=np.asarray(noisy, np.int32))


def _unused_images(config: Config, full: Any, subset: Any) -> Any:
    """``val_size`` random images of ``full`` outside ``subset``, in their original order."""
    from resetax.experiment.config import DEFAULT_VAL_SIZE

    size = DEFAULT_VAL_SIZE if config.val_size is None else config.val_size
    unused = np.flatnonzero(~np.isin(full.indices, subset.indices))
    if size > len(unused):
        raise ValueError(f"val_size ({size}) must be at most the {len(unused)} training images "
                         f"outside the num_per_class subset.")
    rng = np.random.default_rng([config.seed, 1])  # apart from the subset's and the noise's draws
    return full.take(np.sort(rng.choice(unused, size, replace=False)))


def _validation_from(config: Config, images: Any) -> Any:
    """A validation set of other images than the training ones: clean labels, or labels drawn
    from the noise model with a seed of their own."""
    clean = dataclasses.replace(images, labels=images.clean_labels)
    if config.clean_validation:
        return clean
    return _corrupt(config, clean, np.random.default_rng([config.seed, 2]))


_CIFAR100_DATASETS = ("cifar100", "cifar100_n")


def preprocess(x: jax.Array, dataset: str | None = None) -> jax.Array:
    """Maps stored inputs to model inputs: uint8 images are normalized, floats pass through.

    Images are normalized with the channel statistics of their dataset's training images:
    CIFAR-100's for ``"cifar100"`` and ``"cifar100_n"``, CIFAR-10's otherwise (``None``
    included).

    Example:
      >>> from resetax.experiment.data_input import preprocess
      >>> images = jnp.full((2, 32, 32, 3), 255, jnp.uint8)  # white CIFAR images
      >>> x = preprocess(images)  # (x / 255 - mean) / std with CIFAR-10's channel statistics
      >>> x.dtype, x.shape, x[0, 0, 0].round(2).tolist()
      (dtype('float32'), (2, 32, 32, 3), [2.06, 2.13, 2.12])
      >>> preprocess(images, "cifar100")[0, 0, 0].round(2).tolist()  # CIFAR-100's statistics
      [1.84, 2.0, 2.02]
      >>> preprocess(jnp.array([0.5, -1.0], jnp.float16))  # features are only cast to float32
      Array([ 0.5, -1. ], dtype=float32)
    """
    if x.dtype == jnp.uint8:
        from resetax import data

        if dataset in _CIFAR100_DATASETS:
            return data.normalize(x, data.CIFAR100_MEAN, data.CIFAR100_STD)
        return data.normalize(x)
    return x.astype(jnp.float32)


def pad_eval_set(inputs: np.ndarray, labels: np.ndarray, multiple: int):
    """Pads an eval set to a multiple of ``multiple`` examples; padding has weight 0.

    Returns ``(inputs, labels, weight)``; the padding repeats the first example.

    Example:
      >>> import numpy as np
      >>> from resetax.experiment.data_input import pad_eval_set
      >>> inputs = np.arange(10.0).reshape(5, 2)
      >>> x, y, weight = pad_eval_set(inputs, np.array([3, 1, 4, 1, 5]), multiple=4)
      >>> x.shape, y.tolist(), weight.tolist()
      ((8, 2), [3, 1, 4, 1, 5, 3, 3, 3], [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
      >>> bool(np.average(x[:, 0], weights=weight) == inputs[:, 0].mean())  # padding: no weight
      True
    """
    n = len(inputs)
    padded = -(-n // multiple) * multiple
    weight = np.zeros(padded, np.float32)
    weight[:n] = 1.0
    pad = padded - n
    inputs = np.concatenate([inputs, np.repeat(inputs[:1], pad, 0)]) if pad else inputs
    labels = np.concatenate([labels, np.repeat(labels[:1], pad, 0)]) if pad else labels
    return inputs, labels.astype(np.int32), weight
