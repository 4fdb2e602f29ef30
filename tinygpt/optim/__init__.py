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

Fast path: each optimizer packs its parameters into a ``ParameterBuffer`` (one flat array
for the parameters, one for their gradients, llm.c's layout; ``optimizer.buffer``), and its
step is one Numba kernel pass over it (``tinygpt.kernels.optim``); the per-parameter code in
``sgd.py`` and ``adamw.py`` is the readable reference the kernels must match. Gradients are
modified in place only in their own slot of that buffer: any other gradient array may be
shared by two parameters, so it is replaced, never modified.

Files: ``buffer.py`` (ParameterBuffer), ``optimizer.py`` (the base class and fused path),
``sgd.py``, ``adamw.py`` (with ``param_groups_for_weight_decay``), ``clip.py``, ``schedule.py``.
"""

from tinygpt.optim.adamw import AdamW, param_groups_for_weight_decay
from tinygpt.optim.buffer import ParameterBuffer
from tinygpt.optim.clip import clip_grad_norm
from tinygpt.optim.optimizer import Optimizer
from tinygpt.optim.schedule import WarmupCosineSchedule, warmup_cosine_lr
from tinygpt.optim.sgd import SGD

__all__ = [
    "Optimizer",
    "ParameterBuffer",
    "SGD",
    "AdamW",
    "param_groups_for_weight_decay",
    "clip_grad_norm",
    "warmup_cosine_lr",
    "WarmupCosineSchedule",
]
