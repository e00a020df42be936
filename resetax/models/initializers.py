"""Weight initialization schemes of the models: Flax's defaults or PyTorch's.

PyTorch initializes ``nn.Conv2d`` and ``nn.Linear`` kernels with ``kaiming_uniform_(a=sqrt(5))``,
which is U(±1/√fan_in), and their biases U(±1/√fan_in) with the layer's fan-in. The official
code of the paper trains from that initialization (PARITY.md, row 48).

The kernels are drawn by :func:`variance_scaling`, which gives exactly the values of
``jax.nn.initializers.variance_scaling`` but draws them as one flat vector: XLA:CPU takes seconds
to compile the random draw of a small kernel of three or four axes (it unrolls the loops of the
hash over every element) and a fraction of a second for the same draw as a vector.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax import _checks

INIT_SCHEMES = ("flax", "pytorch")
"""Names accepted by the models' ``init_scheme``."""

Initializer = Callable[..., jax.Array]

_MODES = ("fan_in", "fan_out")
_DISTRIBUTIONS = ("truncated_normal", "normal", "uniform")
_TRUNCATED_STDDEV = 0.87962566103423978  # the standard deviation of N(0, 1) truncated to ±2


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """``jax.nn.initializers.variance_scaling`` for float kernels, drawn as one flat vector.

    The values are those of ``jax.nn.initializers.variance_scaling(scale, mode, distribution)``
    bit for bit (a random draw of a shape is the draw of its size, reshaped, with either of JAX's
    threefry implementations); the draw is compiled as a vector, which XLA:CPU does in a fraction
    of the time it takes for a small kernel of three or four axes.

    Args:
      scale: the variance is ``scale / fan``.
      mode: ``"fan_in"`` or ``"fan_out"``: the inputs (``shape[-2]``) or outputs
        (``shape[-1]``) of the kernel, times its receptive field (the product of the other axes).
      distribution: ``"truncated_normal"`` (to ±2 standard deviations, rescaled to the
        variance), ``"normal"`` or ``"uniform"``.

    Returns:
      An initializer ``init(key, shape, dtype=float32)``.

    Examples:
      >>> from resetax.models.initializers import variance_scaling
      >>> init = variance_scaling(2.0, "fan_out", "normal")  # He normal, as in the ResNets
      >>> kernel = init(jax.random.key(0), (3, 3, 64, 128))  # 3x3 convolution, 64 -> 128
      >>> round(float(kernel.std()) / (2 / (3 * 3 * 128)) ** 0.5, 2)  # s.d. sqrt(2 / fan_out)
      1.0
      >>> reference = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
      >>> dense = (jax.random.key(1), (64, 10))
      >>> bool(jnp.array_equal(init(*dense), reference(*dense)))  # the same values as JAX's
      True
    """
    _checks.one_of("mode", mode, _MODES)
    _checks.one_of("distribution", distribution, _DISTRIBUTIONS)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"shape must have at least 2 axes (inputs and outputs of a kernel), "
                             f"got {shape}.")
        receptive_field = math.prod(shape[:-2])
        fan = shape[-2] if mode == "fan_in" else shape[-1]
        variance = jnp.array(scale / (fan * receptive_field), dtype=dtype)
        flat = (math.prod(shape),)
        if distribution == "truncated_normal":
            draw = jax.random.truncated_normal(key, -2, 2, flat, dtype)
            stddev = jnp.sqrt(variance) / jnp.array(_TRUNCATED_STDDEV, dtype)
        elif distribution == "normal":
            draw, stddev = jax.random.normal(key, flat, dtype), jnp.sqrt(variance)
        else:
            draw, stddev = jax.random.uniform(key, flat, dtype, -1), jnp.sqrt(3 * variance)
        return draw.reshape(shape) * stddev

    return init


# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in).
_PYTORCH_KERNEL = variance_scaling(1 / 3, "fan_in", "uniform")
_LECUN_NORMAL = variance_scaling(1.0, "fan_in", "truncated_normal")  # Flax's default kernels


def layer_initializers(scheme: str, fan_in: int, *, flax_kernel: Initializer | None = None
                       ) -> dict[str, Initializer]:
    """``kernel_init`` and ``bias_init`` for one convolution or dense layer.

    Args:
      scheme: one of :data:`INIT_SCHEMES`. ``"flax"``: ``flax_kernel`` (Flax's LeCun normal when
        ``None``) and zero biases, the layers' own defaults. ``"pytorch"``: kernels and biases
        uniform in ±1/√fan_in.
      fan_in: the layer's inputs per output: in-channels times the kernel's spatial size for a
        convolution, in-features for a dense layer (the bias initializer needs it, since it only
        sees the bias's shape).
      flax_kernel: the kernel initializer of the ``"flax"`` scheme for this layer.

    Returns:
      Keyword arguments for ``nn.Conv`` or ``nn.Dense``.

    Examples:
      >>> import flax.linen as nn
      >>> from resetax.models.initializers import layer_initializers
      >>> dense = nn.Dense(3, **layer_initializers("pytorch", fan_in=4))
      >>> params = dense.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
      >>> [bool(jnp.abs(p).max() <= 0.5) for p in (params["kernel"], params["bias"])]
      [True, True]
    """
    _checks.one_of("init_scheme", scheme, INIT_SCHEMES)
    if scheme == "flax":
        return {"kernel_init": flax_kernel or _LECUN_NORMAL,
                "bias_init": nn.initializers.zeros_init()}
    return {"kernel_init": _PYTORCH_KERNEL, "bias_init": _pytorch_bias(fan_in)}


def conv_fan_in(x: jax.Array, kernel_size: tuple[int, ...]) -> int:
    """The fan-in of a convolution of ``kernel_size`` applied to ``x`` (channels last).

    Examples:
      >>> from resetax.models.initializers import conv_fan_in
      >>> conv_fan_in(jnp.zeros((2, 32, 32, 3)), (3, 3))
      27
    """
    return x.shape[-1] * math.prod(kernel_size)


def _pytorch_bias(fan_in: int) -> Initializer:
    bound = 1 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
