"""Weights in 8 or 16 bits for faster inference: ``quantize(model, "int8" | "bfloat16")``.

Generating a token reads every weight once, so a model whose weights take fewer bytes
generates faster (see ``tinygpt/kernels/quant.py`` for the formats and the kernels):

    model = tinygpt.load_gpt2("gpt2")
    tinygpt.nn.quantize(model, "int8")     # every Linear, the token embedding and the head
    tinygpt.generate(model, ids, 40)       # same API, about a quarter of the bytes per token

What changes, in place: each ``Linear`` becomes a ``QuantizedLinear`` and the token
embedding a ``QuantizedEmbedding``; their weights become ``QuantizedWeight``s. A head tied to
the token embedding stays tied: both share one quantized matrix (int8 scales are per row,
which is per output channel for the head and per token for the embedding). Biases, layer
norms, the position embedding (read one row per token: storing it small saves nothing) and
the KV cache stay float32. Parameter names and counts do not change.

A quantized model is for inference only: ``backward()`` through one of its layers, or an
optimizer given its weights, stops with an error that says so. Train in float32, then
quantize; ``save_pretrained`` refuses a quantized model (it would lose the float32 weights).
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt.kernels import quant
from tinygpt.nn.layers import Embedding, Linear
from tinygpt.nn.lora import LoRALinear
from tinygpt.nn.module import Module, Parameter
from tinygpt.tensor import Tensor

MODES = ("int8", "bfloat16")

INFERENCE_ONLY = ("a quantized model (tinygpt.nn.quantize) is for inference only; train the "
                  "float32 model and quantize it afterwards")


class QuantizedWeight(Parameter):
    """A weight matrix (N, K) stored small: ``data`` is int8 with a float32 ``scale`` per
    row (mode "int8"), or uint16 holding bfloat16 bits (mode "bfloat16", ``scale`` None).

    It is listed among the model's parameters, so names and counts stay, but it never
    requires grad and optimizers refuse it (``inference_only``).
    """

    inference_only = True

    def __init__(self, weight, mode: str):
        if mode == "int8":
            data, self.scale = quant.quantize_int8(weight)
        else:
            data, self.scale = quant.to_bfloat16(weight), None
        self.mode = mode
        super().__init__(data, requires_grad=False)

    def matmul(self, x2d):
        """x (M, K) float32 @ W^T -> (M, N) float32, W widened inside the kernel."""
        if self.mode == "int8":
            return quant.matmul_int8(x2d, self.data, self.scale)
        return quant.matmul_bfloat16(x2d, self.data)

    def rows(self, ids):
        """Rows ``ids`` (...) of W as float32 (..., K): the embedding lookup."""
        if self.mode == "int8":
            return quant.embedding_int8(ids, self.data, self.scale)
        return quant.embedding_bfloat16(ids, self.data)

    def dequantize(self):
        """W as a float32 array (N, K): a full copy, for inspection and tests."""
        if self.mode == "int8":
            return quant.dequantize_int8(self.data, self.scale)
        return quant.from_bfloat16(self.data)

    def __repr__(self):
        return f"QuantizedWeight(shape={self.shape}, mode={self.mode})"


def _refuse_backward(g):
    raise RuntimeError("backward() through a quantized layer: " + INFERENCE_ONLY)


class QuantizedLinear(Module):
    """y = x W^T + b with W a QuantizedWeight; the bias stays float32."""

    def __init__(self, linear: Linear, weight: QuantizedWeight):
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = weight
        self.bias = linear.bias

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantizedLinear: input has {x.shape[-1]} features in its last "
                             f"dimension, but the weight expects {self.in_features}")
        x2d = x.data.reshape(-1, self.in_features).astype(numpy.float32, copy=False)  # (M, K)
        y = self.weight.matmul(x2d)  # (M, N)
        if self.bias is not None:
            y += self.bias.data
        # The inputs are the graph's parents, so backward() arrives here and is refused.
        parents = (x,) if self.bias is None else (x, self.bias)
        out = Tensor._make(y.reshape(x.shape[:-1] + (self.out_features,)), parents,
                           "quantized_linear")
        out._set_backward(_refuse_backward)
        return out

    def __repr__(self):
        return (f"QuantizedLinear({self.in_features}, {self.out_features}, "
                f"bias={self.bias is not None}, mode={self.weight.mode})")


class QuantizedEmbedding(Module):
    """A lookup table whose rows are stored in int8 or bfloat16 and widened on lookup."""

    def __init__(self, embedding: Embedding, weight: QuantizedWeight):
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim
        self.weight = weight

    def forward(self, ids):
        ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        if not numpy.issubdtype(ids.dtype, numpy.integer):
            raise TypeError(f"embedding: ids must be integers, got dtype {ids.dtype}")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise IndexError(f"embedding: ids must lie in [0, {self.num_embeddings}), got "
                             f"values from {int(ids.min())} to {int(ids.max())}")
        return Tensor(self.weight.rows(ids))  # a constant: nothing below it to train

    def __repr__(self):
        return (f"QuantizedEmbedding({self.num_embeddings}, {self.embedding_dim}, "
                f"mode={self.weight.mode})")


def quantized_mode(model: Module):
    """The mode a model was quantized to ("int8" or "bfloat16"), or None for float weights."""
    for p in model.parameters():
        if isinstance(p, QuantizedWeight):
            return p.mode
    return None


def quantize(model: Module, mode: str) -> Module:
    """Store the weights of every Linear and of the token embedding (``model.tok_emb``, if
    the model has one) in ``mode``, in place; returns the model, in eval mode."""
    if mode not in MODES:
        raise ValueError(f"quantize: mode must be one of {', '.join(MODES)}; got {mode!r}")
    if quantized_mode(model) is not None:
        raise ValueError(f"quantize: the model is already quantized ({quantized_mode(model)}); "
                         "load the float32 model again to quantize it differently")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("quantize: the model has LoRA layers; call tinygpt.nn.merge_lora("
                         "model) first, so the update is part of the weights being quantized")
    for name, p in model.named_parameters():
        if not bool(backend.xp().isfinite(p.data).all()):
            raise ValueError(f"quantize: parameter {name} holds NaN or infinite values")
    shared = {}  # id(float weight) -> its QuantizedWeight: tied weights stay one matrix

    def quantized(weight: Parameter) -> QuantizedWeight:
        if id(weight) not in shared:
            shared[id(weight)] = QuantizedWeight(weight.data, mode)
        return shared[id(weight)]

    if isinstance(getattr(model, "tok_emb", None), Embedding):
        model.tok_emb = QuantizedEmbedding(model.tok_emb, quantized(model.tok_emb.weight))
    _swap_linears(model, lambda linear: QuantizedLinear(linear, quantized(linear.weight)))
    return model.eval()


def _swap_linears(module: Module, make) -> None:
    """Replace every Linear below ``module`` (recursively) by ``make(linear)``."""
    for name, child in list(module.named_children()):
        if isinstance(child, Linear):
            setattr(module, name, make(child))
        else:
            _swap_linears(child, make)
