"""Numba CPU kernels (placeholder: re-exports the reference until the kernels land)."""

from tinygpt.kernels.reference import *  # noqa: F401,F403
