"""The tokenizers against real references: tiktoken (built offline from GPT-2's own files),
tiktoken's own file loader, published GPT-2 token ids, and an independent naive BPE trainer."""

import json
import random
import re
import shutil
from collections import Counter
from functools import partial

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt import tokenizer as tokenizer_module
from tinygpt.tokenizer import BPETokenizer, gpt2_bpe, gpt2_bpe_files, gpt2_encoding
from tinygpt.tokenizers import gpt2_files

EOT = "<|endoftext|>"


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.from_gpt2_files(*gpt2_bpe_files())


# ---- GPT-2's files and the offline tiktoken encoding ----------------------------------------


def test_both_tokenizers_give_published_ids(enc, tok):
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert enc.encode(EOT, allowed_special={EOT}) == [50256]
    # the book's chapter 2 example, ids as printed there
    text = "Hello, do you like tea? <|endoftext|> In the sunlit terraces of someunknownPlace."
    # fmt: off
    assert enc.encode(text, allowed_special={EOT}) == [
        15496, 11, 466, 345, 588, 8887, 30, 220, 50256, 554, 262, 4252, 18250,
        8812, 2114, 286, 617, 34680, 27271, 13,
    ]
    # fmt: on
    assert tok.encode(text, allowed_special={EOT}) == enc.encode(text, allowed_special={EOT})
    assert tok.encode("Hello, world") == [15496, 11, 995]
    assert tok.encode(EOT, allowed_special="all") == [50256]
    assert tok.decode([15496, 11, 995]) == "Hello, world"


def test_gpt2_encoding_is_cached(enc):
    assert gpt2_encoding() is enc


def test_gpt2_files_are_parsed_once_for_both_tokenizers(enc, tok, monkeypatch):
    from tinygpt.tokenizers import bpe

    reads = []
    monkeypatch.setattr(bpe, "read_merges", lambda path: reads.append(path) or
                        gpt2_files.read_merges(path))
    gpt2_encoding.cache_clear()
    gpt2_bpe.cache_clear()
    try:
        assert gpt2_encoding().encode("Hello, world") == [15496, 11, 995]
        assert gpt2_bpe().encode("Hello, world") == [15496, 11, 995]
        assert len(reads) == 1
    finally:
        gpt2_encoding.cache_clear()
        gpt2_bpe.cache_clear()


def test_mergeable_ranks_equal_tiktokens_own_loader(tok, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # read the local files, cache nothing
    encoder_json, vocab_bpe = gpt2_bpe_files()
    reference = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(vocab_bpe),
        str(encoder_json),
        vocab_bpe_hash=tokenizer_module.GPT2_FILE_SHA256["vocab.bpe"],
        encoder_json_hash=tokenizer_module.GPT2_FILE_SHA256["encoder.json"],
    )
    assert gpt2_bpe().mergeable_ranks() == reference
    assert tok.mergeable_ranks() == reference
    assert tok.special_tokens == {EOT: 50256}
    assert tok.vocab_size == 50257


def _copy_gpt2_files(folder):
    for path in gpt2_bpe_files():
        shutil.copy(path, folder / path.name)


def test_verified_copy_is_accepted(tmp_path):
    _copy_gpt2_files(tmp_path)
    assert gpt2_bpe_files(tmp_path) == (tmp_path / "encoder.json", tmp_path / "vocab.bpe")


def test_sha_mismatch_is_a_clear_error(tmp_path, monkeypatch):
    _copy_gpt2_files(tmp_path)
    with open(tmp_path / "vocab.bpe", "a", encoding="utf-8") as file:
        file.write("Ġ x\n")  # one extra merge
    expected = tokenizer_module.GPT2_FILE_SHA256["vocab.bpe"]
    with pytest.raises(ValueError, match=f"vocab.bpe.*SHA-256.*expected {expected}"):
        gpt2_bpe_files(tmp_path)

    monkeypatch.setattr(gpt2_files, "_gpt2_data_dir", lambda: tmp_path)
    gpt2_encoding.cache_clear()
    gpt2_bpe.cache_clear()
    try:
        with pytest.raises(ValueError, match="is not OpenAI's GPT-2 vocab.bpe"):
            gpt2_encoding()
    finally:
        monkeypatch.undo()
        gpt2_encoding.cache_clear()
        gpt2_bpe.cache_clear()
    assert gpt2_encoding().encode("Hello, world") == [15496, 11, 995]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        gpt2_bpe_files(tmp_path)


# ---- BPETokenizer with GPT-2's files gives tiktoken's ids ------------------------------------

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🤖"]
CJK = ["漢字", "日本語", "한국어", "中文", "の", "テスト"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "\u0301", "Z\u0336\u0337", "\u0915\u094d"]
WHITESPACE = [" ", "  ", "   ", "\n", "\n\n", "\t", " \n", "\r\n", "\u00a0", "\u3000", "\u2028"]
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'x", "’s"]
WORDS = ["Hello", " world", "the", " The", "naïve", "Ωmega", "x", ",", ".", "!?", "--", "_"]
DIGITS = ["0", "7", "42", " 123", "3.14", "1,000", "٣", "²"]

# Text over the characters this Python's Unicode tables assign. Unassigned codepoints are left
# out on purpose: the `regex` module (Unicode 16) and tiktoken's Rust regex disagree on whether
# recently added characters such as U+18D80 are letters, so the two BPEs split them differently.
assigned_text = partial(st.text, st.characters(exclude_categories=("Cs", "Cn")))
pieces = st.sampled_from(EMOJI + CJK + COMBINING + WHITESPACE + CONTRACTIONS + WORDS + DIGITS)
targeted_text = st.lists(pieces | assigned_text(max_size=4), max_size=40).map("".join)
text_with_eot = st.lists(pieces | st.just(EOT) | assigned_text(max_size=4),
                         max_size=40).map("".join)


@settings(deadline=None, max_examples=1000)
@given(assigned_text())
def test_arbitrary_text_matches_tiktoken(enc, tok, text):
    ids = tok.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=())
    assert tok.decode(ids) == text


@settings(deadline=None, max_examples=1000)
@given(targeted_text)
def test_targeted_text_matches_tiktoken(enc, tok, text):
    ids = tok.encode(text, disallowed_special=())
    assert ids == enc.encode(text, disallowed_special=())
    assert tok.decode(ids) == text


@settings(deadline=None, max_examples=150)
@given(text_with_eot)
def test_special_tokens_match_tiktoken(enc, tok, text):
    for allowed in ("all", {EOT}):
        ids = tok.encode(text, allowed_special=allowed)
        assert ids == enc.encode(text, allowed_special=allowed)
        assert tok.decode(ids) == text
    assert tok.encode(text, disallowed_special=()) == enc.encode(text, disallowed_special=())


@settings(deadline=None, max_examples=100)
@given(st.lists(st.integers(0, 50256), max_size=20))
def test_decode_matches_tiktoken_even_for_partial_characters(enc, tok, ids):
    assert tok.decode(ids) == enc.decode(ids)
    assert tok.decode_bytes(ids) == enc.decode_bytes(ids)


def test_disallowed_special_token_raises_as_tiktoken(enc, tok):
    text = "end of story <|endoftext|> next"
    with pytest.raises(ValueError):
        enc.encode(text)
    with pytest.raises(ValueError, match="disallowed special token '<\\|endoftext\\|>'"):
        tok.encode(text)
    with pytest.raises(ValueError, match="does not have"):
        tok.encode(text, allowed_special={"<|startoftext|>"})


def test_lone_surrogates_are_replaced_as_tiktoken(enc, tok):
    text = "a\ud800b \udfff"
    assert tok.encode(text) == enc.encode(text)


def test_decode_rejects_ids_outside_vocabulary(tok):
    with pytest.raises(ValueError, match="token id 50257 is outside the vocabulary"):
        tok.decode([15496, 50257])


def _varied_text(n_chars, seed=0):
    """Multi-KB text of words, numbers, punctuation, code, Unicode and odd whitespace."""
    rng = random.Random(seed)
    words = (
        "the of and to in is was he that it for on with as his they at be this from I have "
        "or by one had not but what all were when we there can an your which their said if do "
        "Transformer attention GPT-2 tokenizer naïve café Ωmega Zürich São Paulo"
    ).split()
    extras = (
        EMOJI
        + CJK
        + COMBINING
        + CONTRACTIONS
        + DIGITS
        + [
            "def f(x):\n    return x ** 2\n",
            "https://example.com/a?b=1&c=2",
            "$3.50",
            "...",
            "\t\t",
            "    ",
            "\n\n\n",
            "ALL CAPS",
            "e-mail",
            "(parenthesised)",
            "«quoted»",
        ]
    )
    parts = []
    while sum(map(len, parts)) < n_chars:
        if rng.random() < 0.2:
            parts.append(rng.choice(extras))
        else:
            parts.append(rng.choice(words) + rng.choice([" ", " ", " ", ", ", ". ", "\n"]))
    return "".join(parts)


def test_whole_file_encodes_identically(enc, tok, tmp_path):
    path = tmp_path / "varied.txt"
    path.write_text(_varied_text(50_000), encoding="utf-8")
    text = path.read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert len(text) >= 50_000
    assert ids == enc.encode(text)
    assert tok.decode(ids) == text


# ---- training ---------------------------------------------------------------------------


def _corpus():
    """A small lowercase corpus: words split by single spaces, sentences by ". " or newline."""
    rng = random.Random(1)
    words = (
        "the cat sat on mat there then that hat a an and in into thin this these those other "
        "mother brother father rather gather weather feather leather bath path math with without "
        "within thing things nothing something anything sing song long strong string spring"
    ).split()
    sentences = []
    for _ in range(300):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))
        sentences.append(sentence + rng.choice([". ", ".\n"]))
    return "".join(sentences)


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


@pytest.fixture(scope="module")
def trained(corpus):
    return BPETokenizer().train(corpus, vocab_size=300)


def _naive_merges(corpus, n_merges, enc):
    """An independent BPE trainer: recount every pair from scratch at each step."""
    # For this corpus GPT-2's pre-tokenizer gives exactly these words.
    words = Counter(re.findall(r" ?[a-z]+|\.|\n", corpus))
    assert "".join(re.findall(r" ?[a-z]+|\.|\n", corpus)) == corpus
    # token ids 0..255 are single bytes in GPT-2's order; merge k makes id 256 + k
    token = {bytes([b]): enc.encode_single_token(bytes([b])) for b in range(256)}
    split = {word: [bytes([b]) for b in word.encode()] for word in words}
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(split[word], split[word][1:]):
                if pair[0] + pair[1] not in token:
                    pairs[pair] += count
        best = min(pairs, key=lambda p: (-pairs[p], token[p[0]], token[p[1]]))
        merges.append(best)
        token[best[0] + best[1]] = 256 + len(merges) - 1
        for word, parts in split.items():
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            split[word] = merged
    return merges


def test_first_merge_is_the_most_frequent_pair(corpus, trained):
    pairs = Counter()
    for word in re.findall(r" ?[a-z]+|\.|\n", corpus):
        data = word.encode()
        pairs.update(data[i : i + 2] for i in range(len(data) - 1))
    (top, top_count), (_, second_count) = pairs.most_common(2)
    assert top_count > second_count  # the corpus has one clear winner
    assert trained.merges[0][0] + trained.merges[0][1] == top
    assert trained.decode([256]) == top.decode()


def test_training_matches_a_naive_trainer(corpus, trained, enc):
    assert trained.merges == _naive_merges(corpus, 43, enc)


def test_vocab_size_is_honoured_exactly(corpus, trained):
    assert trained.vocab_size == 300
    assert len(trained.merges) == 300 - 256 - 1
    assert trained.special_tokens == {EOT: 299}
    ids = trained.encode(corpus + EOT, allowed_special="all")
    assert max(ids) == 299 and ids[-1] == 299
    assert len(ids) < len(corpus.encode()) / 2  # the merges compress this text


@settings(deadline=None, max_examples=100)
@given(targeted_text)
def test_trained_tokenizer_round_trips(trained, text):
    assert trained.decode(trained.encode(text, disallowed_special=())) == text


def test_trained_tokenizer_round_trips_its_corpus(corpus, trained):
    assert trained.decode(trained.encode(corpus)) == corpus


def test_save_load_round_trip(corpus, trained, tmp_path):
    trained.save(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["encoder.json", "vocab.bpe"]
    loaded = BPETokenizer.load(tmp_path / "tok")
    assert loaded.merges == trained.merges
    assert loaded.special_tokens == trained.special_tokens
    text = corpus[:2000] + EOT + "unseen wörds 😀"
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")
    again = BPETokenizer.from_gpt2_files(tmp_path / "tok/encoder.json", tmp_path / "tok/vocab.bpe")
    assert again.encode(corpus) == trained.encode(corpus)


def test_saved_files_load_in_tiktoken(corpus, trained, tmp_path, monkeypatch):
    """GPT-2's format for real: tiktoken's own loader reads what save wrote."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    trained.save(tmp_path)
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(
        str(tmp_path / "vocab.bpe"), str(tmp_path / "encoder.json")
    )
    reference = tiktoken.Encoding(
        "trained",
        pat_str=tokenizer_module.GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: 299},
    )
    text = corpus + EOT + _varied_text(3000)
    assert trained.encode(text, allowed_special="all") == reference.encode(
        text, allowed_special="all"
    )


def test_training_is_deterministic(corpus, trained):
    assert BPETokenizer().train(corpus, vocab_size=300).merges == trained.merges


def test_training_cuts_out_special_tokens():
    text = "ab" + EOT + "ab" + EOT + "ab"
    tok = BPETokenizer().train(text, vocab_size=258)
    assert tok.merges == [(b"a", b"b")]  # no merge from the letters of <|endoftext|>
    assert tok.encode(text, allowed_special="all") == [256, 257, 256, 257, 256]


def test_training_bad_vocab_size(corpus):
    with pytest.raises(ValueError, match="vocab_size 200 is too small.*at least 257"):
        BPETokenizer().train(corpus, vocab_size=200)
    with pytest.raises(ValueError, match="supports only 3 merges.*asks for 10"):
        BPETokenizer().train("abc abc", vocab_size=256 + 10 + 1)


def test_inconsistent_files_are_a_clear_error(trained, tmp_path):
    trained.save(tmp_path)
    encoder = json.loads((tmp_path / "encoder.json").read_text(encoding="utf-8"))
    first, second = [token for token, i in encoder.items() if i in (256, 257)]
    encoder[first], encoder[second] = encoder[second], encoder[first]
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    with pytest.raises(ValueError, match="encoder.json gives .* id 25[67], but .*vocab.bpe makes"):
        BPETokenizer.load(tmp_path)

    trained.save(tmp_path)
    merges = (tmp_path / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    merges[1:3] = merges[2:0:-1]  # "th e" before "t h": uses a token not made yet
    (tmp_path / "vocab.bpe").write_text("\n".join(merges), encoding="utf-8")
    with pytest.raises(ValueError, match="merge 0 .* uses b'th', which no earlier merge made"):
        BPETokenizer.load(tmp_path)
