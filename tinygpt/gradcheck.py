"""Check ``backward()`` against central finite differences, in float64.

For a function f of some tensors, pick a random "upstream gradient" v of f's output shape and
look at the scalar L = sum(v * f(inputs)). Backward gives dL/dx for every input element x;
finite differences estimate the same number as (L(x + eps) - L(x - eps)) / (2 eps), with an
error of order eps^2. In float64 with eps = 1e-6 the two agree to about 1e-8 when backward
is right, and are usually off by order 1 when it is wrong.

``directional=True`` checks one random direction u instead of every element (HIPS/autograd's
trick): finite differences of L along u, (L(x + eps u) - L(x - eps u)) / (2 eps), must equal
<dL/dx, u> from backward. That is one scalar and two function calls per check, cheap enough
for whole attention blocks and GPT layers.
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Backward disagrees with finite differences; the message names the worst element."""


def _float64_leaves(inputs):
    leaves = []
    for i, x in enumerate(inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: input {i} must be a Tensor, got {type(x).__name__}")
        if not numpy.issubdtype(x.dtype, numpy.floating):
            raise TypeError(f"gradcheck: input {i} must be floating point, got {x.dtype}")
        leaves.append(Tensor(x.data.astype("float64"), requires_grad=True))
    return leaves


def _objective(fn, leaves, v):
    """L = sum(v * f(leaves)) as a Python float, without recording a graph."""
    with no_grad():
        return float((fn(*leaves).data * v).sum())


def gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, directional=False, seed=0):
    """Return True if backward matches finite differences, else raise GradcheckError.

    fn(*inputs) -> Tensor of any shape. Inputs are copied to float64 leaves first.
    """
    leaves = _float64_leaves(inputs)
    out = fn(*leaves)
    xp = backend.xp()
    rng = numpy.random.default_rng(seed)
    v = xp.asarray(rng.standard_normal(out.shape))
    (out * Tensor(v)).sum().backward()
    analytic = [xp.zeros_like(x.data) if x.grad is None else x.grad for x in leaves]

    if directional:
        directions = [xp.asarray(rng.standard_normal(x.shape)) for x in leaves]
        for x, u in zip(leaves, directions):
            x.data = x.data + eps * u
        plus = _objective(fn, leaves, v)
        for x, u in zip(leaves, directions):
            x.data = x.data - 2 * eps * u
        minus = _objective(fn, leaves, v)
        numeric = (plus - minus) / (2 * eps)
        predicted = float(sum((g * u).sum() for g, u in zip(analytic, directions)))
        if abs(numeric - predicted) > atol + rtol * abs(numeric):
            raise GradcheckError(
                f"directional derivative: backward gives {predicted:.10g}, finite "
                f"differences {numeric:.10g} (difference {abs(numeric - predicted):.3g})")
        return True

    for index, (x, grad) in enumerate(zip(leaves, analytic)):
        numeric = xp.zeros_like(x.data)
        flat = x.data.reshape(-1)  # a view: changing flat changes x.data
        for j in range(flat.size):
            original = float(flat[j])
            flat[j] = original + eps
            plus = _objective(fn, leaves, v)
            flat[j] = original - eps
            minus = _objective(fn, leaves, v)
            flat[j] = original
            numeric.reshape(-1)[j] = (plus - minus) / (2 * eps)
        _compare(index, grad, numeric, atol, rtol)
    return True


def _compare(index, analytic, numeric, atol, rtol):
    error = abs(analytic - numeric) - (atol + rtol * abs(numeric))
    if (error > 0).any():
        worst = numpy.unravel_index(int(error.argmax()), error.shape)
        raise GradcheckError(
            f"input {index}, element {tuple(int(i) for i in worst)}: backward gives "
            f"{float(analytic[worst]):.10g}, finite differences {float(numeric[worst]):.10g} "
            f"({int((error > 0).sum())} of {error.size} elements out of tolerance)")
