"""Shared test settings: a hypothesis profile without deadlines (the first Numba call of a
kernel compiles, which can take seconds), and float64 references."""

import os

import pytest
from hypothesis import settings

import tinygpt.testing  # noqa: F401 - registers the "tinygpt" and "ci" hypothesis profiles

settings.load_profile("ci" if os.environ.get("CI") else "tinygpt")


@pytest.fixture(autouse=True)
def _numpy_backend_and_seed():
    """Every test starts on the NumPy backend with float32 default and a fixed seed."""
    from tinygpt import backend, kernels

    backend.set_backend("numpy")
    backend.set_default_dtype("float32")
    backend.manual_seed(0)
    with kernels.using(kernels.chosen()):  # a test may switch kernels: switch back after it
        yield
    backend.set_backend("numpy")
    backend.set_default_dtype("float32")
