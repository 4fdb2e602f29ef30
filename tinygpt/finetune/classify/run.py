"""A whole classification fine-tuning run: settings, data, model, training, results, files
(what ``tinygpt finetune-classifier`` and ``examples/06_spam_classifier.py`` call)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tinygpt import backend
from tinygpt.finetune.base import check_vocabulary, load_base_model
from tinygpt.finetune.classify.checkpoint import save_classifier
from tinygpt.finetune.classify.data import (
    LABELS,
    ClassificationDataset,
    default_tokenizer,
    make_loader,
    sms_spam_splits,
)
from tinygpt.finetune.classify.model import Classifier, new_classifier, set_trainable
from tinygpt.finetune.classify.training import calc_accuracy_loader, train_classifier_simple
from tinygpt.finetune.outputs import require_empty_of_models
from tinygpt.nn.gpt import GPTModel
from tinygpt.nn.lora import apply_lora, lora_parameter_report
from tinygpt.optim import AdamW, param_groups_for_weight_decay
from tinygpt.plots import plot_classifier_history
from tinygpt.rundir import locked
from tinygpt.train import TrainingInterrupted

PLOT_NAME = "accuracy-loss.png"


@dataclass
class ClassifierTrainConfig:
    """Settings of a fine-tuning run (defaults: the book's chapter 6)."""

    epochs: int = 5
    batch_size: int = 8
    lr: float = 5e-5
    weight_decay: float = 0.1
    trainable: str = "last-block"
    max_length: int | None = None
    lora_rank: int = 0
    lora_alpha: float = 16.0
    eval_every: int = 50
    eval_iters: int = 5
    seed: int = 123

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_every", "eval_iters"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got "
                             f"{self.max_length}")


def _datasets(gpt, train_examples, val_examples, test_examples, cfg, tokenizer):
    """Train, validation and test sets, all cut to the training length (at most the
    model's context length)."""
    context = gpt.cfg.context_length
    if cfg.max_length is not None and cfg.max_length > context:
        raise ValueError(f"max_length {cfg.max_length} is longer than the model's context "
                         f"length {context}")
    train_set = ClassificationDataset(train_examples, tokenizer, cfg.max_length)
    if train_set.max_length > context:  # the longest message does not fit: cut it
        train_set = ClassificationDataset(train_examples, tokenizer, context)
    val_set = ClassificationDataset(val_examples, tokenizer, train_set.max_length)
    test_set = ClassificationDataset(test_examples, tokenizer, train_set.max_length)
    return train_set, val_set, test_set


def _prepare_model(gpt, cfg, labels, max_length, log) -> tuple[Classifier, dict]:
    """Swap in the class head, then freeze what does not train (or add LoRA)."""
    backend.manual_seed(cfg.seed)
    classifier = new_classifier(gpt, labels, max_length)
    if cfg.lora_rank:
        apply_lora(classifier.model, cfg.lora_rank, cfg.lora_alpha)
    else:
        set_trainable(classifier.model, cfg.trainable)
    counts = lora_parameter_report(classifier.model)
    what = (f"LoRA rank {cfg.lora_rank}, alpha {cfg.lora_alpha:g}" if cfg.lora_rank
            else cfg.trainable)
    log(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
        f"({counts['percent']:.2f}%), {what}")
    return classifier, counts


def finetune_classifier(gpt: GPTModel, train_examples, val_examples, test_examples,
                        cfg: ClassifierTrainConfig | None = None, out_dir=None, tokenizer=None,
                        labels=LABELS, log=print):
    """Fine-tune ``gpt`` as a classifier; returns (classifier, results).

    ``results`` holds the full-set train/validation/test accuracies, the history, the
    trainable parameter counts and the wall time. With ``out_dir``, the classifier
    (``save_classifier``) and ``accuracy-loss.png`` are written there. With
    ``cfg.lora_rank`` > 0, ``apply_lora`` wraps every Linear layer (the new head too) and
    only the LoRA matrices train, as in the book's appendix E; ``cfg.trainable`` is then
    not used. Weight decay applies to weight matrices only (not biases or LayerNorm
    parameters, as ``tinygpt train`` does); the book decays every parameter.
    """
    cfg = cfg or ClassifierTrainConfig()
    start = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    check_vocabulary(gpt, "classification")
    train_set, val_set, test_set = _datasets(gpt, train_examples, val_examples, test_examples,
                                             cfg, tokenizer)
    log(f"{len(train_set)} training, {len(val_set)} validation, {len(test_set)} test "
        f"messages; max_length {train_set.max_length} tokens")
    classifier, counts = _prepare_model(gpt, cfg, labels, train_set.max_length, log)
    groups = param_groups_for_weight_decay(classifier.model.named_parameters(),
                                           cfg.weight_decay)
    optimizer = AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, drop_last=True,
                               seed=cfg.seed)
    train_eval_loader = make_loader(train_set, cfg.batch_size)
    val_loader = make_loader(val_set, cfg.batch_size)
    test_loader = make_loader(test_set, cfg.batch_size)
    try:
        history = train_classifier_simple(classifier, train_loader, val_loader, optimizer,
                                          cfg.epochs, cfg.eval_every, cfg.eval_iters,
                                          train_eval_loader=train_eval_loader, log=log)
    except TrainingInterrupted as interrupt:  # keep what was trained, then stop
        if out_dir is not None:
            save_classifier(classifier, out_dir)
            interrupt.args = (f"{interrupt}: the classifier trained so far is saved in "
                              f"{out_dir} (finetune-classifier does not resume; start again "
                              "with a new --out)",)
        raise
    results = {
        "train_accuracy": calc_accuracy_loader(classifier, train_eval_loader),
        "val_accuracy": calc_accuracy_loader(classifier, val_loader),
        "test_accuracy": calc_accuracy_loader(classifier, test_loader),
        "trainable_parameters": counts["trainable"], "total_parameters": counts["total"],
        "history": asdict(history), "config": asdict(cfg),
    }
    classifier.model.eval()
    if out_dir is not None:
        save_classifier(classifier, out_dir)
        results["plot"] = str(plot_classifier_history(history, Path(out_dir) / PLOT_NAME))
    results["seconds"] = time.perf_counter() - start
    log(f"Training accuracy: {results['train_accuracy'] * 100:.2f}%")
    log(f"Validation accuracy: {results['val_accuracy'] * 100:.2f}%")
    log(f"Test accuracy: {results['test_accuracy'] * 100:.2f}%")
    return classifier, results


def run_classifier_finetuning(data: Path, model: str, out: Path, cfg: ClassifierTrainConfig,
                              log=print):
    """``tinygpt finetune-classifier``: the SMS Spam Collection at ``data``, the base
    ``model`` (any fine-tuning ``--model`` name, ``scratch`` included), results in ``out``."""
    data = Path(data)
    if not data.is_file():
        raise FileNotFoundError(f"--data {data}: no such file")
    with locked(out):  # one writer at a time in --out
        require_empty_of_models(out, "finetune-classifier")
        train_examples, val_examples, test_examples = sms_spam_splits(data, seed=cfg.seed)
        gpt, tokenizer = load_base_model(model, seed=cfg.seed)
        classifier, results = finetune_classifier(gpt, train_examples, val_examples,
                                                  test_examples, cfg, out_dir=out,
                                                  tokenizer=tokenizer, log=log)
    log(f"saved the classifier to {out} ({results['seconds']:.0f} s); plot: {results['plot']}")
    return classifier, results
