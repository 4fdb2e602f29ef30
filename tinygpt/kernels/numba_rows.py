"""The shared pieces of the Numba CPU kernels: when they apply, how they launch, and the
row loops (max, sum, dot, exp) that the kernels in ``numba_cpu`` are built from (``optim``
launches through ``_launch`` too).

Threads: the kernels take turns with NumPy's BLAS threads on the same cores, so small inputs
run on the calling thread only (``_launch``) and OpenMP is asked to wait passively between
kernels (``OMP_WAIT_POLICY`` below).

Editing this file: Numba's on-disk cache (``cache=True``) checks only the modification time
of the file a kernel is defined in, so the kernels of ``numba_cpu``, compiled with the old
helpers, stay in use; delete ``tinygpt/kernels/__pycache__/*.nbi`` and ``*.nbc`` afterwards.
(Installing a new version writes every file anew, so users do not meet this.)

Accuracy: sums over a row accumulate in float64; only they may be reordered (see
``_SUM_FASTMATH``), every other operation keeps IEEE semantics (no other ``fastmath``).
``_exp`` is written out because Numba's ``np.exp`` calls the scalar C library one element at
a time (no SIMD without Intel's SVML), which made softmax no faster than NumPy's SIMD
``exp``; the version here vectorizes and is within 2 ulp of ``np.exp``.
"""

import functools
import math
import os

import numba
import numpy as np
from numba import types
from numba.extending import overload

from tinygpt.kernels import reference

# Numba's OpenMP threads spin after each parallel kernel by default, and on a small machine
# that spinning takes the cores from the BLAS threads of the next matrix product (measured on
# 2 cores: GELU after a 512x768x3072 matmul cost 4 ms instead of 0.7 ms). Waiting passively
# costs about 50 us per kernel launch instead. OpenMP reads this when Numba first starts its
# threads (not at import); an OMP_WAIT_POLICY already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_SERIAL_BELOW = 1 << 17  # elements; measured break-even on 2 cores


# ----------------------------------------------------------------------------- helpers

def _common_float(*arrays):
    """The dtype the reference would compute in, or None where the Numba kernels do not
    apply (other dtypes, empty arrays)."""
    dtype = np.result_type(*arrays)
    return dtype if dtype in _FLOATS and all(a.size for a in arrays) else None


def _or_reference(n_arrays):
    """Decorator for a wrapper whose first ``n_arrays`` arguments are arrays: where the Numba
    kernels do not apply to them (see ``_common_float``) the reference function of the same
    name runs instead; otherwise the wrapper runs, with their common dtype as ``dtype=``."""

    def decorate(wrapper):
        fallback = getattr(reference, wrapper.__name__)

        @functools.wraps(wrapper)
        def dispatch(*args, **kwargs):
            dtype = _common_float(*args[:n_arrays])
            if dtype is None:
                return fallback(*args, **kwargs)
            return wrapper(*args, dtype=dtype, **kwargs)

        return dispatch

    return decorate


def _launch(kernel, size, *args):
    """Run a parallel kernel over ``size`` elements; below _SERIAL_BELOW on this thread only,
    where waking the other threads (about 50 us with passive waiting) would cost more than
    they save."""
    if size >= _SERIAL_BELOW:
        kernel(*args)
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        kernel(*args)
    finally:
        numba.set_num_threads(threads)


def _rows(x, dtype):
    """x (..., C) -> C-contiguous (N, C) array of ``dtype`` (a view when nothing changes)."""
    x = np.ascontiguousarray(x, dtype=dtype)
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _exp(x):
    """e**x for one float32 or float64 number, in a form LLVM vectorizes (see _exp_typed)."""
    raise NotImplementedError("only callable from Numba-compiled code")


@overload(_exp)
def _exp_typed(x):
    """Cephes-style exp: x = k ln2 + r with |r| <= ln2 / 2, exp(r) by a polynomial, 2**k
    built from exponent bits (as two factors 2**a 2**b, so that results near the overflow and
    denormal ends come out right). Out-of-range x clamps to where exp is already inf or 0."""
    if x == types.float32:
        f32 = np.float32

        def exp_float32(x):
            xc = min(max(x, f32(-110.0)), f32(89.0))
            k = np.floor(xc * f32(1.4426950408889634) + f32(0.5))
            r = xc - k * f32(0.693359375) - k * f32(-2.12194440e-4)  # ln2 split in two parts
            p = (((((f32(1.9875691500e-4) * r + f32(1.3981999507e-3)) * r
                    + f32(8.3334519073e-3)) * r + f32(4.1665795894e-2)) * r
                  + f32(1.6666665459e-1)) * r + f32(5.0000001201e-1)) * (r * r) + r + f32(1.0)
            a = np.int32(k) >> 1
            b = np.int32(k) - a
            two_a = np.int32((a + 127) << 23).view(np.float32)
            two_b = np.int32((b + 127) << 23).view(np.float32)
            return p * two_a * two_b if x == x else x  # NaN stays NaN

        return exp_float32
    if x == types.float64:

        def exp_float64(x):
            xc = min(max(x, -750.0), 710.0)
            k = np.floor(xc * 1.4426950408889634 + 0.5)
            r = xc - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10
            # Taylor series to r**13: the remainder is below 1e-17 for |r| <= ln2 / 2.
            p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (
                1 / 120 + r * (1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (
                    1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r * (
                        1 / 479001600 + r / 6227020800))))))))))))
            a = np.int64(k) >> 1
            b = np.int64(k) - a
            two_a = np.int64((a + 1023) << 52).view(np.float64)
            two_b = np.int64((b + 1023) << 52).view(np.float64)
            return p * two_a * two_b if x == x else x

        return exp_float64
    return None


@numba.njit(cache=True)
def _row_max(a):
    """max of a 1-D array; eight running maxima, so that the compares overlap."""
    n, m0 = a.size, a[0]
    m1 = m2 = m3 = m4 = m5 = m6 = m7 = m0
    for i in range(0, n - n % 8, 8):
        m0, m1, m2, m3 = max(m0, a[i]), max(m1, a[i + 1]), max(m2, a[i + 2]), max(m3, a[i + 3])
        m4, m5, m6, m7 = max(m4, a[i + 4]), max(m5, a[i + 5]), max(m6, a[i + 6]), max(m7, a[i + 7])
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for i in range(n - n % 8, n):
        m = max(m, a[i])
    return m


# The row sums below accumulate in float64 and may be reordered ("reassoc"): LLVM then keeps
# a vector of partial sums (8 float64 lanes with AVX-512) instead of one chain in which each
# add waits for the one before. Measured on a 768 x 128 layer norm: 19 us for the two sums
# of every row, against 81 us with eight partial sums written out by hand (which LLVM left
# scalar) and 36 us for one plain chain. The order is fixed for a given build, and float64
# partial sums of float32 values differ by ~1e-16 relative from any other order.
_SUM_FASTMATH = {"reassoc"}


@numba.njit(cache=True, fastmath=_SUM_FASTMATH)
def _row_dot(a, b):
    """sum(a * b) of two 1-D arrays, in float64."""
    total = 0.0
    for i in range(a.size):
        total += np.float64(a[i]) * b[i]
    return total


@numba.njit(cache=True, fastmath=_SUM_FASTMATH)
def _row_sum(a):
    """sum(a) of a 1-D array, in float64."""
    total = 0.0
    for i in range(a.size):
        total += a[i]
    return total


@numba.njit(cache=True, fastmath=_SUM_FASTMATH)
def _row_squared_deviation(a, m):
    """sum((a - m)**2) of a 1-D array around the float64 ``m`` (layer norm's variance)."""
    total = 0.0
    for i in range(a.size):
        d = a[i] - m
        total += d * d
    return total


@numba.njit(cache=True, fastmath=_SUM_FASTMATH)
def _layernorm_row_sums(dy, w, x, m):
    """(sum(dy * w), sum(dy * w * (x - m))) of one row, in float64: the two sums layer
    norm's backward needs, in one pass."""
    sum_g = sum_gx = 0.0
    for i in range(x.size):
        g = np.float64(dy[i]) * w[i]
        sum_g += g
        sum_gx += g * (x[i] - m)
    return sum_g, sum_gx


@numba.njit(cache=True)
def _normalize(y):
    """y /= sum(y) for one row, the sum in float64."""
    inv = 1.0 / _row_sum(y)
    for c in range(y.size):
        y[c] = y[c] * inv
