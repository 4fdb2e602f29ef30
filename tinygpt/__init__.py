"""tinygpt: a GPT-2 language model built from NumPy up.

    import tinygpt
    x = tinygpt.tensor([[1.0, 2.0]], requires_grad=True)
    (x * x).sum().backward()
    x.grad  # array([[2., 4.]], dtype=float32)
"""

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.function import Function
from tinygpt.generation import generate
from tinygpt.gradcheck import GradcheckError, gradcheck
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
from tinygpt.weights import load_gpt2, save_pretrained

__all__ = [
    "Function",
    "GPTConfig", "GradcheckError", "Tensor", "arange", "backend", "cat", "concatenate", "generate",
    "gradcheck", "load_gpt2", "save_pretrained",
    "is_grad_enabled", "manual_seed", "no_grad", "ones", "randn", "split", "stack", "tensor",
    "where", "zeros",
]
