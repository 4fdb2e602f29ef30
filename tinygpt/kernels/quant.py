"""Matrix products and embedding lookups over int8 and bfloat16 weights (inference only).

Generating one token at batch 1 reads every weight of the model once, so its speed is set
by how many bytes a weight takes: 4 in float32, 2 in bfloat16, 1 in int8. NumPy has no
int8 or bfloat16 matrix products, so this module writes them.

Formats, for a weight W of shape (N, K) = (out_features, in_features) as Linear stores it:

  int8      q (N, K) int8 and scale (N,) float32 with W[n, k] ~ scale[n] * q[n, k]:
            symmetric, one scale per output row, scale[n] = max_k |W[n, k]| / 127.
  bfloat16  bits (N, K) uint16: the upper half of each float32 (rounded to nearest, ties to
            even). Widening back is exact: the bits shifted left by 16, read as float32.

Each operation has a reference written with whole-array ops of the active array module
(NumPy or CuPy), here, and a Numba kernel for NumPy in ``quant_numba.py`` (loaded on
first use, so ``import tinygpt`` does not start Numba) that must match it
(tests/test_quant.py):

  matmul_int8(x, q, scale), matmul_bfloat16(x, bits)   x (M, K) float32 -> (M, N) float32
  embedding_int8(ids, q, scale), embedding_bfloat16(ids, bits)    ids (...) -> (..., K)

The Numba kernels go over the weight a few output rows at a time (on every thread for big
products, see ``quant_numba.PARALLEL_BYTES``); each weight is widened to float32 in a
register and multiplied into a float32 sum, so no float32 copy of a weight is ever made.
They serve small M (one or a few tokens per sequence: generation), where reading the
weights is the cost. For many rows (a long prompt) the product is bound by arithmetic
instead, and BLAS does that best: ``tiled_matmul`` widens TILE_ELEMENTS weights at a time
into a float32 tile (with a one-pass Numba kernel, or with array ops in the reference) and
multiplies with BLAS, again without a full float32 copy.
"""

from __future__ import annotations

import numpy as np

from tinygpt import backend
from tinygpt.kernels import numba_in_use

SMALL_BATCH = 16  # rows of x up to which the Numba kernels beat tiled BLAS (measured, 2 cores)
TILE_ELEMENTS = 1 << 20  # weights widened at a time by the reference (4 MB of float32)

# ----------------------------------------------------------------------------- conversion

def quantize_int8(w):
    """W (N, K) float -> (q (N, K) int8, scale (N,) float32), per-row symmetric."""
    xp = backend.xp()
    w = xp.ascontiguousarray(w, dtype=np.float32)  # rows contiguous, as the kernels read them
    amax = xp.abs(w).max(axis=1)
    scale = xp.where(amax > 0, amax / 127, 1).astype(np.float32)  # an all-zero row keeps 1
    q = xp.clip(xp.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def to_bfloat16(w):
    """W (..., K) float -> bits uint16, rounded to the nearest bfloat16 (ties to even)."""
    bits = backend.xp().ascontiguousarray(w, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds the dropped 16 bits half-to-even.
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def from_bfloat16(bits):
    """bits uint16 -> float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def dequantize_int8(q, scale):
    """(q (N, K), scale (N,)) -> float32 (N, K); the references use it one tile at a time."""
    return q.astype(np.float32) * scale[:, None]


# ----------------------------------------------------------------------------- references

def _row_tiles(N, K):
    """Slices of at most TILE_ELEMENTS // K weight rows covering range(N)."""
    rows = max(1, TILE_ELEMENTS // K)
    return [slice(start, min(N, start + rows)) for start in range(0, N, rows)]


def tiled_matmul(x, N, K, widen):
    """x (M, K) @ W^T -> (M, N) float32 with BLAS, where ``widen(rows)`` returns the float32
    rows ``rows`` (a slice) of W: only one tile of W is ever float32."""
    out = backend.xp().empty((x.shape[0], N), dtype=np.float32)
    for rows in _row_tiles(N, K):
        out[:, rows] = x @ widen(rows).T
    return out


def matmul_int8_reference(x, q, scale):
    """x (M, K) float32 @ (scale * q)^T -> (M, N) float32, one widened tile at a time."""
    return tiled_matmul(x, *q.shape, lambda rows: dequantize_int8(q[rows], scale[rows]))


def matmul_bfloat16_reference(x, bits):
    """x (M, K) float32 @ widen(bits)^T -> (M, N) float32, one widened tile at a time."""
    return tiled_matmul(x, *bits.shape, lambda rows: from_bfloat16(bits[rows]))


def embedding_int8_reference(ids, q, scale):
    """Rows ``ids`` (...) of the int8 table, widened -> (..., K) float32."""
    return q[ids].astype(np.float32) * scale[ids][..., None]


def embedding_bfloat16_reference(ids, bits):
    """Rows ``ids`` (...) of the bfloat16 table, widened -> (..., K) float32."""
    return from_bfloat16(bits[ids])


# ----------------------------------------------------------------------------- dispatch

def _numba():
    """The Numba kernels module, or None where they do not apply (CuPy, no Numba, or
    TINYGPT_KERNELS=reference)."""
    if not numba_in_use():
        return None
    from tinygpt.kernels import quant_numba

    return quant_numba


def matmul_int8(x, q, scale):
    """x (M, K) float32 @ W^T for an int8 W = scale * q (N, K) -> (M, N) float32."""
    kernels = _numba()
    if kernels is None:
        return matmul_int8_reference(x, q, scale)
    if x.shape[0] <= SMALL_BATCH:
        return kernels.matmul_int8(x, q, scale)
    return tiled_matmul(x, *q.shape, lambda rows: kernels.dequantize_int8(q[rows], scale[rows]))


def matmul_bfloat16(x, bits):
    """x (M, K) float32 @ W^T for a bfloat16 W stored as uint16 (N, K) -> (M, N) float32."""
    kernels = _numba()
    if kernels is None:
        return matmul_bfloat16_reference(x, bits)
    if x.shape[0] <= SMALL_BATCH:
        return kernels.matmul_bfloat16(x, bits)
    return tiled_matmul(x, *bits.shape, lambda rows: kernels.from_bfloat16(bits[rows]))


def embedding_int8(ids, q, scale):
    """Rows ``ids`` (...) of an int8 table (N, K) as float32 (..., K)."""
    kernels = _numba()
    if kernels is not None:
        return kernels.embedding_int8(ids, q, scale)
    return embedding_int8_reference(ids, q, scale)


def embedding_bfloat16(ids, bits):
    """Rows ``ids`` (...) of a bfloat16 table (N, K) as float32 (..., K)."""
    kernels = _numba()
    if kernels is not None:
        return kernels.embedding_bfloat16(ids, bits)
    return embedding_bfloat16_reference(ids, bits)
