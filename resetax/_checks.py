"""Eager argument checks shared by the whole package, and the dtype promotion that follows them.

Every check raises ``ValueError`` (``TypeError`` for :func:`instance`) with a message that names the
argument and what it accepts, before any work is done. The numeric checks let traced values
through, so that every function stays jittable; they check Python numbers and concrete arrays.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROW_SUM_ATOL = 1e-6
"""How far from 1 the rows of a transition matrix may sum."""


def check(
    name: str,
    value: Any,
    ok: Callable[[np.ndarray], np.ndarray],
    accepted: str,
    *,
    scalar: bool = False,
) -> None:
    """Raises ``ValueError`` naming ``name`` unless a concrete ``value`` is numeric and ``ok``.

    Bools and non-numeric values fail; with ``scalar=True`` so does any array of rank > 0.
    Traced values pass unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        return
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        arr = np.asarray(None)
    # jnp's dtype hierarchy knows bfloat16 and the other ml_dtypes, NumPy's does not.
    numeric = jnp.issubdtype(arr.dtype, jnp.number) and arr.dtype != np.bool_
    if numeric and not (scalar and arr.ndim):
        with np.errstate(invalid="ignore"):
            if np.all(ok(arr)):
                return
    if not numeric:
        shown = repr(value)
    elif scalar and arr.ndim:
        shown = f"an array of shape {arr.shape}"
    else:
        shown = np.array2string(arr, threshold=6) if arr.ndim else repr(arr.item())
    raise ValueError(f"{name} must be {accepted}, got {shown}.")


def positive(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, lambda a: a > 0, "a number > 0", scalar=scalar)


def nonnegative(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, lambda a: a >= 0, "a number >= 0", scalar=scalar)


def finite(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, np.isfinite, "a finite number", scalar=scalar)


def finite_positive(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, lambda a: np.isfinite(a) & (a > 0), "a finite number > 0", scalar=scalar)


def finite_nonnegative(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, lambda a: np.isfinite(a) & (a >= 0), "a finite number >= 0",
          scalar=scalar)


def interval(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
    scalar: bool = False,
) -> None:
    """Checks ``low <= value <= high``, either end strict with ``open_low`` / ``open_high``."""

    def ok(a):
        above = a > low if open_low else a >= low
        below = a < high if open_high else a <= high
        return above & below

    brackets = ("(" if open_low else "[", ")" if open_high else "]")
    check(name, value, ok, f"a number in {brackets[0]}{low}, {high}{brackets[1]}", scalar=scalar)


def probability(name: str, value: Any, *, scalar: bool = False) -> None:
    check(name, value, lambda a: (a >= 0) & (a <= 1), "a probability in [0, 1]", scalar=scalar)


def in_range(name: str, value: Any, low: float, high: float) -> None:
    """A Python number (not a bool, not an array) in ``[low, high]``."""
    if not (_is_real(value) and low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}.")


def python_number(name: str, value: Any, ok: Callable[[float], bool], accepted: str) -> None:
    """A Python number (not a bool, not an array) for which ``ok(value)`` holds; ``accepted``
    says which in the message (``"in (0, 1)"``, ``"a finite number > 0"``)."""
    if not (_is_real(value) and ok(value)):
        raise ValueError(f"{name} must be {accepted}, got {value!r}.")


def auto_or_positive_int(name: str, value: Any) -> None:
    """``"auto"`` or a Python integer (not a bool) > 0."""
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be 'auto' or a positive integer, got {value!r}.")


def multiple_of(name: str, value: int | None, base_name: str, base: int, reason: str = "") -> None:
    """``value`` a multiple of ``base`` (another argument, ``base_name``), or ``None``;
    ``reason`` ends the message (``", so that ..."``)."""
    if value is not None and value % base:
        raise ValueError(f"{name} ({value}) must be a multiple of {base_name} ({base}){reason}.")


def regex(name: str, value: str | None) -> None:
    """A regular expression that compiles, or ``None``."""
    if value is None:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be None or a regular expression (a str), got {value!r}.")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"{name} must be a regular expression, got {value!r}: {err}.") from err


def positive_int(name: str, value: Any, *, none_ok: bool = False) -> None:
    """A Python or NumPy integer (not a bool) > 0, or ``None`` with ``none_ok``."""
    _integer(name, value, lambda v: v > 0, "> 0", none_ok)


def int_at_least(name: str, value: Any, low: int, *, none_ok: bool = False) -> None:
    """A Python or NumPy integer (not a bool) >= ``low``, or ``None`` with ``none_ok``."""
    _integer(name, value, lambda v: v >= low, f">= {low}", none_ok)


def int_between(name: str, value: Any, low: int, high: int, *, none_ok: bool = False) -> None:
    """A Python or NumPy integer (not a bool) in ``[low, high]``, or ``None`` with ``none_ok``."""
    _integer(name, value, lambda v: low <= v <= high, f"in [{low}, {high}]", none_ok)


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}.")


def one_of(name: str, value: Any, accepted: Iterable[Any]) -> None:
    accepted = list(accepted)
    if value not in accepted:
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}.")


def instance(name: str, value: Any, types: tuple[type, ...], accepted: str) -> None:
    """Raises ``TypeError`` unless ``value`` is of ``types`` (never a bool where ints are asked)."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}.")


def leading_axis(name: str, value: Any, n: int) -> None:
    shape = jnp.shape(value)
    if not shape or shape[0] != n:
        raise ValueError(f"{name} must have a leading axis of {n} samples, got shape {shape}.")


def same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {jnp.shape(a)} and "
            f"{jnp.shape(b)}.")


def labels(name: str, value: Any, num_classes: int | None) -> np.ndarray:
    """A concrete 1-D integer array of class labels in ``[0, num_classes)``, as NumPy."""
    value = np.asarray(value)
    if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer array, got dtype {value.dtype}, shape {value.shape}.")
    label_range(name, value, num_classes)
    return value


def label_range(name: str, value: Any, num_classes: int | None) -> None:
    """Concrete labels lie in ``[0, num_classes)`` (``[0, inf)`` for ``None``); traced pass."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value)
    if arr.size and (arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes)):
        bound = "inf" if num_classes is None else num_classes
        raise ValueError(
            f"{name} must lie in [0, {bound}), got values in [{arr.min()}, {arr.max()}].")


def transition_matrix(name: str, value: Any) -> np.ndarray:
    """A square ``C x C`` row-stochastic matrix with ``C >= 2``, as float64 NumPy."""
    matrix = np.asarray(value)
    if (
        matrix.ndim != 2
        or matrix.shape[0] != matrix.shape[1]
        or matrix.shape[0] < 2
        or not is_real_dtype(matrix.dtype)
    ):
        raise ValueError(
            f"{name} must be a square C x C real matrix with C >= 2, got dtype {matrix.dtype}, "
            f"shape {matrix.shape}.")
    matrix = matrix.astype(np.float64)
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
        raise ValueError(f"{name} entries must be finite and >= 0.")
    row_sums = matrix.sum(axis=1)
    bad_rows = np.flatnonzero(np.abs(row_sums - 1.0) > ROW_SUM_ATOL)
    if bad_rows.size:
        raise ValueError(
            f"{name} rows must sum to 1 (within {ROW_SUM_ATOL}); rows {bad_rows.tolist()} sum "
            f"to {row_sums[bad_rows].tolist()}.")
    return matrix


def drift_diffusion(
    distance: Any, diffusion: Any, drift: Any, *others: Any
) -> tuple[jax.Array, ...]:
    """Checks a walker's distance to its target, diffusion and drift; returns them as floats.

    ``others`` (already checked) join the dtype promotion and come first in the result.
    """
    positive("distance", distance)
    positive("diffusion", diffusion)
    finite("drift", drift)
    return as_float(*others, distance, diffusion, drift)


def is_real_dtype(dtype: Any) -> bool:
    """Float or integer, not bool or complex."""
    return bool(np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer))


def as_float(*values: Any) -> tuple[jax.Array, ...]:
    """Converts ``values`` to one common floating dtype, keeping float64 where jax allows it.

    Python numbers are weakly typed, so they follow any array argument's dtype; with only Python
    numbers the result is jax's default float (float64 when x64 is enabled).
    """
    dtype = jnp.result_type(*values, float)
    return tuple(jnp.asarray(v, dtype) for v in values)


def _integer(
    name: str, value: Any, ok: Callable[[Any], bool], accepted: str, none_ok: bool
) -> None:
    if none_ok and value is None:
        return
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not ok(
        value
    ):
        prefix = "None or " if none_ok else ""
        raise ValueError(f"{name} must be {prefix}an integer {accepted}, got {value!r}.")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
