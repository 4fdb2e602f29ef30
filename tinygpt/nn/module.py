"""``Module`` and ``Parameter``: the bookkeeping every layer shares.

A module finds its parameters and sub-modules by looking at its own attributes, in the order
they were set, so ``self.W_query = Linear(...)`` is all it takes to register one. Names join
with dots (``trf_blocks.0.att.W_query.weight``), exactly as PyTorch names them, which is what
lets a state dict move between tinygpt and the book's PyTorch model unchanged.

``load_state_dict`` and ``to`` write into the parameters' existing arrays where they can, so
a parameter that is a view into an optimizer's flat buffer (``tinygpt.optim.ParameterBuffer``)
stays one.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy

from tinygpt import backend
from tinygpt.tensor import Tensor, enter_scope, exit_scope


class Parameter(Tensor):
    """A tensor that a module owns and an optimizer updates (requires grad by default)."""

    def __init__(self, data, requires_grad=True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class of every layer: parameters, state dicts, train/eval mode."""

    training = True

    def __call__(self, *args, **kwargs):
        # Ops created inside forward remember this module (tinygpt.viz groups a graph by it).
        outer = enter_scope(self)
        try:
            return self.forward(*args, **kwargs)
        finally:
            exit_scope(outer)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # ------------------------------------------------------------------ tree walking

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def _named_tensors(self, prefix=""):
        """Every Parameter under this module with its dotted name, shared ones repeated."""
        for name, value in vars(self).items():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(value, Parameter):
                yield full, value
            elif isinstance(value, Module):
                yield from value._named_tensors(full)

    def named_parameters(self):
        """(name, Parameter) pairs; a parameter shared by two layers is listed once."""
        seen = set()
        for name, p in self._named_tensors():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable_only=False) -> int:
        """Count of distinct parameter elements (tied weights counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def zero_grad(self):
        """Forget every gradient (``.grad = None``); slots in a flat buffer are kept."""
        for p in self.parameters():
            p.grad = None

    # ------------------------------------------------------------------ modes

    def train(self, mode=True):
        """Training mode: dropout active. Returns self so calls can chain."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, flag=True):
        """Freeze (False) or unfreeze every parameter; frozen ones drop their gradient slot."""
        for p in self.parameters():
            p.requires_grad = flag
            if not flag:
                p.grad = p._grad_slot = None
        return self

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Name -> backend array, one entry per name (tied weights appear under both)."""
        return {name: p.data for name, p in self._named_tensors()}

    def _refuse_if_quantized(self, action: str) -> None:
        """Quantized weights (``tinygpt.nn.quantize``) are int8 or bfloat16 arrays read with
        their scales: casting, moving or overwriting them as plain arrays would silently
        give wrong numbers, so ``to`` and ``load_state_dict`` stop here instead."""
        if any(getattr(p, "inference_only", False) for p in self.parameters()):
            raise RuntimeError(
                f"{action} on a quantized model: its int8/bfloat16 weights cannot be cast, "
                "moved or overwritten; do it on the float model, then quantize")

    def load_state_dict(self, state: dict, strict=True):
        """Copy arrays into the parameters; strict mode lists every mismatch in one error."""
        self._refuse_if_quantized("load_state_dict")
        own = dict(self._named_tensors())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [f"{k}: expected {own[k].shape}, got {tuple(state[k].shape)}"
                       for k in own if k in state and tuple(state[k].shape) != own[k].shape]
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if wrong_shape:
            problems.append("wrong shapes: " + "; ".join(wrong_shape))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + " | ".join(problems))
        for name, p in own.items():
            if name in state:
                _copy_into(p, state[name])
        return self

    def to(self, device=None, dtype=None):
        """Move every parameter to backend ``device`` and/or cast to ``dtype``, in place.

        A parameter that changes gets a new array and loses its gradient and gradient slot;
        an optimizer's ``ParameterBuffer`` packs it again (in the new dtype) before its next
        step.
        """
        self._refuse_if_quantized("to()")
        for p in self.parameters():
            data = p.data if device is None else backend.move(p.data, device)
            data = data if dtype is None else data.astype(dtype, copy=False)
            if data is not p.data:
                p.data, p.grad, p._grad_slot = data, None, None
        return self

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, child in self.named_children():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + ")" if len(lines) > 1 else f"{type(self).__name__}()"


@contextmanager
def evaluating(model: Module):
    """Run the block with ``model`` in eval mode (dropout off), then put back the mode it had.

        with evaluating(model), no_grad():
            loss = loss_fn(model(x), y)

    Evaluation inside a training loop must not leave the model in eval mode, and a model
    that was already in eval mode (say, generating text) must stay there."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _copy_into(p: Tensor, array) -> None:
    """Write ``array`` (NumPy, CuPy or array-like, shape already checked) into ``p.data``.

    Written in place and cast to ``p``'s dtype, so a parameter that is a view into a flat
    ``ParameterBuffer`` stays one; a parameter that is not on the active backend gets a new
    array there instead (as loading always did).
    """
    target = backend.active().name
    if backend.is_array(array):
        array = backend.move(array, target)
    else:
        array = backend.xp().asarray(numpy.asarray(array))
    if p.device == target:
        p.data[...] = array
    else:
        p.data = array.astype(p.dtype, copy=True)


class Sequential(Module):
    """Layers applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __iter__(self):
        return (m for _, m in self.named_children())

    def __getitem__(self, i):
        return getattr(self, str(i % len(self)))

    def __len__(self):
        return sum(1 for _ in self.named_children())

    def forward(self, x):
        for layer in self:
            x = layer(x)
        return x

