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
from tinygpt.distributed import DataParallel, ZeroAdamW
from tinygpt.fileio import atomic_write
from tinygpt.generation import generate
from tinygpt.optim import AdamW, param_groups_for_weight_decay, warmup_cosine_lr
from tinygpt.tensor import no_grad


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
    """What the loop measured; plotted by ``plot_losses``."""

    steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    tokens_seen: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)  # the loss of every optimizer step
    lr: list = field(default_factory=list)


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss, or a checkpoint that does not fit."""


# ----------------------------------------------------------------------------- batches

class RandomWindows:
    """nanoGPT-style batches: random windows of ``context_length + 1`` tokens from a token
    stream (x is the window without its last token, y without its first).

    The windows of training step ``i`` come from a generator seeded with (seed, i), so any
    step's batch can be drawn again, which is what makes resuming exact. ``tokens`` may be a
    NumPy memmap of a token file larger than memory: only the chosen windows are read.
    """

    def __init__(self, train_tokens, val_tokens, batch_size, context_length, seed=0):
        for name, tokens in (("training", train_tokens), ("validation", val_tokens)):
            if len(tokens) < context_length + 1:
                raise ValueError(f"the {name} split has {len(tokens)} tokens, fewer than "
                                 f"context_length + 1 = {context_length + 1}")
        self.tokens = {"train": train_tokens, "val": val_tokens}
        self.batch_size, self.context_length, self.seed = batch_size, context_length, seed

    def _windows(self, split, rng):
        tokens = self.tokens[split]
        starts = rng.integers(0, len(tokens) - self.context_length, size=self.batch_size)
        rows = numpy.stack([numpy.asarray(tokens[s:s + self.context_length + 1])
                            for s in starts]).astype(numpy.int64)
        return rows[:, :-1], rows[:, 1:]

    def train_batch(self, index):
        return self._windows("train", numpy.random.default_rng((self.seed, index)))

    def eval_batches(self, split, count):
        """A fixed set of batches (the same at every evaluation, so losses compare)."""
        rng = numpy.random.default_rng((self.seed, 2**31 - 1, split == "val"))
        return [self._windows(split, rng) for _ in range(count)]


class EpochBatches:
    """The book's batches: a dataset of (x, y) pairs in shuffled epochs, dropping the last
    incomplete batch. Epoch ``e`` is shuffled with a generator seeded with (seed, e)."""

    def __init__(self, train_dataset, val_dataset, batch_size, seed=0, shuffle=True):
        self.datasets = {"train": train_dataset, "val": val_dataset}
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.batches_per_epoch = len(train_dataset) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {len(train_dataset)} examples, fewer than "
                             f"one batch of {batch_size}")
        if len(val_dataset) == 0:
            raise ValueError("the validation set is empty")

    def _collate(self, dataset, indices):
        pairs = [dataset[int(i)] for i in indices]
        return (numpy.stack([p[0] for p in pairs]).astype(numpy.int64),
                numpy.stack([p[1] for p in pairs]).astype(numpy.int64))

    def train_batch(self, index):
        epoch, position = divmod(index, self.batches_per_epoch)
        n = len(self.datasets["train"])
        order = (numpy.random.default_rng((self.seed, epoch)).permutation(n)
                 if self.shuffle else numpy.arange(n))
        start = position * self.batch_size
        return self._collate(self.datasets["train"], order[start:start + self.batch_size])

    def eval_batches(self, split, count):
        dataset = self.datasets[split]
        size = min(self.batch_size, len(dataset))
        starts = range(0, len(dataset) - size + 1, size)
        return [self._collate(dataset, range(s, s + size)) for s in list(starts)[:count]]


# ----------------------------------------------------------------------------- loss

def batch_loss(model, x, y):
    """Mean next-token cross-entropy of one batch: logits (B, T, V) against y (B, T)."""
    return F.cross_entropy(model(x), backend.xp().asarray(y))


def evaluate(model, batches, parallel=None) -> float:
    """Mean loss over ``batches`` in eval mode (no dropout, no graph); over several
    processes each takes its rows of every batch and the weighted means are summed."""
    parallel = parallel if parallel is not None else DataParallel()
    was_training = model.training
    model.eval()
    with no_grad():
        losses = []
        for x, y in batches:
            x, y, share = parallel.local_rows(x, y)
            losses.append(share * batch_loss(model, x, y).item())
    model.train(was_training)
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


def train(model, batches, cfg: TrainConfig, out_dir=None, tokenizer=None, resume=True,
          log=print, progress=True, parallel=None) -> History:
    """Train ``model`` on ``batches`` (RandomWindows or EpochBatches) for cfg.max_steps.

    With ``out_dir``, checkpoints go to out_dir/checkpoint.safetensors every
    ``checkpoint_every`` steps, at the end, and on Ctrl-C; a run finding one there (and
    ``resume``) continues from it. ``parallel`` (a ``distributed.DataParallel``) spreads
    each batch over several processes; rank 0 alone logs and writes checkpoints.
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
            loss = _train_step(model, optimizer, batches, step, cfg, parallel)
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


def _train_step(model, optimizer, batches, step, cfg, parallel) -> float:
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
    ids = tokenizer.encode(prompt, allowed_special={"<|endoftext|>"})
    out = generate(model, [ids], max_new_tokens,
                   context_size=model.cfg.context_length)
    return tokenizer.decode(backend.move(out[0], "numpy").tolist()).replace("\n", " ")


# ----------------------------------------------------------------------------- plotting

def plot_losses(history: History, path) -> Path:
    """The book's loss plot: training and validation loss against steps, with the number of
    tokens seen on a second x-axis. Written atomically to ``path`` (PNG or PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(history.steps, history.train_loss, label="Training loss")
    ax.plot(history.steps, history.val_loss, linestyle="-.", label="Validation loss")
    ax.set_xlabel("Steps")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
    top = ax.twiny()  # same curve against tokens seen, only to label the top axis
    top.plot(history.tokens_seen, history.train_loss, alpha=0)
    top.set_xlabel("Tokens seen")
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
