"""Causal multi-head self-attention (the book's chapter 3), with a KV cache for generation."""

from __future__ import annotations

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.nn.layers import Linear
from tinygpt.nn.module import Module
from tinygpt.tensor import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, so each new token attends without
    recomputing them. Buffers of the full context length are allocated once and filled in
    place; ``append`` returns views of the filled part, shape (B, H, Tk, D)."""

    def __init__(self):
        self.keys = self.values = None
        self.length = 0

    def append(self, k, v):
        B, H, T, D = k.shape
        if self.keys is None:
            self.keys = backend.xp().empty((B, H, self.capacity, D), dtype=k.dtype)
            self.values = backend.xp().empty_like(self.keys)
        if self.length + T > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} cached + {T} new tokens "
                             f"exceed the context length {self.capacity}; reset the cache")
        if self.keys.shape[0] != B:
            raise ValueError(f"KV cache holds batch size {self.keys.shape[0]}, got {B}; "
                             "reset the cache before a new batch")
        end = self.length + T
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reset(self, capacity):
        self.keys = self.values = None
        self.length = 0
        self.capacity = capacity


class MultiHeadAttention(Module):
    """Each of H heads attends over the sequence with its own D = d_out / H slice of the
    query, key and value projections; their outputs are concatenated and projected back."""

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        if d_out % num_heads:
            raise ValueError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.context_length, self.dropout = context_length, dropout
        self.W_query = Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = Linear(d_out, d_out)
        self.kv_cache = KVCache()
        self.kv_cache.reset(context_length)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, T, d_out) -> (B, H, T, D)."""
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, use_cache=False) -> Tensor:
        B, T, _ = x.shape  # batch, tokens, channels
        q = self._split_heads(self.W_query(x))
        k = self._split_heads(self.W_key(x))
        v = self._split_heads(self.W_value(x))
        if use_cache:  # attend to every cached token too; the cache holds plain arrays
            k_all, v_all = self.kv_cache.append(k.data, v.data)
            k, v = Tensor(k_all), Tensor(v_all)
        context = F.scaled_dot_product_attention(
            q, k, v, causal=True, dropout_p=self.dropout, training=self.training)
        context = context.transpose(1, 2).reshape(B, T, self.d_out)  # heads side by side
        return self.out_proj(context)
