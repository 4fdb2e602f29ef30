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
