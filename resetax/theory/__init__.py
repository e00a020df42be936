"""The theory of stochastic resetting: closed forms and JAX Monte Carlo simulators.

``mfpt`` holds the closed forms (mean first-passage times, optimal reset rates, stationary laws);
``simulate`` the jitted simulators that check them and the latent-gradient-bias toy that links
them to SGD.
"""

from resetax.theory.mfpt import (
    Z_STAR,
    first_passage_laplace_transform,
    hitting_probability,
    lattice_mean_first_passage_time,
    mean_first_passage_time,
    optimal_mean_first_passage_time,
    optimal_reset_rate,
    peclet_number,
    renewal_mean_first_passage_time,
    resetting_helps,
    resetting_slope,
    stationary_density,
    stationary_mean,
    stationary_variance,
)
from resetax.theory.simulate import (
    BOUNDARY_SHIFT,
    latent_bias_first_passage_times,
    sample_first_passage_times,
    sample_positions,
    simulate_langevin,
    simulate_lattice_walk,
)

__all__ = [
    "BOUNDARY_SHIFT",
    "Z_STAR",
    "first_passage_laplace_transform",
    "hitting_probability",
    "latent_bias_first_passage_times",
    "lattice_mean_first_passage_time",
    "mean_first_passage_time",
    "optimal_mean_first_passage_time",
    "optimal_reset_rate",
    "peclet_number",
    "renewal_mean_first_passage_time",
    "resetting_helps",
    "resetting_slope",
    "sample_first_passage_times",
    "sample_positions",
    "simulate_langevin",
    "simulate_lattice_walk",
    "stationary_density",
    "stationary_mean",
    "stationary_variance",
]
