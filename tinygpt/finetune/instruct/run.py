"""A whole instruction fine-tuning run (the book's chapter 7 end to end): settings, data,
model (optionally LoRA), training, saving, test responses and an optional judge."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from tinygpt import backend
from tinygpt.checkpoints import CHECKPOINT_NAME, checkpoint_step
from tinygpt.finetune.alpaca import (
    RESPONSES_FILE,
    format_input,
    load_entries,
    save_json,
    split_data,
)
from tinygpt.finetune.base import check_vocabulary, load_base_model
from tinygpt.finetune.instruct.data import encode_entries
from tinygpt.finetune.instruct.responses import generate_responses
from tinygpt.finetune.instruct.training import epoch_summary, finetune
from tinygpt.finetune.outputs import (
    LORA_DIR,
    plain_settings,
    record_settings,
    require_empty_of_models,
    settings_changes,
)
from tinygpt.nn.lora import apply_lora, merge_lora
from tinygpt.rundir import locked

# Settings that only shape what happens after training: a resumed run may change them.
AFTER_TRAINING = ("max_new_tokens", "num_test", "judge")


@dataclass
class JudgeSettings:
    """Where to send the test responses for scoring after training (see ``judge``)."""

    url: str
    api: str = "ollama"
    model: str = "llama3"


@dataclass
class InstructConfig:
    """Settings of ``tinygpt finetune-instruct`` (defaults: the book's chapter 7)."""

    data: Path
    out: Path
    model: str = "gpt2-medium"
    epochs: int = 2
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    allowed_max_length: int = 1024
    mask_prompt: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    max_new_tokens: int = 256
    num_test: int | None = None
    eval_every: int = 5
    eval_iters: int = 5
    seed: int = 123
    judge: JudgeSettings | None = None

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        for name in ("epochs", "batch_size", "allowed_max_length", "eval_every", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tuning), got "
                             f"{self.lora_rank}")
        if self.max_new_tokens < 0 or (self.num_test is not None and self.num_test < 0):
            raise ValueError("max_new_tokens and num_test must be >= 0")


def save_model(model, out_dir, tokenizer=None) -> Path:
    """Save a (merged) fine-tuned model to ``out_dir`` in Hugging Face layout
    (config.json + model.safetensors), which ``--model DIR`` loads."""
    from tinygpt.tokenizer import save_tokenizer
    from tinygpt.weights import save_pretrained

    save_pretrained(model, out_dir)
    if tokenizer is not None:
        save_tokenizer(tokenizer, Path(out_dir))
    return Path(out_dir)


def _log_epochs(history, batches, log):
    for row in epoch_summary(history, batches.batches_per_epoch):
        extra = (f", train loss {row['train_loss']:.3f}, val loss {row['val_loss']:.3f}"
                 if "val_loss" in row else "")
        log(f"epoch {row['epoch']}: mean step loss {row['mean_step_loss']:.3f}{extra}")


def _save_trained(model, tokenizer, cfg, history, log):
    """The merged model (LoRA) or the training checkpoint already there, and the plot."""
    from tinygpt.tokenizer import save_tokenizer

    if cfg.lora_rank:
        merge_lora(model)
        log(f"model (LoRA merged): {save_model(model, cfg.out, tokenizer)}")
    else:
        save_tokenizer(tokenizer, cfg.out)
        log(f"checkpoint: {cfg.out / 'checkpoint.safetensors'}")
    if history.steps:
        from tinygpt.plots import plot_losses

        log(f"loss plot: {plot_losses(history, cfg.out / 'losses.png')}")


def _test_responses(model, tokenizer, test_entries, cfg, log) -> list[dict]:
    model.eval()
    test = test_entries[:cfg.num_test] if cfg.num_test is not None else test_entries
    responses = generate_responses(model, tokenizer, test, cfg.max_new_tokens)
    log(f"test responses: {save_json(responses, cfg.out / RESPONSES_FILE)}")
    for entry in responses[:3]:
        log("-" * 40)
        log(format_input(entry))
        log(f"\nCorrect response:\n>> {entry['output']}")
        log(f"\nModel response:\n>> {entry['model_response']}")
    return responses


def _training_settings(cfg: InstructConfig) -> dict:
    """The settings a resumed run must share with the run it continues."""
    settings = plain_settings(cfg)
    settings["data"] = str(cfg.data.resolve())
    for key in ("out", *AFTER_TRAINING):
        settings.pop(key)
    return settings


def _check_out(cfg: InstructConfig, steps: int, log) -> None:
    """Start a new run in ``cfg.out``, or resume the one there if it has the same settings;
    refuse anything else (another model there, other settings, a run already done)."""
    settings = _training_settings(cfg)
    changes = settings_changes(cfg.out, settings)
    checkpoint = _train_dir(cfg) / CHECKPOINT_NAME
    if changes is None or not checkpoint.is_file():  # nothing trained there yet
        require_empty_of_models(cfg.out, "finetune-instruct")
        record_settings(cfg.out, settings)
        return
    if changes:
        raise ValueError(f"--out {cfg.out} holds a run with other settings: "
                         f"{'; '.join(changes)}. Run it with its own settings to resume it, "
                         "or choose a new --out")
    done = checkpoint_step(checkpoint)
    responses = cfg.out / RESPONSES_FILE
    if done >= steps and responses.is_file():
        raise ValueError(f"--out {cfg.out} holds a finished run ({done} of {steps} steps) "
                         f"and its test responses ({responses}); choose a new --out to train "
                         "again")
    log(f"resuming the run in {cfg.out} at step {done} of {steps} (same settings)")


def _train_dir(cfg: InstructConfig) -> Path:
    return cfg.out / LORA_DIR if cfg.lora_rank else cfg.out


def _read_split(cfg: InstructConfig, log):
    """The data set, split 85/10/5 as in the book."""
    entries = load_entries(cfg.data)
    split = split_data(entries)
    log(f"data: {len(entries)} entries -> {len(split.train)} train, {len(split.val)} "
        f"validation, {len(split.test)} test")
    if not split.val:
        raise ValueError(f"{cfg.data} has too few entries ({len(entries)}) for a validation "
                         "split; the book's 85/10/5 split needs at least 10")
    return split


def _starting_model(cfg: InstructConfig, log):
    """(model, tokenizer): the base model, with LoRA layers when asked for."""
    model, tokenizer = load_base_model(cfg.model, seed=cfg.seed)
    check_vocabulary(model, "instruction fine-tuning")
    if cfg.lora_rank:
        backend.manual_seed(cfg.seed)  # LoRA's A matrices start random: same seed, same run
        apply_lora(model, rank=cfg.lora_rank, alpha=cfg.lora_alpha)
    trainable = model.num_parameters(trainable_only=True)
    log(f"model: {cfg.model}, {model.num_parameters():,} parameters ({trainable:,} "
        f"trainable){', LoRA rank %d' % cfg.lora_rank if cfg.lora_rank else ''}")
    return model, tokenizer


def _judge(responses, cfg: InstructConfig, log) -> None:
    from tinygpt.finetune.judge import score_responses

    result = score_responses(responses, model=cfg.judge.model, url=cfg.judge.url,
                             api=cfg.judge.api)
    log(result.summary())


def run_instruction_finetuning(cfg: InstructConfig, log=print):
    """The whole chapter-7 flow for ``tinygpt finetune-instruct`` and the example script.
    Returns (history, responses).

    Interrupted (Ctrl-C or SIGTERM), the training loop saves its checkpoint and raises
    ``tinygpt.train.TrainingInterrupted``, which ends the run: nothing after training
    (the merged model, test responses, the judge) runs on a half-trained model."""
    with locked(cfg.out):  # one writer at a time in --out
        split = _read_split(cfg, log)
        steps = cfg.epochs * (len(split.train) // cfg.batch_size)
        _check_out(cfg, steps, log)
        model, tokenizer = _starting_model(cfg, log)
        train_items = encode_entries(split.train, tokenizer, mask_prompt=cfg.mask_prompt)
        val_items = encode_entries(split.val, tokenizer, mask_prompt=cfg.mask_prompt)
        start = time.perf_counter()
        history, batches = finetune(
            model, train_items, val_items, epochs=cfg.epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, weight_decay=cfg.weight_decay,
            allowed_max_length=cfg.allowed_max_length, mask_prompt=cfg.mask_prompt,
            seed=cfg.seed, eval_every=cfg.eval_every, eval_iters=cfg.eval_iters,
            out_dir=_train_dir(cfg), log=log)
        log(f"training completed in {(time.perf_counter() - start) / 60:.2f} minutes")
        _log_epochs(history, batches, log)
        _save_trained(model, tokenizer, cfg, history, log)
        responses = _test_responses(model, tokenizer, split.test, cfg, log)
        if cfg.judge is not None:
            _judge(responses, cfg, log)
        return history, responses
