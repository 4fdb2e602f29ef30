"""The `tinygpt` command, run in-process through cli.main (and once as a real subprocess)."""

import os
import signal
import socket
import subprocess
import sys
import warnings

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


# ----------------------------------------------------------------------------- faults (issue 14)

def test_train_without_data_uses_the_bundled_shakespeare(tmp_path, capsys):
    out = tmp_path / "baby"
    assert main(["train", "--out", str(out), "--max-steps", "2", "--batch-size", "2",
                 "--context-length", "16", "--eval-iters", "1"]) == 0
    assert "tinyshakespeare.txt" in capsys.readouterr().out
    assert load_tokenizer(out).n_vocab == 65  # nanoGPT's 65 characters of Tiny Shakespeare


def test_warm_up_scales_with_a_short_run_and_errors_name_the_options(text_file, tmp_path,
                                                                     capsys):
    assert main(["train", "--data", str(text_file), "--out", str(tmp_path / "a"),
                 "--max-steps", "5", "--batch-size", "2", "--context-length", "16",
                 "--eval-iters", "1"]) == 0  # the default warm-up of 100 steps did not fit
    assert load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME)["train_config"][
        "warmup_steps"] == 0  # 10% of 5 steps
    with pytest.raises(SystemExit, match="--warmup-steps 10 is more than --max-steps 4"):
        run_train(text_file, tmp_path / "b", "--warmup-steps", "10")
    assert not (tmp_path / "b").exists()


def test_interrupting_train_with_sigterm_saves_and_exits_143(text_file, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-u", "-m", "tinygpt", "train", "--data", str(text_file),
               "--out", str(out), "--max-steps", "100000", "--batch-size", "2",
               "--context-length", "16", "--eval-every", "1", "--eval-iters", "1"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    for line in child.stdout:  # wait until training runs
        if line.startswith("step"):
            break
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 143
    assert "interrupted by SIGTERM at step" in stderr and "run the same command again" in stderr
    assert "final:" not in stdout and "Traceback" not in stderr
    step = load_checkpoint(out / CHECKPOINT_NAME)["step"]
    assert f"saved step {step} to" in stderr
    assert not (out / ".tinygpt.lock").exists()


def test_a_refused_resume_writes_nothing(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(text_file, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run_train(text_file, out, "--tokenizer", "gpt2") == 1  # another vocabulary
    assert "holds a model with config" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(["generate", "First", "--model", str(out), "--max-new-tokens", "3"]) == 0


def test_resuming_with_changed_settings_says_what_it_does(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(text_file, out) == 0
    capsys.readouterr()
    assert run_train(text_file, out, "--max-steps", "6", "--lr", "0.002", "--seed", "5") == 0
    text = capsys.readouterr().out
    assert "resuming with --lr = 0.002 instead of the checkpoint's 0.001 from step 4" in text
    assert "--max-steps = 6 instead of the checkpoint's 4" in text
    assert "--seed = 5" in text and "batches from here on differ" in text
    assert load_checkpoint(out / CHECKPOINT_NAME)["step"] == 6


def test_a_second_train_on_the_same_out_is_refused(text_file, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = tmp_path / "run"
        out.mkdir()
        (out / ".tinygpt.lock").write_text(f"{holder.pid}\n{socket.gethostname()}\n")
        assert run_train(text_file, out) == 1
        assert f"in use by process {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".tinygpt.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert run_train(text_file, out) == 0  # the holder is gone: its lock is stale


def test_prepare_refuses_to_overwrite_its_input(text_file, capsys):
    assert main(["prepare", str(text_file), str(text_file)]) == 1
    assert "is the text file itself" in capsys.readouterr().err
    assert text_file.read_text(encoding="utf-8") == TEXT


def test_token_files_are_checked_before_training(text_file, tmp_path, capsys):
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    assert run_train(odd, tmp_path / "a") == 1
    assert "not a whole number of uint16 token ids" in capsys.readouterr().err
    too_big = tmp_path / "big.bin"
    np.array([1, 2, 60000] * 100, dtype=np.uint16).tofile(too_big)
    assert run_train(too_big, tmp_path / "b") == 1
    assert "token id 60000 at position 2 is outside the vocabulary" in capsys.readouterr().err
    upper = tmp_path / "TOKENS.BIN"
    assert main(["prepare", str(text_file), str(upper)]) == 0
    with pytest.raises(SystemExit, match="--tokenizer char: --data .* is a token file"):
        run_train(upper, tmp_path / "c", "--tokenizer", "char")
    assert main(["train", "--data", str(upper), "--config", "baby", "--out",
                 str(tmp_path / "d"), "--max-steps", "1", "--batch-size", "2",
                 "--context-length", "8", "--eval-iters", "1"]) == 0  # .BIN is a token file


def test_a_diverging_run_ends_with_one_clear_line(text_file, tmp_path, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_train(text_file, tmp_path / "run", "--lr", "1e35", "--grad-clip", "0") == 1
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    err = capsys.readouterr().err
    assert "Warning" not in err
    last = err.strip().splitlines()[-1]  # after the progress bar, nothing but the reason
    assert last.startswith("error: ") and ("inf or NaN" in last or "loss became" in last)


def test_top_k_with_greedy_decoding_warns_that_it_does_nothing(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "nowhere"), "--top-k", "5"]) == 1
    err = capsys.readouterr().err
    assert "warning: --top-k has no effect with --temperature 0" in err
    main(["generate", "hi", "--model", str(tmp_path / "nowhere"), "--top-k", "5",
          "--temperature", "0.8"])
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- memory, info

def test_info_lists_the_presets_it_accepts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("baby", "gpt2-124M", "gpt2-355M", "gpt2-774M", "gpt2-1558M", "gpt2-medium"):
        assert name in out
    assert "163,009,536" in out and "406,212,608" in out  # the book's 124M and 355M counts


def test_info_estimates_the_memory_that_killed_a_default_gpt2_run(capsys):
    # issue 15: `tinygpt train --config gpt2-124M` with batches of 12 x 1024 was killed by the
    # kernel at 24 GB; the estimate must say so before anything is allocated.
    assert main(["info", "gpt2-124M"]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("training:")][0]
    assert float(line.split("about ")[1].split(" GiB")[0]) * 2**30 > 24e9


def test_train_splits_a_batch_that_does_not_fit_into_micro_batches(text_file, tmp_path,
                                                                    monkeypatch, capsys):
    from tinygpt import memory
    from tinygpt.config import GPTConfig

    cfg = GPTConfig.preset("baby", vocab_size=len(set(TEXT)), context_length=16)
    one = memory.estimate_step_memory(cfg, 1).total
    monkeypatch.setattr(memory, "available_memory", lambda: int(one / 0.8) + 1)
    out = tmp_path / "run"
    assert run_train(text_file, out, "--batch-size", "4") == 0
    assert "split into micro-batches of 1 (gradient accumulation 4" in capsys.readouterr().out
    saved = load_checkpoint(out / CHECKPOINT_NAME)["train_config"]
    assert (saved["batch_size"], saved["grad_accum"]) == (1, 4)  # the same 4 sequences a step

    monkeypatch.setattr(memory, "available_memory", lambda: one // 2)
    assert run_train(text_file, tmp_path / "other") == 1
    err = capsys.readouterr().err
    assert "needs about" in err and "even one sequence at a time" in err
    assert "--context-length" in err and "--config" in err
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_memory_estimate_of_one_data_parallel_process():
    """Each of N processes holds the whole model and the largest share of a micro-batch's
    rows; ZeRO-1 saves 4P(2N - 3)/N bytes per process (the figure the README's data-parallel
    section derives and measures: 2P at N = 2)."""
    from tinygpt import memory
    from tinygpt.config import GPTConfig

    cfg = GPTConfig.preset("baby")
    P = memory.parameter_count(cfg)
    one = memory.estimate_step_memory(cfg, 4)
    assert memory.estimate_step_memory(cfg, 4, ranks=2).activations == \
        memory.estimate_step_memory(cfg, 2).activations
    assert memory.estimate_step_memory(cfg, 5, ranks=2).activations == \
        memory.estimate_step_memory(cfg, 3).activations  # rank 0 gets 3 of 5 rows
    for n in (2, 4):
        replicated = memory.estimate_step_memory(cfg, 4, ranks=n)
        zero = memory.estimate_step_memory(cfg, 4, ranks=n, sharded=True)
        assert replicated.weights_and_optimizer == one.weights_and_optimizer
        assert replicated.weights_and_optimizer - zero.weights_and_optimizer == \
            4 * P * (2 * n - 3) // n


def test_micro_batches_are_planned_for_every_process_on_the_machine():
    from tinygpt import memory
    from tinygpt.config import GPTConfig

    cfg = GPTConfig.preset("baby")
    two_rows_each = memory.estimate_step_memory(cfg, 4, ranks=2).total
    one_row_each = memory.estimate_step_memory(cfg, 2, ranks=2).total
    # room for two processes of one row each, or one of two rows, not two of two rows
    available = int((one_row_each + two_rows_each) / 0.8)
    assert memory.plan_micro_batches(cfg, 4, 1, available, ranks=2, local_ranks=1)[:2] == (4, 1)
    micro, accum, estimate = memory.plan_micro_batches(cfg, 4, 1, available, ranks=2)
    assert (micro, accum) == (2, 2)  # 1 row per process, twice per step
    assert 2 * estimate.total <= 0.8 * available
    with pytest.raises(memory.DoesNotFit, match=r"each of 4 processes.*--nproc"):
        memory.plan_micro_batches(cfg, 4, 1, available, ranks=4)  # 4 rows is the least


@pytest.mark.parametrize("variables, expected", [
    ({}, None), ({"MPI_LOCALNRANKS": "3"}, 3), ({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, 2)])
def test_processes_on_this_machine_from_the_launchers_variables(monkeypatch, variables,
                                                                expected):
    from tinygpt import distributed

    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert distributed.local_size_from_environment() == expected


def test_version_is_the_packages(capsys):
    import importlib.metadata

    import tinygpt

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"tinygpt {tinygpt.__version__}"
    assert tinygpt.__version__ == importlib.metadata.version("tinygpt")  # pyproject's


def test_chat_warns_like_generate_that_top_k_does_nothing_when_greedy(tmp_path, capsys):
    assert main(["chat", "--model", str(tmp_path / "nowhere"), "--top-p", "0.9"]) == 1
    assert "warning: --top-p has no effect with --temperature 0" in capsys.readouterr().err
