"""TFDS's CIFAR sources mocked with ``tfds.testing.mock_data``: real metadata, fake records.

The split names and label features are the real builders' (metadata written from
``tfds.builder``); the records are deterministic fakes from TFDS's own generator, stored
shuffled with the ids a prepared dataset has (``train_00042``).
"""

import contextlib
import os

import numpy as np

TFDS_NAMES = ("cifar10", "cifar100", "cifar10_n", "cifar100_n")
REAL_SPLITS = ("train", "test")


def write_metadata(data_dir, name, num_examples, file_format="array_record"):
    """Writes the dataset_info.json that a prepared dataset has, with the real split names."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir, file_format=file_format)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
        for split in REAL_SPLITS]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


class FakeSource:
    """A random-access source of deterministic fake examples built from the real features.

    tfds's default data-source mock sets ``__getitems__`` as an unbound partial that fails when
    called (tfds 4.9.10), so the mock's supported hook ``as_data_source_fn`` provides this one.
    Single-item access fails the test: the loader must read in chunks. As in a prepared TFDS
    dataset, the records are stored shuffled: record ``i`` has the id ``<split>_<order[i]>``
    (bytes, as ``tfds.data_source`` decodes a Text feature), its position in the original files.
    """

    def __init__(self, features, num_examples, split):
        from tensorflow_datasets.testing.mocking import RandomFakeGenerator

        self.generator = RandomFakeGenerator(features, num_examples)
        self.num_examples = num_examples
        self.num_chunk_reads = 0
        self.order = np.random.default_rng(len(split)).permutation(num_examples)
        self.split = split

    def __len__(self):
        return self.num_examples

    def __getitem__(self, index):
        raise AssertionError("examples must be read in chunks through __getitems__")

    def __getitems__(self, indices):
        self.num_chunk_reads += 1
        return [dict(self.generator[i], id=f"{self.split}_{self.order[i]:05d}".encode())
                for i in indices]


@contextlib.contextmanager
def mock_cifar(metadata_dir, num_examples):
    """Mocks every CIFAR source with ``num_examples`` per split; yields the opened sources."""
    import tensorflow_datasets as tfds

    for name in TFDS_NAMES:
        write_metadata(metadata_dir, name, num_examples)
    opened = {}

    def as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
        # The split dict comes from the metadata files, so only real split names pass.
        assert split in builder.info.splits, split
        source = FakeSource(builder.info.features, num_examples, split)
        opened[(builder.name, split)] = source
        return source

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=str(metadata_dir), as_data_source_fn=as_data_source):
        yield opened
