"""Datasets and loaders against independently computed windows and tiktoken's token ids."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygpt.data import (
    DataLoader,
    GPTDataset,
    RandomWindows,
    _split_at_safe_cut,
    create_dataloader,
    open_token_file,
    prepare_token_file,
)
from tinygpt.tokenizer import BPETokenizer, gpt2_encoding

EOT = "<|endoftext|>"
TEXT = (
    (
        "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so "
        "it was no great surprise to me to hear that, in the height of his glory, he had dropped "
        "his painting, married a rich widow, and established himself in a villa on the Riviera. "
    )
    * 8
    + EOT
    + " Ünïcödé 😀 漢字 and 12345 numbers.\n\n  Tabs\tand   spaces.  "
)


@pytest.fixture(scope="module")
def enc():
    return gpt2_encoding()


def _windows(ids, max_length, stride):
    """The book's GPTDatasetV1 loop, written out."""
    inputs, targets = [], []
    for i in range(0, len(ids) - max_length, stride):
        inputs.append(ids[i : i + max_length])
        targets.append(ids[i + 1 : i + max_length + 1])
    return inputs, targets


# ---- GPTDataset ---------------------------------------------------------------------------


def test_first_window_of_the_verdict_has_the_books_ids():
    dataset = GPTDataset("I HAD always thought Jack Gisburn rather a cheap genius", 4, 1)
    x, y = dataset[0]
    assert x.tolist() == [40, 367, 2885, 1464]
    assert y.tolist() == [367, 2885, 1464, 1807]


@pytest.mark.parametrize("max_length, stride", [(4, 1), (4, 4), (16, 5), (64, 64), (7, 100)])
def test_dataset_windows_equal_sliding_windows(enc, max_length, stride):
    ids = enc.encode(TEXT, allowed_special={EOT})
    dataset = GPTDataset(TEXT, max_length, stride)
    inputs, targets = _windows(ids, max_length, stride)
    assert dataset.token_ids.tolist() == ids
    assert len(dataset) == len(inputs)
    for k in range(len(dataset)):
        x, y = dataset[k]
        assert x.dtype == np.int64 and y.dtype == np.int64
        assert x.tolist() == inputs[k] and y.tolist() == targets[k]
    assert dataset[-1][0].tolist() == inputs[-1]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


@settings(deadline=None, max_examples=60)
@given(
    st.lists(st.integers(0, 50256), min_size=2, max_size=200),
    st.integers(1, 20),
    st.integers(1, 20),
)
def test_dataset_from_token_ids(ids, max_length, stride):
    if len(ids) < max_length + 1:
        with pytest.raises(ValueError, match=f"has {len(ids)} tokens.*at least {max_length + 1}"):
            GPTDataset(ids, max_length, stride)
        return
    dataset = GPTDataset(ids, max_length, stride, vocab_size=50257)
    inputs, targets = _windows(ids, max_length, stride)
    assert [dataset[k][0].tolist() for k in range(len(dataset))] == inputs
    assert [dataset[k][1].tolist() for k in range(len(dataset))] == targets


def test_dataset_with_a_trained_tokenizer():
    tokenizer = BPETokenizer().train(TEXT, vocab_size=300)
    dataset = GPTDataset(TEXT, 8, 8, tokenizer=tokenizer)
    assert dataset.vocab_size == 300
    assert dataset.token_ids.tolist() == tokenizer.encode(TEXT, allowed_special="all")


# ---- DataLoader -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset():
    return GPTDataset(TEXT, 8, 3)


def test_loader_batches_in_order(dataset):
    loader = DataLoader(dataset, batch_size=4)
    batches = list(loader)
    assert len(batches) == len(loader) == len(dataset) // 4
    for b, (x, y) in enumerate(batches):
        assert x.shape == y.shape == (4, 8)
        assert x.dtype == y.dtype == np.int64
        for row in range(4):
            expected_x, expected_y = dataset[4 * b + row]
            assert np.array_equal(x[row], expected_x) and np.array_equal(y[row], expected_y)


def test_drop_last(dataset):
    assert len(dataset) % 4 != 0  # there is a partial last batch to drop
    kept = list(DataLoader(dataset, batch_size=4, drop_last=False))
    assert len(kept) == -(-len(dataset) // 4)
    assert kept[-1][0].shape == (len(dataset) % 4, 8)
    assert sum(len(x) for x, _ in kept) == len(dataset)
    dropped = list(DataLoader(dataset, batch_size=4, drop_last=True))
    assert all(x.shape == (4, 8) for x, _ in dropped)


def _epochs(loader, n=2):
    return [np.concatenate([x for x, _ in loader]) for _ in range(n)]


def test_seeded_shuffle_is_reproducible_and_seed_dependent(dataset):
    first = _epochs(DataLoader(dataset, 4, shuffle=True, drop_last=False, seed=1))
    again = _epochs(DataLoader(dataset, 4, shuffle=True, drop_last=False, seed=1))
    other = _epochs(DataLoader(dataset, 4, shuffle=True, drop_last=False, seed=2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[1])  # each epoch a new order
    in_order = np.stack([dataset[k][0] for k in range(len(dataset))])
    for epoch in first:  # a permutation: every window exactly once
        assert sorted(map(tuple, epoch)) == sorted(map(tuple, in_order))


def test_custom_collate(dataset):
    loader = DataLoader(dataset, 2, collate_fn=lambda samples: len(samples))
    assert list(loader) == [2] * (len(dataset) // 2)


def test_create_dataloader_matches_the_dataset(enc):
    loader = create_dataloader(TEXT, batch_size=2, max_length=16, stride=16, shuffle=False)
    inputs, targets = _windows(enc.encode(TEXT, allowed_special={EOT}), 16, 16)
    x, y = next(iter(loader))
    assert x.tolist() == inputs[:2] and y.tolist() == targets[:2]
    shuffled = create_dataloader(TEXT, batch_size=2, max_length=16, stride=16, seed=0)
    assert len(shuffled) == len(inputs) // 2
    assert np.array_equal(
        next(iter(shuffled))[0],
        next(iter(create_dataloader(TEXT, batch_size=2, max_length=16, stride=16, seed=0)))[0],
    )


# ---- token files ----------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("ab 1.'\n\t\u00a0漢😀")) | st.characters()))
def test_safe_cut_does_not_change_tokens(enc, text):
    head, rest = _split_at_safe_cut(text)
    assert head + rest == text
    assert enc.encode_ordinary(head) + enc.encode_ordinary(rest) == enc.encode_ordinary(text)


@pytest.mark.parametrize("chunk_chars", [1, 7, 64, 1 << 20])
def test_token_file_equals_tiktoken_encoding(enc, tmp_path, chunk_chars):
    text_path, out_path = tmp_path / "corpus.txt", tmp_path / "out" / "corpus.bin"
    text_path.write_text(TEXT * 3, encoding="utf-8")
    assert prepare_token_file(text_path, out_path, chunk_chars=chunk_chars) == out_path
    tokens = np.fromfile(out_path, dtype=np.uint16)
    assert tokens.tolist() == enc.encode(TEXT * 3, allowed_special="all")
    assert os.listdir(out_path.parent) == ["corpus.bin"]  # no temporary file left


@pytest.fixture
def counting_file(tmp_path):
    """A token file whose token at offset i is i: a window's first token is its offset."""
    path = tmp_path / "arange.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    return path


def file_windows(path, batch_size, context_length, seed=0, val_fraction=0.1):
    """The training command's batches from a token file: split, then random windows."""
    tokens = open_token_file(path)
    boundary = int(len(tokens) * (1 - val_fraction))
    return RandomWindows(tokens[:boundary], tokens[boundary:], batch_size, context_length,
                         seed=seed)


def test_token_file_windows_are_contiguous_slices(counting_file):
    x, y = file_windows(counting_file, batch_size=5, context_length=8).train_batch(0)
    assert x.shape == y.shape == (5, 8) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    stream = np.arange(1000)
    for row_x, row_y in zip(x, y):
        offset = row_x[0]
        assert np.array_equal(row_x, stream[offset : offset + 8])
        assert np.array_equal(row_y, stream[offset + 1 : offset + 9])


def _offsets_seen(batches, n_batches):
    return {int(row[0]) for i in range(n_batches) for row in batches.train_batch(i)[0]}


def test_train_and_val_split_boundaries(counting_file):
    # 1000 tokens, val_fraction 0.1: train is tokens 0..899, val is 900..999
    batches = file_windows(counting_file, 32, 8)
    val_offsets = {int(row[0]) for x, _ in batches.eval_batches("val", 200) for row in x}
    # the last window must still have its target token inside the split
    assert val_offsets == set(range(900, 1000 - 8))
    train_offsets = _offsets_seen(batches, 300)
    assert min(train_offsets) == 0 and max(train_offsets) == 900 - 8 - 1


def test_token_file_batches_are_seeded_by_step(counting_file):
    a = file_windows(counting_file, 4, 8, seed=3)
    b = file_windows(counting_file, 4, 8, seed=3)
    c = file_windows(counting_file, 4, 8, seed=4)
    first = [a.train_batch(i)[0] for i in range(3)]
    assert all(np.array_equal(x, b.train_batch(i)[0]) for i, x in enumerate(first))
    assert not np.array_equal(first[1], a.train_batch(2)[0])  # another step, other windows
    assert not np.array_equal(first[0], c.train_batch(0)[0])


def test_prepared_file_feeds_the_windows(enc, tmp_path):
    text_path = tmp_path / "corpus.txt"
    text_path.write_text(TEXT, encoding="utf-8")
    prepare_token_file(text_path, tmp_path / "corpus.bin")
    stream = enc.encode(TEXT, allowed_special="all")
    x, y = file_windows(tmp_path / "corpus.bin", 4, 16).train_batch(0)
    as_text = " ".join(map(str, stream))
    for row_x, row_y in zip(x, y):
        assert " ".join(map(str, row_x.tolist() + row_y.tolist()[-1:])) in as_text


# ---- bad input ------------------------------------------------------------------------------


def test_bad_dataset_input():
    with pytest.raises(ValueError, match="text is empty"):
        GPTDataset("", 4, 1)
    with pytest.raises(ValueError, match="has 3 tokens.*max_length=4 needs at least 5"):
        GPTDataset("Hello, world", 4, 1)
    with pytest.raises(ValueError, match="stride must be a positive integer, got 0"):
        GPTDataset(TEXT, 4, 0)
    with pytest.raises(ValueError, match="stride must be a positive integer, got -2"):
        GPTDataset(TEXT, 4, -2)
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        GPTDataset(TEXT, 0, 1)
    with pytest.raises(ValueError, match="token id 100 at position 2 is outside.*0..99"):
        GPTDataset([1, 2, 100, 3, 4], 2, 1, vocab_size=100)
    with pytest.raises(ValueError, match="token id -1 at position 0"):
        GPTDataset([-1, 2, 3], 2, 1, vocab_size=100)
    with pytest.raises(ValueError, match="must be 1-D, got shape \\(2, 3\\)"):
        GPTDataset(np.zeros((2, 3), dtype=np.int64), 2, 1)


def test_bad_loader_input(dataset):
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        DataLoader(dataset, 0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        create_dataloader(TEXT, batch_size=-1, max_length=8, stride=8)
    with pytest.raises(ValueError, match=f"has {len(dataset)} samples, fewer than batch_size=1000"):
        DataLoader(dataset, 1000)
    assert len(DataLoader(dataset, 1000, drop_last=False)) == 1


def test_bad_token_files(tmp_path, counting_file):
    with pytest.raises(ValueError, match="validation split has 100 tokens, fewer than "
                                         "context_length \\+ 1 = 101"):
        file_windows(counting_file, 4, 100)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        file_windows(counting_file, 0, 8)
    with pytest.raises(ValueError, match="token id 999 at position 999 is outside the "
                                         "vocabulary \\(ids must be in 0..499\\)"):
        open_token_file(counting_file, vocab_size=500)
    assert len(open_token_file(counting_file, vocab_size=1000)) == 1000
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="has 3 bytes, not a whole number of uint16"):
        open_token_file(odd)
    nothing = tmp_path / "nothing.bin"
    nothing.write_bytes(b"")
    with pytest.raises(ValueError, match="nothing.bin is empty"):
        open_token_file(nothing)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt is empty"):
        prepare_token_file(empty, tmp_path / "empty.bin")
    # no leftovers
    assert sorted(os.listdir(tmp_path)) == ["arange.bin", "empty.txt", "nothing.bin", "odd.bin"]
