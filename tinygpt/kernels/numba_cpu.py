"""Numba CPU kernels for the hot paths: the same functions, signatures and results as
``tinygpt.kernels.reference``, so a caller can swap one module for the other.

Each public function is a thin wrapper: it flattens its inputs to C-contiguous (N, C) rows
(any leading dimensions, float32 or float64, the input dtype kept; other dtypes and empty
arrays go to the reference, see ``_or_reference``), allocates the outputs and calls an
``@numba.njit`` kernel that loops over rows in parallel (``numba.prange``) and writes into
those outputs. Inputs are checked once, in ``tinygpt.functional``, not here.
One pass over a row does what the reference does in several whole-array passes with
temporaries, as llm.c does. Shapes use llm.c's names: B batch, T tokens, C channels,
V vocabulary, H heads, D head size, N rows.

The shared pieces (when a kernel applies, ``_launch``, the row loops and the vectorizing
``_exp``) are in ``numba_rows``. Threads: small inputs run on the calling thread only
(``_launch``), and the attention kernels (which sit between two matrix products) always do.
Accuracy: sums over a row (softmax denominators, layer-norm mean and variance, dot products)
accumulate in float64, so the order LLVM's SIMD lanes add them in changes nothing at the
precision of the float32 results (see ``numba_rows``).

A kernel stays only if ``benchmarks/kernels.py`` shows it faster than the reference (every
kernel here did, on 2 cores, at GPT-2 small shapes); one that stops being faster should be
replaced by a re-export of the reference function.
"""

import math

import numba
import numpy as np
from numba import prange

from tinygpt.kernels.numba_rows import (
    _SERIAL_BELOW,  # noqa: F401  (tests size their inputs around it)
    _exp,
    _launch,
    _layernorm_row_sums,
    _normalize,
    _or_reference,
    _row_dot,
    _row_max,
    _row_squared_deviation,
    _row_sum,
    _rows,
)
from tinygpt.kernels.reference import (  # noqa: F401  (causal_mask: the same as the reference)
    GELU_CUBIC,
    GELU_SCALE,
    GOLDEN_GAMMA,
    MIX_1,
    MIX_2,
    UNIFORM_BITS,
    causal_mask,
    keep_threshold,
)

# ----------------------------------------------------------------------------- dropout mask

@numba.njit(cache=True, parallel=True)
def _dropout_mask(seed, threshold, scale, out):
    """out (N,) = scale where the hash of (seed, i) keeps element i, else 0 (see the
    reference: the same SplitMix64 hash, element by element, in parallel)."""
    for i in prange(out.size):
        z = np.uint64(seed) + np.uint64(i) * np.uint64(GOLDEN_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_2)
        z = z ^ (z >> np.uint64(31))
        out[i] = scale if (z >> np.uint64(64 - UNIFORM_BITS)) >= threshold else 0


def dropout_mask(size, seed, p, dtype):
    """(size,) mask of 1 / (1 - p) and 0 from ``seed``; see ``reference.dropout_mask``."""
    out = np.empty(size, dtype=dtype)
    if size:
        _launch(_dropout_mask, size, np.uint64(seed), np.uint64(keep_threshold(p)),
                out.dtype.type(1.0 / (1.0 - p)), out)
    return out

# ----------------------------------------------------------------------------- softmax

@numba.njit(cache=True, parallel=True)
def _softmax_forward(x, y):
    """x (N, C) -> y (N, C), row by row in parallel."""
    for n in prange(x.shape[0]):
        xn, yn = x[n], y[n]
        m = _row_max(xn)
        for c in range(xn.size):
            yn[c] = _exp(xn[c] - m)
        _normalize(yn)


@numba.njit(cache=True, parallel=True)
def _softmax_backward(y, dy, dx):
    """y, dy (N, C) -> dx (N, C) = y * (dy - sum(dy * y)) per row."""
    for n in prange(y.shape[0]):
        d = _row_dot(dy[n], y[n])
        for c in range(y.shape[1]):
            dx[n, c] = y[n, c] * (dy[n, c] - d)


@_or_reference(1)
def softmax_forward(x, *, dtype):
    """Softmax over the last axis of x (..., C); see ``reference.softmax_forward``."""
    rows = _rows(x, dtype)
    y = np.empty_like(rows)
    _launch(_softmax_forward, rows.size, rows, y)
    return y.reshape(x.shape)


@_or_reference(2)
def softmax_backward(y, dy, *, dtype):
    """dx from the softmax output y and upstream dy, both (..., C)."""
    rows = _rows(y, dtype)
    dx = np.empty_like(rows)
    _launch(_softmax_backward, rows.size, rows, _rows(dy, dtype), dx)
    return dx.reshape(y.shape)


# ----------------------------------------------------------------------------- log-softmax

@numba.njit(cache=True, parallel=True)
def _log_softmax_forward(x, logy):
    """x (N, C) -> logy (N, C) = x - max - log(sum(exp(x - max))) per row."""
    for n in prange(x.shape[0]):
        xn, out = x[n], logy[n]
        m = _row_max(xn)
        for c in range(xn.size):
            out[c] = _exp(xn[c] - m)  # scratch: the exponentials, overwritten below
        log_sum = math.log(_row_sum(out))
        for c in range(xn.size):
            out[c] = (xn[c] - m) - log_sum


@numba.njit(cache=True, parallel=True)
def _log_softmax_backward(logy, dlogy, dx):
    """logy, dlogy (N, C) -> dx (N, C) = dlogy - exp(logy) * sum(dlogy) per row."""
    for n in prange(logy.shape[0]):
        total = _row_sum(dlogy[n])
        for c in range(logy.shape[1]):
            dx[n, c] = dlogy[n, c] - _exp(logy[n, c]) * total


@_or_reference(1)
def log_softmax_forward(x, *, dtype):
    """log(softmax(x)) over the last axis of x (..., C), without forming softmax(x)."""
    rows = _rows(x, dtype)
    logy = np.empty_like(rows)
    _launch(_log_softmax_forward, rows.size, rows, logy)
    return logy.reshape(x.shape)


@_or_reference(2)
def log_softmax_backward(logy, dlogy, *, dtype):
    """dx from the log-softmax output logy and upstream dlogy, both (..., C)."""
    rows = _rows(logy, dtype)
    dx = np.empty_like(rows)
    _launch(_log_softmax_backward, rows.size, rows, _rows(dlogy, dtype), dx)
    return dx.reshape(logy.shape)


# ----------------------------------------------------------------------------- cross-entropy

_CE_CHUNK = 512  # exponentials are summed in chunks this long, kept in L1 cache


@numba.njit(cache=True, parallel=True)
def _cross_entropy_forward(logits, targets, ignore_index, losses, lse):
    """logits (N, V), targets (N,) -> losses (N,) float64 (0 where ignored), lse (N,).

    One row at a time: max, then the sum of exp(logit - max) chunk by chunk, never holding
    the (N, V) probabilities."""
    N, V = logits.shape
    for n in prange(N):
        row = logits[n]
        m = _row_max(row)
        chunk = np.empty(min(V, _CE_CHUNK), dtype=logits.dtype)
        total = 0.0
        for start in range(0, V, _CE_CHUNK):
            stop = min(start + _CE_CHUNK, V)
            for v in range(start, stop):
                chunk[v - start] = _exp(row[v] - m)
            total += _row_sum(chunk[: stop - start])
        row_lse = m + math.log(total)
        lse[n] = row_lse
        t = targets[n]
        losses[n] = 0.0 if t == ignore_index else row_lse - row[t]


@numba.njit(cache=True, parallel=True)
def _cross_entropy_backward(logits, targets, lse, ignore_index, scale, dlogits):
    """logits (N, V), targets (N,), lse (N,) -> dlogits (N, V) =
    (exp(logits - lse) - onehot(target)) * scale, and 0 on ignored rows."""
    N, V = logits.shape
    for n in prange(N):
        t = targets[n]
        out = dlogits[n]
        if t == ignore_index:
            out[:] = 0
            continue
        row, row_lse = logits[n], lse[n]
        for v in range(V):
            out[v] = _exp(row[v] - row_lse) * scale
        out[t] = (_exp(row[t] - row_lse) - 1) * scale


def _flat_targets(targets):
    """targets as a contiguous int64 (N,) array (``F.cross_entropy`` has checked them)."""
    return np.ascontiguousarray(targets, dtype=np.int64).reshape(-1)


@_or_reference(1)
def cross_entropy_forward(logits, targets, ignore_index, *, dtype):
    """Mean cross-entropy of logits (N, V) against targets (N,); see the reference.
    Returns (loss: 0-d array, lse: (N,)); leading dimensions of logits are flattened."""
    rows = _rows(logits, dtype)
    targets = _flat_targets(targets)
    losses = np.empty(rows.shape[0])
    lse = np.empty(rows.shape[0], dtype=dtype)
    _launch(_cross_entropy_forward, rows.size, rows, targets, ignore_index, losses, lse)
    count = np.count_nonzero(targets != ignore_index)
    with np.errstate(invalid="ignore"):  # every row ignored: 0 / 0 = nan, as the reference
        loss = np.asarray(losses.sum() / np.float64(count))
    return loss.astype(dtype), lse.reshape(logits.shape[:-1])


@_or_reference(1)
def cross_entropy_backward(logits, targets, lse, ignore_index, dloss, *, dtype):
    """dlogits (same shape as logits) for the mean cross-entropy, in one pass over logits.
    Rows whose target is ``ignore_index`` get zeros (also when every row is ignored)."""
    rows = _rows(logits, dtype)
    targets = _flat_targets(targets)
    count = np.count_nonzero(targets != ignore_index)
    scale = dtype.type(float(dloss) / count if count else 0.0)
    dlogits = np.empty_like(rows)
    lse = np.ascontiguousarray(lse, dtype=dtype).reshape(-1)
    _launch(_cross_entropy_backward, rows.size, rows, targets, lse, ignore_index, scale,
            dlogits)
    return dlogits.reshape(logits.shape)


# ----------------------------------------------------------------------------- layer norm

@numba.njit(cache=True, parallel=True)
def _layernorm_forward(x, weight, bias, eps, y, mean, rstd):
    """x (N, C), weight and bias (C,) -> y (N, C), mean (N,), rstd (N,); float64 moments."""
    N, C = x.shape
    for n in prange(N):
        xn = x[n]
        m = _row_sum(xn) / C
        r = 1.0 / math.sqrt(_row_squared_deviation(xn, m) / C + eps)
        for c in range(C):
            y[n, c] = (xn[c] - m) * r * weight[c] + bias[c]
        mean[n] = m
        rstd[n] = r


@numba.njit(cache=True, parallel=True)
def _layernorm_backward(dy, x, weight, mean, rstd, dx, dweight_parts, dbias_parts):
    """dy, x (N, C), weight (C,), mean, rstd (N,) -> dx (N, C), and per-part partial sums
    dweight_parts, dbias_parts (P, C) float64: part p owns a block of rows, so no two
    threads add into the same numbers; the caller sums the P parts.

    With xhat = (x - mean) * rstd and dxhat = dy * weight, per row:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)); the two means come from
    ``_layernorm_row_sums`` first, so the loop over c below has no sums and vectorizes."""
    N, C = x.shape
    P = dweight_parts.shape[0]
    for p in prange(P):
        dw, db = dweight_parts[p], dbias_parts[p]
        for n in range(p * N // P, (p + 1) * N // P):
            m, r = np.float64(mean[n]), np.float64(rstd[n])
            sum_dxhat, sum_dxhat_centered = _layernorm_row_sums(dy[n], weight, x[n], m)
            mean_dxhat = sum_dxhat / C
            mean_dxhat_xhat = sum_dxhat_centered * r / C
            for c in range(C):
                xhat = (x[n, c] - m) * r
                dx[n, c] = r * (np.float64(dy[n, c]) * weight[c] - mean_dxhat
                                - xhat * mean_dxhat_xhat)
                dw[c] += dy[n, c] * xhat
                db[c] += dy[n, c]


@_or_reference(3)
def layernorm_forward(x, weight, bias, eps, *, dtype):
    """Layer norm over the last axis of x (..., C) -> y (..., C), mean (...), rstd (...)."""
    rows = _rows(x, dtype)
    y = np.empty_like(rows)
    mean = np.empty(rows.shape[0], dtype=dtype)
    rstd = np.empty(rows.shape[0], dtype=dtype)
    _launch(_layernorm_forward, rows.size, rows, _rows(weight, dtype).reshape(-1),
            _rows(bias, dtype).reshape(-1), float(eps), y, mean, rstd)
    return y.reshape(x.shape), mean.reshape(x.shape[:-1]), rstd.reshape(x.shape[:-1])


@_or_reference(3)
def layernorm_backward(dy, x, weight, mean, rstd, *, dtype):
    """(dx, dweight, dbias) for layer norm over the last axis; dweight and dbias sum over
    every leading dimension."""
    rows = _rows(x, dtype)
    N, C = rows.shape
    parts = max(1, min(N, numba.get_num_threads()))
    dweight_parts = np.zeros((parts, C))
    dbias_parts = np.zeros((parts, C))
    dx = np.empty_like(rows)
    _launch(_layernorm_backward, rows.size, _rows(dy, dtype), rows,
            _rows(weight, dtype).reshape(-1), np.ascontiguousarray(mean, dtype=dtype).reshape(-1),
            np.ascontiguousarray(rstd, dtype=dtype).reshape(-1), dx, dweight_parts, dbias_parts)
    return (dx.reshape(x.shape), dweight_parts.sum(axis=0).astype(dtype),
            dbias_parts.sum(axis=0).astype(dtype))


# ----------------------------------------------------------------------------- GELU

@numba.njit(cache=True, parallel=True)
def _gelu_forward(x, y):
    """x, y (N,) flat. 0.5 x (1 + tanh(u)) written as x * sigmoid(2u) = x / (1 + exp(-2u)):
    one exp instead of a tanh, and no cancellation in 1 + tanh(u) for negative x.
    Constants take x's dtype, so that float32 stays float32 (and vectorizes twice as wide)."""
    f = x.dtype.type
    s, c3, one, two = f(GELU_SCALE), f(GELU_CUBIC), f(1), f(2)
    for i in prange(x.size):
        xi = x[i]
        u = s * (xi + c3 * xi * xi * xi)
        y[i] = xi / (one + _exp(-two * u))


@numba.njit(cache=True, parallel=True)
def _gelu_backward(x, dy, dx):
    """x, dy, dx (N,) flat. With sig = sigmoid(2u) = 0.5 (1 + tanh(u)):
    d gelu / dx = sig + 2 x sig (1 - sig) du/dx, since 1 - tanh(u)**2 = 4 sig (1 - sig)."""
    f = x.dtype.type
    s, c3, one, two, three = f(GELU_SCALE), f(GELU_CUBIC), f(1), f(2), f(3)
    for i in prange(x.size):
        xi = x[i]
        u = s * (xi + c3 * xi * xi * xi)
        sig = one / (one + _exp(-two * u))
        du_dx = s * (one + three * c3 * xi * xi)
        dx[i] = dy[i] * (sig + two * xi * sig * (one - sig) * du_dx)


@_or_reference(1)
def gelu_forward(x, *, dtype):
    """GELU, tanh approximation, of an array of any shape."""
    flat = np.ascontiguousarray(x, dtype=dtype).reshape(-1)
    y = np.empty_like(flat)
    _launch(_gelu_forward, flat.size, flat, y)
    return y.reshape(x.shape)


@_or_reference(2)
def gelu_backward(x, dy, *, dtype):
    """dx of GELU from its input x and upstream dy (same shape)."""
    flat = np.ascontiguousarray(x, dtype=dtype).reshape(-1)
    dx = np.empty_like(flat)
    _launch(_gelu_backward, flat.size, flat, np.ascontiguousarray(dy, dtype=dtype).reshape(-1),
            dx)
    return dx.reshape(x.shape)


# ----------------------------------------------------------------------------- attention
#
# The matrix products run in NumPy (batched BLAS, with its own threads); Numba fuses
# everything between them into one pass over each row of the (Tq, Tk) scores. Calling np.dot
# inside a prange loop instead was slower: Numba's np.dot goes to SciPy's OpenBLAS, whose
# own threads then fought the Numba threads for the cores (on 2 cores the decode shape took
# 6 ms instead of 0.05 ms). For the same reason the two kernels here run on one thread: right
# after a BLAS call, whose threads still hold the other cores, that was measured faster than
# prange (6.1-6.4 ms against 6.8 ms for the GPT-2 small backward).

@numba.njit(cache=True)
def _attention_softmax_forward(scores, t_query, scale, causal):
    """scores (N, Tk) with N = BH * Tq, in place -> att = softmax(scores * scale, masked).

    Row n is query i = n % Tq, which with a KV cache sits at absolute position
    i + Tk - Tq and, when causal, sees keys 0 .. i + Tk - Tq; the others get 0."""
    N, Tk = scores.shape
    offset = Tk - t_query
    for n in range(N):
        seen = min(n % t_query + offset + 1, Tk) if causal else Tk
        row = scores[n, :seen]
        for j in range(seen):
            row[j] *= scale
        m = _row_max(row)
        for j in range(seen):  # in place: x -> exp(x - m) on one array, which LLVM vectorizes
            row[j] = _exp(row[j] - m)
        _normalize(row)
        scores[n, seen:] = 0


@numba.njit(cache=True)
def _attention_softmax_backward(att, datt, dropout_mask, scale):
    """att, datt (N, Tk), in place: datt -> dscores = att * (d - sum(d * att)) * scale with
    d = datt * dropout_mask, or d = datt when dropout_mask is the empty (0, 0) array."""
    N, Tk = att.shape
    for n in range(N):
        d = datt[n]
        if dropout_mask.shape[0]:
            for j in range(Tk):
                d[j] *= dropout_mask[n, j]
        total = _row_dot(d, att[n])
        for j in range(Tk):
            d[j] = att[n, j] * (d[j] - total) * scale


def _no_dropout(dtype):
    """The (0, 0) array that tells the kernels there is no dropout mask."""
    return np.zeros((0, 0), dtype=dtype)


@_or_reference(3)
def attention_forward(q, k, v, scale, causal=True, dropout_mask=None, *, dtype):
    """softmax(q k^T * scale, causally masked) [dropout] @ v; see the reference.
    q (B, H, Tq, D), k and v (B, H, Tk, D) -> out (B, H, Tq, D), att (B, H, Tq, Tk)."""
    t_query, t_key = q.shape[-2], k.shape[-2]
    q, k, v = (np.asarray(a, dtype=dtype) for a in (q, k, v))
    att = np.ascontiguousarray(q @ np.swapaxes(k, -1, -2))
    _attention_softmax_forward(att.reshape(-1, t_key), t_query, dtype.type(scale), bool(causal))
    weights = att if dropout_mask is None else att * dropout_mask
    return weights @ v, att


@_or_reference(5)
def attention_backward(dout, q, k, v, att, scale, dropout_mask=None, *, dtype):
    """(dq, dk, dv) for attention_forward, from dout (B, H, Tq, D) and the saved att."""
    dout, q, k, v, att = (np.asarray(a, dtype=dtype) for a in (dout, q, k, v, att))
    weights = att if dropout_mask is None else att * dropout_mask
    dv = np.swapaxes(weights, -1, -2) @ dout
    dscores = np.ascontiguousarray(dout @ np.swapaxes(v, -1, -2))
    mask = (_no_dropout(dtype) if dropout_mask is None
            else _rows(np.broadcast_to(dropout_mask, att.shape), dtype))
    _attention_softmax_backward(_rows(att, dtype), dscores.reshape(-1, att.shape[-1]), mask,
                                dtype.type(scale))
    return dscores @ k, np.swapaxes(dscores, -1, -2) @ q, dv
