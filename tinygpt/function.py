"""``Function``: the public way to add your own differentiable op to the graph.

Subclass it with two static methods over plain arrays, as PyTorch's
``torch.autograd.Function``::

    class Square(tinygpt.Function):
        @staticmethod
        def forward(ctx, x):            # arrays in, one array out
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        def backward(ctx, grad):        # grad = dLoss/dout, same shape as out
            (x,) = ctx.saved_tensors
            return 2 * x * grad         # one gradient per forward input

    y = Square.apply(t)                 # a Tensor in the graph; y.sum().backward() works

``apply`` does what every built-in op in ``tensor.py`` does by hand: it unwraps tensors to
arrays, runs ``forward``, records the inputs as the result's parents and attaches a backward
that calls yours. It also checks what your backward returns, because a wrong gradient count
or shape would otherwise surface far away (or not at all): both are errors naming the op.

Rules, the same as for built-in ops:

* inputs may be Tensors, arrays or Python numbers; numbers take the dtype of the first
  floating-point Tensor input, so ``MyOp.apply(x_float32, 2.0)`` stays float32;
* keyword arguments go to ``forward`` unchanged (not differentiated: eps, axis, ...);
* ``backward`` returns one gradient per positional input (a tuple when there are several),
  ``None`` for an input that needs no gradient (an integer index, a constant);
* a gradient may have the input's own shape, or the broadcast shape of the output when the
  input was broadcast in ``forward``: the engine sums it back, as for ``a + b``;
* a gradient is cast to its input's dtype, so float32 parameters keep float32 gradients.
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt.tensor import Tensor, _is_float, _same_backend, _unbroadcast


class Context:
    """What ``forward`` hands to ``backward``: saved arrays and any attributes you set.

    ``needs_input_grad[i]`` says whether input i needs a gradient, so a backward can skip
    work (return None) for constants.
    """

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self.saved_tensors = ()

    def save_for_backward(self, *arrays):
        """Keep ``arrays`` for backward (read them back as ``ctx.saved_tensors``)."""
        self.saved_tensors = arrays


class Function:
    """Base class of a custom op: define static ``forward`` and ``backward``, call ``apply``."""

    @staticmethod
    def forward(ctx, *arrays, **kwargs):
        raise NotImplementedError("a Function subclass must define a static forward(ctx, ...)")

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("a Function subclass must define a static backward(ctx, grad)")

    @classmethod
    def apply(cls, *inputs, **kwargs) -> Tensor:
        """Run ``forward`` on the inputs' arrays and return the result as a graph Tensor."""
        name = cls.__name__
        tensors = _as_tensors(inputs, name)
        ctx = Context(tuple(t.requires_grad for t in tensors))
        data = cls.forward(ctx, *(t.data for t in tensors), **kwargs)
        if isinstance(data, Tensor) or not (backend.is_array(data) or numpy.isscalar(data)):
            raise TypeError(f"{name}.forward must return one array, got {type(data).__name__}")
        out = Tensor._make(data, tensors, name)
        out._set_backward(lambda grad: _checked_backward(cls, ctx, grad, tensors, out.shape))
        return out


def _as_tensors(inputs, name):
    """Tensors as they are; arrays and numbers as constants, with the built-in ops' dtypes."""
    if not inputs:
        raise TypeError(f"{name}.apply needs at least one input")
    anchor = next((x for x in inputs if isinstance(x, Tensor) and _is_float(x.dtype)), None)
    tensors = []
    for x in inputs:
        if isinstance(x, Tensor):
            tensors.append(x)
        elif anchor is not None:
            tensors.append(anchor._other(x))  # numbers take the anchor's dtype, as in a + 2.0
        else:
            tensors.append(Tensor(x))
    _same_backend(tensors, name)
    return tuple(tensors)


def _checked_backward(cls, ctx, grad, inputs, out_shape):
    """Call the user's backward and check it: one gradient per input, each of a usable shape."""
    name = cls.__name__
    grads = cls.backward(ctx, grad)
    if not isinstance(grads, (tuple, list)):
        grads = (grads,)
    if len(grads) != len(inputs):
        raise RuntimeError(
            f"{name}.backward returned {len(grads)} gradient(s), but forward took "
            f"{len(inputs)} input(s); return one per input (None where none is needed)")
    return tuple(_checked_grad(name, i, g, x, out_shape) for i, (g, x) in
                 enumerate(zip(grads, inputs)))


def _checked_grad(name, index, grad, x, out_shape):
    """One gradient, cast to the input's dtype and summed over broadcast dimensions."""
    if grad is None:
        return None
    grad = backend.xp().asarray(grad)
    if grad.shape != x.shape:
        broadcast = _broadcasts_to(x.shape, out_shape) and grad.shape == tuple(out_shape)
        if not broadcast:
            raise ValueError(
                f"{name}.backward: the gradient for input {index} has shape {grad.shape}, but "
                f"that input has shape {x.shape} (the output has shape {tuple(out_shape)})")
        grad = _unbroadcast(grad, x.shape)
    if not x.requires_grad:
        return None  # a constant: its gradient is checked above, then dropped
    return grad.astype(x.dtype, copy=False)


def _broadcasts_to(shape, target) -> bool:
    """True when an array of ``shape`` broadcasts to ``target`` unchanged in rank order."""
    try:
        return numpy.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False
