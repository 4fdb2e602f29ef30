"""Instruction fine-tuning as a run of tinygpt's ordinary training loop (``tinygpt.train``)
at the book's settings: constant learning rate, no warm-up, no gradient clipping."""

from __future__ import annotations

import numpy

from tinygpt.finetune.alpaca import END_OF_TEXT_ID
from tinygpt.finetune.base import check_vocabulary
from tinygpt.finetune.instruct.data import instruction_batches
from tinygpt.train import TrainConfig, train


def finetune(model, train_items, val_items, *, epochs=2, batch_size=8, lr=5e-5,
             weight_decay=0.1, allowed_max_length=1024, mask_prompt=False, seed=123,
             eval_every=5, eval_iters=5, grad_clip=None, pad_token_id=END_OF_TEXT_ID,
             out_dir=None, log=print, progress=True):
    """Fine-tune ``model`` on encoded examples (see ``encode_entries``) with
    ``tinygpt.train.train`` at a constant learning rate and without gradient clipping, as
    the book does. Examples are cut to ``allowed_max_length`` and to the model's context
    length. With ``out_dir`` the run is checkpointed there (and resumed from there).
    Returns ``(history, batches)``.
    """
    check_vocabulary(model, "instruction fine-tuning", pad_token_id)
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    allowed = min(allowed_max_length or model.cfg.context_length, model.cfg.context_length)
    batches = instruction_batches(train_items, val_items, batch_size, seed=seed,
                                  pad_token_id=pad_token_id, allowed_max_length=allowed,
                                  mask_prompt=mask_prompt)
    steps = epochs * batches.batches_per_epoch
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, peak_lr=lr, initial_lr=lr,
                      min_lr=lr, warmup_steps=0, weight_decay=weight_decay,
                      grad_clip=grad_clip, eval_every=eval_every, eval_iters=eval_iters,
                      seed=seed)
    history = train(model, batches, cfg, out_dir=out_dir, log=log, progress=progress)
    return history, batches


def epoch_summary(history, batches_per_epoch) -> list[dict]:
    """Per epoch: the mean training loss of its steps, and the last evaluated training and
    validation losses within it (the ones the book plots)."""
    rows = []
    for lo in range(0, len(history.step_loss), batches_per_epoch):
        hi = min(lo + batches_per_epoch, len(history.step_loss))
        row = {"epoch": lo // batches_per_epoch + 1, "last_step": hi,
               "mean_step_loss": float(numpy.mean(history.step_loss[lo:hi]))}
        evals = [i for i, step in enumerate(history.steps) if lo < step <= hi]
        if evals:
            row["train_loss"] = history.train_loss[evals[-1]]
            row["val_loss"] = history.val_loss[evals[-1]]
        rows.append(row)
    return rows
