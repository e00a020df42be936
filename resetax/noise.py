"""Label-noise models: corrupt clean integer labels to build noisy-label training sets.

Every model takes numpy labels and an explicit seed and returns ``(noisy_labels, is_noisy)``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from resetax import _checks

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "CIFAR100_COARSE_OF_FINE",
    "NOISE_KINDS",
    "TRANSITION_MATRIX_KINDS",
    "apply_noise",
    "asymmetric_cifar10_noise",
    "asymmetric_cifar100_noise",
    "empirical_transition_matrix",
    "instance_dependent_noise",
    "next_class_in_superclass",
    "pair_noise",
    "realized_noise_rate",
    "symmetric_noise",
    "transition_matrix",
    "transition_matrix_noise",
]

NOISE_KINDS = (
    "symmetric",
    "pair",
    "asymmetric_cifar10",
    "asymmetric_cifar100",
    "instance_dependent",
    "transition_matrix",
)
"""Names accepted by :func:`apply_noise`."""

TRANSITION_MATRIX_KINDS = ("symmetric", "pair", "asymmetric_cifar10", "asymmetric_cifar100")
"""Names accepted by :func:`transition_matrix`: the class-conditional structured models."""

CIFAR10_ASYMMETRIC_MAP: Mapping[int, int] = types.MappingProxyType({9: 1, 2: 0, 4: 7, 3: 5, 5: 3})
"""CIFAR-10 asymmetric noise (Patrini et al., 2017): truck -> automobile, bird -> airplane,
deer -> horse, cat <-> dog. Classes not listed keep their label."""

CIFAR100_COARSE_OF_FINE = np.array(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
     6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
     5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
     10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
     16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13],
    dtype=np.int64,
)  # fmt: skip
"""Superclass (coarse label) of each CIFAR-100 class (fine label), in the dataset's own
alphabetical class order, e.g. ``CIFAR100_COARSE_OF_FINE[0] == 4``: apple is in
fruit_and_vegetables. Read-only."""
CIFAR100_COARSE_OF_FINE.flags.writeable = False

def symmetric_noise(
    labels: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int | np.random.Generator,
    include_true_class: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric (uniform) label noise.

    Each label is resampled independently with probability ``noise_rate``. Two conventions exist
    in the literature and neither is the default elsewhere, so it is an explicit argument:

    - ``include_true_class=False`` (Bae et al., Han et al.): the new label is drawn uniformly
      from the *other* ``C - 1`` classes, so ``P(noisy = j | true = i) = noise_rate / (C - 1)``
      for ``j != i`` and the realized noise rate is ``noise_rate``.
    - ``include_true_class=True`` (DivideMix, ELR): the new label is drawn uniformly from *all*
      ``C`` classes, so ``P(noisy = j | true = i) = noise_rate / C`` for ``j != i`` and the
      realized noise rate is ``noise_rate * (C - 1) / C``.

    Args:
      labels: 1-D integer array of clean labels in ``[0, num_classes)``.
      noise_rate: probability in ``[0, 1]`` that a label is resampled.
      num_classes: number of classes ``C >= 2``.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).
      include_true_class: whether the resampled label may equal the clean one (see above).

    Returns:
      ``(noisy_labels, is_noisy)``: the noisy labels with the dtype of ``labels``, and a bool
      array marking the samples whose label now differs from the clean one.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> labels = np.arange(10).repeat(200)
      >>> noisy, is_noisy = noise.symmetric_noise(labels, 0.4, 10, seed=0)
      >>> bool(np.array_equal(is_noisy, noisy != labels))
      True
      >>> round(noise.realized_noise_rate(noisy, labels), 1)
      0.4
      >>> noisy, _ = noise.symmetric_noise(labels, 0.4, 10, seed=0, include_true_class=True)
      >>> abs(noise.realized_noise_rate(noisy, labels) - 0.4 * 9 / 10) < 0.05
      True

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.

      Li, Socher & Hoi, `DivideMix: Learning with noisy labels as semi-supervised learning
      <https://arxiv.org/abs/2002.07394>`_, 2020.
    """
    _checks.int_at_least("num_classes", num_classes, 2)
    labels = _checks.labels("labels", labels, num_classes)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    _checks.boolean("include_true_class", include_true_class)
    rng = _rng(seed)
    resample = rng.random(labels.shape) < noise_rate
    if include_true_class:
        new = rng.integers(0, num_classes, labels.shape)
    else:
        new = (labels + rng.integers(1, num_classes, labels.shape)) % num_classes
    noisy = np.where(resample, new, labels).astype(labels.dtype)
    return noisy, noisy != labels


def pair_noise(
    labels: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair-flip label noise: class ``i`` becomes ``(i + 1) mod C`` with probability ``noise_rate``.

    Args:
      labels: 1-D integer array of clean labels in ``[0, num_classes)``.
      noise_rate: flip probability in ``[0, 1]``.
      num_classes: number of classes ``C >= 2``.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> labels = np.arange(5).repeat(100)
      >>> noisy, is_noisy = noise.pair_noise(labels, 0.3, 5, seed=0)
      >>> bool(np.all(noisy[is_noisy] == (labels[is_noisy] + 1) % 5))
      True

    References:
      Han, Yao, Yu, Niu, Xu, Hu, Tsang & Sugiyama, `Co-teaching: Robust training of deep neural
      networks with extremely noisy labels <https://arxiv.org/abs/1804.06872>`_, 2018.
    """
    _checks.int_at_least("num_classes", num_classes, 2)
    labels = _checks.labels("labels", labels, num_classes)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    rng = _rng(seed)
    return _flip_to_mapped(labels, _pair_mapping(num_classes), noise_rate, rng)


def asymmetric_cifar10_noise(
    labels: np.ndarray,
    noise_rate: float,
    *,
    seed: int | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 asymmetric noise: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.

    Each sample of a source class (9 truck, 2 bird, 4 deer, 3 cat, 5 dog) gets the mapped label
    with probability ``noise_rate``; the other five classes are never corrupted, so the realized
    noise rate over a balanced set is ``noise_rate / 2``. The map is
    :data:`CIFAR10_ASYMMETRIC_MAP`.

    .. note::
      This nominal transition matrix is the intended one. The official code of Bae et al.
      (``--class-dependent 1``) flips exactly ``ceil(noise_rate * n)`` samples per class and draws
      the dog flips from labels that already hold the cats moved to dog, so it realizes cat → dog
      with probability ``noise_rate * (1 - noise_rate)`` and an overall rate of
      ``noise_rate * (5 - noise_rate) / 10`` (PARITY.md, D7).

    Args:
      labels: 1-D integer array of clean CIFAR-10 labels in ``[0, 10)``.
      noise_rate: flip probability in ``[0, 1]`` of each source-class sample.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> labels = np.array([9, 2, 4, 3, 5, 0, 1, 6, 7, 8])
      >>> noisy, is_noisy = noise.asymmetric_cifar10_noise(labels, 1.0, seed=0)
      >>> noisy.tolist()
      [1, 0, 7, 5, 3, 0, 1, 6, 7, 8]
      >>> is_noisy.tolist()[:6]
      [True, True, True, True, True, False]

    References:
      Patrini, Rozza, Menon, Nock & Qu, `Making deep neural networks robust to label noise: a
      loss correction approach <https://arxiv.org/abs/1609.03683>`_, 2017.
    """
    labels = _checks.labels("labels", labels, 10)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    rng = _rng(seed)
    return _flip_to_mapped(labels, _cifar10_mapping(), noise_rate, rng)


def asymmetric_cifar100_noise(
    labels: np.ndarray,
    coarse_labels: np.ndarray,
    noise_rate: float,
    *,
    seed: int | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 asymmetric noise: each class flips to the next class of its superclass.

    With probability ``noise_rate`` a sample of class ``i`` gets the label
    ``next_class_in_superclass(coarse_of_fine)[i]``: within each superclass the classes are
    sorted by id and the last one wraps round to the first. The superclass of each class is
    read from the ``(labels, coarse_labels)`` pairs, not from contiguous blocks of ten ids
    (CIFAR-100's superclasses are not contiguous). A class absent from ``labels`` takes no part
    in the cycle of its superclass, so pass the whole training set, not a subset.

    Args:
      labels: 1-D integer array of clean CIFAR-100 (fine) labels in ``[0, 100)``.
      coarse_labels: integer array, same shape, the superclass (coarse label) of each sample;
        every class must appear with a single superclass.
      noise_rate: flip probability in ``[0, 1]``.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> labels = np.arange(100)
      >>> coarse = noise.CIFAR100_COARSE_OF_FINE[labels]
      >>> noisy, _ = noise.asymmetric_cifar100_noise(labels, coarse, 1.0, seed=0)
      >>> bool(np.all(coarse[noisy] == coarse))  # the superclass never changes
      True
      >>> [int(noisy[c]) for c in (4, 30, 55, 72, 95)]  # aquatic mammals, a cycle
      [30, 55, 72, 95, 4]

    References:
      Patrini, Rozza, Menon, Nock & Qu, `Making deep neural networks robust to label noise: a
      loss correction approach <https://arxiv.org/abs/1609.03683>`_, 2017.
    """
    labels = _checks.labels("labels", labels, 100)
    coarse_labels = _checks.labels("coarse_labels", coarse_labels, None)
    _checks.same_shape("coarse_labels", coarse_labels, "labels", labels)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    coarse_of_fine = np.full(100, -1, dtype=np.int64)
    coarse_of_fine[labels] = coarse_labels
    if np.any(coarse_of_fine[labels] != coarse_labels):
        raise ValueError(
            "coarse_labels must give every class a single superclass; classes "
            f"{np.unique(labels[coarse_of_fine[labels] != coarse_labels]).tolist()} appear with "
            "more than one."
        )
    rng = _rng(seed)
    return _flip_to_mapped(labels, next_class_in_superclass(coarse_of_fine), noise_rate, rng)


def next_class_in_superclass(coarse_of_fine: np.ndarray) -> np.ndarray:
    """Maps each class to the next class of the same superclass, cyclically.

    Within each superclass the member classes are sorted by id; each maps to the following one
    and the last to the first. A class whose superclass is ``-1`` (unknown) or that is alone in
    its superclass maps to itself.

    Args:
      coarse_of_fine: 1-D integer array, ``coarse_of_fine[i]`` the superclass of class ``i`` or
        ``-1``; e.g. :data:`CIFAR100_COARSE_OF_FINE`.

    Returns:
      An int64 array ``next`` of the same length, ``next[i]`` the class that ``i`` flips to.

    Examples:
      >>> from resetax import noise
      >>> noise.next_class_in_superclass([1, 0, 1, 0, 1, 2]).tolist()
      [2, 3, 4, 1, 0, 5]
    """
    coarse_of_fine = np.asarray(coarse_of_fine)
    if (
        coarse_of_fine.ndim != 1
        or not np.issubdtype(coarse_of_fine.dtype, np.integer)
        or np.any(coarse_of_fine < -1)
    ):
        raise ValueError(
            "coarse_of_fine must be a 1-D integer array of superclass ids >= 0 (or -1 for an "
            f"unknown superclass); got dtype {coarse_of_fine.dtype}, shape {coarse_of_fine.shape}."
        )
    mapping = np.arange(coarse_of_fine.size, dtype=np.int64)
    for coarse in np.unique(coarse_of_fine[coarse_of_fine >= 0]):
        members = np.flatnonzero(coarse_of_fine == coarse)
        mapping[members] = np.roll(members, -1)
    return mapping


def instance_dependent_noise(
    labels: np.ndarray,
    inputs: np.ndarray,
    noise_rate: float,
    num_classes: int,
    *,
    seed: int | np.random.Generator,
    flip_rate_std: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Instance-dependent label noise generated from the inputs (Xia et al., 2020).

    1. Each sample draws its own flip rate :math:`\rho_n` from the normal distribution
       :math:`\mathcal N(\text{noise\_rate}, \text{flip\_rate\_std}^2)` truncated to ``[0, 1]``.
    2. Each class :math:`c` draws a random projection :math:`W_c \in \mathbb R^{d \times C}`
       with standard normal entries.
    3. For a sample with flattened input :math:`x_n` and label :math:`y_n`, the scores
       :math:`x_n^\top W_{y_n}` with the true class masked out give, through a softmax, the
       distribution of the wrong label; the label flips to a draw from it with probability
       :math:`\rho_n`.

    .. note::
      The realized noise rate is the mean of the truncated normal: ``noise_rate`` when it is a
      few ``flip_rate_std`` away from 0 and 1, more near 0 (``noise_rate=0`` still flips about
      8% of the labels with the default std) and less near 1. ``flip_rate_std=0`` gives every
      sample the flip rate ``noise_rate``. The scale of ``inputs`` sets how peaked the
      distribution of wrong labels is; Xia et al. use normalized images.

    Args:
      labels: 1-D integer array of clean labels in ``[0, num_classes)``.
      inputs: real array of shape ``(len(labels), ...)``; each row is flattened.
      noise_rate: mean flip rate in ``[0, 1]``.
      num_classes: number of classes ``C >= 2``.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).
      flip_rate_std: standard deviation (before truncation) of the per-sample flip rate, >= 0.

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> inputs = np.random.default_rng(0).normal(size=(1000, 8))
      >>> labels = np.arange(1000) % 4
      >>> noisy, _ = noise.instance_dependent_noise(labels, inputs, 0.3, 4, seed=0)
      >>> round(noise.realized_noise_rate(noisy, labels), 1)
      0.3

    References:
      Xia, Liu, Han, Wang, Gong, Liu, Niu, Tao & Sugiyama, `Part-dependent label noise: towards
      instance-dependent label noise <https://arxiv.org/abs/2006.07836>`_, 2020.
    """
    _checks.int_at_least("num_classes", num_classes, 2)
    labels = _checks.labels("labels", labels, num_classes)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    _checks.finite_nonnegative("flip_rate_std", flip_rate_std, scalar=True)
    inputs = np.asarray(inputs)
    if inputs.ndim < 1 or inputs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"inputs must have one row per label, shape ({labels.shape[0]}, ...); got shape "
            f"{inputs.shape}."
        )
    if not _checks.is_real_dtype(inputs.dtype):
        raise ValueError(f"inputs must be a real (float or int) array; got dtype {inputs.dtype}.")
    inputs = inputs.reshape(labels.shape[0], -1)
    if not np.all(np.isfinite(inputs)):
        raise ValueError("inputs must be finite; got NaN or infinite values.")
    rng = _rng(seed)

    flip_rates = rng.normal(noise_rate, flip_rate_std, labels.shape)
    outside = (flip_rates < 0) | (flip_rates > 1)
    # Rejection sampling of the truncated normal: at least half of each redraw lands in [0, 1].
    while np.any(outside):
        flip_rates[outside] = rng.normal(noise_rate, flip_rate_std, np.count_nonzero(outside))
        outside = (flip_rates < 0) | (flip_rates > 1)

    # One class at a time keeps memory at d x C, not (C, d, C) or (n, d, C).
    scores = np.empty((labels.shape[0], num_classes))
    for c in range(num_classes):
        projection = rng.standard_normal((inputs.shape[1], num_classes))
        members = labels == c
        scores[members] = inputs[members].astype(np.float64) @ projection
    scores[np.arange(labels.shape[0]), labels] = -np.inf
    wrong_probs = np.exp(scores - scores.max(axis=1, keepdims=True))

    flip = rng.random(labels.shape) < flip_rates
    wrong = _sample_rows(wrong_probs, rng.random(labels.shape))
    noisy = np.where(flip, wrong, labels).astype(labels.dtype)
    return noisy, noisy != labels


def transition_matrix_noise(
    labels: np.ndarray,
    transition_matrix: np.ndarray,
    *,
    seed: int | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Label noise from a class-conditional transition matrix.

    Each label ``i`` is replaced by a draw from row ``i`` of the matrix,
    ``P(noisy = j | true = i) = transition_matrix[i, j]``.

    Args:
      labels: 1-D integer array of clean labels in ``[0, C)``.
      transition_matrix: ``C x C`` row-stochastic matrix: non-negative, finite, rows summing to
        1 (within 1e-6), ``C >= 2``.
      seed: non-negative int or ``np.random.Generator`` (a generator is advanced).

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> matrix = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
      >>> noisy, is_noisy = noise.transition_matrix_noise(np.array([0, 1, 1]), matrix, seed=0)
      >>> noisy.tolist(), is_noisy.tolist()
      ([1, 1, 1], [True, False, False])
    """
    matrix = _checks.transition_matrix("transition_matrix", transition_matrix)
    labels = _checks.labels("labels", labels, matrix.shape[0])
    rng = _rng(seed)
    noisy = _sample_rows(matrix[labels], rng.random(labels.shape)).astype(labels.dtype)
    return noisy, noisy != labels


def transition_matrix(
    kind: str,
    num_classes: int,
    noise_rate: float,
    *,
    include_true_class: bool = False,
    coarse_of_fine: np.ndarray | None = None,
) -> np.ndarray:
    """The transition matrix ``T[i, j] = P(noisy = j | true = i)`` of a structured noise model.

    Args:
      kind: one of :data:`TRANSITION_MATRIX_KINDS`: ``"symmetric"``, ``"pair"``,
        ``"asymmetric_cifar10"`` (needs ``num_classes=10``) or ``"asymmetric_cifar100"`` (needs
        ``num_classes=100`` and ``coarse_of_fine``).
      num_classes: number of classes ``C >= 2``.
      noise_rate: the model's noise rate in ``[0, 1]``, as in the sampling functions.
      include_true_class: for ``"symmetric"`` only, the convention of :func:`symmetric_noise`.
      coarse_of_fine: for ``"asymmetric_cifar100"`` only, the superclass of each class, e.g.
        :data:`CIFAR100_COARSE_OF_FINE`.

    Returns:
      A float64 ``C x C`` row-stochastic matrix.

    Examples:
      >>> from resetax import noise
      >>> noise.transition_matrix("symmetric", 3, 0.5)
      array([[0.5 , 0.25, 0.25],
             [0.25, 0.5 , 0.25],
             [0.25, 0.25, 0.5 ]])
      >>> noise.transition_matrix("pair", 3, 0.5)
      array([[0.5, 0.5, 0. ],
             [0. , 0.5, 0.5],
             [0.5, 0. , 0.5]])
    """
    _checks.one_of("kind", kind, TRANSITION_MATRIX_KINDS)
    _checks.int_at_least("num_classes", num_classes, 2)
    _checks.in_range("noise_rate", noise_rate, 0, 1)
    _checks.boolean("include_true_class", include_true_class)
    if include_true_class and kind != "symmetric":
        raise ValueError("include_true_class applies to kind='symmetric' only.")
    if (coarse_of_fine is not None) != (kind == "asymmetric_cifar100"):
        raise ValueError("coarse_of_fine is needed by, and only by, kind='asymmetric_cifar100'.")
    if kind.startswith("asymmetric_cifar"):
        expected = 10 if kind == "asymmetric_cifar10" else 100
        if num_classes != expected:
            raise ValueError(
                f"num_classes must be {expected} for kind={kind!r}; got {num_classes!r}."
            )

    if kind == "symmetric":
        if include_true_class:
            off_diagonal = noise_rate / num_classes
            return np.full((num_classes, num_classes), off_diagonal) + np.diag(
                np.full(num_classes, 1.0 - noise_rate)
            )
        matrix = np.full((num_classes, num_classes), noise_rate / (num_classes - 1))
        np.fill_diagonal(matrix, 1.0 - noise_rate)
        return matrix
    if kind == "pair":
        mapping = _pair_mapping(num_classes)
    elif kind == "asymmetric_cifar10":
        mapping = _cifar10_mapping()
    else:
        coarse_of_fine = np.asarray(coarse_of_fine)
        if coarse_of_fine.shape != (num_classes,):
            raise ValueError(
                f"coarse_of_fine must have one entry per class, shape ({num_classes},); got "
                f"shape {coarse_of_fine.shape}."
            )
        mapping = next_class_in_superclass(coarse_of_fine)
    classes = np.arange(num_classes)
    flips = mapping != classes
    matrix = np.zeros((num_classes, num_classes))
    matrix[classes, classes] = np.where(flips, 1.0 - noise_rate, 1.0)
    matrix[classes[flips], mapping[flips]] = noise_rate
    return matrix


def apply_noise(
    kind: str,
    labels: np.ndarray,
    noise_rate: float | None,
    num_classes: int,
    *,
    seed: int | np.random.Generator,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Applies the noise model named ``kind``: one entry point for configs and command lines.

    ========================  ============================================  =====================
    ``kind``                  function                                      keyword arguments
    ========================  ============================================  =====================
    ``symmetric``             :func:`symmetric_noise`                       ``include_true_class``
    ``pair``                  :func:`pair_noise`
    ``asymmetric_cifar10``    :func:`asymmetric_cifar10_noise` (C = 10)
    ``asymmetric_cifar100``   :func:`asymmetric_cifar100_noise` (C = 100)   ``coarse_labels``
    ``instance_dependent``    :func:`instance_dependent_noise`              ``inputs``,
                                                                            ``flip_rate_std``
    ``transition_matrix``     :func:`transition_matrix_noise`               ``transition_matrix``
    ========================  ============================================  =====================

    ``coarse_labels``, ``inputs`` and ``transition_matrix`` are required by their kind. For
    ``"transition_matrix"`` the matrix sets the noise, and ``noise_rate`` must be ``None``.

    Args:
      kind: one of :data:`NOISE_KINDS`.
      labels: 1-D integer array of clean labels in ``[0, num_classes)``.
      noise_rate: the model's noise rate in ``[0, 1]`` (``None`` for ``"transition_matrix"``).
      num_classes: number of classes; must match the kind's own where it has one.
      seed: non-negative int or ``np.random.Generator``.
      **kwargs: the keyword arguments of the kind (table above); others raise ``ValueError``.

    Returns:
      ``(noisy_labels, is_noisy)`` as in :func:`symmetric_noise`.

    Examples:
      >>> import numpy as np
      >>> from resetax import noise
      >>> labels = np.arange(10).repeat(10)
      >>> noisy, _ = noise.apply_noise("pair", labels, 0.2, 10, seed=3)
      >>> same, _ = noise.pair_noise(labels, 0.2, 10, seed=3)
      >>> bool(np.array_equal(noisy, same))
      True
    """
    _checks.one_of("kind", kind, NOISE_KINDS)
    required, optional = _KIND_KWARGS[kind]
    missing = [name for name in required if name not in kwargs]
    unexpected = sorted(set(kwargs) - set(required) - set(optional))
    if missing or unexpected:
        accepted = ", ".join(required + optional) or "none"
        raise ValueError(
            f"kind={kind!r} takes keyword arguments ({accepted}), of which "
            f"{', '.join(required) or 'none'} required; missing {missing}, unexpected "
            f"{unexpected}."
        )
    _checks.int_at_least("num_classes", num_classes, 2)
    if kind == "transition_matrix":
        if noise_rate is not None:
            raise ValueError(
                "noise_rate must be None for kind='transition_matrix' (the matrix sets the "
                f"noise); got {noise_rate!r}."
            )
        matrix = _checks.transition_matrix("transition_matrix", kwargs["transition_matrix"])
        if matrix.shape[0] != num_classes:
            raise ValueError(
                f"num_classes must match transition_matrix, {matrix.shape[0]}; got {num_classes}."
            )
        return transition_matrix_noise(labels, matrix, seed=seed)
    if kind == "symmetric":
        return symmetric_noise(labels, noise_rate, num_classes, seed=seed, **kwargs)
    if kind == "pair":
        return pair_noise(labels, noise_rate, num_classes, seed=seed)
    if kind == "instance_dependent":
        inputs = kwargs.pop("inputs")
        return instance_dependent_noise(
            labels, inputs, noise_rate, num_classes, seed=seed, **kwargs
        )
    expected = 10 if kind == "asymmetric_cifar10" else 100
    if num_classes != expected:
        raise ValueError(f"num_classes must be {expected} for kind={kind!r}; got {num_classes!r}.")
    if kind == "asymmetric_cifar10":
        return asymmetric_cifar10_noise(labels, noise_rate, seed=seed)
    return asymmetric_cifar100_noise(labels, kwargs["coarse_labels"], noise_rate, seed=seed)


def realized_noise_rate(noisy_labels: np.ndarray, clean_labels: np.ndarray) -> float:
    """The fraction of samples whose noisy label differs from the clean one.

    Args:
      noisy_labels: 1-D integer array.
      clean_labels: 1-D integer array of the same, non-zero, length.

    Returns:
      The realized noise rate, a Python float in ``[0, 1]``.

    Examples:
      >>> from resetax import noise
      >>> noise.realized_noise_rate([0, 1, 2, 2], [0, 1, 2, 3])
      0.25
    """
    noisy_labels = _checks.labels("noisy_labels", noisy_labels, None)
    clean_labels = _checks.labels("clean_labels", clean_labels, None)
    _checks.same_shape("noisy_labels", noisy_labels, "clean_labels", clean_labels)
    if clean_labels.size == 0:
        raise ValueError("clean_labels must not be empty.")
    return float(np.mean(noisy_labels != clean_labels))


def empirical_transition_matrix(
    noisy_labels: np.ndarray, clean_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """The transition matrix measured on a dataset: ``T[i, j] = #(i -> j) / #(true = i)``.

    Args:
      noisy_labels: 1-D integer array of labels in ``[0, num_classes)``.
      clean_labels: 1-D integer array, same shape, labels in ``[0, num_classes)``.
      num_classes: number of classes ``C >= 2``.

    Returns:
      A float64 ``C x C`` matrix whose rows sum to 1, except that the row of a class absent
      from ``clean_labels`` is all NaN (no data, as opposed to a measured zero).

    Examples:
      >>> from resetax import noise
      >>> noise.empirical_transition_matrix([0, 1, 1, 1], [0, 0, 1, 1], 3)
      array([[0.5, 0.5, 0. ],
             [0. , 1. , 0. ],
             [nan, nan, nan]])
    """
    _checks.int_at_least("num_classes", num_classes, 2)
    noisy_labels = _checks.labels("noisy_labels", noisy_labels, num_classes)
    clean_labels = _checks.labels("clean_labels", clean_labels, num_classes)
    _checks.same_shape("noisy_labels", noisy_labels, "clean_labels", clean_labels)
    counts = np.bincount(
        clean_labels.astype(np.int64) * num_classes + noisy_labels,
        minlength=num_classes * num_classes,
    ).reshape(num_classes, num_classes)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return counts / totals


_KIND_KWARGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "symmetric": ((), ("include_true_class",)),
    "pair": ((), ()),
    "asymmetric_cifar10": ((), ()),
    "asymmetric_cifar100": (("coarse_labels",), ()),
    "instance_dependent": (("inputs",), ("flip_rate_std",)),
    "transition_matrix": (("transition_matrix",), ()),
}


def _flip_to_mapped(
    labels: np.ndarray, mapping: np.ndarray, noise_rate: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    flip = rng.random(labels.shape) < noise_rate
    noisy = np.where(flip, mapping[labels], labels).astype(labels.dtype)
    return noisy, noisy != labels


def _pair_mapping(num_classes: int) -> np.ndarray:
    return (np.arange(num_classes) + 1) % num_classes


def _cifar10_mapping() -> np.ndarray:
    mapping = np.arange(10)
    mapping[list(CIFAR10_ASYMMETRIC_MAP)] = list(CIFAR10_ASYMMETRIC_MAP.values())
    return mapping


def _sample_rows(weights: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one column per row, with probabilities proportional to ``weights``."""
    cdf = np.cumsum(weights, axis=1)
    # Scaling the uniform by the row total, not comparing with 1, keeps rounding in the last
    # entries from ever selecting a class of zero weight.
    targets = uniforms * cdf[:, -1]
    return np.sum(cdf <= targets[:, None], axis=1)


def _rng(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        return np.random.default_rng(seed)
    raise ValueError(f"seed must be an int >= 0 or a np.random.Generator, got {seed!r}.")
