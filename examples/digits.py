"""scikit-learn's digits with noisy training labels: the examples' offline stand-in for MNIST.

The 1,797 8x8 images are split into 1,097 for training and 200 for validation, both with 40% of
their labels replaced by a different class drawn uniformly (symmetric noise, as a user's noisy
data would be), and 500 clean test images.
"""

import numpy as np
from sklearn.datasets import load_digits

NUM_CLASSES = 10


def load_noisy_digits(noise_rate=0.4, seed=0):
    """Returns ``(train, val, test)``, each a dict of ``image`` (N, 8, 8, 1) and ``label`` (N,)."""
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    images, labels = images[order], labels[order].astype(np.int32)
    noisy = labels.copy()
    flip = rng.random(len(labels)) < noise_rate
    # A different class, uniformly: add 1..9 modulo 10.
    noisy[flip] = (labels[flip] + rng.integers(1, NUM_CLASSES, flip.sum())) % NUM_CLASSES
    train = {"image": images[:1097], "label": noisy[:1097]}
    val = {"image": images[1097:1297], "label": noisy[1097:1297]}
    test = {"image": images[1297:], "label": labels[1297:]}
    return train, val, test
