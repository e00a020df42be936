"""A multilayer perceptron with optional BatchNorm, for small vector or image inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import layer_initializers
from resetax.models.resnet import batch_norm, unit_layer
from resetax.plasticity import UnitWeights


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

    Each hidden layer's activations (after its ReLU) are sown as ``"hidden_{i}"`` in the
    ``"intermediates"`` collection, for :func:`resetax.recycle_dormant_units` (see
    :meth:`units`).

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
        for i, width in enumerate(self.hidden_sizes):
            x = nn.Dense(width, dtype=self.dtype,
                         **layer_initializers(self.init_scheme, x.shape[-1]))(x)
            if self.use_batch_norm:
                x = batch_norm(train, self.dtype, self.axis_name)(x)
            x = nn.relu(x)
            self.sow("intermediates", f"hidden_{i}", x)
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)

    def units(self) -> dict[str, UnitWeights]:
        """The hidden units, for :func:`resetax.recycle_dormant_units`, by their sown names.

        Unit ``j`` of hidden layer ``i``: incoming ``Dense_i``'s kernel column and bias (and
        ``BatchNorm_i``'s scale and bias, whose running statistics are its model state),
        outgoing the next Dense layer's kernel row.

        Example:
          >>> from resetax import models
          >>> models.MLP(num_classes=2, hidden_sizes=(4,), use_batch_norm=False).units()
          {'hidden_0': UnitWeights(incoming=('Dense_0/kernel', 'Dense_0/bias'), \
outgoing=('Dense_1/kernel',), model_state=())}
        """
        return {f"hidden_{i}": unit_layer(f"Dense_{i}", "kernel", "bias",
                                          f"BatchNorm_{i}" if self.use_batch_norm else None,
                                          f"Dense_{i + 1}/kernel")
                for i in range(len(self.hidden_sizes))}

    def normalized_layers(self) -> dict[str, UnitWeights]:
        """The layers followed by a BatchNorm, whose statistics a re-initialization of the
        layer resets (:func:`resetax.reinit_model_state`): those of :meth:`units` that have
        one.

        Example:
          >>> from resetax import models
          >>> list(models.MLP(num_classes=2, hidden_sizes=(4, 4)).normalized_layers())
          ['hidden_0', 'hidden_1']
        """
        return {name: w for name, w in self.units().items() if w.model_state}
