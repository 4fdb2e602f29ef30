"""``ParameterBuffer``: parameters packed into one flat array, their gradients into another.

This is llm.c's memory layout. Every parameter ``p`` is a view of its stretch of the flat
``data`` array, and owns the same stretch of the flat ``grad`` array as its *gradient slot*:
backward writes ``p``'s first gradient of a step into the slot and adds later ones in place
(``Tensor._accumulate_grad``), so ``p.grad`` is a view too. Every optimizer packs its
parameters this way when it is made (``optimizer.buffer``), so that

* the optimizer step, gradient clipping and zeroing are each one pass over one array (the
  Numba kernels of ``tinygpt.kernels.optim``), with nothing allocated per step;
* data-parallel training averages every gradient with one collective call::

      optimizer = AdamW(model.parameters())
      loss.backward()
      flat = optimizer.buffer.full_grad()       # (N,) all gradients, zeros where none
      comm.Allreduce(MPI.IN_PLACE, flat)        # mpi4py; then flat /= world size
      optimizer.step()

Parameter i lives at ``offsets[i]:offsets[i + 1]`` (in the optimizer's group order). A
parameter whose array is replaced later (``p.data = ...``, ``model.to(dtype)``) is taken
back in by ``refresh()``, which the optimizer calls before each step; gradients set from
outside (``p.grad = array``) are copied into their slots by ``gather_grads()``.
"""

from __future__ import annotations

import itertools

from tinygpt import backend


class ParameterBuffer:
    """The parameters ``params`` (one dtype, one backend) in one flat array, and their
    gradients in another; see the module docstring."""

    def __init__(self, params, data=None, grad=None):
        """``data`` and ``grad``, if given, are flat arrays of the parameters' total size to
        pack into instead of new ones (ZeRO-1 packs its pieces into a slice of the model's)."""
        self.params = list(params)
        if not self.can_pack(self.params):
            raise ValueError("ParameterBuffer needs parameters of one dtype on one backend, "
                             f"got {sorted({str(p.dtype) for p in self.params})}")
        self.offsets = [0, *itertools.accumulate(p.size for p in self.params)]
        self.generation = 0  # counts allocations: a dtype or backend change makes new arrays
        self._allocate(data, grad)

    @staticmethod
    def can_pack(params) -> bool:
        """True if ``params`` is not empty and shares one dtype and one array type."""
        return len({(p.dtype, type(p.data)) for p in params}) == 1

    def __len__(self) -> int:
        return self.offsets[-1]

    def span(self, i: int) -> tuple[int, int]:
        """(start, end) of parameter i in the flat arrays."""
        return self.offsets[i], self.offsets[i + 1]

    def _allocate(self, data=None, grad=None) -> None:
        """New flat arrays (or the given ones) in the parameters' dtype; copy each parameter
        in and point it there."""
        first = self.params[0]
        xp = backend.backend_of(first.data).xp
        # *_like keeps the parameters' array class (CuPy, or a test's stand-in for it)
        self.data = data if data is not None else xp.empty_like(first.data, shape=(len(self),))
        self.grad = grad if grad is not None else xp.zeros_like(first.data, shape=(len(self),))
        self.views, self.slots = [], []
        for i, p in enumerate(self.params):
            start, end = self.span(i)
            view = self.data[start:end].reshape(p.shape)
            slot = self.grad[start:end].reshape(p.shape)
            view[...] = p.data
            if p.grad is not None:
                slot[...] = p.grad
                p.grad = slot
            p.data, p._grad_slot = view, slot
            self.views.append(view)
            self.slots.append(slot)
        self.generation += 1

    def refresh(self) -> None:
        """Take back parameters whose ``.data`` was replaced since they were packed.

        Same dtype and backend: the new values are copied into the parameter's stretch and
        it is a view again. Otherwise (``model.to(dtype)``) everything is packed anew in the
        new dtype (``generation`` goes up, telling the optimizer to re-lay its state).
        """
        stale = [i for i, p in enumerate(self.params) if p.data is not self.views[i]]
        if not stale:
            return
        for i in stale:
            if self.params[i].shape != self.views[i].shape:
                raise ValueError(f"parameter {i} changed shape from {self.views[i].shape} to "
                                 f"{self.params[i].shape} after its optimizer was made; "
                                 "make a new optimizer")
        if not self.can_pack(self.params):
            raise ValueError("the optimizer's parameters no longer share one dtype and backend "
                             f"({sorted({str(p.dtype) for p in self.params})}); cast the whole "
                             "model with model.to(dtype=...)")
        first = self.params[0]
        if first.dtype != self.data.dtype or type(first.data) is not type(self.data):
            self._allocate()
            return
        for i in stale:
            p = self.params[i]
            self.views[i][...] = p.data
            p.data, p._grad_slot = self.views[i], self.slots[i]

    def gather_grads(self) -> list[bool]:
        """Bring every gradient into its slot; returns, per parameter, whether it has one.

        A gradient set from outside (``p.grad = array``) is copied in, so that ``p.grad`` is
        a view again; the array it was is left untouched.
        """
        has_grad = []
        for i, p in enumerate(self.params):
            slot = self.slots[i]
            if p.grad is not None and p.grad is not slot:
                if p.grad.shape != p.shape:
                    raise ValueError(f"parameter {i} has shape {p.shape} but its gradient has "
                                     f"shape {p.grad.shape}")
                slot[...] = p.grad
                p.grad = slot
            p._grad_slot = slot
            has_grad.append(p.grad is not None)
        return has_grad

    def full_grad(self):
        """The flat gradient array (N,), complete: a parameter that got no gradient this step
        gets zeros (and ``.grad`` = that zero view). Ready for one collective call or a norm."""
        for slot, p, has in zip(self.slots, self.params, self.gather_grads()):
            if not has:
                slot.fill(0)
                p.grad = slot
        return self.grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``.grad = None``; the next backward writes its slot), or
        zero them in place (``set_to_none=False``; parameters without one stay None)."""
        for slot, p in zip(self.slots, self.params):
            p._slot_lent = False  # in case a failed backward left it handed out
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                slot.fill(0)
                p.grad = slot
