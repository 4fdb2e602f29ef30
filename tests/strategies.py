"""Hypothesis strategies shared by the op tests: shapes and float64 values.

Shapes stay small (at most a few dozen elements per input) so that element-wise finite
differences, two forward calls per input element, stay fast. Values are bounded away from the
places where an op is not smooth or not defined (log and sqrt near 0, division by ~0, ties in
max), because finite differences are meaningless there.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_SIDE = 4

# ----------------------------------------------------------------------------- shapes


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE):
    """Any shape with sides in [min_side, max_side] (size-1 sides included, no empty ones)."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=MAX_SIDE):
    """``num_shapes`` shapes that broadcast together: a tuple of shapes.

    mutually_broadcastable_shapes produces size-1 dimensions and missing leading dimensions,
    the two ways broadcasting stretches an operand.
    """
    return hnp.mutually_broadcastable_shapes(
        num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims, min_side=1,
        max_side=max_side,
    ).map(lambda b: b.input_shapes)


@st.composite
def matmul_shapes(draw):
    """Shape pairs for matmul: 1-D operands, plain matrices, batched and broadcast batches."""
    n, k, m = (draw(st.integers(1, 4)) for _ in range(3))
    kind = draw(st.sampled_from(["vv", "vm", "mv", "mm", "batched"]))
    if kind == "vv":
        return (k,), (k,)
    if kind == "vm":
        batch = draw(shapes(min_dims=0, max_dims=2, max_side=3))
        return (k,), batch + (k, m)
    if kind == "mv":
        batch = draw(shapes(min_dims=0, max_dims=2, max_side=3))
        return batch + (n, k), (k,)
    if kind == "mm":
        return (n, k), (k, m)
    batch_a, batch_b = draw(broadcastable_shapes(max_dims=2, max_side=3))
    return batch_a + (n, k), batch_b + (k, m)


@st.composite
def shape_and_axis(draw, min_dims=1, max_dims=3, allow_none=True, allow_tuple=True):
    """A shape and an axis argument for it: None, an int (negative too) or a tuple of ints."""
    shape = draw(shapes(min_dims=min_dims, max_dims=max_dims))
    ndim = len(shape)
    options = [st.integers(-ndim, ndim - 1)]
    if allow_none:
        options.append(st.none())
    if allow_tuple:
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim,
                                unique=True).map(tuple))
    return shape, draw(st.one_of(*options))


@st.composite
def basic_index(draw, shape, reverse=True):
    """A tuple of ints (negative too), non-empty slices (negative steps too unless
    ``reverse=False``: PyTorch has none), None and Ellipsis."""
    parts = []
    for n in shape:
        kind = draw(st.sampled_from(["int", "slice", "all"] + (["reversed"] if reverse else [])))
        if kind == "int":
            parts.append(draw(st.integers(-n, n - 1)))
        elif kind == "all":
            parts.append(slice(None))
        else:
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            step = draw(st.integers(1, 2))
            if kind == "slice":
                parts.append(slice(start, stop, step))
            else:  # the same elements, walked backwards
                parts.append(slice(stop - 1, start - 1 if start else None, -step))
    if parts and draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), None)
    if parts and draw(st.booleans()):
        parts = [Ellipsis] + parts[draw(st.integers(1, len(parts))):]
    return tuple(parts)


# ----------------------------------------------------------------------------- values


def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape, lo=-3.0, hi=3.0):
    """float64 arrays of ``shape`` with values in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


def positive_arrays(shape, lo=0.2, hi=3.0):
    """float64 arrays with values in [lo, hi] > 0: inputs of log, sqrt, pow and divisors."""
    return arrays(shape, lo, hi)


@st.composite
def nonzero_arrays(draw, shape, lo=0.3, hi=3.0):
    """float64 arrays with |value| in [lo, hi], either sign: divisors."""
    magnitude = draw(arrays(shape, lo, hi))
    signs = draw(hnp.arrays(np.bool_, shape))
    return np.where(signs, -magnitude, magnitude)


@st.composite
def distinct_arrays(draw, shape, gap=0.25):
    """float64 arrays whose elements differ pairwise by at least ``gap``: no ties, so max is
    differentiable and finite differences do not cross from one maximum to another."""
    n = int(np.prod(shape, dtype=np.int64))
    order = draw(st.permutations(range(n)))
    offset = draw(floats(-2.0, 2.0))
    jitter = draw(arrays((n,), 0.0, gap / 4))
    return (np.asarray(order, dtype=np.float64) * gap + offset + jitter).reshape(shape)


@st.composite
def logits(draw, shape, large=True):
    """Logits of ``shape``: ordinary magnitudes, or ~1e3 where a naive exp overflows."""
    scale = draw(st.sampled_from([1.0, 10.0, 1e3] if large else [1.0, 3.0]))
    return draw(arrays(shape, -1.0, 1.0)) * scale


@st.composite
def targets(draw, shape, vocab, ignore_index=-100, ignore=True):
    """Integer class indices in [0, vocab) of ``shape``, some equal to ``ignore_index``.

    At least one target is kept, so the mean over the kept rows is defined.
    """
    element = st.integers(0, vocab - 1)
    if ignore:
        element = st.one_of(element, element, st.just(ignore_index))
    out = draw(hnp.arrays(np.int64, shape, elements=element))
    if out.size and (out == ignore_index).all():
        out.reshape(-1)[0] = draw(st.integers(0, vocab - 1))
    return out


@st.composite
def classification(draw, max_rows_dims=2, max_vocab=6, large=True, ignore=True):
    """(logits (..., V), targets (...)) for cross_entropy."""
    rows = draw(shapes(min_dims=1, max_dims=max_rows_dims, max_side=4))
    vocab = draw(st.integers(1, max_vocab))
    return (draw(logits(rows + (vocab,), large=large)),
            draw(targets(rows, vocab, ignore=ignore)))


@st.composite
def attention_shapes(draw, max_t=5, max_d=4, kv_cache=False):
    """(q shape, k/v shape) as (B, H, Tq, D) and (B, H, Tk, D); Tq < Tk with a KV cache."""
    B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, max_d))
    Tk = draw(st.integers(2 if kv_cache else 1, max_t))
    Tq = draw(st.integers(1, Tk - 1)) if kv_cache else Tk
    return (B, H, Tq, D), (B, H, Tk, D)


# Element-wise ops under test: name -> (function of a Tensor, strategy of valid inputs).
UNARY_OPS = {
    "neg": (lambda t: -t, arrays),
    "exp": (lambda t: t.exp(), arrays),
    "log": (lambda t: t.log(), positive_arrays),
    "sqrt": (lambda t: t.sqrt(), positive_arrays),
    "tanh": (lambda t: t.tanh(), arrays),
}
