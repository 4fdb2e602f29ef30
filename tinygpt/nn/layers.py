"""The basic layers: each a few lines over the fused ops in ``tinygpt.functional``.

Initialisation follows GPT-2 (and nanoGPT): weights drawn from N(0, 0.02), biases zero,
LayerNorm scale one and shift zero. The book keeps PyTorch's defaults instead; GPT-2's small
normal trains a little better from scratch. A model whose every weight is loaded right after
is built inside ``uninitialized()``, which skips the random draws (most of a load's time).
"""

from __future__ import annotations

import contextlib

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.nn.module import Module, Parameter

INIT_STD = 0.02
_skip_init = False


@contextlib.contextmanager
def uninitialized():
    """Inside this block, weights are allocated but not drawn (their values are garbage):
    for a model whose parameters are all overwritten by ``load_state_dict`` next."""
    global _skip_init
    previous, _skip_init = _skip_init, True
    try:
        yield
    finally:
        _skip_init = previous


def init_skipped() -> bool:
    """True inside ``uninitialized()``."""
    return _skip_init


def normal_init(*shape, std=INIT_STD, dtype=None):
    """An array of N(0, std^2) samples from the seeded generator (uninitialised memory inside
    ``uninitialized()``)."""
    dtype = dtype or backend.default_dtype()
    if _skip_init:
        return backend.xp().empty(shape, dtype=dtype)
    return (backend.generator().standard_normal(shape) * std).astype(dtype)


class Linear(Module):
    """y = x W^T + b, with W of shape (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(normal_init(out_features, in_features, dtype=dtype))
        xp, dtype = backend.xp(), dtype or backend.default_dtype()
        self.bias = Parameter(xp.zeros(out_features, dtype=dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None})"


class Embedding(Module):
    """A lookup table: row i of ``weight`` is the vector for id i."""

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = Parameter(normal_init(num_embeddings, embedding_dim, dtype=dtype))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"


class LayerNorm(Module):
    """Normalise each token's vector, then scale and shift (named as in the book)."""

    def __init__(self, emb_dim, eps=1e-5, dtype=None):
        xp, dtype = backend.xp(), dtype or backend.default_dtype()
        self.eps = eps
        self.scale = Parameter(xp.ones(emb_dim, dtype=dtype))
        self.shift = Parameter(xp.zeros(emb_dim, dtype=dtype))

    def forward(self, x):
        return F.layer_norm(x, self.scale, self.shift, self.eps)

    def __repr__(self):
        return f"LayerNorm({self.scale.shape[0]}, eps={self.eps})"


class GELU(Module):
    """GELU activation, tanh approximation as GPT-2 uses."""

    def forward(self, x):
        return F.gelu(x)


class Dropout(Module):
    """Zero a fraction ``p`` of activations while training; identity in eval mode."""

    def __init__(self, p=0.0):
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def __repr__(self):
        return f"Dropout(p={self.p})"
