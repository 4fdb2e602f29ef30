"""The DPO loss (Rafailov et al. 2023, eq. 7) and the log-probabilities it compares: of a
response under the policy being tuned and under the frozen reference model.

A response's log-probability is, as in the book's notebook, the *average* over its tokens of
log p(token | everything before it) (``sequence_logprobs(..., average=True)``); prompt and
padding tokens are masked out. ``average=False`` gives the sum, the DPO paper's definition.
"""

from __future__ import annotations

import copy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.tensor import Tensor, no_grad


def _as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


def log_sigmoid(x: Tensor) -> Tensor:
    """log(sigmoid(x)) = -softplus(-x) = min(x, 0) - log(1 + exp(-|x|)), stable for any x.

    Written as x * [x < 0] - log(1 + exp(-x * s)) with the constant s = sign(x) (taking
    s = +1 at 0), so that autograd also gets the derivative right at x = 0: sigmoid(0) = 1/2.
    (With relu and abs, whose derivatives are 0 at 0, it would come out as 0 there, which is
    exactly where DPO starts: the policy equals the reference, so every x is 0.)
    """
    x = _as_tensor(x)
    xp = backend.xp()
    negative = (x.data < 0).astype(x.dtype)
    sign = xp.where(x.data < 0, -1.0, 1.0).astype(x.dtype)
    return x * Tensor(negative) - ((x * Tensor(-sign)).exp() + 1.0).log()


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
             reference_rejected_logps, beta=0.1):
    """The DPO loss of a batch -> (loss, chosen_rewards, rejected_rewards).

    All four inputs have shape (batch,): the log-probabilities of each pair's chosen and
    rejected response under the policy and under the reference model. ``loss`` is
    -mean(log sigmoid(beta * ((pc - rc) - (pr - rr)))), differentiable with respect to every
    input; the rewards are the batch means of beta * (policy - reference) for the chosen and
    the rejected responses, detached from the graph (for logging).
    """
    pc, pr = _as_tensor(policy_chosen_logps), _as_tensor(policy_rejected_logps)
    rc, rr = _as_tensor(reference_chosen_logps), _as_tensor(reference_rejected_logps)
    shapes = {t.shape for t in (pc, pr, rc, rr)}
    if len(shapes) != 1:
        raise ValueError(f"dpo_loss: the four log-probability tensors must have one shape "
                         f"(batch,), got {[t.shape for t in (pc, pr, rc, rr)]}")
    policy_logratios = pc - pr
    reference_logratios = rc - rr
    logits = policy_logratios - reference_logratios
    loss = -log_sigmoid(logits * beta).mean()
    chosen_rewards = ((pc - rc) * beta).detach().mean()
    rejected_rewards = ((pr - rr) * beta).detach().mean()
    return loss, chosen_rewards, rejected_rewards


# ----------------------------------------------------------------------------- log-probs

def logprobs_from_logits(logits, targets, mask, average=True) -> Tensor:
    """Per-sequence log-probability of ``targets`` (B, T) under ``logits`` (B, T, V), over the
    positions where ``mask`` (B, T) is true: the mean (``average``) or the sum. -> (B,)"""
    logits = _as_tensor(logits)
    xp = backend.xp()
    targets = xp.asarray(targets.data if isinstance(targets, Tensor) else targets)
    mask = xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(bool)
    B, T = targets.shape
    if logits.shape[:2] != (B, T) or mask.shape != (B, T):
        raise ValueError(f"logprobs: logits {logits.shape}, targets {targets.shape} and mask "
                         f"{mask.shape} must agree as (B, T, V), (B, T), (B, T)")
    counts = mask.sum(axis=-1)
    if average and bool((counts == 0).any()):
        rows = [int(i) for i in xp.flatnonzero(counts == 0)]
        raise ValueError(f"logprobs: rows {rows} have no response token in their mask, so "
                         "their average log-probability is undefined")
    safe_targets = xp.where(mask, targets, 0)  # ignore_index or padding -> any valid id
    log_probs = F.log_softmax(logits, axis=-1)
    picked = log_probs[xp.arange(B)[:, None], xp.arange(T)[None, :], safe_targets]  # (B, T)
    total = (picked * Tensor(mask.astype(logits.dtype))).sum(axis=-1)
    return total / Tensor(counts.astype(logits.dtype)) if average else total


def sequence_logprobs(model, inputs, targets, mask, average=True) -> Tensor:
    """Log-probability of each response under ``model`` -> Tensor (B,).

    ``inputs`` (B, T) are the token ids fed to the model, ``targets`` (B, T) the ids it should
    predict (the inputs shifted by one) and ``mask`` (B, T) marks the targets that belong to
    the response (prompt and padding are False). With ``average`` (the book's notebook) the
    result is the mean log-probability over the response tokens, else their sum.
    """
    return logprobs_from_logits(model(inputs), targets, mask, average=average)


def pair_logprobs(model, batch, average=True):
    """(chosen, rejected) log-probabilities (B,) of a collated preference batch, from one
    forward pass over the chosen and rejected sequences stacked together."""
    xp = backend.xp()
    seqs = xp.concatenate([xp.asarray(batch["chosen"]), xp.asarray(batch["rejected"])])
    masks = xp.concatenate([xp.asarray(batch["chosen_mask"]),
                            xp.asarray(batch["rejected_mask"])])
    logps = sequence_logprobs(model, seqs[:, :-1], seqs[:, 1:], masks[:, 1:], average)
    B = len(batch["chosen"])
    return logps[:B], logps[B:]


def make_reference(model):
    """A frozen copy of ``model``: same weights, no gradients, evaluation mode."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    for p in reference.parameters():
        p.grad = None
    return reference.eval()


def batch_dpo_loss(policy, reference, batch, beta=0.1, average=True):
    """DPO loss on a collated batch -> (loss, chosen_rewards, rejected_rewards, accuracy),
    where accuracy is the share of pairs whose chosen reward beats the rejected one."""
    policy_chosen, policy_rejected = pair_logprobs(policy, batch, average)
    with no_grad():
        ref_chosen, ref_rejected = pair_logprobs(reference, batch, average)
    loss, chosen_rewards, rejected_rewards = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    margins = (policy_chosen.data - ref_chosen.data) - (policy_rejected.data - ref_rejected.data)
    accuracy = float((margins > 0).mean())
    return loss, chosen_rewards, rejected_rewards, accuracy
