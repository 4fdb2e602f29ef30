"""The array-module switch: every array in tinygpt lives on one backend.

tinygpt never calls ``numpy`` directly on tensor data. It asks this module for the active
array module (``xp()``), which is NumPy on the CPU or CuPy on a GPU. Both speak the same
NumPy API, so the engine and the layers are written once and run on either.

    >>> from tinygpt import backend
    >>> backend.set_backend("numpy")      # the default
    >>> backend.set_backend("cupy")       # or TINYGPT_BACKEND=cupy in the environment

Besides the switch, this module owns the other process-wide settings that arrays need:
the default floating dtype (float32) and the random generator behind ``manual_seed``.
(Which kernels run is ``tinygpt.kernels``' choice.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import numpy


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
