"""Bad input gets a clear error that names what was wrong: the shapes or dtypes involved."""

from __future__ import annotations

import re

import numpy as np
import pytest

import tinygpt
import tinygpt.functional as F
from tinygpt import backend


def shapes(*parts):
    """A regex that finds each shape (or other literal) in order, anywhere in a message."""
    return ".*".join(re.escape(str(p)) for p in parts)


def floats(*shape):
    return tinygpt.tensor(np.ones(shape), requires_grad=True)


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("a, b", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3), (2,)),
                                  ((5, 2, 3), (5, 4, 3))])
def test_matmul_shapes_that_do_not_line_up(a, b):
    with pytest.raises(ValueError, match=shapes("matmul", a, b)):
        floats(*a) @ floats(*b)


def test_matmul_of_a_scalar():
    with pytest.raises(ValueError, match=shapes("matmul", "()", (3,))):
        floats() @ floats(3)


@pytest.mark.parametrize("op, name", [(lambda a, b: a + b, "add"), (lambda a, b: a - b, "sub"),
                                      (lambda a, b: a * b, "mul"), (lambda a, b: a / b, "div"),
                                      (lambda a, b: a**b, "pow")])
def test_broadcasting_mismatch(op, name):
    with pytest.raises(ValueError, match=shapes(name, (2, 3), (4,), "cannot be broadcast")):
        op(floats(2, 3), floats(4))


def test_where_broadcasting_mismatch():
    with pytest.raises(ValueError, match=shapes("where", (2, 3), (2, 3), (4,))):
        tinygpt.where(np.ones((2, 3), dtype=bool), floats(2, 3), floats(4))
    with pytest.raises(ValueError, match=shapes("where", (5,), (2, 3), (2, 3))):
        tinygpt.where(np.ones(5, dtype=bool), floats(2, 3), floats(2, 3))


def test_reshape_to_wrong_size():
    with pytest.raises(ValueError, match=shapes((2, 3), "6 elements", (4, 2))):
        floats(2, 3).reshape(4, 2)


def test_concatenate_and_stack_mismatch():
    with pytest.raises(ValueError, match=shapes((2, 3), (2, 4))):
        tinygpt.concatenate([floats(2, 3), floats(2, 4)], axis=0)
    with pytest.raises(ValueError, match=shapes((2, 3), (3, 2))):
        tinygpt.stack([floats(2, 3), floats(3, 2)])


def test_split_that_does_not_divide():
    with pytest.raises(ValueError, match=shapes("size 5", "3")):
        tinygpt.split(floats(2, 5), 3, axis=1)
    with pytest.raises(ValueError, match=shapes([2, 2], "size 5")):
        tinygpt.split(floats(2, 5), [2, 2], axis=1)


# ----------------------------------------------------------------------------- cross-entropy

def test_cross_entropy_target_shape_mismatch():
    with pytest.raises(ValueError, match=shapes((4, 3, 10), (4, 3), (4,))):
        F.cross_entropy(floats(4, 3, 10), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match=shapes((4, 10), (4,), (4, 1))):
        F.cross_entropy(floats(4, 10), np.zeros((4, 1), dtype=np.int64))


@pytest.mark.parametrize("bad", [10, -1, -99])
def test_cross_entropy_target_out_of_range(bad):
    with pytest.raises(ValueError, match=shapes("[0, 10)", "ignore_index=-100", bad)):
        F.cross_entropy(floats(3, 10), np.array([1, bad, -100]))


def test_cross_entropy_float_targets():
    with pytest.raises(TypeError, match=shapes("targets must be integers", "float64")):
        F.cross_entropy(floats(3, 10), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(TypeError, match="float32"):
        F.cross_entropy(floats(3, 10), tinygpt.tensor([1.0, 2.0, 3.0]))


def test_cross_entropy_integer_logits():
    with pytest.raises(TypeError, match=shapes("logits", "int64")):
        F.cross_entropy(tinygpt.tensor([[1, 2]]), np.array([0]))


# ----------------------------------------------------------------------------- backward

def test_backward_on_non_scalar_without_gradient():
    y = floats(2, 3) * 2.0
    with pytest.raises(RuntimeError, match=shapes("scalar", (2, 3))):
        y.backward()


def test_backward_with_gradient_of_wrong_shape():
    y = floats(2, 3) * 2.0
    with pytest.raises(ValueError, match=shapes((3, 2), (2, 3))):
        y.backward(np.ones((3, 2)))


def test_backward_on_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        (tinygpt.tensor([1.0, 2.0]) * 2.0).sum().backward()


def test_item_of_many_elements():
    with pytest.raises(ValueError, match=shapes("one element", (2, 3))):
        floats(2, 3).item()


# ----------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("op, name", [
    (F.softmax, "softmax"),
    (F.log_softmax, "log_softmax"),
    (F.gelu, "gelu"),
    (lambda x: F.layer_norm(x, np.ones(3), np.zeros(3)), "layer_norm"),
    (lambda x: F.linear(x, np.ones((2, 3))), "linear"),
    (lambda x: F.scaled_dot_product_attention(x[None], x[None], x[None]),
     "scaled_dot_product_attention"),
])
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_integer_inputs_where_floats_are_needed(op, name, dtype):
    x = tinygpt.tensor(np.ones((2, 3), dtype=dtype))
    with pytest.raises(TypeError, match=shapes(name, "floating", dtype)):
        op(x)


@pytest.mark.parametrize("dtype", ["int64", "int8", "bool"])
def test_requires_grad_on_integers(dtype):
    with pytest.raises(TypeError, match=shapes("floating", dtype)):
        tinygpt.tensor(np.ones(3, dtype=dtype), requires_grad=True)


def test_tensor_from_unsupported_dtype():
    with pytest.raises(TypeError, match="complex128"):
        tinygpt.tensor(np.ones(2, dtype=complex))


def test_bad_default_dtype():
    with pytest.raises(ValueError, match="int32"):
        backend.set_default_dtype("int32")


def test_gradcheck_needs_float_tensors():
    with pytest.raises(TypeError, match=shapes("input 1", "int64")):
        tinygpt.gradcheck(lambda a, b: a * b, [floats(2), tinygpt.tensor([1, 2])])


# ----------------------------------------------------------------------------- layers

def test_layer_norm_parameter_shapes():
    with pytest.raises(ValueError, match=shapes("4 channels", "(4,)", (3,), (4,))):
        F.layer_norm(floats(2, 4), floats(3), floats(4))


def test_linear_shapes():
    with pytest.raises(ValueError, match=shapes("3 features", (5, 4), "4")):
        F.linear(floats(2, 3), floats(5, 4))
    with pytest.raises(ValueError, match=shapes((5, 3), "(5,)", (4,))):
        F.linear(floats(2, 3), floats(5, 3), floats(4))


def test_attention_shapes():
    with pytest.raises(ValueError, match=shapes((1, 2, 5, 4), (1, 2, 3, 4), (1, 2, 3, 4))):
        F.scaled_dot_product_attention(floats(1, 2, 5, 4), floats(1, 2, 3, 4),
                                       floats(1, 2, 3, 4))  # more queries than keys
    with pytest.raises(ValueError, match=shapes((1, 2, 3, 4), (1, 2, 3, 8), (1, 2, 3, 8))):
        F.scaled_dot_product_attention(floats(1, 2, 3, 4), floats(1, 2, 3, 8),
                                       floats(1, 2, 3, 8))  # head sizes differ


def test_embedding_ids():
    with pytest.raises(IndexError, match=shapes("[0, 5)", "7")):
        F.embedding(np.array([1, 7]), floats(5, 3))
    with pytest.raises(TypeError, match=shapes("integers", "float64")):
        F.embedding(np.array([1.0]), floats(5, 3))


def test_dropout_probability():
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=shapes("[0, 1)", p)):
            F.dropout(floats(3), p)


# ----------------------------------------------------------------------------- quantized models

@pytest.mark.parametrize("mode", ["int8", "bfloat16"])
@pytest.mark.parametrize("action", ["to-float64", "to-float32", "load_state_dict"])
def test_casting_or_loading_a_quantized_model_is_refused_and_changes_nothing(mode, action):
    """Before the guard, to(dtype=...) turned the int8 codes into floats without their scales
    and load_state_dict cast float weights to int8 codes: silently wrong logits."""
    cfg = tinygpt.GPTConfig(vocab_size=11, context_length=8, emb_dim=8, n_heads=2, n_layers=1,
                            drop_rate=0.0)
    tinygpt.manual_seed(0)
    float_state = tinygpt.GPTModel(cfg).state_dict()
    model = tinygpt.nn.quantize(tinygpt.GPTModel(cfg).eval(), mode)
    ids = np.array([[1, 2, 3]])
    before = model(ids).data.copy()
    with pytest.raises(RuntimeError, match=r"(to\(\)|load_state_dict) on a quantized model"):
        if action == "load_state_dict":
            model.load_state_dict(float_state)
        else:
            model.to(dtype=action.removeprefix("to-"))
    np.testing.assert_array_equal(model(ids).data, before)
