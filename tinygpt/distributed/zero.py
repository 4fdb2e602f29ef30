"""``ZeroAdamW``: AdamW with its moments sharded over the ranks (ZeRO stage 1).

Replicated data parallelism keeps a full copy of AdamW's two moments on every rank: with P
parameters, 8P bytes of float32 state per rank. ZeRO stage 1 (Rajbhandari et al., 2020;
llm.c's ``zero_stage 1``) gives each rank one slice of the flat parameter vector and keeps
moments for that slice only (8P/N bytes). One step:

    flat gradient --reduce-scatter--> this rank's slice of the summed gradient
    clip: global norm = sqrt(sum over ranks of |slice|^2)
    AdamW on this rank's slice of the parameters (an ordinary optim.AdamW)
    flat parameters --all-gather--> every rank has every updated parameter

A reduce-scatter plus an all-gather moves as many bytes as the one all-reduce of the
replicated path, so sharding saves memory at no extra communication.

The model's parameters and gradients live in one flat array each (``optim.ParameterBuffer``,
the layout the collectives work on). This rank's slice is a contiguous range of it, so it
may cut a parameter in two; each piece of a parameter inside the slice is a small tensor
viewing it, and an ordinary ``AdamW``, packed into that slice (no copy), updates the pieces
in place (each keeps the weight decay of its parameter's group); the all-gather then
completes the flat parameter array on every rank.

Checkpoints hold the same optimizer state dict as one process: ``state_dict()`` gathers the
pieces into whole moments on rank 0, and ``load_state_dict()`` cuts a whole state dict into
this rank's pieces, so a run saved with N ranks resumes with M.
"""

from __future__ import annotations

import math

from tinygpt import backend
from tinygpt.distributed.comm import SingleProcess, shard_bounds
from tinygpt.optim import AdamW, ParameterBuffer
from tinygpt.tensor import Tensor

MOMENTS = ("exp_avg", "exp_avg_sq")


class ZeroAdamW:
    """AdamW over ``groups`` (as ``param_groups_for_weight_decay`` makes them) whose state is
    split over the ranks of ``comm``; ``options`` are AdamW's (lr, betas, eps, ...)."""

    shards_state = True  # tells DataParallel.step that this optimizer communicates itself

    def __init__(self, groups, comm: SingleProcess, **options):
        if options.get("amsgrad"):
            raise ValueError("ZeroAdamW shards exp_avg and exp_avg_sq only; amsgrad is not "
                             "supported")
        self.comm, self.groups = comm, [dict(g) for g in groups]
        # the model's parameters and gradients become views of one flat array each
        self.buffer = ParameterBuffer(p for g in self.groups for p in g["params"])
        self.bounds = shard_bounds(len(self.buffer), comm.size)
        self.steps = 0
        self.pieces = []  # (parameter index, start, end) in the flat vector, in our slice
        self.inner = AdamW(self._piece_groups(), **options)
        # AdamW packed the pieces into a flat buffer of its own; pack them into our slice of
        # the model's buffer instead, so the slice is stepped in place, with no copy
        first, last = self.bounds[comm.rank]
        self.inner.buffer = ParameterBuffer(self._piece_tensors(), data=self.buffer.data[
            first:last], grad=self.buffer.grad[first:last])

    def _piece_groups(self):
        """Parameter groups of piece tensors: the parts of each group's parameters that lie
        in this rank's slice, each a view of the model's flat parameter array."""
        first, last = self.bounds[self.comm.rank]
        indices = iter(range(len(self.buffer.params)))
        piece_groups = []
        for group in self.groups:
            pieces = []
            for _ in group["params"]:
                index = next(indices)
                start, end = self.buffer.span(index)
                lo, hi = max(start, first), min(end, last)
                if lo < hi:
                    self.pieces.append((index, lo, hi))
                    pieces.append(Tensor(self.buffer.data[lo:hi], requires_grad=True))
            rest = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            piece_groups.append({**rest, "params": pieces})
        return piece_groups

    @property
    def param_groups(self):
        """The groups whose "lr" the training loop sets each step (pieces, not parameters)."""
        return self.inner.param_groups

    def _piece_tensors(self):
        return [p for group in self.inner.param_groups for p in group["params"]]

    # ------------------------------------------------------------------ stepping

    def zero_grad(self) -> None:
        self.buffer.zero_grad()

    def step(self, grad_clip: float | None = None) -> None:
        """Reduce-scatter the gradients, clip by the global norm, update this rank's slice,
        all-gather the parameters."""
        first, _ = self.bounds[self.comm.rank]
        self.buffer.refresh()  # take back parameters whose arrays were replaced
        grad = self.comm.reduce_scatter_sum(self.buffer.full_grad(), self.bounds)
        if grad_clip:
            self._clip(grad, grad_clip)
        # the pieces' data and gradient slots are our slice of the model's flat arrays: the
        # summed gradient is in place already, and the step updates the parameters in place
        for (_, lo, hi), piece in zip(self.pieces, self._piece_tensors()):
            piece.grad = grad[lo - first:hi - first].reshape(piece.shape)
        self.inner.step()
        self.steps += 1
        self.comm.all_gather_(self.buffer.data, self.bounds)  # parameters are views of it

    def _clip(self, grad, max_norm):
        """Scale this rank's slice of the gradient as clip_grad_norm scales the whole one:
        by min(max_norm / (total norm + 1e-6), 1), the norm taken over all ranks' slices."""
        local = float(backend.backend_of(grad).xp.dot(grad, grad))
        total = math.sqrt(self.comm.sum_scalars(local)[0])
        grad *= min(max_norm / (total + 1e-6), 1.0)

    # ------------------------------------------------------------------ saving

    def state_dict(self) -> dict | None:
        """The state dict one process's AdamW would have, on rank 0 (None on the others).

        Collective: every rank must call it (each sends its slice of the moments).
        """
        moments = {name: self.comm.gather(self._slice_of(name), self.bounds)
                   for name in MOMENTS}
        if self.comm.rank != 0:
            return None
        state = {}
        if self.steps:
            for index, p in enumerate(self.buffer.params):
                start, end = self.buffer.span(index)
                state[index] = {"step": self.steps, **{
                    name: moments[name][start:end].reshape(p.shape) for name in MOMENTS}}
        groups, start = [], 0
        for group, inner in zip(self.groups, self.inner.param_groups):
            saved = {k: v for k, v in group.items() if k != "params"}
            saved.update({k: v for k, v in inner.items() if k != "params"})
            saved["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def _slice_of(self, name):
        """This rank's slice of moment ``name`` as one flat host array."""
        first, last = self.bounds[self.comm.rank]
        flat = backend.xp().zeros(last - first, dtype=self.buffer.data.dtype)
        for piece_index, (_, lo, hi) in enumerate(self.pieces):
            moment = self.inner.state.get(piece_index, {}).get(name)
            if moment is not None:
                flat[lo - first:hi - first] = moment
        return backend.move(flat, "numpy")

    def load_state_dict(self, state_dict: dict) -> None:
        """Take this rank's pieces of a whole-model AdamW state dict (one process's, or one
        gathered by ``state_dict`` from any number of ranks)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.groups):
            raise ValueError(f"the optimizer state has {len(saved_groups)} parameter groups, "
                             f"this optimizer {len(self.groups)}")
        for g, (saved, group) in enumerate(zip(saved_groups, self.groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {g} has {len(saved['params'])} parameters "
                                 f"in the optimizer state, {len(group['params'])} here")
            names, saved_names = group.get("param_names"), saved.get("param_names")
            if names is not None and saved_names is not None and names != list(saved_names):
                raise ValueError(f"parameter group {g}: the optimizer state is for other "
                                 "parameters (their names differ)")
        steps = {int(s["step"]) for s in state_dict["state"].values()}
        if len(steps) > 1:
            raise ValueError(f"the optimizer state has different step counts {sorted(steps)}; "
                             "ZeroAdamW needs every parameter stepped equally often")
        inner_state = {}
        if steps:
            for piece_index, (index, lo, hi) in enumerate(self.pieces):
                saved = state_dict["state"][index]
                start, _ = self.buffer.span(index)
                inner_state[piece_index] = {"step": saved["step"], **{
                    name: saved[name].reshape(-1)[lo - start:hi - start] for name in MOMENTS}}
        inner_groups, start = [], 0
        for saved, inner in zip(saved_groups, self.inner.param_groups):
            hyper = {k: v for k, v in saved.items() if k not in ("params", "param_names")}
            inner_groups.append({**hyper, "params": list(range(start,
                                                               start + len(inner["params"])))})
            start += len(inner["params"])
        self.inner.load_state_dict({"state": inner_state, "param_groups": inner_groups})
        self.steps = steps.pop() if steps else 0
