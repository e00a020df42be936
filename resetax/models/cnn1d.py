"""A small 1-D CNN for MNIST-1D's 40-point signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import conv_fan_in, layer_initializers
from resetax.models.resnet import batch_norm, unit_layer
from resetax.plasticity import UnitWeights


class CNN1D(nn.Module):
    """Strided 1-D convolutions with ``[BatchNorm] -> ReLU``, then flatten and Dense.

    With the defaults, three stride-2 convolutions of 32 channels and kernel 5 take a length-40
    signal to 5 positions × 32 channels before the output layer, the kind of small CNN that
    reaches high test accuracy on MNIST-1D where an MLP does not.

    Attributes:
      num_classes: outputs of the last layer.
      channels: output channels of each convolution.
      kernel_size: width of every convolution kernel.
      strides: stride of every convolution ('SAME' padding).
      use_batch_norm: whether each convolution has a BatchNorm before its ReLU.
      dtype: computation dtype; parameters stay float32, logits are float32.
      axis_name: BatchNorm's cross-replica axis under ``pmap``, or ``None``.
      init_scheme: ``"flax"`` or ``"pytorch"`` (see
        :func:`~resetax.models.initializers.layer_initializers`).

    Each convolution's activations (after its ReLU) are sown as ``"hidden_{i}"`` in the
    ``"intermediates"`` collection (see :meth:`units`).

    Examples:
      >>> from resetax import models
      >>> model = models.CNN1D(num_classes=10)
      >>> x = jnp.zeros((2, 40))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> model.apply(variables, x).shape
      (2, 10)

    References:
      Greydanus, `Scaling down deep learning with MNIST-1D
      <https://arxiv.org/abs/2011.14439>`_, 2020.
    """

    num_classes: int
    channels: Sequence[int] = (32, 32, 32)
    kernel_size: int = 5
    strides: int = 2
    use_batch_norm: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns the logits ``float32 [N, num_classes]`` of signals ``[N, L]`` / ``[N, L, C]``."""
        x = jnp.asarray(x, self.dtype)
        if x.ndim == 2:
            x = x[..., None]
        for i, width in enumerate(self.channels):
            init = layer_initializers(self.init_scheme, conv_fan_in(x, (self.kernel_size,)))
            x = nn.Conv(width, (self.kernel_size,), strides=self.strides, dtype=self.dtype,
                        **init)(x)
            if self.use_batch_norm:
                x = batch_norm(train, self.dtype, self.axis_name)(x)
            x = nn.relu(x)
            self.sow("intermediates", f"hidden_{i}", x)
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)

    def units(self) -> dict[str, UnitWeights]:
        """The channels of the convolutions, for :func:`resetax.recycle_dormant_units`.

        Channel ``j`` of convolution ``i``: incoming ``Conv_i``'s output channel and bias (and
        ``BatchNorm_i``'s scale and bias, whose statistics are its model state), outgoing the
        next convolution's input channel, or for the last convolution the rows of the output
        Dense kernel that read the channel at every position.

        Example:
          >>> from resetax import models
          >>> units = models.CNN1D(num_classes=2, channels=(4, 4)).units()
          >>> units["hidden_0"].outgoing, units["hidden_1"].outgoing
          (('Conv_1/kernel',), ('Dense_0/kernel',))
        """
        last = len(self.channels) - 1
        return {f"hidden_{i}": unit_layer(
                    f"Conv_{i}", "kernel", "bias",
                    f"BatchNorm_{i}" if self.use_batch_norm else None,
                    "Dense_0/kernel" if i == last else f"Conv_{i + 1}/kernel")
                for i in range(len(self.channels))}

    def normalized_layers(self) -> dict[str, UnitWeights]:
        """The layers followed by a BatchNorm, whose statistics a re-initialization of the
        layer resets (:func:`resetax.reinit_model_state`): those of :meth:`units` that have
        one.

        Example:
          >>> from resetax import models
          >>> list(models.CNN1D(num_classes=2, use_batch_norm=False).normalized_layers())
          []
        """
        return {name: w for name, w in self.units().items() if w.model_state}
