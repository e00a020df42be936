r"""Closed forms for first passage under stochastic resetting (Bae, Song & Jeong 2025, §4).

A searcher starts at distance :math:`L` from a target, diffuses with coefficient :math:`D`,
drifts toward the target with velocity :math:`v` (:math:`v < 0`: away from it) and is sent back
to its start at rate :math:`\gamma`. Everything here is vectorized (broadcasting over all array
arguments), jittable, and computed in the inputs' floating dtype; Python-number arguments are
checked eagerly and raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from resetax import _checks

__all__ = [
    "Z_STAR",
    "first_passage_laplace_transform",
    "hitting_probability",
    "lattice_mean_first_passage_time",
    "mean_first_passage_time",
    "optimal_mean_first_passage_time",
    "optimal_reset_rate",
    "peclet_number",
    "renewal_mean_first_passage_time",
    "resetting_helps",
    "resetting_slope",
    "stationary_density",
    "stationary_mean",
    "stationary_variance",
]

ArrayLike = jax.typing.ArrayLike


def _solve_z_star() -> float:
    # Newton on f(z) = z/2 - 1 + exp(-z), started right of the root: f is convex, so the
    # iterates decrease monotonically onto z* (equivalently z* = 2 + W0(-2 exp(-2))).
    z = 2.0
    for _ in range(100):
        step = (z / 2 - 1 + math.exp(-z)) / (0.5 - math.exp(-z))
        z -= step
        if abs(step) < 1e-16 * z:
            break
    return z


Z_STAR: float = _solve_z_star()
"""Root of :math:`z/2 = 1 - e^{-z}` (about 1.5936): the optimal :math:`\\sqrt{r/D}\\,L` for pure
diffusion (Evans & Majumdar 2011), computed by Newton's method at import."""


def peclet_number(distance: ArrayLike, diffusion: ArrayLike, drift: ArrayLike) -> jax.Array:
    r"""Péclet number :math:`\mathrm{Pe} = L v / (2D)` of a drift-diffusion search.

    It compares the drift's transport over :math:`L` with diffusion's; resetting shortens the
    mean first-passage time exactly when :math:`\mathrm{Pe} < 1` (see :func:`resetting_helps`).

    Args:
      distance: Distance :math:`L > 0` from the start (reset point) to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target (negative: away from it).

    Returns:
      :math:`\mathrm{Pe}`, broadcast over the arguments.

    Examples:
      >>> print(float(resetax.theory.peclet_number(2.0, 0.5, 0.25)))
      0.5
    """
    L, D, v = _checks.drift_diffusion(distance, diffusion, drift)
    return L * v / (2 * D)


def _exprel(x: jax.Array) -> jax.Array:
    # expm1(x)/x is accurate for every x != 0; only x == 0 needs its limit.
    safe = jnp.where(x == 0, 1, x)
    return jnp.where(x == 0, 1, jnp.expm1(safe) / safe)


def _exponent(s: jax.Array, L: jax.Array, D: jax.Array, v: jax.Array) -> tuple[jax.Array, ...]:
    r"""Returns :math:`a = (L/2D)(\sqrt{v^2 + 4Ds} - v)` and, for :math:`v > 0`, :math:`a/s`.

    For :math:`v > 0` the difference cancels as :math:`s \to 0`; the rationalized form
    :math:`a = 2Ls / (\sqrt{v^2 + 4Ds} + v)` keeps full precision there.
    """
    root = jnp.sqrt(v * v + 4 * D * s)
    toward = v > 0
    a_over_s = 2 * L / jnp.where(toward, root + v, 1)
    a = jnp.where(toward, a_over_s * s, L * (root - v) / (2 * D))
    return a, a_over_s


def first_passage_laplace_transform(
    s: ArrayLike, distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Laplace transform of the reset-free first-passage density of drift-diffusion.

    .. math::
      \tilde T(s) = \mathbb{E}\, e^{-s T_0}
        = \exp\!\Big(-\frac{L}{2D}\big(\sqrt{v^2 + 4Ds} - v\big)\Big).

    At :math:`s = 0` it is the probability of ever reaching the target,
    :math:`\min(1, e^{vL/D})` (see :func:`hitting_probability`).

    Args:
      s: Laplace variable :math:`s \ge 0`.
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      :math:`\tilde T(s)`, broadcast over the arguments.

    Examples:
      >>> print(round(float(resetax.theory.first_passage_laplace_transform(0.25)), 4))
      0.6065

    References:
      Redner, *A Guide to First-Passage Processes*, Cambridge University Press, 2001.
    """
    _checks.nonnegative("s", s)
    s, L, D, v = _checks.drift_diffusion(distance, diffusion, drift, s)
    a, _ = _exponent(s, L, D, v)
    return jnp.exp(-a)


def hitting_probability(
    distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Probability that drift-diffusion without resetting ever reaches the target.

    It is 1 for :math:`v \ge 0` and :math:`e^{vL/D} = e^{-|v|L/D}` for drift away from the target
    (the scale function of Brownian motion with drift); the first-passage time is then
    *defective*: infinite with probability :math:`1 - e^{vL/D}`.

    Args:
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      The hitting probability, broadcast over the arguments.

    Examples:
      >>> print(round(float(resetax.theory.hitting_probability(1.0, 1.0, -1.0)), 4))
      0.3679

    References:
      Redner, *A Guide to First-Passage Processes*, Cambridge University Press, 2001.
    """
    L, D, v = _checks.drift_diffusion(distance, diffusion, drift)
    return jnp.exp(jnp.minimum(v, 0) * L / D)


def mean_first_passage_time(
    reset_rate: ArrayLike,
    distance: ArrayLike = 1.0,
    diffusion: ArrayLike = 1.0,
    drift: ArrayLike = 0.0,
) -> jax.Array:
    r"""Mean first-passage time of drift-diffusion with stochastic resetting.

    .. math::
      T(\gamma) = \frac{1}{\gamma}\Big[\exp\!\Big(\frac{L}{2D}\big(\sqrt{v^2 + 4D\gamma}
        - v\big)\Big) - 1\Big],

    with its :math:`\gamma \to 0` limits: :math:`L/v` for :math:`v > 0`, :math:`\infty` for
    :math:`v \le 0`. For :math:`v = 0` it is Evans & Majumdar's
    :math:`(e^{\sqrt{\gamma/D}L} - 1)/\gamma`. Evaluated without cancellation near
    :math:`\gamma = 0` (rationalized exponent and ``expm1``), so it returns no NaN there.

    Args:
      reset_rate: Reset rate :math:`\gamma \ge 0` (per unit time; an SGD reset probability
        :math:`r` per step of length :math:`\Delta t` is :math:`\gamma = r/\Delta t`).
      distance: Distance :math:`L > 0` from the reset point to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target (negative: away from it).

    Returns:
      :math:`T(\gamma)`, broadcast over the arguments (``inf`` where it diverges).

    Examples:
      >>> T = resetax.theory.mean_first_passage_time(jnp.array([0.0, 0.5]), 1.0, 1.0, 0.0)
      >>> print(T[0], round(float(T[1]), 3))
      inf 2.056
      >>> print(round(float(resetax.theory.mean_first_passage_time(0.0, 1.0, 1.0, 2.0)), 6))
      0.5

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.

      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    _checks.finite_nonnegative("reset_rate", reset_rate)
    gamma, L, D, v = _checks.drift_diffusion(distance, diffusion, drift, reset_rate)
    return _mean_first_passage_time(gamma, L, D, v)


@jax.jit
def _mean_first_passage_time(gamma, L, D, v):
    a, a_over_gamma = _exponent(gamma, L, D, v)
    toward = v > 0
    safe_gamma = jnp.where(gamma > 0, gamma, 1)
    # v > 0: T = (a/γ)·expm1(a)/a is finite and smooth through γ = 0.
    t_toward = a_over_gamma * _exprel(jnp.where(toward, a, 0))
    t_other = jnp.where(gamma > 0, jnp.expm1(a) / safe_gamma, jnp.inf)
    return jnp.where(toward, t_toward, t_other)


def resetting_slope(
    distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 1.0
) -> jax.Array:
    r"""Slope :math:`dT/d\gamma` of the mean first-passage time at :math:`\gamma = 0`.

    .. math::
      \frac{dT}{d\gamma}\Big|_{\gamma=0} = \frac{L^4(\mathrm{Pe} - 1)}{8D^2\mathrm{Pe}^3}
        = \frac{LD}{v^3}(\mathrm{Pe} - 1), \qquad \mathrm{Pe} = \frac{Lv}{2D},

    negative (a little resetting helps) iff :math:`\mathrm{Pe} < 1`. For :math:`v \le 0`,
    :math:`T(0) = \infty` and the slope is :math:`-\infty`.

    Args:
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      The slope, broadcast over the arguments.

    Examples:
      >>> print(float(resetax.theory.resetting_slope(1.0, 1.0, 1.0)))  # Pe = 1/2
      -0.5

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.

      Pal & Reuveni, `First passage under restart
      <https://doi.org/10.1103/PhysRevLett.118.030603>`_, PRL 118, 030603, 2017.
    """
    pe = peclet_number(distance, diffusion, drift)
    L, D, v = _checks.as_float(distance, diffusion, drift)
    safe_v = jnp.where(v > 0, v, 1)
    return jnp.where(v > 0, L * D / safe_v**3 * (pe - 1), -jnp.inf)


def resetting_helps(
    distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Whether some reset rate :math:`\gamma > 0` lowers the mean first-passage time.

    For drift-diffusion this is :math:`\mathrm{Pe} < 1`; more generally (Reuveni 2016; Pal &
    Reuveni 2017) resetting helps when the first-passage time's coefficient of variation
    exceeds 1, which for the inverse Gaussian law is :math:`\mathrm{CV}^2 = 1/\mathrm{Pe}`.

    Args:
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      Boolean array, broadcast over the arguments.

    Examples:
      >>> print(resetax.theory.resetting_helps(1.0, 1.0, jnp.array([0.5, 3.0])))
      [ True False]

    References:
      Reuveni, `Optimal stochastic restart renders fluctuations in first passage times universal
      <https://doi.org/10.1103/PhysRevLett.116.170601>`_, PRL 116, 170601, 2016.

      Pal & Reuveni, `First passage under restart
      <https://doi.org/10.1103/PhysRevLett.118.030603>`_, PRL 118, 030603, 2017.
    """
    return peclet_number(distance, diffusion, drift) < 1


def _stationarity_condition(delta: jax.Array, pe: jax.Array) -> jax.Array:
    r"""A function with the sign of :math:`dT/dg` at :math:`u = |\mathrm{Pe}| + \delta`.

    In units :math:`L^2/D` the mean first-passage time is :math:`F(g) = (e^{u - \mathrm{Pe}} - 1)
    / g` with :math:`g = \gamma L^2/D = u^2 - \mathrm{Pe}^2`, and :math:`dF/du` has the sign of
    :math:`h(u) = (u^2 - 2u - \mathrm{Pe}^2)\,e^{u - \mathrm{Pe}} + 2u`.

    For :math:`\mathrm{Pe} \ge 0`, :math:`h` has a double zero at :math:`\delta = 0` (the
    trivial :math:`\gamma = 0`); :math:`h/\delta^2 = \varphi_1(\delta) + 2\,\mathrm{Pe}\,
    \varphi_2(\delta)` with :math:`\varphi_1 = \sum_{m\ge1} (m-2)\delta^{m-1}/m!` and
    :math:`\varphi_2 = \sum_{n\ge1} n\delta^{n-1}/(n+1)!`, power series that are summed without
    cancellation on the bracket :math:`\delta \in [0, 3]`. For :math:`\mathrm{Pe} < 0` the
    domain starts at :math:`u = |\mathrm{Pe}|` and :math:`h\,e^{-(u-\mathrm{Pe})} = g +
    2u\,\mathrm{expm1}(-(u - \mathrm{Pe}))` cannot overflow.
    """
    phi1 = jnp.zeros_like(delta)
    phi2 = jnp.zeros_like(delta)
    # Horner from the highest term; 40 terms bound the truncation by 3**40/40! ~ 1e-29.
    for m in range(40, 0, -1):
        phi1 = phi1 * delta + (m - 2) / math.factorial(m)
        phi2 = phi2 * delta + m / math.factorial(m + 1)
    series = phi1 + 2 * pe * phi2
    u = jnp.abs(pe) + delta
    g = delta * (delta + 2 * jnp.abs(pe))
    away = g + 2 * u * jnp.expm1(-(u - pe))
    return jnp.where(pe >= 0, series, away)


def optimal_reset_rate(
    distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Reset rate :math:`\gamma^*` that minimizes the mean first-passage time.

    With :math:`u = \sqrt{\mathrm{Pe}^2 + \gamma L^2/D}`, :math:`\gamma^*` solves
    :math:`(u^2 - 2u - \mathrm{Pe}^2)\,e^{u - \mathrm{Pe}} + 2u = 0` for :math:`u >
    |\mathrm{Pe}|`; it is found by 64 bisection steps on the bracket :math:`u - |\mathrm{Pe}| \in
    [0, 3]` (which holds the root for every :math:`\mathrm{Pe} < 1`), so it is jittable and
    vectorized. :math:`\gamma^* = 0` for :math:`\mathrm{Pe} \ge 1`. For pure diffusion
    :math:`\gamma^* = z^{*2} D/L^2` (:data:`Z_STAR`), about :math:`2.5396\,D/L^2`.

    Args:
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      :math:`\gamma^*`, broadcast over the arguments.

    Examples:
      >>> print(round(float(resetax.theory.optimal_reset_rate(1.0, 1.0, 0.0)), 4))
      2.5396
      >>> print(float(resetax.theory.optimal_reset_rate(1.0, 1.0, 2.0)))  # Pe = 1
      0.0

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.

      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.
    """
    pe = peclet_number(distance, diffusion, drift)
    L, D, _ = _checks.as_float(distance, diffusion, drift)
    return jnp.where(pe < 1, _optimal_dimensionless_rate(pe) * D / L**2, 0)


@jax.jit
def _optimal_dimensionless_rate(pe: jax.Array) -> jax.Array:
    lo = jnp.zeros_like(pe)
    hi = jnp.full_like(pe, 3.0)

    def bisect(_, bracket):
        lo, hi = bracket
        mid = (lo + hi) / 2
        below = _stationarity_condition(mid, pe) < 0
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 64, bisect, (lo, hi))
    delta = (lo + hi) / 2
    return delta * (delta + 2 * jnp.abs(pe))


def optimal_mean_first_passage_time(
    distance: ArrayLike = 1.0, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Mean first-passage time at the optimal reset rate, :math:`T(\gamma^*)`.

    For pure diffusion it is :math:`(e^{z^*} - 1)/z^{*2} \cdot L^2/D`, about
    :math:`1.5441\,L^2/D`; for :math:`\mathrm{Pe} \ge 1` it is the reset-free :math:`L/v`.

    Args:
      distance: Distance :math:`L > 0` to the target.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Velocity :math:`v` toward the target.

    Returns:
      :math:`T(\gamma^*)`, broadcast over the arguments.

    Examples:
      >>> print(round(float(resetax.theory.optimal_mean_first_passage_time(1.0, 1.0)), 4))
      1.5441

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.
    """
    gamma = optimal_reset_rate(distance, diffusion, drift)
    return mean_first_passage_time(gamma, distance, diffusion, drift)


def _laplace_rates(gamma: jax.Array, D: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Decay rates k+ > 0 (left of the reset point) and -k- > 0 (right of it), roots of
    # D k^2 - v k - γ = 0; the small one comes from k+ k- = -γ/D to avoid cancellation.
    root = jnp.sqrt(v * v + 4 * D * gamma)
    big_right = (root + jnp.abs(v)) / (2 * D)
    small = gamma / (D * big_right)
    k_plus = jnp.where(v >= 0, big_right, small)
    k_minus = jnp.where(v >= 0, -small, -big_right)
    return k_plus, k_minus


def stationary_density(
    x: ArrayLike,
    reset_rate: ArrayLike,
    diffusion: ArrayLike = 1.0,
    drift: ArrayLike = 0.0,
    reset_position: ArrayLike = 0.0,
) -> jax.Array:
    r"""Stationary density of a free drift-diffusion reset to ``reset_position`` at rate γ.

    With :math:`y = x - x_0` and drift :math:`v` in the :math:`+x` direction it is the
    asymmetric Laplace law

    .. math::
      p(y) = \frac{\gamma}{\sqrt{v^2 + 4D\gamma}}
        \begin{cases} e^{k_- y} & y \ge 0 \\ e^{k_+ y} & y < 0 \end{cases},\qquad
      k_\pm = \frac{v \pm \sqrt{v^2 + 4D\gamma}}{2D},

    which for :math:`v = 0` is Evans & Majumdar's
    :math:`\tfrac12\sqrt{\gamma/D}\,e^{-\sqrt{\gamma/D}|y|}`.

    Args:
      x: Positions at which to evaluate the density.
      reset_rate: Reset rate :math:`\gamma > 0`.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Drift velocity :math:`v` (any sign).
      reset_position: Reset point :math:`x_0`.

    Returns:
      :math:`p(x)`, broadcast over the arguments.

    Examples:
      >>> print(round(float(resetax.theory.stationary_density(0.0, 4.0, 1.0)), 4))
      1.0

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.
    """
    _checks.finite("x", x)
    _checks.finite_positive("reset_rate", reset_rate)
    _checks.positive("diffusion", diffusion)
    _checks.finite("drift", drift)
    _checks.finite("reset_position", reset_position)
    x, gamma, D, v, x0 = _checks.as_float(x, reset_rate, diffusion, drift, reset_position)
    k_plus, k_minus = _laplace_rates(gamma, D, v)
    y = x - x0
    amplitude = gamma / jnp.sqrt(v * v + 4 * D * gamma)
    return amplitude * jnp.exp(jnp.where(y >= 0, k_minus * y, k_plus * y))


def stationary_mean(
    reset_rate: ArrayLike, drift: ArrayLike = 0.0, reset_position: ArrayLike = 0.0
) -> jax.Array:
    r"""Mean :math:`x_0 + v/\gamma` of :func:`stationary_density`.

    Args:
      reset_rate: Reset rate :math:`\gamma > 0`.
      drift: Drift velocity :math:`v`.
      reset_position: Reset point :math:`x_0`.

    Returns:
      The stationary mean, broadcast over the arguments.

    Examples:
      >>> print(float(resetax.theory.stationary_mean(2.0, 1.0)))
      0.5

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.
    """
    _checks.finite_positive("reset_rate", reset_rate)
    _checks.finite("drift", drift)
    _checks.finite("reset_position", reset_position)
    gamma, v, x0 = _checks.as_float(reset_rate, drift, reset_position)
    return x0 + v / gamma


def stationary_variance(
    reset_rate: ArrayLike, diffusion: ArrayLike = 1.0, drift: ArrayLike = 0.0
) -> jax.Array:
    r"""Variance :math:`2D/\gamma + v^2/\gamma^2` of :func:`stationary_density`.

    The position is :math:`vA + \sqrt{2DA}\,\xi` with the age since the last reset
    :math:`A \sim \mathrm{Exp}(\gamma)`, hence :math:`2D\,\mathbb{E}A + v^2 \mathrm{Var}A`.

    Args:
      reset_rate: Reset rate :math:`\gamma > 0`.
      diffusion: Diffusion coefficient :math:`D > 0`.
      drift: Drift velocity :math:`v`.

    Returns:
      The stationary variance, broadcast over the arguments.

    Examples:
      >>> print(float(resetax.theory.stationary_variance(2.0, 1.0, 2.0)))
      2.0

    References:
      Evans & Majumdar, `Diffusion with stochastic resetting
      <https://doi.org/10.1103/PhysRevLett.106.160601>`_, PRL 106, 160601, 2011.
    """
    _checks.finite_positive("reset_rate", reset_rate)
    _checks.positive("diffusion", diffusion)
    _checks.finite("drift", drift)
    gamma, D, v = _checks.as_float(reset_rate, diffusion, drift)
    return 2 * D / gamma + (v / gamma) ** 2


def lattice_mean_first_passage_time(
    reset_prob: ArrayLike, distance: ArrayLike = 1, step_toward_prob: ArrayLike = 0.5
) -> jax.Array:
    r"""Mean first-passage time (in steps) of a lattice walk with per-step resetting.

    The walker starts at site :math:`L`; each step it is reset to :math:`L` with probability
    :math:`r`, and otherwise moves to the target's side (:math:`-1`) with probability :math:`p`
    or away (:math:`+1`) with :math:`q = 1 - p`; a reset takes one step. With the generating
    function :math:`\lambda(z)^L` of the reset-free first-passage time, renewal at each reset
    gives

    .. math::
      T = \frac{\lambda^{-L} - 1}{r},\qquad
      \lambda = \frac{1 - \sqrt{1 - 4(1-r)^2pq}}{2(1-r)q} = \frac{2p(1-r)}{1 + \sqrt{1 -
      4(1-r)^2pq}}.

    :math:`1 - \lambda` is computed without cancellation, so the :math:`r \to 0` limit
    :math:`L/(p - q)` (:math:`p > q`; :math:`\infty` otherwise) comes out exactly.

    Args:
      reset_prob: Reset probability per step :math:`r \in [0, 1]`.
      distance: Starting distance :math:`L > 0` in lattice sites.
      step_toward_prob: Probability :math:`p \in [0, 1]` of a step toward the target.

    Returns:
      :math:`T` in steps, broadcast over the arguments.

    Examples:
      >>> T = resetax.theory.lattice_mean_first_passage_time(0.01, 10, 0.5)
      >>> print(round(float(T), 1))
      313.8

    References:
      Bae, Song & Jeong, `Stochastic resetting mitigates latent gradient bias of SGD from label
      noise <https://arxiv.org/abs/2406.00396>`_, 2025.

      Pal & Reuveni, `First passage under restart
      <https://doi.org/10.1103/PhysRevLett.118.030603>`_, PRL 118, 030603, 2017.
    """
    _checks.probability("reset_prob", reset_prob)
    _checks.finite_positive("distance", distance)
    _checks.probability("step_toward_prob", step_toward_prob)
    return _lattice_mean_first_passage_time(
        *_checks.as_float(reset_prob, distance, step_toward_prob)
    )


@jax.jit
def _lattice_mean_first_passage_time(r, L, p):
    q = 1 - p
    bias = p - q
    root = jnp.sqrt(bias * bias + 4 * p * q * r * (2 - r))  # = sqrt(1 - 4(1-r)^2 pq)
    toward = p > q
    safe_r = jnp.where(r > 0, r, 1)
    # (1 - λ)(1 + root) = 2pr + (root - (p - q)); for p > q the bracket is rationalized.
    rationalized = 4 * p * q * (2 - r) / jnp.where(toward, root + bias, 1)
    one_minus_lambda = (2 * p * r + jnp.where(toward, rationalized * r, root - bias)) / (1 + root)
    per_r = jnp.where(toward, (2 * p + rationalized) / (1 + root), one_minus_lambda / safe_r)
    # T = expm1(ℓ)/r with ℓ = -L log λ = L (1-λ) · [-log1p(-(1-λ))/(1-λ)].
    m = one_minus_lambda
    safe_m = jnp.where(m > 0, m, 1)
    log_ratio = jnp.where(m > 0, -jnp.log1p(-safe_m) / safe_m, 1)
    ell = L * m * log_ratio
    t = L * per_r * log_ratio * _exprel(ell)
    # λ = 0 (r = 1 or p = 0): the walker never gets a step closer.
    t = jnp.where(((r == 0) & ~toward) | (m >= 1), jnp.inf, t)
    # Traced arguments are not checked: out of their domain the result is nan, not a number.
    return jnp.where((r >= 0) & (r <= 1) & (p >= 0) & (p <= 1) & (L > 0), t, jnp.nan)


def renewal_mean_first_passage_time(
    laplace_transform: Callable[[jax.Array], jax.Array], reset_rate: ArrayLike
) -> jax.Array:
    r"""Mean first-passage time under Poissonian resetting from any reset-free law.

    Renewal at each reset (Reuveni 2016; Pal & Reuveni 2017) gives, for any first-passage time
    :math:`T_0` without resetting with Laplace transform :math:`\tilde T(s) = \mathbb{E}\,
    e^{-sT_0}`,

    .. math::
      T(\gamma) = \frac{1 - \tilde T(\gamma)}{\gamma\,\tilde T(\gamma)}.

    At :math:`\gamma = 0` the limit :math:`\mathbb{E}T_0 = -\tilde T'(0)` is taken with
    ``jax.jvp`` (``inf`` when :math:`\tilde T(0) < 1`, a defective law).

    Args:
      laplace_transform: Elementwise, jax-differentiable function :math:`s \mapsto \tilde T(s)`.
      reset_rate: Reset rate :math:`\gamma \ge 0`.

    Returns:
      :math:`T(\gamma)`, with the shape of ``reset_rate``.

    Examples:
      >>> laplace = lambda s: 1 / (1 + 2 * s)  # exponential T0 with mean 2: memoryless
      >>> T = resetax.theory.renewal_mean_first_passage_time(laplace, jnp.array([0.0, 1.0]))
      >>> print([round(float(t), 4) for t in T])
      [2.0, 2.0]

    References:
      Reuveni, `Optimal stochastic restart renders fluctuations in first passage times universal
      <https://doi.org/10.1103/PhysRevLett.116.170601>`_, PRL 116, 170601, 2016.

      Pal & Reuveni, `First passage under restart
      <https://doi.org/10.1103/PhysRevLett.118.030603>`_, PRL 118, 030603, 2017.
    """
    if not callable(laplace_transform):
        raise ValueError(
            f"laplace_transform must be a callable s -> E exp(-s T0), got {laplace_transform!r}.")
    _checks.finite_nonnegative("reset_rate", reset_rate)
    (gamma,) = _checks.as_float(reset_rate)
    safe_gamma = jnp.where(gamma > 0, gamma, 1)
    f = laplace_transform(safe_gamma)
    f0, df0 = jax.jvp(laplace_transform, (jnp.zeros_like(gamma),), (jnp.ones_like(gamma),))
    at_zero = jnp.where(f0 < 1, jnp.inf, -df0)
    return jnp.where(gamma > 0, (1 - f) / (safe_gamma * f), at_zero)
