"""Dataset sources: CIFAR and CIFAR-N through TFDS data sources, MNIST-1D and digits offline.

TensorFlow Datasets is imported only by the CIFAR loaders, and reads ArrayRecord files through
``tfds.data_source``, which needs no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import importlib.metadata
import json
import os
import random
import re
from collections.abc import Mapping

import numpy as np

from resetax import _checks, _files
from resetax.data.dataset import Dataset, subset_per_class

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
    num_classes: int
    # label_variant -> TFDS feature holding that variant's label on the train split.
    label_features: Mapping[str, str]
    coarse_feature: str | None = None
    manual_download: bool = False


_TFDS_SPECS = {
    "cifar10": _TfdsSpec(10, {"clean": "label"}),
    "cifar100": _TfdsSpec(100, {"clean": "label"}, coarse_feature="coarse_label"),
    "cifar10_n": _TfdsSpec(
        10,
        {
            "aggre": "aggre_label",
            "worse": "worse_label",
            "random1": "random_label1",
            "random2": "random_label2",
            "random3": "random_label3",
            "clean": "label",
        },
        manual_download=True,
    ),
    "cifar100_n": _TfdsSpec(
        100,
        {"noisy": "noise_label", "clean": "label"},
        coarse_feature="coarse_label",
        manual_download=True,
    ),
}

DATASETS = (*_TFDS_SPECS, "mnist1d", "digits")
"""Names accepted by :func:`load`."""

LABEL_VARIANTS = {
    **{name: tuple(spec.label_features) for name, spec in _TFDS_SPECS.items()},
    "mnist1d": ("clean",),
    "digits": ("clean",),
}
"""For each dataset, the accepted ``label_variant`` values; the first is the default."""

_CLEAN_FEATURE = "label"
_ID_FEATURE = "id"
_READ_CHUNK = 4096
_DIGITS_TEST_FRACTION = 0.2
_MNIST1D_ARRAYS = ("x", "y", "x_test", "y_test")


def load(
    name: str,
    *,
    split: str = "train",
    label_variant: str | None = None,
    data_dir: str | os.PathLike | None = None,
    samples_per_class: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Loads one split of a dataset into host memory.

    Args:
      name: one of :data:`DATASETS`. ``"cifar10"``/``"cifar100"``/``"cifar10_n"``/
        ``"cifar100_n"`` read a prepared TFDS ArrayRecord dataset (no download happens here);
        ``"mnist1d"`` is generated locally; ``"digits"`` is scikit-learn's bundled 8×8 digits.
      split: ``"train"`` or ``"test"``. The test split is always clean.
      label_variant: which labels become ``labels`` (see :data:`LABEL_VARIANTS`): for
        ``cifar10_n`` the human label sets ``"aggre"`` (default), ``"worse"``, ``"random1"``,
        ``"random2"``, ``"random3"``; for ``cifar100_n`` ``"noisy"`` (default); ``"clean"``
        everywhere. ``None`` picks the default. CIFAR-N has human labels on its train split
        only, so its test split has the clean labels whatever the variant.
      data_dir: the TFDS data directory (default: ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``), or for ``"mnist1d"`` the cache directory of the generated
        arrays (default: ``$XDG_CACHE_HOME/resetax`` or ``~/.cache/resetax``). Unused by
        ``"digits"``.
      samples_per_class: if given, keep this many random examples per class (see
        :func:`subset_per_class`).
      seed: seed of the per-class subset.

    Returns:
      A :class:`Dataset`: images as ``uint8 [N, 32, 32, 3]`` for CIFAR, ``float32 [N, 40]``
      for MNIST-1D, ``float32 [N, 8, 8, 1]`` in [0, 1] for digits; labels ``int32``.

    Raises:
      ValueError: for an unknown ``name``, ``split`` or ``label_variant``, or a bad
        ``samples_per_class``, before anything is read.
      FileNotFoundError: if a TFDS dataset is not prepared in ``data_dir`` as ArrayRecord; the
        message gives the command that prepares it.

    Examples:
      >>> from resetax import data
      >>> ds = data.load("digits", split="test", samples_per_class=3)
      >>> ds.inputs.shape, ds.inputs.dtype, ds.num_classes
      ((30, 8, 8, 1), dtype('float32'), 10)
    """
    _checks.one_of("name", name, DATASETS)
    _checks.one_of("split", split, SPLITS)
    variants = LABEL_VARIANTS[name]
    if label_variant is None:
        label_variant = variants[0]
    _checks.one_of(f"label_variant of {name!r}", label_variant, variants)
    if samples_per_class is not None:
        _checks.positive_int("samples_per_class", samples_per_class)

    if name in _TFDS_SPECS:
        dataset = _load_tfds(name, split, label_variant, data_dir)
    elif name == "mnist1d":
        dataset = load_mnist1d(split=split, cache_dir=data_dir)
    else:
        dataset = load_digits(split=split)
    if samples_per_class is not None:
        dataset = subset_per_class(dataset, samples_per_class, seed=seed)
    return dataset


def prepare_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Returns the shell command that prepares a TFDS dataset for :func:`load`.

    ``tfds.data_source`` reads only random-access formats, so the dataset is written as
    ArrayRecord. Preparing (unlike reading) needs TensorFlow, which encodes the images, and
    ``importlib_resources``, which TFDS imports without declaring it on Python >= 3.9; CIFAR-N
    also needs its human label files downloaded by hand into ``<data_dir>/downloads/manual``.

    Args:
      name: a TFDS dataset of :data:`DATASETS` (``"cifar10"``, ``"cifar100"``, ``"cifar10_n"``,
        ``"cifar100_n"``).
      data_dir: the TFDS data directory; ``None`` for TFDS's default.

    Returns:
      A ``python -c`` command line.

    Examples:
      >>> from resetax import data
      >>> print(data.prepare_command("cifar10", "/data/tfds"))
      python -c "import tensorflow_datasets as tfds; tfds.builder('cifar10', data_dir='/data/tfds', file_format='array_record').download_and_prepare()"
    """  # noqa: E501
    _checks.one_of("name", name, _TFDS_SPECS)
    dir_arg = "" if data_dir is None else f", data_dir={os.fspath(data_dir)!r}"
    return (
        'python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder({name!r}{dir_arg}, file_format='array_record').download_and_prepare()\""
    )


def load_mnist1d(
    *,
    split: str = "train",
    num_samples: int = 5000,
    seed: int = 42,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> Dataset:
    """Generates MNIST-1D locally with the ``mnist1d`` package; nothing is downloaded.

    The arrays come from ``mnist1d.data.make_dataset`` with the package's default arguments
    (40-point signals, 80 % train) except ``num_samples`` and ``seed``, so the defaults give
    the standard 4000/1000 dataset. Generation is deterministic in ``seed``; the global
    ``random``/``np.random`` states that ``mnist1d`` seeds are restored afterwards. With
    ``cache=True`` the arrays are kept in ``cache_dir`` under a name that hashes the arguments;
    a cached file that cannot be read (cut short, overwritten) is named in a one-line warning on
    stderr and generated again.

    Args:
      split: ``"train"`` or ``"test"``.
      num_samples: examples in both splits together.
      seed: generation seed.
      cache_dir: where to cache (default ``$XDG_CACHE_HOME/resetax`` or ``~/.cache/resetax``).
      cache: whether to read and write the cache.

    Returns:
      A :class:`Dataset` with ``float32 [N, 40]`` inputs and 10 classes.

    Examples:
      >>> from resetax import data
      >>> ds = data.load_mnist1d(split="test", num_samples=200, cache=False)
      >>> ds.inputs.shape, ds.num_classes
      ((40, 40), 10)

    References:
      Greydanus, `Scaling down deep learning with MNIST-1D
      <https://arxiv.org/abs/2011.14439>`_, 2020.
    """
    _checks.one_of("split", split, SPLITS)
    _checks.positive_int("num_samples", num_samples)
    # The package's defaults, hence the arrays, are fixed by its version: the cache key needs no
    # import of mnist1d (which imports scipy and matplotlib, seconds at every start).
    version = importlib.metadata.version("mnist1d")
    key = hashlib.sha256(json.dumps({"mnist1d": version, "num_samples": num_samples,
                                     "seed": seed}, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(_cache_dir(cache_dir), f"mnist1d-{key}.npz")
    arrays = None
    if cache and os.path.exists(path):
        try:
            arrays = _files.read_npz(path, _MNIST1D_ARRAYS, fix="generating it again")
        except _files.DamagedFile as err:  # cut short, or not ours: resetax made it, and remakes
            _files.warn(f"the MNIST-1D cache {err}")
    if arrays is None:
        arrays = _generate_mnist1d(num_samples, seed)
        if cache:
            _save_atomically(path, arrays)
    suffix = "" if split == "train" else "_test"
    inputs = arrays["x" + suffix].astype(np.float32)
    labels = arrays["y" + suffix].astype(np.int32)
    return Dataset(
        inputs=inputs,
        labels=labels,
        clean_labels=labels.copy(),
        indices=np.arange(len(labels), dtype=np.int64),
        num_classes=10,
        name=f"mnist1d:{split}",
    )


def load_digits(*, split: str = "train") -> Dataset:
    """Loads scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes).

    The train/test split (80/20) is a fixed random permutation, the same on every machine.

    Args:
      split: ``"train"`` (1438 images) or ``"test"`` (359 images).

    Returns:
      A :class:`Dataset` with ``float32 [N, 8, 8, 1]`` inputs scaled to [0, 1].

    Examples:
      >>> from resetax import data
      >>> data.load_digits(split="train").inputs.shape
      (1438, 8, 8, 1)
    """
    _checks.one_of("split", split, SPLITS)
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    n = len(bunch.target)
    permutation = np.random.default_rng(0).permutation(n)
    num_test = round(_DIGITS_TEST_FRACTION * n)
    positions = np.sort(permutation[num_test:] if split == "train" else permutation[:num_test])
    # Pixel values are counts 0..16 of a 4x4 block of the original 32x32 bitmap.
    inputs = (bunch.images[positions] / 16.0).astype(np.float32)[..., None]
    labels = bunch.target[positions].astype(np.int32)
    return Dataset(
        inputs=inputs,
        labels=labels,
        clean_labels=labels.copy(),
        indices=positions.astype(np.int64),
        num_classes=10,
        name=f"digits:{split}",
    )


def _load_tfds(name: str, split: str, label_variant: str, data_dir) -> Dataset:
    import tensorflow_datasets as tfds

    spec = _TFDS_SPECS[name]
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:
        damaged = _damaged_metadata(name, data_dir, err)
        if damaged is None:
            raise
        raise damaged from None
    # Checked from the metadata alone so that a missing dataset fails before any reading.
    if not builder.is_prepared():
        raise FileNotFoundError(_not_prepared_message(name, builder.data_dir_root, spec))
    formats = builder.info.available_file_formats()
    if not formats & tfds.core.FileFormat.with_random_access():
        raise FileNotFoundError(
            f"{name} is prepared in {builder.data_dir} as {sorted(f.value for f in formats)},"
            " but tfds.data_source needs the array_record format. Prepare it again in another"
            f" data_dir with:\n  {prepare_command(name, builder.data_dir_root)}"
        )
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)

    # CIFAR-N's human labels exist on the train split only (the test split stores -1).
    label_feature = spec.label_features[label_variant] if split == "train" else _CLEAN_FEATURE
    features = {"image", _CLEAN_FEATURE, label_feature, _ID_FEATURE}
    if spec.coarse_feature:
        features.add(spec.coarse_feature)
    columns = _read_columns(source, sorted(features))
    # TFDS stores the records shuffled; the id gives each one's position in the original files.
    positions = _positions_from_ids(columns.pop(_ID_FEATURE), split, name)
    order = np.argsort(positions, kind="stable")
    columns = {key: value[order] for key, value in columns.items()}

    clean_labels = columns[_CLEAN_FEATURE].astype(np.int32)
    variant = f"/{label_variant}" if len(spec.label_features) > 1 else ""
    return Dataset(
        inputs=columns["image"].astype(np.uint8, copy=False),
        labels=columns[label_feature].astype(np.int32),
        clean_labels=clean_labels,
        indices=positions[order],
        num_classes=spec.num_classes,
        coarse_labels=(
            columns[spec.coarse_feature].astype(np.int32) if spec.coarse_feature else None
        ),
        name=f"{name}{variant}:{split}",
    )


def _damaged_metadata(name: str, data_dir, err: Exception) -> _files.DamagedFile | None:
    """The one-line error naming a prepared dataset's ``dataset_info.json`` that TFDS could not
    parse (``err``, a protobuf ``ParseError``), or None if ``err`` is another error."""
    from google.protobuf import json_format

    if not isinstance(err, json_format.ParseError):
        return None
    root = os.path.expanduser(os.fspath(data_dir) if data_dir is not None else (
        os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"))
    infos = sorted(glob.glob(os.path.join(glob.escape(root), name, "*", "dataset_info.json")))
    path = infos[-1] if infos else os.path.join(root, name)
    reason = re.sub(r'^Failed to construct dataset "[^"]*", builder_kwargs "[^"]*": ', "",
                    str(err).strip().splitlines()[0] if str(err).strip() else "")
    return _files.damaged(
        path, f"(the metadata of TFDS dataset {name!r}) cannot be parsed ({reason.rstrip('.')})",
        f"remove {os.path.dirname(path)!r} and prepare it again: {prepare_command(name, root)}")


def _positions_from_ids(ids: np.ndarray, split: str, name: str) -> np.ndarray:
    """``int64`` positions in the original files from TFDS's ids, ``"train_00042"`` -> 42."""
    prefix = f"{split}_"
    positions = np.empty(len(ids), np.int64)
    for i, raw in enumerate(ids):
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        digits = text[len(prefix):]
        if not (text.startswith(prefix) and digits.isdigit()):
            raise ValueError(f"TFDS dataset {name!r} has an id {text!r} on its {split} split; "
                             f"expected {prefix}<position>, as TFDS's CIFAR builders write it.")
        positions[i] = int(digits)
    return positions


def _read_columns(source, keys: list[str]) -> dict[str, np.ndarray]:
    """Reads whole features of a data source into preallocated arrays, a chunk per call."""
    n = len(source)
    columns: dict[str, np.ndarray] = {}
    for start in range(0, n, _READ_CHUNK):
        # __getitems__ fetches a chunk of records in one call (ArrayRecord reads them in
        # parallel); decoding each record is TFDS's own per-example step.
        examples = source.__getitems__(list(range(start, min(n, start + _READ_CHUNK))))
        for key in keys:
            values = np.stack([example[key] for example in examples])
            if key not in columns:
                columns[key] = np.empty((n, *values.shape[1:]), values.dtype)
            columns[key][start : start + len(values)] = values
    return columns


def _not_prepared_message(name: str, data_dir_root, spec: _TfdsSpec) -> str:
    message = (
        f"TFDS dataset {name!r} is not prepared in {data_dir_root}. Prepare it once in the"
        " array_record format that tfds.data_source reads (unlike reading, preparing needs"
        " TensorFlow: pip install tensorflow):\n"
        f"  {prepare_command(name, data_dir_root)}\n"
        f"or: tfds build {name} --data_dir={data_dir_root} --file_format=array_record"
    )
    if spec.manual_download:
        message += (
            f"\n{name} needs a manual download first: put the human-label files described by"
            f" tfds.builder({name!r}).MANUAL_DOWNLOAD_INSTRUCTIONS"
            " (from https://github.com/UCSC-REAL/cifar-10-100n) into"
            f" {os.path.join(os.fspath(data_dir_root), 'downloads', 'manual')}."
        )
    return message


def _generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    import mnist1d.data
    from mnist1d.utils import ObjectView

    args = mnist1d.data.get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    # make_dataset seeds the global `random` and `np.random` generators; callers' streams must
    # not change because a dataset was built.
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        generated = mnist1d.data.make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002
    return {k: np.asarray(generated[k]) for k in _MNIST1D_ARRAYS}


def _cache_dir(cache_dir) -> str:
    if cache_dir is not None:
        return os.fspath(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "resetax")


def _save_atomically(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    # Concurrent test workers may generate the same file; each writes its own temporary file
    # and the rename makes the last complete one win.
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)
