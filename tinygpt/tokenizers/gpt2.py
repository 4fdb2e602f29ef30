"""GPT-2's tokenizer to *use*: a tiktoken ``Encoding`` built offline from GPT-2's own files.

The files are read, verified and cross-checked once per process (``gpt2_bpe``, the readable
``BPETokenizer`` loaded from them); tiktoken's fast encoder is built from that tokenizer's
ranks, so both give the same ids by construction, and the tests check both against
tiktoken's own file loader.
"""

from __future__ import annotations

import functools

import tiktoken

from tinygpt.tokenizers.bpe import BPETokenizer
from tinygpt.tokenizers.gpt2_files import (
    ENDOFTEXT,
    GPT2_PATTERN,
    GPT2_VOCAB_SIZE,
    gpt2_bpe_files,
)


@functools.lru_cache(maxsize=None)
def gpt2_bpe() -> BPETokenizer:
    """GPT-2's tokenizer as a readable ``BPETokenizer``, read from the verified files once."""
    return BPETokenizer.from_gpt2_files(*gpt2_bpe_files())


@functools.lru_cache(maxsize=None)
def gpt2_encoding() -> tiktoken.Encoding:
    """GPT-2's tokenizer as a tiktoken ``Encoding``, built offline from verified local files.

    The same as ``tiktoken.get_encoding("gpt2")`` (50257 tokens, ``<|endoftext|>`` = 50256),
    without its download. Built once per process (about a second), then cached.
    """
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=gpt2_bpe().mergeable_ranks(),
        special_tokens={ENDOFTEXT: GPT2_VOCAB_SIZE - 1},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
