"""Tensor and reverse-mode automatic differentiation.

A ``Tensor`` wraps one backend array (``.data``). Every operation on tensors that need
gradients records, in the result, the tensors it was computed from (``_parents``) and a
``_backward`` function that turns the gradient of the result into gradients of those parents.
``loss.backward()`` then walks that graph once, from the loss back to the leaves.

Each op below is written micrograd-style: the forward computes ``out``, and right beside it a
small ``backward(g)`` returns one gradient per parent, where ``g`` is dLoss/dout. The engine in
``Tensor.backward`` does the bookkeeping that every op would otherwise repeat:

* it visits nodes in reverse topological order, found with an explicit stack (no recursion,
  so a 48-layer GPT does not hit Python's recursion limit);
* it sums gradients for a tensor used more than once;
* it reduces a gradient over the dimensions that broadcasting stretched (``_unbroadcast``);
* it keeps gradients of intermediate tensors only while they are needed and stores
  ``.grad`` on leaves (tensors made by the user with ``requires_grad=True``), accumulating
  across calls as PyTorch does: call ``zero_grad()`` (or set ``.grad = None``) between steps;
* it frees the graph after use (unless ``retain_graph=True``), so a second ``backward()``
  through the same graph is a clear error instead of a silent double count.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers

import numpy

from tinygpt import backend, kernels

_grad_enabled = True

# Two hooks for the learner tools, each one global read per op when unused:
# the innermost Module call as a (module, outer scope) chain, which every op records so that
# tinygpt.viz can group a graph by module; and the active tinygpt.profile() recorder.
_scope = None
_profiler = None


def enter_scope(module):
    """Record that ops created from now on run inside ``module`` (Module.__call__ calls this);
    returns the outer scope, to restore with ``exit_scope``."""
    global _scope
    outer, _scope = _scope, (module, _scope)
    return outer


def exit_scope(outer) -> None:
    global _scope
    _scope = outer


def set_profiler(recorder):
    """Make ``recorder`` (or None) receive every op (tinygpt.profile() calls this); returns
    the one it replaces."""
    global _profiler
    previous, _profiler = _profiler, recorder
    return previous


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded: for evaluation and weight updates."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


def manual_seed(seed: int) -> None:
    """Seed every random draw (initialisation, dropout, sampling) for reproducible runs."""
    backend.manual_seed(seed)


def _is_float(dtype) -> bool:
    return numpy.issubdtype(dtype, numpy.floating)


def _require_float(x, op: str, name: str = "input") -> None:
    if not _is_float(x.dtype):
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {x.dtype}")


def _as_array(data, dtype=None):
    """Turn ``data`` into an array of the active backend (floats default to float32)."""
    xp = backend.xp()
    if isinstance(data, Tensor):
        data = data.data
    if backend.is_array(data):
        array = backend.move(data, backend.active().name)  # a no-op when already there
    else:
        array = xp.asarray(data)
    if dtype is not None:
        return array.astype(dtype, copy=False)
    if _is_float(array.dtype) and array.dtype != backend.default_dtype():
        if not isinstance(data, backend.active().array_type):
            array = array.astype(backend.default_dtype())  # Python floats and lists
    elif array.dtype == numpy.bool_ or numpy.issubdtype(array.dtype, numpy.integer):
        pass
    elif not _is_float(array.dtype):
        raise TypeError(f"cannot make a tensor from data of dtype {array.dtype}")
    return array


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes broadcasting added or stretched, so it has ``shape``.

    If x of shape (3, 1) was added to y of shape (2, 3, 4), the result is (2, 3, 4); each
    element of x was used 2*4 times, so its gradient is the sum over those uses.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _is_basic_index(index) -> bool:
    """True for ints, slices, None and Ellipsis only: no element can be picked twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, slice)) or i is None or i is Ellipsis for i in parts)


def _broadcast_shape(a, b, op):
    try:
        return numpy.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {a.shape} and {b.shape} cannot be broadcast together"
        ) from None


def _graph_freed(g):
    """The backward of a node whose graph a backward() pass has already freed."""
    raise RuntimeError("backward() through a graph that was already freed; call the first "
                       "backward(retain_graph=True) to backpropagate twice")


def accepts_dim(function):
    """Let ``function`` take PyTorch's ``dim=`` (the book's spelling) as well as NumPy's
    ``axis=``: they name the same thing, so ``x.sum(dim=0)`` is ``x.sum(axis=0)``."""

    @functools.wraps(function)
    def with_dim(*args, dim=None, **kwargs):
        if dim is not None:
            if kwargs.get("axis") is not None:
                raise TypeError(f"{function.__name__}: give axis= or dim=, not both")
            kwargs["axis"] = dim
        return function(*args, **kwargs)

    return with_dim


class Size(int):
    """A tensor's element count (NumPy's ``a.size``, an int) that can also be called as
    PyTorch's ``x.size()`` (the shape) and ``x.size(dim)`` (one dimension's length), so
    both the NumPy and the book's spelling work."""

    def __new__(cls, shape):
        size = super().__new__(cls, math.prod(shape))
        size.shape = tuple(shape)
        return size

    def __call__(self, dim=None):
        return self.shape if dim is None else self.shape[dim]


class Tensor:
    """An array with an optional gradient and the graph edges that produced it."""

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_op", "_scope",
                 "_grad_slot", "_slot_lent", "__weakref__")
    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None, _parents=(), _op=""):
        self.data = _as_array(data, dtype)
        if requires_grad and not _is_float(self.data.dtype):
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}"
            )
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._parents = _parents
        self._backward = None
        self._op, self._scope = _op, None

    # ------------------------------------------------------------------ basic properties

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self) -> Size:
        return Size(self.shape)

    @property
    def device(self) -> str:
        """Name of the backend the data lives on: 'numpy' or 'cupy'."""
        return backend.backend_of(self.data).name

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self.numpy()!r}{grad})"

    def numpy(self):
        """The data as a NumPy array (copied off the GPU when on CuPy)."""
        return backend.move(self.data, "numpy") if self.device != "numpy" else self.data

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self) -> Tensor:
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, name: str) -> Tensor:
        """A copy on backend ``name`` ('numpy' or 'cupy'); a leaf, like PyTorch's .to()."""
        out = Tensor.__new__(Tensor)
        out.data = backend.move(self.data, name)
        out.requires_grad, out.grad, out._parents, out._backward, out._op, out._scope = (
            self.requires_grad, None, (), None, "", None)
        return out

    def astype(self, dtype) -> Tensor:
        out = self._make(self.data.astype(dtype), (self,), "astype")
        out._set_backward(lambda g: (g.astype(self.dtype),))
        return out

    def float(self) -> Tensor:
        return self.astype(backend.default_dtype())

    # ------------------------------------------------------------------ graph building

    @staticmethod
    def _make(data, parents, op) -> Tensor:
        """The result of an op: it joins the graph if grad is on and a parent needs grad."""
        if not backend.is_array(data):  # not just the active backend's: x.to("cupy").T
            data = backend.xp().asarray(data)  # NumPy reductions return scalars, not arrays
        out = Tensor.__new__(Tensor)
        out.data, out.grad, out._backward, out._op, out._scope = data, None, None, op, _scope
        track = _grad_enabled and any(p.requires_grad for p in parents)
        out.requires_grad = track
        out._parents = parents if track else ()
        if _profiler is not None:
            _profiler.record_forward(op, data)
        return out

    def _set_backward(self, fn) -> None:
        """Attach ``fn(g) -> grads per parent``; skipped when no graph is recorded."""
        if self.requires_grad and self._parents:
            self._backward = fn

    # ------------------------------------------------------------------ backward

    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Backpropagate from this tensor; leaves get ``.grad`` (accumulated)."""
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input had "
                "requires_grad=True, or it was computed under no_grad()"
            )
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, got shape {self.shape}; "
                    "pass gradient= with that shape, or reduce first (e.g. .sum())"
                )
            gradient = backend.xp().ones_like(self.data)
        else:
            gradient = _as_array(gradient, self.dtype)
            if gradient.shape != self.shape:
                raise ValueError(
                    f"backward(): gradient shape {gradient.shape} != tensor shape {self.shape}"
                )

        grads = {id(self): gradient}
        order = self._topological_order()
        for node in order:  # a pass that stopped half-way (an error, Ctrl-C) may have left a
            if getattr(node, "_slot_lent", False):  # gradient slot marked as lent: not now
                node._slot_lent = False
        while order:
            node = order.pop()  # popped, so a processed node can be freed (see below)
            g = grads.pop(id(node), None)
            if g is None:  # every use returned None (a Function's "no gradient"): skip
                continue
            if not node._parents and node._backward is None:
                node._accumulate_grad(g)  # a leaf: keep the gradient, summed over calls
                continue
            if node._backward is None:
                raise RuntimeError(
                    "backward() through a graph that was already freed; call the first "
                    "backward(retain_graph=True) to backpropagate twice"
                )
            parent_grads = node._backward(g)
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                pg = _unbroadcast(pg, parent.shape)
                key = id(parent)
                if key not in grads:
                    grads[key] = pg
                elif grads[key] is getattr(parent, "_grad_slot", None):
                    grads[key] += pg  # the leaf's own gradient slot: sum in place
                else:
                    grads[key] = grads[key] + pg
            if _profiler is not None:
                _profiler.record_backward(node._op, parent_grads)
            if not retain_graph:
                # Free as we go: the backward closure (and the arrays it saved) and the edges
                # to the parents, so activations are released during the pass, not after it.
                node._backward, node._parents = _graph_freed, ()

    def _accumulate_grad(self, g) -> None:
        """Add ``g`` to this leaf's ``.grad`` (the first one of a step is just stored).

        A leaf may own a *gradient slot* (``_grad_slot``): its stretch of a flat gradient
        array preallocated by ``tinygpt.optim.ParameterBuffer``. Then the first gradient is
        written into the slot (or already is: see ``grad_destination``) and later ones are
        added to it in place, so ``.grad`` stays a view of that array and no gradient memory
        is allocated per step. Without a slot (or when ``.grad`` was set to some other
        array), a new array is made, as before.
        """
        slot = getattr(self, "_grad_slot", None)  # unset for most tensors
        self._slot_lent = False
        if slot is None or (self.grad is not None and self.grad is not slot):
            self.grad = g if self.grad is None else self.grad + g
        elif self.grad is None:
            if g is not slot:
                slot[...] = g
            self.grad = slot
        else:
            slot += g

    def grad_destination(self, dtype):
        """The array an op's backward may write this leaf's whole gradient into, or None.

        That is the leaf's empty gradient slot (see ``_accumulate_grad``), handed out at most
        once per backward pass: a weight used twice in one graph gets its second gradient in
        a new array, and the engine sums the two into the slot. Writing straight into the
        slot (``matmul(..., out=...)``) saves allocating the gradient and copying it over.
        """
        slot = getattr(self, "_grad_slot", None)
        if (slot is None or not self.requires_grad or self.grad is not None
                or getattr(self, "_slot_lent", False) or slot.dtype != dtype):
            return None
        self._slot_lent = True
        return slot

    def grad_accumulator(self, dtype):
        """The array that already holds this leaf's gradient, into which an op's backward
        may *add* its own gradient in place (then returning None for this leaf), or None.

        That is the gradient slot once it holds a gradient: lent earlier in this backward
        pass (a tied weight: the output head wrote it) or kept as ``.grad`` from an earlier
        pass (micro-batches). An embedding's gradient touches only the rows of the batch's
        tokens, so adding those rows in place replaces a table-sized array of zeros, a
        table-sized sum and a copy (for GPT-2's 50257 x 768 table, ~150 MB each).
        """
        slot = getattr(self, "_grad_slot", None)
        if slot is None or not self.requires_grad or slot.dtype != dtype:
            return None
        if getattr(self, "_slot_lent", False) or self.grad is slot:
            return slot
        return None

    def _topological_order(self):
        """Nodes that need grad, each before every node that uses it (iterative DFS);
        the list ends with ``self``."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, children_done = stack.pop()
            if children_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        return order

    def zero_grad(self) -> None:
        self.grad = None

    # ------------------------------------------------------------------ element-wise ops

    def _other(self, other) -> Tensor:
        """Wrap a Python number or array as a constant of this tensor's dtype."""
        if isinstance(other, Tensor):
            if type(other.data) is not type(self.data):  # noqa: E721 - exact class check
                raise TypeError(
                    f"tensors on different backends ({self.device!r} and {other.device!r}) "
                    "cannot meet in one op; move one with .to()"
                )
            return other
        if isinstance(other, numbers.Number):
            dtype = self.dtype if _is_float(self.dtype) else None
            return Tensor(backend.xp().asarray(other, dtype=dtype))
        return Tensor(other)

    def _binary(self, other, forward, backward_fn, op):
        other = self._other(other)
        _broadcast_shape(self, other, op)
        out = Tensor._make(forward(self.data, other.data), (self, other), op)
        out._set_backward(lambda g: backward_fn(g, self.data, other.data, out.data))
        return out

    def __add__(self, other):
        return self._binary(other, lambda a, b: a + b, lambda g, a, b, o: (g, g), "add")

    def __sub__(self, other):
        return self._binary(other, lambda a, b: a - b, lambda g, a, b, o: (g, -g), "sub")

    def __mul__(self, other):
        return self._binary(other, lambda a, b: a * b, lambda g, a, b, o: (g * b, g * a), "mul")

    def __truediv__(self, other):
        # d(a/b)/da = 1/b,  d(a/b)/db = -a/b^2 = -out/b
        return self._binary(
            other, lambda a, b: a / b, lambda g, a, b, o: (g / b, -g * o / b), "div"
        )

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor):
            # d(a^b)/da = b a^(b-1),  d(a^b)/db = a^b log(a)
            xp = backend.xp()
            return self._binary(
                exponent,
                lambda a, b: a**b,
                lambda g, a, b, o: (g * b * a ** (b - 1), g * o * xp.log(a)),
                "pow",
            )
        if not isinstance(exponent, numbers.Number):
            raise TypeError(f"exponent must be a number or Tensor, got {type(exponent).__name__}")
        out = Tensor._make(self.data**exponent, (self,), "pow")
        out._set_backward(lambda g: (g * exponent * self.data ** (exponent - 1),))
        return out

    def __radd__(self, other):
        return self._other(other) + self

    def __rsub__(self, other):
        return self._other(other) - self

    def __rmul__(self, other):
        return self._other(other) * self

    def __rtruediv__(self, other):
        return self._other(other) / self

    def __rpow__(self, other):
        return self._other(other) ** self

    def __neg__(self):
        out = Tensor._make(-self.data, (self,), "neg")
        out._set_backward(lambda g: (-g,))
        return out

    def exp(self):
        out = Tensor._make(backend.xp().exp(self.data), (self,), "exp")
        out._set_backward(lambda g: (g * out.data,))  # d e^x = e^x
        return out

    def log(self):
        out = Tensor._make(backend.xp().log(self.data), (self,), "log")
        out._set_backward(lambda g: (g / self.data,))
        return out

    def sqrt(self):
        out = Tensor._make(backend.xp().sqrt(self.data), (self,), "sqrt")
        out._set_backward(lambda g: (g * 0.5 / out.data,))  # d sqrt(x) = 1 / (2 sqrt(x))
        return out

    def tanh(self):
        out = Tensor._make(backend.xp().tanh(self.data), (self,), "tanh")
        out._set_backward(lambda g: (g * (1 - out.data * out.data),))  # 1 - tanh^2
        return out

    def relu(self):
        out = Tensor._make(backend.xp().maximum(self.data, 0), (self,), "relu")
        out._set_backward(lambda g: (g * (self.data > 0),))
        return out

    def abs(self):
        out = Tensor._make(backend.xp().abs(self.data), (self,), "abs")
        out._set_backward(lambda g: (g * backend.xp().sign(self.data),))
        return out

    # comparisons give constant boolean tensors (no gradient flows through them)
    def __lt__(self, other):
        return Tensor(self.data < self._other(other).data)

    def __le__(self, other):
        return Tensor(self.data <= self._other(other).data)

    def __gt__(self, other):
        return Tensor(self.data > self._other(other).data)

    def __ge__(self, other):
        return Tensor(self.data >= self._other(other).data)

    # ------------------------------------------------------------------ matmul

    def __matmul__(self, other):
        """Matrix product with NumPy's rules: batched, broadcast over leading dimensions.

        For out = a @ b (shapes (..., n, k) @ (..., k, m)), dL/da = g @ b^T and
        dL/db = a^T @ g; the engine then sums over broadcast batch dimensions.
        """
        other = self._other(other)
        a, b = self.data, other.data
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError(f"matmul needs tensors with at least 1 dimension, got "
                             f"shapes {a.shape} and {b.shape}")
        if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
            raise ValueError(
                f"matmul: shapes {a.shape} and {b.shape} do not line up: the last dimension "
                f"of the first ({a.shape[-1]}) must equal the "
                f"{'second-to-last' if b.ndim > 1 else 'only'} dimension of the second"
            )
        out = Tensor._make(a @ b, (self, other), "matmul")

        def backward(g):
            xp = backend.xp()
            # Promote 1-D operands to matrices, as matmul itself does, then undo it.
            a2 = a[None, :] if a.ndim == 1 else a
            b2 = b[:, None] if b.ndim == 1 else b
            g2 = g
            if b.ndim == 1:  # first: for vector @ vector, g is 0-d and has no axis -2 yet
                g2 = xp.expand_dims(g2, -1)
            if a.ndim == 1:
                g2 = xp.expand_dims(g2, -2)
            ga = g2 @ xp.swapaxes(b2, -1, -2)
            gb = xp.swapaxes(a2, -1, -2) @ g2
            if a.ndim == 1:
                ga = ga.reshape(ga.shape[:-2] + ga.shape[-1:])
            if b.ndim == 1:
                gb = gb.reshape(gb.shape[:-1])
            return ga, gb

        out._set_backward(backward)
        return out

    def __rmatmul__(self, other):
        return self._other(other) @ self

    # ------------------------------------------------------------------ reductions

    @accepts_dim
    def sum(self, axis=None, keepdims=False):
        out = Tensor._make(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum")

        def backward(g):  # every input element contributed once: spread g back over them
            if not keepdims and axis is not None:
                g = backend.xp().expand_dims(g, axis)
            return (backend.xp().broadcast_to(g, self.shape),)

        out._set_backward(backward)
        return out

    def _count(self, axis) -> int:
        """How many elements each result of a reduction over ``axis`` combines."""
        if axis is None:
            return self.size
        axes = (axis,) if isinstance(axis, int) else axis
        return int(numpy.prod([self.shape[a] for a in axes]))

    @accepts_dim
    def mean(self, axis=None, keepdims=False):
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / self._count(axis))

    @accepts_dim
    def var(self, axis=None, keepdims=False, correction=0):
        """Variance (biased by default, correction=0, as LayerNorm uses)."""
        centered = self - self.mean(axis=axis, keepdims=True)
        n = self._count(axis)
        return (centered * centered).sum(axis=axis, keepdims=keepdims) * (1.0 / (n - correction))

    @accepts_dim
    def max(self, axis=None, keepdims=False):
        """Maximum; the gradient goes to the maximal elements (split evenly on ties)."""
        xp = backend.xp()
        m = self.data.max(axis=axis, keepdims=True)
        out_data = m if keepdims else (m.reshape(()) if axis is None else xp.squeeze(m, axis))
        out = Tensor._make(out_data, (self,), "max")

        def backward(g):
            if not keepdims:
                g = g.reshape(m.shape)
            is_max = self.data == m
            ties = is_max.sum(axis=axis, keepdims=True).astype(g.dtype)  # int would promote
            return (g * is_max / ties,)

        out._set_backward(backward)
        return out

    @accepts_dim
    def argmax(self, axis=None):
        return Tensor(self.data.argmax(axis=axis))

    # ------------------------------------------------------------------ shape ops

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        try:
            data = self.data.reshape(shape)
        except ValueError:
            raise ValueError(f"cannot reshape tensor of shape {self.shape} "
                             f"({self.size} elements) into {tuple(shape)}") from None
        out = Tensor._make(data, (self,), "reshape")
        out._set_backward(lambda g: (g.reshape(self.shape),))
        return out

    view = reshape

    def flatten(self, start_dim=0, end_dim=-1):
        """Merge dimensions ``start_dim`` to ``end_dim`` into one, as PyTorch's flatten:
        ``logits.flatten(0, 1)`` turns (B, T, V) into (B*T, V)."""
        ndim = max(self.ndim, 1)
        start, end = start_dim % ndim, end_dim % ndim
        return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1:])

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        inverse = tuple(numpy.argsort(axes))
        out = Tensor._make(self.data.transpose(axes), (self,), "permute")
        out._set_backward(lambda g: (g.transpose(inverse),))
        return out

    def transpose(self, dim0=-2, dim1=-1):
        """Swap two dimensions (the last two by default)."""
        axes = list(range(self.ndim))
        axes[dim0], axes[dim1] = axes[dim1], axes[dim0]
        return self.permute(axes)

    @property
    def T(self):
        return self.permute(tuple(reversed(range(self.ndim))))

    @accepts_dim
    def unsqueeze(self, axis):
        return self.reshape(backend.xp().expand_dims(self.data, axis).shape)

    @accepts_dim
    def squeeze(self, axis=None):
        return self.reshape(backend.xp().squeeze(self.data, axis).shape)

    def __getitem__(self, index):
        """Indexing with ints, slices, None, masks and integer arrays.

        Backward scatters g into a zero array of the input's shape. With integer arrays one
        element can be picked several times, so the scatter must *add* (``add.at``), not
        assign.
        """
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        out = Tensor._make(self.data[index], (self,), "getitem")

        def backward(g):
            xp = backend.xp()
            grad = xp.zeros_like(self.data)
            if _is_basic_index(index):
                grad[index] = g  # slices pick each element at most once
            else:
                xp.add.at(grad, index, g)
            return (grad,)

        out._set_backward(backward)
        return out

    def masked_fill(self, mask, value):
        """Elements where ``mask`` is True become ``value`` (and get no gradient)."""
        mask = mask.data if isinstance(mask, Tensor) else mask
        out = Tensor._make(backend.xp().where(mask, value, self.data).astype(self.dtype),
                           (self,), "masked_fill")
        out._set_backward(lambda g: (backend.xp().where(mask, 0, g),))
        return out

    def split(self, sections, axis=-1):
        return split(self, sections, axis)

    # Method forms of the two ops most often chained in model code (defined below).
    @accepts_dim
    def softmax(self, axis=-1):
        return softmax(self, axis=axis)

    @accepts_dim
    def log_softmax(self, axis=-1):
        return log_softmax(self, axis=axis)


# --------------------------------------------------------------------- softmax
#
# Softmax and log-softmax are fused ops like those of functional.py (which re-exports them),
# but they live here because Tensor.softmax needs them and functional.py imports this
# module: defining them in functional.py would make the two modules import each other.

def _along_axis(fn, axis, *arrays):
    """Run a last-axis array function along ``axis``: move that axis last, then back."""
    if axis in (-1, arrays[0].ndim - 1):
        return fn(*arrays)
    xp = backend.xp()
    moved = [xp.moveaxis(a, axis, -1) for a in arrays]
    return xp.moveaxis(fn(*moved), -1, axis)


@accepts_dim
def softmax(x, axis=-1) -> Tensor:
    """Softmax along ``axis``; backward: dx = y * (dy - sum(dy * y))."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    _require_float(x, "softmax")
    K = kernels.impl()
    out = Tensor._make(_along_axis(K.softmax_forward, axis, x.data), (x,), "softmax")
    out._set_backward(lambda g: (_along_axis(K.softmax_backward, axis, out.data, g),))
    return out


@accepts_dim
def log_softmax(x, axis=-1) -> Tensor:
    """log(softmax(x)) computed stably; backward: dx = dy - softmax(x) * sum(dy)."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    _require_float(x, "log_softmax")
    K = kernels.impl()
    out = Tensor._make(_along_axis(K.log_softmax_forward, axis, x.data), (x,), "log_softmax")
    out._set_backward(lambda g: (_along_axis(K.log_softmax_backward, axis, out.data, g),))
    return out


# --------------------------------------------------------------------- free functions

def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Make a tensor on the active backend (floats default to float32)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _same_backend(tensors, op):
    kinds = {type(t.data) for t in tensors}
    if len(kinds) > 1:
        names = sorted({t.device for t in tensors})
        raise TypeError(f"{op}: tensors on different backends {names}; move them with .to()")


@accepts_dim
def concatenate(tensors, axis=0) -> Tensor:
    """Join tensors along an existing axis; backward slices g back into pieces."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    _same_backend(tensors, "concatenate")
    xp = backend.xp()
    try:
        data = xp.concatenate([t.data for t in tensors], axis=axis)
    except ValueError:
        raise ValueError(f"concatenate along axis {axis}: shapes "
                         f"{[t.shape for t in tensors]} do not match") from None
    out = Tensor._make(data, tuple(tensors), "concatenate")
    cuts = numpy.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()
    out._set_backward(lambda g: tuple(xp.split(g, cuts, axis=axis)))
    return out


cat = concatenate


@accepts_dim
def stack(tensors, axis=0) -> Tensor:
    """Join tensors along a new axis."""
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    _same_backend(tensors, "stack")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"stack needs tensors of one shape, got {sorted(shapes)}")
    return concatenate([t.unsqueeze(axis) for t in tensors], axis=axis)


@accepts_dim
def split(x: Tensor, sections, axis=-1):
    """Split into pieces: ``sections`` is a count of equal pieces or a list of sizes."""
    size = x.shape[axis]
    if isinstance(sections, int):
        if size % sections:
            raise ValueError(f"split: axis of size {size} is not divisible into {sections}")
        sizes = [size // sections] * sections
    else:
        sizes = list(sections)
        if sum(sizes) != size:
            raise ValueError(f"split: sizes {sizes} do not add up to the axis size {size}")
    pieces, start = [], 0
    axis = axis % x.ndim
    for n in sizes:
        index = (slice(None),) * axis + (slice(start, start + n),)
        pieces.append(x[index])
        start += n
    return pieces


def where(condition, a, b) -> Tensor:
    """Element-wise ``a if condition else b``; each side gets g where it was chosen."""
    condition = condition.data if isinstance(condition, Tensor) else condition
    a = a if isinstance(a, Tensor) else Tensor(a)
    b = a._other(b)
    shapes = (getattr(condition, "shape", ()), a.shape, b.shape)
    try:
        numpy.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError("where: condition, a and b of shapes {}, {} and {} cannot be broadcast "
                         "together".format(*shapes)) from None
    xp = backend.xp()
    out = Tensor._make(xp.where(condition, a.data, b.data), (a, b), "where")
    out._set_backward(lambda g: (xp.where(condition, g, 0), xp.where(condition, 0, g)))
    return out


def zeros(*shape, dtype=None, requires_grad=False) -> Tensor:
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(backend.xp().zeros(shape, dtype=dtype or backend.default_dtype()),
                  requires_grad=requires_grad)


def ones(*shape, dtype=None, requires_grad=False) -> Tensor:
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(backend.xp().ones(shape, dtype=dtype or backend.default_dtype()),
                  requires_grad=requires_grad)


def randn(*shape, dtype=None, requires_grad=False) -> Tensor:
    """Standard normal samples from the seeded generator (see ``manual_seed``)."""
    shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    data = backend.generator().standard_normal(shape).astype(dtype or backend.default_dtype())
    return Tensor(data, requires_grad=requires_grad)


def arange(*args, dtype=None) -> Tensor:
    return Tensor(backend.xp().arange(*args, dtype=dtype))
