"""Classification fine-tuning: the data pipeline (reading, balancing, splitting, padding),
last-real-token reading, trainable sets, saving, errors, and a tiny GPT that learns a
clearly separable task."""

import json

import numpy as np
import pytest

import tinygpt
from tinygpt import backend
from tinygpt.cli import main
from tinygpt.config import GPTConfig
from tinygpt.finetune.alpaca import END_OF_TEXT_ID as PAD_TOKEN_ID
from tinygpt.finetune.classify.checkpoint import load_classifier, save_classifier
from tinygpt.finetune.classify.data import (
    ClassificationDataset,
    balance,
    read_labeled_tsv,
    split_examples,
)
from tinygpt.finetune.classify.model import classify, new_classifier, set_trainable
from tinygpt.finetune.classify.run import ClassifierTrainConfig, finetune_classifier
from tinygpt.nn import GPTModel, LoRALinear, apply_lora
from tinygpt.tokenizer import gpt2_encoding

TINY = GPTConfig(vocab_size=50257, context_length=32, emb_dim=16, n_heads=2, n_layers=3,
                 drop_rate=0.0)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_encoding()


def tiny_classifier(seed=0, **overrides):
    tinygpt.manual_seed(seed)
    classifier = new_classifier(GPTModel(TINY.replace(**overrides)))
    classifier.model.eval()
    return classifier


def write_tsv(path, rows):
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- data

def test_read_labeled_tsv(tmp_path):
    path = write_tsv(tmp_path / "sms.tsv", [("ham", "see you"), ("spam", "WIN\tcash now")])
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    assert read_labeled_tsv(path) == [(0, "see you"), (1, "WIN\tcash now")]


@pytest.mark.parametrize("content, message", [
    ("ham\tfine\nspam free cash\n", r"line 2: expected 'label<TAB>text', found no tab"),
    ("ham\tok\nham\tok\neggs\tbacon\n", r"line 3: unknown label 'eggs'"),
    ("ham\t  \n", r"line 1: the message after the tab is empty"),
    ("", "holds no messages"),
    ("\n\n", "holds no messages"),
])
def test_bad_input_names_the_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        read_labeled_tsv(path)
    assert str(path) in str(err.value)


def test_balance_counts_are_exact_and_seeded():
    examples = [(0, f"ham {i}") for i in range(30)] + [(1, f"spam {i}") for i in range(11)]
    balanced = balance(examples, seed=1)
    assert sum(label == 0 for label, _ in balanced) == 11
    assert sum(label == 1 for label, _ in balanced) == 11
    assert {t for label, t in balanced if label == 1} == {f"spam {i}" for i in range(11)}
    assert len({t for _, t in balanced}) == 22 and set(balanced) <= set(examples)
    assert balance(examples, seed=1) == balanced
    assert balance(examples, seed=2) != balanced


@pytest.mark.parametrize("n, sizes", [(100, (70, 10, 20)), (1494, (1045, 149, 300))])
def test_split_sizes_are_70_10_20(n, sizes):
    examples = [(i % 2, f"message {i}") for i in range(n)]
    train, val, test = split_examples(examples, seed=123)
    assert (len(train), len(val), len(test)) == sizes
    assert sorted(train + val + test) == sorted(examples)
    assert split_examples(examples, seed=123) == (train, val, test)


def test_dataset_pads_with_50256_and_truncates(tokenizer):
    examples = [(0, "hi"), (1, "win a free prize cash now"), (0, "see you at lunch")]
    data = ClassificationDataset(examples, tokenizer)
    lengths = [len(tokenizer.encode(t)) for _, t in examples]
    assert data.max_length == max(lengths) and data.lengths.tolist() == lengths
    for row, n in zip(data.ids, lengths):
        assert (row[n:] == PAD_TOKEN_ID).all() and (row[:n] != PAD_TOKEN_ID).all()
    assert data.labels.tolist() == [0, 1, 0]
    short = ClassificationDataset(examples, tokenizer, max_length=3)
    assert short.ids.shape == (3, 3) and short.lengths.tolist() == [min(n, 3) for n in lengths]
    assert short.ids[1].tolist() == tokenizer.encode(examples[1][1])[:3]


# ----------------------------------------------------------------------------- the model

def test_classifier_reads_the_last_real_token(tokenizer):
    model = tiny_classifier()
    ids = tokenizer.encode("call now to claim your prize")
    n = len(ids)
    plain = model(np.array([ids]), [n]).numpy()
    assert plain.shape == (1, 2)
    padded = np.array([ids + [PAD_TOKEN_ID] * 7])
    np.testing.assert_allclose(model(padded, [n]).numpy(), plain, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(padded).numpy(), plain, rtol=1e-5, atol=1e-6)  # inferred
    # The book's reading, at the last position, lands on padding and changes the logits.
    last_position = model(padded, [padded.shape[1]]).numpy()
    assert not np.allclose(last_position, plain, atol=1e-3)


def test_classifier_batches_rows_of_different_lengths(tokenizer):
    model = tiny_classifier()
    texts = ["hello there", "you have won a prize of one thousand pounds"]
    single = [model(np.array([tokenizer.encode(t)])).numpy()[0] for t in texts]
    data = ClassificationDataset([(0, t) for t in texts], tokenizer)
    batch = model(data.ids, data.lengths).numpy()
    np.testing.assert_allclose(batch, np.stack(single), rtol=1e-5, atol=1e-6)


def test_classifier_keeps_the_books_parameter_names():
    model = tiny_classifier()
    params = dict(model.model.named_parameters())
    assert params["out_head.weight"].shape == (2, TINY.emb_dim)
    assert params["out_head.bias"].shape == (2,)
    gpt_names = set(GPTModel(TINY).state_dict()) - {"out_head.weight"}
    assert set(params) == gpt_names | {"out_head.weight", "out_head.bias"}


@pytest.mark.parametrize("spec, blocks, body", [
    ("last-block", [2], True), ("last-2", [1, 2], True), ("last-3", [0, 1, 2], True),
    ("head", [], False),
])
def test_trainable_sets_are_exactly_as_configured(spec, blocks, body):
    model = tiny_classifier()
    model = model.model
    names = set(set_trainable(model, spec))
    expected = {n for n, _ in model.named_parameters()
                if n.startswith("out_head.")
                or (body and n.startswith("final_norm."))
                or any(n.startswith(f"trf_blocks.{b}.") for b in blocks)}
    assert names == expected
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected


def test_trainable_all_and_bad_specs():
    model = tiny_classifier().model
    assert set(set_trainable(model, "all")) == {n for n, _ in model.named_parameters()}
    for bad in ("last-0", "last-4", "some", "last-x"):
        with pytest.raises(ValueError, match="trainable|blocks"):
            set_trainable(model, bad)


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_load_round_trip(tmp_path, tokenizer, lora):
    model = tiny_classifier()
    model.max_length = 20
    if lora:
        apply_lora(model.model, rank=2, alpha=4)
        for m in model.model.modules():
            if isinstance(m, LoRALinear):
                m.lora.B.data = np.full(m.lora.B.shape, 0.05, dtype="float32")
    data = ClassificationDataset([(0, "see you soon"), (1, "free cash prize")], tokenizer)
    logits = model(data.ids, data.lengths).numpy()
    save_classifier(model, tmp_path / "clf")
    config = json.loads((tmp_path / "clf" / "classifier.json").read_text())
    assert config["labels"] == ["ham", "spam"] and config["max_length"] == 20
    assert config["lora"] == ({"rank": 2, "alpha": 4.0} if lora else None)
    tinygpt.manual_seed(9)
    rng_state = backend.get_rng_state()
    loaded = load_classifier(tmp_path / "clf")
    assert backend.get_rng_state() == rng_state  # built without random draws, then loaded
    assert loaded.max_length == 20 and loaded.labels == ("ham", "spam")
    assert np.array_equal(loaded(data.ids, data.lengths).numpy(), logits)
    assert classify(loaded, "free cash prize", tokenizer) == classify(model, "free cash prize",
                                                                      tokenizer)
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        load_classifier(tmp_path)


def test_lora_classifier_trains_only_lora_matrices():
    model = apply_lora(tiny_classifier().model, rank=2, alpha=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".lora.A", ".lora.B")) for n in trainable)
    assert "out_head.lora.A" in trainable


# ----------------------------------------------------------------------------- learning

SPAM_WORDS = ["win", "prize", "cash", "free", "claim", "urgent", "winner", "reward"]
HAM_PHRASES = ["see you at lunch", "are we still meeting", "running late sorry",
               "thanks for dinner", "call me later", "how was your day"]


def separable_examples(n, seed):
    rng = np.random.default_rng(seed)
    examples = []
    for i in range(n):
        if i % 2:
            words = rng.choice(SPAM_WORDS, size=rng.integers(2, 5), replace=False)
            examples.append((1, " ".join(words) + " now"))
        else:
            examples.append((0, str(rng.choice(HAM_PHRASES)) + " " + str(rng.integers(1, 9))))
    return examples


def test_classifier_learns_a_separable_task(tmp_path, tokenizer):
    tinygpt.manual_seed(0)
    gpt = GPTModel(TINY.replace(emb_dim=32, n_layers=2))
    train, val, test = (separable_examples(n, seed) for n, seed in ((96, 0), (16, 1), (64, 2)))
    cfg = ClassifierTrainConfig(epochs=2, batch_size=8, lr=2e-3, trainable="all",
                                eval_every=10, eval_iters=2, seed=0)
    log = []
    model, results = finetune_classifier(gpt, train, val, test, cfg, out_dir=tmp_path,
                                         tokenizer=tokenizer, log=log.append)
    assert results["test_accuracy"] >= 0.95, log
    assert results["history"]["train_losses"][-1] < results["history"]["train_losses"][0]
    assert len(results["history"]["train_accs"]) == 2
    assert (tmp_path / "accuracy-loss.png").stat().st_size > 0
    assert classify(model, "claim your free cash prize now", tokenizer) == "spam"
    assert classify(model, "see you at lunch 3", tokenizer) == "ham"
    reloaded = load_classifier(tmp_path)
    assert classify(reloaded, "urgent winner reward now", tokenizer) == "spam"


# ----------------------------------------------------------------------------- command line

def test_finetune_classifier_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["finetune-classifier", "--help"])
    help_text = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--lr", "--trainable", "--max-length",
                   "--lora-rank", "--lora-alpha", "--seed", "--model", "--data", "--out",
                   "--eval-every", "--eval-iters"):
        assert option in help_text
    assert "default: gpt2" in help_text and "scratch" in help_text


def test_finetune_classifier_command_end_to_end(tmp_path, capsys):
    from tinygpt.weights import save_pretrained

    tinygpt.manual_seed(0)
    save_pretrained(GPTModel(TINY.replace(emb_dim=32, n_layers=2)), tmp_path / "gpt")
    rows = [("spam" if label else "ham", text) for label, text in separable_examples(80, 3)]
    data = write_tsv(tmp_path / "sms.tsv", rows + [("ham", "one more ham")])
    assert main([
        "finetune-classifier", "--data", str(data), "--model", str(tmp_path / "gpt"),
        "--out", str(tmp_path / "out"), "--epochs", "2", "--lr", "2e-3", "--trainable", "all",
        "--eval-every", "5", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "56 training, 8 validation, 16 test messages" in printed  # 40 + 40 balanced
    assert "Test accuracy:" in printed
    model = load_classifier(tmp_path / "out")
    assert (tmp_path / "out" / "accuracy-loss.png").is_file()
    assert classify(model, "claim your free cash prize now") == "spam"
    # ... and from the command line, as a user labels a message:
    assert main(["classify", "--model", str(tmp_path / "out"),
                 "claim your free cash prize now"]) == 0
    assert capsys.readouterr().out == "spam\n"
    assert main(["classify", "--model", str(tmp_path / "out"), "see you at lunch 3",
                 "urgent winner reward now"]) == 0
    assert capsys.readouterr().out == "ham\tsee you at lunch 3\nspam\turgent winner reward now\n"


def test_interrupted_finetune_classifier_saves_the_classifier_trained_so_far(
        tmp_path, monkeypatch, capsys):
    """Ctrl-C (SIGINT, sent by the process to itself after the second step) finishes that
    step, saves the classifier and exits with 130, as the other training commands do."""
    import os
    import signal

    from tinygpt.finetune.classify import training
    from tinygpt.weights import save_pretrained

    tinygpt.manual_seed(0)
    base = GPTModel(TINY.replace(emb_dim=32, n_layers=2))
    save_pretrained(base, tmp_path / "gpt")
    rows = [("spam" if label else "ham", text) for label, text in separable_examples(40, 4)]
    data = write_tsv(tmp_path / "sms.tsv", rows)
    step = training._train_step

    def step_then_interrupt(*args):
        step(*args)
        if args[-1] == 1:  # the second step (counted from 0)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(training, "_train_step", step_then_interrupt)
    out = tmp_path / "out"
    assert main(["finetune-classifier", "--data", str(data), "--model", str(tmp_path / "gpt"),
                 "--out", str(out), "--epochs", "3", "--batch-size", "4", "--lr", "1e-2",
                 "--trainable", "all", "--eval-every", "50", "--eval-iters", "1"]) == 130
    printed = capsys.readouterr()
    assert "interrupted by SIGINT at epoch 1, step 2" in printed.err
    assert f"the classifier trained so far is saved in {out}" in printed.err
    assert "Test accuracy" not in printed.out  # nothing after training ran
    name = "trf_blocks.0.att.W_query.weight"
    saved = load_classifier(out).model.state_dict()[name]
    assert not np.array_equal(saved, base.state_dict()[name])  # two steps were taken


def test_classify_names_a_directory_without_a_classifier(tmp_path, capsys):
    assert main(["classify", "--model", str(tmp_path), "hello"]) == 1
    assert "holds no saved classifier: classifier.json is missing" in capsys.readouterr().err


def test_finetune_classifier_accepts_scratch_like_the_other_commands(tmp_path, capsys):
    rows = [("spam" if label else "ham", text) for label, text in separable_examples(40, 4)]
    data = write_tsv(tmp_path / "sms.tsv", rows)
    assert main(["finetune-classifier", "--data", str(data), "--model", "scratch",
                 "--out", str(tmp_path / "out"), "--epochs", "1", "--eval-every", "50",
                 "--eval-iters", "1"]) == 0
    assert "Test accuracy:" in capsys.readouterr().out
    classifier = load_classifier(tmp_path / "out")
    assert classifier.model.cfg.n_layers == 2 and classifier.model.cfg.emb_dim == 128
    assert main(["chat", "--model", str(tmp_path / "out")]) == 1  # not a language model
    assert "holds a classifier (classifier.json)" in capsys.readouterr().err


def test_download_sms_spam_extracts_the_cached_zip(tmp_path):
    import zipfile

    from tinygpt.finetune.classify.data import download_sms_spam

    content = "ham\tsee you\nspam\tfree cash\n"
    with zipfile.ZipFile(tmp_path / "sms+spam+collection.zip", "w") as z:  # as if downloaded
        z.writestr("readme", "the SMS Spam Collection")
        z.writestr("SMSSpamCollection", content)
    path = download_sms_spam(cache_dir=tmp_path)
    assert path == tmp_path / "SMSSpamCollection.tsv"
    assert path.read_text() == content and read_labeled_tsv(path) == [(0, "see you"),
                                                                     (1, "free cash")]
    other = tmp_path / "other"
    other.mkdir()
    (other / "sms+spam+collection.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a valid zip"):
        download_sms_spam(cache_dir=other)
    assert not (other / "SMSSpamCollection.tsv").exists()
