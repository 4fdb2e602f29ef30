"""The GPT-2 model (the book's chapter 4), readable top to bottom.

    ids (B, T) -> token embedding + position embedding -> dropout
               -> n_layers x TransformerBlock
               -> final LayerNorm -> output head -> logits (B, T, V)

A TransformerBlock is pre-norm: x + attention(norm1(x)), then x + feed_forward(norm2(x)).
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.nn import layers
from tinygpt.nn.attention import KVCache, MultiHeadAttention
from tinygpt.nn.layers import GELU, Dropout, Embedding, LayerNorm, Linear
from tinygpt.nn.module import Module, Sequential
from tinygpt.tensor import Tensor


class FeedForward(Module):
    """Expand each token to 4C, apply GELU, project back to C."""

    def __init__(self, cfg: GPTConfig):
        self.layers = Sequential(
            Linear(cfg.emb_dim, 4 * cfg.emb_dim), GELU(), Linear(4 * cfg.emb_dim, cfg.emb_dim))

    def forward(self, x):
        return self.layers(x)


class TransformerBlock(Module):
    """Attention, then feed-forward, each on a normalised copy and added back (residual)."""

    def __init__(self, cfg: GPTConfig):
        self.att = MultiHeadAttention(
            d_in=cfg.emb_dim, d_out=cfg.emb_dim, context_length=cfg.context_length,
            dropout=cfg.drop_rate, num_heads=cfg.n_heads, qkv_bias=cfg.qkv_bias)
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg.emb_dim)
        self.norm2 = LayerNorm(cfg.emb_dim)
        self.drop_shortcut = Dropout(cfg.drop_rate)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache, layer))
        x = x + self.drop_shortcut(self.ff(self.norm2(x)))
        return x


class GPTModel(Module):
    """GPT-2. ``model(ids)`` maps token ids (B, T) to next-token logits (B, T, vocab)."""

    def __init__(self, cfg: GPTConfig | dict):
        # The book passes a dict (GPT_CONFIG_124M); its keys are GPTConfig's fields.
        cfg = GPTConfig(**cfg) if isinstance(cfg, dict) else cfg
        self.cfg = cfg
        self.tok_emb = Embedding(cfg.vocab_size, cfg.emb_dim)
        self.pos_emb = Embedding(cfg.context_length, cfg.emb_dim)
        self.drop_emb = Dropout(cfg.drop_rate)
        self.trf_blocks = Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = LayerNorm(cfg.emb_dim)
        self.out_head = Linear(cfg.emb_dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.tie_weights()
        self._scale_residual_init(cfg.n_layers)

    def _scale_residual_init(self, n_layers):
        """GPT-2 scales the init of the projections that write into the residual stream by
        1/sqrt(2 * n_layers), so the stream's variance does not grow with depth."""
        if layers.init_skipped():
            return
        for block in self.trf_blocks:
            for layer in (block.att.out_proj, block.ff.layers[2]):
                layer.weight.data *= (2 * n_layers) ** -0.5

    def tie_weights(self):
        """Make the output head use the token-embedding matrix itself (one shared Parameter:
        a gradient from either use lands in the same ``.grad``)."""
        self.out_head.weight = self.tok_emb.weight

    @property
    def weights_tied(self) -> bool:
        return self.out_head.weight is self.tok_emb.weight

    def hidden_states(self, ids, cache: KVCache | None = None) -> Tensor:
        """ids: (B, T) integers -> the final LayerNorm's output (B, T, C), what the head reads.

        With a ``cache`` the tokens continue the cached ones (generation); the cache then
        counts them as cached. A classifier puts its own head on these states."""
        ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        if ids.ndim != 2 or not numpy.issubdtype(ids.dtype, numpy.integer):
            raise ValueError(f"GPTModel expects token ids of shape (batch, tokens) and an "
                             f"integer dtype, got shape {ids.shape} and dtype {ids.dtype}")
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.context_length:
            raise ValueError(
                f"sequence of {start + T} tokens{' (with the cache)' if start else ''} is "
                f"longer than the model's context length {self.cfg.context_length}; "
                "crop the input to its last context_length tokens")
        positions = backend.xp().arange(start, start + T)
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, T, C) + (T, C)
        x = self.drop_emb(x)
        for layer, block in enumerate(self.trf_blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.final_norm(x)

    def forward(self, ids, cache: KVCache | None = None, last_only=False) -> Tensor:
        """ids: (B, T) integers -> logits (B, T, V). ``last_only`` returns only the last
        position's logits (B, 1, V), all that generation needs, skipping the output head
        for the other T - 1 tokens."""
        x = self.hidden_states(ids, cache)
        if last_only:
            x = x[:, -1:, :]
        return self.out_head(x)  # (B, T, V)
