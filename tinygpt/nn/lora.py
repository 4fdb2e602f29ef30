"""LoRA: low-rank adaptation (the book's appendix E).

A pretrained weight W (out x in) stays frozen; each Linear layer learns a low-rank update
instead, as two small matrices A (in x rank) and B (rank x out):

    y = x W^T + b  +  (alpha / rank) * (x A B)

B starts at zero, so at initialisation the layer computes exactly what the plain Linear did;
A starts small and random (PyTorch's ``kaiming_uniform_(A, a=sqrt(5))``, the book's choice:
uniform on +-1/sqrt(rank)). Only A and B train: rank * (in + out) numbers per layer instead of
in * out. Scaling by alpha / rank (the original paper's convention, which the book's code uses
today; the printed chapter scaled by alpha alone, the same thing at its rank = alpha = 16)
lets runs with different ranks share a learning rate.

    apply_lora(model, rank=16, alpha=16)  # every Linear -> LoRALinear; all else frozen
    ...train...
    merge_lora(model)                     # fold (alpha/rank) (A B)^T into W: plain Linears

Parameter names follow the book's ``LinearWithLoRA`` (``linear`` holding the frozen layer,
``lora`` holding ``A`` and ``B``): ``trf_blocks.0.att.W_query.linear.weight``,
``trf_blocks.0.att.W_query.lora.A``, ``...lora.B``, so state dicts move between tinygpt and the
book's PyTorch LoRA model unchanged.
"""

from __future__ import annotations

import math

from tinygpt import backend
from tinygpt.nn.layers import Linear, init_skipped
from tinygpt.nn.module import Module, Parameter
from tinygpt.tensor import Tensor


class LoRALayer(Module):
    """The low-rank update alone: x -> (alpha / rank) * (x A B) (the book's ``LoRALayer``)."""

    def __init__(self, in_dim, out_dim, rank, alpha, dtype=None):
        if int(rank) != rank or rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        dtype = dtype or backend.default_dtype()
        self.rank, self.alpha = int(rank), float(alpha)
        bound = 1.0 / math.sqrt(self.rank)  # kaiming_uniform_(a=sqrt(5)) with fan_in = rank
        if init_skipped():  # loaded right after (a saved LoRA classifier): no random draws
            self.A = Parameter(backend.xp().empty((in_dim, self.rank), dtype=dtype))
        else:
            uniform = backend.generator().random((in_dim, self.rank))
            self.A = Parameter(((uniform * 2.0 - 1.0) * bound).astype(dtype))
        self.B = Parameter(backend.xp().zeros((self.rank, out_dim), dtype=dtype))

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self):
        """The update as a weight in Linear's layout (out x in): (alpha/rank) (A B)^T."""
        return (self.A.data @ self.B.data).T * self.scaling

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        lead, in_dim = x.shape[:-1], x.shape[-1]
        x2d = x.reshape(-1, in_dim)  # (N, in): two plain matrix products, cheap backward
        out = ((x2d @ self.A) * self.scaling) @ self.B  # scale the small (N, rank) product
        return out.reshape(lead + (self.B.shape[1],))

    def __repr__(self):
        return f"LoRALayer(rank={self.rank}, alpha={self.alpha:g})"


class LoRALinear(Module):
    """A Linear layer plus a trainable low-rank update (the book's ``LinearWithLoRA``).

    ``linear`` is the original layer, kept as it is (its weight and bias are frozen by
    ``apply_lora``); ``lora`` holds A and B. ``weight`` and ``bias`` read through to the
    original layer, so code that inspects a Linear (weight tying checks) still works.
    """

    def __init__(self, linear: Linear, rank, alpha):
        if not isinstance(linear, Linear):
            raise TypeError(f"LoRALinear wraps a Linear layer, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha,
                              dtype=linear.weight.dtype)

    @property
    def weight(self):
        return self.linear.weight

    @property
    def bias(self):
        return self.linear.bias

    @property
    def rank(self):
        return self.lora.rank

    @property
    def alpha(self):
        return self.lora.alpha

    def forward(self, x):
        return self.linear(x) + self.lora(x)

    def merged(self) -> Linear:
        """A plain Linear computing the same function: W + (alpha/rank) (A B)^T, same bias.

        The weight is a new Parameter (never the old one changed in place), so a weight the
        original layer shared with another (GPT-2's head tied to the token embedding) is left
        as it was for that other user."""
        out = Linear.__new__(Linear)
        out.in_features, out.out_features = self.in_features, self.out_features
        weight = self.linear.weight
        merged = (weight.data + self.lora.delta_weight()).astype(weight.dtype)
        out.weight = Parameter(merged, requires_grad=weight.requires_grad)
        out.bias = self.linear.bias
        out.training = self.linear.training
        return out

    def __repr__(self):
        return (f"LoRALinear({self.in_features}, {self.out_features}, "
                f"bias={self.linear.bias is not None}, rank={self.rank}, alpha={self.alpha:g})")


def _swap_children(module: Module, make, kind) -> int:
    """Replace every child of type ``kind`` (recursively) by ``make(child)``; returns how many."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, kind):
            setattr(module, name, make(child))
            count += 1
        elif not isinstance(child, LoRALinear):  # never wrap the Linear inside a LoRALinear
            count += _swap_children(child, make, kind)
    return count


def apply_lora(model: Module, rank, alpha) -> Module:
    """Give every Linear layer of ``model`` a LoRA update, in place, and freeze the rest.

    As in the book's appendix E, *all* Linear layers are wrapped — the attention projections,
    the feed-forward layers and the output head (a classifier's new head included) — and
    every other parameter (embeddings, LayerNorms, the original weights and biases) gets
    ``requires_grad = False``. Only the A and B matrices train. Layers already wrapped are
    left alone. Returns ``model``.
    """
    model.requires_grad_(False)
    count = _swap_children(model, lambda lin: LoRALinear(lin, rank, alpha), Linear)
    if count == 0 and not any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError(f"apply_lora: {type(model).__name__} has no Linear layer to adapt")
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora.requires_grad_(True)
    return model


def merge_lora(model: Module) -> Module:
    """Fold each LoRALinear's update into its weight and put a plain Linear back, in place.

    The merged model computes the same outputs (to float rounding) with no extra matrix
    products: for inference and for saving in a layout other tools read. A weight that was
    tied to another parameter (the GPT-2 head and token embedding) becomes the head's own
    matrix, since the update applies to the head alone. Returns ``model``.
    """
    _swap_children(model, lambda layer: layer.merged(), LoRALinear)
    return model


def lora_parameter_report(model: Module) -> dict:
    """Trainable against total parameter counts (shared weights counted once).

    Returns ``{"trainable": int, "total": int, "lora": int, "percent": float}``, where
    ``lora`` counts the A and B elements; after ``apply_lora`` it equals ``trainable``."""
    total = model.num_parameters()
    trainable = model.num_parameters(trainable_only=True)
    lora = sum(m.A.size + m.B.size for m in model.modules() if isinstance(m, LoRALayer))
    return {"trainable": trainable, "total": total, "lora": lora,
            "percent": 100.0 * trainable / total if total else 0.0}
