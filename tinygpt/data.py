"""Token ids to training batches: datasets, loaders, token files and the loop's batch sources.

A language model learns to predict the next token, so one training example is a window of
``max_length`` tokens (the input) and the same window moved one token to the right (the
target): for input ``ids[i : i + T]`` the target is ``ids[i + 1 : i + T + 1]``.

* ``GPTDataset`` cuts a token stream held in memory into such windows with a sliding window
  (as the book's ``GPTDatasetV1``), and ``DataLoader`` batches them into (B, T) int64 arrays.
  ``create_dataloader`` does both from raw text, like the book's ``create_dataloader_v1``.
* For corpora larger than memory, ``prepare_token_file`` tokenizes a text file once into a
  compact file of uint16 token ids, and ``open_token_file`` maps it back, checked.
* The training loop draws batches from a ``BatchSource``: ``RandomWindows`` (nanoGPT's random
  windows of a token stream, memmapped or not) or ``EpochBatches`` (the book's shuffled
  epochs of examples, for pretraining, instruction and preference data).
"""

from __future__ import annotations

import codecs
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import regex
from tqdm.auto import tqdm

from tinygpt.fileio import atomic_path
from tinygpt.tokenizer import gpt2_encoding

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    """Check that ``value`` is an integer > 0 and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _vocab_size_of(tokenizer) -> int | None:
    """The number of token ids of a tiktoken Encoding (``n_vocab``) or BPETokenizer."""
    for attribute in ("n_vocab", "vocab_size"):
        size = getattr(tokenizer, attribute, None)
        if isinstance(size, int):
            return size
    return None


def _check_token_ids(ids: np.ndarray, vocab_size: int | None) -> None:
    """Token ids must be in 0..vocab_size-1 (an embedding lookup would fail or wrap later)."""
    if ids.size == 0 or vocab_size is None:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        position = int(np.flatnonzero(ids == bad)[0])
        raise ValueError(
            f"token id {bad} at position {position} is outside the vocabulary "
            f"(ids must be in 0..{vocab_size - 1}, vocab_size={vocab_size})"
        )


def _encode(tokenizer, text: str) -> list[int]:
    """Encode text, with ``<|endoftext|>`` and other special tokens as their own ids."""
    return tokenizer.encode(text, allowed_special="all")


# ---------------------------------------------------------------------------------------------
# In-memory dataset and loader
# ---------------------------------------------------------------------------------------------


class GPTDataset:
    """Input/target windows over a token stream, for next-token prediction.

    ``token_ids_or_text`` is text (encoded with ``tokenizer``, GPT-2's by default) or a
    sequence of token ids. Window k starts at token ``k * stride``; its input is
    ``max_length`` tokens and its target is the same span shifted by one. A stride equal to
    ``max_length`` uses each token once as a target; a smaller stride makes windows overlap.
    """

    def __init__(
        self,
        token_ids_or_text: str | Sequence[int] | np.ndarray,
        max_length: int,
        stride: int,
        tokenizer=None,
        vocab_size: int | None = None,
    ):
        self.max_length = _positive_int("max_length", max_length)
        self.stride = _positive_int("stride", stride)
        if isinstance(token_ids_or_text, str):
            if not token_ids_or_text:
                raise ValueError("text is empty: there is nothing to make training windows from")
            tokenizer = tokenizer if tokenizer is not None else gpt2_encoding()
            token_ids_or_text = _encode(tokenizer, token_ids_or_text)
        if vocab_size is None and tokenizer is not None:
            vocab_size = _vocab_size_of(tokenizer)
        self.token_ids = self._as_token_array(token_ids_or_text)
        _check_token_ids(self.token_ids, vocab_size)
        self.vocab_size = vocab_size
        # the same windows as the book's range(0, len(token_ids) - max_length, stride)
        self.starts = np.arange(0, len(self.token_ids) - self.max_length, self.stride)

    def _as_token_array(self, token_ids) -> np.ndarray:
        """Token ids as a 1-D int64 array holding at least one window plus its target token."""
        ids = np.asarray(token_ids)
        if ids.ndim != 1:
            raise ValueError(f"token ids must be 1-D, got shape {ids.shape}")
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        if len(ids) < self.max_length + 1:
            raise ValueError(
                f"the text has {len(ids)} tokens, but one window of max_length="
                f"{self.max_length} needs at least {self.max_length + 1} (inputs plus the "
                "next token as target): give more text or a smaller max_length"
            )
        return ids.astype(np.int64)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``index`` as (input_ids, target_ids), two int64 arrays of max_length."""
        start = int(self.starts[index])  # IndexError past the end, negative counts from it
        end = start + self.max_length
        return self.token_ids[start:end].copy(), self.token_ids[start + 1 : end + 1].copy()


def default_collate(samples: list) -> tuple[np.ndarray, ...] | np.ndarray:
    """Stack samples into a batch: (input, target) pairs become a pair of (B, T) int64 arrays."""
    if isinstance(samples[0], tuple):
        return tuple(np.stack(field).astype(np.int64, copy=False) for field in zip(*samples))
    return np.stack(samples).astype(np.int64, copy=False)


class DataLoader:
    """Iterate over a dataset in batches of ``batch_size``, like PyTorch's DataLoader.

    With ``shuffle=True`` each pass visits the samples in a new random order; with a ``seed``
    the sequence of orders is the same on every run. ``drop_last=True`` leaves out a final
    batch smaller than ``batch_size`` (training then sees equal-sized batches).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = True,
        seed: int | None = None,
        collate_fn: Callable | None = None,
    ):
        self.batch_size = _positive_int("batch_size", batch_size)
        if drop_last and len(dataset) < self.batch_size:
            raise ValueError(
                f"the dataset has {len(dataset)} samples, fewer than batch_size="
                f"{self.batch_size}, so drop_last=True would leave no batch at all: use more "
                "data, a smaller batch_size or drop_last=False"
            )
        self.dataset = dataset
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.collate_fn = collate_fn if collate_fn is not None else default_collate
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator:
        n = len(self.dataset)
        order = self._rng.permutation(n) if self.shuffle else np.arange(n)
        for batch in range(len(self)):
            indices = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.collate_fn([self.dataset[int(i)] for i in indices])


def create_dataloader(
    text: str,
    batch_size: int = 4,
    max_length: int = 256,
    stride: int = 128,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int | None = None,
    tokenizer=None,
) -> DataLoader:
    """GPT-2-tokenize ``text`` and batch its windows: the book's ``create_dataloader_v1``."""
    tokenizer = tokenizer if tokenizer is not None else gpt2_encoding()
    dataset = GPTDataset(text, max_length, stride, tokenizer=tokenizer)
    return DataLoader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed)


# ---------------------------------------------------------------------------------------------
# Corpora larger than memory: a token file on disk
# ---------------------------------------------------------------------------------------------

TOKEN_DTYPE = np.uint16  # GPT-2's 50257 ids fit in 16 bits: half the size of int32

# A lone whitespace character between two non-whitespace ones: cutting the text just before
# it changes no GPT-2 pre-token (no pre-token spans it), so chunks encode as the whole would.
# "(?r)" makes the regex module search backwards, finding the last such place first.
_SAFE_CUT = regex.compile(r"(?r)\S\s\S")


def _split_at_safe_cut(text: str) -> tuple[str, str]:
    """Split ``text`` into (head, rest) at its last safe cut; all of it is rest if none."""
    found = _SAFE_CUT.search(text)
    if found is None:
        return "", text
    return text[: found.start() + 1], text[found.start() + 1 :]


def _text_chunks(path: Path, chunk_chars: int, progress) -> Iterator[str]:
    """Read a UTF-8 file in pieces of about ``chunk_chars`` characters, each cut at a place
    where tokenizing the pieces one by one gives the same ids as tokenizing the whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending = ""
    with open(path, "rb") as file:
        while block := file.read(chunk_chars):
            progress.update(len(block))
            pending += decoder.decode(block)
            head, pending = _split_at_safe_cut(pending)
            if head:
                yield head
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def prepare_token_file(
    text_path: str | os.PathLike,
    out_path: str | os.PathLike,
    tokenizer=None,
    chunk_chars: int = 1 << 22,
) -> Path:
    """Tokenize a UTF-8 text file into a file of uint16 token ids; returns ``out_path``.

    The text is read and encoded ``chunk_chars`` at a time (with a progress bar), so files
    larger than memory work. The ids go to a temporary file next to ``out_path``, which is
    renamed to ``out_path`` only when complete: an interrupted run leaves no partial file.
    The token count is the file's size divided by 2.
    """
    text_path, out_path = Path(text_path), Path(out_path)
    chunk_chars = _positive_int("chunk_chars", chunk_chars)
    if out_path.exists() and text_path.exists() and os.path.samefile(text_path, out_path):
        raise ValueError(f"{out_path} is the text file itself: writing the tokens there would "
                         "replace the text; choose another output file (e.g. ending in .bin)")
    tokenizer = tokenizer if tokenizer is not None else gpt2_encoding()
    vocab_size = _vocab_size_of(tokenizer)
    if vocab_size is not None and vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocab_size {vocab_size} does not fit in a uint16 token file (max 65536)")
    with atomic_path(out_path) as temporary:
        n_tokens = _write_tokens(text_path, temporary, tokenizer, chunk_chars, vocab_size)
        if n_tokens == 0:
            raise ValueError(f"{text_path} is empty: there is nothing to tokenize")
    return out_path


def _write_tokens(text_path: Path, out_path, tokenizer, chunk_chars: int, vocab_size) -> int:
    """Encode the text chunk by chunk and write the ids to ``out_path``."""
    n_tokens = 0
    with (
        open(out_path, "wb") as out,
        tqdm(
            total=text_path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc="tokenizing",
            disable=None,  # shown on a terminal, silent in logs
        ) as progress,
    ):
        for chunk in _text_chunks(text_path, chunk_chars, progress):
            ids = np.asarray(_encode(tokenizer, chunk), dtype=np.int64)
            _check_token_ids(ids, vocab_size)
            ids.astype(TOKEN_DTYPE).tofile(out)
            n_tokens += len(ids)
    return n_tokens


def open_token_file(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """A token file written by ``prepare_token_file`` as a read-only uint16 memmap, checked
    up front: a whole number of uint16 ids, not empty, and every id below ``vocab_size``
    (one streaming pass), so a bad file fails here and not as an IndexError mid-training."""
    path = Path(path)
    n_bytes = path.stat().st_size
    itemsize = np.dtype(TOKEN_DTYPE).itemsize
    if n_bytes % itemsize:
        raise ValueError(f"{path} has {n_bytes} bytes, not a whole number of uint16 token ids "
                         "(a token file made by `tinygpt prepare`?)")
    if n_bytes == 0:
        raise ValueError(f"{path} is empty: it holds no token ids")
    tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
    if vocab_size is not None:
        highest = int(tokens.max())
        if highest >= vocab_size:
            position = int(np.flatnonzero(tokens == highest)[0])
            raise ValueError(f"{path}: token id {highest} at position {position} is outside "
                             f"the vocabulary (ids must be in 0..{vocab_size - 1})")
    return tokens


# ---------------------------------------------------------------------------------------------
# Batch sources for the training loop
# ---------------------------------------------------------------------------------------------


@runtime_checkable
class BatchSource(Protocol):
    """What ``tinygpt.train.train`` draws batches from (``RandomWindows``, ``EpochBatches``).

    ``train_batch(i)`` must be a pure function of ``i`` (the loop's micro-batch counter), so
    a resumed run sees exactly the batches an uninterrupted one would have seen.
    ``eval_batches(split, count)`` returns the same batches at every call, so evaluated
    losses compare across steps. A batch is whatever the loss function takes, e.g. (x, y).
    """

    def train_batch(self, index: int): ...

    def eval_batches(self, split: str, count: int) -> list: ...


class RandomWindows:
    """nanoGPT-style batches: random windows of ``context_length + 1`` tokens from a token
    stream (x is the window without its last token, y without its first).

    The windows of training batch ``i`` come from a generator seeded with (seed, i), so any
    batch can be drawn again, which is what makes resuming exact. The token arrays may be
    NumPy memmaps of a token file larger than memory (``open_token_file``): only the chosen
    windows are read.
    """

    def __init__(self, train_tokens, val_tokens, batch_size, context_length, seed=0):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.context_length = _positive_int("context_length", context_length)
        for name, tokens in (("training", train_tokens), ("validation", val_tokens)):
            if len(tokens) < context_length + 1:
                raise ValueError(f"the {name} split has {len(tokens)} tokens, fewer than "
                                 f"context_length + 1 = {context_length + 1}")
        self.tokens = {"train": train_tokens, "val": val_tokens}
        self.seed = seed

    def _windows(self, split, rng) -> tuple[np.ndarray, np.ndarray]:
        tokens = self.tokens[split]
        starts = rng.integers(0, len(tokens) - self.context_length, size=self.batch_size)
        rows = np.stack([np.asarray(tokens[s : s + self.context_length + 1])
                         for s in starts]).astype(np.int64)  # (B, T + 1)
        return rows[:, :-1], rows[:, 1:]

    def train_batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self._windows("train", np.random.default_rng((self.seed, index)))

    def eval_batches(self, split: str, count: int) -> list:
        """A fixed set of batches (the same at every evaluation, so losses compare)."""
        rng = np.random.default_rng((self.seed, 2**31 - 1, split == "val"))
        return [self._windows(split, rng) for _ in range(count)]


class EpochBatches:
    """The book's batching: examples in shuffled epochs, the last incomplete batch dropped
    (``DataLoader(shuffle=True, drop_last=True)``), for pretraining windows, instruction
    examples and preference pairs alike — ``collate`` turns a list of examples into a batch.

    Training batch ``i`` is position ``i % batches_per_epoch`` of epoch
    ``i // batches_per_epoch``, whose order is a permutation drawn from a generator seeded with
    ``(seed, epoch)``: a pure function of ``i``. Evaluation takes the first ``count`` batches
    of a split in stored order, the last one possibly smaller (the book's validation loader).
    """

    def __init__(self, train_examples, val_examples, batch_size, seed=0,
                 collate: Callable = default_collate, shuffle=True):
        self.batch_size = _positive_int("batch_size", batch_size)
        self.examples = {"train": train_examples, "val": val_examples}
        self.seed, self.collate, self.shuffle = seed, collate, shuffle
        self.batches_per_epoch = len(train_examples) // self.batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"the training set has {len(train_examples)} examples, fewer than "
                             f"one batch of {self.batch_size}")
        if len(val_examples) == 0:
            raise ValueError("the validation set is empty")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the training examples."""
        n = len(self.examples["train"])
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng((self.seed, epoch)).permutation(n)

    def train_batch(self, index: int):
        epoch, position = divmod(index, self.batches_per_epoch)
        start = position * self.batch_size
        chosen = self.epoch_order(epoch)[start : start + self.batch_size]
        return self.collate([self.examples["train"][int(i)] for i in chosen])

    def eval_batches(self, split: str, count: int) -> list:
        examples, batches = self.examples[split], []
        for start in range(0, len(examples), self.batch_size)[:count]:
            stop = min(start + self.batch_size, len(examples))
            batches.append(self.collate([examples[i] for i in range(start, stop)]))
        return batches
