"""tinygpt: a GPT-2 language model built from NumPy up.

    import tinygpt
    x = tinygpt.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad  # array([[2., 4.]], dtype=float32)

``import tinygpt`` loads the engine (tensors, ops, gradient checks) and the model (layers,
GPTConfig) only. The names of the layers above — ``load_gpt2``, ``save_pretrained``,
``generate`` — are imported on first use (``__getattr__`` below), so a learner
who only wants ``Tensor`` does not load safetensors, tiktoken or the hub client.
"""

import importlib

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it here

from tinygpt import backend, nn
from tinygpt.config import GPTConfig
from tinygpt.function import Function
from tinygpt.gradcheck import GradcheckError, gradcheck
from tinygpt.nn.gpt import GPTModel
from tinygpt.tensor import (
    Tensor,
    arange,
    cat,
    concatenate,
    is_grad_enabled,
    manual_seed,
    no_grad,
    ones,
    randn,
    split,
    stack,
    tensor,
    where,
    zeros,
)

# name -> the module that defines it, imported when the name is first asked for.
_LAZY = {
    "generate": "tinygpt.generation",
    "load_gpt2": "tinygpt.checkpoints",
    "profile": "tinygpt.profiler",
    "save_pretrained": "tinygpt.weights",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'tinygpt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Function", "GPTConfig", "GPTModel", "GradcheckError", "Tensor", "arange", "backend",
    "cat", "concatenate", "generate", "gradcheck", "is_grad_enabled", "load_gpt2",
    "manual_seed", "nn", "no_grad", "ones", "profile", "randn", "save_pretrained", "split", "stack",
    "tensor", "where", "zeros",
]
