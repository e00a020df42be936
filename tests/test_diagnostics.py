"""Tests of resetax.diagnostics against direct computations and hand-set walkers.

Gradients are checked against ``jax.grad`` on the clean and noisy subsets, computed here without
the module's chunking or vector-Jacobian batching; the Péclet estimators against walkers whose
drift and diffusion are set by hand, with enough steps that the statistical error (derived in
``test_trajectory_peclet_recovers_hand_set_walkers``) is far below the 10% tolerance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import resetax
from resetax import diagnostics, losses, theory
from resetax.models import MLP

N, FEATURES, CLASSES = 26, 5, 3


@pytest.fixture(scope="module")
def problem():
    """A tiny BatchNorm MLP in eval mode, noisy labels and their noise mask."""
    model = MLP(num_classes=CLASSES, hidden_sizes=(6,))
    kx, ky, kn, ki = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (N, FEATURES))
    variables = jax.jit(model.init)(ki, x)
    # Non-trivial running statistics, so that eval-mode BatchNorm is not the identity.
    variables = {"params": variables["params"], "batch_stats": jax.tree.map(
        lambda s: s + 0.3, variables["batch_stats"])}
    clean = jax.random.randint(ky, (N,), 0, CLASSES)
    is_noisy = jax.random.bernoulli(kn, 0.4, (N,))
    noisy = jnp.where(is_noisy, (clean + 1) % CLASSES, clean)

    def apply_fn(params, inputs):
        return model.apply({"params": params, "batch_stats": variables["batch_stats"]}, inputs,
                           train=False)

    return dict(apply_fn=apply_fn, loss_fn=losses.get_loss("ce"), params=variables["params"],
                x=x, labels=noisy, clean=clean, is_noisy=is_noisy)


def _direct_grads(p, mask):
    """Gradient of sum over ``mask`` of the per-example loss, divided by n, by plain jax.grad."""
    def subset_loss(params, x, labels):
        return p["loss_fn"](p["apply_fn"](params, x), labels).sum() / N
    return jax.jit(jax.grad(subset_loss))(p["params"], p["x"][mask], p["labels"][mask])


def _flat_by_layer(tree):
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = diagnostics.layer_name(path)
        flat[name] = np.concatenate([flat.get(name, np.zeros(0)),
                                     np.asarray(leaf, np.float64).ravel()])
    return flat


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- gradient decomposition -----------------------------------------------------------------

def test_decomposition_matches_direct_gradients_per_layer(problem):
    p = problem
    out = diagnostics.decompose_gradients(p["apply_fn"], p["loss_fn"], p["params"], p["x"],
                                          p["labels"], p["is_noisy"])
    mask = np.asarray(p["is_noisy"])
    assert 0 < mask.sum() < N
    direct = {"total": _flat_by_layer(_direct_grads(p, np.ones(N, bool))),
              "correct": _flat_by_layer(_direct_grads(p, ~mask)),
              "wrong": _flat_by_layer(_direct_grads(p, mask))}
    got = {k: _flat_by_layer(getattr(out, k)) for k in direct}
    assert set(out.layers) == {"Dense_0", "BatchNorm_0", "Dense_1"} == set(direct["total"])
    for name, stats in out.layers.items():
        t, c, w = (direct[k][name] for k in ("total", "correct", "wrong"))
        for k in direct:
            np.testing.assert_allclose(got[k][name], direct[k][name], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            [stats.norm_total, stats.norm_correct, stats.norm_wrong],
            [np.linalg.norm(t), np.linalg.norm(c), np.linalg.norm(w)], rtol=1e-4)
        np.testing.assert_allclose([stats.cos_cw, stats.cos_tw, stats.cos_tc],
                                   [_cos(c, w), _cos(t, w), _cos(t, c)], atol=1e-4)
    t, c, w = (np.concatenate(list(direct[k].values())) for k in ("total", "correct", "wrong"))
    np.testing.assert_allclose([out.overall.norm_total, out.overall.cos_cw, out.overall.cos_tc],
                               [np.linalg.norm(t), _cos(c, w), _cos(t, c)], rtol=1e-4, atol=1e-5)


def test_correct_plus_wrong_is_total(problem):
    p = problem
    out = diagnostics.decompose_gradients(p["apply_fn"], p["loss_fn"], p["params"], p["x"],
                                          p["labels"], p["is_noisy"], chunk_size=4)
    for t, c, w in zip(*(jax.tree.leaves(getattr(out, k)) for k in ("total", "correct", "wrong")),
                       strict=True):
        np.testing.assert_allclose(c + w, t, rtol=1e-5, atol=1e-7)
    for stats in [out.overall, *out.layers.values()]:
        for cos in (stats.cos_cw, stats.cos_tw, stats.cos_tc):
            assert -1 <= float(cos) <= 1


def test_no_noisy_samples_gives_zero_wrong_part(problem):
    p = problem
    out = diagnostics.decompose_gradients(p["apply_fn"], p["loss_fn"], p["params"], p["x"],
                                          p["labels"], jnp.zeros(N, bool))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(out.wrong))
    assert float(out.overall.norm_wrong) == 0 and float(out.overall.cos_cw) == 0
    np.testing.assert_allclose(out.overall.cos_tc, 1, atol=1e-5)
    for t, c in zip(jax.tree.leaves(out.total), jax.tree.leaves(out.correct), strict=True):
        np.testing.assert_allclose(c, t, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("chunk_size", [1, 5, 13])
def test_chunked_equals_single_batch(problem, chunk_size):
    p = problem
    args = (p["apply_fn"], p["loss_fn"], p["params"], p["x"], p["labels"], p["is_noisy"])
    whole = diagnostics.decompose_gradients(*args)
    chunked = diagnostics.decompose_gradients(*args, chunk_size=chunk_size)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_decomposition_runs_under_jit_and_logs(problem):
    p = problem

    @jax.jit
    def run(params, labels, is_noisy):
        return diagnostics.decompose_gradients(p["apply_fn"], p["loss_fn"], params, p["x"],
                                               labels, is_noisy, chunk_size=8)

    out = run(p["params"], p["labels"], p["is_noisy"])
    logged = diagnostics.to_floats(out, "grad")
    assert "grad/overall/cos_cw" in logged and "grad/layers/Dense_1/norm_wrong" in logged
    assert len(logged) == 6 * (1 + len(out.layers))
    assert all(isinstance(v, float) for v in logged.values())
    with pytest.raises(ValueError, match="scalars"):
        diagnostics.to_floats(out.total)


def test_to_floats_names_a_leaf_that_is_not_a_number():
    with pytest.raises(ValueError, match=r"^tree must hold numbers; \['b'\] holds 'text'"):
        diagnostics.to_floats({"a": 1.0, "b": "text"})


def test_decomposition_rejects_bad_input(problem):
    p = problem
    args = (p["apply_fn"], p["loss_fn"], p["params"], p["x"])
    with pytest.raises(ValueError, match="labels"):
        diagnostics.decompose_gradients(*args, p["labels"][:-1], p["is_noisy"])
    with pytest.raises(ValueError, match="labels"):
        diagnostics.decompose_gradients(*args, p["labels"].at[0].set(CLASSES), p["is_noisy"])
    with pytest.raises(ValueError, match="is_noisy"):
        diagnostics.decompose_gradients(*args, p["labels"], p["is_noisy"].astype(jnp.int32))
    with pytest.raises(ValueError, match="is_noisy"):
        diagnostics.decompose_gradients(*args, p["labels"], p["is_noisy"][:3])
    with pytest.raises(ValueError, match="chunk_size"):
        diagnostics.decompose_gradients(*args, p["labels"], p["is_noisy"], chunk_size=0)


# --- memorization ---------------------------------------------------------------------------

def test_memorization_hand_built_case():
    clean = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    noisy = jnp.array([0, 1, 2, 1, 2, 0, 2, 1])  # samples 3..6 are noisy
    pred = jnp.array([0, 2, 2, 0, 2, 1, 2, 1])
    # clean: 0 right, 1 wrong, 2 right, 7 right; noisy: 3 true, 4 memorized, 5 neither, 6 memorized
    f = diagnostics.memorization_fractions(pred, noisy, clean)
    assert (int(f.num_clean), int(f.num_noisy)) == (4, 4)
    np.testing.assert_allclose(
        [f.clean_correct, f.clean_wrong, f.noisy_true, f.noisy_memorized, f.noisy_neither],
        [0.75, 0.25, 0.25, 0.5, 0.25])


def test_memorization_of_a_model_that_outputs_the_noisy_labels():
    key_c, key_n = jax.random.split(jax.random.key(1))
    clean = jax.random.randint(key_c, (500,), 0, 10)
    noisy = jnp.where(jax.random.bernoulli(key_n, 0.3, (500,)), (clean + 3) % 10, clean)
    logits = jax.nn.one_hot(noisy, 10) * 5.0
    f = diagnostics.memorization_fractions(logits, noisy, clean)
    assert float(f.noisy_memorized) == 1 and float(f.clean_correct) == 1
    assert float(f.noisy_true) == 0 and float(f.noisy_neither) == 0


def test_memorization_fractions_sum_to_one_and_empty_group_is_zero():
    keys = jax.random.split(jax.random.key(2), 3)
    clean, noisy, pred = (jax.random.randint(k, (300,), 0, 4) for k in keys)
    f = diagnostics.memorization_fractions(pred, noisy, clean)
    np.testing.assert_allclose(f.clean_correct + f.clean_wrong, 1, rtol=1e-6)
    np.testing.assert_allclose(f.noisy_true + f.noisy_memorized + f.noisy_neither, 1, rtol=1e-6)
    f = diagnostics.memorization_fractions(pred, clean, clean)
    assert int(f.num_noisy) == 0
    assert float(f.noisy_true + f.noisy_memorized + f.noisy_neither) == 0


def test_memorization_rejects_bad_input():
    labels = jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match="clean_labels"):
        diagnostics.memorization_fractions(labels, labels, labels[:2])
    with pytest.raises(ValueError, match="noisy_labels"):
        diagnostics.memorization_fractions(jnp.zeros((3, 3)), labels.at[0].set(3), labels)
    with pytest.raises(ValueError, match="predictions"):
        diagnostics.memorization_fractions(labels.at[1].set(-1), labels, labels)
    with pytest.raises(ValueError, match="noisy_labels"):
        diagnostics.memorization_fractions(labels, labels.astype(jnp.float32), labels)


# --- distance to the checkpoint -------------------------------------------------------------

def test_distance_to_checkpoint_matches_direct_computation(problem):
    params = problem["params"]
    moved = jax.tree.map(lambda x: x + 0.1 * jnp.arange(x.size).reshape(x.shape), params)
    d = diagnostics.distance_to_checkpoint(moved, params)
    for name in ("Dense_0", "BatchNorm_0", "Dense_1"):
        diff = np.concatenate([np.ravel(np.asarray(moved[name][k]) - np.asarray(params[name][k]))
                               for k in params[name]])
        np.testing.assert_allclose(d.layers[name], np.linalg.norm(diff), rtol=1e-5)
    total = np.sqrt(sum(float(v) ** 2 for v in d.layers.values()))
    np.testing.assert_allclose(d.overall, total, rtol=1e-5)


def test_distance_skips_masked_leaves_of_the_resetting_state(problem):
    params = problem["params"]
    mask = {"Dense_0": {"kernel": True, "bias": False}, "BatchNorm_0": {"scale": False,
            "bias": False}, "Dense_1": {"kernel": True, "bias": True}}
    tx = resetax.stochastic_resetting(optax.sgd(0.1), 0.5, key=0, mask=mask)
    checkpoint = resetax.find_resetting_state(tx.init(params)).checkpoint
    moved = jax.tree.map(lambda x: x + 1.0, params)
    d = diagnostics.distance_to_checkpoint(moved, checkpoint)
    assert set(d.layers) == {"Dense_0", "Dense_1"}
    np.testing.assert_allclose(d.layers["Dense_0"], math.sqrt(params["Dense_0"]["kernel"].size),
                               rtol=1e-6)
    kept = params["Dense_0"]["kernel"].size + params["Dense_1"]["kernel"].size \
        + params["Dense_1"]["bias"].size
    np.testing.assert_allclose(d.overall, math.sqrt(kept), rtol=1e-6)
    with pytest.raises(ValueError, match="checkpoint"):
        diagnostics.distance_to_checkpoint(moved, {"Dense_0": checkpoint["Dense_0"]})


# --- gradient statistics and Péclet ---------------------------------------------------------

def test_gradient_statistics_match_closed_form_on_linear_regression():
    """Per-sample gradient of (w.x + b - y)^2/2 is r_i (x_i, 1): mean and covariance are exact."""
    rng = np.random.default_rng(3)
    n, d = 37, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.normal(size=n).astype(np.float32)
    params = {"w": jnp.asarray(rng.normal(size=d), jnp.float32), "b": jnp.float32(0.5)}

    def apply_fn(p, inputs):
        return inputs @ p["w"] + p["b"]

    def loss_fn(pred, target):
        return 0.5 * (pred - target) ** 2

    residual = x.astype(np.float64) @ np.asarray(params["w"], np.float64) + 0.5 - y
    per_sample = residual[:, None] * np.concatenate([x, np.ones((n, 1))], axis=1)
    mean = per_sample.mean(0)
    cov = np.cov(per_sample.T, bias=True)
    u = mean / np.linalg.norm(mean)
    for chunk_size in (None, 5):
        s = diagnostics.gradient_statistics(apply_fn, loss_fn, params, x, y,
                                            chunk_size=chunk_size)
        np.testing.assert_allclose(np.append(s.mean["w"], s.mean["b"]), mean, rtol=1e-4)
        np.testing.assert_allclose(s.mean_norm, np.linalg.norm(mean), rtol=1e-5)
        np.testing.assert_allclose(s.projected_variance, u @ cov @ u, rtol=1e-4)

    est = diagnostics.estimate_peclet(s, learning_rate=0.05, batch_size=4, distance=2.0)
    v, D = 0.05 * np.linalg.norm(mean), 0.05**2 * (u @ cov @ u) / (2 * 4)
    np.testing.assert_allclose([est.drift, est.diffusion, est.peclet],
                               [v, D, 2.0 * v / (2 * D)], rtol=1e-4)
    gamma = float(theory.optimal_reset_rate(2.0, D, v))
    np.testing.assert_allclose([est.reset_rate, est.reset_prob], [gamma, -math.expm1(-gamma)],
                               rtol=1e-3)
    with pytest.raises(ValueError, match="learning_rate"):
        diagnostics.estimate_peclet(s, learning_rate=0.0, batch_size=4, distance=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        diagnostics.estimate_peclet(s, learning_rate=0.1, batch_size=-1, distance=2.0)
    with pytest.raises(ValueError, match="distance"):
        diagnostics.estimate_peclet(s, learning_rate=0.1, batch_size=4, distance=0.0)


def _langevin_walk(key, num_steps, dim, start, direction, drift, diffusion, time_step):
    """Positions of x <- x + v u dt + sqrt(2 D dt) xi, xi isotropic in ``dim`` dimensions."""
    def step(x, k):
        x = x + drift * direction * time_step + jnp.sqrt(2 * diffusion * time_step) \
            * jax.random.normal(k, (dim,), x.dtype)
        return x, x
    _, path = jax.lax.scan(step, start, jax.random.split(key, num_steps))
    return jnp.concatenate([start[None], path])


# (distance L, diffusion D, drift v): Pe = Lv/(2D) = 0.3, 1.0, 3.0.
WALKERS = [(1.0, 1.0, 0.6), (2.0, 0.5, 0.5), (1.5, 0.25, 1.0)]


@pytest.mark.parametrize(("distance", "diffusion", "drift"), WALKERS)
def test_trajectory_peclet_recovers_hand_set_walkers(distance, diffusion, drift, enable_x64):
    """Statistical error: with T steps of length dt, v-hat has relative standard error
    sqrt(2D/(T dt))/v = L/(Pe sqrt(2 D T dt)) and D-hat sqrt(2/(T-1)); Pe-hat = L v-hat/(2 D-hat)
    adds them in quadrature. T = 2e5, dt = 0.5 gives 0.8%, 0.7%, 0.4% for Pe = 0.3, 1, 3, so the
    10% tolerance is at least 12 standard errors."""
    num_steps, dt, dim = 200_000, 0.5, 3
    with enable_x64(True):
        truth = distance * drift / (2 * diffusion)
        direction = jnp.array([2.0, -1.0, 2.0]) / 3.0
        start = jnp.array([0.5, 0.0, -1.0])
        path = _langevin_walk(jax.random.key(int(10 * truth)), num_steps, dim, start, direction,
                              drift, diffusion, dt)
        est = diagnostics.estimate_peclet_from_trajectory(
            path, target=start + distance * direction, time_step=dt)
        se = math.hypot(distance / (truth * math.sqrt(2 * diffusion * num_steps * dt)),
                        math.sqrt(2 / (num_steps - 1)))
        assert 12 * se < 0.1  # the derivation above
        np.testing.assert_allclose(est.distance, distance, rtol=1e-12)
        np.testing.assert_allclose(est.peclet, truth, rtol=0.1)
        np.testing.assert_allclose(est.drift, drift, rtol=4 * se)
        np.testing.assert_allclose(est.diffusion, diffusion, rtol=4 * math.sqrt(2 / num_steps))
        assert bool(est.reset_prob > 0) == bool(est.peclet < 1)
        if truth != 1.0:  # away from the threshold the estimate lands on the truth's side
            assert bool(est.reset_prob > 0) == (truth < 1)
        if truth < 1:
            gamma = float(theory.optimal_reset_rate(distance, diffusion, drift))
            np.testing.assert_allclose(est.reset_rate, gamma, rtol=0.1)
            np.testing.assert_allclose(est.reset_prob, -math.expm1(-gamma * dt), rtol=0.1)


def test_gradient_and_trajectory_estimates_agree_on_sgd_with_constant_gradients(enable_x64):
    """Per-sample loss <a_i, theta>: constant gradients, so SGD is a constant-drift walker with
    v = eta |a-bar| and D = eta^2 u'Sigma u / (2B) per step, both estimators must find it."""
    rng = np.random.default_rng(4)
    n, dim, lr, batch, num_steps, L = 64, 3, 0.1, 4, 50_000, 0.05
    a = rng.normal(size=(n, dim)) * 2.0 + np.array([0.6, 0.0, 0.0])
    with enable_x64(True):
        a = jnp.asarray(a)
        theta0 = jnp.zeros(dim)
        stats = diagnostics.gradient_statistics(
            lambda th, x: x @ th, lambda z, _: z, theta0, a, jnp.zeros(n))
        from_stats = diagnostics.estimate_peclet(stats, learning_rate=lr, batch_size=batch,
                                                 distance=L)

        def sgd_step(theta, key):
            idx = jax.random.randint(key, (batch,), 0, n)  # batches drawn with replacement
            theta = theta - lr * a[idx].mean(0)
            return theta, theta

        _, path = jax.lax.scan(sgd_step, theta0, jax.random.split(jax.random.key(5), num_steps))
        path = jnp.concatenate([theta0[None], path])
        from_path = diagnostics.estimate_peclet_from_trajectory(
            path, direction=-stats.mean, distance=L)
        closed_form = L * batch * float(stats.mean_norm) / (lr * float(stats.projected_variance))
        np.testing.assert_allclose(from_stats.peclet, closed_form, rtol=1e-6)
        assert 0.3 < closed_form < 0.8  # resetting would help
        np.testing.assert_allclose(from_path.peclet, from_stats.peclet, rtol=0.1)
        assert bool(from_path.reset_prob > 0) and bool(from_stats.reset_prob > 0)


def test_trajectory_estimator_rejects_bad_input():
    path = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="target"):
        diagnostics.estimate_peclet_from_trajectory(path, target=jnp.ones(3))
    with pytest.raises(ValueError, match="exactly one"):
        diagnostics.estimate_peclet_from_trajectory(path, target=jnp.ones(2),
                                                    direction=jnp.ones(2))
    with pytest.raises(ValueError, match="distance"):
        diagnostics.estimate_peclet_from_trajectory(path, direction=jnp.ones(2))
    with pytest.raises(ValueError, match="time_step"):
        diagnostics.estimate_peclet_from_trajectory(path, target=jnp.ones(2), time_step=0.0)
    with pytest.raises(ValueError, match="positions"):
        diagnostics.estimate_peclet_from_trajectory(path[:2], target=jnp.ones(2))
