"""Fine-tuning commands as a user runs them (through ``tinygpt.cli.main``): interrupted and
resumed runs against uninterrupted ones, LoRA on tied and untied bases, re-runs on an
existing --out, one model per directory, and ``tinygpt classify``."""

import json
import os
import signal

import numpy
import pytest

import tinygpt
from tinygpt.cli import main
from tinygpt.config import GPTConfig
from tinygpt.finetune.alpaca import RESPONSES_FILE
from tinygpt.nn import GPTModel
from tinygpt.weights import save_pretrained

TINY = GPTConfig(vocab_size=50257, context_length=64, emb_dim=16, n_heads=2, n_layers=1,
                 drop_rate=0.0)


def save_base(path, tied=False):
    """A random tiny GPT in Hugging Face layout: the head tied to the embedding (as GPT-2's)
    or its own matrix."""
    tinygpt.manual_seed(0)
    save_pretrained(GPTModel(TINY.replace(tie_embeddings=tied)), path)
    return str(path)


def write_entries(path, n=20):
    entries = [{"instruction": f"Repeat the number {i}.", "input": "" if i % 2 else str(i),
                "output": f"The number is {i}."} for i in range(n)]
    path.write_text(json.dumps(entries))
    return str(path)


def interrupt_after(monkeypatch, steps, signum=signal.SIGINT, module="tinygpt.train",
                    step_function="_train_step", step_argument=3):
    """Send this process ``signum`` (SIGINT: Ctrl-C) once a training loop has done ``steps``
    steps: ``tinygpt.train``'s by default, or the one whose step is ``module.step_function``
    (taking the step number as positional argument ``step_argument``)."""
    import importlib

    owner = importlib.import_module(module)
    original = getattr(owner, step_function)

    def step_then_interrupt(*args):
        result = original(*args)
        if args[step_argument] + 1 == steps:
            os.kill(os.getpid(), signum)
        return result

    monkeypatch.setattr(owner, step_function, step_then_interrupt)


def instruct_command(data, base, out, *extra):
    return ["finetune-instruct", "--data", data, "--model", base, "--out", str(out),
            "--epochs", "1", "--batch-size", "4", "--lr", "1e-2", "--max-new-tokens", "2",
            "--num-test", "1", "--eval-every", "2", "--eval-iters", "1", *extra]


def final_weights(out):
    """The fine-tuned model a run leaves in ``out``, as a state dict."""
    from tinygpt.checkpoints import load_model

    model, _ = load_model(out)
    return model.state_dict()


@pytest.mark.parametrize("lora, tied", [(True, True), (True, False), (False, False)],
                         ids=["lora-tied-base", "lora-untied-base", "full"])
def test_interrupted_finetune_instruct_resumes_to_the_uninterrupted_result(
        tmp_path, monkeypatch, capsys, lora, tied):
    base = save_base(tmp_path / "base", tied)
    data = write_entries(tmp_path / "data.json")
    extra = ["--lora-rank", "2", "--lora-alpha", "4"] if lora else []
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(instruct_command(data, base, straight, *extra)) == 0
    capsys.readouterr()

    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)
        assert main(instruct_command(data, base, resumed, *extra)) == 130
    printed = capsys.readouterr()
    assert "interrupted by SIGINT at step 2" in printed.err
    assert "run the same command again to resume" in printed.err
    assert "training completed" not in printed.out
    assert not (resumed / RESPONSES_FILE).exists()  # nothing after training ran
    assert not (resumed / "model.safetensors").exists()
    assert (resumed / ("lora-checkpoint" if lora else "") / "checkpoint.safetensors").is_file()

    assert main(instruct_command(data, base, resumed, *extra)) == 0
    assert "resuming the run in" in capsys.readouterr().out
    expected, got = final_weights(straight), final_weights(resumed)
    assert set(got) == set(expected)
    for key in expected:  # the same run, bit for bit (LoRA's random start included)
        numpy.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert (json.loads((resumed / RESPONSES_FILE).read_text())
            == json.loads((straight / RESPONSES_FILE).read_text()))


def test_rerunning_finetune_instruct_on_its_out_refuses_instead_of_silently_redoing(
        tmp_path, capsys):
    base = save_base(tmp_path / "base")
    data = write_entries(tmp_path / "data.json")
    out = tmp_path / "run"
    assert main(instruct_command(data, base, out)) == 0
    responses = (out / RESPONSES_FILE).read_bytes()
    capsys.readouterr()

    assert main(instruct_command(data, base, out)) == 1  # finished: nothing silently redone
    err = capsys.readouterr().err
    assert "holds a finished run (4 of 4 steps)" in err and "choose a new --out" in err
    assert main(instruct_command(data, base, out) + ["--lr", "1e-3"]) == 1
    err = capsys.readouterr().err
    assert "--lr 0.001 (the run used 0.01)" in err  # a changed --lr is not ignored
    assert (out / RESPONSES_FILE).read_bytes() == responses  # earlier responses untouched


def test_a_changed_lr_is_refused_when_resuming_an_interrupted_run(tmp_path, monkeypatch,
                                                                  capsys):
    base = save_base(tmp_path / "base")
    data = write_entries(tmp_path / "data.json")
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1, signal.SIGTERM)  # what kill, schedulers and containers send
        assert main(instruct_command(data, base, out)) == 143
    assert "interrupted by SIGTERM at step 1" in capsys.readouterr().err
    assert not (out / RESPONSES_FILE).exists()
    assert main(instruct_command(data, base, out) + ["--lr", "1e-3"]) == 1
    assert "--lr 0.001 (the run used 0.01)" in capsys.readouterr().err


def write_preferences(path, n=20):
    entries = [{"instruction": f"Say {i}.", "input": "", "output": f"{i}.", "chosen": f"{i}.",
                "rejected": f"No, {i + 1}!"} for i in range(n)]
    path.write_text(json.dumps(entries))
    return str(path)


def test_one_model_per_directory(tmp_path, capsys):
    """finetune-dpo --model inst --out inst used to write model.safetensors beside the
    instruction run's checkpoint.safetensors, and every later --model inst loaded the old one."""
    base = save_base(tmp_path / "base")
    inst = tmp_path / "inst"
    assert main(instruct_command(write_entries(tmp_path / "data.json"), base, inst)) == 0
    capsys.readouterr()
    prefs = write_preferences(tmp_path / "prefs.json")
    assert main(["finetune-dpo", "--data", prefs, "--model", str(inst), "--out", str(inst),
                 "--batch-size", "4", "--max-steps", "1"]) == 1
    assert "already holds a model (checkpoint.safetensors)" in capsys.readouterr().err
    assert not (inst / "model.safetensors").exists()
    assert main(["finetune-dpo", "--data", prefs, "--model", str(inst), "--out",
                 str(tmp_path / "dpo"), "--batch-size", "4", "--max-steps", "1"]) == 0

    (inst / "model.safetensors").write_bytes((tmp_path / "dpo" / "model.safetensors").read_bytes())
    assert main(["generate", "hi", "--model", str(inst), "--max-new-tokens", "1"]) == 1
    assert "holds both a training checkpoint" in capsys.readouterr().err


def test_interrupted_finetune_dpo_saves_the_model_trained_so_far(tmp_path, monkeypatch, capsys):
    base = save_base(tmp_path / "base")
    out = tmp_path / "dpo"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1, module="tinygpt.finetune.dpo.training",
                        step_function="_dpo_step", step_argument=6)
        assert main(["finetune-dpo", "--data", write_preferences(tmp_path / "prefs.json"),
                     "--model", base, "--out", str(out), "--batch-size", "4", "--lr", "1e-2",
                     "--eval-every", "1", "--eval-iters", "1"]) == 130
    err = capsys.readouterr().err
    assert "interrupted by SIGINT at step 1 of 4" in err
    assert f"the model trained so far is saved in {out}" in err
    history = json.loads((out / "dpo-history.json").read_text())
    assert history["interrupted"] and history["steps"] == [1]
    tuned = tinygpt.load_gpt2(out).state_dict()
    original = tinygpt.load_gpt2(base).state_dict()
    assert not numpy.array_equal(tuned["trf_blocks.0.att.W_query.weight"],
                                 original["trf_blocks.0.att.W_query.weight"])  # one step taken


@pytest.mark.parametrize("command", ["finetune-instruct", "finetune-dpo",
                                     "finetune-classifier"])
def test_a_second_writer_into_the_same_out_is_refused(tmp_path, capsys, command):
    import socket
    import subprocess
    import sys

    from tinygpt.rundir import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(f"{holder.pid}\n{socket.gethostname()}\n")
        data = {"finetune-instruct": write_entries(tmp_path / "data.json"),
                "finetune-dpo": write_preferences(tmp_path / "prefs.json"),
                "finetune-classifier": str(tmp_path / "sms.tsv")}[command]
        (tmp_path / "sms.tsv").write_text("ham\thi\nspam\twin\n")
        assert main([command, "--data", data, "--model", "scratch", "--out", str(out)]) == 1
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by process {holder.pid}" in capsys.readouterr().err
    assert os.listdir(out) == [LOCK_NAME]  # nothing written


def test_finetune_dpo_defaults_visibly_move_the_loss_and_margin(tmp_path):
    """With the book's lr 5e-6 a small model's DPO loss stays at log 2 = 0.6931 and the
    reward margin at 0.0001 (issue 15): the defaults must show an effect within an epoch."""
    out = tmp_path / "dpo"
    assert main(["finetune-dpo", "--data", write_preferences(tmp_path / "prefs.json", n=40),
                 "--model", save_base(tmp_path / "base"), "--out", str(out),
                 "--batch-size", "4", "--eval-every", "8", "--eval-iters", "2"]) == 0
    history = json.loads((out / "dpo-history.json").read_text())
    assert history["steps"] == [8]  # one epoch of 34 training pairs in batches of 4
    assert history["train_loss"][-1] < numpy.log(2) - 0.004
    assert history["train_reward_margin"][-1] > 0.005
    assert history["val_reward_margin"][-1] > 0.005
