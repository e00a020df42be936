"""Tests for resetax.losses against independent numpy formulas, finite differences and limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resetax import losses

RCE_A = -np.log(1e-4)


# ---------------------------------------------------------------------------------------------
# Reference formulas in float64 numpy, written from the papers.


def np_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_softmax(logits):
    return np.exp(np_log_softmax(logits))


def np_log_prob_of_label(logits, labels):
    return np.take_along_axis(np_log_softmax(logits), labels[..., None], axis=-1)[..., 0]


def np_prob_of_label(logits, labels):
    return np.exp(np_log_prob_of_label(logits, labels))


def np_lq(p, q):
    return (1 - p**q) / q


def np_rce(logits, labels):
    p = np.clip(np_softmax(logits), 1e-7, 1.0)
    off_label = np.arange(logits.shape[-1]) != labels[..., None]
    return RCE_A * np.sum(p * off_label, axis=-1)


def np_nce(logits, labels):
    return np_log_prob_of_label(logits, labels) / np_log_softmax(logits).sum(axis=-1)


REFERENCES = {
    "ce": lambda z, y: -np_log_prob_of_label(z, y),
    "mae": lambda z, y: 2 - 2 * np_prob_of_label(z, y),
    "gce": lambda z, y, q=0.7: np_lq(np_prob_of_label(z, y), q),
    "truncated_gce": lambda z, y, q=0.7, k=0.5: np.where(
        np_prob_of_label(z, y) > k, np_lq(np_prob_of_label(z, y), q), np_lq(k, q)
    ),
    "sce": lambda z, y, alpha=0.1, beta=1.0: (
        -alpha * np_log_prob_of_label(z, y) + beta * np_rce(z, y)
    ),
    "nce_rce": lambda z, y, alpha=1.0, beta=1.0: alpha * np_nce(z, y) + beta * np_rce(z, y),
    # The official code's ELR: Liu et al.'s with all-zero targets before every step.
    "elr_official": lambda z, y, lam=3.0, beta=0.7: np_elr(z, y, np.zeros(z.shape), lam, beta)[0],
}
HPARAMS = {
    "ce": {},
    "mae": {},
    "gce": {"q": 0.4},
    "truncated_gce": {"q": 0.6, "k": 0.3},
    "sce": {"alpha": 0.5, "beta": 2.0},
    "nce_rce": {"alpha": 3.0, "beta": 0.2},
    "elr_official": {"lam": 2.0, "beta": 0.5},
}


def random_batch(shape=(6,), num_classes=5, scale=2.0, seed=0):
    rng = np.random.default_rng(seed)
    logits = scale * rng.normal(size=(*shape, num_classes))
    labels = rng.integers(0, num_classes, size=shape)
    return logits, labels


def np_softmax_clipped_normalized(logits):
    p = np.clip(np_softmax(logits), 1e-4, 1 - 1e-4)
    return p / p.sum(axis=-1, keepdims=True)


def np_elr(logits, labels, old_targets, lam, beta):
    """ELR per Liu et al.'s code: the targets are updated first, then used in the loss."""
    p = np.clip(np_softmax(logits), 1e-4, 1 - 1e-4)
    targets = beta * old_targets + (1 - beta) * p / p.sum(axis=-1, keepdims=True)
    ce = -np_log_prob_of_label(logits, labels)
    return ce + lam * np.log(1 - np.sum(targets * p, axis=-1)), targets


# ---------------------------------------------------------------------------------------------
# Values


def test_hand_computed_point():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    labels = jnp.array([1])
    np.testing.assert_allclose(losses.cross_entropy(logits, labels), [np.log(4)], rtol=1e-6)
    np.testing.assert_allclose(losses.mean_absolute_error(logits, labels), [1.5], rtol=1e-6)
    gce = losses.generalized_cross_entropy(logits, labels, q=0.5)
    np.testing.assert_allclose(gce, [(1 - 0.5) / 0.5], rtol=1e-6)
    # NCE = log(1/4) / (log(1/2) + 2 log(1/4)) = 2 log 2 / 5 log 2.
    np.testing.assert_allclose(losses.normalized_cross_entropy(logits, labels), [0.4], rtol=1e-6)
    # RCE = log(1e4) (p_0 + p_2); no probability is below the 1e-7 clip.
    rce = losses.reverse_cross_entropy(logits, labels)
    np.testing.assert_allclose(rce, [np.log(1e4) * 0.75], rtol=1e-6)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_matches_reference_formula_in_float64(name, enable_x64):
    logits, labels = random_batch(shape=(4, 3))
    with enable_x64(True):
        got = losses.get_loss(name, **HPARAMS[name])(jnp.asarray(logits), jnp.asarray(labels))
        assert got.dtype == jnp.float64 and got.shape == (4, 3)
    np.testing.assert_allclose(got, REFERENCES[name](logits, labels, **HPARAMS[name]), rtol=1e-12)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_default_hyperparameters_in_float32_eager_and_jitted(name):
    logits, labels = random_batch(seed=1)
    loss_fn = losses.get_loss(name)
    logits32 = jnp.asarray(logits, jnp.float32)
    eager = loss_fn(logits32, labels)
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(eager, REFERENCES[name](logits, labels), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(jax.jit(loss_fn)(logits32, labels), eager, rtol=1e-6, atol=1e-7)


def test_sce_and_nce_rce_defaults_are_the_papers_cifar10_values():
    logits, labels = random_batch(seed=2)
    np.testing.assert_allclose(
        losses.symmetric_cross_entropy(logits, labels),
        0.1 * losses.cross_entropy(logits, labels) + losses.reverse_cross_entropy(logits, labels),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses.nce_rce(logits, labels),
        losses.normalized_cross_entropy(logits, labels)
        + losses.reverse_cross_entropy(logits, labels),
        rtol=1e-6,
    )


def test_rce_is_scaled_one_minus_p_up_to_clipping():
    logits, labels = random_batch(seed=3)
    p_y = np_prob_of_label(logits, labels)
    bound = RCE_A * 1e-7 * (logits.shape[-1] - 1)
    np.testing.assert_allclose(
        losses.reverse_cross_entropy(logits, labels), RCE_A * (1 - p_y), atol=bound + 1e-5
    )


# ---------------------------------------------------------------------------------------------
# Gradients


def finite_difference_grad(f, x, h=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        grad[idx] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("name", losses.LOSSES)
def test_gradient_matches_finite_differences(name, enable_x64):
    logits, labels = random_batch(shape=(3,), num_classes=4, seed=4)
    if name == "truncated_gce":
        # Keep every p_y away from the threshold, where the loss jumps.
        assert np.all(np.abs(np_prob_of_label(logits, labels) - HPARAMS[name]["k"]) > 1e-3)
        assert np.any(np_prob_of_label(logits, labels) > HPARAMS[name]["k"])
    reference = REFERENCES[name]
    if name == "elr_official":  # its targets carry no gradient: held at this point's values
        targets = (1 - HPARAMS[name]["beta"]) * np_softmax_clipped_normalized(logits)
        reference = lambda z, y, lam, beta: (  # noqa: E731
            -np_log_prob_of_label(z, y)
            + lam * np.log(1 - np.sum(targets * np.clip(np_softmax(z), 1e-4, 1 - 1e-4), -1)))

    def total(z):
        return reference(z, labels, **HPARAMS[name]).sum()

    with enable_x64(True):
        loss_fn = losses.get_loss(name, **HPARAMS[name])
        grad = jax.jit(jax.grad(lambda z: loss_fn(z, labels).sum()))(jnp.asarray(logits))
    # Central differences at h = 1e-6 err by O(h^2) + O(eps / h) ~ 1e-10.
    np.testing.assert_allclose(grad, finite_difference_grad(total, logits), rtol=1e-6, atol=1e-8)


def test_elr_gradient_treats_targets_as_constants(enable_x64):
    logits, labels = random_batch(shape=(3,), num_classes=4, seed=5)
    indices = np.array([2, 0, 4])
    rng = np.random.default_rng(5)
    start = rng.dirichlet(np.ones(4), size=5)
    with enable_x64(True):
        state = losses.ELRState(targets=jnp.asarray(start))

        def total(z):
            return losses.elr_loss(z, jnp.asarray(labels), jnp.asarray(indices), state)[0].sum()

        grad = jax.jit(jax.grad(total))(jnp.asarray(logits))
    _, targets = np_elr(logits, labels, start[indices], 3.0, 0.7)

    def reference(z):
        p = np.clip(np_softmax(z), 1e-4, 1 - 1e-4)
        ce = -np_log_prob_of_label(z, labels)
        return np.sum(ce + 3.0 * np.log(1 - np.sum(targets * p, axis=-1)))

    np.testing.assert_allclose(
        grad, finite_difference_grad(reference, logits), rtol=1e-6, atol=1e-8
    )


# ---------------------------------------------------------------------------------------------
# Limits and extremes


def test_gce_tends_to_cross_entropy_as_q_goes_to_zero(enable_x64):
    logits, labels = random_batch(seed=6)
    ce = -np_log_prob_of_label(logits, labels)
    with enable_x64(True):
        for q in (1e-3, 1e-6):
            gce = losses.generalized_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), q=q)
            # (1 - e^{-q ce}) / q = ce - q ce^2 / 2 + O(q^2 ce^3).
            np.testing.assert_array_less(np.abs(gce - ce), q * ce**2 / 2 * 1.01 + 1e-12)
            np.testing.assert_array_less(gce, ce + 1e-12)


def test_gce_with_q_one_is_half_mae():
    logits, labels = random_batch(seed=7)
    np.testing.assert_allclose(
        losses.generalized_cross_entropy(logits, labels, q=1.0),
        losses.mean_absolute_error(logits, labels) / 2,
        rtol=1e-6,
    )


EXTREME = jnp.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [0.0, 0.0, 0.0]])
EXTREME_LABELS = jnp.array([0, 1, 1, 2])


@pytest.mark.parametrize("name", losses.LOSSES)
def test_extreme_logits_give_finite_values_and_gradients(name):
    loss_fn = losses.get_loss(name)
    values, grad = jax.jit(jax.value_and_grad(lambda z: loss_fn(z, EXTREME_LABELS).sum()))(EXTREME)
    per_example = jax.jit(loss_fn)(EXTREME, EXTREME_LABELS)
    assert np.all(np.isfinite(per_example)) and np.isfinite(values)
    assert np.all(np.isfinite(grad))
    # The second sample puts all its mass 2e4 nats away from the label.
    expected_worst = REFERENCES[name](np.asarray(EXTREME, np.float64), np.asarray(EXTREME_LABELS))
    np.testing.assert_allclose(per_example, expected_worst, rtol=1e-5)


def test_elr_extreme_logits_are_finite():
    state = losses.elr_init(4, 3)
    indices = jnp.arange(4)

    @jax.jit
    def step(state):
        def total(z):
            loss, new_state = losses.elr_loss(z, EXTREME_LABELS, indices, state)
            return loss.sum(), (loss, new_state)

        return jax.value_and_grad(total, has_aux=True)(EXTREME)

    for _ in range(3):  # targets concentrate on the predictions, the worst case of the log
        (total, (loss, state)), grad = step(state)
        assert np.isfinite(total) and np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))


# ---------------------------------------------------------------------------------------------
# Truncated GCE


def test_truncated_gce_weights_and_pruned_samples():
    logits, labels = random_batch(seed=8)
    k = 0.3
    p_y = np_prob_of_label(logits, labels)
    weights = np.asarray(losses.truncated_gce_weights(logits, labels, k=k))
    np.testing.assert_array_equal(weights, (p_y > k).astype(np.float32))
    assert 0 < weights.sum() < weights.size
    grad = jax.jit(
        jax.grad(lambda z: losses.truncated_generalized_cross_entropy(z, labels, k=k).sum())
    )(jnp.asarray(logits, jnp.float32))
    grad = np.asarray(grad)
    np.testing.assert_array_equal(grad[weights == 0], 0.0)
    assert np.all(np.abs(grad[weights == 1]).sum(axis=-1) > 0)


def test_truncated_gce_with_stored_weights():
    logits, labels = random_batch(shape=(8,), seed=9)
    q, k = 0.7, 0.5
    stored = np.array([1, 0, 1, 0, 1, 1, 0, 0], np.float32)
    got = losses.truncated_generalized_cross_entropy(logits, labels, stored.tolist(), q=q, k=k)
    lq = np_lq(np_prob_of_label(logits, labels), q)
    np.testing.assert_allclose(got, stored * lq + (1 - stored) * np_lq(k, q), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# ELR state


def test_elr_buffer_update_and_loss_match_formula():
    logits1, labels1 = random_batch(shape=(3,), num_classes=4, seed=10)
    logits2, labels2 = random_batch(shape=(3,), num_classes=4, seed=11)
    indices1, indices2 = np.array([4, 0, 2]), np.array([2, 5, 4])
    lam, beta = 2.0, 0.6
    step = jax.jit(lambda z, y, i, s: losses.elr_loss(z, y, i, s, lam=lam, beta=beta))
    state = losses.elr_init(np.int64(6), 4)  # sizes often come from numpy shapes
    expected = np.zeros((6, 4))
    for logits, labels, indices in [(logits1, labels1, indices1), (logits2, labels2, indices2)]:
        loss, state = step(logits, labels, indices, state)
        expected_loss, expected[indices] = np_elr(logits, labels, expected[indices], lam, beta)
        np.testing.assert_allclose(state.targets, expected, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    untouched = np.array([1, 3])
    np.testing.assert_array_equal(state.targets[untouched], 0.0)
    assert state.targets.dtype == jnp.float32


def test_elr_clips_and_renormalizes_small_probabilities(enable_x64):
    # p = softmax([12, 0, -12]) has entries far below 1e-4, so the clip changes both the
    # target (renormalized) and the agreement term.
    logits = np.array([[12.0, 0.0, -12.0], [0.0, 0.0, 0.0]])
    labels, indices = np.array([1, 2]), np.array([0, 1])
    start = np.array([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    with enable_x64(True):
        state = losses.ELRState(targets=jnp.asarray(start))
        loss, state = losses.elr_loss(logits, labels, indices, state, lam=3.0, beta=0.7)
    expected_loss, expected_targets = np_elr(logits, labels, start, 3.0, 0.7)
    np.testing.assert_allclose(state.targets, expected_targets, rtol=1e-12)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)


def test_elr_hyperparameters_can_be_traced():
    logits, labels = random_batch(shape=(2,), num_classes=3, seed=12)
    state = losses.elr_init(2, 3)

    @jax.jit
    def step(lam, beta):
        return losses.elr_loss(logits, labels, jnp.arange(2), state, lam=lam, beta=beta)[0]

    expected, _ = np_elr(logits, labels, np.zeros((2, 3)), 1.5, 0.25)
    np.testing.assert_allclose(step(1.5, 0.25), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Tracing and registry


def test_traced_hyperparameters():
    logits, labels = random_batch(seed=14)
    gce = jax.jit(lambda q: losses.generalized_cross_entropy(logits, labels, q=q))
    np.testing.assert_allclose(gce(0.3), REFERENCES["gce"](logits, labels, q=0.3), rtol=1e-5)
    sce = jax.jit(lambda a, b: losses.symmetric_cross_entropy(logits, labels, alpha=a, beta=b))
    np.testing.assert_allclose(
        sce(0.2, 0.5), REFERENCES["sce"](logits, labels, alpha=0.2, beta=0.5), rtol=1e-5
    )


def test_registry_names_and_defaults():
    assert set(losses.LOSSES) == set(REFERENCES)
    logits, labels = random_batch(seed=15)
    np.testing.assert_array_equal(
        losses.get_loss("gce")(logits, labels), losses.generalized_cross_entropy(logits, labels)
    )


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_loss_and_hyperparameters():
    with pytest.raises(ValueError, match="name"):
        losses.get_loss("focal")
    with pytest.raises(ValueError, match="elr_loss"):
        losses.get_loss("elr")
    with pytest.raises(ValueError, match="k"):
        losses.get_loss("gce", k=0.5)
    with pytest.raises(ValueError, match="alpha"):
        losses.get_loss("ce", alpha=1.0)


@pytest.mark.parametrize(
    ("name", "hparams", "argument"),
    [
        ("gce", {"q": 0.0}, "q"),
        ("gce", {"q": 1.5}, "q"),
        ("gce", {"q": float("nan")}, "q"),
        ("truncated_gce", {"k": 1.0}, "k"),
        ("truncated_gce", {"k": -0.1}, "k"),
        ("sce", {"alpha": -1.0}, "alpha"),
        ("nce_rce", {"beta": float("inf")}, "beta"),
        ("elr_official", {"beta": 1.0}, "beta"),
        ("elr_official", {"lam": -1.0}, "lam"),
    ],
)
def test_bad_hyperparameters(name, hparams, argument):
    with pytest.raises(ValueError, match=argument):
        losses.get_loss(name, **hparams)
    fn = {
        "gce": losses.generalized_cross_entropy,
        "truncated_gce": losses.truncated_generalized_cross_entropy,
        "sce": losses.symmetric_cross_entropy,
        "nce_rce": losses.nce_rce,
        "elr_official": losses.memoryless_elr,
    }[name]
    with pytest.raises(ValueError, match=argument):
        fn(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), **hparams)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_bad_logits_and_labels(name):
    loss_fn = losses.get_loss(name)
    with pytest.raises(ValueError, match="labels"):
        loss_fn(jnp.zeros((2, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="labels"):
        loss_fn(jnp.zeros((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="logits"):
        loss_fn(jnp.zeros((2, 3), jnp.int32), jnp.zeros(2, jnp.int32))


def test_bad_elr_input():
    state = losses.elr_init(4, 3)
    logits, labels = jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32)
    with pytest.raises(ValueError, match="indices"):
        losses.elr_loss(logits, labels, jnp.zeros(3, jnp.int32), state)
    with pytest.raises(ValueError, match="state.targets"):
        losses.elr_loss(logits, labels, jnp.arange(2), losses.elr_init(4, 5))
    with pytest.raises(ValueError, match="beta"):
        losses.elr_loss(logits, labels, jnp.arange(2), state, beta=1.0)
    with pytest.raises(ValueError, match="lam"):
        losses.elr_loss(logits, labels, jnp.arange(2), state, lam=-1.0)
    with pytest.raises(ValueError, match="num_samples"):
        losses.elr_init(0, 3)
    with pytest.raises(ValueError, match="num_classes"):
        losses.elr_init(4, 1)
    with pytest.raises(ValueError, match="weights"):
        losses.truncated_generalized_cross_entropy(logits, labels, jnp.ones(3))
