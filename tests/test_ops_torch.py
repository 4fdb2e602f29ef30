"""Forward values (and gradients) against PyTorch, on the same float64 arrays.

Every op PyTorch has is compared forward and backward: tinygpt and torch each get the same
inputs and the same random upstream gradient v (the backward of sum(v * out)). The fused ops
run under both kernel implementations (Numba and the plain-array reference), in float64 to
1e-10 and in float32 to ~1e-5. Causal attention with a KV cache (fewer queries than keys,
aligned to the end) has no is_causal counterpart in torch; it is compared with a NumPy loop
written here, and its gradients with torch given the equivalent explicit mask.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt
import tinygpt.functional as F
import tinygpt.testing as S
from tinygpt import Tensor
from tinygpt import kernels as tinygpt_kernels

RTOL, ATOL = 1e-10, 1e-12  # float64; the atol only matters for values that are ~0
RTOL32, ATOL32 = 2e-5, 2e-6  # float32 kernels against float64 torch on the same values

KERNELS = ["numba", "reference"]


@contextlib.contextmanager
def kernels(kind):
    """Run the fused ops with the Numba kernels or the plain-array reference."""
    with tinygpt_kernels.using("numba" if kind == "numba" else "reference"):
        yield


def compare(tg_fn, torch_fn, arrays, grad=True, rtol=RTOL, atol=ATOL, dtype=np.float64,
            seed=0):
    """tg_fn(*tinygpt tensors) and torch_fn(*torch tensors) agree forward and backward.

    ``arrays`` are NumPy arrays; floating ones become leaves (``dtype`` for tinygpt, float64
    for torch, holding the very same values), integer and boolean ones are passed as they are.
    """
    leaves = [np.issubdtype(a.dtype, np.floating) for a in arrays]
    tg_in = [Tensor(a.astype(dtype), requires_grad=grad) if leaf else a
             for a, leaf in zip(arrays, leaves)]
    th_in = [torch.from_numpy(a.astype(dtype).astype(np.float64)).requires_grad_(grad) if leaf
             else torch.from_numpy(a) for a, leaf in zip(arrays, leaves)]
    out, ref = tg_fn(*tg_in), torch_fn(*th_in)
    assert out.shape == tuple(ref.shape)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=rtol, atol=atol,
                               err_msg="forward")
    if not grad:
        return
    v = np.asarray(np.random.default_rng(seed).standard_normal(out.shape))
    (out * Tensor(v.astype(dtype))).sum().backward()
    (ref * torch.from_numpy(v)).sum().backward()
    for i, (t, r, leaf) in enumerate(zip(tg_in, th_in, leaves)):
        if not leaf:
            continue
        expected = np.zeros(t.shape) if r.grad is None else r.grad.numpy()
        got = np.zeros(t.shape) if t.grad is None else t.grad
        assert got.dtype == dtype or t.grad is None
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")


def all_axes(x, axis):
    """torch's spelling of a NumPy-style axis argument: None means every dimension."""
    return tuple(range(x.ndim)) if axis is None else axis


# ----------------------------------------------------------------------------- element-wise

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
}


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_ops(name, data):
    shape_a, shape_b = data.draw(S.broadcastable_shapes())
    if name == "pow":
        a = data.draw(S.positive_arrays(shape_a))
        b = data.draw(S.arrays(shape_b, min_value=-2.0, max_value=2.0))
    elif name == "div":
        a, b = data.draw(S.arrays(shape_a)), data.draw(S.nonzero_arrays(shape_b))
    else:
        a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    compare(BINARY[name], BINARY[name], [a, b])


@given(data=st.data(), c=S.floats(0.5, 2.0), exponent=st.sampled_from([2, 3, 0.5, -1, -1.5]))
def test_number_operands_and_scalar_pow(data, c, exponent):
    x = data.draw(S.positive_arrays(data.draw(S.shapes())))
    for fn in (lambda t: t + c, lambda t: c - t, lambda t: t * c, lambda t: c / t,
               lambda t: t**exponent, lambda t: c**t):
        compare(fn, fn, [x])


@pytest.mark.parametrize("name", S.UNARY_OPS)
@given(data=st.data())
def test_unary_ops(name, data):
    fn, values = S.UNARY_OPS[name]
    compare(fn, fn, [data.draw(values(data.draw(S.shapes())))])


@given(data=st.data())
def test_matmul(data):
    shape_a, shape_b = data.draw(S.matmul_shapes())
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    compare(lambda x, y: x @ y, torch.matmul, [a, b])


# ----------------------------------------------------------------------------- reductions

@given(data=st.data(), keepdims=st.booleans())
def test_sum_mean(data, keepdims):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.arrays(shape))
    compare(lambda t: t.sum(axis=axis, keepdims=keepdims),
            lambda t: t.sum(dim=all_axes(t, axis), keepdim=keepdims), [x])
    compare(lambda t: t.mean(axis=axis, keepdims=keepdims),
            lambda t: t.mean(dim=all_axes(t, axis), keepdim=keepdims), [x])


@given(data=st.data(), keepdims=st.booleans(), correction=st.sampled_from([0, 1]))
def test_var(data, keepdims, correction):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.arrays(shape))
    n = x.size if axis is None else np.prod([shape[a] for a in np.atleast_1d(axis)])
    if n - correction <= 0:
        correction = 0
    compare(lambda t: t.var(axis=axis, keepdims=keepdims, correction=correction),
            lambda t: t.var(dim=all_axes(t, axis), keepdim=keepdims, correction=correction),
            [x])


@given(data=st.data(), keepdims=st.booleans())
def test_max(data, keepdims):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.distinct_arrays(shape))
    compare(lambda t: t.max(axis=axis, keepdims=keepdims),
            lambda t: torch.amax(t, dim=all_axes(t, axis), keepdim=keepdims), [x])


def test_max_ties_split_like_amax():
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])
    compare(lambda t: t.max(axis=1), lambda t: torch.amax(t, dim=1), [x])
    compare(lambda t: t.max(), lambda t: torch.amax(t), [x])


# ----------------------------------------------------------------------------- shapes

@given(data=st.data())
def test_reshape_permute_transpose(data):
    shape = data.draw(S.shapes(min_dims=2))
    size = int(np.prod(shape))
    target = data.draw(st.sampled_from([(size,), (-1, shape[0]), tuple(reversed(shape))]))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    dim0, dim1 = (data.draw(st.integers(-len(shape), len(shape) - 1)) for _ in range(2))
    x = data.draw(S.arrays(shape))
    compare(lambda t: t.reshape(target), lambda t: t.reshape(target), [x])
    compare(lambda t: t.permute(axes), lambda t: t.permute(axes), [x])
    compare(lambda t: t.transpose(dim0, dim1), lambda t: t.transpose(dim0, dim1), [x])
    compare(lambda t: t.transpose(), lambda t: t.transpose(-2, -1), [x])
    compare(lambda t: t.T, lambda t: t.permute(tuple(reversed(range(t.ndim)))), [x])


@given(data=st.data())
def test_getitem(data):
    shape = data.draw(S.shapes(min_dims=1))
    x = data.draw(S.arrays(shape))
    index = data.draw(S.basic_index(shape, reverse=False))
    compare(lambda t: t[index], lambda t: t[index], [x])
    n = shape[0]
    rows = data.draw(hnp.arrays(np.int64, data.draw(S.shapes(min_dims=1, max_dims=2)),
                                elements=st.integers(-n, n - 1)))
    compare(lambda t: t[rows], lambda t: t[torch.from_numpy(rows)], [x])
    mask = data.draw(hnp.arrays(np.bool_, shape))
    compare(lambda t: t[mask], lambda t: t[torch.from_numpy(mask)], [x])
    if len(shape) >= 2:
        cols = data.draw(hnp.arrays(np.int64, rows.shape, elements=st.integers(0, shape[1] - 1)))
        compare(lambda t: t[rows, cols],
                lambda t: t[torch.from_numpy(rows), torch.from_numpy(cols)], [x])
        compare(lambda t: t[:, cols], lambda t: t[:, torch.from_numpy(cols)], [x])


@given(data=st.data())
def test_concatenate_stack_split(data):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3, max_side=3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    arrays = [data.draw(S.arrays(shape)) for _ in range(data.draw(st.integers(1, 3)))]
    compare(lambda *ts: tinygpt.concatenate(list(ts), axis=axis),
            lambda *ts: torch.cat(ts, dim=axis), arrays)
    compare(lambda *ts: tinygpt.stack(list(ts), axis=axis),
            lambda *ts: torch.stack(ts, dim=axis), arrays)
    size = shape[axis]
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=3)))
    sizes = np.diff([0, *cuts, size]).tolist()
    compare(lambda t: tinygpt.concatenate(
                [p.reshape(-1) * (i + 1.0) for i, p in enumerate(tinygpt.split(t, sizes, axis))]),
            lambda t: torch.cat(
                [p.reshape(-1) * (i + 1.0) for i, p in enumerate(torch.split(t, sizes, axis))]),
            [arrays[0]])


@given(data=st.data(), value=st.sampled_from([0.0, -1e9, 2.5]))
def test_where_and_masked_fill(data, value):
    shape_c, shape_a, shape_b = data.draw(S.broadcastable_shapes(num_shapes=3))
    condition = data.draw(hnp.arrays(np.bool_, shape_c))
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    compare(lambda x, y: tinygpt.where(condition, x, y),
            lambda x, y: torch.where(torch.from_numpy(condition), x, y), [a, b])
    mask = data.draw(hnp.arrays(np.bool_, data.draw(hnp.broadcastable_shapes(shape_a))))
    compare(lambda x: x.masked_fill(mask, value),
            lambda x: x.masked_fill(torch.from_numpy(mask), value), [a])


# ----------------------------------------------------------------------------- fused ops

def softmax_case(data, large=True):
    shape, axis = data.draw(S.shape_and_axis(allow_none=False, allow_tuple=False))
    return data.draw(S.logits(shape, large=large)), axis


@pytest.mark.parametrize("kind", KERNELS)
@given(data=st.data())
def test_softmax_log_softmax(kind, data):
    x, axis = softmax_case(data)
    with kernels(kind):
        compare(lambda t: F.softmax(t, axis=axis), lambda t: torch.softmax(t, dim=axis), [x])
        compare(lambda t: F.log_softmax(t, axis=axis), lambda t: torch.log_softmax(t, dim=axis),
                [x])


def torch_cross_entropy(ignore_index=-100):
    def loss(logits, targets):
        return TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                ignore_index=ignore_index)
    return loss


@pytest.mark.parametrize("kind", KERNELS)
@given(problem=S.classification(max_vocab=8))
def test_cross_entropy(kind, problem):
    logits, targets = problem
    with kernels(kind):
        compare(F.cross_entropy, torch_cross_entropy(), [logits, targets])
        compare(lambda x, y: F.cross_entropy(x, y, ignore_index=0), torch_cross_entropy(0),
                [logits, np.where(targets == -100, 0, targets)])


@pytest.mark.parametrize("kind", KERNELS)
def test_cross_entropy_every_target_ignored(kind):
    """Nothing to average: the loss is nan as in PyTorch, the gradient zero."""
    logits = np.random.default_rng(0).standard_normal((3, 4))
    targets = np.full(3, -100)
    with kernels(kind), np.errstate(invalid="ignore", divide="ignore"):
        x = tinygpt.tensor(logits, requires_grad=True)
        loss = F.cross_entropy(x, targets)
        assert np.isnan(loss.item())
        loss.backward()
        np.testing.assert_array_equal(x.grad, np.zeros((3, 4)))


@pytest.mark.parametrize("kind", KERNELS)
@given(data=st.data())
def test_gelu_tanh_approximation(kind, data):
    x = data.draw(S.arrays(data.draw(S.shapes()), min_value=-6.0, max_value=6.0))
    with kernels(kind):
        compare(F.gelu, lambda t: TF.gelu(t, approximate="tanh"), [x])


@pytest.mark.parametrize("kind", KERNELS)
@given(data=st.data(), eps=st.sampled_from([1e-5, 1e-3]))
def test_layer_norm(kind, data, eps):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    C = shape[-1]
    x, w, b = (data.draw(S.arrays(s)) for s in (shape, (C,), (C,)))
    with kernels(kind):
        compare(lambda *ts: F.layer_norm(*ts, eps=eps),
                lambda t, w_, b_: TF.layer_norm(t, (C,), w_, b_, eps=eps), [x, w, b])


@given(data=st.data(), with_bias=st.booleans())
def test_linear(data, with_bias):
    lead = data.draw(S.shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    arrays = [data.draw(S.arrays(lead + (n_in,))), data.draw(S.arrays((n_out, n_in)))]
    if with_bias:
        arrays.append(data.draw(S.arrays((n_out,))))
    compare(F.linear, TF.linear, arrays)


@given(data=st.data())
def test_embedding(data):
    num, dim = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    ids = data.draw(hnp.arrays(np.int64, data.draw(S.shapes(min_dims=1, max_dims=2)),
                               elements=st.integers(0, num - 1)))
    weight = data.draw(S.arrays((num, dim)))
    compare(lambda w: F.embedding(ids, w), lambda w: TF.embedding(torch.from_numpy(ids), w),
            [weight])


def attention_reference(q, k, v, causal=True):
    """Attention written as loops, for Tq <= Tk: query i sits at position i + Tk - Tq
    (the queries are the newest positions, their keys cached) and sees keys up to there."""
    Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for head in np.ndindex(q.shape[:-2]):
        for i in range(Tq):
            visible = i + Tk - Tq + 1 if causal else Tk
            scores = k[head][:visible] @ q[head][i] / math.sqrt(D)
            weights = np.exp(scores - scores.max())
            out[head][i] = (weights / weights.sum()) @ v[head][:visible]
    return out


def torch_attention(causal, t_query, t_key):
    """torch's attention with the end-aligned causal mask as an explicit boolean mask."""
    allowed = torch.ones(t_query, t_key, dtype=torch.bool).tril(diagonal=t_key - t_query)
    return lambda q, k, v: TF.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed if causal else None)


@pytest.mark.parametrize("kind", KERNELS)
@given(shapes=S.attention_shapes(max_t=6, max_d=5), causal=st.booleans(), seed=st.integers(0, 99))
def test_attention_against_torch(kind, shapes, causal, seed):
    q_shape, kv_shape = shapes
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in (q_shape, kv_shape, kv_shape))
    with kernels(kind):
        compare(lambda *ts: F.scaled_dot_product_attention(*ts, causal=causal),
                lambda *ts: TF.scaled_dot_product_attention(*ts, is_causal=causal), [q, k, v])


@pytest.mark.parametrize("kind", KERNELS)
@given(shapes=S.attention_shapes(max_t=7, max_d=5, kv_cache=True), causal=st.booleans(),
       seed=st.integers(0, 99))
def test_attention_kv_cache_offset(kind, shapes, causal, seed):
    q_shape, kv_shape = shapes
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in (q_shape, kv_shape, kv_shape))
    Tq, Tk = q_shape[-2], kv_shape[-2]
    with kernels(kind):
        out = F.scaled_dot_product_attention(q, k, v, causal=causal).numpy()
        np.testing.assert_allclose(out, attention_reference(q, k, v, causal), rtol=RTOL,
                                   atol=ATOL)
        # the last Tq rows of attention over all Tk queries are the same numbers
        q_full = np.concatenate([rng.standard_normal(q_shape[:-2] + (Tk - Tq, q_shape[-1])), q],
                                axis=-2)
        full = F.scaled_dot_product_attention(q_full, k, v, causal=causal).numpy()
        np.testing.assert_allclose(out, full[..., -Tq:, :], rtol=RTOL, atol=ATOL)
        compare(lambda *ts: F.scaled_dot_product_attention(*ts, causal=causal),
                torch_attention(causal, Tq, Tk), [q, k, v])


# ----------------------------------------------------------------------------- float32 path

FUSED32 = {
    "softmax": (lambda t: F.softmax(t, axis=-1), lambda t: torch.softmax(t, dim=-1)),
    "log_softmax": (lambda t: F.log_softmax(t, axis=1), lambda t: torch.log_softmax(t, dim=1)),
    "gelu": (F.gelu, lambda t: TF.gelu(t, approximate="tanh")),
}


@pytest.mark.parametrize("kind", KERNELS)
@pytest.mark.parametrize("name", FUSED32)
@given(data=st.data())
@settings(max_examples=15)
def test_float32_elementwise_fused_ops(kind, name, data):
    shape = data.draw(S.shapes(min_dims=2, max_dims=3, max_side=9))
    x = data.draw(S.logits(shape, large=False))
    with kernels(kind):
        compare(*FUSED32[name], [x], dtype=np.float32, rtol=RTOL32, atol=ATOL32)


@pytest.mark.parametrize("kind", KERNELS)
@given(seed=st.integers(0, 999), N=st.integers(1, 40), C=st.integers(8, 70))
@settings(max_examples=15)
def test_float32_layer_norm_linear_cross_entropy(kind, seed, N, C):
    # C >= 8 channels of standard normals: rows are never nearly constant, where layer norm's
    # gradient (a difference of terms ~1/std) would lose digits to float32 rounding
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C))
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    targets = rng.integers(0, C, size=N)
    targets[rng.random(N) < 0.2] = -100
    targets[0] = max(targets[0], 0)
    with kernels(kind):
        compare(lambda *ts: F.layer_norm(*ts), lambda t, w_, b_: TF.layer_norm(t, (C,), w_, b_),
                [x, w, b], dtype=np.float32, rtol=RTOL32, atol=ATOL32)
        compare(F.linear, TF.linear, [x, rng.standard_normal((5, C)), rng.standard_normal(5)],
                dtype=np.float32, rtol=RTOL32, atol=1e-5)
        compare(F.cross_entropy, torch_cross_entropy(), [x * 3, targets], dtype=np.float32,
                rtol=RTOL32, atol=ATOL32)


@pytest.mark.parametrize("kind", KERNELS)
@given(shapes=S.attention_shapes(max_t=12, max_d=16), causal=st.booleans(),
       seed=st.integers(0, 99))
@settings(max_examples=15)
def test_float32_attention(kind, shapes, causal, seed):
    q_shape, kv_shape = shapes
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in (q_shape, kv_shape, kv_shape))
    with kernels(kind):
        compare(lambda *ts: F.scaled_dot_product_attention(*ts, causal=causal),
                lambda *ts: TF.scaled_dot_product_attention(*ts, is_causal=causal), [q, k, v],
                dtype=np.float32, rtol=RTOL32, atol=1e-5)
