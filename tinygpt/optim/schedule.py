"""Appendix D's learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

from tinygpt.optim.optimizer import Optimizer, _check_nonnegative


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
