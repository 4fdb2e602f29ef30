"""Numba kernels for the optimizer: AdamW, SGD and gradient clipping, one pass each, in place.

``tinygpt.optim`` holds the readable reference of each update (a few whole-array NumPy
statements, each a pass over the parameters with a temporary); these kernels do the same
arithmetic element by element in a single pass and write the results in place. They are the
spec's twins: same operations, same order, same dtype (scalars are cast to the parameters'
dtype first, as NumPy does with Python floats), so they agree with the reference to the last
bit in practice and with ``torch.optim`` to float rounding (tests/test_optim.py checks both).

Speed: each run is one call over slices, looping from 0 (so Numba needs no negative-index
check), with ``error_model="numpy"`` (division by zero gives inf, as in NumPy, instead of a
check that raises); both checks would otherwise keep LLVM from using SIMD instructions,
which made AdamW 4x slower. The norm's sum may be reassociated (``fastmath={"reassoc"}``)
so that it, too, runs in SIMD lanes: its rounding then differs from a strict left-to-right
sum at the float64 level, far below float32's.

The optimizer kernels work on *runs*: stretches ``[start, end)`` of flat arrays (an optimizer's
``tinygpt.optim.ParameterBuffer``) whose elements share their hyperparameters. Each run
carries one row of coefficients, so parameter groups with different weight decay or
learning rate, and parameters at different step counts, each get the right ones; usually a
step is two runs (the decayed group and the other).

Accuracy of the norm: squares are summed in float64 whatever the gradient's dtype.
"""

import numba
import numpy as np
from numba import prange

from tinygpt.kernels.numba_rows import _launch  # small inputs on the calling thread only


def _scalars(row, dtype):
    """A run's coefficients as ``dtype`` scalars: the kernel then computes in ``dtype``, as
    NumPy does when a Python float meets an array."""
    return [dtype.type(c) for c in row]


# ----------------------------------------------------------------------------- AdamW

def adamw(param, grad, exp_avg, exp_avg_sq, runs) -> None:
    """AdamW step in place on flat arrays. ``runs`` = [(start, end, row)], where row =
    (1 - lr wd, 1 - b1, b2, 1 - b2, lr / (1 - b1^t), sqrt(1 - b2^t), eps) as
    ``AdamW._coefficients`` computes them in Python floats."""
    for start, end, row in runs:
        _launch(_adamw, end - start, param[start:end], grad[start:end], exp_avg[start:end],
                exp_avg_sq[start:end], *_scalars(row, param.dtype))


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _adamw(param, grad, exp_avg, exp_avg_sq, decay, one_minus_b1, b2, one_minus_b2, step_size,
           bc2_sqrt, eps):
    for i in prange(param.size):
        g = grad[i]
        m = exp_avg[i] + one_minus_b1 * (g - exp_avg[i])        # m <- b1 m + (1 - b1) g
        v = exp_avg_sq[i] * b2 + one_minus_b2 * g * g            # v <- b2 v + (1 - b2) g^2
        exp_avg[i] = m
        exp_avg_sq[i] = v
        denom = np.sqrt(v) / bc2_sqrt + eps                      # sqrt(v_hat) + eps
        param[i] = param[i] * decay - step_size * m / denom      # decoupled decay, then step


# ----------------------------------------------------------------------------- SGD

def sgd(param, grad, momentum_buffer, runs) -> None:
    """SGD step in place on flat arrays. ``runs`` = [(start, end, row)], where row =
    (lr, momentum, 1 - dampening, weight decay, nesterov as 0/1, 1 on a parameter's first
    step with momentum, when its buffer starts as g), from ``SGD._coefficients``.
    ``momentum_buffer`` is only touched by runs whose momentum is not 0."""
    for start, end, row in runs:
        buffer = momentum_buffer[start:end] if row[1] != 0 else param[:0]
        _launch(_sgd, end - start, param[start:end], grad[start:end], buffer,
                *_scalars(row, param.dtype))


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _sgd(param, grad, momentum_buffer, lr, momentum, one_minus_dampening, wd, nesterov, first):
    for i in prange(param.size):
        g = grad[i]
        if wd != 0:
            g = g + wd * param[i]                                # coupled L2 decay
        if momentum != 0:
            b = g if first != 0 else momentum_buffer[i] * momentum + one_minus_dampening * g
            momentum_buffer[i] = b
            g = g + momentum * b if nesterov != 0 else b
        param[i] = param[i] - lr * g


# ----------------------------------------------------------------------------- clipping

def sum_of_squares(x) -> float:
    """sum(x**2) over a contiguous array, accumulated in float64 (one read pass)."""
    flat = x.reshape(-1)
    out = np.zeros(1)
    _launch(_sum_of_squares, flat.size, flat, out)
    return float(out[0])


@numba.njit(cache=True, parallel=True, fastmath={"reassoc"})  # reassoc: a SIMD reduction
def _sum_of_squares(x, out):
    total = 0.0
    for i in prange(x.size):
        total += np.float64(x[i]) * np.float64(x[i])
    out[0] = total


def scale_(x, factor) -> None:
    """x <- x * factor in place (``factor`` cast to x's dtype first, as NumPy does)."""
    flat = x.reshape(-1)
    factor = flat.dtype.type(factor)
    _launch(_scale, flat.size, flat, factor)


@numba.njit(cache=True, parallel=True)
def _scale(x, factor):
    for i in prange(x.size):
        x[i] = x[i] * factor
