"""The examples: each answers --help, and the chapters with bundled text run offline."""

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.py"))


def run_example(path, *args, monkeypatch):
    """Run an example script in this process with ``args`` as its command line."""
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_answers_help(path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_example(path, "--help", monkeypatch=monkeypatch)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and len(out.splitlines()) > 3


def test_the_shakespeare_example_trains_on_the_bundled_text(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    run_example(EXAMPLES[[p.name for p in EXAMPLES].index("05_shakespeare_char.py")],
                "--out", str(out), "--max-steps", "2", "--eval-every", "1", "--eval-iters", "1",
                monkeypatch=monkeypatch)
    text = capsys.readouterr().out
    assert "1,115,394 characters" in text  # Tiny Shakespeare, as nanoGPT counts it
    assert (out / "checkpoint.safetensors").is_file() and (out / "losses.png").is_file()
    assert text.rstrip().splitlines()[-1].startswith("ROMEO:")


@pytest.mark.parametrize("example, url_at, message", [
    ("07_instruction_finetune.py", ("tinygpt.finetune.alpaca", "DATA_URL"),
     "error: no instruction data"),
    ("06_spam_classifier.py", ("tinygpt.finetune.classify.data", "SMS_SPAM_URL"),
     "error: could not download the SMS Spam Collection"),
])
def test_fine_tuning_examples_offline_say_to_pass_data(example, url_at, message, tmp_path,
                                                       monkeypatch, capsys):
    import importlib

    import tinygpt.download

    # Offline: the data's address refuses connections, and nothing is cached yet.
    monkeypatch.setattr(importlib.import_module(url_at[0]), url_at[1],
                        "http://127.0.0.1:9/not-downloaded-in-tests")
    monkeypatch.setattr(tinygpt.download, "DEFAULT_CACHE_DIR", tmp_path / "cache")
    path = EXAMPLES[[p.name for p in EXAMPLES].index(example)]
    with pytest.raises(SystemExit) as exit_:
        run_example(path, "--model", "scratch", "--out", str(tmp_path / "out"),
                    monkeypatch=monkeypatch)
    text = str(exit_.value.code)
    assert text.startswith(message) and "pass --data PATH" in text
    assert len(text.splitlines()) == 1
