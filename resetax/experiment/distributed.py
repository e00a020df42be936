"""Multi-process (multi-host) runs: starting ``jax.distributed`` from the launcher's environment.

One process runs per host (or per GPU); every process runs the same command. The processes find
each other through ``jax.distributed``, which needs the coordinator's address, the number of
processes and each process's id. They come from the environment:

- ``JAX_COORDINATOR_ADDRESS`` (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, set by any launcher (a shell loop, ``torchrun``-style scripts, Kubernetes);
- or, with ``resetax train --distributed``, whatever cluster JAX detects by itself (SLURM,
  Open MPI, Kubernetes, Cloud TPU pods).

With none of these, the run is a single process and nothing is started.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ADDRESS, NUM_PROCESSES, PROCESS_ID = (
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(*, auto_detect: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Starts ``jax.distributed`` if the environment describes a multi-process run.

    Call it before anything else touches JAX's devices. The environment variables are checked
    before anything starts, and a malformed one raises a ``ValueError`` naming it.

    Args:
      auto_detect: Start even without ``JAX_COORDINATOR_ADDRESS``, leaving JAX to detect the
        cluster (SLURM, Open MPI, Kubernetes, Cloud TPU).
      environ: The environment to read (default: ``os.environ``).

    Returns:
      Whether ``jax.distributed`` is running (started now or before).

    Example:
      >>> from resetax.experiment import distributed
      >>> distributed.initialize(environ={})  # a plain single-process run
      False
      >>> distributed.initialize(environ={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
      ...                                 "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"})
      Traceback (most recent call last):
      ...
      ValueError: JAX_PROCESS_ID must be an integer in [0, 2) (JAX_NUM_PROCESSES), got '2'.
    """
    import jax

    environ = os.environ if environ is None else environ
    kwargs = _parse(environ)
    if kwargs is None and not auto_detect:
        return False
    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(**(kwargs or {}))
    except ValueError as err:  # JAX's "coordinator_address should be defined."
        if kwargs is not None:
            raise
        reason = str(err).strip().rstrip(".")
        raise ValueError(f"--distributed found no cluster to join ({reason}); run without "
                         f"--distributed, or set {ADDRESS}, {NUM_PROCESSES} and "
                         f"{PROCESS_ID}.") from None
    return True


def is_primary() -> bool:
    """Whether this is process 0, the one that writes the run's files.

    Example:
      >>> from resetax.experiment import distributed
      >>> distributed.is_primary()  # always, in a single-process run
      True
    """
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op in a single-process run).

    Every process must call it with the same ``name``, in the same order.

    Example:
      >>> from resetax.experiment import distributed
      >>> distributed.barrier("checkpoint written")  # returns at once with one process
    """
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _parse(environ: Mapping[str, str]) -> dict | None:
    address = environ.get(ADDRESS)
    num, pid = environ.get(NUM_PROCESSES), environ.get(PROCESS_ID)
    if address is None:
        if num is not None or pid is not None:
            raise ValueError(f"{NUM_PROCESSES} and {PROCESS_ID} need {ADDRESS} (host:port of "
                             f"process 0) as well.")
        return None
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit()):
        raise ValueError(f"{ADDRESS} must be host:port, got {address!r}.")
    kwargs: dict = {"coordinator_address": address}
    if (num is None) != (pid is None):
        raise ValueError(f"set both {NUM_PROCESSES} and {PROCESS_ID}, or neither (then JAX "
                         f"detects them from the cluster).")
    if num is not None:
        if not num.isdigit() or int(num) < 1:
            raise ValueError(f"{NUM_PROCESSES} must be a positive integer, got {num!r}.")
        if not pid.isdigit() or int(pid) >= int(num):
            raise ValueError(f"{PROCESS_ID} must be an integer in [0, {int(num)}) "
                             f"({NUM_PROCESSES}), got {pid!r}.")
        kwargs.update(num_processes=int(num), process_id=int(pid))
    return kwargs
