"""The paper's VCNN: a small VGG-style CNN with BatchNorm, used for the small-data experiments."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import conv_fan_in, layer_initializers
from resetax.models.resnet import batch_norm


class VCNN(nn.Module):
    """Conv 32-64-pool-128-128-pool-256-256-pool, dropout, FC 1024-512-``num_classes``.

    Every convolution is 3×3 with padding 1; every conv and hidden Dense layer is followed by
    BatchNorm and ReLU; pools are 2×2 max-pools; dropout (rate ``dropout_rate``) acts on the
    flattened features. Layers keep their biases, so the parameter count matches the
    authors' model.

    Attributes:
      num_classes: outputs of the last Dense layer.
      dropout_rate: dropout before the first Dense layer (paper: 0.2).
      dtype: computation dtype; parameters stay float32, logits are float32.
      axis_name: BatchNorm's cross-replica axis under ``pmap``, or ``None``.
      init_scheme: ``"flax"`` or ``"pytorch"`` (see
        :func:`~resetax.models.initializers.layer_initializers`).

    Examples:
      >>> from resetax import models
      >>> model = models.VCNN(num_classes=10)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> logits, updates = jax.eval_shape(
      ...     lambda v: model.apply(v, x, train=True, mutable=["batch_stats"],
      ...                           rngs={"dropout": jax.random.key(1)}), variables)
      >>> logits.shape
      (2, 10)
    """

    num_classes: int
    dropout_rate: float = 0.2
    dtype: Any = jnp.float32
    axis_name: str | None = None
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns the logits ``float32 [N, num_classes]`` of images ``[N, H, W, C]``.

        With ``train=True``, dropout needs a ``"dropout"`` rng and ``batch_stats`` must be
        mutable.
        """
        x = jnp.asarray(x, self.dtype)
        for widths in ((32, 64), (128, 128), (256, 256)):
            for width in widths:
                init = layer_initializers(self.init_scheme, conv_fan_in(x, (3, 3)))
                x = nn.Conv(width, (3, 3), padding=1, dtype=self.dtype, **init)(x)
                x = nn.relu(batch_norm(train, self.dtype, self.axis_name)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for width in (1024, 512):
            x = nn.Dense(width, dtype=self.dtype,
                         **layer_initializers(self.init_scheme, x.shape[-1]))(x)
            x = nn.relu(batch_norm(train, self.dtype, self.axis_name)(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)
