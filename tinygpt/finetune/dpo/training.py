"""The DPO training loop (the book's ``train_model_dpo_simple``): settings, shuffled epochs
of preference batches, evaluation of loss, reward margin and reward accuracy."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy

from tinygpt import backend
from tinygpt.data import EpochBatches
from tinygpt.finetune.alpaca import END_OF_TEXT_ID
from tinygpt.finetune.dpo.data import collate_preference
from tinygpt.finetune.dpo.loss import batch_dpo_loss
from tinygpt.nn import evaluating
from tinygpt.optim import AdamW, clip_grad_norm, param_groups_for_weight_decay
from tinygpt.tensor import no_grad
from tinygpt.train import StopOnSignal, TrainingInterrupted


@dataclass
class DPOConfig:
    """DPO settings: the book's (one epoch, batch 8, AdamW, weight decay 0.01, beta 0.1)
    except the learning rate. The book's 5e-6 suits GPT-2 medium (355M); on a small model
    it moves nothing in an epoch (loss 0.6931 -> 0.6928, reward margin 0.0008 after 30
    steps, measured on the book's preference data), so the default is 5e-4, which does
    (see the README). Pass ``lr=5e-6`` (``--lr 5e-6``) for the book's run."""

    epochs: int = 1
    max_steps: int | None = None  # stop earlier than epochs * batches per epoch
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    beta: float = 0.1
    eval_every: int = 5
    eval_iters: int = 5
    allowed_max_length: int | None = 1024
    mask_prompt: bool = True
    average_logprobs: bool = True
    grad_clip: float | None = None
    pad_token_id: int = END_OF_TEXT_ID
    seed: int = 123

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"DPOConfig.{name} must be positive, got {getattr(self, name)}")
        if self.beta <= 0:
            raise ValueError(f"DPOConfig.beta must be positive, got {self.beta}")


@dataclass
class DPOHistory:
    """Evaluations every ``eval_every`` steps (means over ``eval_iters`` batches)."""

    steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    train_reward_margin: list = field(default_factory=list)
    val_reward_margin: list = field(default_factory=list)
    train_reward_accuracy: list = field(default_factory=list)
    val_reward_accuracy: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)


def preference_batches(train_items, val_items, cfg: DPOConfig) -> EpochBatches:
    """Shuffled epochs of ``collate_preference``d batches (the last incomplete one dropped);
    evaluation takes the first batches in order."""
    collate_batch = functools.partial(collate_preference, pad_token_id=cfg.pad_token_id,
                                      allowed_max_length=cfg.allowed_max_length,
                                      mask_prompt=cfg.mask_prompt)
    return EpochBatches(list(train_items), list(val_items), cfg.batch_size, seed=cfg.seed,
                        collate=collate_batch)


def evaluate_dpo(policy, reference, batches, beta, average=True) -> dict:
    """Mean loss, reward margin and reward accuracy over ``batches`` (no graph)."""
    rows = []
    with evaluating(policy), no_grad():
        for batch in batches:
            loss, chosen, rejected, accuracy = batch_dpo_loss(policy, reference, batch, beta,
                                                              average)
            rows.append((loss.item(), chosen.item() - rejected.item(), accuracy))
    if not rows:
        return {"loss": float("nan"), "reward_margin": float("nan"),
                "reward_accuracy": float("nan")}
    loss, margin, accuracy = numpy.mean(rows, axis=0)
    return {"loss": float(loss), "reward_margin": float(margin),
            "reward_accuracy": float(accuracy)}


def _dpo_step(policy, reference, batch, optimizer, params, cfg, step) -> float:
    """One AdamW step on the DPO loss of ``batch``; returns the loss."""
    loss, _, _, _ = batch_dpo_loss(policy, reference, batch, cfg.beta, cfg.average_logprobs)
    value = loss.item()
    if not numpy.isfinite(value):
        raise RuntimeError(f"the DPO loss became {value} at step {step + 1}; try a lower "
                           "learning rate")
    loss.backward()
    if cfg.grad_clip:
        clip_grad_norm(params, cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    return value


def train_dpo(policy, reference, train_items, val_items, cfg: DPOConfig | None = None,
              log=print, progress=True) -> DPOHistory:
    """Preference-tune ``policy`` against the frozen ``reference`` (the book's
    train_model_dpo_simple): AdamW on the policy's trainable parameters (weight decay on the
    matrices only, as everywhere in tinygpt; the book decays every parameter), one DPO step
    per batch, and every ``eval_every`` steps the loss, reward margin and reward accuracy on
    the first ``eval_iters`` training and validation batches.

    On SIGINT or SIGTERM the step in progress finishes and ``TrainingInterrupted`` (with the
    history so far) is raised; the caller saves what was trained."""
    from tqdm.auto import tqdm

    cfg = cfg or DPOConfig()
    batches = preference_batches(train_items, val_items, cfg)
    total = cfg.epochs * batches.batches_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    groups = param_groups_for_weight_decay(policy.named_parameters(), cfg.weight_decay)
    params = [p for group in groups for p in group["params"]]
    optimizer = AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = DPOHistory()
    backend.manual_seed(cfg.seed)
    policy.train()
    bar = tqdm(total=total, disable=not progress, unit="step", leave=False)
    with StopOnSignal() as stop:
        for step in range(total):
            value = _dpo_step(policy, reference, batches.train_batch(step), optimizer, params,
                              cfg, step)
            history.step_loss.append(value)
            done = step + 1
            if done % cfg.eval_every == 0 or done == total:
                _record(policy, reference, batches, cfg, history, done, log)
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
            if stop.signum is not None and done < total:
                bar.close()
                raise TrainingInterrupted.by(stop.signum, f"step {done} of {total}", history)
    bar.close()
    return history


def _record(policy, reference, batches, cfg, history, done, log):
    train = evaluate_dpo(policy, reference, batches.eval_batches("train", cfg.eval_iters),
                         cfg.beta, cfg.average_logprobs)
    val = evaluate_dpo(policy, reference, batches.eval_batches("val", cfg.eval_iters),
                       cfg.beta, cfg.average_logprobs)
    history.steps.append(done)
    for split, stats in (("train", train), ("val", val)):
        getattr(history, f"{split}_loss").append(stats["loss"])
        getattr(history, f"{split}_reward_margin").append(stats["reward_margin"])
        getattr(history, f"{split}_reward_accuracy").append(stats["reward_accuracy"])
    epoch = (done - 1) // batches.batches_per_epoch + 1
    if log is not None:
        log(f"Ep {epoch} (Step {done:06d}): Train loss {train['loss']:.3f}, "
            f"Val loss {val['loss']:.3f}, Train reward margin {train['reward_margin']:.3f}, "
            f"Val reward margin {val['reward_margin']:.3f}, Train reward acc "
            f"{train['reward_accuracy']:.2f}, Val reward acc {val['reward_accuracy']:.2f}")
