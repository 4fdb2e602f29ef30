"""From raw text to input embeddings: the walk of the book's chapter 2, with tinygpt.

    python examples/02_tokenization.py [--data FILE]

1. a simple word tokenizer: split on punctuation and whitespace, number the words of the
   text's vocabulary, and map unknown words to ``<|unk|>`` (the book's SimpleTokenizerV2);
2. GPT-2's byte-level BPE, which needs no ``<|unk|>``: tiktoken (``gpt2_encoding``) and the
   from-scratch ``BPETokenizer`` give the same ids, and a BPE tokenizer trained on the text
   shows what merges it learns first;
3. a sliding window turns the token stream into (input, target) pairs for next-token
   prediction;
4. token ids become vectors through a token embedding, plus a positional embedding.

Without ``--data`` it reads the story "The Verdict", which ships with tinygpt.
The embedding weights are random (tinygpt's generator, seed 123), so their values differ from
the book's, which seeds PyTorch; the shapes are the book's.
"""

import argparse
import re
import time

import numpy

import tinygpt
from tinygpt.cli.options import HelpFormatter
from tinygpt.corpora import VERDICT, corpus_path
from tinygpt.data import create_dataloader
from tinygpt.nn import Embedding
from tinygpt.tokenizer import BPETokenizer, gpt2_bpe_files, gpt2_encoding

SPLIT = r'([,.:;?_!"()\']|--|\s)'  # punctuation, double dashes and whitespace, kept as tokens


class SimpleTokenizer:
    """Words and punctuation to ids from a fixed vocabulary; unknown words become <|unk|>."""

    def __init__(self, vocab: dict[str, int]):
        self.str_to_int = vocab
        self.int_to_str = {i: s for s, i in vocab.items()}

    @classmethod
    def from_text(cls, text: str) -> "SimpleTokenizer":
        """Number every distinct word of ``text`` in sorted order, then the two specials."""
        words = sorted(set(split_words(text))) + ["<|endoftext|>", "<|unk|>"]
        return cls({word: i for i, word in enumerate(words)})

    def encode(self, text: str) -> list[int]:
        unknown = self.str_to_int["<|unk|>"]
        return [self.str_to_int.get(word, unknown) for word in split_words(text)]

    def decode(self, ids: list[int]) -> str:
        text = " ".join(self.int_to_str[i] for i in ids)
        return re.sub(r'\s+([,.?!"()\'])', r"\1", text)  # no space before punctuation


def split_words(text: str) -> list[str]:
    """Split on SPLIT, dropping the whitespace pieces and empty strings."""
    return [piece.strip() for piece in re.split(SPLIT, text) if piece.strip()]


def simple_tokenizer(raw_text: str) -> None:
    print("== 1. a simple word tokenizer ==")
    tokenizer = SimpleTokenizer.from_text(raw_text)
    print(f"vocabulary: {len(tokenizer.str_to_int)} words (with <|endoftext|> and <|unk|>)")
    text = " <|endoftext|> ".join(
        ("Hello, do you like tea?", "In the sunlit terraces of the palace.")
    )
    ids = tokenizer.encode(text)
    print(f"{text!r}\n -> {ids}\n -> {tokenizer.decode(ids)!r}\n")


def bpe(raw_text: str) -> None:
    print("== 2. byte-level BPE, as GPT-2 ==")
    enc = gpt2_encoding()
    tok = BPETokenizer.from_gpt2_files(*gpt2_bpe_files())
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    ids = enc.encode(text, allowed_special={"<|endoftext|>"})
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == ids
    print(f"{text!r}\n -> {ids}\n -> {enc.decode(ids)!r}")
    print("an unknown word is split into known pieces:",
          [enc.decode([i]) for i in enc.encode("Akwirw ier")])
    ids = enc.encode(raw_text)
    assert tok.encode(raw_text) == ids
    print(f"the whole text: {len(raw_text)} characters -> {len(ids)} tokens "
          "(tiktoken and BPETokenizer agree)")

    start = time.perf_counter()
    trained = BPETokenizer().train(raw_text, vocab_size=400)
    seconds = time.perf_counter() - start
    firsts = [(left + right).decode("utf-8", "replace") for left, right in trained.merges[:10]]
    print(f"a BPE trained on the text ({seconds:.1f} s): first merges {firsts}")
    print(f"  it encodes the text in {len(trained.encode(raw_text))} tokens with a vocabulary "
          f"of {trained.vocab_size}\n")


def embeddings(raw_text: str) -> None:
    print("== 3. sliding windows and 4. embeddings ==")
    max_length = 4
    loader = create_dataloader(raw_text, batch_size=8, max_length=max_length,
                               stride=max_length, shuffle=False)
    inputs, targets = next(iter(loader))
    print(f"inputs {inputs.shape} {inputs.dtype}:\n{inputs}\ntargets (inputs shifted by one):"
          f"\n{targets}")

    tinygpt.manual_seed(123)
    vocab_size, output_dim = 50257, 256
    token_embedding = Embedding(vocab_size, output_dim)
    position_embedding = Embedding(max_length, output_dim)
    token_vectors = token_embedding(inputs)
    position_vectors = position_embedding(numpy.arange(max_length))
    input_embeddings = token_vectors + position_vectors  # broadcast over the batch
    print(f"token embeddings     {tuple(token_vectors.shape)}")
    print(f"position embeddings  {tuple(position_vectors.shape)}")
    print(f"input embeddings     {tuple(input_embeddings.shape)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", metavar="PATH", default=str(corpus_path(VERDICT)),
                        help="text file to use (default: The Verdict, bundled)")
    args = parser.parse_args(argv)
    with open(args.data, encoding="utf-8") as file:
        raw_text = file.read()
    print(f"{len(raw_text)} characters; it begins {raw_text[:60]!r}\n")
    simple_tokenizer(raw_text)
    bpe(raw_text)
    embeddings(raw_text)


if __name__ == "__main__":
    main()
