"""A whole DPO run for ``tinygpt finetune-dpo``: preference data, the policy and its frozen
reference, training, the tuned model, its history and optional test responses."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinygpt.finetune.alpaca import RESPONSES_FILE, load_entries, save_json, split_data
from tinygpt.finetune.base import check_vocabulary, load_base_model
from tinygpt.finetune.dpo.data import PREFERENCE_KEYS, encode_preference_entries
from tinygpt.finetune.dpo.loss import make_reference
from tinygpt.finetune.dpo.training import DPOConfig, train_dpo
from tinygpt.finetune.instruct.responses import generate_responses
from tinygpt.finetune.instruct.run import save_model
from tinygpt.finetune.outputs import require_empty_of_models
from tinygpt.rundir import locked
from tinygpt.train import TrainingInterrupted

HISTORY_FILE = "dpo-history.json"


@dataclass
class DPORunConfig:
    """What ``tinygpt finetune-dpo`` reads and writes, with the training settings."""

    data: Path
    model: str
    out: Path
    train: DPOConfig = field(default_factory=DPOConfig)
    num_test: int = 0
    max_new_tokens: int = 256

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        if self.num_test < 0 or self.max_new_tokens < 0:
            raise ValueError("num_test and max_new_tokens must be >= 0")


def _save(policy, tokenizer, train_cfg, history, out, log, interrupted=False):
    """The tuned model (Hugging Face layout) and its history, beside each other in ``out``."""
    save_model(policy, out, tokenizer)
    log(f"model: {out}")
    history_path = save_json({"config": asdict(train_cfg), "interrupted": interrupted,
                              **asdict(history)}, out / HISTORY_FILE)
    log(f"history: {history_path}")


def run_dpo(cfg: DPORunConfig, log=print):
    """Preference-tune ``cfg.model`` on ``cfg.data`` and write the result to ``cfg.out``
    (holding ``cfg.out``'s lock meanwhile). Returns the history."""
    with locked(cfg.out):
        return _run_dpo(cfg, log)


def _run_dpo(cfg: DPORunConfig, log):
    require_empty_of_models(cfg.out, "finetune-dpo")
    entries = load_entries(cfg.data, PREFERENCE_KEYS, "preference data")
    split = split_data(entries)
    log(f"data: {len(entries)} pairs -> {len(split.train)} train, {len(split.val)} "
        f"validation, {len(split.test)} test")
    policy, tokenizer = load_base_model(cfg.model, seed=cfg.train.seed)
    check_vocabulary(policy, "DPO")
    reference = make_reference(policy)
    train_cfg = cfg.train
    if train_cfg.allowed_max_length is None or (
            train_cfg.allowed_max_length > policy.cfg.context_length):
        train_cfg = DPOConfig(**{**asdict(train_cfg),
                                 "allowed_max_length": policy.cfg.context_length})
    start = time.perf_counter()
    try:
        history = train_dpo(policy, reference,
                            encode_preference_entries(split.train, tokenizer),
                            encode_preference_entries(split.val, tokenizer), train_cfg, log=log)
    except TrainingInterrupted as interrupt:  # keep what was trained, then stop
        _save(policy, tokenizer, train_cfg, interrupt.history, cfg.out, log, interrupted=True)
        interrupt.args = (f"{interrupt}: the model trained so far is saved in {cfg.out} "
                          "(DPO does not resume; start again with a new --out)",)
        raise
    log(f"DPO training completed in {(time.perf_counter() - start) / 60:.2f} minutes")
    _save(policy, tokenizer, train_cfg, history, cfg.out, log)
    if cfg.num_test:
        test = [{**e, "output": e.get("output", e["chosen"])} for e in split.test]
        responses = generate_responses(policy.eval(), tokenizer, test[:cfg.num_test],
                                       cfg.max_new_tokens)
        log(f"test responses: {save_json(responses, cfg.out / RESPONSES_FILE)}")
    return history
