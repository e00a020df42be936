"""On-device image augmentation (random crop, horizontal flip) and per-channel normalization.

Everything here is jittable and vectorized over the batch of ``[N, H, W, C]`` images.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from resetax import _checks

# Per-channel mean and standard deviation of the training images, in [0, 1] units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

PAD_MODES = ("constant", "reflect")


def random_crop(
    key: jax.Array, images: jax.Array, *, padding: int = 4, pad_mode: str = "constant"
) -> jax.Array:
    """Pads each image on every side and crops a random window of the original size.

    Args:
      key: a JAX PRNG key; the same key gives the same crops.
      images: ``[N, H, W, C]``, any dtype.
      padding: pixels added on each side (static); offsets are uniform in ``[0, 2 * padding]``.
      pad_mode: ``"constant"`` (zeros, as in He et al. 2016 and torchvision's
        ``RandomCrop(32, padding=4)``) or ``"reflect"`` (mirror without repeating the edge).

    Returns:
      The cropped images, same shape and dtype as ``images``.

    Examples:
      >>> from resetax import data
      >>> x = jnp.ones((2, 8, 8, 3), jnp.uint8)
      >>> data.random_crop(jax.random.key(0), x, padding=2).shape
      (2, 8, 8, 3)
    """
    _checks.int_at_least("padding", padding, 0)
    _checks.one_of("pad_mode", pad_mode, PAD_MODES)
    n, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), pad_mode)
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2.

    Args:
      key: a JAX PRNG key.
      images: ``[N, H, W, C]``.

    Returns:
      The images, each either unchanged or with its width axis reversed.

    Examples:
      >>> from resetax import data
      >>> x = jnp.arange(4.0).reshape(1, 1, 4, 1)
      >>> data.random_flip(jax.random.key(1), x).shape
      (1, 1, 4, 1)
    """
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment_cifar(
    key: jax.Array, images: jax.Array, *, padding: int = 4, pad_mode: str = "constant"
) -> jax.Array:
    """The standard CIFAR augmentation: :func:`random_crop` then :func:`random_flip`.

    Args:
      key: a JAX PRNG key, split between the crop and the flip.
      images: ``[N, 32, 32, 3]`` (any ``[N, H, W, C]`` works).
      padding: pixels padded on each side before the crop.
      pad_mode: ``"constant"`` (zero padding, the default) or ``"reflect"``.

    Returns:
      Augmented images, same shape and dtype.

    Examples:
      >>> from resetax import data
      >>> x = jnp.zeros((4, 32, 32, 3), jnp.uint8)
      >>> jax.jit(data.augment_cifar)(jax.random.key(0), x).shape
      (4, 32, 32, 3)

    References:
      He, Zhang, Ren & Sun, `Deep Residual Learning for Image Recognition
      <https://arxiv.org/abs/1512.03385>`_, 2016 (Sec. 4.2).
    """
    crop_key, flip_key = jax.random.split(key)
    images = random_crop(crop_key, images, padding=padding, pad_mode=pad_mode)
    return random_flip(flip_key, images)


def normalize(
    images: jax.Array,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    *,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Maps ``uint8`` pixels to ``(x / 255 - mean) / std`` per channel.

    Args:
      images: ``[..., C]`` with values in [0, 255].
      mean: per-channel mean in [0, 1] units (default: CIFAR-10's).
      std: per-channel standard deviation in [0, 1] units.
      dtype: output dtype (``jnp.bfloat16`` for mixed precision).

    Returns:
      Normalized images of ``dtype``.

    Examples:
      >>> from resetax import data
      >>> x = jnp.full((1, 2, 2, 1), 255, jnp.uint8)
      >>> data.normalize(x, mean=(0.5,), std=(0.25,))[0, 0, 0].tolist()
      [2.0]
    """
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return ((images.astype(jnp.float32) / 255.0 - mean) / std).astype(dtype)


def channel_mean_std(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``uint8`` images, in [0, 1] units.

    Use it to compute :func:`normalize`'s constants for a dataset (the CIFAR constants above are
    these statistics of the training splits).

    Args:
      images: ``[N, H, W, C]`` with values in [0, 255] (a NumPy array on the host).

    Returns:
      ``(mean, std)``, each ``float64 [C]``.

    Examples:
      >>> import numpy as np
      >>> from resetax import data
      >>> mean, std = data.channel_mean_std(np.array([[[[0]], [[255]]]], np.uint8))
      >>> mean.tolist(), std.tolist()
      ([0.5], [0.5])
    """
    scaled = np.asarray(images, np.float64) / 255.0
    axes = tuple(range(scaled.ndim - 1))
    return scaled.mean(axis=axes), scaled.std(axis=axes)
