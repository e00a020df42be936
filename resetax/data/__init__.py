"""Datasets for noisy-label training: sources loaded to host arrays, splits, on-device batching.

Sources (:func:`load`) return a :class:`Dataset` of NumPy arrays; put them on the device once and
sample, gather and augment batches there with the jittable helpers.
"""

from resetax.data.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    PAD_MODES,
    augment_cifar,
    channel_mean_std,
    normalize,
    random_crop,
    random_flip,
)
from resetax.data.batching import (
    batch_from_order,
    batch_indices_at_step,
    epoch_batch_indices,
    epoch_order,
    sample_batch_indices,
)
from resetax.data.dataset import SUBSET_METHODS, Dataset, subset_per_class, train_val_split
from resetax.data.sources import (
    DATASETS,
    LABEL_VARIANTS,
    SPLITS,
    load,
    load_digits,
    load_mnist1d,
    prepare_command,
)

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "LABEL_VARIANTS",
    "PAD_MODES",
    "SPLITS",
    "SUBSET_METHODS",
    "Dataset",
    "augment_cifar",
    "batch_from_order",
    "batch_indices_at_step",
    "channel_mean_std",
    "epoch_batch_indices",
    "epoch_order",
    "load",
    "load_digits",
    "load_mnist1d",
    "normalize",
    "prepare_command",
    "random_crop",
    "random_flip",
    "sample_batch_indices",
    "subset_per_class",
    "train_val_split",
]
