"""Pretraining: the book's training loop (chapter 5) with appendix D's improvements.

One optimizer step:
    lr = warm-up then cosine decay (appendix D)
    for each of grad_accum micro-batches: loss = cross_entropy(model(x), y) / grad_accum;
                                          loss.backward()      (gradients add up)
    clip the gradient norm, AdamW step, zero the gradients

Every ``eval_every`` steps the mean loss over a fixed set of training and validation batches
is recorded (with the number of tokens seen), and every ``sample_every`` steps a short
sample is printed. Checkpoints hold everything needed to continue exactly: weights,
optimizer moments, the random generator (dropout masks) and the step. Batches are a pure
function of the step number, so a resumed run sees the same data as an uninterrupted one and
reproduces its losses exactly.

What the loop promises about its files: a resumed checkpoint is checked before anything is
written; inf or NaN weights are never saved; SIGINT and SIGTERM finish the step, save and
raise ``TrainingInterrupted``; the run directory is locked (``tinygpt.rundir``) meanwhile.
"""

from __future__ import annotations

import math
import signal
from contextlib import nullcontext
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
from tinygpt.optim import AdamW, WarmupCosineSchedule, param_groups_for_weight_decay
from tinygpt.rundir import locked
from tinygpt.tensor import no_grad
from tinygpt.tokenizer import ENDOFTEXT, save_tokenizer


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
    sample_temperature: float = 0.8  # nanoGPT's; 0 is greedy, as the book's samples
    checkpoint_every: int = 0
    seed: int = 123

    def __post_init__(self):
        positive = ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_iters")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig.{name} must be positive, got {getattr(self, name)}")
        non_negative = ("initial_lr", "min_lr", "weight_decay", "sample_every", "sample_tokens",
                        "sample_temperature", "checkpoint_every")
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.peak_lr > 0:
            raise ValueError(f"TrainConfig.peak_lr must be positive, got {self.peak_lr}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 or None (no clipping), got "
                             f"{self.grad_clip}")
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


def make_schedule(optimizer, cfg: TrainConfig, step=0) -> WarmupCosineSchedule:
    """Appendix D's warm-up then cosine decay, set in ``optimizer`` for ``step`` (a resumed
    run starts at its checkpoint's step: the rate is a function of the step alone)."""
    schedule = WarmupCosineSchedule(optimizer, peak_lr=cfg.peak_lr, total_steps=cfg.max_steps,
                                    warmup_steps=cfg.warmup_steps, initial_lr=cfg.initial_lr,
                                    min_lr=cfg.min_lr)
    schedule.load_state_dict({**schedule.state_dict(), "current_step": step})
    return schedule


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM (``kill``, schedulers, containers)
    after saving a checkpoint. A KeyboardInterrupt, so code that catches Exception lets it
    through and nothing downstream (plots, test responses) runs on a half-trained model;
    ``exit_status`` is the shell's convention, 128 + the signal number (130, 143)."""

    def __init__(self, message, signum, history):
        super().__init__(message)
        self.exit_status, self.history = 128 + signum, history

    @classmethod
    def by(cls, signum, where: str, history) -> TrainingInterrupted:
        """"interrupted by SIGINT at ``where``" (the signal's name), for every training loop."""
        return cls(f"interrupted by {signal.Signals(signum).name} at {where}", signum, history)


class StopOnSignal:
    """Turns SIGINT and SIGTERM into a request to stop after the current step (and save);
    the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        for signum in self.SIGNALS:
            try:
                self.previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not in the main thread: leave the signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def train(model, batches: BatchSource, cfg: TrainConfig, out_dir=None, tokenizer=None,
          resume=True, log=print, progress=True, parallel=None,
          after_backward=None) -> History:
    """Train ``model`` on ``batches`` (``tinygpt.data.RandomWindows`` or ``EpochBatches``)
    for cfg.max_steps.

    With ``out_dir``, checkpoints go to out_dir/checkpoint.safetensors every
    ``checkpoint_every`` steps, at the end, and on SIGINT/SIGTERM (then TrainingInterrupted
    is raised); a run finding one there (and ``resume``) continues from it, after checking
    that it fits, and only then writes anything (``tokenizer.json`` too). The directory is
    locked while the loop runs. ``parallel`` (a ``distributed.DataParallel``) spreads each
    batch over several processes; rank 0 alone logs and writes.
    ``after_backward(step, model)``, if given, runs each step once the gradients are in,
    before clipping and the optimizer step (``tinygpt.plots.GradNormLog.record`` does).
    """
    parallel = parallel if parallel is not None else DataParallel()
    log = log if parallel.is_main else _silent
    optimizer = make_optimizer(model, cfg, parallel)
    checkpoint = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
    writes = checkpoint is not None and parallel.is_main
    with locked(out_dir) if writes else nullcontext():
        history, start = History(), 0
        if checkpoint is not None and resume and parallel.file_exists(checkpoint):
            start, history = _resume(checkpoint, model, optimizer, cfg, log)
        else:
            backend.manual_seed(cfg.seed)
        if writes and tokenizer is not None:
            save_tokenizer(tokenizer, out_dir)  # after the checks: a refused run writes nothing
        parallel.separate_random_streams()
        _loop(model, optimizer, batches, cfg, history, start, checkpoint, tokenizer, log,
              progress, parallel, after_backward)
    return history


def _loop(model, optimizer, batches, cfg, history, start, checkpoint, tokenizer, log,
          progress, parallel, after_backward):
    """Steps ``start`` to ``cfg.max_steps``: train, evaluate, sample, checkpoint, stop."""
    model.train()
    schedule = make_schedule(optimizer, cfg, start)
    # A diverging run overflows; the loop checks every loss itself and stops with one clear
    # message, so NumPy's overflow warnings would only bury it.
    with (_progress_bar(start, cfg.max_steps, progress and parallel.is_main) as bar,
          StopOnSignal() as stop, numpy.errstate(over="ignore", invalid="ignore")):
        for step in range(start, cfg.max_steps):
            loss = _train_step(model, optimizer, batches, step, cfg, parallel, after_backward)
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at step {step + 1}; stopping "
                                    f"({_last_good(checkpoint)}). Try a lower --lr or "
                                    "gradient clipping (--grad-clip).")
            history.step_loss.append(loss)
            history.lr.append(schedule.get_lr())
            schedule.step()  # the rate of the next step
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.max_steps:
                _record_eval(model, batches, cfg, history, done, log, parallel)
            if (cfg.sample_every and tokenizer is not None and done % cfg.sample_every == 0
                    and parallel.is_main):
                log(sample_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens,
                                temperature=cfg.sample_temperature))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            stopping = parallel.any(stop.signum is not None)  # a signal may reach some ranks only
            if checkpoint is not None and (stopping or done == cfg.max_steps or (
                    cfg.checkpoint_every and done % cfg.checkpoint_every == 0)):
                _save(checkpoint, model, optimizer, done, history, cfg, parallel)
            if stopping:
                raise _interrupted(stop.signum or signal.SIGINT, done, checkpoint, history)


def _interrupted(signum, done, checkpoint, history) -> TrainingInterrupted:
    saved = (f"saved step {done} to {checkpoint}; run the same command again to resume"
             if checkpoint is not None else "nothing was saved")
    return TrainingInterrupted.by(signum, f"step {done}: {saved}", history)


def _save(checkpoint, model, optimizer, done, history, cfg, parallel):
    """Write a checkpoint, unless a weight is inf or NaN: a checkpoint is always one that
    training can continue from, so a bad update never replaces the last good file."""
    if not _all_finite(model):
        raise TrainingError(f"the weights became inf or NaN at step {done}; not saved "
                            f"({_last_good(checkpoint)}). Try a lower --lr or gradient "
                            "clipping (--grad-clip).")
    state = optimizer.state_dict()  # under ZeRO, gathered from every rank
    if parallel.is_main:
        save_checkpoint(checkpoint, model, state, done, _history_arrays(history), asdict(cfg))


def _all_finite(model) -> bool:
    xp = backend.xp()
    return all(bool(xp.isfinite(p.data).all()) for p in model.parameters())


def _last_good(checkpoint) -> str:
    if checkpoint is not None and checkpoint.is_file():
        return f"the last good checkpoint is {checkpoint}"
    return "no checkpoint was written"


def _history_arrays(history: History) -> dict:
    """The history as arrays: stored as tensors beside the weights, not in the checkpoint's
    JSON header, which has a size limit that a long run's loss list would pass."""
    return {name: numpy.asarray(values, dtype=numpy.int64 if name in ("steps", "tokens_seen")
                                else numpy.float64)
            for name, values in asdict(history).items()}


def _train_step(model, optimizer, batches, step, cfg, parallel, after_backward=None) -> float:
    """One optimizer step over ``grad_accum`` micro-batches; returns the mean loss.
    Each process takes its rows of every micro-batch; their gradients are summed."""
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


def _resume(checkpoint, model, optimizer, cfg, log):
    """Load a run's state into ``model`` and ``optimizer``; returns (step, history). Refuses
    a checkpoint of another model, and says which changed settings it uses from here on."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["model_config"] != model.cfg:
        raise TrainingError(f"{checkpoint} holds a model with config {ckpt['model_config']}, "
                            f"not {model.cfg}; use another --out directory (or the same "
                            "model options as the run there)")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    backend.set_rng_state(ckpt["rng"])
    step = ckpt["step"]
    log(f"resumed from {checkpoint} at step {step}")
    for line in _changed_settings(ckpt["train_config"], asdict(cfg), step):
        log(line)
    history = History(**{k: list(numpy.asarray(v).tolist()) for k, v in ckpt["history"].items()})
    return step, history


def _changed_settings(saved: dict, current: dict, step: int) -> list[str]:
    """One line per setting that differs from the checkpoint's: the new value is used.
    Settings are named as the command-line options that set them."""
    lines = []
    for name, value in current.items():
        if name in saved and saved[name] != value and name in OPTION_OF:
            effect = ("the batches from here on differ from the interrupted run's"
                      if name == "seed" else "the new value is used")
            lines.append(f"resuming with {OPTION_OF[name]} = {value!r} instead of the "
                         f"checkpoint's {saved[name]!r} from step {step} on: {effect}")
    if current["max_steps"] <= step:
        lines.append(f"the run already reached step {step}: raise --max-steps to train on")
    return lines


# The command-line option of each TrainConfig field (initial_lr follows --lr).
OPTION_OF = {name: "--" + name.replace("_", "-") for name in (
    "max_steps", "batch_size", "grad_accum", "min_lr", "warmup_steps", "weight_decay",
    "grad_clip", "eval_every", "eval_iters", "sample_every", "sample_prompt",
    "checkpoint_every", "seed")} | {"peak_lr": "--lr"}


def _silent(*args, **kwargs):
    """The log of ranks other than 0."""


def _progress_bar(start, total, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", leave=False)


def sample_text(model, tokenizer, prompt, max_new_tokens=50, temperature=0.8, top_k=200) -> str:
    """A sampled continuation of ``prompt``, as nanoGPT prints during training (temperature
    0.8 among the 200 most likely tokens; greedy decoding of a small model repeats itself,
    "the the the"). ``temperature=0`` is greedy, as the book's ``generate_text_simple``."""
    ids = tokenizer.encode(prompt, allowed_special={ENDOFTEXT})
    top_k = min(top_k, model.cfg.vocab_size) if temperature and top_k else None  # as nanoGPT
    out = generate(model, [ids], max_new_tokens, context_size=model.cfg.context_length,
                   temperature=temperature, top_k=top_k)
    return tokenizer.decode(backend.move(out[0], "numpy").tolist()).replace("\n", " ")
