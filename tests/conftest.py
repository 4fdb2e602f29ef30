"""Shared test settings: a hypothesis profile without deadlines (the first Numba call of a
kernel compiles, which can take seconds), and float64 references."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "tinygpt",
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("tinygpt"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "tinygpt")


@pytest.fixture(autouse=True)
def _numpy_backend_and_seed():
    """Every test starts on the NumPy backend with float32 default and a fixed seed."""
    from tinygpt import backend

    backend.set_backend("numpy")
    backend.set_default_dtype("float32")
    backend.manual_seed(0)
    yield
    backend.set_backend("numpy")
    backend.set_default_dtype("float32")
