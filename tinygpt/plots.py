"""Plots, written atomically: training curves, attention heatmaps, per-layer gradient norms.

One drawing function, ``plot_panels``, draws side-by-side panels of a training curve and a
validation curve, each with an optional second x-axis on top (tokens or examples seen, as the
book's figures have). Every point is drawn as a marker too, so a curve with a single point
(a one-epoch run) is still visible. ``plot_losses`` (pretraining, instruction fine-tuning)
and ``plot_classifier_history`` (the spam classifier) build their panels from a run's history.
``plot_attention`` draws where each head of a model looks for a prompt, and
``plot_grad_norms`` how large each layer's gradients were over training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy

from tinygpt import backend
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
    return _save(fig, plt, path)


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


# ----------------------------------------------------------------------------- attention

def attention_weights(model, ids) -> numpy.ndarray:
    """Every head's attention weights for one prompt: (n_layers, H, T, T), rows summing to 1.

    ``ids`` is a list of T token ids. The model runs once, in eval mode; the graph it leaves
    behind holds each layer's ``attention`` op with its inputs q and k (B, H, T, D), from
    which softmax(q k^T / sqrt(D)), causally masked, is recomputed exactly as the fused op
    computes it. Each op knows the attention module it ran in (``Tensor._scope``), which
    says its layer.
    """
    from tinygpt.nn import evaluating
    from tinygpt.viz import graph_nodes

    layer_of = {id(block.att): i for i, block in enumerate(model.trf_blocks)}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    model.requires_grad_(True)  # the graph is recorded only through tensors that need grad
    try:
        with evaluating(model):
            logits = model(numpy.asarray([ids]))
    finally:
        for p in frozen:
            p.requires_grad = False
    weights = [None] * len(layer_of)
    for node in graph_nodes(logits):
        if node._op == "attention":
            q, k = (backend.move(t.data, "numpy").astype(numpy.float64)
                    for t in node._parents[:2])
            weights[layer_of[id(node._scope[0])]] = _causal_softmax(q[0], k[0])
    return numpy.stack(weights)


def _causal_softmax(q, k):
    """softmax(q k^T / sqrt(D)) with future positions masked: (H, T, D) x2 -> (H, T, T)."""
    T = q.shape[-2]
    scores = q @ k.swapaxes(-1, -2) / numpy.sqrt(q.shape[-1])
    scores = numpy.where(numpy.triu(numpy.ones((T, T), dtype=bool), 1), -numpy.inf, scores)
    e = numpy.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def plot_attention(weights, tokens, path) -> Path:
    """One heatmap per layer (rows) and head (columns): row t shows where token t looks.

    weights (n_layers, H, T, T) from ``attention_weights``; tokens: T strings for the axes.
    """
    plt = _pyplot()
    n_layers, n_heads, T, _ = weights.shape
    side = 1.2 + 0.25 * T
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(side * n_heads, side * n_layers),
                             squeeze=False)
    labels = [repr(t)[1:-1] for t in tokens]  # newlines and spaces made visible
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(weights[layer, head], cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(range(T), labels if layer == n_layers - 1 else [], rotation=90,
                          fontsize=7)
            ax.set_yticks(range(T), labels if head == 0 else [], fontsize=7)
    fig.tight_layout()
    return _save(fig, plt, path)


# ----------------------------------------------------------------------------- gradients

class GradNormLog:
    """Per-layer gradient norms over training, for ``tinygpt train --plot-grads``: pass
    ``record`` as the loop's ``after_backward`` callback.

    Layers are the embeddings, each transformer block and the head (final norm and output
    layer); a layer's norm is sqrt(sum of its squared gradient elements), before clipping.
    """

    def __init__(self):
        self.layers = {}  # layer name -> ([steps], [norms])

    def record(self, step, model) -> None:
        squares = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                layer = _layer_of(name)
                squares[layer] = squares.get(layer, 0.0) + float((p.grad.astype("float64")
                                                                  ** 2).sum())
        for layer, total in squares.items():
            steps, norms = self.layers.setdefault(layer, ([], []))
            steps.append(step + 1)
            norms.append(total ** 0.5)


def _layer_of(name) -> str:
    """'trf_blocks.3.att.W_query.weight' -> 'block 3'; embeddings and head by name."""
    parts = name.split(".")
    if parts[0] == "trf_blocks":
        return f"block {parts[1]}"
    return "embeddings" if parts[0] in ("tok_emb", "pos_emb") else "head"


def plot_grad_norms(log: GradNormLog, path) -> Path:
    """Gradient norm of each layer against the step, on a log scale, one line per layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer, (steps, norms) in log.layers.items():
        ax.plot(steps, norms, label=layer, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("Step")
    ax.set_ylabel("Gradient norm (before clipping)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig, plt, path) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)
    return path
