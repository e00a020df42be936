"""CIFAR ResNets (He et al. 2016): 3×3 stem, no max-pool, BasicBlock stages, as in the paper."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resetax.models.initializers import conv_fan_in, layer_initializers, variance_scaling
from resetax.plasticity import UnitWeights

# Kaiming-normal fan-out initialization, the usual choice for ReLU ResNets (torchvision's).
_conv_init = variance_scaling(2.0, "fan_out", "normal")


def unit_layer(layer: str, kernel: str, bias: str | None, norm: str | None,
               *outgoing: str) -> UnitWeights:
    """The :class:`resetax.UnitWeights` of the output units of ``layer`` (a Dense or Conv).

    Incoming: the layer's ``kernel`` (and ``bias``), then ``norm``'s ``scale`` and ``bias``
    when a BatchNorm follows it, whose ``mean`` and ``var`` are the model state; outgoing: the
    ``outgoing`` parameter paths.

    Example:
      >>> from resetax.models.resnet import unit_layer
      >>> unit_layer("Conv_0", "kernel", None, "BatchNorm_0", "Conv_1/kernel")
      UnitWeights(incoming=('Conv_0/kernel', 'BatchNorm_0/scale', 'BatchNorm_0/bias'), \
outgoing=('Conv_1/kernel',), model_state=('BatchNorm_0/mean', 'BatchNorm_0/var'))
    """
    incoming = [f"{layer}/{kernel}"] + ([f"{layer}/{bias}"] if bias else [])
    state = []
    if norm is not None:
        incoming += [f"{norm}/scale", f"{norm}/bias"]
        state = [f"{norm}/mean", f"{norm}/var"]
    return UnitWeights(tuple(incoming), tuple(outgoing), tuple(state))


def batch_norm(train: bool, dtype: Any, axis_name: str | None) -> nn.BatchNorm:
    """A BatchNorm with PyTorch's defaults (running-average decay 0.9, epsilon 1e-5).

    Args:
      train: normalize with the batch statistics and update the running averages (``True``), or
        with the running averages (``False``).
      dtype: computation dtype; statistics and parameters stay float32.
      axis_name: the pmap/shard_map axis over which batch statistics are averaged, or ``None``.

    Returns:
      An unbound ``flax.linen.BatchNorm``.

    Examples:
      >>> from resetax.models.resnet import batch_norm
      >>> bn = batch_norm(train=True, dtype=jnp.float32, axis_name=None)
      >>> y, updates = bn.apply(bn.init(jax.random.key(0), jnp.ones((4, 2))),
      ...                       jnp.arange(8.0).reshape(4, 2), mutable=["batch_stats"])
      >>> print(y.mean(0).round(4), updates["batch_stats"]["mean"])  # 0.9 * 0 + 0.1 * mean
      [0. 0.] [0.3 0.4]
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        axis_name=axis_name,
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or projection (1×1 conv + BN) shortcut.

    Attributes:
      features: output channels.
      strides: stride of the first convolution and of the projection.
      dtype: computation dtype.
      axis_name: BatchNorm's cross-replica axis, or ``None``.
      init_scheme: ``"flax"`` or ``"pytorch"`` (see
        :func:`~resetax.models.initializers.layer_initializers`).

    The activations of the first convolution's units (after BatchNorm and ReLU) are sown as
    ``"hidden"`` in the ``"intermediates"`` collection (see :meth:`ResNet.units`).

    Examples:
      >>> from resetax.models.resnet import BasicBlock
      >>> block = BasicBlock(features=8, strides=2)  # projection shortcut: 4 -> 8 channels
      >>> x = jnp.ones((1, 6, 6, 4))
      >>> variables = block.init(jax.random.key(0), x, train=False)
      >>> block.apply(variables, x, train=False).shape
      (1, 3, 3, 8)
    """

    features: int
    strides: int = 1
    dtype: Any = jnp.float32
    axis_name: str | None = None
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv(inputs, kernel_size, **kwargs):
            init = layer_initializers(self.init_scheme, conv_fan_in(inputs, kernel_size),
                                      flax_kernel=_conv_init)
            return nn.Conv(self.features, kernel_size, use_bias=False, dtype=self.dtype,
                           kernel_init=init["kernel_init"], **kwargs)(inputs)

        norm = functools.partial(batch_norm, train, self.dtype, self.axis_name)
        # Explicit symmetric padding: 'SAME' would pad a stride-2 conv asymmetrically.
        y = conv(x, (3, 3), strides=self.strides, padding=1)
        y = nn.relu(norm()(y))
        self.sow("intermediates", "hidden", y)
        y = conv(y, (3, 3), padding=1)
        y = norm()(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(x, (1, 1), strides=self.strides, padding=0)
            shortcut = norm()(shortcut)
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stride-1 stem, BasicBlock stages, global average pool, Dense.

    Stage ``i`` has ``stage_sizes[i]`` blocks of width ``num_filters * 2**i``; every stage after
    the first halves the resolution in its first block.

    Attributes:
      stage_sizes: blocks per stage, ``(2, 2, 2, 2)`` for ResNet-18, ``(3, 4, 6, 3)`` for 34.
      num_classes: outputs of the final Dense layer.
      num_filters: width of the stem and of the first stage.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32 and the logits
        are returned as float32.
      axis_name: BatchNorm's cross-replica axis under ``pmap``, or ``None``.
      init_scheme: ``"flax"`` (He normal convolutions, LeCun normal Dense, zero bias) or
        ``"pytorch"`` (PyTorch's defaults, see
        :func:`~resetax.models.initializers.layer_initializers`).

    Examples:
      >>> from resetax.models.resnet import ResNet
      >>> model = ResNet(stage_sizes=(1, 1), num_classes=10, num_filters=4)  # a tiny ResNet
      >>> x = jnp.zeros((2, 8, 8, 3))
      >>> variables = jax.jit(model.init)(jax.random.key(0), x)
      >>> model.apply(variables, x).shape, sorted(variables)
      ((2, 10), ['batch_stats', 'params'])

    References:
      He, Zhang, Ren & Sun, `Deep Residual Learning for Image Recognition
      <https://arxiv.org/abs/1512.03385>`_, 2016.
    """

    stage_sizes: Sequence[int]
    num_classes: int
    num_filters: int = 64
    dtype: Any = jnp.float32
    axis_name: str | None = None
    init_scheme: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Returns the logits ``float32 [N, num_classes]`` of images ``[N, H, W, C]``."""
        x = jnp.asarray(x, self.dtype)
        stem = layer_initializers(self.init_scheme, conv_fan_in(x, (3, 3)),
                                  flax_kernel=_conv_init)
        x = nn.Conv(
            self.num_filters,
            (3, 3),
            padding=1,
            use_bias=False,
            dtype=self.dtype,
            kernel_init=stem["kernel_init"],
        )(x)
        x = nn.relu(batch_norm(train, self.dtype, self.axis_name)(x))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = BasicBlock(
                    self.num_filters * 2**i,
                    strides=2 if i > 0 and j == 0 else 1,
                    dtype=self.dtype,
                    axis_name=self.axis_name,
                    init_scheme=self.init_scheme,
                )(x, train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype,
                     **layer_initializers(self.init_scheme, x.shape[-1]))(x)
        return jnp.asarray(x, jnp.float32)

    def units(self) -> dict[str, UnitWeights]:
        """The units inside the residual blocks, for :func:`resetax.recycle_dormant_units`.

        Unit ``j`` of block ``k``: incoming ``BasicBlock_k/Conv_0``'s output channel and
        ``BasicBlock_k/BatchNorm_0``'s scale and bias (its running statistics the model
        state), outgoing ``BasicBlock_k/Conv_1``'s input channel. The units of the residual
        stream (the stem's and each block's output channels) are left out: each is the sum of
        a block's output and its shortcut, so it has no incoming weights of its own, and its
        outgoing path includes the identity shortcut, which no weight can zero.

        Example:
          >>> from resetax.models.resnet import ResNet
          >>> units = ResNet(stage_sizes=(1, 1), num_classes=2, num_filters=4).units()
          >>> list(units), units["BasicBlock_1/hidden"].outgoing
          (['BasicBlock_0/hidden', 'BasicBlock_1/hidden'], ('BasicBlock_1/Conv_1/kernel',))
        """
        return {f"BasicBlock_{k}/hidden": unit_layer(
                    f"BasicBlock_{k}/Conv_0", "kernel", None, f"BasicBlock_{k}/BatchNorm_0",
                    f"BasicBlock_{k}/Conv_1/kernel")
                for k in range(sum(self.stage_sizes))}

    def normalized_layers(self) -> dict[str, UnitWeights]:
        """Every convolution with the BatchNorm after it, whose statistics a re-initialization
        of the convolution (or of the BatchNorm's scale and bias) resets
        (:func:`resetax.reinit_model_state`): the stem, both convolutions of each block and
        the projection shortcuts. Only those of :meth:`units` name outgoing weights.

        Example:
          >>> from resetax.models.resnet import ResNet
          >>> list(ResNet(stage_sizes=(1, 1), num_classes=2, num_filters=4).normalized_layers())
          ['stem', 'BasicBlock_0/hidden', 'BasicBlock_0/out', 'BasicBlock_1/hidden', \
'BasicBlock_1/out', 'BasicBlock_1/shortcut']
        """
        layers = {"stem": unit_layer("Conv_0", "kernel", None, "BatchNorm_0")}
        units = self.units()
        k = 0
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                block = f"BasicBlock_{k}"
                layers[f"{block}/hidden"] = units[f"{block}/hidden"]
                layers[f"{block}/out"] = unit_layer(f"{block}/Conv_1", "kernel", None,
                                                    f"{block}/BatchNorm_1")
                if i > 0 and j == 0:  # the stage's first block halves the resolution
                    layers[f"{block}/shortcut"] = unit_layer(f"{block}/Conv_2", "kernel", None,
                                                             f"{block}/BatchNorm_2")
                k += 1
        return layers


def resnet18(num_classes: int, **kwargs) -> ResNet:
    """CIFAR ResNet-18 (11.17M parameters for 10 classes).

    Args:
      num_classes: number of outputs.
      **kwargs: further :class:`ResNet` attributes (``dtype``, ``axis_name``, ``num_filters``).

    Returns:
      An unbound :class:`ResNet`.

    Examples:
      >>> from resetax import models
      >>> model = models.resnet18(10)
      >>> x = jnp.zeros((2, 32, 32, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> sum(p.size for p in jax.tree.leaves(variables["params"]))
      11173962
      >>> jax.eval_shape(model.apply, variables, x).shape
      (2, 10)
    """
    return ResNet(stage_sizes=(2, 2, 2, 2), num_classes=num_classes, **kwargs)


def resnet34(num_classes: int, **kwargs) -> ResNet:
    """CIFAR ResNet-34 (21.28M parameters for 10 classes), the paper's CIFAR model.

    Args:
      num_classes: number of outputs.
      **kwargs: further :class:`ResNet` attributes (``dtype``, ``axis_name``, ``num_filters``).

    Returns:
      An unbound :class:`ResNet`.

    Examples:
      >>> from resetax import models
      >>> model = models.resnet34(100)
      >>> shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> shapes["params"]["Dense_0"]["kernel"].shape
      (512, 100)
    """
    return ResNet(stage_sizes=(3, 4, 6, 3), num_classes=num_classes, **kwargs)
