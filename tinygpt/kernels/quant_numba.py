"""Numba kernels for int8 and bfloat16 weights: the same functions and results as the
references in ``tinygpt.kernels.quant`` (which picks between the two; formats are described
there).

The matrix products go over the weight one output row at a time: the row is widened to
float32 in registers and multiplied into a float32 sum, once per row of x; the row (K bytes
in int8) stays in L1 cache across those passes. No float32 copy of a weight is made. Small
products run on the calling thread; bigger ones (a bigger weight, or more rows of x) split
the rows between the threads (see PARALLEL_BYTES). The embedding lookups are serial: they
copy a few rows.
"""

import os

import numba
import numpy as np
from numba import prange

# As in numba_cpu: Numba's threads wait passively between kernels, so they do not spin on
# the cores that BLAS needs next (read when Numba first starts its threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The sums may be reordered ("reassoc", so LLVM keeps 8-16 partial sums in one SIMD
# register: without it a float sum is one long serial chain) and multiply-adds fused
# ("contract"). That changes float32 rounding only; NaN and infinity stay exact.
_FASTMATH = {"reassoc", "contract"}


# A product runs on every thread when (rows of x) x (bytes of the weight) reaches this, on the
# calling thread only below it: waking the passively waiting threads costs about 50 us per
# launch, more than a second core saves on a small product. Measured on 2 cores while
# generating with GPT-2 124M at batch 1 (the weights come from main memory, not cache; us,
# serial / parallel): int8 768x768 111 / 150, 3072x768 400 / 300; bfloat16 768x768 128 / 160.
# With more rows of x each weight byte is used more often and the second core pays sooner
# (int8 768x768 with 8 rows: 385 / 260; bfloat16 768x768 with 2 rows: 193 / 173).
# (Four weight rows per pass, each x[m, k] loaded once for four products, was 3x faster with
# a weight in L2 cache, but no faster for int8 in generation and slower for bfloat16.)
PARALLEL_BYTES = 1 << 21


@numba.njit(cache=True, fastmath=_FASTMATH)
def _int8_row(x, q, scale, out, n):
    """out[:, n] = scale[n] * x @ q[n]: one output column; x (M, K), q (N, K), out (M, N)."""
    M, K = x.shape
    for m in range(M):  # the row q[n] (K bytes) stays in L1 across the M passes
        acc = np.float32(0.0)
        for k in range(K):
            acc += x[m, k] * np.float32(q[n, k])
        out[m, n] = acc * scale[n]


@numba.njit(cache=True, fastmath=_FASTMATH)
def _matmul_int8_serial(x, q, scale, out):
    """out[m, n] = scale[n] * sum_k x[m, k] * q[n, k], on the calling thread."""
    for n in range(q.shape[0]):
        _int8_row(x, q, scale, out, n)


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _matmul_int8_parallel(x, q, scale, out):
    """As _matmul_int8_serial, the rows split between the threads."""
    for n in prange(q.shape[0]):
        _int8_row(x, q, scale, out, n)


@numba.njit(cache=True, inline="always")
def _widen(bits):
    """One bfloat16 (uint16 bits) -> float32: the 16 bits become the top half of a float32
    (Numba's uint32 << int gives a uint64, hence the outer uint32 before .view). LLVM
    vectorizes it as a zero-extend and a shift."""
    return np.uint32(np.uint32(bits) << 16).view(np.float32)


@numba.njit(cache=True, fastmath=_FASTMATH)
def _bfloat16_row(x, bits, out, n):
    """out[:, n] = x @ widen(bits[n]); x (M, K), bits (N, K), out (M, N)."""
    M, K = x.shape
    for m in range(M):
        acc = np.float32(0.0)
        for k in range(K):
            acc += x[m, k] * _widen(bits[n, k])
        out[m, n] = acc


@numba.njit(cache=True, fastmath=_FASTMATH)
def _matmul_bfloat16_serial(x, bits, out):
    """out[m, n] = sum_k x[m, k] * widen(bits[n, k]), on the calling thread."""
    for n in range(bits.shape[0]):
        _bfloat16_row(x, bits, out, n)


@numba.njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _matmul_bfloat16_parallel(x, bits, out):
    """As _matmul_bfloat16_serial, the rows split between the threads."""
    for n in prange(bits.shape[0]):
        _bfloat16_row(x, bits, out, n)


@numba.njit(cache=True, parallel=True)
def _dequantize_int8_kernel(q, scale, out):
    """out[n, k] = scale[n] * q[n, k]: one pass, for the tiles of a long prompt's product."""
    for n in prange(q.shape[0]):
        s = scale[n]
        for k in range(q.shape[1]):
            out[n, k] = np.float32(q[n, k]) * s


@numba.njit(cache=True, parallel=True)
def _from_bfloat16_kernel(bits, out):
    """out[n, k] = widen(bits[n, k]) as float32."""
    for n in prange(bits.shape[0]):
        for k in range(bits.shape[1]):
            out[n, k] = _widen(bits[n, k])


@numba.njit(cache=True)
def _embedding_int8_kernel(ids, q, scale, out):
    """out[i] = scale[ids[i]] * q[ids[i]]; ids (I,), out (I, K). Serial: a few rows."""
    for i in range(ids.shape[0]):
        row, s = q[ids[i]], scale[ids[i]]
        for k in range(row.shape[0]):
            out[i, k] = np.float32(row[k]) * s


@numba.njit(cache=True)
def _embedding_bfloat16_kernel(ids, bits, out):
    """out[i] = widen(bits[ids[i]]); ids (I,), out (I, K)."""
    for i in range(ids.shape[0]):
        row = bits[ids[i]]
        for k in range(row.shape[0]):
            out[i, k] = _widen(row[k])


def matmul_int8(x, q, scale):
    """x (M, K) float32 @ (scale * q)^T -> (M, N) float32 (any M; fastest for small M)."""
    out = np.empty((x.shape[0], q.shape[0]), dtype=np.float32)
    big = x.shape[0] * q.nbytes >= PARALLEL_BYTES
    kernel = _matmul_int8_parallel if big else _matmul_int8_serial
    kernel(np.ascontiguousarray(x, dtype=np.float32), q, scale, out)
    return out


def matmul_bfloat16(x, bits):
    """x (M, K) float32 @ widen(bits)^T -> (M, N) float32."""
    out = np.empty((x.shape[0], bits.shape[0]), dtype=np.float32)
    big = x.shape[0] * bits.nbytes >= PARALLEL_BYTES
    kernel = _matmul_bfloat16_parallel if big else _matmul_bfloat16_serial
    kernel(np.ascontiguousarray(x, dtype=np.float32), bits, out)
    return out


def embedding_int8(ids, q, scale):
    """Rows ``ids`` (...) of the int8 table, widened -> (..., K) float32."""
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, q.shape[1]), dtype=np.float32)
    _embedding_int8_kernel(flat, q, scale, out)
    return out.reshape(np.shape(ids) + (q.shape[1],))


def embedding_bfloat16(ids, bits):
    """Rows ``ids`` (...) of the bfloat16 table, widened -> (..., K) float32."""
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = np.empty((flat.size, bits.shape[1]), dtype=np.float32)
    _embedding_bfloat16_kernel(flat, bits, out)
    return out.reshape(np.shape(ids) + (bits.shape[1],))


def dequantize_int8(q, scale):
    """(q (N, K) int8, scale (N,)) -> float32 (N, K)."""
    out = np.empty(q.shape, dtype=np.float32)
    _dequantize_int8_kernel(q, scale, out)
    return out


def from_bfloat16(bits):
    """bits (N, K) uint16 -> float32 (N, K) (exact)."""
    out = np.empty(bits.shape, dtype=np.float32)
    _from_bfloat16_kernel(bits, out)
    return out
