"""The fused ops of a GPT, forward and backward, as plain array code.

These are the reference implementations: written with the active array module (NumPy or
CuPy), so they run on both backends, and every faster kernel in this package must match them.
Each forward returns what its backward needs (as llm.c does): the softmax output for
attention, mean and reciprocal standard deviation for layer norm, the log-sum-exp for
cross-entropy. Shapes use llm.c's names: B batch, T tokens, C channels, V vocabulary,
H heads, D head size, N rows (any leading dimensions flattened).

All softmax-like ops act on the last axis.
"""

import math

from tinygpt import backend

GELU_SCALE = math.sqrt(2.0 / math.pi)
GELU_CUBIC = 0.044715


# ----------------------------------------------------------------------------- dropout mask
#
# A dropout mask is a function of one 64-bit seed and each element's index (a "counter-based"
# random number generator, as Philox is for cuRAND): element i hashes seed + i with
# SplitMix64's finalizer, and its top 24 bits, read as a number u in [0, 1), keep the
# element when u >= p. Every element is independent of the others, so a kernel can fill the
# mask in parallel, in any order, and get exactly these numbers.

GOLDEN_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's step between consecutive counters
MIX_1, MIX_2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # its two multipliers
UNIFORM_BITS = 24  # the hash's top bits that make u: float32 resolution


def keep_threshold(p):
    """The smallest 24-bit integer u * 2**24 that is kept: u >= p."""
    return math.ceil(p * (1 << UNIFORM_BITS))


def dropout_mask(size, seed, p, dtype):
    """(size,) mask of ``dtype``: 1 / (1 - p) where hash(seed, i) >= p, else 0, for
    i = 0 .. size - 1 (inverted dropout). The uint64 arithmetic wraps around modulo 2**64,
    as the hash means it to."""
    xp = backend.xp()
    z = xp.arange(size, dtype=xp.uint64) * xp.uint64(GOLDEN_GAMMA) + xp.uint64(seed)
    z = (z ^ (z >> xp.uint64(30))) * xp.uint64(MIX_1)
    z = (z ^ (z >> xp.uint64(27))) * xp.uint64(MIX_2)
    z = z ^ (z >> xp.uint64(31))
    keep = (z >> xp.uint64(64 - UNIFORM_BITS)) >= keep_threshold(p)
    return keep.astype(dtype) * (1.0 / (1.0 - p))


# ----------------------------------------------------------------------------- softmax

def softmax_forward(x):
    """y_i = exp(x_i - max) / sum_j exp(x_j - max). Subtracting the max changes nothing
    mathematically and keeps exp from overflowing for large logits."""
    xp = backend.xp()
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward(y, dy):
    """dx_i = sum_j dy_j dy_j/dx_i with dy_j/dx_i = y_j (delta_ij - y_i), which collapses to
    dx = y * (dy - sum_j dy_j y_j): one dot product per row, no (N, N) Jacobian."""
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def log_softmax_forward(x):
    """log y_i = x_i - logsumexp(x), with the max subtracted inside logsumexp."""
    xp = backend.xp()
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def log_softmax_backward(logy, dlogy):
    """d(log y_j)/dx_i = delta_ij - y_i, so dx = dlogy - softmax(x) * sum_j dlogy_j."""
    xp = backend.xp()
    return dlogy - xp.exp(logy) * dlogy.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- cross-entropy

def cross_entropy_forward(logits, targets, ignore_index):
    """Mean negative log-likelihood over rows whose target is not ``ignore_index``.

    logits (N, V), targets (N,) integers -> (loss: 0-d array, lse: (N,) log-sum-exp per row).
    loss = mean_n (lse_n - logits[n, target_n]). Keeping only lse (N numbers) instead of the
    (N, V) probabilities saves memory: the backward recomputes softmax from logits and lse.
    """
    xp = backend.xp()
    row_max = logits.max(axis=-1)
    lse = row_max + xp.log(xp.exp(logits - row_max[:, None]).sum(axis=-1))
    valid = targets != ignore_index
    safe_targets = xp.where(valid, targets, 0)
    picked = logits[xp.arange(logits.shape[0]), safe_targets]
    count = valid.sum()
    total = xp.where(valid, lse - picked, 0).sum()
    loss = xp.where(count > 0, total / xp.maximum(count, 1), xp.nan)  # nan if all ignored
    return loss.astype(logits.dtype), lse


def cross_entropy_backward(logits, targets, lse, ignore_index, dloss):
    """d loss / d logits[n, v] = (softmax(logits[n])_v - [v == target_n]) / count for valid
    rows, 0 for ignored rows: the famous "probabilities minus one-hot"."""
    xp = backend.xp()
    valid = targets != ignore_index
    count = valid.sum()
    dlogits = xp.exp(logits - lse[:, None])
    rows = xp.arange(logits.shape[0])
    dlogits[rows, xp.where(valid, targets, 0)] -= 1
    dlogits *= (dloss / xp.maximum(count, 1)) * valid[:, None]  # all ignored: zeros
    return dlogits.astype(logits.dtype, copy=False)


# ----------------------------------------------------------------------------- layer norm

def layernorm_forward(x, weight, bias, eps):
    """x (N, C) -> y (N, C), mean (N,), rstd (N,).

    y = weight * (x - mean) * rstd + bias, with rstd = 1 / sqrt(var + eps) and var the
    biased variance (divided by C), as GPT-2 and PyTorch use.
    """
    mean = x.mean(axis=-1)
    centered = x - mean[:, None]
    var = (centered * centered).mean(axis=-1)
    rstd = 1.0 / backend.xp().sqrt(var + eps)
    y = centered * rstd[:, None] * weight + bias
    return y, mean, rstd


def layernorm_backward(dy, x, weight, mean, rstd):
    """Backward of layer norm, per row of C values.

    With xhat = (x - mean) * rstd and dxhat = dy * weight, differentiating through mean and
    rstd (both depend on every x_i in the row) gives
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
    the first term direct, the second through the mean, the third through the variance.
    dweight = sum over rows of dy * xhat and dbias = sum over rows of dy.
    """
    xhat = (x - mean[:, None]) * rstd[:, None]
    dxhat = dy * weight
    dx = rstd[:, None] * (
        dxhat
        - dxhat.mean(axis=-1, keepdims=True)
        - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
    )
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# ----------------------------------------------------------------------------- GELU

def gelu_forward(x):
    """GELU, tanh approximation (as GPT-2): 0.5 x (1 + tanh(s (x + 0.044715 x^3)))."""
    xp = backend.xp()
    return 0.5 * x * (1.0 + xp.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x)))


def gelu_backward(x, dy):
    """With u = s (x + 0.044715 x^3) and t = tanh(u):
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2)."""
    xp = backend.xp()
    t = xp.tanh(GELU_SCALE * (x + GELU_CUBIC * x * x * x))
    du_dx = GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


# ----------------------------------------------------------------------------- attention

def causal_mask(t_query, t_key):
    """Boolean (Tq, Tk) mask, True where a query may NOT look (a future key).

    With a KV cache the Tq queries are the last Tq of Tk positions, so query i sits at
    absolute position i + (Tk - Tq) and may look at keys 0 .. i + (Tk - Tq).
    """
    xp = backend.xp()
    offset = t_key - t_query
    return xp.triu(xp.ones((t_query, t_key), dtype=bool), k=1 + offset)


def attention_forward(q, k, v, scale, causal=True, dropout_mask=None):
    """softmax(q k^T * scale, masked) [dropout] @ v.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> out (B, H, Tq, D), att (B, H, Tq, Tk).
    ``att`` is the softmax output before dropout: the backward needs it. ``dropout_mask``,
    when given, is the keep mask already divided by (1 - p).
    """
    xp = backend.xp()
    scores = (q @ xp.swapaxes(k, -1, -2)) * scale
    if causal:
        scores = xp.where(causal_mask(q.shape[-2], k.shape[-2]), -xp.inf, scores)
    att = softmax_forward(scores)
    weights = att if dropout_mask is None else att * dropout_mask
    return weights @ v, att


def attention_backward(dout, q, k, v, att, scale, dropout_mask=None):
    """Backward of attention_forward, one matrix product per step of the forward:

        out = W v            ->  dW = dout v^T,     dv = W^T dout
        W = att * mask       ->  datt = dW * mask
        att = softmax(S)     ->  dS = att * (datt - sum(datt * att))   (softmax_backward)
        S = q k^T * scale    ->  dq = dS k * scale, dk = dS^T q * scale

    Masked (future) positions have att = 0, so dS is 0 there too: no extra masking needed.
    """
    xp = backend.xp()
    weights = att if dropout_mask is None else att * dropout_mask
    dv = xp.swapaxes(weights, -1, -2) @ dout
    datt = dout @ xp.swapaxes(v, -1, -2)
    if dropout_mask is not None:
        datt = datt * dropout_mask
    dscores = softmax_backward(att, datt) * scale
    dq = dscores @ k
    dk = xp.swapaxes(dscores, -1, -2) @ q
    return dq, dk, dv
