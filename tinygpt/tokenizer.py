"""Text to token ids and back: every tokenizer by name, and which one a model folder uses.

The tokenizers live in ``tinygpt.tokenizers``, one module per kind:

* ``gpt2`` — ``gpt2_encoding()``, GPT-2's tokenizer to *use* (tiktoken, built offline);
* ``bpe`` — ``BPETokenizer``, the same algorithm to *read*, which can also learn merges;
* ``gpt2_files`` — GPT-2's ``encoder.json`` and ``vocab.bpe``, verified by SHA-256;
* ``chars`` — ``CharTokenizer``, one token per character.

This module keeps them importable from one place (``from tinygpt.tokenizer import
gpt2_encoding``) and records in a model's folder which one it was trained with
(``tokenizer.json``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tinygpt.fileio import atomic_write_text
from tinygpt.tokenizers.bpe import BPETokenizer
from tinygpt.tokenizers.chars import CharTokenizer
from tinygpt.tokenizers.gpt2 import gpt2_bpe, gpt2_encoding
from tinygpt.tokenizers.gpt2_files import (
    ENDOFTEXT,
    GPT2_FILE_SHA256,
    GPT2_PATTERN,
    GPT2_VOCAB_SIZE,
    bytes_to_unicode,
    gpt2_bpe_files,
)

__all__ = [
    "BPETokenizer", "CharTokenizer", "ENDOFTEXT", "GPT2_FILE_SHA256", "GPT2_PATTERN",
    "GPT2_VOCAB_SIZE", "TOKENIZER_FILE", "bytes_to_unicode", "gpt2_bpe", "gpt2_bpe_files",
    "gpt2_encoding", "load_tokenizer", "save_tokenizer",
]

TOKENIZER_FILE = "tokenizer.json"


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """Record in ``directory`` which tokenizer a trained model uses (GPT-2's or characters)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / TOKENIZER_FILE
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.save(path)
    else:
        atomic_write_text(path, json.dumps({"type": "gpt2"}))


def load_tokenizer(directory: str | os.PathLike | None):
    """The tokenizer saved by ``save_tokenizer`` in ``directory``; GPT-2's when there is
    none (or ``directory`` is None, as for GPT-2 checkpoints). A malformed file is a
    one-line ValueError naming it."""
    path = Path(directory) / TOKENIZER_FILE if directory is not None else None
    if path is None or not path.is_file():
        return gpt2_encoding()
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    kind = saved.get("type") if isinstance(saved, dict) else None
    if kind == "gpt2":
        return gpt2_encoding()
    if kind != "char":
        raise ValueError(f"{path}: expected an object with \"type\": \"char\" or \"gpt2\", "
                         f"got {saved!r:.80}")
    return CharTokenizer.from_saved(saved, path)
