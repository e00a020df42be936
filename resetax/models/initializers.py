"""Weight initialization schemes of the models: Flax's defaults or PyTorch's.

PyTorch initializes ``nn.Conv2d`` and ``nn.Linear`` kernels with ``kaiming_uniform_(a=sqrt(5))``,
which is U(±1/√fan_in), and their biases U(±1/√fan_in) with the layer's fan-in. The official
code of the paper trains from that initialization (PARITY.md, row 48).
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

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance 1/(3 fan_in).
_PYTORCH_KERNEL = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


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
        return {"kernel_init": flax_kernel or nn.initializers.lecun_normal(),
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
