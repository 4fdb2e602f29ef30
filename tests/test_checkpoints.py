"""One loader for every --model: tinygpt checkpoints, Hugging Face folders, and the rules
for what a directory holds. References: the model that was saved (bit-identical weights),
and transformers' GPT2LMHeadModel for the Hugging Face files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy
import pytest

import tinygpt
from tinygpt.checkpoints import CHECKPOINT_NAME, load_gpt2, load_model, save_checkpoint
from tinygpt.cli import main
from tinygpt.config import GPTConfig
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import CharTokenizer, save_tokenizer
from tinygpt.weights import CheckpointError, save_pretrained

REPO_ROOT = Path(__file__).resolve().parents[1]
TEXT = "to be or not to be, that is the question\n"
CHARS = CharTokenizer.from_text(TEXT)
CFG = GPTConfig(vocab_size=CHARS.n_vocab, context_length=16, emb_dim=16, n_heads=2,
                n_layers=1, drop_rate=0.0)


def train_folder(directory, seed=0) -> GPTModel:
    """A folder as `tinygpt train` leaves it: checkpoint.safetensors + tokenizer.json."""
    tinygpt.manual_seed(seed)
    model = GPTModel(CFG)
    save_checkpoint(Path(directory) / CHECKPOINT_NAME, model, {}, 1, {}, {})
    save_tokenizer(CHARS, directory)
    return model


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        numpy.testing.assert_array_equal(sa[key], sb[key], err_msg=key)


def test_load_gpt2_takes_a_train_folder(tmp_path):
    """issue 15 item 7: tinygpt.load_gpt2 accepts what `tinygpt generate --model` does."""
    saved = train_folder(tmp_path)
    assert_same_weights(tinygpt.load_gpt2(tmp_path), saved)
    assert_same_weights(tinygpt.load_gpt2(tmp_path / CHECKPOINT_NAME), saved)
    model, tokenizer = load_model(tmp_path)
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.chars == CHARS.chars
    assert not model.training


def test_gpt2_example_generates_from_a_train_folder(tmp_path, capsys):
    """issue 15 item 7: examples/05_gpt2_generate.py --model RUN_DIR works, with the run's
    own (character) tokenizer."""
    train_folder(tmp_path)
    spec = importlib.util.spec_from_file_location(
        "example05", REPO_ROOT / "examples" / "05_gpt2_generate.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--model", str(tmp_path), "--prompt", "to be", "--max-new-tokens", "5",
                  "--top-k", "10"])
    out = capsys.readouterr().out
    assert "loaded" in out and "5 tokens" in out


def test_a_folder_with_both_kinds_of_weights_is_refused(tmp_path, capsys):
    """issue 14 item 7: `finetune-dpo --model inst --out inst` used to leave
    model.safetensors beside checkpoint.safetensors, and every later --model inst silently
    loaded the old one. Now the folder is ambiguous: an error naming both files; naming
    the file loads it."""
    trained = train_folder(tmp_path)
    other = GPTModel(CFG)
    save_pretrained(other, tmp_path)
    assert main(["generate", "to", "--model", str(tmp_path), "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert CHECKPOINT_NAME in err and "model.safetensors" in err and "pass the file" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="holds both"):
        load_gpt2(tmp_path)
    assert_same_weights(load_gpt2(tmp_path / CHECKPOINT_NAME), trained)
    ids = numpy.array([[1, 2, 3]])  # GPT-2 files always have qkv biases: compare outputs
    numpy.testing.assert_allclose(load_gpt2(tmp_path / "model.safetensors")(ids).numpy(),
                                  other.eval()(ids).numpy(), rtol=1e-6, atol=1e-6)
