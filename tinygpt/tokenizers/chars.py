"""Characters as tokens: nanoGPT's Shakespeare tokenizer (65 symbols)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tinygpt.fileio import atomic_write_text


class CharTokenizer:
    """One token per character, over the characters of a training text (nanoGPT's
    Shakespeare setup: 65 symbols). Same calling convention as tiktoken's Encoding."""

    def __init__(self, chars: Sequence[str]):
        self.chars = list(chars)
        self.ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def n_vocab(self) -> int:
        return len(self.chars)

    eot_token = None  # no end-of-text token

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        unknown = sorted(set(text) - self.ids.keys())
        if unknown:
            raise ValueError(f"characters not in the tokenizer's vocabulary: {unknown[:10]}")
        return [self.ids[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps({"type": "char", "chars": self.chars}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        """The tokenizer ``save`` wrote; a malformed file is a ValueError naming it."""
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        return cls.from_saved(saved, path)

    @classmethod
    def from_saved(cls, saved, source) -> CharTokenizer:
        """The tokenizer from the parsed contents of its file, checked (``source`` names
        the file in errors)."""
        chars = saved.get("chars") if isinstance(saved, dict) else None
        if (not isinstance(chars, list) or not chars or len(set(chars)) != len(chars)
                or not all(isinstance(c, str) and len(c) == 1 for c in chars)):
            raise ValueError(f"{source}: \"chars\" must be a list of distinct single "
                             f"characters, got {chars!r:.80}")
        return cls(chars)
