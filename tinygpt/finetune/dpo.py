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

A response's log-probability is, as in the book's notebook, the *average* over its tokens of
log p(token | everything before it) (``sequence_logprobs(..., average=True)``); prompt and
padding tokens are masked out. ``average=False`` gives the sum, the DPO paper's definition.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.finetune.instruct import (
    PAD_TOKEN_ID,
    RESPONSE_HEADER,
    RESPONSES_FILE,
    encode,
    format_input,
    validate_entries,
)
from tinygpt.tensor import Tensor, no_grad

# ----------------------------------------------------------------------------- the loss


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


# ----------------------------------------------------------------------------- data

def encode_preference_entries(entries, tokenizer) -> list[dict]:
    """Token ids per entry, as the book's PreferenceDataset: the prompt alone, and the prompt
    followed by "\\n\\n### Response:\\n" and the chosen (rejected) response."""
    validate_entries(entries, "preference data", keys=("instruction", "chosen", "rejected"))
    items = []
    for entry in entries:
        prompt = format_input(entry)
        items.append({
            "prompt": encode(tokenizer, prompt),
            "chosen": encode(tokenizer, f"{prompt}{RESPONSE_HEADER}{entry['chosen']}"),
            "rejected": encode(tokenizer, f"{prompt}{RESPONSE_HEADER}{entry['rejected']}"),
        })
    return items


def collate_preference(batch, pad_token_id=PAD_TOKEN_ID, allowed_max_length=None,
                       mask_prompt=True) -> dict:
    """The book's DPO collate: chosen and rejected sequences padded to one common length
    (the longest + 1), with boolean masks that are True on response tokens only.

    Masks are False on padding and, with ``mask_prompt``, on the prompt and the two "\\n"
    tokens after it (the book's ``mask[:len(prompt) + 2] = False``), so they keep
    "### Response:\\n" and the response. Returns NumPy arrays: chosen, rejected (B, T) int64
    and chosen_mask, rejected_mask (B, T) bool, cut to ``allowed_max_length``.
    """
    if len(batch) == 0:
        raise ValueError("collate_preference: the batch is empty")
    length = max(len(item[key]) + 1 for item in batch for key in ("chosen", "rejected"))
    out = {}
    for key in ("chosen", "rejected"):
        seqs = numpy.full((len(batch), length), pad_token_id, dtype=numpy.int64)
        masks = numpy.zeros((len(batch), length), dtype=bool)
        for row, item in enumerate(batch):
            sequence = item[key]
            seqs[row, :len(sequence)] = sequence
            masks[row, :len(sequence)] = True
            if mask_prompt:
                masks[row, :len(item["prompt"]) + 2] = False
        if allowed_max_length is not None:
            seqs, masks = seqs[:, :allowed_max_length], masks[:, :allowed_max_length]
        out[key], out[f"{key}_mask"] = seqs, masks
    return out


# ----------------------------------------------------------------------------- models

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


# ----------------------------------------------------------------------------- training

@dataclass
class DPOConfig:
    """The book's DPO settings: one epoch, batch 8, AdamW lr 5e-6, weight decay 0.01."""

    epochs: int = 1
    max_steps: int | None = None  # stop earlier than epochs * batches per epoch
    batch_size: int = 8
    lr: float = 5e-6
    weight_decay: float = 0.01
    beta: float = 0.1
    eval_every: int = 5
    eval_iters: int = 5
    allowed_max_length: int | None = 1024
    mask_prompt: bool = True
    average_logprobs: bool = True
    grad_clip: float | None = None
    pad_token_id: int = PAD_TOKEN_ID
    seed: int = 123

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"DPOConfig.{name} must be positive, got {getattr(self, name)}")
        if self.beta <= 0:
            raise ValueError(f"DPOConfig.beta must be positive, got {self.beta}")


@dataclass
class DPOHistory:
    """Evaluations every ``eval_every`` steps (means over ``eval_iters`` batches)."""

    steps: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    train_reward_margin: list = field(default_factory=list)
    val_reward_margin: list = field(default_factory=list)
    train_reward_accuracy: list = field(default_factory=list)
    val_reward_accuracy: list = field(default_factory=list)
    step_loss: list = field(default_factory=list)


class PreferenceBatches:
    """Shuffled epochs of collated preference batches (epoch e shuffled with seed (seed, e),
    last incomplete batch dropped); evaluation takes the first batches in order."""

    def __init__(self, train_items, val_items, cfg: DPOConfig):
        self.items = {"train": list(train_items), "val": list(val_items)}
        self.cfg = cfg
        self.batches_per_epoch = len(self.items["train"]) // cfg.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {len(self.items['train'])} pairs, fewer "
                             f"than one batch of {cfg.batch_size}")

    def _collate(self, items):
        return collate_preference(items, pad_token_id=self.cfg.pad_token_id,
                                  allowed_max_length=self.cfg.allowed_max_length,
                                  mask_prompt=self.cfg.mask_prompt)

    def train_batch(self, index):
        epoch, position = divmod(index, self.batches_per_epoch)
        order = numpy.random.default_rng((self.cfg.seed, epoch)).permutation(
            len(self.items["train"]))
        start = position * self.cfg.batch_size
        return self._collate([self.items["train"][int(i)]
                              for i in order[start:start + self.cfg.batch_size]])

    def eval_batches(self, split, count):
        items, size = self.items[split], self.cfg.batch_size
        return [self._collate(items[s:s + size]) for s in range(0, len(items), size)][:count]


def evaluate_dpo(policy, reference, batches, beta, average=True) -> dict:
    """Mean loss, reward margin and reward accuracy over ``batches`` (no graph)."""
    was_training = policy.training
    policy.eval()
    rows = []
    with no_grad():
        for batch in batches:
            loss, chosen, rejected, accuracy = batch_dpo_loss(policy, reference, batch, beta,
                                                              average)
            rows.append((loss.item(), chosen.item() - rejected.item(), accuracy))
    policy.train(was_training)
    if not rows:
        return {"loss": float("nan"), "reward_margin": float("nan"),
                "reward_accuracy": float("nan")}
    loss, margin, accuracy = numpy.mean(rows, axis=0)
    return {"loss": float(loss), "reward_margin": float(margin),
            "reward_accuracy": float(accuracy)}


def train_dpo(policy, reference, train_items, val_items, cfg: DPOConfig | None = None,
              log=print, progress=True) -> DPOHistory:
    """Preference-tune ``policy`` against the frozen ``reference`` (the book's
    train_model_dpo_simple): AdamW on the policy's trainable parameters, one DPO step per
    batch, and every ``eval_every`` steps the loss, reward margin and reward accuracy on the
    first ``eval_iters`` training and validation batches."""
    from tqdm.auto import tqdm

    from tinygpt.optim import AdamW, clip_grad_norm

    cfg = cfg or DPOConfig()
    batches = PreferenceBatches(train_items, val_items, cfg)
    total = cfg.epochs * batches.batches_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = DPOHistory()
    backend.manual_seed(cfg.seed)
    policy.train()
    bar = tqdm(total=total, disable=not progress, unit="step", leave=False)
    for step in range(total):
        loss, _, _, _ = batch_dpo_loss(policy, reference, batches.train_batch(step), cfg.beta,
                                       cfg.average_logprobs)
        value = loss.item()
        if not numpy.isfinite(value):
            raise RuntimeError(f"the DPO loss became {value} at step {step + 1}; try a lower "
                               "learning rate")
        loss.backward()
        if cfg.grad_clip:
            clip_grad_norm(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        history.step_loss.append(value)
        done = step + 1
        if done % cfg.eval_every == 0 or done == total:
            _record(policy, reference, batches, cfg, history, done, log)
        bar.update(1)
        bar.set_postfix(loss=f"{value:.3f}")
    bar.close()
    return history


def _record(policy, reference, batches, cfg, history, done, log):
    train = evaluate_dpo(policy, reference, batches.eval_batches("train", cfg.eval_iters),
                         cfg.beta, cfg.average_logprobs)
    val = evaluate_dpo(policy, reference, batches.eval_batches("val", cfg.eval_iters),
                       cfg.beta, cfg.average_logprobs)
    history.steps.append(done)
    for split, stats in (("train", train), ("val", val)):
        getattr(history, f"{split}_loss").append(stats["loss"])
        getattr(history, f"{split}_reward_margin").append(stats["reward_margin"])
        getattr(history, f"{split}_reward_accuracy").append(stats["reward_accuracy"])
    epoch = (done - 1) // batches.batches_per_epoch + 1
    if log is not None:
        log(f"Ep {epoch} (Step {done:06d}): Train loss {train['loss']:.3f}, "
            f"Val loss {val['loss']:.3f}, Train reward margin {train['reward_margin']:.3f}, "
            f"Val reward margin {val['reward_margin']:.3f}, Train reward acc "
            f"{train['reward_accuracy']:.2f}, Val reward acc {val['reward_accuracy']:.2f}")


# ----------------------------------------------------------------------------- command line

def cmd_finetune_dpo(args):
    from tinygpt.finetune.instruct import (
        check_vocabulary,
        generate_responses,
        load_base_model,
        read_json,
        save_json,
        save_model,
        split_data,
    )

    out = Path(args.out)
    entries = read_json(args.data, "preference data")
    validate_entries(entries, args.data, keys=("instruction", "chosen", "rejected"))
    split = split_data(entries)
    print(f"data: {len(entries)} pairs -> {len(split.train)} train, {len(split.val)} "
          f"validation, {len(split.test)} test")
    policy, tokenizer = load_base_model(args.model, seed=args.seed)
    check_vocabulary(policy)
    reference = make_reference(policy)
    cfg = DPOConfig(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                    lr=args.lr, weight_decay=args.weight_decay, beta=args.beta,
                    eval_every=args.eval_every, eval_iters=args.eval_iters,
                    allowed_max_length=min(args.allowed_max_length,
                                           policy.cfg.context_length),
                    mask_prompt=not args.no_mask_prompt, seed=args.seed)
    start = time.perf_counter()
    history = train_dpo(policy, reference, encode_preference_entries(split.train, tokenizer),
                        encode_preference_entries(split.val, tokenizer), cfg)
    print(f"DPO training completed in {(time.perf_counter() - start) / 60:.2f} minutes")
    save_model(policy, out, tokenizer)
    print(f"model: {out}")
    history_path = save_json({"config": asdict(cfg), **asdict(history)},
                             out / "dpo-history.json")
    print(f"history: {history_path}")
    if args.num_test:
        test = [{**e, "output": e.get("output", e["chosen"])} for e in split.test]
        responses = generate_responses(policy.eval(), tokenizer, test[:args.num_test],
                                       args.max_new_tokens)
        print(f"test responses: {save_json(responses, out / RESPONSES_FILE)}")


def add_finetune_dpo(sub):
    p = sub.add_parser(
        "finetune-dpo", help="preference tuning with DPO on chosen/rejected pairs",
        description="Direct Preference Optimization of an instruction-tuned model on a JSON "
                    "list of {instruction, input, chosen, rejected} entries (the book's "
                    "instruction-data-with-preference.json), against a frozen copy of the "
                    "starting model.")
    p.add_argument("--data", required=True,
                   help="preference data: a JSON list with instruction, input, chosen and "
                        "rejected")
    p.add_argument("--model", required=True,
                   help="the model to tune, usually a `tinygpt finetune-instruct` output "
                        "directory (anything --model accepts, or 'scratch')")
    p.add_argument("--out", required=True, help="directory for the tuned model and history")
    p.add_argument("--beta", type=float, default=0.1,
                   help="how strongly to keep close to the reference model: larger values "
                        "punish drifting more (default 0.1)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the pairs (default 1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many steps (default: all epochs)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate (default 5e-6)")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (default 0.01)")
    p.add_argument("--allowed-max-length", type=int, default=1024,
                   help="cut sequences to this many tokens (default 1024)")
    p.add_argument("--no-mask-prompt", action="store_true",
                   help="score the prompt tokens too (default: the response only)")
    p.add_argument("--eval-every", type=int, default=5,
                   help="steps between evaluations (default 5)")
    p.add_argument("--eval-iters", type=int, default=5,
                   help="batches per evaluation (default 5)")
    p.add_argument("--num-test", type=int, default=0,
                   help="afterwards, answer the first N test instructions and write them to "
                        f"OUT/{RESPONSES_FILE} (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="longest test answer in tokens (default 256)")
    p.add_argument("--seed", type=int, default=123, help="random seed (default 123)")
    p.set_defaults(func=cmd_finetune_dpo)
    return p
