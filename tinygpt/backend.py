"""The array-module switch: every array in tinygpt lives on one backend.

tinygpt never calls ``numpy`` directly on tensor data. It asks this module for the active
array module (``xp()``), which is NumPy on the CPU or CuPy on a GPU. Both speak the same
NumPy API, so the engine and the layers are written once and run on either.

    >>> from tinygpt import backend
    >>> backend.set_backend("numpy")      # the default
    >>> backend.set_backend("cupy")       # or TINYGPT_BACKEND=cupy in the environment

Besides the switch, this module owns the other process-wide settings that arrays need:
the default floating dtype (float32), the random generator behind ``manual_seed``, and the
CPU settings below. (Which kernels run is ``tinygpt.kernels``' choice.)

Threads: ``set_num_threads(n)`` (or ``TINYGPT_NUM_THREADS=n`` in the environment, or
``--threads n`` on the commands) sets the threads of the BLAS's matrix products (through
threadpoolctl) and of the Numba kernels alike; by default both use every core. Idle threads
wait passively: before NumPy loads, this module asks OpenBLAS to stop spinning after a
matrix product (``OPENBLAS_THREAD_TIMEOUT=4``, 2**4 cycles instead of 2**28) and OpenMP to
sleep between kernels (``OMP_WAIT_POLICY=PASSIVE``), so that on a busy machine a waiting
thread gives its core to whoever can use it. A value already in the environment wins; if
NumPy was imported before tinygpt, OpenBLAS has read its settings already.

Memory: ``tune_malloc()`` (applied at import; ``TINYGPT_MALLOC=default`` turns it off) asks
glibc to keep freed memory for reuse instead of returning it to the OS: large arrays come
from the heap instead of fresh ``mmap`` calls (``M_MMAP_MAX=0``) and the heap is not
trimmed (``M_TRIM_THRESHOLD``). A training step frees and allocates the same sizes every
step, so without this every step faults in its activations and gradients page by page again.
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from dataclasses import dataclass
from types import ModuleType

if "numpy" not in sys.modules:  # OpenBLAS reads these when NumPy loads it
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy  # noqa: E402  (after the environment above)


@dataclass
class Backend:
    """One array module and the class of the arrays it makes."""

    name: str
    xp: ModuleType
    array_type: type

    def rng(self, seed: int | None):
        """A fresh random generator for this module (NumPy and CuPy both have default_rng)."""
        return self.xp.random.default_rng(seed)


_backends: dict[str, Backend] = {"numpy": Backend("numpy", numpy, numpy.ndarray)}
_active: Backend = _backends["numpy"]
_default_dtype = numpy.dtype("float32")
_seed: int | None = None
_generators: dict[str, object] = {}

CUPY_INSTALL_HINT = (
    "the 'cupy' backend needs CuPy and a CUDA GPU; install it with "
    "pip install -e \".[gpu]\" (CuPy for CUDA 12) and check that `import cupy` works"
)


def register_backend(name: str, module: ModuleType, array_type: type) -> None:
    """Make an array module available under ``name`` (CuPy registers itself on first use).

    Tests use this to stand a NumPy-like module in for CuPy on a machine with no GPU.
    """
    _backends[name] = Backend(name, module, array_type)


def _load_cupy() -> None:
    try:
        import cupy
    except ImportError as err:  # no CuPy, or CuPy without a working CUDA
        raise RuntimeError(CUPY_INSTALL_HINT + f" (import failed: {err})") from err
    register_backend("cupy", cupy, cupy.ndarray)


def get(name: str) -> Backend:
    """The backend called ``name``, loading CuPy on first request."""
    if name not in _backends:
        if name == "cupy":
            _load_cupy()
        else:
            known = ", ".join(sorted(set(_backends) | {"cupy"}))
            raise ValueError(f"unknown backend {name!r}; expected one of: {known}")
    return _backends[name]


def set_backend(name: str) -> None:
    """Make ``name`` ('numpy' or 'cupy') the backend new tensors are created on."""
    global _active
    _active = get(name)


def active() -> Backend:
    return _active


def xp() -> ModuleType:
    """The active array module: ``numpy`` or ``cupy``."""
    return _active.xp


def backend_of(array) -> Backend:
    """The backend whose array class ``array`` is an instance of."""
    # Newest first, so a module registered over NumPy (an ndarray subclass) wins.
    for b in reversed(_backends.values()):
        if isinstance(array, b.array_type):
            return b
    raise TypeError(f"expected an array of a tinygpt backend, got {type(array).__name__}")


def is_array(obj) -> bool:
    """True if ``obj`` is an array of any registered backend."""
    return any(isinstance(obj, b.array_type) for b in _backends.values())


def move(array, name: str):
    """Copy ``array`` onto backend ``name``; explicit, never implicit (CuPy <-> NumPy)."""
    source, target = backend_of(array), get(name)
    if source is target:
        return array
    if source.name == "numpy":
        return target.xp.asarray(array)
    host = source.xp.asnumpy(array) if hasattr(source.xp, "asnumpy") else array.get()
    return target.xp.asarray(host)


def to_numpy(obj):
    """A NumPy array of ``obj``: a backend array (a CuPy one comes back from the GPU) or any
    array-like (a list, a NumPy scalar)."""
    return move(obj, "numpy") if is_array(obj) else numpy.asarray(obj)


# ----------------------------------------------------------------------------- dtypes

def default_dtype():
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Floating dtype for new tensors: float32 (default) or float64 (gradient checks)."""
    global _default_dtype
    dtype = numpy.dtype(dtype)
    if dtype not in (numpy.float32, numpy.float64, numpy.float16):
        raise ValueError(f"default dtype must be float16, float32 or float64, got {dtype}")
    _default_dtype = dtype


# ----------------------------------------------------------------------------- randomness

def manual_seed(seed: int) -> None:
    """Seed every random draw tinygpt makes (weight init, dropout masks, sampling)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator():
    """The active backend's random generator, created from the last ``manual_seed``."""
    if _active.name not in _generators:
        _generators[_active.name] = _active.rng(_seed)
    return _generators[_active.name]


def get_rng_state() -> dict:
    """Everything needed to continue the random stream exactly (saved in checkpoints)."""
    gen = generator()
    return {"backend": _active.name, "seed": _seed, "bit_generator": gen.bit_generator.state}


def set_rng_state(state: dict) -> None:
    global _seed
    _seed = state["seed"]
    _generators.clear()
    generator().bit_generator.state = state["bit_generator"]


if os.environ.get("TINYGPT_BACKEND"):
    set_backend(os.environ["TINYGPT_BACKEND"])


# ----------------------------------------------------------------------------- threads

_num_threads: int | None = None  # None: the libraries' defaults (every core)


def set_num_threads(n: int) -> None:
    """Run matrix products (BLAS, through threadpoolctl) and Numba kernels on ``n`` threads.

    One thread per process is right when several trainings share a machine; the default,
    every core, is right for one. Numba's pool is capped at ``n`` if Numba is not loaded yet.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    global _num_threads
    _num_threads = n
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # every BLAS / OpenMP pool loaded in this process
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    else:
        os.environ["NUMBA_NUM_THREADS"] = str(n)


def num_threads() -> int:
    """The threads set by ``set_num_threads`` (or the environment), else every core."""
    return _num_threads or os.cpu_count() or 1


def _threads_from_environment() -> int | None:
    """TINYGPT_NUM_THREADS as a number; a bad value is one warning line, then ignored."""
    value = os.environ.get("TINYGPT_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        warnings.warn(f"TINYGPT_NUM_THREADS must be a positive integer, got {value!r}; "
                      "ignored (every core is used)", stacklevel=2)
        return None
    return int(value)


# ----------------------------------------------------------------------------- memory

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def tune_malloc() -> bool:
    """Keep freed memory in the process for the next step (glibc only; see the docstring).

    Returns True if glibc took the settings. Page faults per step drop from hundreds of
    thousands to near zero for GPT-2 124M (``benchmarks/train_step.py`` prints them).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


if os.environ.get("TINYGPT_MALLOC", "") != "default":
    tune_malloc()
_threads = _threads_from_environment()
if _threads:
    set_num_threads(_threads)
