"""Three full training steps of a small GPT in tinygpt and in the book's PyTorch model.

Each step: warm-up/cosine learning rate, forward, mean next-token cross-entropy, backward,
gradient-norm clipping, AdamW with weight decay on the matrices only. The PyTorch side is
written independently (``torch.optim.AdamW``, ``torch.nn.utils.clip_grad_norm_`` and the
book's appendix-D schedule transcribed below); in float64 the parameters must stay equal to
1e-9 relative.
"""

import math

import numpy
import pytest
import torch
from torch_gpt import from_tinygpt

import tinygpt
from tinygpt import backend
from tinygpt import functional as F
from tinygpt.nn import GPTModel
from tinygpt.optim import AdamW, clip_grad_norm, param_groups_for_weight_decay, warmup_cosine_lr

STEPS = 3
SCHEDULE = dict(peak_lr=5e-3, initial_lr=1e-4, min_lr=1e-4, warmup_steps=1, total_steps=5)
WEIGHT_DECAY = 0.1
MAX_NORM = 0.5  # small enough that clipping really scales the gradients
TOL = 1e-9


def book_lr(global_step, peak_lr, initial_lr, min_lr, warmup_steps, total_steps):
    """Appendix D's learning rate, as the book's training loop computes it."""
    lr_increment = (peak_lr - initial_lr) / warmup_steps
    if global_step < warmup_steps:
        return initial_lr + global_step * lr_increment
    progress = (global_step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def rel_err(a, b) -> float:
    return float(numpy.abs(a - b).max() / numpy.abs(b).max())


@pytest.mark.parametrize("cfg_kwargs", [
    dict(vocab_size=50, context_length=12, emb_dim=30, n_heads=5, n_layers=2),
    dict(vocab_size=41, context_length=10, emb_dim=12, n_heads=4, n_layers=2, qkv_bias=True,
         tie_embeddings=True),
], ids=["untied", "tied-qkv-bias"])
def test_three_adamw_steps_match_torch(cfg_kwargs):
    backend.set_default_dtype("float64")
    tinygpt.manual_seed(0)
    model = GPTModel(tinygpt.GPTConfig(drop_rate=0.0, **cfg_kwargs))
    twin = from_tinygpt(model)
    start = {name: p.data.copy() for name, p in model.named_parameters()}

    groups = param_groups_for_weight_decay(model.named_parameters(), WEIGHT_DECAY)
    optimizer = AdamW(groups, lr=SCHEDULE["peak_lr"], weight_decay=WEIGHT_DECAY)
    t_named = list(twin.named_parameters())
    t_groups = [  # nanoGPT's rule, written out: decay matrices, not vectors
        {"params": [p for _, p in t_named if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for _, p in t_named if p.dim() < 2], "weight_decay": 0.0},
    ]
    assert groups[0]["param_names"] == [n for n, p in t_named if p.dim() >= 2]
    assert groups[1]["param_names"] == [n for n, p in t_named if p.dim() < 2]
    t_optimizer = torch.optim.AdamW(t_groups, lr=SCHEDULE["peak_lr"], weight_decay=WEIGHT_DECAY)

    rng = numpy.random.default_rng(3)
    clipped = 0
    for step in range(STEPS):
        ids = rng.integers(0, cfg_kwargs["vocab_size"], size=(3, 9))
        inputs, targets = ids[:, :-1], ids[:, 1:]

        lr = warmup_cosine_lr(step, **SCHEDULE)
        assert lr == pytest.approx(book_lr(step, **SCHEDULE), rel=1e-15)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        norm = clip_grad_norm(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad()

        for group in t_optimizer.param_groups:
            group["lr"] = book_lr(step, **SCHEDULE)
        t_logits = twin(torch.from_numpy(inputs))
        t_loss = torch.nn.functional.cross_entropy(t_logits.flatten(0, 1),
                                                   torch.from_numpy(targets).flatten())
        t_loss.backward()
        t_norm = torch.nn.utils.clip_grad_norm_(twin.parameters(), MAX_NORM)
        t_optimizer.step()
        t_optimizer.zero_grad()

        assert loss.item() == pytest.approx(t_loss.item(), rel=TOL)
        assert norm == pytest.approx(t_norm.item(), rel=TOL)
        clipped += norm > MAX_NORM

    assert clipped == STEPS  # every step exercised the clipping
    t_params = dict(twin.named_parameters())
    assert model.weights_tied == cfg_kwargs.get("tie_embeddings", False)
    for name, p in model.named_parameters():
        t_p = t_params[name].detach().numpy()
        if name.endswith("att.W_key.bias"):
            # Its true gradient is zero (softmax ignores a shift shared by a whole row): it
            # stays at 0 up to rounding noise divided by AdamW's eps, on both sides.
            assert numpy.abs(p.data).max() < 1e-9 and numpy.abs(t_p).max() < 1e-9
            continue
        assert rel_err(p.data, t_p) < TOL, (name, rel_err(p.data, t_p))
        # The updates themselves (not just the mostly unchanged weights) agree too.
        change, t_change = p.data - start[name], t_p - start[name]
        assert numpy.abs(t_change).max() > 0, name
        assert rel_err(change, t_change) < TOL, (name, rel_err(change, t_change))
