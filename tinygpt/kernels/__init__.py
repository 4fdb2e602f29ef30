"""Hot-path kernels: the fused forward/backward pairs that the functional ops call.

``reference`` holds plain array code that runs on any backend. ``numba_cpu`` holds Numba
kernels with the same functions and signatures for the NumPy backend. ``impl()`` is the
module the ops call: Numba on the NumPy backend, the reference on CuPy, without Numba, or
after ``use("reference")`` (``TINYGPT_KERNELS=reference`` in the environment does the same).

The choice is made once: the environment is read when this module is imported and Numba is
imported the first time it is needed, so an op call costs one comparison, not a lookup.
"""

from __future__ import annotations

import contextlib
import os

from tinygpt import backend
from tinygpt.kernels import reference

CHOICES = ("numba", "reference")
_choice = "reference" if os.environ.get("TINYGPT_KERNELS") == "reference" else "numba"
_numba_cpu = None  # the numba_cpu module once imported, or False when Numba is missing


def use(name: str) -> str:
    """Run the fused ops with ``name`` ("numba" or "reference") from now on; returns the
    previous choice. Tests use it to check that both give the same results."""
    global _choice
    if name not in CHOICES:
        raise ValueError(f"unknown kernels {name!r}; expected one of: {', '.join(CHOICES)}")
    previous, _choice = _choice, name
    return previous


def chosen() -> str:
    """The kernels chosen now: "numba" or "reference" (``impl()`` says which one runs)."""
    return _choice


@contextlib.contextmanager
def using(name: str):
    """``use(name)`` inside a ``with`` block, then back to the previous choice."""
    previous = use(name)
    try:
        yield
    finally:
        use(previous)


def _numba_kernels():
    """The numba_cpu module, imported on first call; False when Numba is not installed."""
    global _numba_cpu
    if _numba_cpu is None:
        try:
            from tinygpt.kernels import numba_cpu
        except ImportError:  # Numba is an optional speed-up; the reference always works
            numba_cpu = False
        _numba_cpu = numba_cpu
    return _numba_cpu


def impl():
    """The kernel module for the active backend: ``numba_cpu`` or ``reference``."""
    if _choice == "numba" and backend.active().name == "numpy":
        return _numba_kernels() or reference
    return reference


def numba_in_use() -> bool:
    """True when the Numba kernels run (NumPy backend, Numba installed, not switched off)."""
    return impl() is not reference
