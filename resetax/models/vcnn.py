"""The paper's VCNN: a small VGG-style CNN with BatchNorm, used for the small-data experiments."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import conv_fan_in, layer_initializers
from resetax.models.resnet import batch_norm, unit_layer
from resetax.plasticity import UnitWeights

_CONV_WIDTHS = ((32, 64), (128, 128), (256, 256))
_DENSE_WIDTHS = (1024, 512)


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

    The activations of every conv and hidden Dense layer (after BatchNorm and ReLU) are sown
    as ``"hidden_0"`` ... ``"hidden_7"`` in the ``"intermediates"`` collection (see
    :meth:`units`).

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
        layer = 0
        for widths in _CONV_WIDTHS:
            for width in widths:
                init = layer_initializers(self.init_scheme, conv_fan_in(x, (3, 3)))
                x = nn.Conv(width, (3, 3), padding=1, dtype=self.dtype, **init)(x)
                x = nn.relu(batch_norm(train, self.dtype, self.axis_name)(x))
                self.sow("intermediates", f"hidden_{layer}", x)
                layer += 1
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for width in _DENSE_WIDTHS:
            x = nn.Dense(width, dtype=self.dtype,
                         **layer_initializers(self.init_scheme, x.shape[-1]))(x)
            x = nn.relu(batch_norm(train, self.dtype, self.axis_name)(x))
            self.sow("intermediates", f"hidden_{layer}", x)
            layer += 1
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)

    def units(self) -> dict[str, UnitWeights]:
        """The units of the conv and hidden Dense layers, for
        :func:`resetax.recycle_dormant_units`.

        Unit ``j`` of layer ``i``: incoming the layer's output channel (kernel and bias) and
        its BatchNorm's scale and bias (the statistics its model state), outgoing the next
        layer's input rows; the last convolution's channel owns the first Dense kernel's rows
        at every position of the flattened (channels-last) feature map.

        Example:
          >>> from resetax import models
          >>> units = models.VCNN(num_classes=10).units()
          >>> len(units), units["hidden_5"].outgoing, units["hidden_7"].incoming[:2]
          (8, ('Dense_0/kernel',), ('Dense_1/kernel', 'Dense_1/bias'))
        """
        layers = [f"Conv_{i}" for i in range(sum(map(len, _CONV_WIDTHS)))]
        layers += [f"Dense_{i}" for i in range(len(_DENSE_WIDTHS) + 1)]
        return {f"hidden_{i}": unit_layer(layers[i], "kernel", "bias", f"BatchNorm_{i}",
                                          f"{layers[i + 1]}/kernel")
                for i in range(len(layers) - 1)}

    def normalized_layers(self) -> dict[str, UnitWeights]:
        """The layers followed by a BatchNorm, whose statistics a re-initialization of the
        layer resets (:func:`resetax.reinit_model_state`): those of :meth:`units` that have
        one.

        Example:
          >>> from resetax import models
          >>> list(models.VCNN(num_classes=2).normalized_layers()) == list(
          ...     models.VCNN(num_classes=2).units())
          True
        """
        return {name: w for name, w in self.units().items() if w.model_state}
