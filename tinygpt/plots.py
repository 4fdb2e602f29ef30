"""Training plots: training and validation curves (loss, accuracy), written atomically.

One drawing function, ``plot_panels``, draws side-by-side panels of a training curve and a
validation curve, each with an optional second x-axis on top (tokens or examples seen, as the
book's figures have). Every point is drawn as a marker too, so a curve with a single point
(a one-epoch run) is still visible. ``plot_losses`` (pretraining, instruction fine-tuning)
and ``plot_classifier_history`` (the spam classifier) build their panels from a run's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy

from tinygpt.fileio import atomic_write


@dataclass
class Panel:
    """One subplot: a training and a validation curve against ``x``."""

    quantity: str                   # "Loss", "Accuracy": the y-axis label
    x: Sequence[float]
    train: Sequence[float]
    val: Sequence[float]
    x_label: str
    top_x: Sequence[float] | None = None  # the same points against a second scale on top
    top_label: str | None = None


def _pyplot():
    """matplotlib's pyplot with a file-only backend; imported on first use, because importing
    matplotlib takes about a second and most commands never plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_panels(panels: list[Panel], path) -> Path:
    """Draw ``panels`` side by side into ``path`` (the format from its suffix: .png, .pdf)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 3.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        name = panel.quantity.lower()
        ax.plot(panel.x, panel.train, marker="o", markersize=3, label=f"Training {name}")
        ax.plot(panel.x, panel.val, marker="o", markersize=3, linestyle="-.",
                label=f"Validation {name}")
        ax.set_xlabel(panel.x_label)
        ax.set_ylabel(panel.quantity)
        ax.legend(loc="best")
        if panel.top_x is not None:
            top = ax.twiny()  # the same curve against the second scale, only to label the axis
            top.plot(panel.top_x, panel.train, alpha=0)
            top.set_xlabel(panel.top_label)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path


def plot_losses(history, path) -> Path:
    """The book's loss plot (figure 5.12): training and validation loss against steps, with
    tokens seen on top. ``history`` has ``steps``, ``train_loss``, ``val_loss`` and
    ``tokens_seen`` (``tinygpt.train.History``)."""
    panel = Panel("Loss", history.steps, history.train_loss, history.val_loss, "Steps",
                  history.tokens_seen, "Tokens seen")
    return plot_panels([panel], path)


def plot_classifier_history(history, path) -> Path:
    """The book's two classifier plots (figures 6.16, 6.17): loss and accuracy against epochs,
    with examples seen on top. ``history`` has ``train_losses``, ``val_losses``,
    ``examples_seen`` (one entry per evaluation), ``train_accs``, ``val_accs`` (one per
    epoch), ``num_epochs`` and ``total_examples``."""
    epochs = max(history.num_epochs, 1)
    seen = numpy.asarray(history.examples_seen, dtype=float)
    loss = Panel("Loss", seen / max(history.total_examples, 1) * epochs, history.train_losses,
                 history.val_losses, "Epochs", seen, "Examples seen")
    per_epoch = numpy.arange(1, len(history.train_accs) + 1)
    accuracy = Panel("Accuracy", per_epoch, history.train_accs, history.val_accs, "Epochs",
                     per_epoch / epochs * history.total_examples, "Examples seen")
    return plot_panels([loss, accuracy], path)
