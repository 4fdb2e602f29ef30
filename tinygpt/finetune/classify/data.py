"""Data for classification fine-tuning: the SMS Spam Collection read, balanced, split and
tokenized into padded batches (the book's chapter 6, sections 6.2-6.3)."""

from __future__ import annotations

from pathlib import Path

import numpy

from tinygpt.data import DataLoader
from tinygpt.fileio import atomic_write
from tinygpt.finetune.alpaca import END_OF_TEXT_ID, encode

LABELS = ("ham", "spam")  # class 0, class 1 (the book's "not spam" / "spam")
SMS_SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"


def read_labeled_tsv(path, labels=LABELS) -> list[tuple[int, str]]:
    """(class index, text) for every line ``label<TAB>text`` of a UTF-8 file.

    The label is looked up in ``labels`` (its position is the class index); the text is
    everything after the first tab. Blank lines are skipped. A line without a tab, with an
    unknown label or with no text, or a file holding no messages, is a ValueError naming the
    file and line.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(labels)}
    examples = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            shown = line if len(line) <= 60 else line[:57] + "..."
            if "\t" not in line:
                raise ValueError(f"{path}, line {number}: expected 'label<TAB>text', found no "
                                 f"tab in {shown!r}")
            label, text = line.split("\t", 1)
            if label not in index:
                raise ValueError(f"{path}, line {number}: unknown label {label!r}; expected "
                                 f"one of {', '.join(map(repr, labels))}")
            if not text.strip():
                raise ValueError(f"{path}, line {number}: the message after the tab is empty")
            examples.append((index[label], text))
    if not examples:
        raise ValueError(f"{path} holds no messages (expected lines 'label<TAB>text')")
    return examples


def balance(examples, seed=123) -> list[tuple[int, str]]:
    """Undersample every class to the size of the smallest (the book keeps 747 "ham" for
    747 "spam"). Which examples survive depends on ``seed``; the result lists class 0's
    examples first, then class 1's, ... (``split_examples`` shuffles)."""
    rng = numpy.random.default_rng(seed)
    by_class: dict[int, list] = {}
    for example in examples:
        by_class.setdefault(example[0], []).append(example)
    if not by_class:
        raise ValueError("balance: no examples")
    smallest = min(len(group) for group in by_class.values())
    out = []
    for label in sorted(by_class):
        group = by_class[label]
        keep = sorted(rng.choice(len(group), size=smallest, replace=False))
        out.extend(group[i] for i in keep)
    return out


def split_examples(examples, train_frac=0.7, validation_frac=0.1, seed=123):
    """Shuffle (seeded) and cut into (train, validation, test), as the book's random_split:
    the first int(n * train_frac) for training, the next int(n * validation_frac) for
    validation, the rest (about 20%) for testing."""
    if not (0 < train_frac and 0 <= validation_frac and train_frac + validation_frac <= 1):
        raise ValueError(f"split fractions must be positive and add up to at most 1, got "
                         f"train {train_frac}, validation {validation_frac}")
    order = numpy.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    train_end = int(len(shuffled) * train_frac)
    validation_end = train_end + int(len(shuffled) * validation_frac)
    return shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]


def sms_spam_splits(path, seed=123, labels=LABELS):
    """The book's data pipeline in one call: read, balance, split 70/10/20."""
    return split_examples(balance(read_labeled_tsv(path, labels), seed=seed), seed=seed)


def download_sms_spam(cache_dir=None) -> Path:
    """The SMS Spam Collection as a local TSV file, downloaded once from the UCI archive.

    The zip goes to ``cache_dir`` (default ``~/.cache/tinygpt``) through
    ``tinygpt.download``; its ``SMSSpamCollection`` member is extracted beside it as
    ``SMSSpamCollection.tsv``, atomically (a failed extraction leaves no file behind).
    """
    import zipfile

    from tinygpt.download import DEFAULT_CACHE_DIR, fetch_data

    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    target = folder / "SMSSpamCollection.tsv"
    if target.is_file():
        return target
    archive = fetch_data(SMS_SPAM_URL, None, cache_dir=folder)
    try:
        with zipfile.ZipFile(archive) as z:
            members = [n for n in z.namelist() if Path(n).name == "SMSSpamCollection"]
            if not members:
                raise ValueError(f"{archive} holds no SMSSpamCollection file (it has: "
                                 f"{', '.join(z.namelist())})")
            data = z.read(members[0])
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive} is not a valid zip file ({err}); delete it to download "
                         "it again") from None
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def default_tokenizer():
    """GPT-2's BPE, the tokenizer every classifier here reads text with."""
    from tinygpt.tokenizer import gpt2_encoding

    return gpt2_encoding()


class ClassificationDataset:
    """Tokenized messages padded to one length (the book's ``SpamDataset``).

    ``max_length=None`` pads to the longest message; a number truncates longer messages to
    their first ``max_length`` tokens (pass the training set's ``max_length`` to the
    validation and test sets, as the book does). ``ids`` is (N, max_length) int64 padded with
    ``pad_token_id``; ``lengths`` holds each message's real token count; ``labels`` the
    class indices. Item i is ``(ids[i], lengths[i], labels[i])``.
    """

    def __init__(self, examples, tokenizer=None, max_length=None, pad_token_id=END_OF_TEXT_ID):
        if not examples:
            raise ValueError("ClassificationDataset: no examples")
        tokenizer = tokenizer if tokenizer is not None else default_tokenizer()
        encoded = [encode(tokenizer, text) for _, text in examples]
        for (_, text), ids in zip(examples, encoded):
            if not ids:
                raise ValueError(f"the message {text!r} encodes to no tokens")
        longest = max(len(ids) for ids in encoded)
        if max_length is None:
            max_length = longest
        elif int(max_length) < 1:
            raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")
        self.max_length = int(max_length)
        self.pad_token_id = pad_token_id
        n = len(encoded)
        self.ids = numpy.full((n, self.max_length), pad_token_id, dtype=numpy.int64)
        self.lengths = numpy.empty(n, dtype=numpy.int64)
        for i, ids in enumerate(encoded):
            ids = ids[:self.max_length]
            self.ids[i, :len(ids)] = ids
            self.lengths[i] = len(ids)
        self.labels = numpy.array([label for label, _ in examples], dtype=numpy.int64)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.ids[i], self.lengths[i], self.labels[i]


def collate(samples):
    """A batch (ids, lengths, labels), cut to its own longest message: with causal attention
    and last-real-token reading, padding beyond that changes nothing, only costs time."""
    ids, lengths, labels = (numpy.stack(column) for column in zip(*samples))
    return ids[:, :int(lengths.max())], lengths, labels


def make_loader(dataset, batch_size, shuffle=False, drop_last=False, seed=None):
    """A ``tinygpt.data.DataLoader`` of (ids, lengths, labels) batches."""
    return DataLoader(dataset, batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      collate_fn=collate)
