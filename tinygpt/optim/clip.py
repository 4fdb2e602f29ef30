"""``clip_grad_norm``: scale all gradients together to a maximum total norm, as PyTorch."""

from __future__ import annotations

from tinygpt import backend
from tinygpt.optim.optimizer import _numba_kernels_on, _xp
from tinygpt.tensor import Tensor


def clip_grad_norm(parameters, max_norm: float, norm_type: float = 2.0,
                   error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their total norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the total norm is the ``norm_type``-norm of all
    gradients seen as one vector; each gradient is multiplied by
    ``min(max_norm / (total_norm + 1e-6), 1)``. Parameters without a gradient are skipped.
    Returns the total norm before clipping, as a float.

    Gradients that live in their parameter's slot of a ``ParameterBuffer`` (every gradient
    of an optimizer's parameters after backward) are scaled in place (not at all when the
    factor is 1), and the 2-norm is summed by a Numba kernel in one read pass (in float64).
    Any other gradient array may be shared by two parameters (the engine hands out one array
    where it can), so it is replaced by a scaled copy instead, never modified.
    """
    if not max_norm >= 0:  # a negative factor would turn gradient descent into ascent
        raise ValueError(f"clip_grad_norm: max_norm must be >= 0, got {max_norm}")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return 0.0
    norm_type = float(norm_type)
    xp = _xp(with_grad[0].grad)
    kernels = _numba_kernels(with_grad) if norm_type == 2.0 else None
    if kernels:
        total = xp.asarray(sum(kernels.sum_of_squares(p.grad) for p in with_grad) ** 0.5)
    else:
        norms = [xp.linalg.norm(p.grad.ravel(), ord=norm_type) for p in with_grad]
        total = xp.linalg.norm(xp.stack(norms), ord=norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(f"the total norm of order {norm_type} of the gradients is "
                           f"{float(total)}, so they cannot be clipped; pass "
                           "error_if_nonfinite=False to scale by it anyway")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)   # clip coefficient, at most 1
    for p in with_grad:
        factor = coef.astype(p.grad.dtype)
        if p.grad is not getattr(p, "_grad_slot", None):
            p.grad = p.grad * factor            # maybe shared with another parameter: a copy
        elif factor == 1:
            continue                            # x * 1 == x: nothing to write
        elif kernels:
            kernels.scale_(p.grad, factor)      # our own slot: scaled in place, in parallel
        else:
            p.grad *= factor
    return float(total)


def _numba_kernels(params):
    """The Numba optimizer kernels if they apply (kernels on, contiguous float gradients on
    NumPy), else None."""
    if _numba_kernels_on() and all(
            backend.backend_of(p.grad).name == "numpy" and p.grad.flags.c_contiguous
            and p.grad.dtype.kind == "f" for p in params):
        from tinygpt.kernels import optim as kernels

        return kernels
    return None


