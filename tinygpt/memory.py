"""How much memory a training step needs, estimated before anything is allocated.

A step holds the weights, their gradients and AdamW's two moments (16 bytes per parameter in
float32) plus the activations that backward needs, which grow with the micro-batch: per
sequence of T tokens and per transformer block about 28·T·C values (layer-norm inputs and
outputs, q, k, v and their head layout, the attention output, the four-times-wider MLP
before and after GELU, residual sums) and 2·H·T² (the attention probabilities, and dropout's
mask), plus 3·T·V for the logits, their softmax and its gradient. The figures were checked
against tinygpt's measured step memory (``benchmarks/train_step.py``): the estimate is a
little above it, as a budget should be.

``plan_micro_batches`` keeps the global batch (``batch_size × grad_accum`` sequences per
step) and splits it into smaller micro-batches, with more gradient accumulation, until the
estimate fits in the memory available; if even one sequence at a time does not fit it says
by how much, and which options make it fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tinygpt.config import GPTConfig

GiB = 2**30


def parameter_count(cfg: GPTConfig) -> int:
    """Parameters of ``GPTModel(cfg)`` (tied weights counted once), without allocating it."""
    C, V, L = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    attention = 3 * C * C + (3 * C if cfg.qkv_bias else 0) + C * C + C
    mlp = C * 4 * C + 4 * C + 4 * C * C + C
    block = attention + mlp + 4 * C  # two layer norms, scale and shift each
    total = V * C + cfg.context_length * C + L * block + 2 * C
    return total if cfg.tie_embeddings else total + V * C


@dataclass
class StepMemory:
    """Estimated bytes of one training step."""

    weights_and_optimizer: int  # weights, gradients, AdamW's two moments
    activations: int            # for one micro-batch

    @property
    def total(self) -> int:
        return self.weights_and_optimizer + self.activations


def estimate_step_memory(cfg: GPTConfig, micro_batch: int, context_length=None,
                         bytes_per_value=4) -> StepMemory:
    """The memory of a float32 AdamW step on micro-batches of ``micro_batch`` sequences of
    ``context_length`` tokens (the config's by default)."""
    T = context_length or cfg.context_length
    C, H, V, L = cfg.emb_dim, cfg.n_heads, cfg.vocab_size, cfg.n_layers
    per_sequence = L * (28 * T * C + 2 * H * T * T) + 3 * T * V
    return StepMemory(weights_and_optimizer=16 * parameter_count(cfg),
                      activations=bytes_per_value * micro_batch * per_sequence)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); None where the
    system does not say."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class DoesNotFit(ValueError):
    """Even one sequence per micro-batch needs more memory than is available."""


def plan_micro_batches(cfg: GPTConfig, batch_size: int, grad_accum: int,
                       available: int | None, headroom=0.8) -> tuple[int, int, StepMemory]:
    """(micro-batch size, gradient-accumulation steps, estimate) that keep the global batch
    ``batch_size * grad_accum`` and fit in ``headroom`` of ``available`` bytes: the largest
    divisor of ``batch_size`` that fits. Raises DoesNotFit, naming the options that help."""
    if available is None:
        return batch_size, grad_accum, estimate_step_memory(cfg, batch_size)
    budget = headroom * available
    for micro in sorted((d for d in range(1, batch_size + 1) if batch_size % d == 0),
                        reverse=True):
        estimate = estimate_step_memory(cfg, micro)
        if estimate.total <= budget:
            return micro, grad_accum * (batch_size // micro), estimate
    smallest = estimate_step_memory(cfg, 1)
    raise DoesNotFit(
        f"a training step needs about {smallest.total / GiB:.1f} GiB even one sequence at a "
        f"time ({smallest.weights_and_optimizer / GiB:.1f} GiB of weights, gradients and "
        f"AdamW moments, {smallest.activations / GiB:.1f} GiB of activations), but only "
        f"{available / GiB:.1f} GiB is available; use a smaller model (--config), a shorter "
        "--context-length, or a machine with more memory")
