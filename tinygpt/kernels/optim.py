"""Numba kernels for the optimizer: AdamW, SGD and gradient clipping, one pass each, in place.

``tinygpt.optim`` holds the readable reference of each update (a few whole-array NumPy
statements, each a pass over the parameters with a temporary); these kernels do the same
arithmetic element by element in a single pass and write the results in place. They are the
spec's twins: same operations, same order, same dtype (scalars are cast to the parameters'
dtype first, as NumPy does with Python floats), so they agree with the reference to the last
bit in practice and with ``torch.optim`` to float rounding (tests/test_optim.py checks both).

The optimizer kernels work on *runs*: stretches ``[start, end)`` of flat arrays (the
``ParameterBuffer`` of ``tinygpt.nn.module``) whose elements share their hyperparameters.
Each run carries one row of coefficients, so parameter groups with different weight decay
or learning rate, and parameters at different step counts, go through one call.

Accuracy of the norm: squares are summed in float64 whatever the gradient's dtype.
"""

import numba
import numpy as np
from numba import prange

from tinygpt.kernels.numba_cpu import _launch  # small inputs on the calling thread only


def _runs(runs, dtype):
    """[(start, end, coefficients), ...] -> (starts, ends, coefficient rows in ``dtype``)."""
    starts = np.array([r[0] for r in runs], dtype=np.int64)
    ends = np.array([r[1] for r in runs], dtype=np.int64)
    coefficients = np.array([r[2] for r in runs], dtype=dtype).reshape(len(runs), -1)
    return starts, ends, coefficients


# ----------------------------------------------------------------------------- AdamW

def adamw(param, grad, exp_avg, exp_avg_sq, runs) -> None:
    """AdamW step in place on flat arrays. ``runs`` = [(start, end, row)], where row =
    (1 - lr wd, 1 - b1, b2, 1 - b2, lr / (1 - b1^t), sqrt(1 - b2^t), eps) as
    ``AdamW._coefficients`` computes them in Python floats."""
    starts, ends, coefficients = _runs(runs, param.dtype)
    _launch(_adamw, int((ends - starts).sum()), param, grad, exp_avg, exp_avg_sq, starts, ends,
            coefficients)


@numba.njit(cache=True, parallel=True)
def _adamw(param, grad, exp_avg, exp_avg_sq, starts, ends, coefficients):
    for r in range(len(starts)):
        c = coefficients[r]
        decay, one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps = (
            c[0], c[1], c[2], c[3], c[4], c[5], c[6])
        for i in prange(starts[r], ends[r]):
            g = grad[i]
            m = exp_avg[i] + one_minus_b1 * (g - exp_avg[i])    # m <- b1 m + (1 - b1) g
            v = exp_avg_sq[i] * b2 + one_minus_b2 * g * g       # v <- b2 v + (1 - b2) g^2
            exp_avg[i] = m
            exp_avg_sq[i] = v
            denom = np.sqrt(v) / bc2_sqrt + eps                 # sqrt(v_hat) + eps
            param[i] = param[i] * decay - step_size * m / denom  # decoupled decay, then step


# ----------------------------------------------------------------------------- SGD

def sgd(param, grad, momentum_buffer, runs) -> None:
    """SGD step in place on flat arrays. ``runs`` = [(start, end, row)], where row =
    (lr, momentum, 1 - dampening, weight decay, nesterov as 0/1, 1 on a parameter's first
    step with momentum, when its buffer starts as g), from ``SGD._coefficients``.
    ``momentum_buffer`` is only touched by runs whose momentum is not 0."""
    starts, ends, coefficients = _runs(runs, param.dtype)
    _launch(_sgd, int((ends - starts).sum()), param, grad, momentum_buffer, starts, ends,
            coefficients)


@numba.njit(cache=True, parallel=True)
def _sgd(param, grad, momentum_buffer, starts, ends, coefficients):
    for r in range(len(starts)):
        c = coefficients[r]
        lr, momentum, one_minus_dampening, wd, nesterov, first = c[0], c[1], c[2], c[3], c[4], c[5]
        for i in prange(starts[r], ends[r]):
            g = grad[i]
            if wd != 0:
                g = g + wd * param[i]                           # coupled L2 decay
            if momentum != 0:
                b = g if first != 0 else (
                    momentum_buffer[i] * momentum + one_minus_dampening * g)
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


@numba.njit(cache=True, parallel=True)
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
