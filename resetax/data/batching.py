"""Batch index sampling for device-resident datasets, jittable and driven by a JAX key.

Gather a batch with ``jnp.take(inputs, indices, axis=0)`` (or ``inputs[indices]``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from resetax import _checks


def sample_batch_indices(
    key: jax.Array, num_examples: int, batch_size: int, *, replace: bool = True
) -> jax.Array:
    """Draws the indices of one random batch.

    Args:
      key: a JAX PRNG key; the same key gives the same batch.
      num_examples: size of the dataset to draw from (static).
      batch_size: number of indices (static).
      replace: with replacement (i.i.d. uniform draws, the SGD of the theory) or without
        (distinct indices within the batch; ``batch_size <= num_examples``).

    Returns:
      ``int32 [batch_size]`` indices in ``[0, num_examples)``.

    Examples:
      >>> from resetax import data
      >>> idx = data.sample_batch_indices(jax.random.key(0), 100, 8, replace=False)
      >>> idx.shape, idx.dtype, len(set(idx.tolist()))
      ((8,), dtype('int32'), 8)
    """
    _checks.positive_int("num_examples", num_examples)
    _checks.positive_int("batch_size", batch_size)
    if replace:
        return jax.random.randint(key, (batch_size,), 0, num_examples, dtype=jnp.int32)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} exceeds num_examples={num_examples} without replacement."
        )
    return jax.random.permutation(key, num_examples)[:batch_size].astype(jnp.int32)


def epoch_batch_indices(key: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
    """Splits one random permutation of the dataset into batches (sampling without replacement).

    The last ``num_examples % batch_size`` examples of the permutation are dropped, so every
    index appears at most once, and exactly once when ``batch_size`` divides ``num_examples``.

    Args:
      key: a JAX PRNG key, e.g. ``jax.random.fold_in(key, epoch)``.
      num_examples: size of the dataset (static).
      batch_size: batch size (static), at most ``num_examples``.

    Returns:
      ``int32 [num_examples // batch_size, batch_size]``.

    Examples:
      >>> from resetax import data
      >>> data.epoch_batch_indices(jax.random.key(0), 10, 4).shape
      (2, 4)
    """
    _checks.positive_int("num_examples", num_examples)
    _checks.positive_int("batch_size", batch_size)
    num_batches = _num_batches(num_examples, batch_size)
    permutation = jax.random.permutation(key, num_examples).astype(jnp.int32)
    return permutation[: num_batches * batch_size].reshape(num_batches, batch_size)


def batch_indices_at_step(
    key: jax.Array, step: jax.Array | int, num_examples: int, batch_size: int
) -> jax.Array:
    """Returns the batch of training step ``step`` under epoch-wise sampling without replacement.

    Step ``s`` takes batch ``s % B`` of :func:`epoch_batch_indices` with the key
    ``fold_in(key, s // B)``, where ``B = num_examples // batch_size``. Because the batch is a
    pure function of ``(key, step)``, a loop can draw it inside ``lax.scan`` from a step
    counter and resume after an interruption with the same batches.

    Args:
      key: a JAX PRNG key shared by the whole run.
      step: the step number, traced or not.
      num_examples: size of the dataset (static).
      batch_size: batch size (static), at most ``num_examples``.

    Returns:
      ``int32 [batch_size]``.

    Examples:
      >>> from resetax import data
      >>> key = jax.random.key(0)
      >>> epoch = jnp.stack([data.batch_indices_at_step(key, s, 6, 2) for s in range(3)])
      >>> sorted(epoch.ravel().tolist())
      [0, 1, 2, 3, 4, 5]
    """
    _checks.positive_int("num_examples", num_examples)
    _checks.positive_int("batch_size", batch_size)
    num_batches = _num_batches(num_examples, batch_size)
    step = jnp.asarray(step, jnp.int32)
    order = epoch_order(key, step // num_batches, num_examples)
    return batch_from_order(order, step, batch_size)


def epoch_order(key: jax.Array, epoch: jax.Array | int, num_examples: int) -> jax.Array:
    """The order of the examples in epoch ``epoch``: a permutation drawn with
    ``fold_in(key, epoch)``, as :func:`batch_indices_at_step` uses it.

    A training loop can keep the current epoch's order in its state and draw it anew only at the
    start of an epoch (see :func:`batch_from_order`): on CPUs drawing a permutation of a few
    thousand examples costs more than a small model's whole step.

    Args:
      key: the run's PRNG key.
      epoch: the epoch number, traced or not.
      num_examples: size of the dataset (static).

    Returns:
      ``int32 [num_examples]``, a permutation of ``range(num_examples)``.

    Examples:
      >>> from resetax import data
      >>> key = jax.random.key(0)
      >>> order = data.epoch_order(key, 1, 6)
      >>> sorted(order.tolist())
      [0, 1, 2, 3, 4, 5]
      >>> step = 3  # with batches of 2 there are 3 per epoch: step 3 is epoch 1's first batch
      >>> bool((data.batch_from_order(order, step, 2)
      ...       == data.batch_indices_at_step(key, step, 6, 2)).all())
      True
    """
    _checks.positive_int("num_examples", num_examples)
    return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples).astype(jnp.int32)


def batch_from_order(order: jax.Array, step: jax.Array | int, batch_size: int) -> jax.Array:
    """The batch of ``step`` from its epoch's :func:`epoch_order`: batch ``step % B`` of it,
    where ``B = len(order) // batch_size`` (the last partial batch of an epoch is skipped).

    Examples:
      >>> from resetax import data
      >>> data.batch_from_order(jnp.array([4, 0, 3, 1, 2]), 1, 2).tolist()
      [3, 1]
    """
    num_batches = _num_batches(order.shape[0], batch_size)
    start = (jnp.asarray(step, jnp.int32) % num_batches) * batch_size
    return jax.lax.dynamic_slice_in_dim(order, start, batch_size)


def _num_batches(num_examples: int, batch_size: int) -> int:
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} exceeds num_examples={num_examples}: an epoch has no batch."
        )
    return num_examples // batch_size
