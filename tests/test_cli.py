"""The `tinygpt` command, run in-process through cli.main (and once as a real subprocess)."""

import subprocess
import sys

import numpy as np
import pytest

from tinygpt.checkpoints import CHECKPOINT_NAME, load_checkpoint
from tinygpt.cli import build_parser, main
from tinygpt.tokenizer import CharTokenizer, gpt2_encoding, load_tokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 40


@pytest.fixture()
def text_file(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run_train(text_file, out, *extra):
    return main(["train", "--data", str(text_file), "--config", "baby", "--out", str(out),
                 "--max-steps", "4", "--batch-size", "2", "--context-length", "16",
                 "--eval-every", "2", "--eval-iters", "1", "--warmup-steps", "1", *extra])


def test_train_then_generate_from_the_run_directory(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(text_file, out) == 0
    assert {p.name for p in out.iterdir()} == {CHECKPOINT_NAME, "losses.png", "tokenizer.json"}
    tokenizer = load_tokenizer(out)
    assert isinstance(tokenizer, CharTokenizer)
    assert tokenizer.n_vocab == len(set(TEXT))
    assert load_checkpoint(out / CHECKPOINT_NAME)["model_config"].vocab_size == len(set(TEXT))
    capsys.readouterr()

    assert main(["generate", "First", "--model", str(out), "--max-new-tokens", "12",
                 "--temperature", "1.0", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("First") and len(first.rstrip("\n")) == len("First") + 12
    assert main(["generate", "First", "--model", str(out), "--max-new-tokens", "12",
                 "--temperature", "1.0", "--seed", "3", "--no-cache"]) == 0
    assert capsys.readouterr().out == first  # same seed, same text, cache or not


def test_running_train_again_resumes(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(text_file, out) == 0
    capsys.readouterr()
    assert run_train(text_file, out) == 0  # same command again: continues from step 4
    assert "at step 4" in capsys.readouterr().out


def test_info_counts_the_book_parameters(capsys):
    assert main(["info", "gpt2-124M"]) == 0
    out = capsys.readouterr().out
    assert "163,009,536" in out and "124,412,160" in out  # the book's two numbers


def test_prepare_writes_gpt2_tokens(text_file, tmp_path, capsys):
    out = tmp_path / "tokens.bin"
    assert main(["prepare", str(text_file), str(out)]) == 0
    tokens = np.fromfile(out, dtype=np.uint16)
    assert tokens.tolist() == gpt2_encoding().encode_ordinary(TEXT)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit, match="no such file"):
        main(["train", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path)])
    assert main(["generate", "hi", "--model", str(tmp_path / "nowhere")]) == 1
    assert "neither a GPT-2 model name" in capsys.readouterr().err
    assert main(["info", "gpt5"]) == 1


@pytest.mark.parametrize("command", ["generate", "train", "info", "prepare", "chat", "judge",
                                     "finetune-classifier", "finetune-instruct",
                                     "finetune-dpo"])
def test_every_option_is_explained(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if action.dest != "help":
            assert action.help, f"{command} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("module", ["tinygpt", "tinygpt.cli"])
def test_the_installed_command_runs(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"],
                            capture_output=True, text=True, check=True)
    assert "generate" in result.stdout and "train" in result.stdout


@pytest.mark.parametrize("option, value, message", [
    ("--grad-clip", "-1", "argument --grad-clip: must be >= 0, got -1"),
    ("--val-fraction", "1.5", "argument --val-fraction: must be between 0 and 1"),
    ("--checkpoint-every", "-1", "argument --checkpoint-every: must be >= 0, got -1"),
    ("--context-length", "0", "argument --context-length: must be a positive integer, got 0"),
    ("--lr", "0", "argument --lr: must be > 0, got 0"),
    ("--batch-size", "two", "argument --batch-size: expected an integer, got 'two'"),
    ("--dropout", "1", "argument --dropout: must be in [0, 1), got 1"),
])
def test_out_of_range_training_options_are_refused(text_file, tmp_path, capsys, option, value,
                                                   message):
    with pytest.raises(SystemExit) as exit_:
        run_train(text_file, tmp_path / "run", option, value)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("option, value", [("--top-k", "0"), ("--top-p", "1.5"),
                                           ("--temperature", "-0.5"),
                                           ("--max-new-tokens", "-3")])
def test_out_of_range_sampling_options_are_refused(capsys, option, value):
    with pytest.raises(SystemExit):
        main(["generate", "hi", option, value])
    assert f"argument {option}: must be" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["generate", "train", "info", "prepare"])
def test_every_default_is_shown_in_help(command):
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if action.default not in (None, False, "==SUPPRESS==") and action.option_strings:
            shown = "a newline" if action.default == "\n" else action.default
            assert f"(default: {shown})" in text, \
                f"{command} {action.option_strings[0]} does not show its default"
