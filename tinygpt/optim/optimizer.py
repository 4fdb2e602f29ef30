"""``Optimizer``: parameter groups, per-parameter state, saving; and the fused fast path.

An optimizer is written twice, on purpose. ``_update(p, grad, state, group)`` is the
readable reference: the update of one parameter as a few whole-array statements, in
PyTorch's order and arithmetic; it is the spec. ``_fused_step()`` does the same for every
parameter in one pass with a Numba kernel (``tinygpt.kernels.optim``) over the optimizer's
``ParameterBuffer``, where the parameters, their gradients and the optimizer's state
(moments) each lie in one flat array. The fused path runs whenever it can (NumPy backend,
Numba kernels on, parameters of one dtype); otherwise, or with ``TINYGPT_KERNELS=reference``,
``step()`` loops over the parameters and calls ``_update``. Both keep the same state layout,
so a state dict saved by one path loads into the other.
"""

from __future__ import annotations

from collections.abc import Callable

from tinygpt import backend
from tinygpt.optim.buffer import ParameterBuffer
from tinygpt.tensor import Tensor, _is_float


def _xp(array):
    """The array module (NumPy or CuPy) that ``array`` belongs to."""
    return backend.backend_of(array).xp


def _numba_kernels_on() -> bool:
    """True when the Numba kernels run (NumPy backend, Numba installed, not switched off
    with ``TINYGPT_KERNELS=reference`` or ``kernels.use("reference")``)."""
    from tinygpt import kernels

    return kernels.impl() is not kernels.reference


def _check_nonnegative(name: str, value) -> None:
    if not value >= 0.0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


# ----------------------------------------------------------------------------- base class

class Optimizer:
    """Holds parameter groups and per-parameter state; subclasses write ``_update``.

    ``param_groups`` is a list of dicts, each with ``"params"`` (a list of tensors) and every
    hyperparameter (``"lr"``, ...). Change ``group["lr"]`` between steps to schedule the
    learning rate. ``state`` maps a parameter's index (its position counting through all
    groups in order) to that parameter's state dict (moments, step count).
    """

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict[int, dict] = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or of parameter-group "
                            "dicts, got a single Tensor; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not all(isinstance(g, dict) for g in groups):
            if any(isinstance(g, dict) for g in groups):
                raise TypeError("params must be all Tensors or all parameter-group dicts, "
                                "not a mix of both")
            groups = [{"params": groups}]
        self.buffer: ParameterBuffer | None = None
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError("optimizer got an empty parameter list (every group is empty)")

    # ------------------------------------------------------------------ groups

    def add_param_group(self, group: dict) -> None:
        """Add a group: its tensors, and hyperparameters (missing ones take the defaults)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError("a parameter group must be a dict with a 'params' key")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        where = f"parameter group {len(self.param_groups)}"
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{where}: parameter {i} is a {type(p).__name__}, "
                                "expected a tinygpt Tensor")
            if getattr(p, "inference_only", False):  # a QuantizedWeight (nn.quantization)
                raise ValueError(f"{where}: parameter {i} (shape {p.shape}) is a quantized "
                                 "weight; a quantized model is for inference only: train "
                                 "the float32 model and quantize it afterwards")
            if not p.requires_grad:
                raise ValueError(
                    f"{where}: parameter {i} (shape {p.shape}) does not require grad; an "
                    "optimizer only takes trainable tensors (leave frozen ones out)")
            if not _is_float(p.dtype):
                raise ValueError(f"{where}: parameter {i} has dtype {p.dtype}, "
                                 "expected a floating-point dtype")
            if id(p) in seen:
                raise ValueError(f"{where}: parameter {i} (shape {p.shape}) appears more than "
                                 "once; each parameter may be in only one group, once")
            seen.add(id(p))
        group["params"] = params
        names = group.get("param_names")
        if names is not None and len(names) != len(params):
            raise ValueError(f"{where}: {len(names)} param_names for {len(params)} params")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group, where)
        self.param_groups.append(group)
        self._pack()

    def _pack(self) -> None:
        """Pack every parameter into one ``ParameterBuffer`` (when they share a dtype)."""
        params = [p for g in self.param_groups for p in g["params"]]
        self.buffer = ParameterBuffer(params) if ParameterBuffer.can_pack(params) else None
        self._flat_state: dict[str, tuple] = {}  # state name -> (flat array, per-param views)
        self._flat_generation = None if self.buffer is None else self.buffer.generation

    def _check_group(self, group: dict, where: str) -> None:
        """Validate a group's hyperparameters (subclasses add their own checks)."""
        _check_nonnegative(f"{where}: learning rate (lr)", group["lr"])

    def _indexed_params(self):
        """(index, group, parameter) over all groups; the index keys ``self.state``."""
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield index, group, p
                index += 1

    # ------------------------------------------------------------------ stepping

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``.grad = None``), or set them to zeros (in place)."""
        if self.buffer is not None:
            self.buffer.zero_grad(set_to_none)
            return
        for _, _, p in self._indexed_params():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = _xp(p.grad).zeros_like(p.grad)

    def step(self, closure: Callable | None = None):
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
        if self._can_fuse():
            self._fused_step()
            return loss
        for index, group, p in self._indexed_params():
            if p.grad is None:
                continue
            if p.grad.shape != p.shape:
                raise ValueError(f"parameter {index} has shape {p.shape} but its gradient "
                                 f"has shape {p.grad.shape}")
            self._update(p, p.grad, self.state.setdefault(index, {}), group)
        return loss

    def _update(self, p: Tensor, grad, state: dict, group: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the fused path

    def _can_fuse(self) -> bool:
        """True when ``_fused_step`` may run: a buffer, NumPy, kernels on (subclasses add)."""
        return (self.buffer is not None and _numba_kernels_on()
                and backend.backend_of(self.buffer.data).name == "numpy")

    def _fused_step(self) -> None:
        raise NotImplementedError

    def _runs(self, coefficients) -> list[list]:
        """The kernel's runs: [start, end, row] over the parameters that have a gradient.

        ``coefficients(index, state, group)`` advances parameter ``index``'s state (its step
        count) and returns its row of kernel coefficients; neighbours in the buffer with the
        same row merge into one run, so a whole parameter group is usually one run.
        """
        self.buffer.refresh()
        if self._flat_generation != self.buffer.generation:  # repacked: re-lay the state
            self._flat_state, self._flat_generation = {}, self.buffer.generation
        has_grad = self.buffer.gather_grads()
        runs: list[list] = []
        for index, group, _ in self._indexed_params():
            if not has_grad[index]:
                continue
            row = coefficients(index, self.state.setdefault(index, {}), group)
            start, end = self.buffer.span(index)
            if runs and runs[-1][1] == start and runs[-1][2] == row:
                runs[-1][1] = end
            else:
                runs.append([start, end, row])
        return runs

    def _flat(self, name: str):
        """The flat array (laid out like the buffer) behind state ``name``; zeros at first."""
        if name not in self._flat_state:
            flat = backend.backend_of(self.buffer.data).xp.zeros_like(self.buffer.data)
            views = [flat[slice(*self.buffer.span(i))].reshape(p.shape)
                     for i, p in enumerate(self.buffer.params)]
            self._flat_state[name] = (flat, views)
        return self._flat_state[name][0]

    def _state_view(self, index: int, state: dict, name: str):
        """Make ``state[name]`` of parameter ``index`` its view of the flat array ``name``,
        copying in what it held (after ``load_state_dict``, or from the reference path)."""
        self._flat(name)
        view = self._flat_state[name][1][index]
        if state.get(name) is not view:
            if name in state:
                view[...] = state[name]
            state[name] = view
        return view

    # ------------------------------------------------------------------ saving

    def state_dict(self) -> dict:
        """A snapshot: ``{"state": {index: {name: array or number}}, "param_groups": [...]}``.

        Arrays are copies (later steps do not change a saved state dict); groups hold their
        hyperparameters and, under ``"params"``, the indices of their parameters.
        """
        state = {
            index: {k: v.copy() if backend.is_array(v) else v for k, v in s.items()}
            for index, s in self.state.items()
        }
        groups, start = [], 0
        for group in self.param_groups:
            saved = {k: v for k, v in group.items() if k != "params"}
            saved["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(saved)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a ``state_dict()``: hyperparameters per group, and per-parameter state.

        Arrays are copied onto the backend and dtype of the parameter they belong to. The
        groups must match this optimizer's (same number of groups and of parameters in each,
        same shapes); otherwise a ValueError says what differs and nothing is changed.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError("an optimizer state dict must be a dict with keys 'state' and "
                             "'param_groups' (as returned by state_dict())")
        saved_groups = list(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state dict has {len(saved_groups)} parameter groups but "
                             f"this optimizer has {len(self.param_groups)}")
        params_by_index, new_groups = {}, []
        for g, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            saved_ids = list(saved["params"])
            if len(saved_ids) != len(group["params"]):
                raise ValueError(f"parameter group {g} has {len(saved_ids)} parameters in the "
                                 f"state dict but {len(group['params'])} in this optimizer")
            names, saved_names = group.get("param_names"), saved.get("param_names")
            if names is not None and saved_names is not None and list(names) != list(
                    saved_names):
                diff = next((a, b) for a, b in zip(saved_names, names) if a != b)
                raise ValueError(f"parameter group {g}: the state dict is for parameters named "
                                 f"differently ({diff[0]!r} where this optimizer has "
                                 f"{diff[1]!r})")
            for saved_id, p in zip(saved_ids, group["params"]):
                params_by_index[int(saved_id)] = p
            new = dict(group)
            for key, value in saved.items():
                if key == "params":
                    continue
                if isinstance(group.get(key), tuple) and isinstance(value, list):
                    value = tuple(value)  # betas come back from JSON as a list
                new[key] = value
            self._check_group(new, f"parameter group {g} of the state dict")
            new_groups.append(new)

        # Saved indices map to this optimizer's parameter indices through the groups.
        position = {id(p): i for i, _, p in self._indexed_params()}
        new_state = {}
        for key, saved in dict(state_dict["state"]).items():
            if int(key) not in params_by_index:
                raise ValueError(f"the state dict has state for parameter {key}, which is in "
                                 "none of its parameter groups")
            p = params_by_index[int(key)]
            entry = {}
            for name, value in saved.items():
                if backend.is_array(value):
                    if value.shape != p.shape:
                        raise ValueError(f"state {name!r} of parameter {key} has shape "
                                         f"{value.shape} but the parameter has shape {p.shape}")
                    value = backend.move(value, p.device).astype(p.dtype, copy=True)
                entry[name] = value
            new_state[position[id(p)]] = entry
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            hyper = ", ".join(f"{k}={v}" for k, v in group.items()
                              if k not in ("params", "param_names"))
            lines.append(f"  group {i}: {len(group['params'])} params, {hyper}")
        return "\n".join(lines + [")"])


