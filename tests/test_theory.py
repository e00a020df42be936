"""Tests of resetax.theory: closed forms against exact values and Monte Carlo.

Monte Carlo comparisons use 4 standard errors of the sample mean as the tolerance; the
time-stepped scheme gets an additional, stated discretization allowance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import trapezoid

from resetax import theory


@pytest.fixture(autouse=True)
def _x64(enable_x64):
    with enable_x64(True):
        yield


def _mean_and_se(samples):
    samples = np.asarray(samples, np.float64)
    return samples.mean(), samples.std(ddof=1) / math.sqrt(samples.size)


# --- Evans & Majumdar constants -------------------------------------------------------------


def test_z_star_is_the_root():
    assert abs(theory.Z_STAR - 1.5936242600400401) < 1e-12
    assert abs(theory.Z_STAR / 2 - (1 - math.exp(-theory.Z_STAR))) < 1e-15


@pytest.mark.parametrize("distance, diffusion", [(1.0, 1.0), (2.5, 0.3)])
def test_pure_diffusion_optimum(distance, diffusion):
    r_star = theory.optimal_reset_rate(distance, diffusion, 0.0)
    assert r_star.dtype == jnp.float64
    scale = distance**2 / diffusion
    np.testing.assert_allclose(float(r_star) * scale, 2.539638282188165, rtol=1e-12)
    np.testing.assert_allclose(math.sqrt(float(r_star) * scale), theory.Z_STAR, rtol=1e-12)
    t_star = theory.optimal_mean_first_passage_time(distance, diffusion, 0.0)
    np.testing.assert_allclose(float(t_star) / scale, 1.544138652370870, rtol=1e-12)


def test_fluctuations_are_universal_at_the_optimum():
    # Reuveni 2016: at the optimal reset rate the first-passage time's std equals its mean.
    r_star = theory.optimal_reset_rate(1.0, 1.0, 0.0)
    t = np.asarray(theory.sample_first_passage_times(7, 40_000, r_star, 1.0, 1.0, 0.0))
    cvs = [b.std(ddof=1) / b.mean() for b in t.reshape(20, -1)]
    cv, se = _mean_and_se(cvs)
    assert abs(cv - 1) < 4 * se + 0.01


# --- Closed form against exact renewal sampling -----------------------------------------------


@pytest.mark.parametrize(
    "drift, reset_rate, expected",
    [(0.0, 0.5, 2.0562), (1.0, 1.0, 0.8553), (4.0, 3.0, 0.3025), (-1.0, 1.0, 4.043)],
)
def test_mean_first_passage_time_matches_renewal_monte_carlo(drift, reset_rate, expected):
    closed = float(theory.mean_first_passage_time(reset_rate, 1.0, 1.0, drift))
    assert round(closed, 4 if drift >= 0 else 3) == expected
    t = theory.sample_first_passage_times(0, 20_000, reset_rate, 1.0, 1.0, drift)
    assert t.dtype == jnp.float64 and bool(jnp.all(jnp.isfinite(t)))
    mean, se = _mean_and_se(t)
    assert abs(mean - closed) < 4 * se, (mean, se, closed)


def test_renewal_sampler_without_resetting():
    # v > 0: inverse Gaussian, mean L/v and variance 2DL/v^3.
    t = np.asarray(theory.sample_first_passage_times(1, 20_000, 0.0, 1.0, 1.0, 2.0))
    mean, se = _mean_and_se(t)
    assert abs(mean - 0.5) < 4 * se
    var, var_se = _mean_and_se((t - t.mean()) ** 2)
    assert abs(var - 0.25) < 4 * var_se
    # v < 0: the target is reached with probability exp(vL/D) only; the rest are lost (inf).
    t = np.asarray(theory.sample_first_passage_times(2, 20_000, 0.0, 1.0, 1.0, -1.0))
    hit, hit_se = _mean_and_se(np.isfinite(t))
    assert abs(hit - float(theory.hitting_probability(1.0, 1.0, -1.0))) < 4 * hit_se
    assert np.isinf(t).any() and not np.isnan(t).any()


def test_samplers_are_deterministic_given_the_key():
    a = theory.sample_first_passage_times(3, 100, 1.0, 1.0, 1.0, 0.5)
    b = theory.sample_first_passage_times(jax.random.key(3), 100, 1.0, 1.0, 1.0, 0.5)
    c = theory.sample_first_passage_times(4, 100, 1.0, 1.0, 1.0, 0.5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_renewal_formula_reproduces_the_closed_form():
    gammas = jnp.array([0.0, 1e-3, 0.5, 1.0, 3.0])
    for drift in (-1.0, 0.0, 1.0, 4.0):
        def laplace(s, drift=drift):
            return theory.first_passage_laplace_transform(s, 1.0, 1.0, drift)

        via_renewal = theory.renewal_mean_first_passage_time(laplace, gammas)
        closed = theory.mean_first_passage_time(gammas, 1.0, 1.0, drift)
        np.testing.assert_allclose(via_renewal, closed, rtol=1e-9)


# --- Stability, vectorization, dtypes ---------------------------------------------------------


def test_small_reset_rate_limits_are_stable():
    gammas = jnp.array([0.0, 1e-300, 1e-30, 1e-12, 1e-6])
    toward = theory.mean_first_passage_time(gammas, 1.0, 1.0, 1.0)
    slope = float(theory.resetting_slope(1.0, 1.0, 1.0))
    np.testing.assert_allclose(toward, 1.0 + slope * gammas, rtol=1e-11)
    for drift in (0.0, -1.0):
        t = theory.mean_first_passage_time(gammas, 1.0, 1.0, drift)
        assert not bool(jnp.any(jnp.isnan(t)))
        assert float(t[0]) == math.inf and bool(jnp.all(t[1:] > 0))
    # v = 0 is Evans & Majumdar's (exp(sqrt(r/D) L) - 1)/r away from the limit.
    np.testing.assert_allclose(
        theory.mean_first_passage_time(1e-6, 1.0, 1.0, 0.0), math.expm1(1e-3) / 1e-6, rtol=1e-12
    )


def test_vectorized_jittable_and_dtype_preserving():
    gammas = jnp.linspace(0.0, 3.0, 4)
    drifts = jnp.array([[-1.0], [0.0], [2.0]])
    t = theory.mean_first_passage_time(gammas, 1.0, 1.0, drifts)
    assert t.shape == (3, 4)
    np.testing.assert_allclose(jax.jit(theory.mean_first_passage_time)(gammas, 1.0, 1.0, drifts), t)
    assert theory.optimal_reset_rate(1.0, 1.0, drifts).shape == (3, 1)
    assert theory.mean_first_passage_time(np.float32(0.5)).dtype == jnp.float32
    assert theory.lattice_mean_first_passage_time(0.01, 10, 0.5).dtype == jnp.float64


def test_closed_form_is_differentiable():
    grad = jax.grad(theory.mean_first_passage_time, argnums=(0, 1))(0.5, 1.0, 1.0, 1.0)
    h = 1e-6
    for i, g in enumerate(grad):
        up = [0.5, 1.0, 1.0, 1.0]
        down = list(up)
        up[i] += h
        down[i] -= h
        numeric = (theory.mean_first_passage_time(*up) - theory.mean_first_passage_time(*down))
        np.testing.assert_allclose(g, numeric / (2 * h), rtol=1e-7)


# --- Péclet criterion and the optimal rate ----------------------------------------------------


def test_slope_at_zero_has_the_sign_of_peclet_minus_one():
    drifts = jnp.array([0.2, 1.0, 1.9, 2.1, 3.0, 8.0])  # Pe = v/2 with L = D = 1
    pe = theory.peclet_number(1.0, 1.0, drifts)
    slope = theory.resetting_slope(1.0, 1.0, drifts)
    np.testing.assert_array_equal(jnp.sign(slope), jnp.sign(pe - 1))
    np.testing.assert_array_equal(theory.resetting_helps(1.0, 1.0, drifts), pe < 1)
    h = 1e-7
    numeric = (theory.mean_first_passage_time(h, 1.0, 1.0, drifts) - 1 / drifts) / h
    np.testing.assert_allclose(numeric, slope, rtol=1e-4)
    np.testing.assert_allclose(slope, (pe - 1) / (8 * pe**3), rtol=1e-12)  # L^4/(8D^2) = 1/8
    assert float(theory.resetting_slope(1.0, 1.0, -1.0)) == -math.inf


def test_optimal_rate_minimizes_and_vanishes_as_peclet_reaches_one():
    pe = jnp.array([-2.0, -0.5, 0.0, 0.3, 0.7, 0.9, 0.99, 0.999, 1.0, 1.5])
    drift = 2 * pe
    g_star = theory.optimal_reset_rate(1.0, 1.0, drift)
    grid = jnp.linspace(1e-4, 10.0, 100_001)[:, None]
    brute = grid[jnp.argmin(theory.mean_first_passage_time(grid, 1.0, 1.0, drift), axis=0), 0]
    interior = pe < 0.99  # where the grid resolves the minimum
    np.testing.assert_allclose(g_star[interior], brute[interior], atol=2e-4)
    # Near Pe = 1, γ* L²/D ≈ 3(1 - Pe) → 0; γ* = 0 once Pe ≥ 1.
    np.testing.assert_allclose(g_star[6:8] / (3 * (1 - pe[6:8])), 1.0, atol=5e-3)
    assert bool(jnp.all(jnp.diff(g_star[:9]) < 0)) and float(g_star[7]) < 0.01
    np.testing.assert_array_equal(g_star[8:], 0.0)
    t_star = theory.optimal_mean_first_passage_time(1.0, 1.0, drift)
    for factor in (0.99, 1.01):
        assert bool(jnp.all(t_star[:8] < theory.mean_first_passage_time(
            g_star[:8] * factor, 1.0, 1.0, drift[:8])))


# --- Stationary law ---------------------------------------------------------------------------


@pytest.mark.parametrize("drift", [0.0, 1.5, -2.0])
def test_stationary_law(drift):
    gamma, diffusion, x0 = 0.7, 1.3, 0.4
    x = np.linspace(-80, 80, 400_001)
    p = np.asarray(theory.stationary_density(x, gamma, diffusion, drift, x0))
    mean = float(theory.stationary_mean(gamma, drift, x0))
    var = float(theory.stationary_variance(gamma, diffusion, drift))
    np.testing.assert_allclose(trapezoid(p, x), 1.0, rtol=1e-6)
    np.testing.assert_allclose(trapezoid(p * x, x), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(trapezoid(p * (x - mean) ** 2, x), var, rtol=1e-5)
    if drift == 0.0:
        k = math.sqrt(gamma / diffusion)
        np.testing.assert_allclose(p, k / 2 * np.exp(-k * np.abs(x - x0)), rtol=1e-12)
    samples = np.asarray(theory.sample_positions(5, 40_000, jnp.inf, gamma, diffusion, drift, x0))
    m, m_se = _mean_and_se(samples)
    assert abs(m - mean) < 4 * m_se
    v, v_se = _mean_and_se((samples - mean) ** 2)
    assert abs(v - var) < 4 * v_se


# --- Lattice walk -----------------------------------------------------------------------------


def _lattice_by_linear_solve(r, distance, p, size=600):
    # T_n = 1 + r T_L + (1 - r)(p T_{n-1} + q T_{n+1}), T_0 = 0, reflecting far away.
    a = np.zeros((size, size))
    for n in range(1, size + 1):
        i = n - 1
        a[i, i] += 1
        a[i, distance - 1] -= r
        if n > 1:
            a[i, i - 1] -= (1 - r) * p
        a[i, min(i + 1, size - 1)] -= (1 - r) * (1 - p)
    return np.linalg.solve(a, np.ones(size))[distance - 1]


def test_lattice_closed_form_and_conventions():
    t = float(theory.lattice_mean_first_passage_time(0.01, 10, 0.5))
    assert round(t, 2) == 313.77
    for r, p in [(0.01, 0.5), (0.05, 0.3), (0.002, 0.6)]:
        np.testing.assert_allclose(
            theory.lattice_mean_first_passage_time(r, 10, p), _lattice_by_linear_solve(r, 10, p),
            rtol=1e-9,
        )
    # r → 0: L/(p - q) toward the target, inf otherwise; r = 1 never moves.
    limits = theory.lattice_mean_first_passage_time(jnp.array([0.0, 1e-12]), 10, 0.7)
    np.testing.assert_allclose(limits, 25.0, rtol=1e-9)
    assert float(theory.lattice_mean_first_passage_time(0.0, 10, 0.5)) == math.inf
    assert float(theory.lattice_mean_first_passage_time(1.0, 10, 0.5)) == math.inf


def test_lattice_simulator_matches_closed_form():
    t = theory.simulate_lattice_walk(0, 4000, 0.01, 10, 0.5, max_steps=20_000)
    assert not bool(jnp.any(jnp.isnan(t)))
    mean, se = _mean_and_se(t)
    assert abs(mean - 313.7717914447) < 4 * se, (mean, se)


# --- Time-stepped Langevin scheme -------------------------------------------------------------


def test_langevin_bias_and_boundary_correction():
    drift, gamma, walkers = 1.0, 1.0, 20_000
    exact = float(theory.mean_first_passage_time(gamma, 1.0, 1.0, drift))
    bias, bias_se = {}, {}
    for dt in (0.04, 0.01):
        t = theory.simulate_langevin(
            int(dt == 0.01), walkers, gamma, 1.0, 1.0, drift, time_step=dt, max_steps=int(60 / dt))
        mean, se = _mean_and_se(t)
        bias[dt], bias_se[dt] = mean - exact, se
        assert bias[dt] > 4 * se, "the uncorrected scheme should overestimate the MFPT"
    # bias ∝ Δt^(1/2): the fitted exponent, with its delta-method standard error and an
    # allowance of 0.1 for the O(Δt) term (about 0.9 Δt here).
    exponent = math.log(bias[0.04] / bias[0.01]) / math.log(4)
    exponent_se = math.hypot(bias_se[0.04] / bias[0.04], bias_se[0.01] / bias[0.01]) / math.log(4)
    assert abs(exponent - 0.5) < 4 * exponent_se + 0.1, (exponent, exponent_se)
    # With the target shifted by 0.5826 sqrt(2DΔt) the O(√Δt) term is gone; what remains is
    # O(Δt), for which we allow 2Δt = 0.02.
    t = theory.simulate_langevin(
        2, walkers, gamma, 1.0, 1.0, drift, time_step=0.01, max_steps=6000,
        boundary_correction=True)
    mean, se = _mean_and_se(t)
    assert abs(mean - exact) < 4 * se + 0.02, (mean, se, exact)
    assert abs(mean - exact) < bias[0.01] / 3


# --- Latent gradient bias toy -----------------------------------------------------------------


def _toy(noise_rate, batch_size, reset_prob, walkers=500, max_steps=5000):
    t = np.asarray(theory.latent_bias_first_passage_times(
        11, walkers, noise_rate, batch_size, reset_prob, max_steps=max_steps))
    censored = np.isnan(t)
    # A censored run counts as max_steps·η: a lower bound on its true arrival time.
    return (*_mean_and_se(np.where(censored, max_steps * 0.01, t)), censored.mean())


def test_resetting_helps_under_strong_bias_and_small_batches():
    reset, reset_se, reset_censored = _toy(0.8, 1, 0.01)
    plain, plain_se, _ = _toy(0.8, 1, 0.0)
    assert reset_censored == 0  # so `reset` is the exact sample mean, not a lower bound
    assert reset + 4 * reset_se < plain - 4 * plain_se, (reset, plain)


def test_resetting_hurts_under_weak_bias_and_large_batches():
    reset, reset_se, _ = _toy(0.1, 256, 0.01)
    plain, plain_se, plain_censored = _toy(0.1, 256, 0.0)
    assert plain_censored == 0
    assert plain + 4 * plain_se < reset - 4 * reset_se, (reset, plain)


def test_toy_steps_through_stochastic_resetting():
    # reset_prob = 1: the transformation sends every step back to the start, so no run arrives.
    t = theory.latent_bias_first_passage_times(0, 8, 0.0, 256, 1.0, max_steps=200)
    assert bool(jnp.all(jnp.isnan(t)))
    t = theory.latent_bias_first_passage_times(0, 8, 0.0, 256, 0.0, max_steps=200)
    assert not bool(jnp.any(jnp.isnan(t)))


# --- Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: theory.mean_first_passage_time(-0.1), "reset_rate"),
        (lambda: theory.mean_first_passage_time(0.5, distance=0.0), "distance"),
        (lambda: theory.mean_first_passage_time(0.5, diffusion=-1.0), "diffusion"),
        (lambda: theory.mean_first_passage_time(jnp.array([0.5, -1.0])), "reset_rate"),
        (lambda: theory.optimal_reset_rate(-1.0, 1.0, 0.0), "distance"),
        (lambda: theory.peclet_number(1.0, 0.0, 1.0), "diffusion"),
        (lambda: theory.stationary_density(0.0, 0.0), "reset_rate"),
        (lambda: theory.lattice_mean_first_passage_time(1.5, 10), "reset_prob"),
        (lambda: theory.lattice_mean_first_passage_time(0.1, 10, -0.1), "step_toward_prob"),
        (lambda: theory.lattice_mean_first_passage_time(0.1, 0), "distance"),
        (lambda: theory.sample_first_passage_times(0, 10, 1.0, diffusion=0.0), "diffusion"),
        (lambda: theory.sample_first_passage_times(0, 10, -1.0), "reset_rate"),
        (lambda: theory.simulate_langevin(0, 10, 1.0, time_step=0.0, max_steps=10), "time_step"),
        (lambda: theory.simulate_lattice_walk(0, 10, 0.1, 5, 1.2, max_steps=10),
         "step_toward_prob"),
        (lambda: theory.latent_bias_first_passage_times(0, 10, 1.2, 1, 0.1), "noise_rate"),
        (lambda: theory.latent_bias_first_passage_times(0, 10, 0.5, 1, -0.1), "reset_prob"),
        (lambda: theory.latent_bias_first_passage_times(0, 10, 0.5, 0, 0.1), "batch_size"),
        # An infinite rate or distance gave nan (lattice: nan; the others: nan for every drift).
        (lambda: theory.mean_first_passage_time(math.inf), "reset_rate must be a finite"),
        (lambda: theory.stationary_density(0.0, math.inf), "reset_rate must be a finite"),
        (lambda: theory.sample_first_passage_times(0, 4, math.inf), "reset_rate must be a fin"),
        (lambda: theory.lattice_mean_first_passage_time(0.1, math.inf), "distance must be a fin"),
        (lambda: theory.renewal_mean_first_passage_time(3, 0.1), "laplace_transform"),
        # These were jax's "split accepts a single key" and an OverflowError.
        (lambda: theory.simulate_lattice_walk(jax.random.split(jax.random.key(0)), 4, 0.1, 3,
                                              max_steps=10), "key must be a single"),
        (lambda: theory.simulate_lattice_walk(2**64, 4, 0.1, 3, max_steps=10), "key must be an"),
    ],
)
def test_bad_input_raises_eagerly(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_traced_input_is_not_checked():
    # Under jit the values are unknown at trace time; the closed form returns nan, not an error.
    t = jax.jit(theory.mean_first_passage_time)(-1.0, 1.0, 1.0, 1.0)
    assert bool(jnp.isnan(t))
    # The lattice walk's r = 1.5 gave inf, as if the walker never arrived.
    t = jax.jit(theory.lattice_mean_first_passage_time)(jnp.array([1.5, -0.1, 0.5]), 10, 0.5)
    assert np.isnan(t[:2]).all() and np.isfinite(t[2])
