"""Classification fine-tuning (the book's chapter 6): a GPT that tells spam from ham.

The pipeline, as in the book:

    read the SMS Spam Collection (label TAB text)    read_labeled_tsv
    undersample "ham" to as many as "spam" (seeded)  balance
    split 70 / 10 / 20 (seeded shuffle)              split_examples
    tokenize with GPT-2's BPE, pad with 50256        ClassificationDataset
    replace the vocabulary head by a 2-class head    ClassifierModel
    train the last block, final norm and head        set_trainable / apply_lora
    AdamW, lr 5e-5, weight decay 0.1, 5 epochs       train_classifier_simple
    loss / accuracy plots, test accuracy, classify   plot_classifier_history, classify

One thing is done better than the book. The book reads the logits at the *last position*
of every (padded) row; for a short message that position is a padding token, so the
prediction depends on how much padding the batch happened to need (causal attention lets
that position see the message, which is why the book's version still works). Here
``ClassifierModel`` reads the hidden state of each row's *last real token* (index
``length - 1``): causal attention means nothing after that token can reach it, so appending
padding changes nothing, and each batch is cut to its own longest message (saving time,
with the same result as padding everything to the longest message in the data set).

    tinygpt finetune-classifier --data SMSSpamCollection.tsv --model gpt2 --out runs/spam
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.config import GPTConfig
from tinygpt.fileio import atomic_write, atomic_write_text
from tinygpt.nn.gpt import GPTModel
from tinygpt.nn.layers import Linear
from tinygpt.nn.lora import LoRALinear, apply_lora, lora_parameter_report
from tinygpt.nn.module import Module
from tinygpt.plots import plot_classifier_history
from tinygpt.tensor import Tensor, no_grad

LABELS = ("ham", "spam")  # class 0, class 1 (the book's "not spam" / "spam")
PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, the book's padding token
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = "classifier.json"
FORMAT = "tinygpt-classifier-1"


# ----------------------------------------------------------------------------- data

def read_labeled_tsv(path, labels=LABELS) -> list[tuple[int, str]]:
    """(class index, text) for every line ``label<TAB>text`` of a UTF-8 file.

    The label is looked up in ``labels`` (its position is the class index); the text is
    everything after the first tab. Blank lines are skipped. A line without a tab, with an
    unknown label or with no text, or a file holding no messages, is a ValueError naming the
    file and line.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(labels)}
    examples = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            shown = line if len(line) <= 60 else line[:57] + "..."
            if "\t" not in line:
                raise ValueError(f"{path}, line {number}: expected 'label<TAB>text', found no "
                                 f"tab in {shown!r}")
            label, text = line.split("\t", 1)
            if label not in index:
                raise ValueError(f"{path}, line {number}: unknown label {label!r}; expected "
                                 f"one of {', '.join(map(repr, labels))}")
            if not text.strip():
                raise ValueError(f"{path}, line {number}: the message after the tab is empty")
            examples.append((index[label], text))
    if not examples:
        raise ValueError(f"{path} holds no messages (expected lines 'label<TAB>text')")
    return examples


def balance(examples, seed=123) -> list[tuple[int, str]]:
    """Undersample every class to the size of the smallest (the book keeps 747 "ham" for
    747 "spam"). Which examples survive depends on ``seed``; the result lists class 0's
    examples first, then class 1's, ... (``split_examples`` shuffles)."""
    rng = numpy.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for example in examples:
        by_class.setdefault(example[0], []).append(example)
    if not by_class:
        raise ValueError("balance: no examples")
    smallest = min(len(group) for group in by_class.values())
    out = []
    for label in sorted(by_class):
        group = by_class[label]
        keep = sorted(rng.choice(len(group), size=smallest, replace=False))
        out.extend(group[i] for i in keep)
    return out


def split_examples(examples, train_frac=0.7, validation_frac=0.1, seed=123):
    """Shuffle (seeded) and cut into (train, validation, test), as the book's random_split:
    the first int(n * train_frac) for training, the next int(n * validation_frac) for
    validation, the rest (about 20%) for testing."""
    if not (0 < train_frac and 0 <= validation_frac and train_frac + validation_frac <= 1):
        raise ValueError(f"split fractions must be positive and add up to at most 1, got "
                         f"train {train_frac}, validation {validation_frac}")
    order = numpy.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    return shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]


def sms_spam_splits(path, seed=123, labels=LABELS):
    """The book's data pipeline in one call: read, balance, split 70/10/20."""
    return split_examples(balance(read_labeled_tsv(path, labels), seed=seed), seed=seed)


def download_sms_spam(cache_dir=None) -> Path:
    """The SMS Spam Collection as a local TSV file, downloaded once from the UCI archive.

    The zip goes to ``cache_dir`` (default ``~/.cache/tinygpt``) through
    ``tinygpt.download``; its ``SMSSpamCollection`` member is extracted beside it as
    ``SMSSpamCollection.tsv``, atomically (a failed extraction leaves no file behind).
    """
    import zipfile

    from tinygpt.download import DEFAULT_CACHE_DIR, fetch_data

    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    target = folder / "SMSSpamCollection.tsv"
    if target.is_file():
        return target
    archive = fetch_data(SMS_SPAM_URL, None, cache_dir=folder)
    try:
        with zipfile.ZipFile(archive) as z:
            members = [n for n in z.namelist() if Path(n).name == "SMSSpamCollection"]
            if not members:
                raise ValueError(f"{archive} holds no SMSSpamCollection file (it has: "
                                 f"{', '.join(z.namelist())})")
            data = z.read(members[0])
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a valid zip file ({err}); delete it to download "
                         "it again") from None
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def _encode(tokenizer, text) -> list[int]:
    """GPT-2 ids of ``text``; a literal "<|endoftext|>" in a message is ordinary text."""
    try:
        return list(tokenizer.encode(text, disallowed_special=()))
    except TypeError:  # a tokenizer without tiktoken's keyword
        return list(tokenizer.encode(text))


def _default_tokenizer():
    from tinygpt.tokenizer import gpt2_encoding

    return gpt2_encoding()


class ClassificationDataset:
    """Tokenized messages padded to one length (the book's ``SpamDataset``).

    ``max_length=None`` pads to the longest message; a number truncates longer messages to
    their first ``max_length`` tokens (pass the training set's ``max_length`` to the
    validation and test sets, as the book does). ``ids`` is (N, max_length) int64 padded with
    ``pad_token_id``; ``lengths`` holds each message's real token count; ``labels`` the
    class indices. Item i is ``(ids[i], lengths[i], labels[i])``.
    """

    def __init__(self, examples, tokenizer=None, max_length=None, pad_token_id=PAD_TOKEN_ID):
        if not examples:
            raise ValueError("ClassificationDataset: no examples")
        tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
        encoded = [_encode(tokenizer, text) for _, text in examples]
        for (_, text), ids in zip(examples, encoded):
            if not ids:
                raise ValueError(f"the message {text!r} encodes to no tokens")
        longest = max(len(ids) for ids in encoded)
        if max_length is None:
            max_length = longest
        elif int(max_length) < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
        self.max_length = int(max_length)
        self.pad_token_id = pad_token_id
        n = len(encoded)
        self.ids = numpy.full((n, self.max_length), pad_token_id, dtype=numpy.int64)
        self.lengths = numpy.empty(n, dtype=numpy.int64)
        for i, ids in enumerate(encoded):
            ids = ids[:self.max_length]
            self.ids[i, :len(ids)] = ids
            self.lengths[i] = len(ids)
        self.labels = numpy.array([label for label, _ in examples], dtype=numpy.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.ids[i], self.lengths[i], self.labels[i]


def collate(samples):
    """A batch (ids, lengths, labels), cut to its own longest message: with causal attention
    and last-real-token reading, padding beyond that changes nothing, only costs time."""
    ids, lengths, labels = (numpy.stack(field) for field in zip(*samples))
    return ids[:, :int(lengths.max())], lengths, labels


def make_loader(dataset, batch_size, shuffle=False, drop_last=False, seed=None):
    """A ``tinygpt.data.DataLoader`` of (ids, lengths, labels) batches."""
    from tinygpt.data import DataLoader

    return DataLoader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      collate_fn=collate)


# ----------------------------------------------------------------------------- model

class ClassifierModel(Module):
    """A GPT body with a ``num_classes`` head read at each message's last real token.

    It takes over the GPT's embeddings, transformer blocks and final norm (the same objects,
    so parameter names stay the book's: ``tok_emb.weight``, ``trf_blocks.11.norm1.scale``,
    ...), drops the vocabulary head and puts ``out_head = Linear(emb_dim, num_classes)`` in
    its place, as the book's ``model.out_head = torch.nn.Linear(768, 2)``.

    ``model(ids, lengths)`` returns (batch, num_classes) logits computed from the hidden state
    at position ``lengths[i] - 1`` of row i: the last real token, not the book's last
    position (``model(input_batch)[:, -1, :]``), which for a padded message is a padding
    token whose logits shift with the amount of padding. Without ``lengths`` they are found from the
    padding: each row's length is its position after the last token that is not
    ``pad_token_id``. ``lengths = [T] * batch`` gives the book's last-position reading.
    """

    def __init__(self, gpt: GPTModel, num_classes=2, labels=None, pad_token_id=PAD_TOKEN_ID,
                 max_length=None):
        if int(num_classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        labels = tuple(labels) if labels is not None else tuple(
            LABELS if num_classes == 2 else (str(i) for i in range(num_classes)))
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels {labels} for {num_classes} classes")
        self.cfg = gpt.cfg
        self.num_classes, self.labels = int(num_classes), labels
        self.pad_token_id, self.max_length = pad_token_id, max_length
        self.tok_emb = gpt.tok_emb
        self.pos_emb = gpt.pos_emb
        self.drop_emb = gpt.drop_emb
        self.trf_blocks = gpt.trf_blocks
        self.final_norm = gpt.final_norm
        dtype = gpt.tok_emb.weight.dtype
        self.out_head = Linear(self.cfg.emb_dim, self.num_classes, dtype=dtype)
        self.training = gpt.training

    def lengths_from_padding(self, ids):
        """Each row's length: one past its last token that is not padding (at least 1)."""
        ids = backend.move(ids, "numpy") if backend.is_array(ids) else numpy.asarray(ids)
        real = ids != self.pad_token_id
        T = ids.shape[1]
        last = T - 1 - numpy.argmax(real[:, ::-1], axis=1)  # last real position
        return numpy.where(real.any(axis=1), last + 1, 1)

    def hidden_states(self, ids) -> Tensor:
        """(B, T, emb_dim) after the final norm: the GPT without its head."""
        B, T = ids.shape
        positions = backend.xp().arange(T)
        x = self.drop_emb(self.tok_emb(ids) + self.pos_emb(positions))
        for block in self.trf_blocks:
            x = block(x)
        return self.final_norm(x)

    def forward(self, ids, lengths=None) -> Tensor:
        ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        if ids.ndim != 2 or not numpy.issubdtype(ids.dtype, numpy.integer):
            raise ValueError(f"ClassifierModel expects token ids of shape (batch, tokens) and "
                             f"an integer dtype, got shape {ids.shape} and dtype {ids.dtype}")
        B, T = ids.shape
        if T > self.cfg.context_length:
            raise ValueError(f"{T} tokens are more than the model's context length "
                             f"{self.cfg.context_length}; truncate the messages (max_length)")
        if lengths is None:
            lengths = self.lengths_from_padding(ids)
        lengths = numpy.asarray(backend.move(lengths, "numpy") if backend.is_array(lengths)
                                else lengths).astype(numpy.int64).reshape(-1)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must hold one length in 1..{T} per row ({B} rows), "
                             f"got {lengths.tolist()}")
        h = self.hidden_states(ids)
        xp = backend.xp()
        last = h[xp.arange(B), xp.asarray(lengths - 1)]  # (B, emb_dim)
        return self.out_head(last)

    @property
    def lora(self):
        """(rank, alpha) when LoRA layers are in the model, else None."""
        for m in self.modules():
            if isinstance(m, LoRALinear):
                return m.rank, m.alpha
        return None


def parse_trainable(spec: str, n_layers: int):
    """How many of the last blocks train: None for "all", 0 for "head", 1 for "last-block",
    N for "last-N"."""
    spec = str(spec).strip().lower()
    if spec == "all":
        return None
    if spec == "head":
        return 0
    if spec == "last-block":
        return 1
    if spec.startswith("last-") and spec[5:].isdigit():
        n = int(spec[5:])
        if not 1 <= n <= n_layers:
            raise ValueError(f"trainable {spec!r}: the model has {n_layers} transformer "
                             f"blocks, so N must be between 1 and {n_layers}")
        return n
    raise ValueError(f"trainable must be 'all', 'head', 'last-block' or 'last-N' (N blocks), "
                     f"got {spec!r}")


def set_trainable(model: ClassifierModel, spec="last-block") -> list[str]:
    """Freeze the model except the chosen part; returns the names of trainable parameters.

    "last-block" (the book's choice) trains the last transformer block, the final norm and
    the head; "last-N" the last N blocks, the final norm and the head; "head" the head only;
    "all" everything.
    """
    n = parse_trainable(spec, len(model.trf_blocks))
    if n is None:
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
        if n:
            for block in list(model.trf_blocks)[-n:]:
                block.requires_grad_(True)
            model.final_norm.requires_grad_(True)
        model.out_head.requires_grad_(True)
    return [name for name, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- training

def calc_loss_batch(model, ids, lengths, labels) -> Tensor:
    """Mean cross-entropy of one batch's class logits against its labels."""
    return F.cross_entropy(model(ids, lengths), backend.xp().asarray(labels))


def _batches(loader, num_batches):
    for i, batch in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        yield batch


def calc_loss_loader(model, loader, num_batches=None) -> float:
    """Mean batch loss over the first ``num_batches`` batches (all when None)."""
    with no_grad():
        losses = [calc_loss_batch(model, *batch).item() for batch in _batches(loader, num_batches)]
    return float(numpy.mean(losses)) if losses else float("nan")


def calc_accuracy_loader(model, loader, num_batches=None) -> float:
    """Share of correctly classified examples in the first ``num_batches`` batches."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    with no_grad():
        for ids, lengths, labels in _batches(loader, num_batches):
            predicted = backend.move(model(ids, lengths).data.argmax(axis=-1), "numpy")
            correct += int((predicted == labels).sum())
            seen += len(labels)
    model.train(was_training)
    return correct / seen if seen else float("nan")


def evaluate_model(model, train_loader, val_loader, eval_iter):
    """(train loss, validation loss) over ``eval_iter`` batches each, in eval mode."""
    was_training = model.training
    model.eval()
    train_loss = calc_loss_loader(model, train_loader, eval_iter)
    val_loss = calc_loss_loader(model, val_loader, eval_iter)
    model.train(was_training)
    return train_loss, val_loss


@dataclass
class ClassifierHistory:
    """What ``train_classifier_simple`` measured: losses every ``eval_freq`` steps,
    accuracies (over ``eval_iter`` batches) after every epoch."""

    steps: list = field(default_factory=list)
    examples_seen: list = field(default_factory=list)
    train_losses: list = field(default_factory=list)
    val_losses: list = field(default_factory=list)
    train_accs: list = field(default_factory=list)
    val_accs: list = field(default_factory=list)
    num_epochs: int = 0
    total_examples: int = 0


def train_classifier_simple(model, train_loader, val_loader, optimizer, num_epochs,
                            eval_freq=50, eval_iter=5, train_eval_loader=None,
                            log=print) -> ClassifierHistory:
    """The book's ``train_classifier_simple``: ``num_epochs`` passes over ``train_loader``.

    After the first step and every ``eval_freq`` steps the loss over ``eval_iter`` batches of
    training and validation data is recorded; after each epoch, the accuracy over
    ``eval_iter`` batches of each. Training-set figures come from ``train_eval_loader`` when
    given (a fixed, unshuffled loader, so the numbers compare from one evaluation to the next),
    else from ``train_loader`` as in the book.
    """
    history = ClassifierHistory(num_epochs=num_epochs)
    train_eval_loader = train_eval_loader if train_eval_loader is not None else train_loader
    examples_seen, global_step = 0, -1
    for epoch in range(num_epochs):
        model.train()
        for ids, lengths, labels in train_loader:
            optimizer.zero_grad()
            loss = calc_loss_batch(model, ids, lengths, labels)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"the loss became {loss.item()} at epoch {epoch + 1}, step "
                                   f"{global_step + 2}; try a lower learning rate")
            loss.backward()
            optimizer.step()
            examples_seen += len(labels)
            global_step += 1
            if global_step % eval_freq == 0:
                train_loss, val_loss = evaluate_model(model, train_eval_loader, val_loader,
                                                      eval_iter)
                history.steps.append(global_step)
                history.examples_seen.append(examples_seen)
                history.train_losses.append(train_loss)
                history.val_losses.append(val_loss)
                log(f"Ep {epoch + 1} (Step {global_step:06d}): "
                    f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}")
        train_acc = calc_accuracy_loader(model, train_eval_loader, eval_iter)
        val_acc = calc_accuracy_loader(model, val_loader, eval_iter)
        history.train_accs.append(train_acc)
        history.val_accs.append(val_acc)
        log(f"Training accuracy: {train_acc * 100:.2f}% | "
            f"Validation accuracy: {val_acc * 100:.2f}%")
    optimizer.zero_grad()
    history.total_examples = examples_seen
    return history


# ----------------------------------------------------------------------------- using it

def classify(model: ClassifierModel, text: str, tokenizer=None, max_length=None) -> str:
    """The label of one message (the book's ``classify_review``).

    The text is cut to ``max_length`` tokens (by default the training length stored in the
    model, and never more than the context length); no padding is needed, since the model
    reads the last real token.
    """
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
    ids = _encode(tokenizer, text)
    if not ids:
        raise ValueError("classify: the text is empty")
    limit = max_length or model.max_length or model.cfg.context_length
    ids = ids[:min(limit, model.cfg.context_length)]
    was_training = model.training
    model.eval()
    with no_grad():
        logits = model(numpy.array([ids], dtype=numpy.int64), [len(ids)])
    model.train(was_training)
    return model.labels[int(logits.data.argmax())]


classify_review = classify


def save_classifier(model: ClassifierModel, directory) -> Path:
    """Write ``classifier.safetensors`` (the state dict) and ``classifier.json`` (GPT config,
    classes, padding, max length, LoRA rank/alpha) into ``directory``, each atomically."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    tensors = {k: numpy.ascontiguousarray(backend.move(v, "numpy"))
               for k, v in model.state_dict().items()}
    lora = model.lora
    config = {
        "format": FORMAT, "model_config": model.cfg.to_dict(),
        "num_classes": model.num_classes, "labels": list(model.labels),
        "pad_token_id": model.pad_token_id, "max_length": model.max_length,
        "lora": None if lora is None else {"rank": lora[0], "alpha": lora[1]},
    }
    atomic_write(directory / WEIGHTS_NAME,
                 lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
    return directory


def load_classifier(directory) -> ClassifierModel:
    """A classifier written by ``save_classifier``, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no saved classifier: {path.name} is "
                                    f"missing (save_classifier writes {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path} is not a tinygpt classifier config "
                         f"(format {config.get('format')!r}, expected {FORMAT!r})")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from None
    gpt = GPTModel(GPTConfig(**config["model_config"]))
    model = ClassifierModel(gpt, config["num_classes"], config["labels"],
                            config["pad_token_id"], config["max_length"])
    if config.get("lora"):
        apply_lora(model, config["lora"]["rank"], config["lora"]["alpha"])
    model.load_state_dict(tensors)
    return model.eval()


# ----------------------------------------------------------------------------- the whole run

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
    eval_freq: int = 50
    eval_iter: int = 5
    seed: int = 123

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_freq", "eval_iter"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def finetune_classifier(gpt: GPTModel, train_examples, val_examples, test_examples,
                        cfg: ClassifierTrainConfig | None = None, out_dir=None, tokenizer=None,
                        labels=LABELS, log=print):
    """Fine-tune ``gpt`` as a classifier; returns (model, results).

    ``results`` holds the full-set train/validation/test accuracies, the history, the
    trainable parameter counts and the wall time. With ``out_dir``, the classifier
    (``save_classifier``) and ``accuracy-loss.png`` are written there. With
    ``cfg.lora_rank`` > 0, ``apply_lora`` wraps every Linear layer (the new head too) and
    only the LoRA matrices train, as in the book's appendix E; ``cfg.trainable`` is then
    not used. Weight decay applies to weight matrices only (not biases or LayerNorm
    parameters, as ``tinygpt train`` does); the book decays every parameter.
    """
    from tinygpt.optim import AdamW, param_groups_for_weight_decay

    cfg = cfg or ClassifierTrainConfig()
    start = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else _default_tokenizer()
    context = gpt.cfg.context_length
    if cfg.max_length is not None and cfg.max_length > context:
        raise ValueError(f"max_length {cfg.max_length} is longer than the model's context "
                         f"length {context}")
    if gpt.cfg.vocab_size <= PAD_TOKEN_ID:
        raise ValueError(f"classification uses GPT-2's tokenizer (50257 ids, padding "
                         f"{PAD_TOKEN_ID}), but the model's vocabulary has "
                         f"{gpt.cfg.vocab_size} ids")
    train_set = ClassificationDataset(train_examples, tokenizer, cfg.max_length)
    if train_set.max_length > context:  # the longest message does not fit: cut it
        train_set = ClassificationDataset(train_examples, tokenizer, context)
    val_set = ClassificationDataset(val_examples, tokenizer, train_set.max_length)
    test_set = ClassificationDataset(test_examples, tokenizer, train_set.max_length)
    log(f"{len(train_set)} training, {len(val_set)} validation, {len(test_set)} test "
        f"messages; max_length {train_set.max_length} tokens")

    backend.manual_seed(cfg.seed)
    model = ClassifierModel(gpt, len(labels), labels, max_length=train_set.max_length)
    if cfg.lora_rank:
        apply_lora(model, cfg.lora_rank, cfg.lora_alpha)
    else:
        set_trainable(model, cfg.trainable)
    counts = lora_parameter_report(model)
    log(f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} "
        f"({counts['percent']:.2f}%)" + (f", LoRA rank {cfg.lora_rank}, alpha "
                                         f"{cfg.lora_alpha:g}" if cfg.lora_rank else
                                         f", {cfg.trainable}"))
    groups = param_groups_for_weight_decay(model.named_parameters(), cfg.weight_decay)
    optimizer = AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, drop_last=True,
                               seed=cfg.seed)
    train_eval_loader = make_loader(train_set, cfg.batch_size)
    val_loader = make_loader(val_set, cfg.batch_size)
    test_loader = make_loader(test_set, cfg.batch_size)
    history = train_classifier_simple(model, train_loader, val_loader, optimizer, cfg.epochs,
                                      cfg.eval_freq, cfg.eval_iter,
                                      train_eval_loader=train_eval_loader, log=log)
    results = {
        "train_accuracy": calc_accuracy_loader(model, train_eval_loader),
        "val_accuracy": calc_accuracy_loader(model, val_loader),
        "test_accuracy": calc_accuracy_loader(model, test_loader),
        "trainable_parameters": counts["trainable"], "total_parameters": counts["total"],
        "history": asdict(history), "config": asdict(cfg),
    }
    model.eval()
    if out_dir is not None:
        save_classifier(model, out_dir)
        results["plot"] = str(plot_classifier_history(history, Path(out_dir) /
                                                      "accuracy-loss.png"))
    results["seconds"] = time.perf_counter() - start
    log(f"Training accuracy: {results['train_accuracy'] * 100:.2f}%")
    log(f"Validation accuracy: {results['val_accuracy'] * 100:.2f}%")
    log(f"Test accuracy: {results['test_accuracy'] * 100:.2f}%")
    return model, results


# ----------------------------------------------------------------------------- command line

def cmd_finetune_classifier(args):
    from tinygpt.checkpoints import load_model

    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"error: --data {data}: no such file")
    train_examples, val_examples, test_examples = sms_spam_splits(data, seed=args.seed)
    gpt, _ = load_model(args.model)
    cfg = ClassifierTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, trainable=args.trainable, max_length=args.max_length,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, eval_freq=args.eval_freq,
        eval_iter=args.eval_iter, seed=args.seed)
    _, results = finetune_classifier(gpt, train_examples, val_examples, test_examples, cfg,
                                     out_dir=args.out)
    print(f"saved the classifier to {args.out} ({results['seconds']:.0f} s); plot: "
          f"{results['plot']}")


def add_parser(sub):
    """Register ``tinygpt finetune-classifier`` on an argparse sub-parsers object."""
    p = sub.add_parser(
        "finetune-classifier", help="fine-tune a GPT to classify SMS messages as spam or ham",
        description="Fine-tune a GPT as a spam classifier (the book's chapter 6): balance the "
                    "SMS Spam Collection, split it 70/10/20, replace the output head with a "
                    "2-class head and train it; prints the test accuracy and saves the "
                    "classifier and a loss/accuracy plot to --out.")
    p.add_argument("--data", required=True,
                   help="tab-separated file of 'label<TAB>message' lines with labels ham/spam "
                        "(the SMS Spam Collection)")
    p.add_argument("--model", default="gpt2",
                   help="the pretrained GPT to start from: a GPT-2 name (gpt2, gpt2-medium, "
                        "...: downloaded once), a Hugging Face directory, a .safetensors file, "
                        "or a directory written by `tinygpt train` (default: gpt2)")
    p.add_argument("--out", required=True,
                   help="directory for the classifier (classifier.safetensors + "
                        "classifier.json) and the plot")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training set "
                                                         "(default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="messages per step (default 8)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    p.add_argument("--weight-decay", type=float, default=0.1,
                   help="AdamW weight decay on weight matrices (default 0.1)")
    p.add_argument("--trainable", default="last-block",
                   help="what trains: all, head, last-block (the last transformer block, the "
                        "final norm and the head; default) or last-N (the last N blocks, "
                        "final norm and head); ignored with --lora-rank")
    p.add_argument("--max-length", type=int, default=None,
                   help="cut messages to this many tokens (default: the longest training "
                        "message, at most the context length)")
    p.add_argument("--lora-rank", type=int, default=0,
                   help="train LoRA matrices of this rank in every Linear layer instead of "
                        "the --trainable weights (0: no LoRA; the book uses 16)")
    p.add_argument("--lora-alpha", type=float, default=16.0,
                   help="LoRA scale: updates are multiplied by alpha/rank (default 16)")
    p.add_argument("--eval-freq", type=int, default=50,
                   help="optimizer steps between loss evaluations (default 50)")
    p.add_argument("--eval-iter", type=int, default=5,
                   help="batches per loss/accuracy evaluation during training (default 5)")
    p.add_argument("--seed", type=int, default=123,
                   help="seed of the balancing, the split, the head's initialisation and the "
                        "batch order (default 123)")
    p.set_defaults(func=cmd_finetune_classifier)
    return p
