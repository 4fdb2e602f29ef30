"""One loader for every --model: tinygpt checkpoints, Hugging Face folders, and the rules
for what a directory holds. References: the model that was saved (bit-identical weights),
and transformers' GPT2LMHeadModel for the Hugging Face files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy
import pytest
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

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


# ----------------------------------------------------------------------------- bad files
#
# Each as a user meets it: `tinygpt generate --model DIR` exits 1 with one line that names
# the file and what is wrong (issue 14: "also fix" list, items 11 and 12).

def hf_folder(directory) -> Path:
    """A Hugging Face folder as transformers writes it: config.json beside weights whose
    metadata is only {"format": "pt"} (save_pretrained also stores the config there)."""
    tinygpt.manual_seed(1)
    save_pretrained(GPTModel(CFG), directory)
    weights = Path(directory) / "model.safetensors"
    save_file(load_file(str(weights)), str(weights), metadata={"format": "pt"})
    return Path(directory)


def generate_error(model_dir, capsys) -> str:
    """Run `tinygpt generate` on ``model_dir``; the one error line it printed."""
    assert main(["generate", "to", "--model", str(model_dir), "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field, value", [
    ("n_layer", 1e8), ("n_head", "2"), ("n_embd", [16]), ("n_layer", True), ("n_head", 0),
    ("n_head", 3),  # 16 is not divisible by 3
])
def test_malformed_config_json_is_one_line_naming_the_field(tmp_path, capsys, field, value):
    folder = hf_folder(tmp_path)
    edit_json(folder / "config.json", **{field: value})
    err = generate_error(folder, capsys)
    assert str(folder / "config.json") in err and (field in err or "divisible" in err)


def test_config_json_that_is_not_an_object(tmp_path, capsys):
    folder = hf_folder(tmp_path)
    (folder / "config.json").write_text("[1, 2]")
    assert "config.json holds a JSON list" in generate_error(folder, capsys)


def test_config_claiming_huge_sizes_is_refused_before_allocating(tmp_path, capsys):
    """issue 14 item 12: a config.json claiming 10^8 layers ran 37 s (and a checkpoint
    claiming 100,000 layers allocated 3.9 GB) before failing. Now the declared sizes are
    checked against the tensors present first: the error names the first missing block and
    costs little memory."""
    folder = hf_folder(tmp_path)
    edit_json(folder / "config.json", n_layer=10**8)
    tracemalloc.start()
    try:
        err = generate_error(folder, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "100000000 layers" in err and "missing tensors: h.1." in err
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def rewrite_metadata(path, **changes):
    """Rewrite a tinygpt checkpoint with some metadata fields replaced (raw strings)."""
    with safe_open(str(path), framework="numpy") as handle:
        meta = dict(handle.metadata())
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    meta.update(changes)
    save_file(arrays, str(path), metadata=meta)


def test_checkpoint_claiming_many_layers_is_refused_before_allocating(tmp_path, capsys):
    train_folder(tmp_path)
    rewrite_metadata(tmp_path / CHECKPOINT_NAME,
                     model_config=json.dumps(CFG.replace(n_layers=100_000).to_dict()))
    tracemalloc.start()
    try:
        err = generate_error(tmp_path, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert CHECKPOINT_NAME in err and "declares 100000 layers" in err and "holds 1 layers" in err
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("field, value, expected", [
    ("model_config", "{not json", "'model_config' is malformed"),
    ("model_config", json.dumps({**CFG.to_dict(), "n_head": 2}), "'n_head'"),
    ("model_config", json.dumps({**CFG.to_dict(), "emb_dim": "16"}), "emb_dim must be a positive"),
    ("model_config", json.dumps([1, 2]), "must be an object"),
])
def test_malformed_checkpoint_metadata_is_one_line(tmp_path, capsys, field, value, expected):
    train_folder(tmp_path)
    rewrite_metadata(tmp_path / CHECKPOINT_NAME, **{field: value})
    err = generate_error(tmp_path, capsys)
    assert str(tmp_path / CHECKPOINT_NAME) in err and expected in err


def test_checkpoint_without_optimizer_state_loads_for_generation(tmp_path, capsys):
    """generate needs only the model: a checkpoint whose optimizer metadata is gone loads."""
    saved = train_folder(tmp_path)
    with safe_open(str(tmp_path / CHECKPOINT_NAME), framework="numpy") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k != "optimizer"}
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    save_file(arrays, str(tmp_path / CHECKPOINT_NAME), metadata=meta)
    assert_same_weights(load_gpt2(tmp_path), saved)
    assert main(["generate", "to", "--model", str(tmp_path), "--max-new-tokens", "2"]) == 0


@pytest.mark.parametrize("text, expected", [
    ("{oops", "is not valid JSON"),
    ('{"type": "bytes"}', 'expected an object with "type"'),
    ('{"type": "char", "chars": "abc"}', '"chars" must be a list'),
    ('{"type": "char", "chars": ["a", "a"]}', '"chars" must be a list'),
    ("[]", 'expected an object with "type"'),
])
def test_malformed_tokenizer_json_is_one_line(tmp_path, capsys, text, expected):
    train_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text(text)
    err = generate_error(tmp_path, capsys)
    assert str(tmp_path / "tokenizer.json") in err and expected in err


@pytest.mark.parametrize("damage", ["nan", "inf", "int"])
def test_non_finite_or_integer_weights_are_refused(tmp_path, capsys, damage):
    """NaN/inf or integer weights used to load and generate garbage with exit 0."""
    folder = hf_folder(tmp_path / "hf")
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = "transformer.h.0.mlp.c_fc.weight"
    if damage == "int":
        tensors[name] = tensors[name].astype(numpy.int32)
    else:
        tensors[name][0, 0] = numpy.nan if damage == "nan" else numpy.inf
    save_file(tensors, str(path), metadata={"format": "pt"})
    err = generate_error(folder, capsys)
    assert str(path) in err and "h.0.mlp.c_fc.weight" in err
    assert ("dtype int32" in err) if damage == "int" else ("NaN or infinite" in err)

    train_folder(tmp_path / "run")
    ckpt = tmp_path / "run" / CHECKPOINT_NAME
    with safe_open(str(ckpt), framework="numpy") as handle:
        meta, arrays = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    arrays["model.pos_emb.weight"][1, 2] = numpy.nan if damage != "int" else 0
    if damage == "int":
        arrays["model.pos_emb.weight"] = arrays["model.pos_emb.weight"].astype(numpy.int32)
    save_file(arrays, str(ckpt), metadata=meta)
    err = generate_error(tmp_path / "run", capsys)
    assert str(ckpt) in err and "pos_emb.weight" in err


# ----------------------------------------------------------------------------- writing

def test_disk_full_while_checkpointing_is_one_line_naming_the_file(tmp_path, capsys,
                                                                    monkeypatch):
    """A full disk made safetensors raise SafetensorError, which escaped as a traceback."""
    from tinygpt import checkpoints

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("No space left on device (os error 28)")

    monkeypatch.setattr(checkpoints, "save_file", full_disk)
    (tmp_path / "input.txt").write_text(TEXT * 20)
    out = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "input.txt"), "--config", "baby", "--out",
                 str(out), "--max-steps", "2", "--batch-size", "2", "--context-length", "8",
                 "--eval-every", "2", "--eval-iters", "1", "--warmup-steps", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the progress bar)
    message = err[err.index("error: "):]
    assert message == (f"error: could not write {out / CHECKPOINT_NAME}: No space left on "
                       "device (os error 28)")
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())  # no half-written file


def test_save_pretrained_interrupted_between_its_two_renames_loads_the_new_model(
        tmp_path, monkeypatch):
    """issue 14 item 8: weights and config.json were renamed one after the other; a
    failure between them left weights of one model beside the config of another, which
    loaded neither. The weights now carry their config, and are renamed first."""
    from tinygpt import fileio

    directory = tmp_path / "model"
    tinygpt.manual_seed(1)
    save_pretrained(GPTModel(CFG), directory)
    tinygpt.manual_seed(2)
    new = GPTModel(CFG.replace(context_length=12, n_layers=2)).eval()
    real_replace = fileio.os.replace

    def crash_before_config(src, dst):
        if Path(dst).name == "config.json":
            raise OSError("killed between the renames (simulated)")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", crash_before_config)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(new, directory)
    monkeypatch.undo()
    assert json.loads((directory / "config.json").read_text())["n_layer"] == 1  # the old one
    ids = numpy.array([[1, 2, 3, 4]])
    numpy.testing.assert_allclose(load_gpt2(directory)(ids).numpy(), new(ids).numpy(),
                                  rtol=1e-6, atol=1e-6)


def test_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    """issue 14 item 8: fsync the file before renaming it, then the folder."""
    from tinygpt import fileio

    events = []
    real_fsync, real_replace = fileio.os.fsync, fileio.os.replace
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: events.append(
        ("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name)) or real_fsync(fd))
    monkeypatch.setattr(fileio.os, "replace", lambda src, dst: events.append(
        ("replace", Path(dst).name)) or real_replace(src, dst))
    fileio.atomic_write_text(tmp_path / "a.json", "{}")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(".a.json.") and events[2][1] == tmp_path.name


KILLED_WRITER = """
import sys, time
from pathlib import Path
from tinygpt.fileio import atomic_write

def write(tmp):
    Path(tmp).write_bytes(b"x" * 4096)
    print("writing", flush=True)
    time.sleep(60)

atomic_write(Path(sys.argv[1]) / "checkpoint.safetensors", write)
"""


def test_temporaries_of_killed_writes_are_cleaned_on_the_next_write(tmp_path):
    """issue 14 item 9: a SIGKILLed write left its temporary file forever (12 x 43 MB after
    30 kills). The next write into the folder removes those of dead writers, and leaves a
    live writer's alone."""
    from tinygpt import fileio

    def start_writer():
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        return proc

    killed, alive = start_writer(), start_writer()
    try:
        killed.kill()
        killed.wait()
        temporaries = sorted(p.name for p in tmp_path.glob(".*.tmp"))
        assert len(temporaries) == 2
        fileio.atomic_write_text(tmp_path / "tokenizer.json", "{}")
        left = [p.name for p in tmp_path.glob(".*.tmp")]
        assert left == [f".checkpoint.safetensors.{alive.pid}." + left[0].split(".")[-2]
                        + ".tmp"]
    finally:
        alive.kill()
        alive.wait()
