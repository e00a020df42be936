"""Eager argument checks and dtype promotion shared by the closed forms and the simulators."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def check(name: str, value, ok: Callable[[np.ndarray], np.ndarray], accepted: str) -> None:
    """Raises ``ValueError`` naming ``name`` when a concrete ``value`` fails ``ok``.

    Traced values are let through so that every function stays jittable; they are checked
    eagerly whenever the caller passes Python numbers or concrete arrays.
    """
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    with np.errstate(invalid="ignore"):
        good = np.all(ok(arr))
    if not good:
        shown = np.array2string(arr, threshold=6) if arr.ndim else repr(arr.item())
        raise ValueError(f"{name} must be {accepted}, got {shown}.")


def positive(name: str, value) -> None:
    check(name, value, lambda a: a > 0, "> 0")


def nonnegative(name: str, value) -> None:
    check(name, value, lambda a: a >= 0, ">= 0")


def finite(name: str, value) -> None:
    check(name, value, np.isfinite, "finite")


def probability(name: str, value) -> None:
    check(name, value, lambda a: (a >= 0) & (a <= 1), "a probability in [0, 1]")


def positive_int(name: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def as_float(*values) -> tuple[jax.Array, ...]:
    """Converts ``values`` to one common floating dtype, keeping float64 where jax allows it.

    Python numbers are weakly typed, so they follow any array argument's dtype; with only Python
    numbers the result is jax's default float (float64 under ``jax.enable_x64``).
    """
    dtype = jnp.result_type(*values, float)
    return tuple(jnp.asarray(v, dtype) for v in values)
