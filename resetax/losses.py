"""Robust classification losses for noisy labels, per example, from logits and integer labels.

Every loss is jittable and returns one value per example; average it for the training loss.
Shapes and dtypes are checked eagerly; label values are not (they may be traced), and labels
outside ``[0, C)`` give meaningless values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from resetax import _checks

__all__ = [
    "LOSSES",
    "ELRState",
    "LossFn",
    "cross_entropy",
    "elr_init",
    "elr_loss",
    "generalized_cross_entropy",
    "get_loss",
    "mean_absolute_error",
    "memoryless_elr",
    "nce_rce",
    "normalized_cross_entropy",
    "reverse_cross_entropy",
    "symmetric_cross_entropy",
    "truncated_gce_weights",
    "truncated_generalized_cross_entropy",
]

LossFn = Callable[[jax.Array, jax.Array], jax.Array]
"""A per-example loss ``fn(logits, labels) -> loss``, as returned by :func:`get_loss`."""

# Wang et al. (2019) replace log 0 by log 1e-4 in the reverse cross entropy and clip the
# predicted probabilities to [1e-7, 1]; Liu et al. (2020) clip them to [1e-4, 1 - 1e-4] in ELR.
_RCE_LOG_ZERO = math.log(1e-4)
_RCE_PROB_MIN = 1e-7
_ELR_PROB_CLIP = 1e-4


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Cross entropy of the softmax of ``logits`` with integer ``labels``.

    .. math::
      \ell(z, y) = -\log p_y, \qquad p = \operatorname{softmax}(z).

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
      >>> print(losses.cross_entropy(logits, jnp.array([0, 2])).round(4))  # log(e^2+2)-2, log 3
      [0.2395 1.0986]
    """
    return -_log_prob_of_label(logits, labels)


def mean_absolute_error(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Mean absolute error between the softmax and the one-hot label (Ghosh et al., 2017).

    .. math::
      \ell(z, y) = \lVert e_y - p \rVert_1 = 2 - 2 p_y, \qquad p = \operatorname{softmax}(z).

    MAE is symmetric, hence robust to symmetric noise, but slow to train.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.

    Returns:
      The per-example loss in ``[0, 2]``, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
      >>> print(losses.mean_absolute_error(logits, jnp.array([1])).round(4))
      [1.5]

    References:
      Ghosh, Kumar & Sastry, `Robust loss functions under label noise for deep neural networks
      <https://arxiv.org/abs/1712.09482>`_, 2017.
    """
    return 2.0 - 2.0 * jnp.exp(_log_prob_of_label(logits, labels))


def generalized_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, q: float | jax.Array = 0.7
) -> jax.Array:
    r"""Generalized cross entropy :math:`L_q` (Zhang & Sabuncu, 2018).

    .. math::
      L_q(z, y) = \frac{1 - p_y^q}{q}, \qquad p = \operatorname{softmax}(z),

    computed as :math:`-\operatorname{expm1}(q \log p_y) / q` so that extreme logits and small
    ``q`` stay accurate. It tends to the cross entropy as :math:`q \to 0` and equals half the
    MAE at :math:`q = 1`.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      q: exponent in ``(0, 1]``.

    Returns:
      The per-example loss in ``[0, 1/q]``, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.25, 0.75]]))
      >>> print(losses.generalized_cross_entropy(logits, jnp.array([0]), q=0.5).round(4))
      [1.]

    References:
      Zhang & Sabuncu, `Generalized cross entropy loss for training deep neural networks with
      noisy labels <https://arxiv.org/abs/1805.07836>`_, 2018.
    """
    _HPARAM_CHECKS["q"](q)
    return _lq_from_log_prob(_log_prob_of_label(logits, labels), q)


def truncated_gce_weights(
    logits: jax.Array, labels: jax.Array, *, k: float | jax.Array = 0.5
) -> jax.Array:
    r"""Per-example weights of the truncated :math:`L_q` loss: 1 where :math:`p_y > k`, else 0.

    Zhang & Sabuncu prune the samples whose predicted probability of their label is at most
    ``k`` (the likely noisy ones). Their algorithm recomputes these weights only every few
    epochs; store them in a per-sample buffer and pass them to
    :func:`truncated_generalized_cross_entropy` to do the same.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      k: threshold in ``[0, 1)``.

    Returns:
      Weights in ``{0, 1}`` with the dtype of ``logits``, shape ``[...]``, with no gradient.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.6, 0.4], [0.3, 0.7]]))
      >>> print(losses.truncated_gce_weights(logits, jnp.array([0, 0]), k=0.5))
      [1. 0.]

    References:
      Zhang & Sabuncu, `Generalized cross entropy loss for training deep neural networks with
      noisy labels <https://arxiv.org/abs/1805.07836>`_, 2018.
    """
    _HPARAM_CHECKS["k"](k)
    log_prob = jax.lax.stop_gradient(_log_prob_of_label(logits, labels))
    return (jnp.exp(log_prob) > k).astype(log_prob.dtype)


def truncated_generalized_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array | None = None,
    *,
    q: float | jax.Array = 0.7,
    k: float | jax.Array = 0.5,
) -> jax.Array:
    r"""Truncated generalized cross entropy (Zhang & Sabuncu, 2018).

    .. math::
      L_{\text{trunc}}(z, y) = w\, L_q(p_y) + (1 - w)\, L_q(k), \qquad
      L_q(s) = \frac{1 - s^q}{q},

    with the per-example weight :math:`w = [p_y > k]` (:func:`truncated_gce_weights`). With
    the weights of the current logits (``weights=None``) this is the paper's truncated loss:
    :math:`L_q(p_y)` where :math:`p_y > k` and the constant :math:`L_q(k)`, which carries no
    gradient, elsewhere. Passing weights kept from an earlier pruning step gives the paper's
    alternating optimization; its objective :math:`\sum_i w_i (L_q(p_{y_i}) - L_q(k))` differs
    from the sum of these values by a constant, so the gradients are the same.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      weights: optional per-example weights in ``[0, 1]``, shape ``[...]``; ``None`` computes
        them from ``logits``.
      q: exponent in ``(0, 1]``.
      k: pruning threshold in ``[0, 1)``.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.64, 0.36], [0.09, 0.91]]))
      >>> labels = jnp.array([0, 0])
      >>> print(losses.truncated_generalized_cross_entropy(logits, labels, q=0.5, k=0.25))
      [0.4 1. ]

    References:
      Zhang & Sabuncu, `Generalized cross entropy loss for training deep neural networks with
      noisy labels <https://arxiv.org/abs/1805.07836>`_, 2018.
    """
    _HPARAM_CHECKS["q"](q)
    _HPARAM_CHECKS["k"](k)
    log_prob = _log_prob_of_label(logits, labels)
    if weights is None:
        weights = truncated_gce_weights(logits, labels, k=k)
    else:
        weights = jnp.asarray(weights)
        if weights.shape != log_prob.shape:
            raise ValueError(
                f"weights must have the shape of labels, {log_prob.shape}; got {weights.shape}."
            )
    truncated = (1.0 - jnp.asarray(k, log_prob.dtype) ** q) / q
    return weights * _lq_from_log_prob(log_prob, q) + (1.0 - weights) * truncated


def reverse_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Reverse cross entropy: the prediction as target, the one-hot label as prediction.

    .. math::
      \ell(z, y) = -\sum_k \tilde p_k \log e_{y,k}
                 = -\log(10^{-4}) \sum_{k \ne y} \tilde p_k
                 \approx -\log(10^{-4})\,(1 - p_y),

    with :math:`\log 0` replaced by :math:`\log 10^{-4}` and
    :math:`\tilde p = \operatorname{clip}(\operatorname{softmax}(z), 10^{-7}, 1)`, as in Wang et
    al.'s code. The clipping changes the value by at most :math:`9.3 \cdot 10^{-7}\,(C - 1)`.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.5, 0.5]]))
      >>> print(losses.reverse_cross_entropy(logits, jnp.array([0])).round(4))  # log(1e4) / 2
      [4.6052]

    References:
      Wang, Ma, Chen, Luo, Yi & Bailey, `Symmetric cross entropy for robust learning with noisy
      labels <https://arxiv.org/abs/1908.06112>`_, 2019.
    """
    logits, labels = _prepare(logits, labels)
    probs = jnp.clip(jax.nn.softmax(logits, axis=-1), _RCE_PROB_MIN, 1.0)
    is_label = jnp.arange(logits.shape[-1]) == labels[..., None]
    return -_RCE_LOG_ZERO * jnp.sum(jnp.where(is_label, 0.0, probs), axis=-1)


def symmetric_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | jax.Array = 0.1,
    beta: float | jax.Array = 1.0,
) -> jax.Array:
    r"""Symmetric cross entropy (Wang et al., 2019): cross entropy plus reverse cross entropy.

    .. math::
      \ell(z, y) = \alpha\, \mathrm{CE}(z, y) + \beta\, \mathrm{RCE}(z, y),

    with RCE from :func:`reverse_cross_entropy`. The defaults are the paper's CIFAR-10 values;
    it uses :math:`\alpha = 6, \beta = 0.1` for CIFAR-100.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      alpha: weight of the cross entropy, >= 0.
      beta: weight of the reverse cross entropy, >= 0.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.log(jnp.array([[0.5, 0.5]]))
      >>> print(losses.symmetric_cross_entropy(logits, jnp.array([0]), alpha=1.0, beta=0.0))
      [0.6931...]

    References:
      Wang, Ma, Chen, Luo, Yi & Bailey, `Symmetric cross entropy for robust learning with noisy
      labels <https://arxiv.org/abs/1908.06112>`_, 2019.
    """
    _HPARAM_CHECKS["alpha"](alpha)
    _HPARAM_CHECKS["beta"](beta)
    return alpha * cross_entropy(logits, labels) + beta * reverse_cross_entropy(logits, labels)


def normalized_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Normalized cross entropy (Ma et al., 2020): the cross entropy over its sum over labels.

    .. math::
      \mathrm{NCE}(z, y) = \frac{-\log p_y}{-\sum_{k=1}^C \log p_k}
                         = \frac{\log p_y}{\sum_k \log p_k} \in [0, 1].

    The denominator is at least :math:`C \log C > 0`, so the ratio is always defined.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.zeros((1, 4))
      >>> print(losses.normalized_cross_entropy(logits, jnp.array([2])))  # 1 / C when uniform
      [0.25]

    References:
      Ma, Huang, Wang, Romano, Erfani & Bailey, `Normalized loss functions for deep learning
      with noisy labels <https://arxiv.org/abs/2006.13554>`_, 2020.
    """
    logits, labels = _prepare(logits, labels)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_prob = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    return log_prob / jnp.sum(log_probs, axis=-1)


def nce_rce(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float | jax.Array = 1.0,
    beta: float | jax.Array = 1.0,
) -> jax.Array:
    r"""NCE+RCE (Ma et al., 2020): an active-passive pair of normalized losses.

    .. math::
      \ell(z, y) = \alpha\, \mathrm{NCE}(z, y) + \beta\, \mathrm{RCE}(z, y),

    with :func:`normalized_cross_entropy` and :func:`reverse_cross_entropy`. The defaults are
    the paper's CIFAR-10 values; it uses :math:`\alpha = 10, \beta = 0.1` for CIFAR-100.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      alpha: weight of the normalized cross entropy, >= 0.
      beta: weight of the reverse cross entropy, >= 0.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits = jnp.zeros((1, 4))
      >>> print(losses.nce_rce(logits, jnp.array([2]), beta=0.0))
      [0.25]

    References:
      Ma, Huang, Wang, Romano, Erfani & Bailey, `Normalized loss functions for deep learning
      with noisy labels <https://arxiv.org/abs/2006.13554>`_, 2020.
    """
    _HPARAM_CHECKS["alpha"](alpha)
    _HPARAM_CHECKS["beta"](beta)
    return alpha * normalized_cross_entropy(logits, labels) + beta * reverse_cross_entropy(
        logits, labels
    )


class ELRState(NamedTuple):
    """State of the early-learning regularizer.

    Attributes:
      targets: ``[num_samples, C]`` running average of each training sample's predicted class
        probabilities, indexed by the sample's position in the training set; all zeros at the
        start.

    Examples:
      >>> from resetax import losses
      >>> state = losses.elr_init(num_samples=4, num_classes=3)
      >>> state.targets.shape, float(state.targets.sum())
      ((4, 3), 0.0)
    """

    targets: jax.Array


def elr_init(num_samples: int, num_classes: int, dtype: Any = jnp.float32) -> ELRState:
    """The initial :class:`ELRState`: all-zero targets for ``num_samples`` training samples.

    Args:
      num_samples: size of the training set, >= 1.
      num_classes: number of classes, >= 2.
      dtype: floating dtype of the targets.

    Returns:
      An :class:`ELRState` with ``targets`` of shape ``[num_samples, num_classes]``.

    Examples:
      >>> from resetax import losses
      >>> losses.elr_init(5, 3).targets.shape
      (5, 3)
    """
    _checks.positive_int("num_samples", num_samples)
    _checks.int_at_least("num_classes", num_classes, 2)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype; got {dtype!r}.")
    return ELRState(targets=jnp.zeros((num_samples, num_classes), dtype))


def elr_loss(
    logits: jax.Array,
    labels: jax.Array,
    indices: jax.Array,
    state: ELRState,
    *,
    lam: float | jax.Array = 3.0,
    beta: float | jax.Array = 0.7,
) -> tuple[jax.Array, ELRState]:
    r"""Cross entropy with early-learning regularization (Liu et al., 2020).

    For sample :math:`i` of the batch with logits :math:`z_i`,

    .. math::
      \tilde p_i &= \operatorname{clip}(\operatorname{softmax}(z_i), 10^{-4}, 1 - 10^{-4}) \\
      t_i &\leftarrow \beta\, t_i + (1 - \beta)\,
            \operatorname{sg}\!\Big(\tilde p_i \big/ \textstyle\sum_k \tilde p_{ik}\Big) \\
      \ell_i &= \mathrm{CE}(z_i, y_i) + \lambda \log\big(1 - \langle t_i, \tilde p_i \rangle\big),

    where :math:`\operatorname{sg}` stops the gradient and :math:`t_i` is the running target of
    training sample ``indices[i]``, updated before the loss is taken, as in the authors' code.
    The clipping keeps :math:`1 - \langle t_i, \tilde p_i \rangle \ge 10^{-4}`. The defaults
    are the paper's CIFAR-10 values; it uses :math:`\lambda = 7, \beta = 0.9` for CIFAR-100.

    .. warning::
      ``indices`` must be distinct within a batch and lie in ``[0, num_samples)``: repeated
      indices keep one of their updates, out-of-range ones are not checked under ``jit``.

    Args:
      logits: array of shape ``[B, C]``.
      labels: integer array of shape ``[B]`` with values in ``[0, C)``.
      indices: integer array of shape ``[B]``, each sample's position in the training set.
      state: the :class:`ELRState` from :func:`elr_init` or the previous step.
      lam: regularization strength :math:`\lambda`, >= 0.
      beta: momentum of the targets, in ``[0, 1)``.

    Returns:
      ``(loss, new_state)``: the per-example loss of shape ``[B]`` and the state with the
      batch's targets updated.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from resetax import losses
      >>> state = losses.elr_init(num_samples=4, num_classes=2)
      >>> logits, labels, indices = jnp.zeros((2, 2)), jnp.array([0, 1]), jnp.array([3, 1])
      >>> loss, state = jax.jit(losses.elr_loss)(logits, labels, indices, state)
      >>> print(state.targets)  # (1 - beta) * uniform, for samples 3 and 1 only
      [[0.   0.  ]
       [0.15 0.15]
       [0.   0.  ]
       [0.15 0.15]]
      >>> print(loss.round(4))  # log 2 + 3 log(1 - 0.15)
      [0.2056 0.2056]

    References:
      Liu, Niles-Weed, Razavian & Fernandez-Granda, `Early-learning regularization prevents
      memorization of noisy labels <https://arxiv.org/abs/2007.00151>`_, 2020.
    """
    _checks.finite_nonnegative("lam", lam)
    _checks.interval("beta", beta, 0, 1, open_high=True)
    logits, labels = _prepare(logits, labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape [B, C]; got {logits.shape}.")
    indices = jnp.asarray(indices)
    if indices.shape != labels.shape or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(
            f"indices must be integers shaped like labels, {labels.shape}; got "
            f"dtype {indices.dtype}, shape {indices.shape}."
        )
    if state.targets.ndim != 2 or state.targets.shape[1] != logits.shape[1]:
        raise ValueError(
            f"state.targets must have shape [num_samples, {logits.shape[1]}]; got "
            f"{state.targets.shape}."
        )
    probs = jnp.clip(jax.nn.softmax(logits, axis=-1), _ELR_PROB_CLIP, 1.0 - _ELR_PROB_CLIP)
    normalized = jax.lax.stop_gradient(probs / jnp.sum(probs, axis=-1, keepdims=True))
    old_targets = state.targets[indices]
    targets = beta * old_targets + (1.0 - beta) * normalized.astype(old_targets.dtype)
    new_state = ELRState(targets=state.targets.at[indices].set(targets))
    agreement = jnp.sum(targets.astype(probs.dtype) * probs, axis=-1)
    loss = cross_entropy(logits, labels) + lam * jnp.log(1.0 - agreement)
    return loss, new_state


def memoryless_elr(
    logits: jax.Array,
    labels: jax.Array,
    *,
    lam: float | jax.Array = 3.0,
    beta: float | jax.Array = 0.7,
) -> jax.Array:
    r"""ELR with its targets reset to zero at every step, as the paper's official code runs it.

    :func:`elr_loss` of an all-zero target buffer, without state:

    .. math::
      \ell = \mathrm{CE}(z, y) + \lambda \log\big(1 - (1 - \beta)\,
             \langle \operatorname{sg}(\hat p), \tilde p \rangle\big),
      \qquad \hat p = \tilde p \big/ \textstyle\sum_k \tilde p_k,

    with :math:`\tilde p` the softmax clipped to :math:`[10^{-4}, 1 - 10^{-4}]`. The official
    code builds its ELR loss object, and with it the target buffer, anew at every step
    (PARITY.md, D5), so the regularizer has no memory of earlier predictions. Liu et al.'s ELR,
    with memory, is :func:`elr_loss`.

    Args:
      logits: array of shape ``[..., C]``.
      labels: integer array of shape ``[...]`` with values in ``[0, C)``.
      lam: regularization strength :math:`\lambda`, >= 0.
      beta: target momentum, in ``[0, 1)``.

    Returns:
      The per-example loss, shape ``[...]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from resetax import losses
      >>> logits, labels = jnp.zeros((2, 2)), jnp.array([0, 1])
      >>> print(losses.memoryless_elr(logits, labels).round(4))  # log 2 + 3 log(1 - 0.15)
      [0.2056 0.2056]
      >>> first, _ = losses.elr_loss(logits, labels, jnp.arange(2), losses.elr_init(2, 2))
      >>> bool(jnp.allclose(first, losses.memoryless_elr(logits, labels)))  # ELR's first step
      True
    """
    _HPARAM_CHECKS["lam"](lam)
    _HPARAM_CHECKS["elr_beta"](beta)
    logits, labels = _prepare(logits, labels)
    probs = jnp.clip(jax.nn.softmax(logits, axis=-1), _ELR_PROB_CLIP, 1.0 - _ELR_PROB_CLIP)
    targets = (1.0 - beta) * jax.lax.stop_gradient(probs / jnp.sum(probs, axis=-1, keepdims=True))
    agreement = jnp.sum(targets * probs, axis=-1)
    return cross_entropy(logits, labels) + lam * jnp.log(1.0 - agreement)


LOSSES = ("ce", "mae", "gce", "truncated_gce", "sce", "nce_rce", "elr_official")
"""Names accepted by :func:`get_loss`. ELR keeps per-sample state: see :func:`elr_loss`."""

_REGISTRY: dict[str, tuple[Callable[..., jax.Array], tuple[str, ...]]] = {
    "ce": (cross_entropy, ()),
    "mae": (mean_absolute_error, ()),
    "gce": (generalized_cross_entropy, ("q",)),
    "truncated_gce": (truncated_generalized_cross_entropy, ("q", "k")),
    "sce": (symmetric_cross_entropy, ("alpha", "beta")),
    "nce_rce": (nce_rce, ("alpha", "beta")),
    "elr_official": (memoryless_elr, ("lam", "beta")),
}


def get_loss(name: str, **hparams: Any) -> LossFn:
    """The per-example loss named ``name``, with its hyperparameters bound.

    ===================  ==============================================  ==================
    ``name``             function                                        hyperparameters
    ===================  ==============================================  ==================
    ``ce``               :func:`cross_entropy`
    ``mae``              :func:`mean_absolute_error`
    ``gce``              :func:`generalized_cross_entropy`               ``q``
    ``truncated_gce``    :func:`truncated_generalized_cross_entropy`     ``q``, ``k``
    ``sce``              :func:`symmetric_cross_entropy`                 ``alpha``, ``beta``
    ``nce_rce``          :func:`nce_rce`                                 ``alpha``, ``beta``
    ``elr_official``     :func:`memoryless_elr`                          ``lam``, ``beta``
    ===================  ==============================================  ==================

    Hyperparameters left out take the function's defaults. ``truncated_gce`` here computes
    its weights from the current logits.

    Args:
      name: one of :data:`LOSSES`.
      **hparams: hyperparameters of that loss (table above), checked now.

    Returns:
      A function ``fn(logits, labels) -> per-example loss``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from resetax import losses
      >>> loss_fn = losses.get_loss("gce", q=0.5)
      >>> logits = jnp.log(jnp.array([[0.25, 0.75]]))
      >>> print(jax.jit(loss_fn)(logits, jnp.array([0])).mean())
      1.0
    """
    if name == "elr":
        raise ValueError(
            f"name must be one of {list(LOSSES)}, got 'elr'. ELR keeps per-sample state: use "
            "elr_init and elr_loss.")
    _checks.one_of("name", name, LOSSES)
    fn, accepted = _REGISTRY[name]
    unexpected = sorted(set(hparams) - set(accepted))
    if unexpected:
        raise ValueError(
            f"loss {name!r} takes hyperparameters {accepted or '()'}; got unexpected {unexpected}."
        )
    for key, value in hparams.items():
        # ELR's beta is a momentum in [0, 1); the others' beta is a weight >= 0.
        _HPARAM_CHECKS["elr_beta" if (name, key) == ("elr_official", "beta") else key](value)
    return functools.partial(fn, **hparams)


_HPARAM_CHECKS: dict[str, Callable[[Any], None]] = {
    "q": functools.partial(_checks.interval, "q", low=0, high=1, open_low=True),
    "k": functools.partial(_checks.interval, "k", low=0, high=1, open_high=True),
    "alpha": functools.partial(_checks.finite_nonnegative, "alpha"),
    "beta": functools.partial(_checks.finite_nonnegative, "beta"),
    "lam": functools.partial(_checks.finite_nonnegative, "lam"),
    "elr_beta": functools.partial(_checks.interval, "beta", low=0, high=1, open_high=True),
}


def _prepare(logits: Any, labels: Any) -> tuple[jax.Array, jax.Array]:
    """Converts to arrays and checks the shapes and the label dtype, which are static."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim < 1 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(
            f"logits must be a floating array of shape [..., C]; got dtype {logits.dtype}, "
            f"shape {logits.shape}."
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have shape logits.shape[:-1] = {logits.shape[:-1]}; got {labels.shape}."
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
    return logits, labels


def _log_prob_of_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
    logits, labels = _prepare(logits, labels)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def _lq_from_log_prob(log_prob: jax.Array, q: float | jax.Array) -> jax.Array:
    # (1 - p^q) / q = -expm1(q log p) / q: no cancellation when p^q is near 1 or q is small.
    return -jnp.expm1(q * log_prob) / q
