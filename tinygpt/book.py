"""The book's chapter helpers, under the book's names, for readers typing along.

*Build a Large Language Model (From Scratch)* defines these small functions in chapters 4
and 5 and uses them everywhere after; here they are, with the book's signatures, over
tinygpt's tensors (``device`` is accepted and ignored: tinygpt's backend decides):

    generate_text_simple(model, idx, max_new_tokens, context_size)       chapter 4, greedy
    text_to_token_ids(text, tokenizer)          "Every effort" -> (1, T) token ids
    token_ids_to_text(token_ids, tokenizer)     (1, T) token ids -> text
    calc_loss_batch(input_batch, target_batch, model, device=None)       chapter 5
    calc_loss_loader(data_loader, model, device=None, num_batches=None)  chapter 5

The book's ``generate`` (temperature and top-k) is ``tinygpt.generate``.
"""

from __future__ import annotations

import numpy

from tinygpt import backend
from tinygpt import functional as F
from tinygpt.generation import generate
from tinygpt.tensor import Tensor, tensor
from tinygpt.tokenizer import ENDOFTEXT


def _ids(token_ids) -> numpy.ndarray:
    """Token ids from a Tensor or any array-like, as a NumPy int64 array."""
    data = token_ids.data if isinstance(token_ids, Tensor) else token_ids
    return backend.to_numpy(data).astype(numpy.int64, copy=False)


def text_to_token_ids(text, tokenizer) -> Tensor:
    """The ids of ``text`` as a (1, T) tensor: a batch of one."""
    return tensor([tokenizer.encode(text, allowed_special={ENDOFTEXT})])


def token_ids_to_text(token_ids, tokenizer) -> str:
    """The text of a (1, T) batch of one (or a flat sequence) of token ids."""
    return tokenizer.decode(_ids(token_ids).reshape(-1).tolist())


def generate_text_simple(model, idx, max_new_tokens, context_size):
    """Greedy decoding, the book's first generation loop: append the most likely next
    token ``max_new_tokens`` times, looking at the last ``context_size`` tokens."""
    return tensor(generate(model, _ids(idx), max_new_tokens, context_size=context_size,
                           temperature=0.0))


def calc_loss_batch(input_batch, target_batch, model, device=None) -> Tensor:
    """Mean next-token cross-entropy of one batch: logits (B, T, V) flattened to (B*T, V)
    against the targets flattened to (B*T,)."""
    logits = model(input_batch)
    return F.cross_entropy(logits.flatten(0, 1), _ids(target_batch).reshape(-1))


def calc_loss_loader(data_loader, model, device=None, num_batches=None) -> float:
    """Mean ``calc_loss_batch`` over the first ``num_batches`` batches (all by default);
    nan for an empty loader, as the book's."""
    if len(data_loader) == 0:
        return float("nan")
    num_batches = len(data_loader) if num_batches is None else min(num_batches,
                                                                    len(data_loader))
    total_loss = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total_loss += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total_loss / num_batches
