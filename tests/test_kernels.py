"""Every Numba CPU kernel against its plain-array reference, on shapes hypothesis picks
(size-1 dimensions, odd sizes, T=1, fewer queries than keys, ignored targets, logits ~1e4),
in float32 and float64. Inputs come from a NumPy generator seeded by hypothesis; backward
kernels get the same saved forward values (lse, mean and rstd, att) as the reference, so
each comparison tests one kernel. Speed is measured in benchmarks/kernels.py, not here."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tinygpt.kernels import numba_cpu, reference

EXAMPLES = settings(deadline=None, max_examples=25)

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])
leading_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
last_dims = st.integers(1, 70)  # crosses the 8-wide unrolling of the row loops
value_scales = st.sampled_from([1.0, 10.0, 1e4])


def assert_close(actual, expected, scale=None):
    """float32: rtol 1e-5, atol 1e-6 * scale; float64: both 1e-12 (scale). ``scale``
    defaults to the largest magnitude in ``expected``."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    rtol, atol = (1e-5, 1e-6) if expected.dtype == np.float32 else (1e-12, 1e-12)
    if scale is None:
        finite = np.abs(expected[np.isfinite(expected)])
        scale = max(1.0, float(finite.max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale)


def normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ----------------------------------------------------------------------------- softmax

@EXAMPLES
@given(seeds, dtypes, leading_shapes, last_dims, value_scales)
def test_softmax(seed, dtype, lead, C, scale):
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, lead + (C,), dtype, scale), normal(rng, lead + (C,), dtype)
    y = reference.softmax_forward(x)
    assert_close(numba_cpu.softmax_forward(x), y)
    assert_close(numba_cpu.softmax_backward(y, dy), reference.softmax_backward(y, dy))


@EXAMPLES
@given(seeds, dtypes, leading_shapes, last_dims, value_scales)
def test_log_softmax(seed, dtype, lead, C, scale):
    rng = np.random.default_rng(seed)
    x, dlogy = normal(rng, lead + (C,), dtype, scale), normal(rng, lead + (C,), dtype)
    logy = reference.log_softmax_forward(x)
    assert_close(numba_cpu.log_softmax_forward(x), logy, scale=scale)
    assert_close(numba_cpu.log_softmax_backward(logy, dlogy),
                 reference.log_softmax_backward(logy, dlogy))


def test_softmax_of_non_contiguous_and_masked_rows():
    x = np.random.default_rng(0).standard_normal((9, 6)).T  # Fortran order
    x[2, :4] = -np.inf
    assert_close(numba_cpu.softmax_forward(x), reference.softmax_forward(x))
    assert_close(numba_cpu.log_softmax_forward(x[:, ::2]), reference.log_softmax_forward(x[:, ::2]))


def test_other_dtypes_fall_back_to_the_reference():
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    np.testing.assert_array_equal(numba_cpu.softmax_forward(x), reference.softmax_forward(x))
    np.testing.assert_array_equal(numba_cpu.gelu_forward(x), reference.gelu_forward(x))


# ----------------------------------------------------------------------------- cross-entropy

@EXAMPLES
@given(seeds, dtypes, st.integers(1, 20), st.integers(1, 1100), value_scales,
       st.sampled_from([0.0, 0.3, 1.0]))
def test_cross_entropy(seed, dtype, N, V, scale, p_ignore):
    rng = np.random.default_rng(seed)
    logits = normal(rng, (N, V), dtype, scale)
    targets = rng.integers(0, V, N)
    targets[rng.random(N) < p_ignore] = -100
    with np.errstate(invalid="ignore", divide="ignore"):  # all ignored: nan loss in both
        loss, lse = reference.cross_entropy_forward(logits, targets, -100)
    fast_loss, fast_lse = numba_cpu.cross_entropy_forward(logits, targets, -100)
    assert_close(fast_lse, lse)
    assert_close(fast_loss, loss, scale=scale)
    assume((targets != -100).any())
    dloss = dtype(0.7)
    assert_close(numba_cpu.cross_entropy_backward(logits, targets, lse, -100, dloss),
                 reference.cross_entropy_backward(logits, targets, lse, -100, dloss))


def test_cross_entropy_with_every_row_ignored_has_zero_gradient():
    logits = np.ones((3, 4), dtype=np.float32)
    targets = np.full(3, -100)
    loss, lse = numba_cpu.cross_entropy_forward(logits, targets, -100)
    assert np.isnan(loss)
    dlogits = numba_cpu.cross_entropy_backward(logits, targets, lse, -100, 1.0)
    np.testing.assert_array_equal(dlogits, np.zeros_like(logits))


def test_cross_entropy_takes_leading_dimensions():
    rng = np.random.default_rng(1)
    logits, targets = rng.standard_normal((2, 3, 7)), rng.integers(0, 7, (2, 3))
    loss, lse = numba_cpu.cross_entropy_forward(logits, targets, -100)
    flat_logits, flat_targets = logits.reshape(6, 7), targets.ravel()
    flat_loss, flat_lse = reference.cross_entropy_forward(flat_logits, flat_targets, -100)
    assert_close(loss, flat_loss)
    assert_close(lse, flat_lse.reshape(2, 3))
    assert_close(numba_cpu.cross_entropy_backward(logits, targets, lse, -100, 1.0),
                 reference.cross_entropy_backward(flat_logits, flat_targets, flat_lse, -100,
                                                  1.0).reshape(2, 3, 7))


# ----------------------------------------------------------------------------- layer norm

@EXAMPLES
@given(seeds, dtypes, st.integers(1, 40), st.integers(1, 100))
def test_layernorm(seed, dtype, N, C):
    """Compared with the reference run in float64 on the same numbers: in float32 the
    reference loses digits in x - mean when a row's spread is small next to its mean (the
    error is multiplied by rstd), while the kernel takes the moments in float64."""
    rng = np.random.default_rng(seed)
    x = normal(rng, (N, C), dtype, 3.0) + dtype(rng.standard_normal())
    weight, bias = normal(rng, C, dtype), normal(rng, C, dtype)
    dy = normal(rng, (N, C), dtype)
    as64 = [a.astype(np.float64) for a in (dy, x, weight, bias)]
    y, mean, rstd = reference.layernorm_forward(as64[1], as64[2], as64[3], 1e-5)
    for fast, ref in zip(numba_cpu.layernorm_forward(x, weight, bias, 1e-5), (y, mean, rstd)):
        assert_close(fast, ref.astype(dtype))
    mean, rstd = mean.astype(dtype), rstd.astype(dtype)
    for fast, ref in zip(numba_cpu.layernorm_backward(dy, x, weight, mean, rstd),
                         reference.layernorm_backward(*as64[:3], mean.astype(np.float64),
                                                      rstd.astype(np.float64))):
        assert_close(fast, ref.astype(dtype))


def test_layernorm_takes_leading_dimensions():
    rng = np.random.default_rng(2)
    x, w, b, dy = (rng.standard_normal(s) for s in ((2, 3, 5), 5, 5, (2, 3, 5)))
    y, mean, rstd = numba_cpu.layernorm_forward(x, w, b, 1e-5)
    assert (y.shape, mean.shape, rstd.shape) == ((2, 3, 5), (2, 3), (2, 3))
    flat = reference.layernorm_forward(x.reshape(6, 5), w, b, 1e-5)
    assert_close(y, flat[0].reshape(2, 3, 5))
    dx, dw, db = numba_cpu.layernorm_backward(dy, x, w, mean, rstd)
    flat_dx, flat_dw, flat_db = reference.layernorm_backward(dy.reshape(6, 5), x.reshape(6, 5),
                                                             w, flat[1], flat[2])
    assert_close(dx, flat_dx.reshape(2, 3, 5))
    assert_close(dw, flat_dw)
    assert_close(db, flat_db)


# ----------------------------------------------------------------------------- GELU

@EXAMPLES
@given(seeds, dtypes, leading_shapes, last_dims, st.sampled_from([1.0, 5.0, 30.0]))
def test_gelu(seed, dtype, lead, C, scale):
    """Compared with the reference run in float64 on the same numbers: in float32 the
    reference's 1 + tanh(u) cancels for negative x (an error of about |x| * 1e-7), while the
    kernel computes x * sigmoid(2u), which does not."""
    rng = np.random.default_rng(seed)
    x, dy = normal(rng, lead + (C,), dtype, scale), normal(rng, lead + (C,), dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert_close(numba_cpu.gelu_forward(x), reference.gelu_forward(x64).astype(dtype))
    assert_close(numba_cpu.gelu_backward(x, dy),
                 reference.gelu_backward(x64, dy64).astype(dtype))


# ----------------------------------------------------------------------------- dropout mask

@EXAMPLES
@given(st.integers(0, 2**63 - 1), st.integers(0, 300), st.sampled_from([0.01, 0.1, 0.5, 0.9]),
       dtypes)
def test_dropout_mask(seed, size, p, dtype):
    expected = reference.dropout_mask(size, seed, p, dtype)
    assert expected.dtype == dtype and set(np.unique(expected)) <= {0, dtype(1 / (1 - p))}
    np.testing.assert_array_equal(numba_cpu.dropout_mask(size, seed, p, dtype), expected)
    assert numba_cpu.dropout_mask(size, seed, p, dtype).dtype == dtype


def test_dropout_mask_in_parallel_equals_the_reference_and_looks_random():
    """Past the serial threshold (threads split the mask): still the reference's numbers.
    The kept fraction is within 4 binomial standard deviations of 1 - p, neighbours and
    two seeds are uncorrelated (|r| < 4 / sqrt(n)), and the kept share does not drift
    along the mask (each tenth within 4 deviations too)."""
    n, p = 3 * numba_cpu._SERIAL_BELOW + 7, 0.1
    mask = numba_cpu.dropout_mask(n, 2024, p, np.float32)
    np.testing.assert_array_equal(mask, reference.dropout_mask(n, 2024, p, np.float32))
    kept = (mask != 0).astype(np.float64)
    assert abs(kept.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / n)
    for tenth in np.array_split(kept, 10):
        assert abs(tenth.mean() - (1 - p)) < 4 * math.sqrt(p * (1 - p) / tenth.size)
    other = (numba_cpu.dropout_mask(n, 2025, p, np.float32) != 0).astype(np.float64)
    for a, b in ((kept[:-1], kept[1:]), (kept, other)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(n)


# ----------------------------------------------------------------------------- attention

@EXAMPLES
@given(seeds, dtypes, st.integers(1, 2), st.integers(1, 3), st.integers(1, 9),
       st.integers(0, 6), st.integers(1, 9), st.booleans(), st.booleans())
def test_attention(seed, dtype, B, H, Tq, extra_keys, D, causal, dropout):
    rng = np.random.default_rng(seed)
    Tk = Tq + extra_keys  # with a KV cache the queries are the last Tq of Tk positions
    q, k, v = normal(rng, (B, H, Tq, D), dtype), normal(rng, (B, H, Tk, D), dtype), \
        normal(rng, (B, H, Tk, D), dtype)
    dout = normal(rng, (B, H, Tq, D), dtype)
    mask = ((rng.random((B, H, Tq, Tk)) > 0.25) / 0.75).astype(dtype) if dropout else None
    scale = 1.0 / math.sqrt(D)  # a Python float: a NumPy float64 would promote float32
    out, att = reference.attention_forward(q, k, v, scale, causal, mask)
    fast_out, fast_att = numba_cpu.attention_forward(q, k, v, scale, causal, mask)
    assert_close(fast_att, att)
    assert_close(fast_out, out)
    for fast, ref in zip(numba_cpu.attention_backward(dout, q, k, v, att, scale, mask),
                         reference.attention_backward(dout, q, k, v, att, scale, mask)):
        assert_close(fast, ref)


# ----------------------------------------------------------------------------- threads

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inputs_above_the_serial_threshold_run_in_parallel_and_agree(dtype):
    """The hypothesis shapes above are small, so their kernels run on one thread; these are
    just past numba_cpu._SERIAL_BELOW elements, so the prange loops split across threads."""
    rng = np.random.default_rng(3)
    N, C = 67, numba_cpu._SERIAL_BELOW // 64 + 13  # N * C > _SERIAL_BELOW, odd sizes
    x, dy = normal(rng, (N, C), dtype, 5.0), normal(rng, (N, C), dtype)
    y, logy = reference.softmax_forward(x), reference.log_softmax_forward(x)
    assert_close(numba_cpu.softmax_forward(x), y)
    assert_close(numba_cpu.softmax_backward(y, dy), reference.softmax_backward(y, dy))
    assert_close(numba_cpu.log_softmax_forward(x), logy)
    assert_close(numba_cpu.log_softmax_backward(logy, dy), reference.log_softmax_backward(logy, dy))
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    assert_close(numba_cpu.gelu_forward(x), reference.gelu_forward(x64).astype(dtype))
    assert_close(numba_cpu.gelu_backward(x, dy), reference.gelu_backward(x64, dy64).astype(dtype))
    targets = rng.integers(0, C, N)
    targets[::5] = -100
    loss, lse = reference.cross_entropy_forward(x, targets, -100)
    for fast, ref in zip(numba_cpu.cross_entropy_forward(x, targets, -100), (loss, lse)):
        assert_close(fast, ref)
    assert_close(numba_cpu.cross_entropy_backward(x, targets, lse, -100, 1.0),
                 reference.cross_entropy_backward(x, targets, lse, -100, 1.0))
    w, b = normal(rng, C, dtype), normal(rng, C, dtype)
    as64 = [a.astype(np.float64) for a in (dy, x, w, b)]
    _, mean, rstd = reference.layernorm_forward(as64[1], as64[2], as64[3], 1e-5)
    fast_dx, fast_dw, fast_db = numba_cpu.layernorm_backward(dy, x, w, mean.astype(dtype),
                                                             rstd.astype(dtype))
    for fast, ref in zip((fast_dx, fast_dw, fast_db),
                         reference.layernorm_backward(*as64[:3], mean, rstd)):
        assert_close(fast, ref.astype(dtype))
    q, k, v, dout = (normal(rng, (2, 3, 150, 16), dtype) for _ in range(4))
    out, att = reference.attention_forward(q, k, v, 0.25)
    for fast, ref in zip(numba_cpu.attention_forward(q, k, v, 0.25), (out, att)):
        assert_close(fast, ref)
    for fast, ref in zip(numba_cpu.attention_backward(dout, q, k, v, att, 0.25),
                         reference.attention_backward(dout, q, k, v, att, 0.25)):
        assert_close(fast, ref)


# ----------------------------------------------------------------------------- the choice

def test_the_kernel_choice_is_read_once_not_per_call(monkeypatch):
    """TINYGPT_KERNELS is read when tinygpt.kernels is imported (a fresh interpreter shows
    it takes effect); setting it later changes nothing, ``kernels.use`` does."""
    from tinygpt import kernels

    code = "from tinygpt import kernels; print(kernels.impl().__name__)"
    for env, expected in (("reference", "tinygpt.kernels.reference"),
                          ("", "tinygpt.kernels.numba_cpu")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env={**os.environ, "TINYGPT_KERNELS": env}).stdout
        assert out.strip() == expected
    monkeypatch.setenv("TINYGPT_KERNELS", "reference")
    assert kernels.impl() is numba_cpu
    with kernels.using("reference"):
        assert kernels.impl() is reference
    assert kernels.impl() is numba_cpu
    with pytest.raises(ValueError, match="unknown kernels 'cuda'"):
        kernels.use("cuda")


@pytest.mark.parametrize("name, arrays", [
    ("softmax_forward", [np.arange(6).reshape(2, 3)]),  # integers
    ("gelu_forward", [np.zeros((0, 4), dtype=np.float32)]),  # empty
    ("softmax_backward", [np.ones((2, 3), np.float16), np.ones((2, 3), np.float16)]),
])
def test_inputs_the_kernels_do_not_take_go_to_the_reference(name, arrays):
    """One shared fallback: the reference function of the same name gives the result."""
    got = getattr(numba_cpu, name)(*arrays)
    expected = getattr(reference, name)(*arrays)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
