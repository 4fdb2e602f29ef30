"""The neural-network ops of a GPT as differentiable functions (``import tinygpt.functional as F``).

Each op here is fused: one forward over arrays and one hand-derived backward beside it, not a
chain of primitive tensor ops. For cross-entropy, GELU, layer norm and attention (and softmax
and log-softmax, defined in ``tensor.py`` for ``Tensor.softmax`` and re-exported here) the
math of each pair, with its derivation, lives in ``tinygpt/kernels/reference.py``, and
``kernels.impl()`` runs either that reference or the Numba kernels that must match it; linear,
embedding and dropout are short enough to derive right here. This file also checks every
op's inputs (the kernels do not), flattens leading dimensions, and saves what the backward
needs.
"""

from __future__ import annotations

import math

import numpy

from tinygpt import backend, kernels
from tinygpt.tensor import Tensor, _require_float, _same_backend, log_softmax, softmax

__all__ = [
    "cross_entropy", "dropout", "dropout_mask", "embedding", "gelu", "layer_norm", "linear",
    "log_softmax", "relu", "scaled_dot_product_attention", "softmax",
]


def _tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


# ----------------------------------------------------------------------------- cross-entropy

def cross_entropy(logits, targets, ignore_index=-100) -> Tensor:
    """Mean cross-entropy of ``logits`` (..., V) against integer ``targets`` (...).

    Rows whose target equals ``ignore_index`` count for nothing (neither loss nor the mean's
    denominator), as in PyTorch; instruction fine-tuning uses this to skip padding.
    Fused log-softmax + negative log-likelihood: the backward is softmax minus one-hot.
    """
    logits = _tensor(logits)
    _require_float(logits, "cross_entropy", "logits")
    targets = targets.data if isinstance(targets, Tensor) else backend.xp().asarray(targets)
    if not numpy.issubdtype(targets.dtype, numpy.integer):
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits of shape {logits.shape} need targets of shape "
            f"{logits.shape[:-1]} (one class index per row), got {targets.shape}"
        )
    vocab = logits.shape[-1]
    valid = targets[targets != ignore_index]
    if valid.size and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
        raise ValueError(
            f"cross_entropy: targets must lie in [0, {vocab}) or equal ignore_index="
            f"{ignore_index}; got values from {int(valid.min())} to {int(valid.max())}"
        )
    K = kernels.impl()
    logits2d, targets1d = logits.data.reshape(-1, vocab), targets.reshape(-1)
    loss, lse = K.cross_entropy_forward(logits2d, targets1d, ignore_index)
    out = Tensor._make(loss, (logits,), "cross_entropy")
    out._set_backward(lambda g: (
        K.cross_entropy_backward(logits2d, targets1d, lse, ignore_index, g).reshape(logits.shape),
    ))
    return out


# ----------------------------------------------------------------------------- GELU

def relu(x) -> Tensor:
    """max(x, 0) elementwise (``torch.nn.functional.relu``, the book's spelling)."""
    return _tensor(x).relu()


def gelu(x) -> Tensor:
    """GELU with GPT-2's tanh approximation."""
    x = _tensor(x)
    _require_float(x, "gelu")
    K = kernels.impl()
    out = Tensor._make(K.gelu_forward(x.data), (x,), "gelu")
    out._set_backward(lambda g: (K.gelu_backward(x.data, g),))
    return out


# ----------------------------------------------------------------------------- layer norm

def layer_norm(x, weight, bias, eps=1e-5) -> Tensor:
    """Normalise the last axis of x (..., C) to mean 0, variance 1, then scale and shift."""
    x, weight, bias = _tensor(x), _tensor(weight), _tensor(bias)
    _require_float(x, "layer_norm")
    _same_backend((x, weight, bias), "layer_norm")
    C = x.shape[-1]
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"layer_norm: input has {C} channels, so weight and bias must have "
                         f"shape ({C},); got {weight.shape} and {bias.shape}")
    K = kernels.impl()
    x2d = x.data.reshape(-1, C)
    y, mean, rstd = K.layernorm_forward(x2d, weight.data, bias.data, eps)
    out = Tensor._make(y.reshape(x.shape), (x, weight, bias), "layer_norm")

    def backward(g):
        dx, dweight, dbias = K.layernorm_backward(g.reshape(-1, C), x2d, weight.data, mean, rstd)
        return dx.reshape(x.shape), dweight, dbias

    out._set_backward(backward)
    return out


# ----------------------------------------------------------------------------- linear

def linear(x, weight, bias=None) -> Tensor:
    """y = x @ weight^T + bias, with weight (out_features, in_features) as in PyTorch.

    The leading dimensions of x (B, T, ...) are flattened into one, so the backward is two
    plain matrix products: dx = g @ W and dW = g^T @ x (summed over all B*T rows at once).
    """
    x, weight = _tensor(x), _tensor(weight)
    bias = None if bias is None else _tensor(bias)
    _require_float(x, "linear")
    _same_backend((x, weight) if bias is None else (x, weight, bias), "linear")
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"linear: input has {x.shape[-1]} features in its last dimension, "
                         f"but the weight {weight.shape} expects {in_features}")
    if bias is not None and bias.shape != (out_features,):
        raise ValueError(f"linear: the weight {weight.shape} gives {out_features} features, "
                         f"so the bias must have shape ({out_features},); got {bias.shape}")
    x2d = x.data.reshape(-1, in_features)  # (N, in)
    y = x2d @ weight.data.T  # (N, out)
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = Tensor._make(y.reshape(x.shape[:-1] + (out_features,)), parents, "linear")

    def backward(g):
        xp = backend.xp()
        g2d = g.reshape(-1, out_features)
        # weight and bias gradients go straight into the parameters' slots when they can;
        # a frozen weight (LoRA fine-tuning) gets none, which saves a third of the work
        dweight = xp.matmul(g2d.T, x2d, out=weight.grad_destination(g.dtype)) \
            if weight.requires_grad else None
        grads = ((g2d @ weight.data).reshape(x.shape), dweight)
        if bias is None:
            return grads
        return grads + (xp.sum(g2d, axis=0, out=bias.grad_destination(g.dtype)),)

    out._set_backward(backward)
    return out


# ----------------------------------------------------------------------------- embedding

def embedding(ids, weight) -> Tensor:
    """Rows of ``weight`` (num_embeddings, dim) picked by integer ``ids`` of any shape.

    The backward adds each output row's gradient into the row it came from; a token that
    appears twice gets both contributions (scatter-add). Where the weight's gradient is
    already being summed in place (``Tensor.grad_accumulator``: a tied head wrote it, or an
    earlier micro-batch), the rows are added right there and no table-sized array is made.
    """
    weight = _tensor(weight)
    ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
    if not numpy.issubdtype(ids.dtype, numpy.integer):
        raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
    num = weight.shape[0]
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= num):
        raise IndexError(f"embedding: ids must lie in [0, {num}), got values from "
                         f"{int(ids.min())} to {int(ids.max())}")
    out = Tensor._make(weight.data[ids], (weight,), "embedding")

    def backward(g):
        xp = backend.xp()
        rows, row_grads = ids.reshape(-1), g.reshape(-1, weight.shape[1])  # (N,), (N, C)
        running = weight.grad_accumulator(g.dtype)
        if running is not None:
            xp.add.at(running, rows, row_grads)
            return (None,)  # already added into the weight's gradient
        grad = weight.grad_destination(g.dtype)  # the weight's own gradient slot, if free
        if grad is None:
            grad = xp.zeros_like(weight.data)
        else:
            grad.fill(0)
        xp.add.at(grad, rows, row_grads)
        return (grad,)

    out._set_backward(backward)
    return out


# ----------------------------------------------------------------------------- dropout

def dropout_mask(shape, p, dtype):
    """Keep each element with probability 1 - p, scaled by 1 / (1 - p) so the expected value
    is unchanged (inverted dropout: nothing to rescale at evaluation time).

    The seeded generator draws one 64-bit seed; the mask is a hash of that seed and each
    element's index (``reference.dropout_mask``), which a Numba kernel fills in parallel."""
    seed = int(backend.generator().integers(0, 2**63))
    return kernels.impl().dropout_mask(math.prod(shape), seed, p, dtype).reshape(shape)


def dropout(x, p=0.5, training=True) -> Tensor:
    """Zero each element with probability p while training; identity in evaluation."""
    x = _tensor(x)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    mask = dropout_mask(x.shape, p, x.dtype)
    out = Tensor._make(x.data * mask, (x,), "dropout")
    out._set_backward(lambda g: (g * mask,))
    return out


# ----------------------------------------------------------------------------- attention

def scaled_dot_product_attention(q, k, v, causal=True, dropout_p=0.0, training=False,
                                 scale=None) -> Tensor:
    """softmax(q k^T / sqrt(D), causally masked) @ v, with optional dropout on the weights.

    q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D). With a KV cache Tk > Tq and
    the queries are the last Tq positions. Forward and backward are one fused op each.
    """
    q, k, v = _tensor(q), _tensor(k), _tensor(v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        _require_float(t, "scaled_dot_product_attention", name)
    _same_backend((q, k, v), "scaled_dot_product_attention")
    if q.ndim < 2 or k.shape != v.shape or q.shape[:-2] != k.shape[:-2] \
            or q.shape[-1] != k.shape[-1] or q.shape[-2] > k.shape[-2]:
        raise ValueError(
            "scaled_dot_product_attention: expected q (..., Tq, D) and k, v (..., Tk, D) "
            f"with Tq <= Tk; got q {q.shape}, k {k.shape}, v {v.shape}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = dropout_mask(q.shape[:-1] + (k.shape[-2],), dropout_p, q.dtype) \
        if training and dropout_p > 0 else None
    K = kernels.impl()
    out_data, att = K.attention_forward(q.data, k.data, v.data, scale, causal, mask)
    out = Tensor._make(out_data, (q, k, v), "attention")
    out._set_backward(
        lambda g: K.attention_backward(g, q.data, k.data, v.data, att, scale, mask))
    return out
