"""The classifier: a GPTModel whose vocabulary head is swapped for a ``num_classes`` head,
read at each message's last real token; which of its parameters train; labelling a text.

The book reads the logits at the *last position* of every (padded) row; for a short message
that position is a padding token, so the prediction depends on how much padding the batch
happened to need. Here each row is read at its *last real token* (index ``length - 1``):
causal attention means nothing after that token can reach it, so padding changes nothing,
and each batch can be cut to its own longest message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy

from tinygpt import backend
from tinygpt.finetune.alpaca import END_OF_TEXT_ID, encode
from tinygpt.finetune.classify.data import LABELS, default_tokenizer
from tinygpt.nn import evaluating
from tinygpt.nn.gpt import GPTModel
from tinygpt.nn.layers import Linear
from tinygpt.nn.lora import LoRALinear
from tinygpt.tensor import Tensor, no_grad


def add_class_head(gpt: GPTModel, num_classes: int) -> GPTModel:
    """Swap ``gpt``'s vocabulary head for ``Linear(emb_dim, num_classes)``, in place (the
    book's ``model.out_head = torch.nn.Linear(768, 2)``); ``gpt(ids)`` then returns
    (B, T, num_classes) class logits at every position. Returns ``gpt``."""
    if int(num_classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    dtype = gpt.tok_emb.weight.dtype
    gpt.out_head = Linear(gpt.cfg.emb_dim, int(num_classes), dtype=dtype)
    return gpt


def lengths_from_padding(ids, pad_token_id=END_OF_TEXT_ID):
    """Each row's length: one past its last token that is not padding (at least 1)."""
    ids = backend.to_numpy(ids)
    real = ids != pad_token_id
    T = ids.shape[1]
    last = T - 1 - numpy.argmax(real[:, ::-1], axis=1)  # last real position
    return numpy.where(real.any(axis=1), last + 1, 1)


@dataclass
class Classifier:
    """A GPTModel with a class head (``add_class_head``) and the names of its classes.

    ``classifier(ids, lengths)`` returns (batch, num_classes) logits: the head applied to the
    hidden state (``GPTModel.hidden_states``) at position
    ``lengths[i] - 1`` of row i. Without ``lengths`` they are found from the padding
    (``lengths_from_padding``); ``lengths = [T] * batch`` gives the book's last-position
    reading. ``max_length`` is the training length, to which ``classify`` cuts new texts.
    """

    model: GPTModel
    labels: tuple = LABELS
    max_length: int | None = None
    pad_token_id: int = END_OF_TEXT_ID

    def __post_init__(self):
        self.labels = tuple(self.labels)
        classes = self.model.out_head.out_features
        if len(self.labels) != classes:
            raise ValueError(f"{len(self.labels)} labels {self.labels} for a head of "
                             f"{classes} classes")

    def __call__(self, ids, lengths=None) -> Tensor:
        ids = ids.data if isinstance(ids, Tensor) else backend.xp().asarray(ids)
        if lengths is None:
            lengths = lengths_from_padding(ids, self.pad_token_id)
        lengths = backend.to_numpy(lengths).astype(numpy.int64).reshape(-1)
        B, T = ids.shape
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must hold one length in 1..{T} per row ({B} rows), "
                             f"got {lengths.tolist()}")
        hidden = self.model.hidden_states(ids)  # (B, T, C); GPTModel checks ids and length
        xp = backend.xp()
        last = hidden[xp.arange(B), xp.asarray(lengths - 1)]  # (B, C): each last real token
        return self.model.out_head(last)  # (B, num_classes)

    @property
    def lora(self):
        """(rank, alpha) when LoRA layers are in the model, else None."""
        for m in self.model.modules():
            if isinstance(m, LoRALinear):
                return m.rank, m.alpha
        return None


def new_classifier(gpt: GPTModel, labels=LABELS, max_length=None,
                   pad_token_id=END_OF_TEXT_ID) -> Classifier:
    """A ``Classifier`` made from the pretrained ``gpt`` (its head swapped in place)."""
    return Classifier(add_class_head(gpt, len(labels)), labels, max_length, pad_token_id)


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


def set_trainable(model: GPTModel, spec="last-block") -> list[str]:
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


def classify(classifier: Classifier, text: str, tokenizer=None, max_length=None) -> str:
    """The label of one message (the book's ``classify_review``).

    The text is cut to ``max_length`` tokens (by default the training length stored in the
    classifier, and never more than the context length); no padding is needed, since the
    classifier reads the last real token.
    """
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
    ids = encode(tokenizer, text)
    if not ids:
        raise ValueError("classify: the text is empty")
    context = classifier.model.cfg.context_length
    limit = max_length or classifier.max_length or context
    ids = ids[:min(limit, context)]
    with evaluating(classifier.model), no_grad():
        logits = classifier(numpy.array([ids], dtype=numpy.int64), [len(ids)])
    return classifier.labels[int(logits.data.argmax())]
