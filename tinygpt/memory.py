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
estimate fits in the memory available (times the processes that share the machine, under
``--nproc`` or an MPI launcher: each holds the whole model and its rows of a micro-batch);
if even one sequence at a time does not fit it says by how much, and which options make it
fit.
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
                         bytes_per_value=4, ranks=1, sharded=False) -> StepMemory:
    """The memory of one process's float32 AdamW step on micro-batches of ``micro_batch``
    sequences of ``context_length`` tokens (the config's by default).

    With ``ranks`` data-parallel processes each one holds the whole model but only its rows
    of every micro-batch (at most ceil(micro_batch / ranks) sequences). ``sharded`` (ZeRO-1)
    keeps 1/ranks of AdamW's two moments, plus a buffer that receives 1/ranks of the summed
    gradient: 8P + 12P/ranks bytes of state instead of 16P for P parameters."""
    T = context_length or cfg.context_length
    C, H, V, L = cfg.emb_dim, cfg.n_heads, cfg.vocab_size, cfg.n_layers
    per_sequence = L * (28 * T * C + 2 * H * T * T) + 3 * T * V
    sequences = -(-micro_batch // ranks)  # the largest share of the micro-batch's rows
    P = parameter_count(cfg)
    weights_and_gradients, moments = 8 * P, 8 * P
    if sharded and ranks > 1:
        moments = (moments + 4 * P) // ranks  # a slice of the moments + the receive buffer
    return StepMemory(weights_and_optimizer=weights_and_gradients + moments,
                      activations=bytes_per_value * sequences * per_sequence)


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
                       available: int | None, headroom=0.8, ranks=1, local_ranks=None,
                       sharded=False) -> tuple[int, int, StepMemory]:
    """(micro-batch size, gradient-accumulation steps, one process's estimate) that keep the
    global batch ``batch_size * grad_accum`` and fit in ``headroom`` of ``available`` bytes:
    the largest divisor of ``batch_size`` that fits, and still gives each of ``ranks``
    processes a row. ``local_ranks`` of them (all, by default) share this machine's memory.
    Raises DoesNotFit, naming the options that help."""
    local_ranks = local_ranks or ranks

    def estimate(micro):
        return estimate_step_memory(cfg, micro, ranks=ranks, sharded=sharded)

    if available is None:
        return batch_size, grad_accum, estimate(batch_size)
    budget = headroom * available
    smallest_micro = min(ranks, batch_size)
    for micro in sorted((d for d in range(smallest_micro, batch_size + 1)
                         if batch_size % d == 0), reverse=True):
        step = estimate(micro)
        if local_ranks * step.total <= budget:
            return micro, grad_accum * (batch_size // micro), step
    smallest = estimate(smallest_micro)
    processes = f" in each of {local_ranks} processes" if local_ranks > 1 else ""
    fewer = ", fewer processes (--nproc)" if local_ranks > 1 else ""
    raise DoesNotFit(
        f"a training step needs about {smallest.total / GiB:.1f} GiB{processes} even one "
        f"sequence at a time ({smallest.weights_and_optimizer / GiB:.1f} GiB of weights, "
        f"gradients and AdamW moments, {smallest.activations / GiB:.1f} GiB of activations), "
        f"but only {available / GiB:.1f} GiB is available; use a smaller model (--config), a "
        f"shorter --context-length{fewer}, or a machine with more memory")
