r"""JAX Monte Carlo simulators of first passage under stochastic resetting.

Each simulator is jitted, vectorized over independent walkers and deterministic given its key.
:func:`sample_first_passage_times` is exact (no time step); :func:`simulate_langevin` is the
time-stepped scheme SGD actually runs, with its discretization bias; :func:`simulate_lattice_walk`
is the discrete walk; :func:`latent_bias_first_passage_times` drives a walker with the library's
own :func:`resetax.stochastic_resetting` transformation in the latent-gradient-bias geometry.

Times that are not reached within the simulation budget (``max_steps``, ``max_renewals``) come
back as ``nan``; a first passage that truly never happens (no resetting, drift away) as ``inf``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resetax import _checks
from resetax.resetting import _check_key, apply_updates, stochastic_resetting

__all__ = [
    "BOUNDARY_SHIFT",
    "latent_bias_first_passage_times",
    "sample_first_passage_times",
    "sample_positions",
    "simulate_langevin",
    "simulate_lattice_walk",
]

ArrayLike = jax.typing.ArrayLike

BOUNDARY_SHIFT: float = 0.5826
r"""Broadie–Glasserman–Kou constant :math:`\beta = -\zeta(1/2)/\sqrt{2\pi} \approx 0.5826`:
a Gaussian walk with step std :math:`\sigma` checked only at its steps behaves like a continuously
monitored one whose target lies :math:`\beta\sigma` farther away."""


def _as_key(key: int | jax.Array) -> jax.Array:
    _checks.instance("key", key, (int, np.integer, jax.Array), "an int seed or a jax.random.key")
    _check_key(key)
    return key if isinstance(key, jax.Array) else jax.random.key(key)


def _first_arrivals(advance, positions, max_steps: int) -> jax.Array:
    """Steps walkers with ``positions, arrived = advance(positions, step)`` until all arrived.

    Returns each walker's first arrival step (1-based), or -1 if it had not arrived after
    ``max_steps`` steps.
    """

    def cond(carry):
        _, step, arrived_at = carry
        return (step < max_steps) & jnp.any(arrived_at < 0)

    def body(carry):
        positions, step, arrived_at = carry
        positions, arrived = advance(positions, step)
        return positions, step + 1, jnp.where((arrived_at < 0) & arrived, step + 1, arrived_at)

    init = (positions, jnp.asarray(0), jnp.full(positions.shape, -1))
    return jax.lax.while_loop(cond, body, init)[2]


def _reset_free_first_passage(key: jax.Array, L: jax.Array, D: jax.Array, v: jax.Array):
    r"""Draws the reset-free first-passage time of drift-diffusion from distance ``L``.

    For :math:`v > 0` it is inverse Gaussian with mean :math:`\mu = L/v` and shape
    :math:`\lambda = L^2/(2D)` (Michael, Schucany & Haas 1976). For :math:`v < 0` the target is
    reached with probability :math:`e^{vL/D}` only; conditioned on reaching it the process is
    Brownian motion with the reversed drift :math:`|v|` (Doob's h-transform), so the time is the
    same inverse Gaussian with :math:`\mu = L/|v|`. At :math:`v = 0` the law is Lévy,
    :math:`L^2/(2D\xi^2)`, the :math:`\mu \to \infty` limit of the same formula.
    """
    dtype = L.dtype
    k_normal, k_choice, k_hit = jax.random.split(key, 3)
    c = jnp.abs(v) / L  # 1/μ, zero for pure diffusion
    b = jax.random.normal(k_normal, (), dtype) ** 2 * D / L**2  # ξ²/(2λ)
    # The two roots μ(1 + a ∓ sqrt(a² + 2a)) with a = μ b, written in c = 1/μ so that neither
    # cancels and c = 0 is allowed.
    spread = c + b + jnp.sqrt(b * b + 2 * b * c)
    small = 1 / spread
    large = spread / jnp.where(c > 0, c, 1) ** 2
    take_small = jax.random.uniform(k_choice, (), dtype) * (1 + c * small) <= 1
    time = jnp.where(take_small, small, large)
    hits = jax.random.uniform(k_hit, (), dtype) < jnp.exp(jnp.minimum(v, 0) * L / D)
    return jnp.where(hits, time, jnp.inf)


@functools.partial(jax.jit, static_argnames=("num_walkers", "max_renewals"))
def _renewal_times(key, gamma, L, D, v, num_walkers: int, max_renewals: int):
    def walker(key):
        def cond(carry):
            _, _, done, n = carry
            return ~done & (n < max_renewals)

        def body(carry):
            key, total, _, n = carry
            key, k_reset, k_passage = jax.random.split(key, 3)
            exp_draw = jax.random.exponential(k_reset, (), gamma.dtype)
            reset_after = jnp.where(gamma > 0, exp_draw / jnp.where(gamma > 0, gamma, 1), jnp.inf)
            passage = _reset_free_first_passage(k_passage, L, D, v)
            arrived = passage < reset_after
            total = total + jnp.where(arrived, passage, reset_after)
            # Neither a reset nor an arrival ever comes: the walker is lost for good (total = inf).
            lost = jnp.isinf(passage) & jnp.isinf(reset_after)
            return key, total, arrived | lost, n + 1

        init = (key, jnp.zeros((), gamma.dtype), jnp.asarray(False), jnp.asarray(0))
        _, total, done, _ = jax.lax.while_loop(cond, body, init)
        return jnp.where(done, total, jnp.nan)

    return jax.vmap(walker)(jax.random.split(key, num_walkers))


def sample_first_passage_times(
    key: int | jax.Array,
    num_walkers: int,
    reset_rate: ArrayLike,
    distance: ArrayLike = 1.0,
    diffusion: ArrayLike = 1.0,
    drift: ArrayLike = 0.0,
    *,
    max_renewals: int = 1_000_000,
) -> jax.Array:
    r"""Exact samples of the first-passage time of drift-diffusion with Poissonian resetting.

    Renewal sampling without a time step: each cycle draws a reset time :math:`R \sim
    \mathrm{Exp}(\gamma)` and an exact reset-free first-passage time :math:`T_0` (inverse
    Gaussian; defective for drift away from the target, see
    :func:`resetax.theory.hitting_probability`). If :math:`T_0 < R` the walker arrives at
    :math:`t + T_0`; otherwise it is back at the start at :math:`t + R` and the cycle repeats,
    by the strong Markov property. The sample mean estimates
    :func:`resetax.theory.mean_first_passage_time` with no discretization bias.

    Args:
      key: An int seed or a ``jax.random`` key.
      num_walkers: Number of independent samples.
      reset_rate: Reset rate :math:`\gamma \ge 0` (scalar).
      distance: Distance :math:`L > 0` from the reset point to the target (scalar).
      diffusion: Diffusion coefficient :math:`D > 0` (scalar).
      drift: Velocity :math:`v` toward the target (scalar; negative: away).
      max_renewals: Cap on reset cycles per walker; walkers still searching then give ``nan``.

    Returns:
      Array ``(num_walkers,)`` of first-passage times; ``inf`` where the target is never
      reached (:math:`\gamma = 0`, :math:`v < 0`).

    Examples:
      >>> t = resetax.theory.sample_first_passage_times(0, 2000, 1.0, 1.0, 1.0, 1.0)
      >>> print(t.shape, bool(abs(t.mean() - 0.855) < 0.1))
      (2000,) True

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.

      Reuveni, `Optimal stochastic restart renders fluctuations in first passage times universal
      <https://doi.org/10.1103/PhysRevLett.116.170601>`_, PRL 116, 170601, 2016.

      Michael, Schucany & Haas, Generating random variates using transformations with multiple
      roots, The American Statistician 30, 88, 1976.
    """
    _checks.positive_int("num_walkers", num_walkers)
    _checks.positive_int("max_renewals", max_renewals)
    _checks.finite_nonnegative("reset_rate", reset_rate)
    gamma, L, D, v = _checks.drift_diffusion(distance, diffusion, drift, reset_rate)
    return _renewal_times(_as_key(key), gamma, L, D, v, num_walkers, max_renewals)


@functools.partial(jax.jit, static_argnames=("num_walkers", "max_steps"))
def _langevin_times(key, gamma, L, D, v, dt, target, num_walkers: int, max_steps: int):
    dtype = L.dtype
    reset_prob = gamma * dt
    step_std = jnp.sqrt(2 * D * dt)

    def advance(x, step):
        k_reset, k_noise = jax.random.split(jax.random.fold_in(key, step))
        reset = jax.random.uniform(k_reset, (num_walkers,), dtype) < reset_prob
        moved = x - v * dt + step_std * jax.random.normal(k_noise, (num_walkers,), dtype)
        x = jnp.where(reset, L, moved)
        return x, ~reset & (x <= target)

    arrived_at = _first_arrivals(advance, jnp.full((num_walkers,), L, dtype), max_steps)
    return jnp.where(arrived_at >= 0, arrived_at.astype(dtype) * dt, jnp.nan)


def simulate_langevin(
    key: int | jax.Array,
    num_walkers: int,
    reset_rate: ArrayLike,
    distance: ArrayLike = 1.0,
    diffusion: ArrayLike = 1.0,
    drift: ArrayLike = 0.0,
    *,
    time_step: ArrayLike,
    max_steps: int,
    boundary_correction: bool = False,
) -> jax.Array:
    r"""First-passage times of the time-stepped Langevin scheme with resetting (what SGD does).

    Each step of length :math:`\Delta t`: with probability :math:`\gamma\Delta t` the walker
    jumps back to :math:`x = L`, otherwise
    :math:`x \leftarrow x - v\Delta t + \sqrt{2D\Delta t}\,\xi`; it arrives at the first step
    that ends with :math:`x \le 0`.

    .. warning::
      Checking the target only at the steps misses the excursions across it between steps, so
      the mean first-passage time comes out too high by :math:`O(\sqrt{\Delta t})`: to first
      order the discrete walk sees a target :math:`\beta\sqrt{2D\Delta t}` farther away,
      :math:`\beta` = :data:`BOUNDARY_SHIFT` :math:`\approx 0.5826` (Broadie, Glasserman & Kou
      1997), a bias of about :math:`\beta\sqrt{2D\Delta t}\,\partial T/\partial L`.
      ``boundary_correction=True`` moves the target toward the walker by that amount (arrival at
      :math:`x \le \beta\sqrt{2D\Delta t}`), leaving an :math:`O(\Delta t)` error.

    Args:
      key: An int seed or a ``jax.random`` key.
      num_walkers: Number of independent walkers.
      reset_rate: Reset rate :math:`\gamma \ge 0`, with :math:`\gamma\Delta t \le 1` (scalar).
      distance: Start and reset point :math:`L > 0` (the target is at 0; scalar).
      diffusion: Diffusion coefficient :math:`D > 0` (scalar).
      drift: Velocity :math:`v` toward the target (scalar).
      time_step: Step length :math:`\Delta t > 0`.
      max_steps: Steps simulated at most; walkers that have not arrived by then give ``nan``.
      boundary_correction: Whether to shift the target by :math:`\beta\sqrt{2D\Delta t}`.

    Returns:
      Array ``(num_walkers,)`` of first-passage times (steps times :math:`\Delta t`).

    Examples:
      >>> t = resetax.theory.simulate_langevin(
      ...     0, 1000, 1.0, 1.0, 1.0, 1.0, time_step=0.01, max_steps=5000,
      ...     boundary_correction=True)
      >>> print(t.shape, bool(abs(jnp.nanmean(t) - 0.855) < 0.15))
      (1000,) True

    References:
      Broadie, Glasserman & Kou, `A continuity correction for discrete barrier options
      <https://doi.org/10.1111/1467-9965.00039>`_, Mathematical Finance 7, 325, 1997.

      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    _checks.positive_int("num_walkers", num_walkers)
    _checks.positive_int("max_steps", max_steps)
    _checks.finite_nonnegative("reset_rate", reset_rate)
    _checks.positive("time_step", time_step)
    _checks.probability("reset_rate * time_step", jnp.asarray(reset_rate) * time_step)
    gamma, dt, L, D, v = _checks.drift_diffusion(distance, diffusion, drift, reset_rate, time_step)
    target = BOUNDARY_SHIFT * jnp.sqrt(2 * D * dt) if boundary_correction else jnp.zeros_like(L)
    return _langevin_times(_as_key(key), gamma, L, D, v, dt, target, num_walkers, max_steps)


@functools.partial(jax.jit, static_argnames=("num_walkers", "max_steps"))
def _lattice_times(key, r, L, p, num_walkers: int, max_steps: int):
    dtype = r.dtype

    def advance(n, step):
        u = jax.random.uniform(jax.random.fold_in(key, step), (num_walkers,), dtype)
        # One uniform per step: [0, r) resets, [r, r + (1-r)p) steps toward, the rest away.
        n = jnp.where(u < r, L, jnp.where(u < r + (1 - r) * p, n - 1, n + 1))
        return n, n == 0

    arrived_at = _first_arrivals(advance, jnp.full((num_walkers,), L), max_steps)
    return jnp.where(arrived_at >= 0, arrived_at.astype(dtype), jnp.nan)


def simulate_lattice_walk(
    key: int | jax.Array,
    num_walkers: int,
    reset_prob: ArrayLike,
    distance: int,
    step_toward_prob: ArrayLike = 0.5,
    *,
    max_steps: int,
) -> jax.Array:
    r"""First-passage times (in steps) of the lattice walk with per-step resetting.

    The walker starts at site :math:`L`; each step it is reset to :math:`L` with probability
    :math:`r`, else it moves one site toward the target at 0 with probability :math:`p` or away
    with :math:`1 - p`. Its mean is :func:`resetax.theory.lattice_mean_first_passage_time`.

    Args:
      key: An int seed or a ``jax.random`` key.
      num_walkers: Number of independent walkers.
      reset_prob: Reset probability per step :math:`r \in [0, 1]` (scalar).
      distance: Starting site :math:`L \ge 1` (a Python int).
      step_toward_prob: Probability :math:`p \in [0, 1]` of a step toward the target (scalar).
      max_steps: Steps simulated at most; walkers that have not arrived by then give ``nan``.

    Returns:
      Float array ``(num_walkers,)`` of first-passage times in steps.

    Examples:
      >>> t = resetax.theory.simulate_lattice_walk(0, 500, 0.0, 3, 1.0, max_steps=10)
      >>> print(t[:3])
      [3. 3. 3.]

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    _checks.positive_int("num_walkers", num_walkers)
    _checks.positive_int("max_steps", max_steps)
    _checks.probability("reset_prob", reset_prob)
    _checks.positive_int("distance", distance)
    _checks.probability("step_toward_prob", step_toward_prob)
    r, p = _checks.as_float(reset_prob, step_toward_prob)
    return _lattice_times(_as_key(key), r, distance, p, num_walkers, max_steps)


def sample_positions(
    key: int | jax.Array,
    num_walkers: int,
    time: ArrayLike,
    reset_rate: ArrayLike,
    diffusion: ArrayLike = 1.0,
    drift: ArrayLike = 0.0,
    reset_position: ArrayLike = 0.0,
) -> jax.Array:
    r"""Exact positions at ``time`` of free drift-diffusions reset at rate γ (no target).

    The age since the last reset is :math:`A = \min(E/\gamma, t)`, :math:`E \sim \mathrm{Exp}(1)`,
    and given :math:`A` the position is :math:`x_0 + vA + \sqrt{2DA}\,\xi`. As
    :math:`t \to \infty` (``time=inf`` is allowed) the law is
    :func:`resetax.theory.stationary_density`.

    Args:
      key: An int seed or a ``jax.random`` key.
      num_walkers: Number of independent walkers.
      time: Observation time :math:`t \ge 0` (``inf``: the stationary law).
      reset_rate: Reset rate :math:`\gamma \ge 0` (:math:`> 0` if ``time`` is ``inf``).
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Drift velocity :math:`v` in the :math:`+x` direction.
      reset_position: Start and reset point :math:`x_0`.

    Returns:
      Array ``(num_walkers,)`` of positions.

    Examples:
      >>> x = resetax.theory.sample_positions(0, 20000, jnp.inf, 2.0, 1.0, 1.0)
      >>> print(bool(abs(x.mean() - 0.5) < 0.05))
      True

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.
    """
    _checks.positive_int("num_walkers", num_walkers)
    _checks.nonnegative("time", time)
    _checks.finite_nonnegative("reset_rate", reset_rate)
    _checks.positive("diffusion", diffusion)
    _checks.finite("drift", drift)
    _checks.finite("reset_position", reset_position)
    if not isinstance(time, jax.core.Tracer) and not isinstance(reset_rate, jax.core.Tracer):
        if np.any(np.isinf(np.asarray(time)) & (np.asarray(reset_rate) == 0)):
            raise ValueError("reset_rate must be > 0 when time is inf (no stationary law).")
    t, gamma, D, v, x0 = _checks.as_float(time, reset_rate, diffusion, drift, reset_position)
    return _positions(_as_key(key), t, gamma, D, v, x0, num_walkers)


@functools.partial(jax.jit, static_argnames=("num_walkers",))
def _positions(key, t, gamma, D, v, x0, num_walkers: int):
    dtype = t.dtype
    k_age, k_noise = jax.random.split(key)
    exp_draw = jax.random.exponential(k_age, (num_walkers,), dtype)
    age = jnp.minimum(jnp.where(gamma > 0, exp_draw / jnp.where(gamma > 0, gamma, 1), t), t)
    noise = jax.random.normal(k_noise, (num_walkers,), dtype)
    return x0 + v * age + jnp.sqrt(2 * D * age) * noise


@functools.partial(jax.jit, static_argnames=("num_walkers", "dim", "max_steps"))
def _latent_bias_times(
    key, tau, batch, reset_prob, lr, noise, L, radius, num_walkers: int, dim: int, max_steps: int
):
    dtype = L.dtype
    start = jnp.zeros((dim,), dtype).at[0].set(L)
    wrong_direction = jnp.zeros((dim,), dtype).at[1].set(1)

    def potential_grad(theta):
        # U(θ) = (1 - τ)|θ| - τ⟨θ, e₂⟩: unit-speed pull to the target at 0 (the correct part)
        # plus a constant push along e₂, orthogonal to the initial correct direction.
        norm = jnp.linalg.norm(theta)
        return (1 - tau) * theta / jnp.where(norm > 0, norm, 1) - tau * wrong_direction

    def walker(key):
        reset_key, noise_key = jax.random.split(key)
        tx = stochastic_resetting(optax.sgd(lr), reset_prob=reset_prob, key=reset_key,
                                  patience=None)

        def cond(carry):
            theta, _, step = carry
            return (jnp.linalg.norm(theta) > radius) & (step < max_steps)

        def body(carry):
            theta, state, step = carry
            xi = jax.random.normal(jax.random.fold_in(noise_key, step), (dim,), dtype)
            grads = potential_grad(theta) + noise / jnp.sqrt(batch) * xi
            updates, state = tx.update(grads, state, theta, value=jnp.nan)
            return apply_updates(theta, updates, state), state, step + 1

        theta, _, step = jax.lax.while_loop(cond, body, (start, tx.init(start), jnp.asarray(0)))
        return jnp.where(jnp.linalg.norm(theta) <= radius, step.astype(dtype) * lr, jnp.nan)

    return jax.vmap(walker)(jax.random.split(key, num_walkers))


def latent_bias_first_passage_times(
    key: int | jax.Array,
    num_walkers: int,
    noise_rate: ArrayLike,
    batch_size: ArrayLike,
    reset_prob: ArrayLike,
    *,
    learning_rate: ArrayLike = 0.01,
    gradient_noise: ArrayLike = 10.0,
    distance: ArrayLike = 1.0,
    radius: ArrayLike = 0.2,
    dim: int = 2,
    max_steps: int = 5000,
) -> jax.Array:
    r"""Time for SGD with stochastic resetting to reach the optimum under latent gradient bias.

    A toy of the latent gradient bias (Bae, Song & Jeong 2025, §2) in :math:`d \ge 2`
    dimensions: parameters start at :math:`L e_1`, the
    optimum is the origin, and mini-batch SGD runs on :math:`U(\theta) = (1 - \tau)|\theta| -
    \tau\langle\theta, e_2\rangle` with gradient noise :math:`\sigma\xi/\sqrt{B}`:

    .. math::
      \theta \leftarrow \theta - \eta\Big[(1 - \tau)\frac{\theta}{|\theta|} - \tau e_2
        + \frac{\sigma}{\sqrt B}\xi\Big],

    i.e. a drift :math:`(1-\tau)\cdot` correct :math:`+ \tau\cdot` wrong (the wrong part
    orthogonal to the initial correct one, like the measured :math:`\cos \approx 0`) and a
    diffusion :math:`D = \eta\sigma^2/(2B)`. The steps are taken by
    ``resetax.stochastic_resetting(optax.sgd(η), reset_prob, patience=None)``, so each step
    resets to the start with probability :math:`r`. The effective Péclet number
    :math:`L(1-\tau)/(2D)` falls with the noise rate :math:`\tau` and the batch size :math:`B`'s
    inverse: resetting shortens the search for large :math:`\tau`, small :math:`B` and slows it
    for small :math:`\tau`, large :math:`B`.

    Args:
      key: An int seed or a ``jax.random`` key.
      num_walkers: Number of independent training runs.
      noise_rate: Label-noise rate :math:`\tau \in [0, 1]`, the weight of the wrong drift.
      batch_size: Batch size :math:`B > 0` (sets the gradient noise).
      reset_prob: Reset probability per step :math:`r \in [0, 1]`.
      learning_rate: SGD step :math:`\eta > 0`, also the time per step.
      gradient_noise: Per-sample gradient noise std :math:`\sigma > 0`.
      distance: Initial distance :math:`L > 0` to the optimum.
      radius: Radius :math:`\epsilon > 0` of the ball around the optimum that counts as arrival.
      dim: Dimension :math:`d \ge 2`.
      max_steps: SGD steps at most; runs that have not arrived by then give ``nan``.

    Returns:
      Array ``(num_walkers,)`` of arrival times (steps times :math:`\eta`).

    Examples:
      >>> t = resetax.theory.latent_bias_first_passage_times(
      ...     0, 64, noise_rate=0.1, batch_size=256, reset_prob=0.0, max_steps=1000)
      >>> print(round(float(t.mean()), 1))  # about (L - radius)/(1 - τ), no noise to speak of
      0.9

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    _checks.positive_int("num_walkers", num_walkers)
    _checks.positive_int("max_steps", max_steps)
    _checks.probability("noise_rate", noise_rate)
    _checks.positive("batch_size", batch_size)
    _checks.probability("reset_prob", reset_prob)
    _checks.positive("learning_rate", learning_rate)
    _checks.positive("gradient_noise", gradient_noise)
    _checks.positive("distance", distance)
    _checks.positive("radius", radius)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 2:
        raise ValueError(f"dim must be an int >= 2, got {dim!r}.")
    tau, batch, r, lr, noise, L, eps = _checks.as_float(
        noise_rate, batch_size, reset_prob, learning_rate, gradient_noise, distance, radius
    )
    return _latent_bias_times(
        _as_key(key), tau, batch, r, lr, noise, L, eps, num_walkers, dim, max_steps
    )
