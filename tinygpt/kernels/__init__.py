"""Hot-path kernels: the fused forward/backward pairs that the functional ops call.

``reference`` holds plain array code that runs on any backend. ``numba_cpu`` holds Numba
kernels with the same functions and signatures for the NumPy backend. ``impl()`` picks the
module to use now: Numba on the NumPy backend, unless ``TINYGPT_KERNELS=reference`` is set.
"""

from tinygpt import backend
from tinygpt.kernels import reference


def impl():
    """The kernel module for the active backend: ``numba_cpu`` or ``reference``."""
    if backend.kernels_enabled():
        from tinygpt.kernels import numba_cpu

        return numba_cpu
    return reference
