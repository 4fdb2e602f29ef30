"""Every code block in the README runs, offline (issue 15).

The Python blocks run as they are, one after the other in one namespace (later blocks use
earlier ones' names), in a temporary directory. The shell blocks are split into commands:

* ``tinygpt train / generate / info / prepare / attention`` run through ``tinygpt.cli.main``
  at test size: a few steps of a small model (options appended, which argparse lets win), with
  ``--model gpt2`` standing for a random GPT-2-shaped model saved in Hugging Face layout
  (nothing can be downloaded here) and the text files the commands name made from the
  bundled Tiny Shakespeare;
* the fine-tuning commands are parsed by the real parser here (their runs, interrupted and
  resumed, are tests/test_finetune_runs.py's);
* ``pip install`` and ``python -m pytest`` are CI's own steps: the test checks that
  ``.ci/run`` runs them; ``python examples/...`` and ``python benchmarks/...`` must name
  files that exist (the examples' runs are tests/test_examples.py's; benchmarks are
  measurements, run by hand).
"""

import re
import shlex
from pathlib import Path

import pytest

import tinygpt
from tinygpt.cli import build_parser, main
from tinygpt.corpora import SHAKESPEARE, corpus_path
from tinygpt.nn import GPTModel
from tinygpt.weights import save_pretrained

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUN_HERE = {"train", "generate", "info", "prepare", "attention"}
PARSED_ONLY = {"finetune-classifier", "finetune-instruct", "finetune-dpo", "chat", "judge",
               "classify"}
TEST_SIZE = {
    "train": ["--config", "baby", "--max-steps", "2", "--batch-size", "2",
              "--context-length", "16", "--eval-every", "1", "--eval-iters", "1"],
    "generate": ["--max-new-tokens", "4"],
}


def blocks(language):
    """(line number, text) of every fenced block in ``language``."""
    found = []
    for match in re.finditer(r"^```(\w+)\n(.*?)^```", README, re.S | re.M):
        if match.group(1) == language:
            found.append((README.count("\n", 0, match.start()) + 2, match.group(2)))
    return found


def shell_commands():
    """(line, argv) of every command in the bash blocks: comments dropped, continuation
    lines joined, ``a && b`` split."""
    commands = []
    for line, text in blocks("bash"):
        for command in text.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append((line, words[:cut]))
                words = words[cut + 1:]
    return commands


def test_the_readme_has_the_blocks_this_test_reads():
    assert len(blocks("python")) >= 4 and len(shell_commands()) >= 10


def test_every_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for line, code in blocks("python"):
        tinygpt.manual_seed(0)
        exec(compile(code, f"README.md, block at line {line}", "exec"), namespace)


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    """A directory with the files the README's commands name, and a stand-in for GPT-2."""
    text = corpus_path(SHAKESPEARE).read_text(encoding="utf-8")[:20000]
    for name in ("input.txt", "big.txt", "tinyshakespeare.txt"):
        (tmp_path / name).write_text(text, encoding="utf-8")
    tinygpt.manual_seed(0)
    gpt2 = GPTModel(tinygpt.GPTConfig(vocab_size=50257, context_length=64, emb_dim=16,
                                      n_heads=2, n_layers=1, qkv_bias=True))
    save_pretrained(gpt2, tmp_path / "gpt2-stand-in")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_shell_command_runs(workdir, capsys):
    ci = (ROOT / ".ci" / "run").read_text()
    ran = set()
    for line, argv in shell_commands():
        where = f"README.md line {line}: {shlex.join(argv)}"
        if argv[:2] == ["pip", "install"]:
            assert 'pip install -e ".[dev]"' in ci, where  # CI installs tinygpt this way
        elif argv[:3] == ["python", "-m", "pytest"]:
            assert "python -m pytest" in ci, where
        elif argv[0] == "python":
            assert (ROOT / argv[1]).is_file(), where
        else:
            assert argv[0] == "tinygpt", where
            command = argv[1]
            args = ["gpt2-stand-in" if a in ("gpt2", "gpt2-medium") else a for a in argv[1:]]
            if command in PARSED_ONLY:
                build_parser().parse_args(args)
                continue
            assert command in RUN_HERE, f"{where}: not a command this test knows"
            status = main(args + TEST_SIZE.get(command, []))
            assert status == 0, f"{where} exited {status}: {capsys.readouterr().err}"
            ran.add(command)
    assert {"train", "generate", "info", "prepare"} <= ran
