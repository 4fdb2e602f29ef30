"""The classifier's training loop (the book's ``train_classifier_simple``) and the losses and
accuracies it measures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.finetune.classify.model import Classifier
from tinygpt.nn import evaluating
from tinygpt.tensor import Tensor, no_grad
from tinygpt.train import StopOnSignal, TrainingInterrupted


def calc_loss_batch(classifier: Classifier, ids, lengths, labels) -> Tensor:
    """Mean cross-entropy of one batch's class logits against its labels."""
    return F.cross_entropy(classifier(ids, lengths), backend.xp().asarray(labels))


def _batches(loader, num_batches):
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        yield batch


def calc_loss_loader(classifier, loader, num_batches=None) -> float:
    """Mean batch loss over the first ``num_batches`` batches (all when None), in eval mode."""
    with evaluating(classifier.model), no_grad():
        losses = [calc_loss_batch(classifier, *batch).item()
                  for batch in _batches(loader, num_batches)]
    return float(numpy.mean(losses)) if losses else float("nan")


def calc_accuracy_loader(classifier, loader, num_batches=None) -> float:
    """Share of correctly classified examples in the first ``num_batches`` batches."""
    correct = seen = 0
    with evaluating(classifier.model), no_grad():
        for ids, lengths, labels in _batches(loader, num_batches):
            predicted = backend.move(classifier(ids, lengths).data.argmax(axis=-1), "numpy")
            correct += int((predicted == labels).sum())
            seen += len(labels)
    return correct / seen if seen else float("nan")


@dataclass
class ClassifierHistory:
    """What ``train_classifier_simple`` measured: losses every ``eval_every`` steps,
    accuracies (over ``eval_iters`` batches) after every epoch."""

    steps: list = field(default_factory=list)
    examples_seen: list = field(default_factory=list)
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    train_accs: list = field(default_factory=list)
    val_accs: list = field(default_factory=list)
    num_epochs: int = 0
    total_examples: int = 0


def train_classifier_simple(classifier, train_loader, val_loader, optimizer, num_epochs,
                            eval_every=50, eval_iters=5, train_eval_loader=None,
                            log=print) -> ClassifierHistory:
    """The book's ``train_classifier_simple``: ``num_epochs`` passes over ``train_loader``.

    After the first step and every ``eval_every`` steps the loss over ``eval_iters`` batches
    of training and validation data is recorded; after each epoch, the accuracy over
    ``eval_iters`` batches of each. Training-set figures come from ``train_eval_loader`` when
    given (a fixed, unshuffled loader, so the numbers compare from one evaluation to the
    next), else from ``train_loader`` as in the book. On SIGINT or SIGTERM the step in
    progress finishes and ``TrainingInterrupted`` (with the history so far) is raised; the
    caller saves what was trained.
    """
    history = ClassifierHistory(num_epochs=num_epochs)
    train_eval_loader = train_eval_loader if train_eval_loader is not None else train_loader
    examples_seen, global_step = 0, -1
    classifier.model.train()
    with StopOnSignal() as stop:
        for epoch in range(num_epochs):
            for ids, lengths, labels in train_loader:
                _train_step(classifier, optimizer, ids, lengths, labels, epoch, global_step + 1)
                examples_seen += len(labels)
                global_step += 1
                if global_step % eval_every == 0:
                    train_loss = calc_loss_loader(classifier, train_eval_loader, eval_iters)
                    val_loss = calc_loss_loader(classifier, val_loader, eval_iters)
                    history.steps.append(global_step)
                    history.examples_seen.append(examples_seen)
                    history.train_losses.append(train_loss)
                    history.val_losses.append(val_loss)
                    log(f"Ep {epoch + 1} (Step {global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
                if stop.signum is not None:  # Ctrl-C or SIGTERM: stop after this step
                    history.total_examples = examples_seen
                    raise TrainingInterrupted.by(
                        stop.signum, f"epoch {epoch + 1}, step {global_step + 1}", history)
            train_acc = calc_accuracy_loader(classifier, train_eval_loader, eval_iters)
            val_acc = calc_accuracy_loader(classifier, val_loader, eval_iters)
            history.train_accs.append(train_acc)
            history.val_accs.append(val_acc)
            log(f"Training accuracy: {train_acc * 100:.2f}% | "
                f"Validation accuracy: {val_acc * 100:.2f}%")
    optimizer.zero_grad()
    history.total_examples = examples_seen
    return history


def _train_step(classifier, optimizer, ids, lengths, labels, epoch, step):
    """One AdamW step on one batch (``step`` counts from 0, for the error message)."""
    optimizer.zero_grad()
    loss = calc_loss_batch(classifier, ids, lengths, labels)
    if not math.isfinite(loss.item()):
        raise RuntimeError(f"the loss became {loss.item()} at epoch {epoch + 1}, step "
                           f"{step + 1}; try a lower learning rate")
    loss.backward()
    optimizer.step()
