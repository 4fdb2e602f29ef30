"""The book's Alpaca prompt and the JSON files around it, shared by instruction tuning, DPO
and the judge.

Every instruction example is one text, the prompt followed by the response:

    Below is an instruction that describes a task. Write a response that appropriately
    completes the request.

    ### Instruction:
    {instruction}

    ### Input:              <- only when the entry has an input
    {input}

    ### Response:
    {output}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy

from tinygpt.fileio import atomic_write_text
from tinygpt.tokenizer import GPT2_VOCAB_SIZE

END_OF_TEXT_ID = GPT2_VOCAB_SIZE - 1  # GPT-2's <|endoftext|>: padding and end of response
IGNORE_INDEX = -100  # targets with this id count for nothing in cross_entropy
RESPONSE_HEADER = "\n\n### Response:\n"
RESPONSES_FILE = "instruction-data-with-response.json"
DATA_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/"
            "01_main-chapter-code/instruction-data.json")


def format_input(entry) -> str:
    """The book's Alpaca-style prompt: instruction and (if not empty) input, no response."""
    instruction_text = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        f"\n\n### Instruction:\n{entry['instruction']}"
    )
    input_text = f"\n\n### Input:\n{entry['input']}" if entry.get("input") else ""
    return instruction_text + input_text


def format_response(entry) -> str:
    """The part after the prompt: ``"\\n\\n### Response:\\n" + output``."""
    return f"{RESPONSE_HEADER}{entry['output']}"


def encode(tokenizer, text) -> list[int]:
    """Token ids of ``text``; a literal "<|endoftext|>" in the data is encoded as text, so
    only the collate function's padding ever means end of text."""
    try:
        return list(tokenizer.encode(text, disallowed_special=()))
    except TypeError:  # a tokenizer without tiktoken's keyword
        return list(tokenizer.encode(text))


def read_json(path, what="data"):
    """Parse the JSON file ``path``; a missing file or bad JSON is an error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def save_json(data, path) -> Path:
    """Write ``data`` as indented JSON, atomically (a temporary file, then a rename)."""
    return atomic_write_text(path, json.dumps(data, indent=4, ensure_ascii=False))


def validate_entries(entries, source="the data", keys=("instruction", "output")) -> None:
    """Check that ``entries`` is a non-empty list of dicts with string fields ``keys``."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected a non-empty JSON list of entries, got "
                         f"{type(entries).__name__}")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{source}: entry {i} is a {type(entry).__name__}, expected an "
                             f"object with keys {', '.join(keys)}")
        missing = [k for k in keys if not isinstance(entry.get(k), str)]
        if missing:
            raise ValueError(f"{source}: entry {i} lacks the text field(s) "
                             f"{', '.join(missing)} (expected keys: {', '.join(keys)}, "
                             "and optionally input)")


def load_entries(path, keys=("instruction", "output"), what="instruction data") -> list[dict]:
    """Read a JSON list of {instruction, input, output} objects (or other ``keys``)."""
    entries = read_json(path, what)
    validate_entries(entries, Path(path), keys)
    return entries


class Split(NamedTuple):
    train: list
    val: list
    test: list


def split_data(entries, seed=None) -> Split:
    """The book's split: the first 85% train, the next 10% test, the remaining ~5% validation.

    With ``seed`` the entries are shuffled first (the book does not shuffle). Returns
    ``Split(train, val, test)``; for the book's 1100 entries that is 935 / 55 / 110.
    """
    entries = list(entries)
    if seed is not None:
        order = numpy.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    train_portion = int(len(entries) * 0.85)  # 85% for training
    test_portion = int(len(entries) * 0.1)  # 10% for testing
    train = entries[:train_portion]
    test = entries[train_portion:train_portion + test_portion]
    val = entries[train_portion + test_portion:]
    return Split(train, val, test)

