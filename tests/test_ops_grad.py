"""Every op's backward against float64 finite differences (tinygpt.gradcheck), driven by
hypothesis over shapes and values; then the autograd engine's own rules (accumulation,
freed graphs, deep graphs, broadcasting, no_grad, detach, dtypes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygpt
import tinygpt.functional as F
import tinygpt.testing as S
from tinygpt import Tensor, backend, gradcheck, kernels


def check(fn, *arrays, **kwargs):
    """gradcheck ``fn`` on float64 tensors made from ``arrays``."""
    assert gradcheck(fn, [Tensor(np.asarray(a, dtype=np.float64)) for a in arrays], **kwargs)


# ----------------------------------------------------------------------------- element-wise

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_ops_broadcast(name, data):
    shape_a, shape_b = data.draw(S.broadcastable_shapes())
    a = data.draw(S.arrays(shape_a))
    b = data.draw(S.nonzero_arrays(shape_b) if name == "div" else S.arrays(shape_b))
    check(BINARY[name], a, b)


@given(data=st.data(), c=S.floats(0.5, 2.0))
def test_python_number_operands(data, c):
    """Numbers on either side of an operator are constants; reflected operators work."""
    x = data.draw(S.positive_arrays(data.draw(S.shapes())))
    check(lambda t: t + c, x)
    check(lambda t: c - t, x)
    check(lambda t: t * c, x)
    check(lambda t: c / t, x)
    check(lambda t: t / c, x)
    check(lambda t: c**t, x)


@pytest.mark.parametrize("name", S.UNARY_OPS)
@given(data=st.data())
def test_unary_ops(name, data):
    fn, values = S.UNARY_OPS[name]
    check(fn, data.draw(values(data.draw(S.shapes()))))


@given(data=st.data(), exponent=st.sampled_from([0, 1, 2, 3, 0.5, -1, -1.5, 2.7]))
def test_pow_scalar_exponent(data, exponent):
    x = data.draw(S.positive_arrays(data.draw(S.shapes())))
    check(lambda t: t**exponent, x)


@given(data=st.data(), exponent=st.sampled_from([2, 3]))
def test_pow_integer_exponent_negative_base(data, exponent):
    x = data.draw(S.arrays(data.draw(S.shapes())))
    check(lambda t: t**exponent, x)


@given(data=st.data())
def test_pow_tensor_exponent_broadcast(data):
    shape_a, shape_b = data.draw(S.broadcastable_shapes())
    base = data.draw(S.positive_arrays(shape_a, 0.3, 2.5))
    exponent = data.draw(S.arrays(shape_b, min_value=-2.0, max_value=2.0))
    check(lambda a, b: a**b, base, exponent)


# ----------------------------------------------------------------------------- matmul

@given(data=st.data())
def test_matmul_batched_broadcast_and_vectors(data):
    shape_a, shape_b = data.draw(S.matmul_shapes())
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    check(lambda x, y: x @ y, a, b)


# ----------------------------------------------------------------------------- reductions

@given(data=st.data(), keepdims=st.booleans())
def test_sum_and_mean(data, keepdims):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.arrays(shape))
    check(lambda t: t.sum(axis=axis, keepdims=keepdims), x)
    check(lambda t: t.mean(axis=axis, keepdims=keepdims), x)


@given(data=st.data(), keepdims=st.booleans())
def test_sum_over_zero_dim_tensor(data, keepdims):
    x = data.draw(S.arrays(()))
    check(lambda t: t.sum(keepdims=keepdims) * 3.0, x)


@given(data=st.data(), keepdims=st.booleans(), correction=st.sampled_from([0, 1]))
def test_var(data, keepdims, correction):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.arrays(shape))
    n = x.size if axis is None else np.prod([shape[a] for a in np.atleast_1d(axis)])
    if n - correction <= 0:
        correction = 0
    check(lambda t: t.var(axis=axis, keepdims=keepdims, correction=correction), x)


@given(data=st.data(), keepdims=st.booleans())
def test_max_without_ties(data, keepdims):
    shape, axis = data.draw(S.shape_and_axis())
    x = data.draw(S.distinct_arrays(shape))
    check(lambda t: t.max(axis=axis, keepdims=keepdims), x)


def test_max_splits_gradient_evenly_between_ties():
    x = tinygpt.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, -1.0]], requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


# ----------------------------------------------------------------------------- shapes

@st.composite
def reshape_targets(draw):
    shape = draw(S.shapes(min_dims=1))
    size = int(np.prod(shape))
    options = [(size,), (1, size), (size, 1), tuple(reversed(shape)), (-1,), shape + (1,),
               (1,) + shape, (-1, shape[-1])]
    return shape, draw(st.sampled_from(options))


@given(data=st.data())
def test_reshape(data):
    shape, target = data.draw(reshape_targets())
    x = data.draw(S.arrays(shape))
    check(lambda t: t.reshape(target), x)
    check(lambda t: t.reshape(*target), x)


@given(data=st.data())
def test_permute_transpose_and_T(data):
    shape = data.draw(S.shapes(min_dims=2))
    axes = tuple(data.draw(st.permutations(range(len(shape)))))
    dim0, dim1 = (data.draw(st.integers(-len(shape), len(shape) - 1)) for _ in range(2))
    x = data.draw(S.arrays(shape))
    check(lambda t: t.permute(axes), x)
    check(lambda t: t.permute(*axes), x)
    check(lambda t: t.transpose(dim0, dim1), x)
    check(lambda t: t.transpose(), x)
    check(lambda t: t.T, x)


@given(data=st.data())
def test_unsqueeze_squeeze(data):
    shape = data.draw(S.shapes(min_dims=1))
    x = data.draw(S.arrays(shape))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda t: t.unsqueeze(axis).squeeze(axis), x)
    check(lambda t: t.unsqueeze(axis) * 2.0, x)


# ----------------------------------------------------------------------------- indexing

@given(data=st.data())
def test_getitem_basic(data):
    shape = data.draw(S.shapes(min_dims=1))
    index = data.draw(S.basic_index(shape))
    x = data.draw(S.arrays(shape))
    check(lambda t: t[index], x)
    np.testing.assert_array_equal(Tensor(x)[index].numpy(), x[index])


@given(data=st.data())
def test_getitem_integer_arrays_with_repeats(data):
    """An element picked k times gets k contributions: backward must scatter-*add*."""
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    n = shape[0]
    rows = data.draw(hnp.arrays(np.int64, data.draw(S.shapes(min_dims=1, max_dims=2)),
                                elements=st.integers(-n, n - 1)))
    x = data.draw(S.arrays(shape))
    check(lambda t: t[rows], x)
    np.testing.assert_array_equal(Tensor(x)[rows].numpy(), x[rows])
    if len(shape) >= 2:
        m = shape[1]
        cols = data.draw(hnp.arrays(np.int64, rows.shape, elements=st.integers(0, m - 1)))
        check(lambda t: t[rows, cols], x)  # pairs of indices (points)
        check(lambda t: t[:, cols], x)  # an integer array after a slice
        check(lambda t: t[Tensor(rows)], x)  # an index given as a Tensor


@given(data=st.data())
def test_getitem_boolean_mask(data):
    shape = data.draw(S.shapes(min_dims=1))
    mask = data.draw(hnp.arrays(np.bool_, shape))
    x = data.draw(S.arrays(shape))
    check(lambda t: t[mask], x)


def test_getitem_repeated_index_accumulates():
    x = tinygpt.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[np.array([0, 2, 0, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- joining

@st.composite
def concat_inputs(draw):
    base = draw(S.shapes(min_dims=1, max_dims=3, max_side=3))
    axis = draw(st.integers(-len(base), len(base) - 1))
    count = draw(st.integers(1, 3))
    arrays = []
    for _ in range(count):
        shape = list(base)
        shape[axis] = draw(st.integers(1, 3))
        arrays.append(draw(S.arrays(tuple(shape))))
    return arrays, axis


@given(inputs=concat_inputs())
def test_concatenate(inputs):
    arrays, axis = inputs
    check(lambda *ts: tinygpt.concatenate(list(ts), axis=axis), *arrays)
    out = tinygpt.cat([Tensor(a) for a in arrays], axis=axis)
    np.testing.assert_array_equal(out.numpy(), np.concatenate(arrays, axis=axis))


@given(data=st.data())
def test_stack(data):
    shape = data.draw(S.shapes(min_dims=0, max_dims=2, max_side=3))
    count = data.draw(st.integers(1, 3))
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    arrays = [data.draw(S.arrays(shape)) for _ in range(count)]
    check(lambda *ts: tinygpt.stack(list(ts), axis=axis), *arrays)
    out = tinygpt.stack([Tensor(a) for a in arrays], axis=axis)
    np.testing.assert_array_equal(out.numpy(), np.stack(arrays, axis=axis))


@given(data=st.data())
def test_split(data):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    size = shape[axis]
    if data.draw(st.booleans()):
        sections = data.draw(st.sampled_from([d for d in range(1, size + 1) if size % d == 0]))
        cuts = np.cumsum([size // sections] * sections)[:-1]
    else:
        cut_points = sorted(data.draw(st.lists(st.integers(0, size), max_size=3)))
        sizes = np.diff([0, *cut_points, size]).tolist()
        sections, cuts = sizes, np.cumsum(sizes)[:-1]
    x = data.draw(S.arrays(shape))

    def joined(t):
        pieces = tinygpt.split(t, sections, axis=axis)
        return tinygpt.concatenate([p.reshape(-1) * (i + 1.0) for i, p in enumerate(pieces)])

    check(joined, x)
    for piece, expected in zip(Tensor(x).split(sections, axis=axis), np.split(x, cuts, axis)):
        np.testing.assert_array_equal(piece.numpy(), expected)


@given(data=st.data())
def test_where(data):
    shape_c, shape_a, shape_b = data.draw(S.broadcastable_shapes(num_shapes=3))
    condition = data.draw(hnp.arrays(np.bool_, shape_c))
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    check(lambda x, y: tinygpt.where(condition, x, y), a, b)
    check(lambda x: tinygpt.where(Tensor(condition), x, 0.5), a)


@given(data=st.data(), value=st.sampled_from([0.0, -5.0, 2.5, -1e9]))
def test_masked_fill(data, value):
    shape = data.draw(S.shapes(min_dims=1))
    mask_shape = data.draw(hnp.broadcastable_shapes(shape, min_side=1))
    mask = data.draw(hnp.arrays(np.bool_, mask_shape))
    x = data.draw(S.arrays(shape))
    # a huge fill value would drown the finite differences of the objective sum(v * out)
    check(lambda t: t.masked_fill(mask, value if abs(value) < 10 else 0.0), x)
    np.testing.assert_array_equal(Tensor(x).masked_fill(Tensor(mask), value).numpy(),
                                  np.where(mask, value, x))


@given(data=st.data())
def test_masked_fill_minus_inf_then_softmax(data):
    """The attention pattern: -inf where masked, softmax gives those positions 0."""
    shape = data.draw(S.shapes(min_dims=1))
    mask = data.draw(hnp.arrays(np.bool_, shape))
    mask[..., 0] = False  # every row keeps one position
    x = data.draw(S.arrays(shape))
    check(lambda t: F.softmax(t.masked_fill(mask, -np.inf), axis=-1), x)


# ----------------------------------------------------------------------------- fused ops

@given(data=st.data())
def test_softmax_any_axis(data):
    shape, axis = data.draw(S.shape_and_axis(allow_none=False, allow_tuple=False))
    x = data.draw(S.logits(shape))
    check(lambda t: F.softmax(t, axis=axis), x)
    np.testing.assert_array_equal(Tensor(x).softmax(axis).numpy(), F.softmax(x, axis).numpy())


@given(data=st.data())
def test_log_softmax_any_axis(data):
    shape, axis = data.draw(S.shape_and_axis(allow_none=False, allow_tuple=False))
    x = data.draw(S.logits(shape))
    check(lambda t: F.log_softmax(t, axis=axis), x)
    np.testing.assert_array_equal(Tensor(x).log_softmax(axis).numpy(),
                                  F.log_softmax(x, axis).numpy())


@given(problem=S.classification())
def test_cross_entropy_with_ignore_index(problem):
    logits, targets = problem
    check(lambda t: F.cross_entropy(t, targets), logits)
    assert F.cross_entropy(logits, Tensor(targets)).item() == F.cross_entropy(logits,
                                                                             targets).item()


@given(data=st.data())
@settings(max_examples=10)
def test_cross_entropy_custom_ignore_index(data):
    logits = data.draw(S.logits((5, 4), large=False))
    targets = data.draw(S.targets((5,), 4, ignore_index=2))
    check(lambda t: F.cross_entropy(t, targets, ignore_index=2), logits)


def test_cross_entropy_ignored_rows_get_zero_gradient():
    logits = tinygpt.tensor(np.random.default_rng(1).standard_normal((4, 3)), requires_grad=True)
    targets = np.array([1, -100, 2, -100])
    F.cross_entropy(logits, targets).backward()
    np.testing.assert_array_equal(logits.grad[[1, 3]], 0.0)
    assert np.abs(logits.grad[[0, 2]]).min() > 0


@given(data=st.data())
def test_gelu(data):
    x = data.draw(S.arrays(data.draw(S.shapes()), min_value=-5.0, max_value=5.0))
    check(F.gelu, x)


@given(data=st.data())
def test_layer_norm(data):
    shape = data.draw(S.shapes(min_dims=1, max_dims=3))
    C = shape[-1]
    x = data.draw(S.arrays(shape))
    weight, bias = data.draw(S.arrays((C,))), data.draw(S.arrays((C,)))
    check(F.layer_norm, x, weight, bias)  # other eps values: see test_ops_torch


@given(data=st.data(), with_bias=st.booleans())
def test_linear(data, with_bias):
    lead = data.draw(S.shapes(min_dims=0, max_dims=2, max_side=3))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(S.arrays(lead + (n_in,)))
    weight = data.draw(S.arrays((n_out, n_in)))
    if with_bias:
        check(F.linear, x, weight, data.draw(S.arrays((n_out,))))
    else:
        check(F.linear, x, weight)


@given(data=st.data())
def test_embedding_with_repeated_ids(data):
    num, dim = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    ids = data.draw(hnp.arrays(np.int64, data.draw(S.shapes(min_dims=1, max_dims=2)),
                               elements=st.integers(0, num - 1)))
    weight = data.draw(S.arrays((num, dim)))
    check(lambda w: F.embedding(ids, w), weight)
    check(lambda w: F.embedding(Tensor(ids), w), weight)
    np.testing.assert_array_equal(F.embedding(ids, Tensor(weight)).numpy(), weight[ids])


@given(data=st.data(), causal=st.booleans(), kv_cache=st.booleans())
@settings(max_examples=15)
def test_attention_elementwise_small(data, causal, kv_cache):
    q_shape, kv_shape = data.draw(S.attention_shapes(max_t=3, max_d=2, kv_cache=kv_cache))
    q, k, v = (data.draw(S.arrays(s)) for s in (q_shape, kv_shape, kv_shape))
    check(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal), q, k, v)


@given(data=st.data(), causal=st.booleans(), kv_cache=st.booleans(), seed=st.integers(0, 99))
def test_attention_directional_bigger(data, causal, kv_cache, seed):
    B, H = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    Tk = data.draw(st.integers(2, 16))
    Tq = data.draw(st.integers(1, Tk - 1)) if kv_cache else Tk
    D = data.draw(st.integers(1, 16))
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal(s) for s in ((B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)))
    check(lambda a, b, c: F.scaled_dot_product_attention(a, b, c, causal=causal), q, k, v,
          directional=True, seed=seed)


def test_attention_with_dropout_gradcheck():
    """With dropout the mask must be the same in every call: reseed before each one."""
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 4, 3)) for _ in range(3))

    def attend(a, b, c):
        tinygpt.manual_seed(7)
        return F.scaled_dot_product_attention(a, b, c, dropout_p=0.3, training=True)

    check(attend, q, k, v)


# ----------------------------------------------------------------------------- dropout

def test_dropout_eval_is_identity():
    x = tinygpt.tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0, training=True) is x


@given(p=st.sampled_from([0.1, 0.5, 0.9]), seed=st.integers(0, 2**31))
def test_dropout_train_mask_scaling_and_gradient(p, seed):
    x_np = np.random.default_rng(seed).uniform(1.0, 2.0, size=(6, 7))
    tinygpt.manual_seed(seed)
    x = tinygpt.tensor(x_np, requires_grad=True)
    out = F.dropout(x, p, training=True)
    kept = out.numpy() != 0
    np.testing.assert_allclose(out.numpy()[kept], x_np[kept] / (1 - p), rtol=1e-15)
    out.sum().backward()
    np.testing.assert_allclose(x.grad, kept / (1 - p), rtol=1e-15)  # gradient = the mask

    tinygpt.manual_seed(seed)  # the same seed gives the same mask
    again = F.dropout(tinygpt.tensor(x_np), p, training=True)
    np.testing.assert_array_equal(again.numpy(), out.numpy())


def test_dropout_drops_about_p():
    tinygpt.manual_seed(0)
    out = F.dropout(tinygpt.ones(200, 100), 0.3, training=True).numpy()
    assert abs((out == 0).mean() - 0.3) < 0.02
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.7)}


def test_dropout_gradcheck_with_fixed_seed():
    def drop(t):
        tinygpt.manual_seed(11)
        return F.dropout(t, 0.4, training=True)

    check(drop, np.random.default_rng(0).standard_normal((3, 5)))


# ----------------------------------------------------------------------------- the engine

def test_tensor_used_twice_accumulates():
    x = tinygpt.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, -4.0, 6.0])
    y = tinygpt.tensor([1.0, -2.0, 3.0], requires_grad=True)
    (y + y).sum().backward()
    np.testing.assert_array_equal(y.grad, [2.0, 2.0, 2.0])


def test_diamond_graph():
    x = tinygpt.tensor(2.0, requires_grad=True)
    a, b = x * 3.0, x.exp()
    (a * b).backward()  # d/dx (3x e^x) = 3 e^x (1 + x)
    np.testing.assert_allclose(x.grad, 3 * np.exp(2.0) * 3, rtol=1e-6)


def test_grads_accumulate_across_backward_calls_like_pytorch():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    (x * 2.0).sum().backward()
    (x * 2.0).sum().backward()  # a fresh graph: adds to .grad
    np.testing.assert_array_equal(x.grad, [4.0, 4.0])
    x.zero_grad()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_second_backward_through_freed_graph_raises():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()


def test_retain_graph_allows_second_backward():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    loss = (x * x).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    np.testing.assert_array_equal(x.grad, [4.0, 8.0])  # 2 * 2x


def test_deep_chain_has_no_recursion_error():
    x = tinygpt.tensor(1.0, dtype="float64", requires_grad=True)
    y = x
    for _ in range(3000):
        y = y * 1.0001 + 0.0
    y.backward()
    np.testing.assert_allclose(x.grad, 1.0001**3000, rtol=1e-12)


def test_deep_chain_of_mixed_ops():
    x = tinygpt.tensor(0.5, dtype="float64", requires_grad=True)
    y = x
    for _ in range(1500):
        y = (y.tanh() * 0.5 + y * 0.5).reshape(1).sum()
    y.backward()
    assert np.isfinite(x.grad) and 0 < x.grad < 1


def test_broadcasting_reduces_gradient():
    a = tinygpt.tensor(np.ones((3, 1)), requires_grad=True)
    b = tinygpt.tensor(np.ones((2, 3, 4)), requires_grad=True)
    (a + b).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (2, 3, 4)
    np.testing.assert_array_equal(a.grad, np.full((3, 1), 8.0))
    np.testing.assert_array_equal(b.grad, np.ones((2, 3, 4)))


def test_backward_with_explicit_gradient():
    x = tinygpt.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    (x * 2.0).backward(np.array([[1.0, 0.0, -1.0]]))
    np.testing.assert_array_equal(x.grad, [[2.0, 0.0, -2.0]])


def test_no_grad_records_nothing():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    with tinygpt.no_grad():
        assert not tinygpt.is_grad_enabled()
        y = (x * 2.0).exp().sum()
        z = F.softmax(x)
    assert tinygpt.is_grad_enabled()
    assert not y.requires_grad and y._parents == () and y._backward is None
    assert not z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()
    assert x.grad is None


def test_detach_cuts_the_graph():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), x.numpy())
    (x * d).sum().backward()  # d is a constant: grad is d, not 2x
    np.testing.assert_array_equal(x.grad, [1.0, 2.0])


def test_constant_inputs_get_no_grad():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    c = tinygpt.tensor([3.0, 4.0])
    (x * c).sum().backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="int64"):
        tinygpt.tensor([1, 2, 3], requires_grad=True)


def test_float32_default_float64_on_request():
    assert tinygpt.tensor([1.0, 2.0]).dtype == np.float32
    assert tinygpt.tensor(1.5).dtype == np.float32
    assert tinygpt.tensor([1, 2]).dtype == np.int64
    assert tinygpt.tensor([1.0], dtype="float64").dtype == np.float64
    assert tinygpt.tensor(np.zeros(2)).dtype == np.float64  # an array keeps its dtype
    assert tinygpt.zeros(2, 3).dtype == np.float32 and tinygpt.randn(2).dtype == np.float32
    x = tinygpt.tensor([1.0], dtype="float64", requires_grad=True)
    assert (x * 2.0).dtype == np.float64  # Python numbers do not change the dtype
    backend.set_default_dtype("float64")
    assert tinygpt.tensor([1.0]).dtype == np.float64
    assert tinygpt.ones(2).dtype == np.float64


def test_item_and_numpy():
    x = tinygpt.tensor([[2.5]], dtype="float64")
    assert x.item() == 2.5 and isinstance(x.item(), float)
    assert tinygpt.tensor(3).item() == 3
    y = tinygpt.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert isinstance(y.numpy(), np.ndarray)
    np.testing.assert_array_equal(y.numpy(), [[1.0, 2.0], [3.0, 4.0]])
    assert y.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert y.shape == (2, 2) and y.ndim == 2 and y.size == 4 and len(y) == 2
    assert y.device == "numpy"


# ----------------------------------------------------------------------------- float32 stays

def _f32(*shape):
    return tinygpt.tensor(np.random.default_rng(len(shape)).standard_normal(shape)
                          .astype(np.float32), requires_grad=True)


FLOAT32_CASES = {
    "arithmetic": lambda x: ((x + 1.0) * 2.0 - x / 3.0) ** 2 + 2.0**x + 1.0 / (x.abs() + 1.0),
    "unary": lambda x: x.exp() + x.tanh() + (x * x + 1.0).log() + (x * x + 1.0).sqrt(),
    "reductions": lambda x: x.sum(axis=0) + x.mean(axis=-1, keepdims=True) + x.max(axis=0)
    + x.var(axis=(0, 1), keepdims=True),
    "shapes": lambda x: x.reshape(-1)[np.array([0, 0, 5])].sum() + x.T[1:, ::2].sum()
    + tinygpt.stack([x, x], axis=1).sum() + tinygpt.split(x, 2, axis=1)[1].sum(),
    "where": lambda x: tinygpt.where(x > 0, x, -x) + x.masked_fill(x < 0, 0.0),
    "matmul": lambda x: x @ x.T @ x[:, 0],
    "softmax": lambda x: F.softmax(x, axis=0) + F.log_softmax(x, axis=-1),
    "cross_entropy": lambda x: F.cross_entropy(x, np.array([1, -100, 3])),
    "gelu": F.gelu,
    "layer_norm": lambda x: F.layer_norm(x, x[0], x[1]),
    "linear": lambda x: F.linear(x, x[:2], x[2, :2]),
    "embedding": lambda x: F.embedding(np.array([[0, 2, 2]]), x),
    "dropout": lambda x: F.dropout(x, 0.3, training=True),
    "attention": lambda x: F.scaled_dot_product_attention(x[None], x[None], x[None]),
}


@pytest.mark.parametrize("kind", ["numba", "reference"])
@pytest.mark.parametrize("name", FLOAT32_CASES)
def test_float32_in_float32_out_and_grads(name, kind):
    """No op promotes float32 to float64, forward or backward (a gradient that silently
    turns float64 doubles memory and slows every later step)."""
    if kind == "reference":
        kernels.use("reference")  # conftest switches back after the test
    x = _f32(3, 4)
    out = FLOAT32_CASES[name](x)
    assert out.dtype == np.float32
    out.sum().backward()
    assert x.grad.dtype == np.float32 and x.grad.shape == x.shape
