r"""Diagnostics of training on noisy labels: latent gradient bias, memorization, Péclet number.

The measurements of Bae, Song & Jeong (2025, §2 and §6) for any model given as ``apply_fn(params,
x) -> logits`` and any per-example loss ``loss_fn(logits, labels)``: the split of the gradient into
its correct- and wrong-label parts, memorization fractions, the distance to the resetting
checkpoint, and an effective Péclet number that says whether resetting should help (§4). Everything
is jitted and works through a training set in chunks, so the whole set need not fit in one batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resetax import _checks, theory
from resetax._trees import is_masked, path_name

__all__ = [
    "CheckpointDistance",
    "GradientAlignment",
    "GradientDecomposition",
    "GradientStatistics",
    "MemorizationFractions",
    "PecletEstimate",
    "decompose_gradients",
    "distance_to_checkpoint",
    "estimate_peclet",
    "estimate_peclet_from_trajectory",
    "gradient_statistics",
    "layer_name",
    "memorization_fractions",
    "to_floats",
]

Params = Any
ApplyFn = Callable[[Params, Any], jax.Array]
LossFn = Callable[[jax.Array, Any], jax.Array]
KeyPath = Sequence[Any]


class GradientAlignment(NamedTuple):
    """Norms and cosines of the total, correct-label and wrong-label gradients.

    A cosine with a zero vector (e.g. the wrong part when no sample is noisy) is defined as 0.

    Attributes:
      norm_total: :math:`\\lVert\\nabla\\hat R\\rVert_2` of the total gradient.
      norm_correct: :math:`\\lVert\\nabla\\hat R_c\\rVert_2` of the correct-label part.
      norm_wrong: :math:`\\lVert\\nabla\\hat R_w\\rVert_2` of the wrong-label part.
      cos_cw: Cosine between the correct and the wrong parts.
      cos_tw: Cosine between the total gradient and the wrong part.
      cos_tc: Cosine between the total gradient and the correct part.

    Examples:
      >>> apply_fn = lambda p, x: x @ p["w"]
      >>> loss_fn = resetax.losses.get_loss("ce")
      >>> x, params = jnp.eye(2), {"w": jnp.zeros((2, 2))}
      >>> out = resetax.diagnostics.decompose_gradients(  # sample 1 labelled 0 but is class 1
      ...     apply_fn, loss_fn, params, x, jnp.array([0, 0]), jnp.array([False, True]))
      >>> a = out.overall
      >>> print(round(float(a.norm_correct), 4), round(float(a.norm_wrong), 4), float(a.cos_cw))
      0.3536 0.3536 0.0
    """

    norm_total: jax.Array
    norm_correct: jax.Array
    norm_wrong: jax.Array
    cos_cw: jax.Array
    cos_tw: jax.Array
    cos_tc: jax.Array


class GradientDecomposition(NamedTuple):
    """Result of :func:`decompose_gradients`.

    Attributes:
      total: Gradient of the mean loss over all :math:`n` samples (a tree like ``params``).
      correct: Gradient of the sum of the losses of the clean samples, divided by :math:`n`.
      wrong: Gradient of the sum of the losses of the noisy samples, divided by :math:`n`.
      overall: :class:`GradientAlignment` of the whole parameter vector.
      layers: ``{layer: GradientAlignment}`` per layer, the layers named by ``layer_fn``.

    Examples:
      >>> apply_fn = lambda p, x: x @ p["Dense_0"]["kernel"]
      >>> loss_fn = resetax.losses.get_loss("ce")
      >>> params = {"Dense_0": {"kernel": jnp.zeros((2, 2))}}
      >>> out = resetax.diagnostics.decompose_gradients(
      ...     apply_fn, loss_fn, params, jnp.eye(2), jnp.array([0, 0]), jnp.array([False, True]))
      >>> total = out.correct["Dense_0"]["kernel"] + out.wrong["Dense_0"]["kernel"]
      >>> bool(jnp.allclose(total, out.total["Dense_0"]["kernel"])), list(out.layers)
      (True, ['Dense_0'])
    """

    total: Params
    correct: Params
    wrong: Params
    overall: GradientAlignment
    layers: dict[str, GradientAlignment]


class MemorizationFractions(NamedTuple):
    """Result of :func:`memorization_fractions`.

    The first two fractions are over the clean samples and sum to 1, the last three over the noisy
    samples and sum to 1; an empty group has all its fractions 0 (tell it by its count).

    Attributes:
      clean_correct: Clean samples predicted as their (true) label.
      clean_wrong: Clean samples predicted as another class.
      noisy_true: Noisy samples predicted as their true label.
      noisy_memorized: Noisy samples predicted as their noisy label: memorized.
      noisy_neither: Noisy samples predicted as a third class.
      num_clean: Number of clean samples (``int32``).
      num_noisy: Number of noisy samples (``int32``).

    Examples:
      >>> logits = jax.nn.one_hot(jnp.array([0, 2, 1]), 3)  # predicts 0, 2, 1
      >>> f = resetax.diagnostics.memorization_fractions(
      ...     logits, jnp.array([0, 2, 2]), jnp.array([0, 1, 1]))  # samples 1 and 2 are noisy
      >>> print(float(f.clean_correct), float(f.noisy_memorized), float(f.noisy_true))
      1.0 0.5 0.5
    """

    clean_correct: jax.Array
    clean_wrong: jax.Array
    noisy_true: jax.Array
    noisy_memorized: jax.Array
    noisy_neither: jax.Array
    num_clean: jax.Array
    num_noisy: jax.Array


class CheckpointDistance(NamedTuple):
    """Result of :func:`distance_to_checkpoint`.

    Attributes:
      overall: L2 distance over all leaves the checkpoint holds.
      layers: ``{layer: distance}`` for each layer with at least one such leaf.

    Examples:
      >>> d = resetax.diagnostics.distance_to_checkpoint(
      ...     {"a": {"w": jnp.array([3.0, 4.0])}}, {"a": {"w": jnp.zeros(2)}})
      >>> print(float(d.overall), {k: float(v) for k, v in d.layers.items()})
      5.0 {'a': 5.0}
    """

    overall: jax.Array
    layers: dict[str, jax.Array]


class GradientStatistics(NamedTuple):
    """Result of :func:`gradient_statistics`.

    Attributes:
      mean: Mean per-sample gradient :math:`g` (the full-batch gradient), a tree like ``params``.
      mean_norm: :math:`\\lVert g\\rVert_2`.
      projected_variance: :math:`u^\\top\\Sigma u` with :math:`u = g/\\lVert g\\rVert` and
        :math:`\\Sigma` the per-sample gradient covariance over the set (0 when :math:`g = 0`).

    Examples:
      >>> a = jnp.array([[1.0], [3.0]])  # per-sample gradients w - a_i at w = 0: -1 and -3
      >>> apply_fn, loss_fn = lambda w, x: w - x, lambda z, y: 0.5 * jnp.sum(z**2, axis=-1)
      >>> s = resetax.diagnostics.gradient_statistics(apply_fn, loss_fn, jnp.zeros(1), a, a[:, 0])
      >>> print(s.mean, float(s.mean_norm))
      [-2.] 2.0
    """

    mean: Params
    mean_norm: jax.Array
    projected_variance: jax.Array


class PecletEstimate(NamedTuple):
    """Result of :func:`estimate_peclet` and :func:`estimate_peclet_from_trajectory`.

    Attributes:
      peclet: Effective Péclet number :math:`\\mathrm{Pe} = Lv/(2D)`.
      drift: Velocity :math:`v` toward the target, distance per unit time.
      diffusion: 1-D diffusion coefficient :math:`D` along the drift, distance² per unit time
        (an increment over time :math:`\\Delta t` has variance :math:`2D\\Delta t`).
      distance: Distance :math:`L` from the reset point to the target.
      reset_rate: Optimal reset rate :math:`\\gamma^*` per unit time
        (:func:`resetax.theory.optimal_reset_rate`), 0 when :math:`\\mathrm{Pe} \\ge 1`.
      reset_prob: Suggested reset probability per step, :math:`1 - e^{-\\gamma^*\\Delta t}`.

    Examples:
      >>> x = jnp.array([0.0, 1.0, 0.0, 1.0, 0.0])[:, None]  # no drift toward the target
      >>> est = resetax.diagnostics.estimate_peclet_from_trajectory(x, target=jnp.ones(1))
      >>> print(float(est.drift), float(est.distance), float(est.peclet))
      0.0 1.0 0.0
    """

    peclet: jax.Array
    drift: jax.Array
    diffusion: jax.Array
    distance: jax.Array
    reset_rate: jax.Array
    reset_prob: jax.Array


def layer_name(path: KeyPath) -> str:
    """Names the layer of a parameter leaf: its path without the last key, joined by ``/``.

    In a Flax params tree a leaf's last key is the parameter (``kernel``, ``bias``, ``scale``) and
    the keys before it are the module, so ``Dense_0/kernel`` and ``Dense_0/bias`` form the layer
    ``Dense_0`` and a nested ``BasicBlock_0/Conv_0/kernel`` the layer ``BasicBlock_0/Conv_0``. A
    leaf at the top level is its own layer. BatchNorm scales and biases form layers too. Pass
    another function of the key path as ``layer_fn`` to group differently.

    Args:
      path: A key path, as given by ``jax.tree_util.tree_flatten_with_path``.

    Returns:
      The layer's name.

    Examples:
      >>> params = {"Dense_0": {"bias": jnp.zeros(2), "kernel": jnp.zeros((3, 2))}, "w": 1.0}
      >>> paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
      >>> print([resetax.diagnostics.layer_name(p) for p in paths])
      ['Dense_0', 'Dense_0', 'w']
    """
    return path_name(path[:-1] if len(path) > 1 else path)


def decompose_gradients(
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    params: Params,
    inputs: Any,
    labels: jax.Array,
    is_noisy: jax.Array,
    *,
    chunk_size: int | None = None,
    layer_fn: Callable[[KeyPath], str] = layer_name,
) -> GradientDecomposition:
    r"""Splits the training gradient into its correct-label part and its latent gradient bias.

    With :math:`n` samples, :math:`C` the clean and :math:`W` the noisy ones,

    .. math::
      \nabla\hat R = \frac1n\sum_{i=1}^n \nabla\ell_i, \quad
      \nabla\hat R_c = \frac1n\sum_{i\in C} \nabla\ell_i = \frac{n_c}{n}\nabla R_c, \quad
      \nabla\hat R_w = \frac1n\sum_{i\in W} \nabla\ell_i = \frac{n_w}{n}\nabla R_w,

    so :math:`\nabla\hat R = \nabla\hat R_c + \nabla\hat R_w`; :math:`-\nabla\hat R_w` is the
    latent gradient bias. The three are computed independently (one forward pass and three
    backward passes per chunk), so their sum checks the arithmetic. Norms and the cosines
    :math:`\cos_{cw}, \cos_{tw}, \cos_{tc}` are reported per layer (see :func:`layer_name`) and
    for all parameters together. The samples are processed ``chunk_size`` at a time in a
    ``lax.scan`` (sliced in place; when ``chunk_size`` does not divide :math:`n`, the last
    chunk is the last ``chunk_size`` samples, those seen before weighted 0).

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` for a chunk ``x`` of inputs. Close over the rest
        of the model's variables, e.g. ``lambda p, x: model.apply({"params": p, "batch_stats":
        bs}, x, train=False)``.
      loss_fn: Per-example loss ``loss_fn(logits, labels) -> [chunk]``, e.g.
        ``resetax.losses.get_loss("ce")``.
      params: The parameters to differentiate.
      inputs: Array (or tree of arrays) with a leading axis of :math:`n` samples.
      labels: The training (noisy) labels, leading axis :math:`n`.
      is_noisy: Bool array ``[n]``, True where the training label is wrong.
      chunk_size: Samples per forward/backward pass (default: all :math:`n` at once).
      layer_fn: Names the layer of a leaf from its key path.

    Returns:
      A :class:`GradientDecomposition`.

    Examples:
      >>> apply_fn = lambda p, x: x @ p["Dense_0"]["kernel"]
      >>> loss_fn = resetax.losses.get_loss("ce")
      >>> x, w = jnp.eye(4, 3), {"Dense_0": {"kernel": jnp.zeros((3, 3))}}  # x[3] = 0
      >>> labels, is_noisy = jnp.array([0, 1, 2, 0]), jnp.array([False, False, False, True])
      >>> out = resetax.diagnostics.decompose_gradients(
      ...     apply_fn, loss_fn, w, x, labels, is_noisy, chunk_size=2)
      >>> print(round(float(out.layers["Dense_0"].cos_cw), 4), float(out.overall.norm_wrong))
      0.0 0.0

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.

    .. warning::
      With a model whose output depends on the whole batch (BatchNorm with ``train=True``), the
      chunk is the batch that normalizes: chunked and unchunked results then differ. Use
      ``train=False`` for whole-set measurements, or a ``chunk_size`` that divides :math:`n`.
    """
    n = _num_samples(inputs)
    _checks.leading_axis("labels", labels, n)
    _checks.leading_axis("is_noisy", is_noisy, n)
    if jnp.ndim(is_noisy) != 1 or jnp.result_type(is_noisy) != jnp.bool_:
        raise ValueError(
            f"is_noisy must be a 1-D bool array, got {jnp.result_type(is_noisy)}"
            f"{jnp.shape(is_noisy)}.")
    chunk_size = _chunk_size(chunk_size, n)
    num_classes = _num_classes(apply_fn, params, inputs, labels, chunk_size)
    if num_classes is not None:
        _checks.label_range("labels", labels, num_classes)
    return _decompose(apply_fn, loss_fn, params, inputs, labels, is_noisy, chunk_size, layer_fn)


@functools.partial(jax.jit, static_argnums=(0, 1, 6, 7))
def _decompose(apply_fn, loss_fn, params, inputs, labels, is_noisy, chunk_size, layer_fn):
    n = _num_samples(inputs)
    noisy = is_noisy.astype(jnp.result_type(*jax.tree.leaves(params), jnp.float32))
    weights = jnp.stack([jnp.ones_like(noisy), 1 - noisy, noisy], axis=1) / n
    grads = _weighted_grads(apply_fn, loss_fn, params, inputs, labels, weights, chunk_size)
    total, correct, wrong = (jax.tree.map(lambda g, k=k: g[k], grads) for k in range(3))
    squares = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
        t, c, w = (leaf[k].reshape(-1).astype(jnp.result_type(leaf, jnp.float32))
                   for k in range(3))
        dots = jnp.stack([t @ t, c @ c, w @ w, c @ w, t @ w, t @ c])
        name = layer_fn(path)
        squares[name] = squares[name] + dots if name in squares else dots
    layers = {name: _stats(dots) for name, dots in squares.items()}
    overall = _stats(sum(squares.values()))
    return GradientDecomposition(total, correct, wrong, overall, layers)


def memorization_fractions(
    predictions: jax.Array,
    noisy_labels: jax.Array,
    clean_labels: jax.Array,
    *,
    num_classes: int | None = None,
) -> MemorizationFractions:
    r"""Fractions of clean samples fit and of noisy samples memorized, from predictions.

    A sample is clean when its training label equals its true label. Over the clean samples:
    predicted right or wrong. Over the noisy ones: predicted as the true label, as the noisy
    training label (memorized), or as neither. Each group's fractions sum to 1; an empty group
    has all its fractions 0 and count 0.

    Args:
      predictions: Predicted classes ``[n]`` (int), or logits ``[n, C]`` (their argmax is used).
      noisy_labels: The training labels ``[n]``.
      clean_labels: The true labels ``[n]``.
      num_classes: Number of classes, for the range check (default: ``C`` of the logits).

    Returns:
      A :class:`MemorizationFractions`.

    Examples:
      >>> noisy, clean = jnp.array([0, 1, 2, 2]), jnp.array([0, 1, 1, 0])
      >>> f = resetax.diagnostics.memorization_fractions(noisy, noisy, clean)
      >>> print(float(f.clean_correct), float(f.noisy_memorized), int(f.num_noisy))
      1.0 1.0 2

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    noisy_labels = _as_array(noisy_labels)
    clean_labels = _as_array(clean_labels)
    predictions = _as_array(predictions)
    for name, value in (("noisy_labels", noisy_labels), ("clean_labels", clean_labels)):
        if value.ndim != 1 or not jnp.issubdtype(value.dtype, jnp.integer):
            raise ValueError(f"{name} must be a 1-D int array, got {value.dtype}{value.shape}.")
    n = noisy_labels.shape[0]
    _checks.leading_axis("clean_labels", clean_labels, n)
    if predictions.ndim == 2:
        num_classes = predictions.shape[1] if num_classes is None else num_classes
    elif predictions.ndim != 1 or not jnp.issubdtype(predictions.dtype, jnp.integer):
        raise ValueError(
            f"predictions must be int [n] or logits [n, C], got {predictions.dtype}"
            f"{predictions.shape}.")
    _checks.leading_axis("predictions", predictions, n)
    if predictions.ndim == 2 and predictions.shape[1] != num_classes:
        raise ValueError(f"predictions has {predictions.shape[1]} classes, not {num_classes}.")
    for name, value in (("noisy_labels", noisy_labels), ("clean_labels", clean_labels),
                        ("predictions", predictions if predictions.ndim == 1 else None)):
        if value is not None:
            _checks.label_range(name, value, num_classes)
    return _memorization(predictions, noisy_labels, clean_labels)


@jax.jit
def _memorization(predictions, noisy_labels, clean_labels):
    if predictions.ndim == 2:
        predictions = jnp.argmax(predictions, axis=-1)
    noisy = noisy_labels != clean_labels
    clean = ~noisy
    as_true = predictions == clean_labels
    as_noisy = predictions == noisy_labels
    num_clean = clean.sum(dtype=jnp.int32)
    num_noisy = noisy.sum(dtype=jnp.int32)

    def fraction(hit, group, count):
        return (hit & group).sum(dtype=jnp.float32) / jnp.maximum(count, 1).astype(jnp.float32)

    return MemorizationFractions(
        clean_correct=fraction(as_true, clean, num_clean),
        clean_wrong=fraction(~as_true, clean, num_clean),
        noisy_true=fraction(as_true, noisy, num_noisy),
        noisy_memorized=fraction(as_noisy, noisy, num_noisy),
        noisy_neither=fraction(~as_true & ~as_noisy, noisy, num_noisy),
        num_clean=num_clean,
        num_noisy=num_noisy,
    )


def distance_to_checkpoint(
    params: Params,
    checkpoint: Params,
    *,
    layer_fn: Callable[[KeyPath], str] = layer_name,
) -> CheckpointDistance:
    r"""L2 distance of the parameters to the resetting checkpoint, per layer and overall.

    .. math::
      d = \lVert\theta - \theta_c\rVert_2 \quad\text{over the leaves the checkpoint holds};

    leaves that never reset are ``optax.MaskedNode`` in the checkpoint and are skipped.

    Args:
      params: The current parameters.
      checkpoint: The checkpoint, e.g. ``resetax.find_resetting_state(opt_state).checkpoint``:
        the structure of ``params``, with ``optax.MaskedNode`` on leaves that never reset.
      layer_fn: Names the layer of a leaf from its key path (see :func:`layer_name`).

    Returns:
      A :class:`CheckpointDistance` (``overall`` is 0 when every leaf is masked).

    Examples:
      >>> params = {"a": {"w": jnp.array([3.0, 4.0])}, "b": {"w": jnp.ones(2)}}
      >>> ckpt = {"a": {"w": jnp.zeros(2)}, "b": {"w": optax.MaskedNode()}}
      >>> d = resetax.diagnostics.distance_to_checkpoint(params, ckpt)
      >>> print(float(d.overall), list(d.layers))
      5.0 ['a']
    """
    flat_params, treedef = jax.tree_util.tree_flatten_with_path(params)
    flat_ckpt, ckpt_def = jax.tree_util.tree_flatten_with_path(checkpoint, is_leaf=is_masked)
    if [p for p, _ in flat_params] != [p for p, _ in flat_ckpt]:
        raise ValueError(
            f"checkpoint must have the structure of params (MaskedNode allowed on leaves): "
            f"got {ckpt_def}, expected {treedef}.")
    for (path, x), (_, c) in zip(flat_params, flat_ckpt, strict=True):
        if not is_masked(c) and jnp.shape(x) != jnp.shape(c):
            raise ValueError(
                f"checkpoint leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(c)}, "
                f"params has {jnp.shape(x)}.")
    pairs = [(layer_fn(p), x, c) for (p, x), (_, c) in zip(flat_params, flat_ckpt, strict=True)
             if not is_masked(c)]
    return _distance(tuple(name for name, _, _ in pairs), [(x, c) for _, x, c in pairs])


@functools.partial(jax.jit, static_argnums=0)
def _distance(names, pairs):
    squares = {}
    for name, (x, c) in zip(names, pairs, strict=True):
        diff = (jnp.asarray(x, jnp.float32) - jnp.asarray(c, jnp.float32)).reshape(-1)
        squares[name] = squares.get(name, 0.0) + diff @ diff
    overall = jnp.sqrt(sum(squares.values(), jnp.zeros((), jnp.float32)))
    return CheckpointDistance(overall, {k: jnp.sqrt(v) for k, v in squares.items()})


def gradient_statistics(
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    params: Params,
    inputs: Any,
    labels: jax.Array,
    *,
    chunk_size: int | None = None,
) -> GradientStatistics:
    r"""Mean per-sample gradient and per-sample gradient variance along it, over a set.

    .. math::
      g = \frac1n\sum_i \nabla\ell_i, \qquad u = g/\lVert g\rVert, \qquad
      u^\top\Sigma u = \frac1n\sum_i \big(\langle\nabla\ell_i, u\rangle - \lVert g\rVert\big)^2,

    the population covariance :math:`\Sigma` of the per-sample gradients projected on the drift
    direction. The projections :math:`\langle\nabla\ell_i, u\rangle` are directional derivatives,
    one forward-mode pass per chunk, so no per-sample gradient is ever stored. Feed the result to
    :func:`estimate_peclet`.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits`` (see :func:`decompose_gradients`); it should not
        mix samples (BatchNorm with ``train=False``), or per-sample gradients are ill-defined.
      loss_fn: Per-example loss ``loss_fn(logits, labels) -> [chunk]``.
      params: Where to measure, typically the resetting checkpoint.
      inputs: Array (or tree of arrays) with a leading axis of :math:`n` samples.
      labels: Labels (or regression targets) with leading axis :math:`n`.
      chunk_size: Samples per pass (default: all at once).

    Returns:
      A :class:`GradientStatistics`.

    Examples:
      >>> a = jnp.array([[1.0], [3.0]])  # per-sample loss (w - a_i)^2/2: gradients w - a_i
      >>> apply_fn = lambda w, x: w - x
      >>> loss_fn = lambda z, y: 0.5 * jnp.sum(z**2, axis=-1)
      >>> s = resetax.diagnostics.gradient_statistics(apply_fn, loss_fn, jnp.zeros(1), a, a[:, 0])
      >>> print(float(s.mean_norm), float(s.projected_variance))
      2.0 1.0
    """
    n = _num_samples(inputs)
    _checks.leading_axis("labels", labels, n)
    chunk_size = _chunk_size(chunk_size, n)
    num_classes = _num_classes(apply_fn, params, inputs, labels, chunk_size)
    if num_classes is not None:
        _checks.label_range("labels", labels, num_classes)
    return _gradient_statistics(apply_fn, loss_fn, params, inputs, labels, chunk_size)


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _gradient_statistics(apply_fn, loss_fn, params, inputs, labels, chunk_size):
    n = _num_samples(inputs)
    dtype = jnp.result_type(*jax.tree.leaves(params), jnp.float32)
    weights = jnp.full((n, 1), 1.0 / n, dtype)
    mean = jax.tree.map(
        lambda g: g[0], _weighted_grads(apply_fn, loss_fn, params, inputs, labels, weights,
                                        chunk_size))
    norm = optax.tree.norm(mean)
    direction = jax.tree.map(lambda g: g / jnp.where(norm > 0, norm, 1), mean)

    def body(sums, x, y, w):
        _, slope = jax.jvp(lambda p: loss_fn(apply_fn(p, x), y), (params,), (direction,))
        dev = (slope.astype(dtype) - norm) * w
        return sums[0] + dev.sum(), sums[1] + (dev * dev).sum()

    zero = jnp.zeros((), dtype)
    first, second = _scan_chunks(body, (zero, zero), inputs, labels, jnp.ones((n,), dtype),
                                 chunk_size)
    # Shifted two-pass variance: the shift |g| is the exact mean in mathematics, the first
    # moment corrects its rounding.
    variance = jnp.maximum(second / n - (first / n) ** 2, 0)
    return GradientStatistics(mean, norm, jnp.where(norm > 0, variance, 0))


def estimate_peclet(
    statistics: GradientStatistics,
    *,
    learning_rate: float | jax.Array,
    batch_size: int | jax.Array,
    distance: float | jax.Array,
) -> PecletEstimate:
    r"""Effective Péclet number of SGD from gradient statistics, and a reset probability.

    SGD with learning rate :math:`\eta` and batch size :math:`B` moves per step by
    :math:`-\eta g + \eta\xi` with :math:`\mathrm{Cov}\,\xi = \Sigma/B` (batches drawn with
    replacement). Projected on the drift direction :math:`u = g/\lVert g\rVert` this is a 1-D
    walk with, **per step** (unit time = one step),

    .. math::
      v = \eta\lVert g\rVert, \qquad D = \frac{\eta^2\,u^\top\Sigma u}{2B}, \qquad
      \mathrm{Pe} = \frac{Lv}{2D} = \frac{L B\lVert g\rVert}{\eta\,u^\top\Sigma u}.

    In the paper's time unit :math:`t = \eta\cdot\mathrm{step}` these are :math:`v = \lVert
    g\rVert` and :math:`D = \eta\,u^\top\Sigma u/(2B)`; :math:`\mathrm{Pe}` is the same. The
    suggested reset probability per step is :math:`1 - e^{-\gamma^*}` with :math:`\gamma^*` from
    :func:`resetax.theory.optimal_reset_rate` (per step): positive exactly when
    :math:`\mathrm{Pe} < 1`. With :math:`u^\top\Sigma u = 0`, :math:`\mathrm{Pe} = \infty`.

    Assumptions: the drift and the noise are measured at one point (the checkpoint) and taken
    as constant along the way; only the component along the drift counts (1-D projection);
    the noise is Gaussian; the target lies at distance :math:`L` along the drift. It is an
    order-of-magnitude guide to the regime (:math:`\mathrm{Pe} < 1`: resetting helps), not a
    prediction of the best :math:`r` of a network.

    Args:
      statistics: From :func:`gradient_statistics` at the checkpoint.
      learning_rate: SGD learning rate :math:`\eta > 0`.
      batch_size: Batch size :math:`B > 0`.
      distance: Distance :math:`L > 0` to the target, e.g. the distance travelled from the
        checkpoint, ``distance_to_checkpoint(params, checkpoint).overall``.

    Returns:
      A :class:`PecletEstimate` in per-step units.

    Examples:
      >>> stats = resetax.diagnostics.GradientStatistics(None, jnp.array(1.0), jnp.array(40.0))
      >>> est = resetax.diagnostics.estimate_peclet(
      ...     stats, learning_rate=0.1, batch_size=8, distance=2.0)
      >>> print(round(float(est.peclet), 4), bool(est.reset_prob > 0))
      4.0 False

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    _checks.positive("learning_rate", learning_rate, scalar=True)
    _checks.positive("batch_size", batch_size, scalar=True)
    _checks.positive("distance", distance, scalar=True)
    return _peclet_from_statistics(
        statistics.mean_norm, statistics.projected_variance, learning_rate, batch_size, distance)


@jax.jit
def _peclet_from_statistics(norm, variance, lr, batch, L):
    lr, batch, L = (jnp.asarray(a, jnp.result_type(norm, float)) for a in (lr, batch, L))
    return _peclet(L, lr * norm, lr * lr * variance / (2 * batch), jnp.ones_like(L))


def estimate_peclet_from_trajectory(
    positions: Any,
    *,
    target: Any = None,
    direction: Any = None,
    distance: float | jax.Array | None = None,
    time_step: float | jax.Array = 1.0,
) -> PecletEstimate:
    r"""Effective Péclet number of a reset-free trajectory, and a reset probability.

    With positions :math:`x_0, \dots, x_T` taken :math:`\Delta t` apart and the unit vector
    :math:`u` toward the target, the projected increments :math:`s_t = \langle x_{t+1} - x_t,
    u\rangle` give

    .. math::
      v = \frac{\bar s}{\Delta t}, \qquad D = \frac{\widehat{\mathrm{Var}}(s)}{2\Delta t},
      \qquad \mathrm{Pe} = \frac{Lv}{2D},

    with :math:`L = \lVert x_{\rm target} - x_0\rVert` unless ``distance`` is given. The
    relative standard errors are :math:`L/(\mathrm{Pe}\sqrt{2DT\Delta t})` for :math:`v` and
    :math:`\sqrt{2/(T-1)}` for :math:`D`. Assumes constant drift and diffusion and Gaussian
    increments along :math:`u`; the trajectory must not contain resets.

    Args:
      positions: Array ``[T + 1, ...]`` or a tree of them (e.g. stacked params), :math:`T \ge 2`.
      target: The target, shaped like one position; the start is ``positions[0]``.
      direction: Instead of ``target``: a vector (shaped like one position) pointing toward the
        target; then ``distance`` is required.
      distance: Distance :math:`L > 0` from the start to the target.
      time_step: Time :math:`\Delta t > 0` between positions (1: per-step units).

    Returns:
      A :class:`PecletEstimate` in the units of ``time_step``; ``reset_prob`` is per position
      step, :math:`1 - e^{-\gamma^*\Delta t}`.

    Examples:
      >>> x = jnp.array([0.0, 1.0, 0.0, 1.0, 0.0])[:, None]  # zero drift
      >>> est = resetax.diagnostics.estimate_peclet_from_trajectory(x, target=jnp.ones(1))
      >>> print(float(est.peclet), bool(est.reset_prob > 0))
      0.0 True

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    if (target is None) == (direction is None):
        raise ValueError("Give exactly one of target and direction.")
    if direction is not None and distance is None:
        raise ValueError("distance must be given with direction.")
    if distance is not None:
        _checks.positive("distance", distance, scalar=True)
    _checks.positive("time_step", time_step, scalar=True)
    leaves = jax.tree.leaves(positions)
    if not leaves:
        raise ValueError("positions must hold at least one array.")
    length = jnp.shape(leaves[0])[0] if jnp.ndim(leaves[0]) else 0
    if length < 3 or any(jnp.ndim(x) == 0 or jnp.shape(x)[0] != length for x in leaves):
        raise ValueError("positions must have a common leading time axis of length >= 3.")
    point = target if target is not None else direction
    name = "target" if target is not None else "direction"
    try:
        shapes_match = jax.tree.structure(point) == jax.tree.structure(positions) and all(
            jnp.shape(p) == jnp.shape(x)[1:]
            for p, x in zip(jax.tree.leaves(point), leaves, strict=True))
    except ValueError:
        shapes_match = False
    if not shapes_match:
        raise ValueError(f"{name} must be shaped like one position (positions[0]).")
    return _trajectory_peclet(positions, point, target is not None, distance, time_step)


@functools.partial(jax.jit, static_argnums=2)
def _trajectory_peclet(positions, point, is_target, distance, time_step):
    x = jnp.concatenate([jnp.reshape(p, (p.shape[0], -1)) for p in jax.tree.leaves(positions)], 1)
    dtype = jnp.result_type(x, float)
    x = x.astype(dtype)
    p = jnp.concatenate([jnp.reshape(q, -1) for q in jax.tree.leaves(point)]).astype(dtype)
    to_target = p - x[0] if is_target else p
    length = jnp.linalg.norm(to_target)
    u = to_target / jnp.where(length > 0, length, 1)
    L = length if distance is None else jnp.asarray(distance, dtype)
    dt = jnp.asarray(time_step, dtype)
    steps = jnp.diff(x, axis=0) @ u
    return _peclet(L, steps.mean() / dt, steps.var(ddof=1) / (2 * dt), dt)


def to_floats(tree: Any, prefix: str = "") -> dict[str, float]:
    """Flattens a diagnostics result into ``{"a/b/c": float}`` for logging.

    Works on any tree of scalars (the NamedTuples here, dicts of them). Gradient trees are left
    out: of a :class:`GradientDecomposition` only ``overall`` and ``layers`` are kept, of a
    :class:`GradientStatistics` only the norm and the variance.

    Args:
      tree: A result of this module, or any tree of scalar arrays.
      prefix: Prepended to every key, followed by ``/`` (nothing when empty).

    Returns:
      A flat ``dict`` of Python floats.

    Examples:
      >>> f = resetax.diagnostics.memorization_fractions(
      ...     jnp.array([0, 1]), jnp.array([0, 1]), jnp.array([0, 0]))
      >>> print(resetax.diagnostics.to_floats(f, "train")["train/noisy_memorized"])
      1.0
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(_loggable(tree))[0]:
        if np.size(leaf) != 1:
            raise ValueError(
                f"tree must hold scalars; {jax.tree_util.keystr(path)} has shape "
                f"{np.shape(leaf)}.")
        key = "/".join(part for part in (prefix, path_name(path)) if part)
        try:
            out[key] = float(np.asarray(leaf).reshape(()))
        except (TypeError, ValueError):
            raise ValueError(
                f"tree must hold numbers; {jax.tree_util.keystr(path)} holds {leaf!r}.") from None
    return out


def _loggable(tree):
    if isinstance(tree, GradientDecomposition):
        return {"overall": tree.overall, "layers": tree.layers}
    if isinstance(tree, GradientStatistics):
        return {"mean_norm": tree.mean_norm, "projected_variance": tree.projected_variance}
    if isinstance(tree, dict):
        return {k: _loggable(v) for k, v in tree.items()}
    return tree


def _peclet(L, v, D, dt):
    safe_D = jnp.where(D > 0, D, 1)
    pe = jnp.where(D > 0, L * v / (2 * safe_D), jnp.where(v > 0, jnp.inf, jnp.where(
        v < 0, -jnp.inf, jnp.nan)))
    gamma = jnp.where((D > 0) & (pe < 1),
                      theory.optimal_reset_rate(L, safe_D, jnp.where(D > 0, v, 0)), 0)
    return PecletEstimate(pe, v, D, L, gamma, -jnp.expm1(-gamma * dt))


def _stats(dots):
    tt, cc, ww, cw, tw, tc = (dots[k] for k in range(6))
    norms = jnp.sqrt(jnp.stack([tt, cc, ww]))

    def cos(dot, a, b):
        denom = norms[a] * norms[b]
        return jnp.clip(dot / jnp.where(denom > 0, denom, 1), -1, 1)

    return GradientAlignment(norms[0], norms[1], norms[2], cos(cw, 1, 2), cos(tw, 0, 2),
                         cos(tc, 0, 1))


def _weighted_grads(apply_fn, loss_fn, params, inputs, labels, weights, chunk_size):
    """Gradients of sum_i weights[i, k] * loss_i for each column k, stacked on a leading axis."""

    def body(acc, x, y, w):
        loss, vjp = jax.vjp(lambda p: loss_fn(apply_fn(p, x), y), params)
        (grads,) = jax.vmap(vjp, in_axes=1)(w.astype(loss.dtype))
        return jax.tree.map(jnp.add, acc, grads)

    num = weights.shape[1]
    zeros = jax.tree.map(lambda p: jnp.zeros((num, *jnp.shape(p)), jnp.result_type(p)), params)
    return _scan_chunks(body, zeros, inputs, labels, weights, chunk_size)


def _scan_chunks(body, init, inputs, labels, weights, chunk_size):
    """Folds ``body(carry, x, y, w)`` over consecutive chunks of ``chunk_size`` samples.

    The chunks are sliced in place (no copy of the set). When ``chunk_size`` does not divide
    :math:`n` the last chunk is the last ``chunk_size`` samples, and its samples already seen in
    the previous chunk get weight 0: every chunk holds real samples only.
    """
    n = weights.shape[0]
    num_chunks = -(-n // chunk_size)

    def step(carry, i):
        start = jnp.minimum(i * chunk_size, n - chunk_size)
        take = functools.partial(jax.lax.dynamic_slice_in_dim, start_index=start,
                                 slice_size=chunk_size)
        fresh = start + jnp.arange(chunk_size) >= i * chunk_size
        w = take(weights)
        w = jnp.where(fresh.reshape((-1,) + (1,) * (w.ndim - 1)), w, 0)
        return body(carry, jax.tree.map(take, inputs), take(labels), w), None

    carry, _ = jax.lax.scan(step, init, jnp.arange(num_chunks))
    return carry


def _num_samples(inputs) -> int:
    leaves = jax.tree.leaves(inputs)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError("inputs must be an array (or tree of arrays) with a leading sample axis.")
    n = jnp.shape(leaves[0])[0]
    if n == 0 or any(jnp.shape(x)[0] != n for x in leaves):
        raise ValueError("inputs must have one common, nonempty leading sample axis.")
    return n


def _chunk_size(chunk_size, n) -> int:
    _checks.positive_int("chunk_size", chunk_size, none_ok=True)
    return n if chunk_size is None else int(min(chunk_size, n))


def _num_classes(apply_fn, params, inputs, labels, chunk_size) -> int | None:
    """The number of classes ``C`` if ``labels`` are class ids ``[n]`` and logits ``[chunk, C]``.

    ``None`` otherwise (e.g. regression targets): then the labels' range is not checked.
    """
    if (isinstance(labels, jax.core.Tracer) or jnp.ndim(labels) != 1
            or not jnp.issubdtype(jnp.result_type(labels), jnp.integer)):
        return None
    chunk = jax.tree.map(lambda x: jax.ShapeDtypeStruct((chunk_size, *jnp.shape(x)[1:]),
                                                        jnp.result_type(x)), inputs)
    logits = jax.eval_shape(apply_fn, params, chunk)
    shape = getattr(logits, "shape", ())
    return shape[1] if len(shape) == 2 else None


def _as_array(x):
    return x if isinstance(x, jax.core.Tracer) else jnp.asarray(x)
