"""Causal multi-head self-attention (the book's chapter 3), with a KV cache for generation."""

from __future__ import annotations

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.nn.layers import Linear
from tinygpt.nn.module import Module
from tinygpt.tensor import Tensor


class KVCache:
    """Keys and values of the tokens seen so far, for every layer, so that each new token
    attends to them without recomputing them (generation makes one per sequence; the model
    holds none).

    Each layer's buffers, (B, H, capacity, D), are allocated on its first ``update`` and
    filled in place. ``length`` counts the cached tokens, the same in every layer: the
    model writes a step's keys and values into each layer with ``update``, then calls
    ``advance`` once.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity  # the model's context length
        self.keys, self.values = [], []  # one (B, H, capacity, D) buffer per layer
        self.length = 0

    def update(self, layer: int, k, v):
        """Store k, v (B, H, T, D) of ``layer`` after the cached tokens; return the layer's
        keys and values so far, views of shape (B, H, length + T, D)."""
        B, H, T, D = k.shape
        if layer == len(self.keys):
            self.keys.append(backend.xp().empty((B, H, self.capacity, D), dtype=k.dtype))
            self.values.append(backend.xp().empty_like(self.keys[layer]))
        if self.length + T > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} cached + {T} new tokens "
                             f"exceed the context length {self.capacity}; start a new cache")
        if self.keys[layer].shape[0] != B:
            raise ValueError(f"KV cache holds batch size {self.keys[layer].shape[0]}, got {B}; "
                             "start a new cache for a new batch")
        end = self.length + T
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more as cached (after every layer has stored them)."""
        self.length += tokens


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

    def _split_heads(self, x: Tensor) -> Tensor:
        """(B, T, d_out) -> (B, H, T, D)."""
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """x (B, T, d_in) -> (B, T, d_out). With a ``cache`` the T tokens follow the cached
        ones and attend to them too (keys and values of this ``layer`` are stored there)."""
        B, T, _ = x.shape  # batch, tokens, channels
        q = self._split_heads(self.W_query(x))
        k = self._split_heads(self.W_key(x))
        v = self._split_heads(self.W_value(x))
        if cache is not None:  # the cache holds plain arrays: generation needs no gradients
            k_all, v_all = cache.update(layer, k.data, v.data)
            k, v = Tensor(k_all), Tensor(v_all)
        context = F.scaled_dot_product_attention(
            q, k, v, causal=True, dropout_p=self.dropout, training=self.training)
        context = context.transpose(1, 2).reshape(B, T, self.d_out)  # heads side by side
        return self.out_proj(context)
