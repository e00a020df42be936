"""Test configuration shared by tests/ and the doctests in resetax/.

Eight CPU devices are simulated so that pmap and sharding run as on a multi-device host; the flag
must be set before jax is first imported, which is why this file sits at the repository root.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
