"""Test configuration shared by tests/ and the doctests in resetax/.

Eight CPU devices are simulated so that pmap and sharding run as on a multi-device host; the flag
must be set before jax is first imported, which is why this file sits at the repository root.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One JAX compilation cache for the whole session, shared by its workers and the CLI processes
# the tests start, fresh each session: a program that several tests build is compiled once, and
# the suite's time does not depend on what earlier runs left in ~/.cache (the CLI leaves a
# cache the user configured as it is).
# The session's name is drawn once, by the process that starts pytest; its workers inherit it.
os.environ.setdefault("RESETAX_TEST_SESSION", os.urandom(8).hex())
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
    tempfile.gettempdir(), f"resetax-tests-jax-{os.environ['RESETAX_TEST_SESSION']}")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

import jax
import jax.numpy as jnp
import optax
import pytest


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import resetax

    doctest_namespace.update(jax=jax, jnp=jnp, optax=optax, resetax=resetax)


@pytest.fixture
def enable_x64():
    """The context manager that switches 64-bit types on and off, on every supported jax.

    ``jax.enable_x64`` exists from jax 0.8 on and ``jax.experimental.enable_x64`` before it (it
    is gone in 0.10), so the tests run at the declared jax floor too (``.ci/min-deps``).
    """
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64
    from jax.experimental import enable_x64 as experimental_enable_x64

    return experimental_enable_x64


def pytest_unconfigure(config):
    """The session's compilation cache goes with it (once, by the controller of the workers)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
