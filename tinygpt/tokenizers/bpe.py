"""GPT-2's byte-level BPE written out in Python, to *read*: encode, decode, and learn merges.

``BPETokenizer`` is the same algorithm as tiktoken's, written out so it can be read (and
trained on new text with ``train``). Loaded with GPT-2's files it gives exactly tiktoken's ids,
and the tests check that on arbitrary text of assigned Unicode characters; ``gpt2_encoding()``
(in ``gpt2.py``) is the fast one to use. One known difference: characters that only the newest
Unicode versions assign (U+18D80, say) count as letters for the ``regex`` module used here but
not for tiktoken's Rust regex, so the two can split such text differently.

How GPT-2 tokenizes, in three steps:

1. **Pre-tokenize.** A regular expression cuts the text into "words": letters with an
   optional leading space (" world"), digits, punctuation runs, whitespace runs and English
   contractions ("'s", "'ve"). BPE never merges across two words.
2. **Bytes.** Each word becomes its UTF-8 bytes; every byte is a token of its own (ids 0-255),
   so any text at all can be encoded — there is no "unknown" token.
3. **Merge.** Training learned a ranked list of merges ("Ġ" + "t" -> "Ġt", ...). Encoding
   repeatedly joins the adjacent pair whose joined bytes have the lowest rank (the merge
   learned earliest), until no adjacent pair is a known token. GPT-2's token id *is* that rank.

Special tokens such as ``<|endoftext|>`` are not made by merges: they are whole strings with
ids of their own, recognised in the text only when the caller allows it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import regex

from tinygpt.fileio import atomic_write_text
from tinygpt.tokenizers.gpt2_files import (
    ENDOFTEXT,
    GPT2_PATTERN,
    bytes_to_symbols,
    bytes_to_unicode,
    read_encoder,
    read_merges,
    symbols_to_bytes,
)


def _special_pattern(tokens: Iterable[str]) -> regex.Pattern:
    """A regex matching any of the given special tokens (longest first), as one group."""
    alternatives = sorted(tokens, key=lambda token: (-len(token), token))
    return regex.compile("(" + "|".join(regex.escape(token) for token in alternatives) + ")")


def _merge_pair(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``word`` (left to right) by ``new_id``."""
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


class BPETokenizer:
    """GPT-2's byte-level BPE in plain Python: train, encode, decode, save and load.

    A tokenizer is its ranked ``merges`` (pairs of byte strings; merge i makes token id
    256 + i) and its ``special_tokens`` (name -> id, after all merged tokens). Ids 0-255 are
    the single bytes, in GPT-2's order (``bytes_to_unicode``), so a tokenizer trained here is
    saved in GPT-2's own file format and loads in GPT-2's and tiktoken's loaders.

        tok = BPETokenizer.from_gpt2_files(*gpt2_bpe_files())
        tok.encode("Hello, world")          # [15496, 11, 995], as tiktoken
        tok = BPETokenizer().train(text, vocab_size=512)
    """

    #: encoded words kept in the cache before it is emptied (bounds memory on huge corpora)
    cache_size = 500_000

    def __init__(
        self,
        merges: Sequence[tuple[bytes, bytes]] = (),
        special_tokens: Mapping[str, int] | None = None,
    ):
        self._words = regex.compile(GPT2_PATTERN)
        self._build_vocab(merges, special_tokens or {})

    # ---- the vocabulary -------------------------------------------------------------------

    def _build_vocab(
        self, merges: Sequence[tuple[bytes, bytes]], special_tokens: Mapping[str, int]
    ) -> None:
        """Lay out the ids: 256 bytes, then one token per merge, then the special tokens."""
        self.merges = [(bytes(left), bytes(right)) for left, right in merges]
        self._id_to_bytes = [bytes([byte]) for byte in bytes_to_unicode()]
        # bytes -> id; an id is also the merge's rank (lower = learned earlier = applied first)
        self._ranks = {token: token_id for token_id, token in enumerate(self._id_to_bytes)}
        for number, (left, right) in enumerate(self.merges):
            self._check_merge(number, left, right)
            self._ranks[left + right] = len(self._id_to_bytes)
            self._id_to_bytes.append(left + right)
        self._set_special_tokens(special_tokens)
        self._cache: dict[str, tuple[int, ...]] = {}

    def _check_merge(self, number: int, left: bytes, right: bytes) -> None:
        """A merge joins two tokens that exist before it into a token that does not."""
        for part in (left, right):
            if part not in self._ranks:
                raise ValueError(
                    f"merge {number} ({left!r} + {right!r}) uses {part!r}, "
                    "which no earlier merge made"
                )
        if left + right in self._ranks:
            raise ValueError(
                f"merge {number} ({left!r} + {right!r}) makes {left + right!r} again "
                f"(token {self._ranks[left + right]}); each token must be made once"
            )

    def _set_special_tokens(self, special_tokens: Mapping[str, int]) -> None:
        """Special tokens take the ids right after the merged tokens, with no gaps."""
        first = len(self._id_to_bytes)
        expected = set(range(first, first + len(special_tokens)))
        if set(special_tokens.values()) != expected:
            raise ValueError(
                f"special token ids {sorted(special_tokens.values())} must be exactly "
                f"{first}..{first + len(special_tokens) - 1}, right after the "
                f"{first} byte and merged tokens"
            )
        self.special_tokens = dict(special_tokens)
        self._special_ids = {token_id: name for name, token_id in special_tokens.items()}

    @property
    def vocab_size(self) -> int:
        """Number of token ids: 256 bytes + one per merge + the special tokens."""
        return len(self._id_to_bytes) + len(self.special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (a special token: its name in UTF-8)."""
        if 0 <= token_id < len(self._id_to_bytes):
            return self._id_to_bytes[token_id]
        if token_id in self._special_ids:
            return self._special_ids[token_id].encode("utf-8")
        raise ValueError(
            f"token id {token_id} is outside the vocabulary (0..{self.vocab_size - 1})"
        )

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank, the table a tiktoken ``Encoding`` is built from."""
        return dict(self._ranks)

    # ---- encoding ---------------------------------------------------------------------------

    def _merge_bytes(self, data: bytes) -> list[bytes]:
        """Split one word's bytes into tokens by applying merges in rank order.

        Start from single bytes. ``pair_ranks[i]`` is the rank of ``parts[i] + parts[i + 1]``
        (infinite when that is no token). Repeatedly merge the pair of lowest rank — the
        leftmost one on a tie, as tiktoken does — and update only its two neighbours.
        (GPT-2's original encoder.py looks the *pair* up in its merge list instead; ranking
        the joined bytes is tiktoken's rule, and tiktoken's ids are the ones we match.)
        """
        ranks, never = self._ranks, float("inf")
        parts = [data[i : i + 1] for i in range(len(data))]
        pair_ranks = [ranks.get(a + b, never) for a, b in zip(parts, parts[1:])]
        while pair_ranks:
            best = min(pair_ranks)
            if best == never:
                break
            i = pair_ranks.index(best)
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
            del pair_ranks[i]
            if i > 0:
                pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], never)
            if i < len(pair_ranks):
                pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], never)
        return parts

    def _encode_word(self, word: str) -> tuple[int, ...]:
        """Token ids of one pre-tokenized word (a whole-word token needs no merging)."""
        data = word.encode("utf-8")
        token_id = self._ranks.get(data)
        if token_id is not None:
            return (token_id,)
        return tuple(self._ranks[part] for part in self._merge_bytes(data))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode ``text`` with no special tokens: ``<|endoftext|>`` is just 13 characters.

        Words repeat a lot in real text, so each word's ids are cached in a dict: after the
        first few pages, most words cost one dictionary lookup.
        """
        try:
            return self._encode_words(self._words.findall(text))
        except UnicodeEncodeError:  # a lone surrogate, which UTF-8 cannot encode
            return self._encode_words(self._words.findall(_replace_surrogates(text)))

    def _encode_words(self, words: list[str]) -> list[int]:
        """Concatenate the cached ids of each word, encoding the words not seen before."""
        cache, encode_word = self._cache, self._encode_word
        if len(cache) > self.cache_size:
            cache.clear()
        ids: list[int] = []
        for word in words:
            word_ids = cache.get(word)
            if word_ids is None:
                word_ids = cache[word] = encode_word(word)
            ids.extend(word_ids)
        return ids

    def _special_sets(self, allowed_special, disallowed_special) -> tuple[set[str], set[str]]:
        """Resolve tiktoken-style ``allowed_special`` / ``disallowed_special`` arguments."""
        known = set(self.special_tokens)
        allowed = known if allowed_special == "all" else set(allowed_special)
        unknown = allowed - known
        if unknown:
            raise ValueError(
                f"allowed_special has {sorted(unknown)}, which this tokenizer does not have; "
                f"its special tokens are {sorted(known)}"
            )
        disallowed = known - allowed if disallowed_special == "all" else set(disallowed_special)
        return allowed, disallowed

    def encode(
        self,
        text: str,
        allowed_special: Collection[str] | str = frozenset(),
        disallowed_special: Collection[str] | str = "all",
    ) -> list[int]:
        """Encode ``text`` to token ids, with special tokens handled as tiktoken does.

        A special token in ``allowed_special`` (a set of names, or "all") is encoded as its
        own id. One that appears in the text but is not allowed raises ValueError — text from
        users should not be able to end a document by typing "<|endoftext|>" — unless
        ``disallowed_special`` excludes it, and then it is encoded as ordinary text.
        """
        allowed, disallowed = self._special_sets(allowed_special, disallowed_special)
        if disallowed:
            found = _special_pattern(disallowed).search(text)
            if found:
                raise ValueError(
                    f"Encountered text corresponding to disallowed special token "
                    f"{found.group()!r}. Pass allowed_special={{{found.group()!r}}} (or 'all') "
                    "to encode it as a special token, or disallowed_special=() to encode it as "
                    "plain text."
                )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        # split with a capturing group: [text, special, text, special, ..., text]
        for index, piece in enumerate(_special_pattern(allowed).split(text)):
            if index % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    # ---- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the token ids stand for, joined."""
        if hasattr(ids, "tolist"):  # NumPy arrays and Tensors of ids
            ids = ids.tolist()
        table, n_ordinary = self._id_to_bytes, len(self._id_to_bytes)
        return b"".join(
            table[token_id] if 0 <= token_id < n_ordinary else self.token_bytes(token_id)
            for token_id in ids
        )

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids back to text. A token can hold part of a UTF-8 character, so bytes that do
        not form whole characters become U+FFFD, as in tiktoken's ``decode``."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- training ---------------------------------------------------------------------------

    def train(
        self,
        text: str,
        vocab_size: int,
        allowed_special: Collection[str] = frozenset({ENDOFTEXT}),
    ) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(allowed_special)`` merges from ``text``; returns self.

        Each step merges the most frequent adjacent pair of tokens inside the pre-tokenized
        words (ties: the pair with the smallest ids). A pair whose joined bytes are already a
        token is skipped, since each token string has exactly one id in GPT-2's files. The
        special tokens are cut out of the text before counting and get the last ids, in
        sorted order.
        """
        specials = sorted(allowed_special)
        n_merges = vocab_size - 256 - len(specials)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: 256 byte tokens and "
                f"{len(specials)} special tokens need at least {256 + len(specials)}"
            )
        words = self._count_words(text, specials)
        merges = _learn_merges(words, n_merges)
        self._build_vocab(merges, {name: 256 + n_merges + i for i, name in enumerate(specials)})
        return self

    def _count_words(self, text: str, specials: Sequence[str]) -> Counter[bytes]:
        """How often each pre-tokenized word occurs, as UTF-8 bytes, specials cut out."""
        chunks = _special_pattern(specials).split(text)[::2] if specials else [text]
        counts: Counter[bytes] = Counter()
        for chunk in chunks:
            words = self._words.findall(_replace_surrogates(chunk))
            counts.update(word.encode("utf-8") for word in words)
        return counts

    # ---- GPT-2's file format ----------------------------------------------------------------

    @classmethod
    def from_gpt2_files(
        cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike
    ) -> BPETokenizer:
        """Load a tokenizer from GPT-2's ``encoder.json`` (token -> id) and ``vocab.bpe``
        (merges, one "LEFT RIGHT" per line, in rank order).

        The merges define the tokens; ``encoder.json`` must give each of them the id the
        merge order implies. Its extra entries (GPT-2: ``<|endoftext|>``) are special tokens.
        """
        tokenizer = cls(read_merges(vocab_bpe))
        n_ordinary = len(tokenizer._id_to_bytes)
        specials = {}
        for token, token_id in read_encoder(encoder_json).items():
            if not isinstance(token_id, int) or token_id < 0:
                raise ValueError(f"{encoder_json}: {token!r} has id {token_id!r}")
            if token_id >= n_ordinary:
                specials[token] = token_id
            elif symbols_to_bytes(token) != tokenizer._id_to_bytes[token_id]:
                raise ValueError(
                    f"{encoder_json} gives {token!r} id {token_id}, but {vocab_bpe} makes "
                    f"{bytes_to_symbols(tokenizer._id_to_bytes[token_id])!r} token {token_id}"
                )
        tokenizer._set_special_tokens(specials)
        return tokenizer

    def save(self, path: str | os.PathLike) -> None:
        """Write ``encoder.json`` and ``vocab.bpe`` into the folder ``path`` (GPT-2's format).

        Each file is written to a temporary name and then renamed, so a crash never leaves a
        half-written tokenizer behind.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        encoder = {bytes_to_symbols(token): i for i, token in enumerate(self._id_to_bytes)}
        encoder.update(self.special_tokens)
        merges = "".join(
            f"{bytes_to_symbols(left)} {bytes_to_symbols(right)}\n" for left, right in self.merges
        )
        atomic_write_text(folder / "encoder.json", json.dumps(encoder, ensure_ascii=False))
        atomic_write_text(folder / "vocab.bpe", "#version: 0.2\n" + merges)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Load a tokenizer that ``save`` wrote (or GPT-2's own two files) from a folder."""
        folder = Path(path)
        return cls.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={sorted(self.special_tokens)})"
        )


def _replace_surrogates(text: str) -> str:
    """Replace lone surrogates (which UTF-8 cannot encode) by U+FFFD, as tiktoken does."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


# --------------------------------------------------------------------------------------------
# Learning merges
# --------------------------------------------------------------------------------------------


def _learn_merges(word_counts: Mapping[bytes, int], n_merges: int) -> list[tuple[bytes, bytes]]:
    """Learn ``n_merges`` BPE merges from word frequencies.

    Words are lists of token ids (bytes first, in GPT-2's id order). ``pair_counts`` counts
    each adjacent pair over all words, weighted by word frequency, and ``where`` remembers which
    words hold a pair, so a merge re-counts only the words it touches.
    """
    byte_id = {byte: i for i, byte in enumerate(bytes_to_unicode())}
    id_to_bytes = [bytes([byte]) for byte in bytes_to_unicode()]
    known = set(id_to_bytes)
    words = [[byte_id[byte] for byte in word] for word in word_counts]
    counts = list(word_counts.values())
    pair_counts: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for index, word in enumerate(words):
        _add_pairs(word, counts[index], index, pair_counts, where)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < n_merges:
        pair = _most_frequent_pair(pair_counts, id_to_bytes, known)
        if pair is None:
            raise ValueError(
                f"the text supports only {len(merges)} merges (every word is a single token "
                f"by then), but vocab_size asks for {n_merges}: give more text or a smaller "
                "vocab_size"
            )
        new_id = len(id_to_bytes)
        merges.append((id_to_bytes[pair[0]], id_to_bytes[pair[1]]))
        id_to_bytes.append(id_to_bytes[pair[0]] + id_to_bytes[pair[1]])
        known.add(id_to_bytes[new_id])
        for index in where.pop(pair):
            _add_pairs(words[index], -counts[index], index, pair_counts, where)
            words[index] = _merge_pair(words[index], pair, new_id)
            _add_pairs(words[index], counts[index], index, pair_counts, where)
    return merges


def _add_pairs(word, count, index, pair_counts, where) -> None:
    """Add ``count`` (negative: remove) for each adjacent pair of ``word`` (word ``index``)."""
    for pair in zip(word, word[1:]):
        pair_counts[pair] += count
        if pair_counts[pair] <= 0:
            del pair_counts[pair]
        elif count > 0:
            where.setdefault(pair, set()).add(index)


def _most_frequent_pair(pair_counts, id_to_bytes, known) -> tuple[int, int] | None:
    """The most frequent pair whose joined bytes are not a token yet (ties: smallest ids)."""
    best, best_key = None, None
    for pair, count in pair_counts.items():
        key = (-count, pair)
        if (best_key is None or key < best_key) and (
            id_to_bytes[pair[0]] + id_to_bytes[pair[1]] not in known
        ):
            best, best_key = pair, key
    return best
