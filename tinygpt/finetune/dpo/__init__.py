"""Preference tuning with Direct Preference Optimization (the book's ch07 DPO notebook).

Each example pairs one prompt with a preferred ("chosen") and a dispreferred ("rejected")
response. DPO (Rafailov et al. 2023, eq. 7) raises the policy's log-probability of the chosen
response relative to a frozen reference copy of the starting model, and lowers it for the
rejected one:

    loss = -mean( log sigmoid( beta * ((pc - rc) - (pr - rr)) ) )

where pc, pr are the policy's and rc, rr the reference's log-probabilities of the chosen and
rejected responses. ``beta`` sets how far the policy may drift from the reference. The
"rewards" beta * (policy - reference) of each response show progress: the reward margin
(chosen minus rejected) should grow, and the reward accuracy (share of pairs where the chosen
response has the larger reward) should rise above one half.

    the loss and log-probabilities    loss.dpo_loss, loss.sequence_logprobs
    preference batches                data.encode_preference_entries, data.collate_preference
    the training loop                 training.train_dpo
    the whole run                     run.run_dpo
"""

from tinygpt.finetune.dpo.data import collate_preference, encode_preference_entries
from tinygpt.finetune.dpo.loss import (
    batch_dpo_loss,
    dpo_loss,
    log_sigmoid,
    make_reference,
    pair_logprobs,
    sequence_logprobs,
)
from tinygpt.finetune.dpo.run import DPORunConfig, run_dpo
from tinygpt.finetune.dpo.training import DPOConfig, DPOHistory, train_dpo

__all__ = ["DPOConfig", "DPOHistory", "DPORunConfig", "batch_dpo_loss", "collate_preference",
           "dpo_loss", "encode_preference_entries", "log_sigmoid", "make_reference",
           "pair_logprobs", "run_dpo", "sequence_logprobs", "train_dpo"]
