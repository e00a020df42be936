"""Flax (linen) models for the paper's experiments, with a registry :func:`get_model`.

Every model is called as ``model.apply(variables, x, train=...)``: ``train=True`` normalizes with
batch statistics (``mutable=["batch_stats"]``) and enables dropout; ``train=False`` uses the
running averages. ``axis_name`` makes BatchNorm average its statistics across ``pmap`` replicas.
"""

from __future__ import annotations

import flax.linen as nn

from resetax.models.cnn1d import CNN1D
from resetax.models.initializers import INIT_SCHEMES
from resetax.models.mlp import MLP
from resetax.models.resnet import BasicBlock, ResNet, resnet18, resnet34
from resetax.models.vcnn import VCNN

_REGISTRY = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "vcnn": VCNN,
    "mlp": MLP,
    "cnn1d": CNN1D,
}

MODELS = tuple(_REGISTRY)
"""Names accepted by :func:`get_model`."""


def get_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds a model by name.

    Args:
      name: one of :data:`MODELS`: ``"resnet18"``, ``"resnet34"`` (CIFAR ResNets), ``"vcnn"``
        (the paper's small CNN), ``"mlp"``, ``"cnn1d"`` (for MNIST-1D).
      num_classes: number of outputs, a positive integer.
      **kwargs: further attributes of the model (``dtype``, ``axis_name``, widths...), among
        them ``init_scheme``: ``"flax"`` (the default) or ``"pytorch"`` (PyTorch's default
        initialization, :func:`~resetax.models.initializers.layer_initializers`).

    Returns:
      An unbound Flax module.

    Raises:
      ValueError: for an unknown ``name`` or a non-positive ``num_classes``.

    Examples:
      >>> from resetax import models
      >>> model = models.get_model("mlp", 10, hidden_sizes=(8,))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 40)))
      >>> sorted(variables)
      ['batch_stats', 'params']
    """
    if name not in _REGISTRY:
        raise ValueError(f"model name must be one of {MODELS}, got {name!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if "init_scheme" in kwargs and kwargs["init_scheme"] not in INIT_SCHEMES:
        raise ValueError(f"init_scheme must be one of {list(INIT_SCHEMES)}, got "
                         f"{kwargs['init_scheme']!r}.")
    return _REGISTRY[name](num_classes=num_classes, **kwargs)


__all__ = [
    "INIT_SCHEMES",
    "MODELS",
    "MLP",
    "VCNN",
    "BasicBlock",
    "CNN1D",
    "ResNet",
    "get_model",
    "resnet18",
    "resnet34",
]
