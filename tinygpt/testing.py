"""Hypothesis strategies for gradient checks: shapes, well-conditioned arrays, logits, targets.

Use them to test an op of your own the way tinygpt tests its built-in ones::

    from hypothesis import given, settings, strategies as st
    from tinygpt.testing import arrays, broadcastable_shapes

    settings.load_profile("tinygpt")          # no deadline: the first Numba call compiles

    @given(st.data())
    def test_my_op(data):
        shape_a, shape_b = data.draw(broadcastable_shapes())
        a, b = data.draw(arrays(shape_a)), data.draw(arrays(shape_b, avoid=(0.0,)))
        tinygpt.gradcheck(MyOp.apply, [tinygpt.tensor(a), tinygpt.tensor(b)])

Shapes stay small (at most a few dozen elements per input) so that element-wise finite
differences, two forward calls per input element, stay fast. Values stay bounded and away
from the places where an op is not smooth or not defined (log and sqrt near 0, division by
~0, the kink of relu or abs at 0, ties in max): finite differences are meaningless there.

hypothesis is a test-time dependency (``pip install hypothesis``, or ``pip install -e
".[dev]"``); ``import tinygpt`` never imports it, only ``import tinygpt.testing`` does.
"""

from __future__ import annotations

import numpy as np

try:
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:  # hypothesis is a test-time dependency, not needed by tinygpt itself
    raise ImportError("tinygpt.testing needs hypothesis: pip install hypothesis "
                      "(or pip install -e \".[dev]\")") from None

MAX_SIDE = 4
FLOAT_DTYPES = ("float32", "float64")

# "tinygpt": no deadline (the first call of a Numba kernel compiles for seconds) and 30
# examples per test; "ci": the same, derandomized so a CI run is reproducible.
settings.register_profile(
    "tinygpt",
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("tinygpt"), derandomize=True)

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


@st.composite
def attention_shapes(draw, max_t=5, max_d=4, kv_cache=False):
    """(q shape, k/v shape) as (B, H, Tq, D) and (B, H, Tk, D); Tq < Tk with a KV cache."""
    B, H, D = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, max_d))
    Tk = draw(st.integers(2 if kv_cache else 1, max_t))
    Tq = draw(st.integers(1, Tk - 1)) if kv_cache else Tk
    return (B, H, Tq, D), (B, H, Tk, D)


# ----------------------------------------------------------------------------- values


def float_dtypes():
    """float32 or float64: pass as ``dtype=`` to ``arrays`` to vary the precision too."""
    return st.sampled_from(FLOAT_DTYPES)


def floats(min_value=-3.0, max_value=3.0, width=64):
    """Finite floats in [min_value, max_value]: no NaN, no infinity, no subnormals."""
    return st.floats(min_value, max_value, width=width, allow_nan=False,
                     allow_infinity=False, allow_subnormal=False)


def _strategy(value):
    """A fixed value as a strategy that always draws it; a strategy as it is."""
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


def _inward(min_value, max_value, dtype):
    """The bounds rounded inwards to numbers ``dtype`` holds exactly (0.2 is not a float32)."""
    lo, hi = np.asarray(min_value, dtype), np.asarray(max_value, dtype)
    lo = lo if lo >= min_value else np.nextafter(lo, hi)
    hi = hi if hi <= max_value else np.nextafter(hi, lo)
    return float(lo), float(hi)


def arrays(shape, dtype="float64", min_value=-3.0, max_value=3.0, avoid=(), margin=0.1):
    """Arrays of ``shape`` and ``dtype`` with values in [min_value, max_value].

    ``shape`` and ``dtype`` may be fixed or strategies (``shapes()``, ``float_dtypes()``).
    ``avoid`` lists points where the op under test has a kink or a pole (0 for relu, abs and
    division): every value keeps at least ``margin`` away from them, so a finite-difference
    step of ~1e-6 never crosses one.
    """
    def elements(dtype):
        lo, hi = _inward(min_value, max_value, dtype)
        values = floats(lo, hi, width=np.dtype(dtype).itemsize * 8)
        if avoid:
            values = values.filter(lambda v: all(abs(v - k) >= margin for k in avoid))
        return values

    return st.tuples(_strategy(shape), _strategy(dtype)).flatmap(
        lambda shape_dtype: hnp.arrays(shape_dtype[1], shape_dtype[0],
                                       elements=elements(shape_dtype[1])))


def positive_arrays(shape, min_value=0.2, max_value=3.0, dtype="float64"):
    """Arrays with values in [min_value, max_value] > 0: inputs of log, sqrt, pow, divisors."""
    return arrays(shape, dtype, min_value, max_value)


def nonzero_arrays(shape, min_value=0.3, max_value=3.0, dtype="float64"):
    """Arrays with |value| in [min_value, max_value], either sign: divisors."""
    return arrays(shape, dtype, -max_value, max_value, avoid=(0.0,), margin=min_value)


@st.composite
def distinct_arrays(draw, shape, gap=0.25):
    """float64 arrays whose elements differ pairwise by at least ``gap``: no ties, so max is
    differentiable and finite differences do not cross from one maximum to another."""
    n = int(np.prod(shape, dtype=np.int64))
    order = draw(st.permutations(range(n)))
    offset = draw(floats(-2.0, 2.0))
    jitter = draw(arrays((n,), min_value=0.0, max_value=gap / 4))
    return (np.asarray(order, dtype=np.float64) * gap + offset + jitter).reshape(shape)


@st.composite
def logits(draw, shape, large=True, dtype="float64"):
    """Logits of ``shape``: ordinary magnitudes, or ~1e3 where a naive exp overflows."""
    scale = draw(st.sampled_from([1.0, 10.0, 1e3] if large else [1.0, 3.0]))
    return draw(arrays(shape, dtype, -1.0, 1.0)) * np.asarray(scale, dtype=dtype)


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


# Element-wise ops of the engine: name -> (function of a Tensor, strategy of valid inputs).
UNARY_OPS = {
    "neg": (lambda t: -t, arrays),
    "exp": (lambda t: t.exp(), arrays),
    "log": (lambda t: t.log(), positive_arrays),
    "sqrt": (lambda t: t.sqrt(), positive_arrays),
    "tanh": (lambda t: t.tanh(), arrays),
}
