"""Tests of resetax.data: sources (TFDS mocked, offline ones), splits, batching, augmentation."""

import dataclasses
import io
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tfds_mock import REAL_SPLITS, TFDS_NAMES, FakeSource, mock_cifar, write_metadata

from resetax import _files, data
from resetax.data import sources

# The split names and label features below are read off the TFDS builder sources
# (tensorflow_datasets/image_classification/{cifar.py, cifar10_n/, cifar100_n/}).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_MOCK_EXAMPLES = 12
CIFAR10_N_FEATURES = {
    "aggre": "aggre_label",
    "worse": "worse_label",
    "random1": "random_label1",
    "random2": "random_label2",
    "random3": "random_label3",
    "clean": "label",
}


# --------------------------------------------------------------------------------------------
# TFDS sources under tfds.testing.mock_data


@pytest.fixture
def mock_tfds(tmp_path):
    """Mocks TFDS with real metadata (split names) for every CIFAR source; yields the sources."""
    with mock_cifar(tmp_path / "metadata", NUM_MOCK_EXAMPLES) as opened:
        yield opened


def _expected(source, feature):
    """The feature of every example, in the original order (the order of the ids)."""
    stored = np.stack([source.generator[i][feature] for i in range(NUM_MOCK_EXAMPLES)])
    return stored[np.argsort(source.order)]


@pytest.mark.parametrize("name", TFDS_NAMES)
@pytest.mark.parametrize("split", REAL_SPLITS)
def test_tfds_source_reads_images_and_labels(mock_tfds, name, split, monkeypatch):
    monkeypatch.setattr(sources, "_READ_CHUNK", 5)
    ds = data.load(name, split=split, data_dir="/nonexistent/ignored/by/mock")
    source = mock_tfds[(name, split)]
    assert source.num_chunk_reads == 3  # 12 examples in chunks of 5.
    # Stored shuffled, loaded in the original order (that of the ids).
    assert not np.array_equal(source.order, np.arange(NUM_MOCK_EXAMPLES))
    assert ds.inputs.shape == (NUM_MOCK_EXAMPLES, 32, 32, 3)
    assert ds.inputs.dtype == np.uint8
    np.testing.assert_array_equal(ds.inputs, _expected(source, "image"))
    np.testing.assert_array_equal(ds.clean_labels, _expected(source, "label"))
    assert ds.labels.dtype == ds.clean_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.indices, np.arange(NUM_MOCK_EXAMPLES))
    assert ds.num_classes == (10 if name.startswith("cifar10") and "100" not in name else 100)
    if "100" in name:
        np.testing.assert_array_equal(ds.coarse_labels, _expected(source, "coarse_label"))
    else:
        assert ds.coarse_labels is None
    if split == "test" or name in ("cifar10", "cifar100"):
        np.testing.assert_array_equal(ds.labels, ds.clean_labels)


def test_tfds_ids_of_another_form_are_refused(mock_tfds, monkeypatch):
    monkeypatch.setattr(FakeSource, "__getitems__", lambda self, indices: [
        dict(self.generator[i], id=b"record%d" % i) for i in indices])
    with pytest.raises(ValueError, match="expected train_<position>"):
        data.load("cifar10")


def test_subset_first_keeps_each_class_first_in_source_order():
    # Classes 0, 1, 2 at positions given by `indices`; rows stored out of order.
    indices = np.array([5, 0, 3, 1, 4, 2, 7, 6, 8])
    labels = np.array([0, 1, 0, 0, 2, 1, 2, 1, 2], np.int32)
    ds = data.Dataset(np.zeros((9, 1)), labels, labels, indices, num_classes=3)
    first = data.subset_per_class(ds, 2, how="first")
    # Class 0 at positions 1, 3, 5; class 1 at 0, 2, 6; class 2 at 4, 7, 8.
    assert sorted(first.indices.tolist()) == [0, 1, 2, 3, 4, 7]
    assert data.subset_per_class(ds, 2, how="first", seed=3).indices.tolist() == (
        first.indices.tolist())  # no randomness
    with pytest.raises(ValueError, match="how must be one of"):
        data.subset_per_class(ds, 2, how="last")


@pytest.mark.parametrize("variant, feature", CIFAR10_N_FEATURES.items())
def test_cifar10_n_label_variant_picks_its_feature(mock_tfds, variant, feature):
    ds = data.load("cifar10_n", split="train", label_variant=variant)
    source = mock_tfds[("cifar10_n", "train")]
    np.testing.assert_array_equal(ds.labels, _expected(source, feature))
    np.testing.assert_array_equal(ds.clean_labels, _expected(source, "label"))
    assert ds.name == f"cifar10_n/{variant}:train"


def test_cifar_n_defaults_to_noisy_labels(mock_tfds):
    ds10 = data.load("cifar10_n")
    np.testing.assert_array_equal(
        ds10.labels, _expected(mock_tfds[("cifar10_n", "train")], "aggre_label")
    )
    ds100 = data.load("cifar100_n")
    source = mock_tfds[("cifar100_n", "train")]
    np.testing.assert_array_equal(ds100.labels, _expected(source, "noise_label"))
    # Random fake labels over 100 classes: noisy and clean labels must disagree somewhere.
    assert ds100.is_noisy.any()


def test_load_subset_per_class_is_balanced_and_seeded():
    a = data.load("digits", samples_per_class=4, seed=1)
    np.testing.assert_array_equal(np.bincount(a.clean_labels), np.full(10, 4))
    np.testing.assert_array_equal(
        a.indices, data.load("digits", samples_per_class=4, seed=1).indices
    )
    assert not np.array_equal(a.indices, data.load("digits", samples_per_class=4, seed=2).indices)


@pytest.mark.parametrize("name", TFDS_NAMES)
def test_not_prepared_fails_fast_with_the_prepare_command(tmp_path, name):
    with pytest.raises(FileNotFoundError) as error:
        data.load(name, data_dir=tmp_path)
    message = str(error.value)
    assert data.prepare_command(name, tmp_path) in message
    assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in message
    assert ("manual" in message) == name.endswith("_n")
    # Failing fast: nothing was downloaded or created.
    assert list(tmp_path.iterdir()) == []


def test_prepared_without_array_record_is_refused(tmp_path):
    write_metadata(tmp_path, "cifar10", NUM_MOCK_EXAMPLES, file_format="tfrecord")
    with pytest.raises(FileNotFoundError, match="array_record"):
        data.load("cifar10", data_dir=tmp_path)


@pytest.mark.parametrize("content", ["", '{"name": ', '{"nome": "cifar10"}'])
def test_a_damaged_dataset_info_is_one_line_naming_it(tmp_path, capsys, content):
    from resetax.experiment import cli

    write_metadata(tmp_path, "cifar10", NUM_MOCK_EXAMPLES)
    (info,) = tmp_path.glob("cifar10/*/dataset_info.json")
    info.write_text(content)
    with pytest.raises(_files.DamagedFile) as error:
        data.load("cifar10", data_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{str(info)!r} (the metadata of TFDS dataset 'cifar10') cannot "
                              f"be parsed (")
    assert f"remove {str(info.parent)!r} and prepare it again: " in message
    assert message.endswith(data.prepare_command("cifar10", tmp_path) + ".")
    assert "\n" not in message
    # Through the CLI: the same line, exit 1 (data that cannot be read), nothing written.
    code = cli.main(["train", "--quiet", "--no-baseline", "--dataset", "cifar10", "--model", "mlp",
                     "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert err.strip() == f"resetax: error: {message}"
    assert not (tmp_path / "run").exists()


def test_prepare_command_builds_array_record_in_data_dir(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    prepared = []

    def fake_prepare(builder, **kwargs):
        prepared.append((builder.name, builder.info.file_format, builder.data_dir_root))

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fake_prepare)
    command = data.prepare_command("cifar100", tmp_path)
    prefix = 'python -c "'
    assert command.startswith(prefix) and command.endswith('"')
    exec(command[len(prefix) : -1], {})
    assert prepared == [("cifar100", tfds.core.FileFormat.ARRAY_RECORD, tmp_path)]


def test_reads_a_real_array_record_dataset(tmp_path, monkeypatch):
    """Prepares a tiny CIFAR-10 from fake images (no download) and reads it without mocks."""
    # TFDS imports importlib_resources to prepare a dataset without declaring it (Python 3.11).
    pytest.importorskip("importlib_resources")
    import PIL.Image
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 20, 32, 32, 3), dtype=np.uint8)

    def split_generators(builder, dl_manager):
        return {split: builder._generate_examples(split, i) for i, split in enumerate(REAL_SPLITS)}

    def generate_examples(builder, split, i):
        for j, image in enumerate(images[i]):
            # PIL images are encoded by PIL; NumPy ones would need TensorFlow.
            example = {"id": f"{split}_{j}", "image": PIL.Image.fromarray(image), "label": j % 10}
            yield j, example

    monkeypatch.setattr(cifar.Cifar10, "_split_generators", split_generators)
    monkeypatch.setattr(cifar.Cifar10, "_generate_examples", generate_examples)
    tfds.builder("cifar10", data_dir=tmp_path, file_format="array_record").download_and_prepare()

    ds = data.load("cifar10", split="test", data_dir=tmp_path)
    # TFDS shuffles examples when writing; the loader puts them back in order by their ids.
    np.testing.assert_array_equal(ds.inputs, images[1])
    np.testing.assert_array_equal(ds.labels, np.arange(20) % 10)
    np.testing.assert_array_equal(ds.indices, np.arange(20))


# --------------------------------------------------------------------------------------------
# Offline sources


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_no_network_fixture_blocks_connections(no_network):
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("example.org", 80))


def test_mnist1d_is_generated_offline_and_cached(no_network, tmp_path, monkeypatch):
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    train = data.load_mnist1d(split="train", num_samples=300, seed=1, cache_dir=tmp_path)
    test = data.load_mnist1d(split="test", num_samples=300, seed=1, cache_dir=tmp_path)
    assert train.inputs.shape == (240, 40) and test.inputs.shape == (60, 40)
    assert train.inputs.dtype == np.float32 and train.labels.dtype == np.int32
    # make_dataset draws exactly num_samples / 10 signals per class.
    counts = np.bincount(np.concatenate([train.labels, test.labels]), minlength=10)
    np.testing.assert_array_equal(counts, np.full(10, 30))
    # The global random streams are left as they were.
    assert random.getstate() == python_state
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state[1])  # noqa: NPY002
    assert len(list(tmp_path.iterdir())) == 1

    def must_not_generate(*args):
        raise AssertionError("the cached arrays should have been used")

    monkeypatch.setattr(sources, "_generate_mnist1d", must_not_generate)
    cached = data.load_mnist1d(split="train", num_samples=300, seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.inputs, train.inputs)


@pytest.mark.parametrize("damage, reason", [
    (lambda raw: raw[: len(raw) // 2], "File is not a zip file"),  # a copy or a disk cut short
    (lambda raw: b"garbage" * 100, "not a NumPy file"),
    (lambda raw: b"", "No data left in file"),
])
def test_a_damaged_mnist1d_cache_is_regenerated_with_a_warning(tmp_path, capsys, damage, reason):
    fresh = data.load_mnist1d(split="train", num_samples=100, seed=2, cache_dir=tmp_path)
    (cache,) = tmp_path.iterdir()
    intact = cache.read_bytes()
    cache.write_bytes(damage(intact))
    capsys.readouterr()
    again = data.load_mnist1d(split="train", num_samples=100, seed=2, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.inputs, fresh.inputs)
    np.testing.assert_array_equal(again.labels, fresh.labels)
    assert capsys.readouterr().err.splitlines() == [
        f"resetax: the MNIST-1D cache {str(cache)!r} is unreadable ({reason}); generating it "
        f"again."]
    assert list(tmp_path.iterdir()) == [cache]  # regenerated in place, readable again
    with np.load(cache) as stored:
        np.testing.assert_array_equal(stored["x"], np.load(io.BytesIO(intact))["x"])


def test_cached_mnist1d_loads_without_importing_the_generator(tmp_path):
    # mnist1d imports scipy and matplotlib.pyplot: seconds at the start of every quick run.
    data.load_mnist1d(split="test", num_samples=100, seed=3, cache_dir=tmp_path)
    code = ("import sys; from resetax import data; ds = data.load_mnist1d(split='test', "
            f"num_samples=100, seed=3, cache_dir={str(tmp_path)!r}); "
            "print(len(ds), 'mnist1d' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1]).stdout.split()
    assert out == ["20", "False"]


def test_mnist1d_depends_on_the_seed_only(tmp_path):
    a = data.load_mnist1d(split="test", num_samples=100, seed=0, cache=False)
    b = data.load_mnist1d(split="test", num_samples=100, seed=0, cache=False)
    c = data.load_mnist1d(split="test", num_samples=100, seed=1, cache=False)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.allclose(a.inputs, c.inputs)


def test_load_mnist1d_default_split_sizes(no_network, tmp_path):
    ds = data.load("mnist1d", split="test", data_dir=tmp_path)
    assert ds.inputs.shape == (1000, 40) and ds.num_classes == 10
    assert ds.name == "mnist1d:test"


def test_digits_offline_split(no_network):
    from sklearn.datasets import load_digits

    train, test = data.load("digits"), data.load("digits", split="test")
    assert len(train) + len(test) == 1797
    assert len(test) == round(0.2 * 1797)
    np.testing.assert_array_equal(
        np.sort(np.concatenate([train.indices, test.indices])), np.arange(1797)
    )
    bunch = load_digits()
    np.testing.assert_allclose(test.inputs[..., 0], bunch.images[test.indices] / 16.0, rtol=1e-6)
    np.testing.assert_array_equal(test.labels, bunch.target[test.indices])
    assert train.inputs.min() >= 0.0 and train.inputs.max() <= 1.0
    # The split is fixed: a second load gives the same examples.
    np.testing.assert_array_equal(data.load("digits", split="test").indices, test.indices)


def test_importing_resetax_data_loads_no_tfds_flax_or_generators():
    code = (
        "import sys, resetax, resetax.data; "
        "print(sorted(m for m in ('tensorflow_datasets', 'flax', 'sklearn', 'mnist1d') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(ValueError, match="name") as error:
        data.load("cifar1000", data_dir=missing)
    assert "cifar10_n" in str(error.value) and "mnist1d" in str(error.value)
    with pytest.raises(ValueError, match="label_variant") as error:
        data.load("cifar10_n", label_variant="worst", data_dir=missing)
    assert all(v in str(error.value) for v in CIFAR10_N_FEATURES)
    with pytest.raises(ValueError, match="label_variant"):
        data.load("cifar10", label_variant="aggre", data_dir=missing)
    with pytest.raises(ValueError, match="split"):
        data.load("cifar10", split="validation", data_dir=missing)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="samples_per_class"):
            data.load("cifar100_n", samples_per_class=bad, data_dir=missing)
    assert not missing.exists()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.1"])
def test_bad_val_fraction(fraction):
    ds = _toy_dataset()
    with pytest.raises(ValueError, match="val_fraction"):
        data.train_val_split(ds, fraction)


# --------------------------------------------------------------------------------------------
# Dataset, subsets and validation splits


def _toy_dataset(n=60, num_classes=3, noise_every=4):
    clean = np.arange(n, dtype=np.int32) % num_classes
    noisy = clean.copy()
    noisy[::noise_every] = (noisy[::noise_every] + 1) % num_classes
    return data.Dataset(
        inputs=np.arange(n, dtype=np.float32)[:, None],
        labels=noisy,
        clean_labels=clean,
        indices=np.arange(n, dtype=np.int64) + 1000,
        num_classes=num_classes,
        name="toy",
    )


def test_dataset_fields_must_align():
    with pytest.raises(ValueError, match="labels"):
        data.Dataset(np.zeros((3, 2)), np.zeros(4, np.int32), None, np.arange(3), 2)


def test_replacing_labels_keeps_clean_labels():
    ds = _toy_dataset()
    noisy = dataclasses.replace(ds, labels=(ds.clean_labels + 1) % 3)
    np.testing.assert_array_equal(noisy.clean_labels, ds.clean_labels)
    assert noisy.is_noisy.all()


def test_subset_per_class_is_balanced_and_deterministic():
    ds = _toy_dataset()
    a = data.subset_per_class(ds, 5, seed=0)
    b = data.subset_per_class(ds, 5, seed=0)
    c = data.subset_per_class(ds, 5, seed=1)
    np.testing.assert_array_equal(np.bincount(a.clean_labels), [5, 5, 5])
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    # Every kept example is the original one, with its own input and labels.
    positions = a.indices - 1000
    np.testing.assert_array_equal(a.inputs[:, 0], ds.inputs[positions, 0])
    np.testing.assert_array_equal(a.labels, ds.labels[positions])
    with pytest.raises(ValueError, match="samples_per_class"):
        data.subset_per_class(ds, 21)


def test_train_val_split_keeps_noisy_labels_unless_clean_val():
    ds = _toy_dataset()
    train, val = data.train_val_split(ds, 0.25, seed=0)
    assert (len(train), len(val)) == (45, 15)
    assert not set(train.indices) & set(val.indices)
    np.testing.assert_array_equal(np.sort(np.r_[train.indices, val.indices]), ds.indices)
    np.testing.assert_array_equal(val.labels, ds.labels[val.indices - 1000])
    _, clean_val = data.train_val_split(ds, 0.25, seed=0, clean_val=True)
    np.testing.assert_array_equal(clean_val.indices, val.indices)
    np.testing.assert_array_equal(clean_val.labels, ds.clean_labels[val.indices - 1000])
    _, other = data.train_val_split(ds, 0.25, seed=1)
    assert not np.array_equal(other.indices, val.indices)
    unknown = dataclasses.replace(ds, clean_labels=None)
    with pytest.raises(ValueError, match="clean_val"):
        data.train_val_split(unknown, 0.25, clean_val=True)


# --------------------------------------------------------------------------------------------
# Batching


@pytest.mark.parametrize("replace", [True, False])
def test_sample_batch_indices(replace):
    sample = jax.jit(data.sample_batch_indices, static_argnums=(1, 2), static_argnames="replace")
    key = jax.random.key(0)
    idx = sample(key, 50, 16, replace=replace)
    assert idx.shape == (16,) and idx.dtype == jnp.int32
    assert int(idx.min()) >= 0 and int(idx.max()) < 50
    np.testing.assert_array_equal(idx, sample(key, 50, 16, replace=replace))
    assert not np.array_equal(idx, sample(jax.random.key(1), 50, 16, replace=replace))
    if not replace:
        assert len(set(idx.tolist())) == 16


def test_sample_with_replacement_reaches_every_index():
    idx = data.sample_batch_indices(jax.random.key(0), 10, 2000)
    counts = np.bincount(np.asarray(idx), minlength=10)
    assert counts.min() > 150  # Expected 200 each.


def test_sampling_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        data.sample_batch_indices(jax.random.key(0), 4, 5, replace=False)
    with pytest.raises(ValueError, match="num_examples"):
        data.epoch_batch_indices(jax.random.key(0), 0, 1)


def test_epoch_batches_cover_every_index_once():
    batches = data.epoch_batch_indices(jax.random.key(3), 24, 6)
    assert batches.shape == (4, 6) and batches.dtype == jnp.int32
    np.testing.assert_array_equal(np.sort(np.asarray(batches).ravel()), np.arange(24))
    # With a remainder, the partial batch is dropped and no index repeats.
    uneven = np.asarray(data.epoch_batch_indices(jax.random.key(3), 26, 6)).ravel()
    assert len(uneven) == 24 and len(set(uneven.tolist())) == 24


def test_batch_indices_at_step_walks_through_epochs():
    key = jax.random.key(7)
    at_step = jax.jit(data.batch_indices_at_step, static_argnums=(2, 3))
    steps = np.stack([np.asarray(at_step(key, s, 20, 5)) for s in range(8)])
    for epoch in range(2):
        np.testing.assert_array_equal(
            steps[4 * epoch : 4 * epoch + 4],
            data.epoch_batch_indices(jax.random.fold_in(key, epoch), 20, 5),
        )
        np.testing.assert_array_equal(
            np.sort(steps[4 * epoch : 4 * epoch + 4].ravel()), np.arange(20)
        )
    assert not np.array_equal(steps[:4], steps[4:])


# --------------------------------------------------------------------------------------------
# Augmentation and normalization


def _marked_images(n=32, size=6, channels=2):
    """Images whose pixels all differ and are nonzero, so a crop identifies its window."""
    pixels = np.arange(1, n * size * size * channels + 1, dtype=np.int32)
    return pixels.reshape(n, size, size, channels)


@pytest.mark.parametrize("pad_mode", data.PAD_MODES)
def test_random_crop_is_a_window_of_the_padded_image(pad_mode):
    images, padding = _marked_images(), 2
    crop = jax.jit(data.random_crop, static_argnames=("padding", "pad_mode"))
    out = np.asarray(
        crop(jax.random.key(0), jnp.asarray(images), padding=padding, pad_mode=pad_mode)
    )
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = np.pad(images, ((0, 0), (padding,) * 2, (padding,) * 2, (0, 0)), mode=pad_mode)
    size = images.shape[1]
    offsets = []
    for image, window in zip(padded, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if np.array_equal(image[dy : dy + size, dx : dx + size], window)
        ]
        assert len(matches) == 1
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # Offsets vary over the batch (25 possible).
    np.testing.assert_array_equal(
        out, crop(jax.random.key(0), jnp.asarray(images), padding=padding, pad_mode=pad_mode)
    )
    assert not np.array_equal(
        out, crop(jax.random.key(1), jnp.asarray(images), padding=padding, pad_mode=pad_mode)
    )


def test_random_crop_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pad_mode"):
        data.random_crop(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), pad_mode="edge")
    with pytest.raises(ValueError, match="padding"):
        data.random_crop(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), padding=-1)


def test_random_flip_mirrors_or_keeps_each_image():
    images = _marked_images()
    out = np.asarray(jax.jit(data.random_flip)(jax.random.key(0), jnp.asarray(images)))
    flipped = np.array([np.array_equal(o, x[:, ::-1]) for o, x in zip(out, images, strict=True)])
    kept = np.array([np.array_equal(o, x) for o, x in zip(out, images, strict=True)])
    assert (flipped ^ kept).all()
    assert flipped.any() and kept.any()


def test_augment_cifar_is_deterministic_per_key():
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8))
    augment = jax.jit(data.augment_cifar)
    a = augment(jax.random.key(0), images)
    assert a.shape == images.shape and a.dtype == jnp.uint8
    np.testing.assert_array_equal(a, augment(jax.random.key(0), images))
    assert not np.array_equal(a, augment(jax.random.key(1), images))


def test_normalize_standardizes_each_channel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)
    images[..., 2] //= 4  # Channels with different statistics.
    mean, std = data.channel_mean_std(images)
    np.testing.assert_allclose(mean * 255, images.reshape(-1, 3).mean(0))
    out = data.normalize(jnp.asarray(images), mean, std)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out).reshape(-1, 3).std(0), 1.0, atol=1e-5)
    half = data.normalize(jnp.asarray(images), mean, std, dtype=jnp.bfloat16)
    assert half.dtype == jnp.bfloat16
