"""Pretraining: the book's training loop (chapter 5) with appendix D's improvements.

One optimizer step:
    lr = warm-up then cosine decay (appendix D)
    for each of grad_accum micro-batches: loss = cross_entropy(model(x), y) / grad_accum;
                                          loss.backward()      (gradients add up)
    clip the gradient norm, AdamW step, zero the gradients

Every ``eval_every`` steps the mean loss over a fixed set of training and validation batches
is recorded (with the number of tokens seen), and every ``sample_every`` steps a short
greedy sample is printed. Checkpoints hold everything needed to continue exactly: weights,
optimizer moments, the random generator (dropout masks) and the step. Batches are a pure
function of the step number, so a resumed run sees the same data as an uninterrupted one and
reproduces its losses exactly.
"""

from __future__ import annotations

import math
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.checkpoints import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from tinygpt.data import BatchSource
from tinygpt.distributed import DataParallel, ZeroAdamW
from tinygpt.generation import generate
from tinygpt.nn import evaluating
from tinygpt.optim import AdamW, param_groups_for_weight_decay, warmup_cosine_lr
from tinygpt.tensor import no_grad
from tinygpt.tokenizer import ENDOFTEXT


@dataclass
class TrainConfig:
    """Hyperparameters of a run (defaults: the book's chapter 5 / appendix D settings)."""

    max_steps: int = 1000
    batch_size: int = 2
    grad_accum: int = 1
    peak_lr: float = 5e-4
    initial_lr: float = 1e-5
    min_lr: float = 1e-5
    warmup_steps: int = 20
    weight_decay: float = 0.1
    grad_clip: float | None = 1.0
    eval_every: int = 5
    eval_iters: int = 5
    sample_every: int = 0
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 50
    checkpoint_every: int = 0
    seed: int = 123

    def __post_init__(self):
        positive = ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_iters")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"TrainConfig.warmup_steps must be between 0 and max_steps "
                             f"({self.max_steps}), got {self.warmup_steps}")


@dataclass
class History:
    """What the loop measured; plotted by ``tinygpt.plots.plot_losses``."""

    steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    tokens_seen: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)  # the loss of every optimizer step
    lr: list = field(default_factory=list)


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss, or a checkpoint that does not fit."""


# ----------------------------------------------------------------------------- loss

def batch_loss(model, x, y):
    """Mean next-token cross-entropy of one batch: logits (B, T, V) against y (B, T)."""
    return F.cross_entropy(model(x), backend.xp().asarray(y))


def evaluate(model, batches, parallel=None) -> float:
    """Mean loss over ``batches`` in eval mode (no dropout, no graph); over several
    processes each takes its rows of every batch and the weighted means are summed."""
    parallel = parallel if parallel is not None else DataParallel()
    with evaluating(model), no_grad():
        losses = []
        for x, y in batches:
            x, y, share = parallel.local_rows(x, y)
            losses.append(share * batch_loss(model, x, y).item())
    return parallel.sum(float(numpy.mean(losses)))


# ----------------------------------------------------------------------------- the loop

def make_optimizer(model, cfg: TrainConfig, parallel=None) -> AdamW | ZeroAdamW:
    """AdamW with weight decay on matrices only (not biases or LayerNorm parameters);
    its moments sharded over the processes if ``parallel.shard_optimizer`` (ZeRO-1)."""
    groups = param_groups_for_weight_decay(model.named_parameters(), cfg.weight_decay)
    if parallel is not None and parallel.shard_optimizer:
        return ZeroAdamW(groups, parallel.comm, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return AdamW(groups, lr=cfg.peak_lr, weight_decay=cfg.weight_decay)


class _StopRequest:
    """Turns Ctrl-C into a request to stop after the current step (and save)."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not in the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def train(model, batches: BatchSource, cfg: TrainConfig, out_dir=None, tokenizer=None,
          resume=True, log=print, progress=True, parallel=None,
          after_backward=None) -> History:
    """Train ``model`` on ``batches`` (``tinygpt.data.RandomWindows`` or ``EpochBatches``)
    for cfg.max_steps.

    With ``out_dir``, checkpoints go to out_dir/checkpoint.safetensors every
    ``checkpoint_every`` steps, at the end, and on Ctrl-C; a run finding one there (and
    ``resume``) continues from it. ``parallel`` (a ``distributed.DataParallel``) spreads
    each batch over several processes; rank 0 alone logs and writes checkpoints.
    ``after_backward(step, model)``, if given, runs each step once the gradients are in,
    before clipping and the optimizer step (``tinygpt.plots.GradNormLog.record`` does).
    """
    parallel = parallel if parallel is not None else DataParallel()
    log = log if parallel.is_main else _silent
    optimizer = make_optimizer(model, cfg, parallel)
    history, start = History(), 0
    checkpoint = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    if checkpoint is not None and resume and parallel.file_exists(checkpoint):
        start, history = _resume(checkpoint, model, optimizer)
        log(f"resumed from {checkpoint} at step {start}")
    else:
        backend.manual_seed(cfg.seed)
    parallel.separate_random_streams()
    model.train()
    bar = _progress_bar(start, cfg.max_steps, progress and parallel.is_main)
    with _StopRequest() as stop:
        for step in range(start, cfg.max_steps):
            loss = _train_step(model, optimizer, batches, step, cfg, parallel, after_backward)
            if not math.isfinite(loss):
                where = (f"the last good checkpoint is {checkpoint}" if checkpoint and
                         checkpoint.is_file() else "no checkpoint was written")
                raise TrainingError(f"loss became {loss} at step {step + 1}; stopping ({where}). "
                                    "Try a lower learning rate or gradient clipping.")
            history.step_loss.append(loss)
            history.lr.append(optimizer.param_groups[0]["lr"])
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.max_steps:
                _record_eval(model, batches, cfg, history, done, log, parallel)
            if (cfg.sample_every and tokenizer is not None and done % cfg.sample_every == 0
                    and parallel.is_main):
                log(sample_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            stopping = parallel.any(stop.requested)  # Ctrl-C may reach some ranks only
            if checkpoint is not None and (stopping or done == cfg.max_steps or (
                    cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                state = optimizer.state_dict()  # under ZeRO, gathered from every rank
                if parallel.is_main:
                    save_checkpoint(checkpoint, model, state, done, asdict(history), asdict(cfg))
            if stopping:
                log(f"interrupted: saved step {done} to {checkpoint}" if checkpoint
                    else "interrupted")
                break
    bar.close()
    return history


def _train_step(model, optimizer, batches, step, cfg, parallel, after_backward=None) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss.
    Each process takes its rows of every micro-batch; their gradients are summed."""
    lr = warmup_cosine_lr(step, peak_lr=cfg.peak_lr, total_steps=cfg.max_steps,
                          warmup_steps=cfg.warmup_steps, initial_lr=cfg.initial_lr,
                          min_lr=cfg.min_lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for micro in range(cfg.grad_accum):
        x, y, share = parallel.local_rows(*batches.train_batch(step * cfg.grad_accum + micro))
        loss = batch_loss(model, x, y) * (share / cfg.grad_accum)
        total += loss.item()
        if not math.isfinite(total):
            break
        loss.backward()
    total = parallel.sum(total)
    if not math.isfinite(total):
        optimizer.zero_grad()
        return total
    if after_backward is not None:
        after_backward(step, model)
    parallel.step(model, optimizer, cfg.grad_clip)
    optimizer.zero_grad()
    return total


def _record_eval(model, batches, cfg, history, done, log, parallel):
    train_loss = evaluate(model, batches.eval_batches("train", cfg.eval_iters), parallel)
    val_loss = evaluate(model, batches.eval_batches("val", cfg.eval_iters), parallel)
    tokens = done * cfg.grad_accum * cfg.batch_size * model.cfg.context_length
    history.steps.append(done)
    history.train_loss.append(train_loss)
    history.val_loss.append(val_loss)
    history.tokens_seen.append(tokens)
    log(f"step {done:6d} | train loss {train_loss:.3f} | val loss {val_loss:.3f} "
        f"| tokens seen {tokens:,}")


def _resume(checkpoint, model, optimizer):
    ckpt = load_checkpoint(checkpoint)
    if ckpt["model_config"] != model.cfg:
        raise TrainingError(f"{checkpoint} holds a model with config {ckpt['model_config']}, "
                            f"not {model.cfg}; use another --out directory")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    backend.set_rng_state(ckpt["rng"])
    return ckpt["step"], History(**ckpt["history"])


def _silent(*args, **kwargs):
    """The log of ranks other than 0."""


def _progress_bar(start, total, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", leave=False)


def sample_text(model, tokenizer, prompt, max_new_tokens=50) -> str:
    """A greedy continuation of ``prompt`` (the book prints one after each epoch)."""
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT})
    out = generate(model, [ids], max_new_tokens,
                   context_size=model.cfg.context_length)
    return tokenizer.decode(backend.move(out[0], "numpy").tolist()).replace("\n", " ")
