"""tinygpt.Function: a custom op's values and gradients against finite differences and
PyTorch, and the checks apply() makes on what a backward returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_backend import FakeArray, fake_cupy  # noqa: F401 - fake_cupy: the fixture

import tinygpt
import tinygpt.testing as S
from tinygpt import Function, GradcheckError, Tensor, gradcheck, viz
from tinygpt.profiler import profile


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class Gate(Function):
    """out = a * sigmoid(b): SwiGLU's gate, with a and b broadcast against each other."""

    @staticmethod
    def forward(ctx, a, b):
        s = sigmoid(b)
        ctx.save_for_backward(a, s)
        return a * s

    @staticmethod
    def backward(ctx, grad):
        a, s = ctx.saved_tensors
        # d/da = s; d/db = a * s * (1 - s). Both have the output's (broadcast) shape.
        return grad * s, grad * a * s * (1.0 - s)


class WrongSignGate(Gate):
    @staticmethod
    def backward(ctx, grad):
        a, s = ctx.saved_tensors
        return grad * s, -grad * a * s * (1.0 - s)  # planted sign error


class Scale(Function):
    """out = x * factor, with factor a keyword argument (not differentiated)."""

    @staticmethod
    def forward(ctx, x, factor=1.0):
        ctx.factor = factor
        return x * factor

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor


class Gather(Function):
    """out = x[..., index]: the integer index gets no gradient (None)."""

    @staticmethod
    def forward(ctx, x, index):
        ctx.save_for_backward(index)
        ctx.shape = x.shape
        return x[..., index]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        dx = np.zeros(ctx.shape, dtype=grad.dtype)
        np.add.at(dx, (..., index), grad)
        return dx, None


@given(data=st.data())
def test_custom_op_gradients_match_finite_differences(data):
    shape_a, shape_b = data.draw(S.broadcastable_shapes())
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    assert gradcheck(Gate.apply, [Tensor(a), Tensor(b)])


@given(data=st.data())
def test_custom_op_values_and_gradients_match_pytorch(data):
    shape_a, shape_b = data.draw(S.broadcastable_shapes())
    a, b = data.draw(S.arrays(shape_a)), data.draw(S.arrays(shape_b))
    out_shape = np.broadcast_shapes(shape_a, shape_b)
    v = data.draw(S.arrays(out_shape))  # the upstream gradient

    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    out = Gate.apply(ta, tb)
    (out * Tensor(v)).sum().backward()

    pa, pb = (torch.tensor(x, requires_grad=True) for x in (a, b))
    pout = pa * torch.sigmoid(pb)
    (pout * torch.tensor(v)).sum().backward()

    np.testing.assert_allclose(out.data, pout.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ta.grad, pa.grad.numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tb.grad, pb.grad.numpy(), rtol=1e-12, atol=1e-14)
    assert ta.grad.shape == shape_a and tb.grad.shape == shape_b


def test_gradcheck_catches_a_wrong_backward():
    a, b = np.random.default_rng(0).standard_normal((2, 3, 4))
    assert gradcheck(Gate.apply, [Tensor(a), Tensor(b)])
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(WrongSignGate.apply, [Tensor(a), Tensor(b)])


def test_result_is_in_the_graph_and_named_after_the_op():
    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    y = Scale.apply(x, factor=3.0)
    assert isinstance(y, Tensor) and y.requires_grad and y._op == "Scale"
    (y * y).sum().backward()
    np.testing.assert_allclose(x.grad, 2 * 9.0 * np.array([1.0, 2.0]))  # d(9x^2)/dx


def test_keyword_arguments_reach_forward():
    y = Scale.apply(tinygpt.tensor([1.0, -2.0]), factor=0.5)
    np.testing.assert_array_equal(y.data, [0.5, -1.0])


def test_none_gradient_for_an_integer_input():
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    index = np.array([2, 0, 2])
    Gather.apply(x, index).sum().backward()
    np.testing.assert_array_equal(x.grad, [[1, 0, 2], [1, 0, 2]])


def test_none_gradient_for_a_float_input_leaves_it_without_grad():
    class OnlyFirst(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a * 2.0 + b

        @staticmethod
        def backward(ctx, grad):
            return grad * 2.0, None

    a = tinygpt.tensor([1.0, 2.0], requires_grad=True)
    b = tinygpt.tensor([3.0, 4.0], requires_grad=True)
    OnlyFirst.apply(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0, 2.0])
    assert b.grad is None


def test_needs_input_grad_tells_backward_what_to_skip():
    seen = {}

    class Record(Function):
        @staticmethod
        def forward(ctx, a, b):
            seen["needs"] = ctx.needs_input_grad
            return a + b

        @staticmethod
        def backward(ctx, grad):
            return grad, None

    Record.apply(tinygpt.tensor([1.0], requires_grad=True), tinygpt.tensor([2.0]))
    assert seen["needs"] == (True, False)


def test_wrong_number_of_gradients_is_an_error_naming_the_op():
    class TooFew(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a * b

        @staticmethod
        def backward(ctx, grad):
            return grad  # one gradient for two inputs

    y = TooFew.apply(tinygpt.tensor([1.0], requires_grad=True), tinygpt.tensor([2.0]))
    with pytest.raises(RuntimeError, match=r"TooFew.backward returned 1 gradient\(s\), but "
                                           r"forward took 2 input\(s\)"):
        y.sum().backward()


def test_wrong_gradient_shape_is_an_error_naming_the_op():
    class BadShape(Function):
        @staticmethod
        def forward(ctx, x):
            return x.sum(axis=-1)

        @staticmethod
        def backward(ctx, grad):
            return grad  # shape (2,), should be broadcast back to (2, 3)

    y = BadShape.apply(tinygpt.tensor(np.ones((2, 3)), requires_grad=True))
    with pytest.raises(ValueError, match=r"BadShape.backward: the gradient for input 0 has "
                                         r"shape \(2,\), but that input has shape \(2, 3\)"):
        y.sum().backward()


def test_forward_must_return_one_array():
    class TwoOutputs(Function):
        @staticmethod
        def forward(ctx, x):
            return x, x

    with pytest.raises(TypeError, match="TwoOutputs.forward must return one array, got tuple"):
        TwoOutputs.apply(tinygpt.tensor([1.0]))


def test_dtypes_follow_the_built_in_ops():
    """A Python number takes the tensor's float32; the gradient comes back as float32 even
    when the backward computes in float64."""
    class AddTimesTwo(Function):
        @staticmethod
        def forward(ctx, a, b):
            return a + b

        @staticmethod
        def backward(ctx, grad):
            return grad.astype(np.float64) * 2.0, None

    x = tinygpt.tensor([1.0, 2.0], requires_grad=True)  # float32
    y = AddTimesTwo.apply(x, 0.5)
    assert y.dtype == np.float32 == (x + 0.5).dtype
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])


def test_no_graph_under_no_grad():
    x = tinygpt.tensor([1.0], requires_grad=True)
    with tinygpt.no_grad():
        y = Scale.apply(x, factor=2.0)
    assert not y.requires_grad and y._backward is None


class DeviceGate(Gate):
    """Gate written for any backend: arrays come from backend.xp() (NumPy or CuPy); the
    backward is Gate's, which uses no array module."""

    @staticmethod
    def forward(ctx, a, b):
        s = 1.0 / (1.0 + tinygpt.backend.xp().exp(-b))
        ctx.save_for_backward(a, s)
        return a * s


@pytest.mark.usefixtures("fake_cupy")
def test_a_function_runs_on_the_cupy_backend():
    """On the strict fake CuPy (tests/test_backend.py) the op's arrays, its output and the
    gradients (summed over the broadcast dimension by apply) stay on the device, and equal
    the NumPy run; the profiler and the graph drawing work on both."""
    a, b = np.random.default_rng(1).standard_normal((2, 3, 4))
    results = {}
    for name in ("numpy", "cupy"):
        tinygpt.backend.set_backend(name)
        ta = tinygpt.tensor(a, dtype="float64", requires_grad=True)
        tb = tinygpt.tensor(b[:1], dtype="float64", requires_grad=True)  # (1, 4): broadcast
        with profile() as prof:
            out = DeviceGate.apply(ta, tb)
            (out * out).sum().backward(retain_graph=True)
        assert {row.op: row.forward_bytes for row in prof.rows()}["DeviceGate"] == 12 * 8
        assert "DeviceGate\\n(3, 4)" in viz.to_dot(out, grads=True)
        results[name] = [tinygpt.backend.move(t, "numpy") for t in (out.data, ta.grad, tb.grad)]
        if name == "cupy":
            assert all(type(t) is FakeArray for t in (out.data, ta.grad, tb.grad))
    assert results["cupy"][2].shape == (1, 4)
    for ours, reference in zip(results["cupy"], results["numpy"]):
        np.testing.assert_array_equal(ours, reference)
