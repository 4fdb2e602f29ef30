"""Optimizers, gradient clipping and the learning-rate schedule of the book's appendix D.

Everything here follows PyTorch's semantics and defaults, so that a training run in tinygpt
and the same run in the book's PyTorch code take the same steps (the tests check ten AdamW
steps against ``torch.optim.AdamW`` in float64):

* ``SGD`` and ``AdamW`` update ``p.data`` in place, in the order and with the arithmetic of
  ``torch.optim`` (AdamW's weight decay is *decoupled*: the parameters shrink by
  ``lr * weight_decay`` each step, outside the moment estimates).
* Parameters come as a list of tensors, or as *parameter groups*: dicts
  ``{"params": [...], "weight_decay": 0.0, ...}`` whose keys override the optimizer's
  defaults for those parameters. ``param_groups_for_weight_decay`` builds the usual two
  groups (decay matrices, not biases or LayerNorm parameters).
* ``state_dict()`` / ``load_state_dict()`` save and restore the moments and step counts
  (keyed by parameter index, as in PyTorch), so training resumes exactly.
* ``clip_grad_norm`` is ``torch.nn.utils.clip_grad_norm_``.
* ``warmup_cosine_lr`` is appendix D's schedule as a pure function of the step, and
  ``WarmupCosineSchedule`` applies it to an optimizer step by step.

No optimizer ever writes into ``p.grad``: the engine may hand the same (read-only)
gradient array to two parameters, so gradients are replaced, never modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tinygpt import backend
from tinygpt.tensor import Tensor, _is_float

__all__ = [
    "Optimizer",
    "SGD",
    "AdamW",
    "param_groups_for_weight_decay",
    "clip_grad_norm",
    "warmup_cosine_lr",
    "WarmupCosineSchedule",
]


def _xp(array):
    """The array module (NumPy or CuPy) that ``array`` belongs to."""
    return backend.backend_of(array).xp


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
        """Forget the gradients (``.grad = None``), or set them to zeros."""
        for _, _, p in self._indexed_params():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = _xp(p.grad).zeros_like(p.grad)

    def step(self, closure: Callable | None = None):
        """Update every parameter that has a gradient; returns ``closure()`` if given."""
        loss = closure() if closure is not None else None
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


# ----------------------------------------------------------------------------- SGD

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    With gradient g, learning rate lr, momentum mu, dampening tau and weight decay wd::

        g <- g + wd * p                      (coupled L2 decay: it goes through momentum)
        b <- g on the first step, else mu * b + (1 - tau) * g
        g <- g + mu * b  (nesterov)  or  b
        p <- p - lr * g
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        _check_nonnegative(f"{where}: momentum", group["momentum"])
        _check_nonnegative(f"{where}: weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{where}: nesterov momentum needs momentum > 0 and dampening = 0, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def _update(self, p, grad, state, group):
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        if wd != 0:
            grad = grad + wd * p.data                    # g <- g + wd p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()  # b_1 = g_1
            else:
                buf *= momentum                          # b <- mu b + (1 - tau) g
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        p.data -= lr * grad                              # p <- p - lr g


# ----------------------------------------------------------------------------- AdamW

class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), as ``torch.optim.AdamW``.

    Defaults are PyTorch's: lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01. Each
    parameter keeps its own step count t and moments m ("exp_avg") and v ("exp_avg_sq");
    with ``amsgrad=True`` also the running maximum of v ("max_exp_avg_sq").
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad)
        super().__init__(params, defaults)

    def _check_group(self, group, where):
        super()._check_group(group, where)
        betas = group["betas"]
        if len(betas) != 2:
            raise ValueError(f"{where}: betas must be a pair (beta1, beta2), got {betas}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{where}: betas[{i}] must be in [0, 1), got {beta}")
        _check_nonnegative(f"{where}: eps", group["eps"])
        _check_nonnegative(f"{where}: weight_decay", group["weight_decay"])

    def _update(self, p, grad, state, group):
        xp = _xp(p.data)
        lr, (beta1, beta2) = group["lr"], group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        m, v = state["exp_avg"], state["exp_avg_sq"]

        state["step"] += 1                              # t <- t + 1
        t = state["step"]
        if wd != 0:
            p.data *= 1 - lr * wd                       # p <- p (1 - lr wd)   decoupled decay
        m += (1 - beta1) * (grad - m)                   # m <- b1 m + (1 - b1) g  (torch's lerp)
        v *= beta2                                      # v <- b2 v + (1 - b2) g^2
        v += (1 - beta2) * grad * grad
        if group["amsgrad"]:
            v = xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])

        bias_correction1 = 1 - beta1**t                 # 1 - b1^t
        bias_correction2 = 1 - beta2**t                 # 1 - b2^t
        step_size = lr / bias_correction1               # lr / (1 - b1^t)
        denom = xp.sqrt(v)                              # sqrt(v_hat) + eps
        denom /= bias_correction2**0.5                  #   = sqrt(v) / sqrt(1 - b2^t) + eps
        denom += eps
        update = step_size * m                          # p <- p - lr m_hat / (sqrt(v_hat) + eps)
        update /= denom
        p.data -= update


# ----------------------------------------------------------------------------- helpers

def _default_no_decay(name: str, p: Tensor) -> bool:
    return p.ndim < 2


def param_groups_for_weight_decay(
    named_parameters, weight_decay: float,
    no_decay: Callable[[str, Tensor], bool] = _default_no_decay,
) -> list[dict]:
    """Two parameter groups: ``[decayed, not decayed]``, for ``AdamW(groups, ...)``.

    ``named_parameters`` is an iterable of (name, tensor) pairs (``model.named_parameters()``),
    a dict of them, or a module. ``no_decay(name, p)`` says which parameters skip weight
    decay; the default, ``p.ndim < 2``, decays the matrices (linear weights and, as in
    nanoGPT, the token and position embeddings) and spares the vectors (biases, LayerNorm
    scale and shift). Frozen parameters (``requires_grad=False``, e.g. after ``apply_lora``)
    are left out. Both groups are always returned (one may be empty) and carry their
    parameters' names under ``"param_names"``.
    """
    _check_nonnegative("weight_decay", weight_decay)
    if hasattr(named_parameters, "named_parameters"):
        named_parameters = named_parameters.named_parameters()
    elif isinstance(named_parameters, dict):
        named_parameters = named_parameters.items()
    decay = {"params": [], "param_names": [], "weight_decay": weight_decay}
    keep = {"params": [], "param_names": [], "weight_decay": 0.0}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        group = keep if no_decay(name, p) else decay
        group["params"].append(p)
        group["param_names"].append(name)
    return [decay, keep]


def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their total norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``-norm of all
    gradients seen as one vector; each gradient is multiplied by
    ``min(max_norm / (total_norm + 1e-6), 1)``. Parameters without a gradient are skipped.
    Returns the total norm before clipping, as a float. (The gradients are replaced by scaled
    copies, not scaled in place, since two parameters may share one gradient array.)
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return 0.0
    norm_type = float(norm_type)
    xp = _xp(with_grad[0].grad)
    norms = [xp.linalg.norm(p.grad.ravel(), ord=norm_type) for p in with_grad]
    total = xp.linalg.norm(xp.stack(norms), ord=norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{float(total)}, so they cannot be clipped; pass "
                           "error_if_nonfinite=False to scale by it anyway")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)   # clip coefficient, at most 1
    for p in with_grad:
        p.grad = p.grad * coef.astype(p.grad.dtype)
    return float(total)


# ----------------------------------------------------------------------------- schedule

def _check_schedule(peak_lr, total_steps, warmup_steps, initial_lr, min_lr) -> None:
    for name, value in (("peak_lr", peak_lr), ("initial_lr", initial_lr), ("min_lr", min_lr)):
        _check_nonnegative(name, value)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be between 0 and total_steps ({total_steps}), "
                         f"got {warmup_steps}")


def warmup_cosine_lr(step: int, *, peak_lr: float, total_steps: int, warmup_steps: int,
                     initial_lr: float = 0.0, min_lr: float = 0.0) -> float:
    """The learning rate at ``step`` (counting from 0) of appendix D's schedule.

    Linear warm-up from ``initial_lr`` towards ``peak_lr`` over ``warmup_steps`` steps, then
    half a cosine from ``peak_lr`` down to ``min_lr`` at ``total_steps``; the arithmetic is
    the book's, so the values are identical to its training loop's. Steps past
    ``total_steps`` stay at ``min_lr``; ``warmup_steps=0`` starts the cosine at once.
    """
    _check_schedule(peak_lr, total_steps, warmup_steps, initial_lr, min_lr)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        lr_increment = (peak_lr - initial_lr) / warmup_steps
        return initial_lr + step * lr_increment
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Applies ``warmup_cosine_lr`` to every group of an optimizer, PyTorch-scheduler style.

    Creating it sets the learning rate of step 0; call ``.step()`` after each
    ``optimizer.step()`` to move to the next::

        schedule = WarmupCosineSchedule(optimizer, peak_lr=5e-4, total_steps=1000,
                                        warmup_steps=20, initial_lr=1e-5, min_lr=1e-5)
        for _ in range(1000):
            loss.backward(); clip_grad_norm(params, 1.0); optimizer.step()
            optimizer.zero_grad(); schedule.step()
    """

    def __init__(self, optimizer: Optimizer, peak_lr: float, total_steps: int,
                 warmup_steps: int, initial_lr: float = 0.0, min_lr: float = 0.0):
        _check_schedule(peak_lr, total_steps, warmup_steps, initial_lr, min_lr)
        self.optimizer = optimizer
        self.peak_lr, self.total_steps, self.warmup_steps = peak_lr, total_steps, warmup_steps
        self.initial_lr, self.min_lr = initial_lr, min_lr
        self.current_step = 0  # the step whose learning rate is set now
        self._apply()

    def get_lr(self) -> float:
        """The learning rate of the current step."""
        return warmup_cosine_lr(self.current_step, peak_lr=self.peak_lr,
                                total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                                initial_lr=self.initial_lr, min_lr=self.min_lr)

    def step(self) -> float:
        """Advance one step and set its learning rate in every group; returns it."""
        self.current_step += 1
        return self._apply()

    def _apply(self) -> float:
        lr = self.get_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    _KEYS = ("current_step", "peak_lr", "total_steps", "warmup_steps", "initial_lr", "min_lr")

    def state_dict(self) -> dict:
        return {key: getattr(self, key) for key in self._KEYS}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` and set that step's learning rate in the optimizer."""
        missing = [key for key in self._KEYS if key not in state]
        if missing:
            raise ValueError(f"schedule state dict lacks {missing}; expected keys "
                             f"{list(self._KEYS)}")
        _check_schedule(state["peak_lr"], state["total_steps"], state["warmup_steps"],
                        state["initial_lr"], state["min_lr"])
        if state["current_step"] < 0:
            raise ValueError(f"current_step must be >= 0, got {state['current_step']}")
        for key in self._KEYS:
            setattr(self, key, state[key])
        self._apply()
