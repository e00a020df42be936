"""The in-memory dataset container and the host-side splits of it (class subsets, validation)."""

from __future__ import annotations

import dataclasses

import numpy as np

from resetax import _checks


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a labelled dataset as NumPy arrays, ready to be put on a device.

    The container is immutable; derive variants with :func:`dataclasses.replace`. A noise model
    replaces ``labels`` and keeps ``clean_labels``, so that ``labels != clean_labels`` marks the
    wrongly-labelled examples.

    Attributes:
      inputs: the examples, ``[N, ...]`` (``uint8 [N, 32, 32, 3]`` images for CIFAR, ``float32``
        otherwise).
      labels: ``int32 [N]``, the labels training sees (noisy for CIFAR-N, equal to
        ``clean_labels`` for a clean dataset until noise is injected).
      clean_labels: ``int32 [N]``, the true labels, or ``None`` where they are unknown.
      indices: ``int64 [N]``, each example's position in its source split, which survives
        subsetting and splitting (e.g. to look up per-example side information).
      num_classes: the number of classes of ``labels``.
      coarse_labels: ``int32 [N]`` super-class labels (CIFAR-100's 20 coarse classes), or
        ``None``.
      name: the dataset name, e.g. ``"cifar10_n/aggre:train"``.

    Examples:
      >>> import dataclasses
      >>> import numpy as np
      >>> from resetax import data
      >>> clean = np.array([0, 1, 2, 0], np.int32)
      >>> ds = data.Dataset(np.zeros((4, 3)), clean, clean, np.arange(4), num_classes=3)
      >>> noisy = dataclasses.replace(ds, labels=np.array([0, 2, 2, 1], np.int32))
      >>> noisy.is_noisy.tolist()
      [False, True, False, True]
    """

    inputs: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray | None
    indices: np.ndarray
    num_classes: int
    coarse_labels: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        n = len(self.inputs)
        for field in ("labels", "clean_labels", "indices", "coarse_labels"):
            value = getattr(self, field)
            if value is not None and value.shape != (n,):
                raise ValueError(
                    f"Dataset.{field} must have shape ({n},) to match inputs, got {value.shape}."
                )

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def is_noisy(self) -> np.ndarray | None:
        """``bool [N]``: where ``labels`` differ from ``clean_labels`` (``None`` if unknown)."""
        if self.clean_labels is None:
            return None
        return self.labels != self.clean_labels

    def take(self, positions: np.ndarray) -> Dataset:
        """Returns the examples at ``positions`` (an integer array), every field kept aligned."""
        positions = np.asarray(positions)

        def pick(array):
            return None if array is None else array[positions]

        return dataclasses.replace(
            self,
            inputs=self.inputs[positions],
            labels=self.labels[positions],
            clean_labels=pick(self.clean_labels),
            indices=self.indices[positions],
            coarse_labels=pick(self.coarse_labels),
        )


SUBSET_METHODS = ("random", "first")
"""Values of :func:`subset_per_class`'s ``how``."""


def subset_per_class(dataset: Dataset, samples_per_class: int, *, seed: int = 0,
                     how: str = "random") -> Dataset:
    """Keeps ``samples_per_class`` examples of every class (the small-data setting).

    Classes are those of ``clean_labels`` when known (so that a subset drawn after noise
    injection is still balanced in the true classes), else of ``labels``. The kept examples stay
    in their original order.

    Args:
      dataset: the dataset to subsample.
      samples_per_class: how many examples to keep per class, a positive integer no larger than
        the smallest class.
      seed: seed of the draw; the same seed gives the same subset.
      how: ``"random"``: a uniform draw from each class; ``"first"``: the first examples of each
        class in the order of ``indices`` (their positions in the source: for CIFAR-10's
        training split and 50 per class, ciFAIR-10's ``trainval0``); ``seed`` is then unused.

    Returns:
      A :class:`Dataset` with ``samples_per_class * num_classes`` examples.

    Raises:
      ValueError: if ``samples_per_class`` is not a positive integer or exceeds a class's size.

    Examples:
      >>> import numpy as np
      >>> from resetax import data
      >>> ds = data.Dataset(np.zeros((6, 2)), np.array([0, 1, 0, 1, 0, 1]),
      ...                   np.array([0, 1, 0, 1, 0, 1]), np.arange(6), num_classes=2)
      >>> small = data.subset_per_class(ds, 2, seed=0)
      >>> len(small), np.bincount(small.labels).tolist()
      (4, [2, 2])
      >>> data.subset_per_class(ds, 2, how="first").indices.tolist()  # 0, 2 and 1, 3
      [0, 1, 2, 3]
    """
    _checks.positive_int("samples_per_class", samples_per_class)
    _checks.one_of("how", how, SUBSET_METHODS)
    classes = dataset.labels if dataset.clean_labels is None else dataset.clean_labels
    counts = np.bincount(classes, minlength=dataset.num_classes)
    if samples_per_class > counts.min():
        raise ValueError(
            f"samples_per_class={samples_per_class} exceeds the smallest class of {dataset.name!r}"
            f" ({counts.min()} examples); use 1..{counts.min()}."
        )
    if how == "first":
        order = np.argsort(dataset.indices, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(len(dataset))
    # Then a stable sort by class: the first samples_per_class of each class block are the
    # class's first in `order` (for a random order, a uniform draw from the class).
    by_class = order[np.argsort(classes[order], kind="stable")]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    keep = by_class[(starts[:, None] + np.arange(samples_per_class)).ravel()]
    return dataset.take(np.sort(keep))


def train_val_split(
    dataset: Dataset, val_fraction: float, *, seed: int = 0, clean_val: bool = False
) -> tuple[Dataset, Dataset]:
    """Holds out a random ``val_fraction`` of a training set as the validation set.

    The validation set keeps the training labels, noisy ones included, as in the paper's noisy
    validation setting; ``clean_val=True`` gives it the true labels instead.

    Args:
      dataset: the training data (with its noisy labels if noise was injected already).
      val_fraction: share of the examples held out, strictly between 0 and 1.
      seed: seed of the draw; the same seed gives the same split.
      clean_val: whether the validation labels are ``clean_labels`` rather than ``labels``.

    Returns:
      ``(train, val)``, disjoint, together all of ``dataset``, each in the original order.

    Raises:
      ValueError: if ``val_fraction`` is not in (0, 1), if either part would be empty, or if
        ``clean_val`` is asked for and the clean labels are unknown.

    Examples:
      >>> import numpy as np
      >>> from resetax import data
      >>> ds = data.Dataset(np.zeros((10, 2)), np.zeros(10, np.int32), None, np.arange(10), 2)
      >>> train, val = data.train_val_split(ds, 0.2, seed=0)
      >>> len(train), len(val)
      (8, 2)
    """
    _checks.interval("val_fraction", val_fraction, 0, 1, open_low=True, open_high=True,
                     scalar=True)
    if clean_val and dataset.clean_labels is None:
        raise ValueError(f"clean_val=True needs clean_labels, which {dataset.name!r} lacks.")
    num_val = round(val_fraction * len(dataset))
    if not 0 < num_val < len(dataset):
        raise ValueError(
            f"val_fraction={val_fraction} of {len(dataset)} examples leaves an empty train or"
            " validation set."
        )
    permutation = np.random.default_rng(seed).permutation(len(dataset))
    train = dataset.take(np.sort(permutation[num_val:]))
    val = dataset.take(np.sort(permutation[:num_val]))
    if clean_val:
        val = dataclasses.replace(val, labels=val.clean_labels)
    return train, val
