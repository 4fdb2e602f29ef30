"""``AdamW`` (as ``torch.optim.AdamW``) and the usual weight-decay parameter groups."""

from __future__ import annotations

from collections.abc import Callable

from tinygpt.optim.optimizer import Optimizer, _check_nonnegative, _xp
from tinygpt.tensor import Tensor


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

    def _can_fuse(self):
        return super()._can_fuse() and not any(g["amsgrad"] for g in self.param_groups)

    def _fused_step(self):
        """Every parameter's ``_update`` in one kernel pass over the buffer (same arithmetic;
        amsgrad takes the reference path)."""
        from tinygpt.kernels import optim as kernels  # Numba loads on the first step only

        runs = self._runs(self._coefficients)
        if runs:
            kernels.adamw(self.buffer.data, self.buffer.grad, self._flat("exp_avg"),
                          self._flat("exp_avg_sq"), runs)

    def _coefficients(self, index, state, group):
        """Advance parameter ``index``'s step and return its row for ``kernels.optim.adamw``:
        the scalars of ``_update``, computed the same way in Python floats."""
        if not state:
            state["step"] = 0
        self._state_view(index, state, "exp_avg")
        self._state_view(index, state, "exp_avg_sq")
        state["step"] += 1
        t, lr, (beta1, beta2) = state["step"], group["lr"], group["betas"]
        return (1 - lr * group["weight_decay"], 1 - beta1, beta2, 1 - beta2,
                lr / (1 - beta1**t), (1 - beta2**t) ** 0.5, group["eps"])


# ----------------------------------------------------------------------------- groups

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


