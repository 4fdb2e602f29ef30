"""Preference data as token ids and padded batches with response masks (the book's
PreferenceDataset and DPO collate function)."""

from __future__ import annotations

import numpy

from tinygpt.finetune.alpaca import (
    END_OF_TEXT_ID,
    RESPONSE_HEADER,
    encode,
    format_input,
    validate_entries,
)

PREFERENCE_KEYS = ("instruction", "chosen", "rejected")


def encode_preference_entries(entries, tokenizer) -> list[dict]:
    """Token ids per entry, as the book's PreferenceDataset: the prompt alone, and the prompt
    followed by "\\n\\n### Response:\\n" and the chosen (rejected) response."""
    validate_entries(entries, "preference data", keys=PREFERENCE_KEYS)
    items = []
    for entry in entries:
        prompt = format_input(entry)
        items.append({
            "prompt": encode(tokenizer, prompt),
            "chosen": encode(tokenizer, f"{prompt}{RESPONSE_HEADER}{entry['chosen']}"),
            "rejected": encode(tokenizer, f"{prompt}{RESPONSE_HEADER}{entry['rejected']}"),
        })
    return items


def collate_preference(batch, pad_token_id=END_OF_TEXT_ID, allowed_max_length=None,
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
