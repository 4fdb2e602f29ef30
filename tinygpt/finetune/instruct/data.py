"""Instruction examples as token ids and padded batches: the book's ``custom_collate_fn``
(section 7.3), in shuffled epochs (``tinygpt.data.EpochBatches``) for the training loop."""

from __future__ import annotations

import functools

import numpy

from tinygpt.data import EpochBatches
from tinygpt.finetune.alpaca import (
    END_OF_TEXT_ID,
    IGNORE_INDEX,
    encode,
    format_input,
    format_response,
)


def encode_entries(entries, tokenizer, mask_prompt=False) -> list:
    """Token ids per entry: the whole text (prompt + response) as one list, or with
    ``mask_prompt`` a ``(prompt_ids, response_ids)`` pair, where prompt_ids encode
    ``format_input(entry)`` exactly as the book's exercise 7.2 measures the instruction."""
    items = []
    for entry in entries:
        prompt = format_input(entry)
        full = encode(tokenizer, prompt + format_response(entry))
        if not mask_prompt:
            items.append(full)
            continue
        prompt_ids = encode(tokenizer, prompt)
        if full[:len(prompt_ids)] != prompt_ids:  # BPE merged across the seam: rare
            full = prompt_ids + encode(tokenizer, format_response(entry))
        items.append((prompt_ids, full[len(prompt_ids):]))
    return items


def _check_collate_args(batch, allowed_max_length, mask_prompt):
    if len(batch) == 0:
        raise ValueError("collate: the batch is empty")
    if allowed_max_length is not None and allowed_max_length < 1:
        raise ValueError(f"collate: allowed_max_length must be at least 1, got "
                         f"{allowed_max_length}")
    if mask_prompt:
        for i, item in enumerate(batch):
            if not (isinstance(item, (tuple, list)) and len(item) == 2
                    and not isinstance(item[0], (int, numpy.integer))):
                raise ValueError(f"collate(mask_prompt=True): item {i} must be a "
                                 "(prompt_ids, response_ids) pair")


def collate(batch, pad_token_id=END_OF_TEXT_ID, ignore_index=IGNORE_INDEX,
            allowed_max_length=None, mask_prompt=False):
    """The book's custom_collate_fn: token-id lists -> (inputs, targets) int64 arrays (B, T).

    Each item gets one <|endoftext|> (``pad_token_id``) appended and is padded with it to the
    longest item + 1; inputs drop the last token, targets the first. In the targets, every
    padding token after the first becomes ``ignore_index``: the model learns to emit one
    end-of-text, and the padding after it counts for nothing. Then rows are cut to
    ``allowed_max_length``.

    With ``mask_prompt=True`` each item is a ``(prompt_ids, response_ids)`` pair and the
    targets that predict prompt tokens (``targets[:len(prompt_ids) - 1]``) are also set to
    ``ignore_index``, so the loss covers the response only (the book's exercise 7.2).
    """
    _check_collate_args(batch, allowed_max_length, mask_prompt)
    if mask_prompt:
        prompt_lengths = [len(prompt) for prompt, _ in batch]
        sequences = [list(prompt) + list(response) for prompt, response in batch]
    else:
        prompt_lengths = None
        sequences = [list(item) for item in batch]
    batch_max_length = max(len(seq) + 1 for seq in sequences)
    inputs = numpy.empty((len(sequences), batch_max_length - 1), dtype=numpy.int64)
    targets = numpy.empty_like(inputs)
    for row, seq in enumerate(sequences):
        padded = seq + [pad_token_id] * (batch_max_length - len(seq))  # >= 1 pad token
        inputs[row] = padded[:-1]
        targets[row] = padded[1:]
        pads = numpy.flatnonzero(targets[row] == pad_token_id)
        targets[row, pads[1:]] = ignore_index  # keep the first end-of-text as a target
        if prompt_lengths is not None:
            targets[row, :max(prompt_lengths[row] - 1, 0)] = ignore_index
    if allowed_max_length is not None:
        inputs, targets = inputs[:, :allowed_max_length], targets[:, :allowed_max_length]
    return numpy.ascontiguousarray(inputs), numpy.ascontiguousarray(targets)


def instruction_batches(train_items, val_items, batch_size, seed=123,
                        pad_token_id=END_OF_TEXT_ID, ignore_index=IGNORE_INDEX,
                        allowed_max_length=None, mask_prompt=False) -> EpochBatches:
    """Shuffled epochs of ``collate``d batches for ``tinygpt.train.train``: batch ``i`` is a
    pure function of ``i`` (and ``seed``), so a resumed run sees the same data."""
    collate_batch = functools.partial(collate, pad_token_id=pad_token_id,
                                      ignore_index=ignore_index,
                                      allowed_max_length=allowed_max_length,
                                      mask_prompt=mask_prompt)
    return EpochBatches(list(train_items), list(val_items), batch_size, seed=seed,
                        collate=collate_batch)
