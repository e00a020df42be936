"""A multilayer perceptron with optional BatchNorm, for small vector or image inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import layer_initializers
from resetax.models.resnet import batch_norm


class MLP(nn.Module):
    """Flatten, then ``Dense -> [BatchNorm] -> ReLU`` per hidden layer, then a Dense output.

    Attributes:
      num_classes: outputs of the last layer.
      hidden_sizes: widths of the hidden layers.
      use_batch_norm: whether each hidden layer has a BatchNorm before its ReLU.
      dtype: computation dtype; parameters stay float32, logits are float32.
      axis_name: BatchNorm's cross-replica axis under ``pmap``, or ``None``.
      init_scheme: ``"flax"`` or ``"pytorch"`` (see
        :func:`~resetax.models.initializers.layer_initializers`).

    Examples:
      >>> from resetax import models
      >>> model = models.MLP(num_classes=10, hidden_sizes=(16,))
      >>> x = jnp.zeros((4, 40))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> model.apply(variables, x).shape
      (4, 10)
    """

    num_classes: int
    hidden_sizes: Sequence[int] = (256, 256)
    use_batch_norm: bool = True
    dtype: Any = jnp.float32
    axis_name: str | None = None
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns the logits ``float32 [N, num_classes]`` of inputs ``[N, ...]``."""
        x = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
        for width in self.hidden_sizes:
            x = nn.Dense(width, dtype=self.dtype,
                         **layer_initializers(self.init_scheme, x.shape[-1]))(x)
            if self.use_batch_norm:
                x = batch_norm(train, self.dtype, self.axis_name)(x)
            x = nn.relu(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)
