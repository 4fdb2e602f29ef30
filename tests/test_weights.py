"""GPT-2 checkpoints in and out, checked against Hugging Face transformers.

Every checkpoint here is a randomly initialised ``GPT2LMHeadModel`` (no network: the real GPT-2
weights cannot be downloaded in the test environment), with every parameter nudged by noise
so that biases and LayerNorm parameters are not the trivial 0 and 1 of a fresh init: a
loader that swapped query and key, forgot a transpose or dropped a bias would then disagree.

The download path runs against a stand-in for the Hugging Face hub that the test serves on
127.0.0.1 (``HF_ENDPOINT``), in a subprocess, because ``huggingface_hub`` reads its endpoint
and cache location once, at import.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import tinygpt  # noqa: E402
from tinygpt import fileio, weights  # noqa: E402
from tinygpt.checkpoints import load_gpt2  # noqa: E402
from tinygpt.config import GPTConfig  # noqa: E402
from tinygpt.nn.gpt import GPTModel  # noqa: E402
from tinygpt.weights import CheckpointError, save_pretrained  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=101, n_positions=48, n_embd=32, n_layer=2, n_head=4)


# ----------------------------------------------------------------------------- helpers

def hf_model(seed=0, noise=0.05, **config):
    """A random GPT2LMHeadModel in eval mode; every parameter gets N(0, noise^2) added."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{**SMALL, **config})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def token_ids(vocab, shape=(2, 16), seed=1):
    return numpy.random.default_rng(seed).integers(0, vocab, shape)


def assert_close_logits(ours, ref, tol=1e-4):
    """max |ours - ref| <= tol * max(1, max |ref|): an absolute 1e-4 for logits of order one,
    relative to the largest logit when logits are larger (float32 keeps ~7 digits)."""
    assert ours.shape == ref.shape
    scale = max(1.0, float(numpy.abs(ref).max()))
    err = float(numpy.abs(ours - ref).max())
    assert err <= tol * scale, f"max |diff| {err:.3g} > {tol} * {scale:.3g}"


def save_hf(model, directory) -> Path:
    model.save_pretrained(directory)
    return Path(directory)


def read_raw(path) -> dict:
    return safetensors_numpy.load_file(str(path))


def write_raw(tensors, path) -> None:
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "pt"})


def tinygpt_state(model) -> dict:
    return {k: numpy.array(v) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def small_hf():
    return hf_model()


@pytest.fixture
def small_dir(small_hf, tmp_path):
    return save_hf(small_hf, tmp_path / "small")


# ----------------------------------------------------------------------------- logits vs HF

def test_small_checkpoint_gives_transformers_logits(small_hf, small_dir):
    model = load_gpt2(small_dir)
    ids = token_ids(SMALL["vocab_size"])
    assert model.weights_tied and not model.training
    assert model.cfg.n_heads == 4 and model.cfg.n_layers == 2 and model.cfg.emb_dim == 32
    ours = model(ids).numpy()
    assert ours.dtype == numpy.float32
    assert_close_logits(ours, hf_logits(small_hf, ids))


def test_loading_draws_no_random_initialisation(small_dir):
    """The model is built without random weights (all are loaded): the seeded generator is
    where it was, and the loaded weights are the file's."""
    from tinygpt import backend

    tinygpt.manual_seed(7)
    model = load_gpt2(small_dir)
    after_load = backend.generator().random(4)
    tinygpt.manual_seed(7)
    numpy.testing.assert_array_equal(after_load, backend.generator().random(4))
    raw = read_raw(small_dir / "model.safetensors")
    numpy.testing.assert_array_equal(model.state_dict()["tok_emb.weight"],
                                     raw["transformer.wte.weight"])


def test_hidden_states_are_transformers_last_hidden_state(small_hf, small_dir):
    """GPTModel.hidden_states is the final LayerNorm's output, as GPT2Model's
    last_hidden_state; the head applied to it gives the logits."""
    model = load_gpt2(small_dir)
    ids = token_ids(SMALL["vocab_size"])
    with torch.no_grad():
        ref = small_hf.transformer(torch.as_tensor(ids)).last_hidden_state.numpy()
    hidden = model.hidden_states(ids)
    assert hidden.shape == (2, 16, SMALL["n_embd"])
    assert_close_logits(hidden.numpy(), ref)
    numpy.testing.assert_array_equal(model.out_head(hidden).numpy(), model(ids).numpy())


@pytest.fixture(scope="module")
def gpt2_124m(tmp_path_factory):
    """The full 124M GPT-2 architecture, random weights, saved once (about 500 MB)."""
    model = hf_model(seed=124, noise=0.02, vocab_size=50257, n_positions=1024, n_embd=768,
                     n_layer=12, n_head=12)
    directory = save_hf(model, tmp_path_factory.mktemp("gpt2-124m"))
    yield model, directory


def test_124m_checkpoint_gives_transformers_logits(gpt2_124m):
    hf, directory = gpt2_124m
    model = load_gpt2(directory)
    assert model.cfg == GPTConfig.preset("gpt2", drop_rate=0.0, qkv_bias=True,
                                         tie_embeddings=True)
    n_params = sum(p.data.size for p in model.parameters())
    assert n_params == sum(p.numel() for p in hf.parameters()) == 124_439_808
    ids = token_ids(50257)
    ref = hf_logits(hf, ids)
    assert float(numpy.abs(ref).max()) > 1.0  # logits of order one, so 1e-4 means something
    assert_close_logits(model(ids).numpy(), ref)


def test_hub_layout_without_prefix_and_with_mask_buffers(small_hf, small_dir, tmp_path):
    """The hub's own GPT-2 files name tensors without 'transformer.' and carry the causal
    mask of every layer as h.{i}.attn.bias: both must load, the buffers ignored."""
    raw = read_raw(small_dir / "model.safetensors")
    n = SMALL["n_positions"]
    hub = {k.removeprefix("transformer."): v for k, v in raw.items()}
    assert all(k.startswith(("h.", "wte", "wpe", "ln_f")) for k in hub)
    for i in range(SMALL["n_layer"]):
        hub[f"h.{i}.attn.bias"] = numpy.tril(numpy.ones((n, n), numpy.float32))[None, None]
        hub[f"h.{i}.attn.masked_bias"] = numpy.array(-1e4, numpy.float32)
    out = tmp_path / "hub"
    out.mkdir()
    write_raw(hub, out / "model.safetensors")
    (out / "config.json").write_text((small_dir / "config.json").read_text())
    ids = token_ids(SMALL["vocab_size"])
    assert_close_logits(load_gpt2(out)(ids).numpy(), hf_logits(small_hf, ids))


def test_bare_safetensors_file_path(small_hf, small_dir):
    """A path to the .safetensors file itself uses the config.json beside it."""
    ids = token_ids(SMALL["vocab_size"])
    model = load_gpt2(small_dir / "model.safetensors")
    assert_close_logits(model(ids).numpy(), hf_logits(small_hf, ids))


def test_bare_safetensors_without_config_needs_the_head_count(tmp_path):
    """issue 14 item 11: without config.json the head count used to be guessed as
    emb_dim / 64, so a 32-dim 2-head model loaded as 1 head and computed something else.
    Now the file is refused, naming config.json; with its config it loads exactly."""
    hf = hf_model(seed=3, vocab_size=67, n_positions=24, n_embd=32, n_head=2, n_layer=3)
    save_hf(hf, tmp_path / "hf")
    lone = tmp_path / "lone" / "my-gpt.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((tmp_path / "hf" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match=r"my-gpt\.safetensors has no config\.json.*"
                                              r"heads.*emb_dim 32, 3 layers"):
        load_gpt2(lone)
    (lone.parent / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    model = load_gpt2(lone)
    assert (model.cfg.vocab_size, model.cfg.context_length, model.cfg.emb_dim,
            model.cfg.n_heads, model.cfg.n_layers) == (67, 24, 32, 2, 3)
    ids = token_ids(67, (2, 24))
    assert_close_logits(model(ids).numpy(), hf_logits(hf, ids))


def test_gpt2_sizes_without_config_are_inferred():
    """For GPT-2's own four sizes the head count is known (64-dim heads)."""
    def shaped(*shape):  # a zero-stride array: the shape without the memory
        return numpy.broadcast_to(numpy.float32(0), shape)

    for (emb, layers), heads in weights.GPT2_HEADS.items():
        tensors = {"wte.weight": shaped(50257, emb), "wpe.weight": shaped(1024, emb)}
        tensors.update({f"h.{i}.ln_1.weight": shaped(emb) for i in range(layers)})
        cfg = weights._infer_config(tensors, "gpt2.safetensors")
        assert (cfg.n_heads, cfg.n_layers, cfg.emb_dim) == (heads, layers, emb)
        assert emb // heads == 64


def test_untied_lm_head(tmp_path):
    hf = hf_model(seed=4, tie_word_embeddings=False)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    directory = save_hf(hf, tmp_path / "untied")
    assert "lm_head.weight" in read_raw(directory / "model.safetensors")
    model = load_gpt2(directory)
    assert not model.weights_tied
    numpy.testing.assert_array_equal(model.out_head.weight.numpy(),
                                     hf.lm_head.weight.detach().numpy())
    ids = token_ids(SMALL["vocab_size"])
    assert_close_logits(model(ids).numpy(), hf_logits(hf, ids))


def test_tied_config_with_stored_identical_head_stays_tied(small_dir, tmp_path):
    raw = read_raw(small_dir / "model.safetensors")
    raw["lm_head.weight"] = raw["transformer.wte.weight"].copy()
    out = tmp_path / "with_head"
    out.mkdir()
    write_raw(raw, out / "model.safetensors")
    (out / "config.json").write_text((small_dir / "config.json").read_text())
    assert load_gpt2(out).weights_tied


def test_float64_loading(small_hf, small_dir):
    model = load_gpt2(small_dir, dtype="float64")
    assert all(p.dtype == numpy.float64 for p in model.parameters())
    ids = token_ids(SMALL["vocab_size"])
    ours = model(ids).numpy()
    assert ours.dtype == numpy.float64
    ref = hf_logits(small_hf.double(), ids)  # the same float32 weights, widened
    small_hf.float()
    numpy.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("tied", [True, False])
def test_tinygpt_to_transformers_and_back_is_exact(tmp_path, tied):
    """tinygpt -> save_pretrained -> GPT2LMHeadModel.from_pretrained -> save_pretrained ->
    load_gpt2 gives back bit-identical parameters (and the same logits in transformers)."""
    cfg = GPTConfig(vocab_size=89, context_length=40, emb_dim=48, n_heads=3, n_layers=2,
                    drop_rate=0.0, qkv_bias=True, tie_embeddings=tied)
    tinygpt.manual_seed(7)
    model = GPTModel(cfg).eval()
    rng = numpy.random.default_rng(7)
    for p in model.parameters():  # nonzero biases, non-unit norms
        p.data = p.data + rng.normal(0, 0.1, p.shape).astype(p.dtype)
    before = tinygpt_state(model)

    save_pretrained(model, tmp_path / "a")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a").eval()
    assert hf.config.tie_word_embeddings == tied
    ids = token_ids(89)
    assert_close_logits(hf_logits(hf, ids), model(ids).numpy())
    hf.save_pretrained(tmp_path / "b")

    back = load_gpt2(tmp_path / "b")
    assert back.cfg == cfg and back.weights_tied == tied
    after = tinygpt_state(back)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].dtype == before[name].dtype
        numpy.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_save_pretrained_writes_hf_layout(tmp_path):
    cfg = GPTConfig(vocab_size=50, context_length=16, emb_dim=16, n_heads=2, n_layers=1,
                    drop_rate=0.0, qkv_bias=False, tie_embeddings=True)
    model = GPTModel(cfg)
    save_pretrained(model, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json",
                                                                   "model.safetensors"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 16
    raw = read_raw(tmp_path / "out" / "model.safetensors")
    assert all(k.startswith("transformer.") for k in raw)  # tied: no lm_head stored
    # no qkv bias in tinygpt -> zeros in GPT-2's fused c_attn bias
    numpy.testing.assert_array_equal(raw["transformer.h.0.attn.c_attn.bias"], numpy.zeros(48))
    back = load_gpt2(tmp_path / "out")
    ids = token_ids(50, (1, 16))
    numpy.testing.assert_allclose(back(ids).numpy(), model.eval()(ids).numpy(), atol=1e-6)


# ----------------------------------------------------------------------------- errors

def test_unknown_name_lists_valid_names():
    with pytest.raises(CheckpointError) as info:
        load_gpt2("gpt2-huge")
    message = str(info.value)
    assert "'gpt2-huge'" in message
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert name in message
    with pytest.raises(CheckpointError, match="unknown GPT-2 model 'gpt-5'.*gpt2-xl"):
        weights.download_gpt2("gpt-5")


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        load_gpt2(tmp_path / "nowhere")
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="only_config has no model.safetensors"):
        load_gpt2(tmp_path / "only_config")
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*gone.safetensors"):
        weights.read_safetensors(tmp_path / "gone.safetensors")


def _copy_with(directory, tmp_path, name, edit=None, config_edit=None) -> Path:
    """A copy of a checkpoint directory with its tensors and/or config edited."""
    out = tmp_path / name
    out.mkdir()
    raw = read_raw(directory / "model.safetensors")
    if edit is not None:
        edit(raw)
    write_raw(raw, out / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    if config_edit is not None:
        config_edit(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("damage", ["truncated", "corrupt_header", "garbage", "empty"])
def test_truncated_or_corrupt_safetensors(small_dir, tmp_path, damage):
    data = (small_dir / "model.safetensors").read_bytes()
    bad = {"truncated": data[: len(data) // 2],
           "corrupt_header": data[:8] + b"\xff" * 64 + data[72:],
           "garbage": b"this is not a safetensors file at all" * 10,
           "empty": b""}[damage]
    out = tmp_path / "bad"
    out.mkdir()
    (out / "model.safetensors").write_bytes(bad)
    (out / "config.json").write_text((small_dir / "config.json").read_text())
    with pytest.raises(CheckpointError) as info:
        load_gpt2(out)
    assert str(out / "model.safetensors") in str(info.value)
    assert "truncated or corrupt" in str(info.value)


def test_missing_tensor_is_named(small_dir, tmp_path):
    out = _copy_with(small_dir, tmp_path, "missing",
                     edit=lambda raw: raw.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: h\.1\.mlp\.c_fc\.bias"):
        load_gpt2(out)


def test_unexpected_tensor_is_named(small_dir, tmp_path):
    def add(raw):
        raw["transformer.h.0.attn.q_norm.weight"] = numpy.ones(32, numpy.float32)
    out = _copy_with(small_dir, tmp_path, "unexpected", edit=add)
    with pytest.raises(CheckpointError, match=r"unexpected tensors: h\.0\.attn\.q_norm\.weight"):
        load_gpt2(out)


def test_wrong_tensor_shape_is_named(small_dir, tmp_path):
    def shrink(raw):
        name = "transformer.h.0.attn.c_attn.weight"
        raw[name] = raw[name][:, :90]
    out = _copy_with(small_dir, tmp_path, "shape", edit=shrink)
    with pytest.raises(CheckpointError, match=r"wrong shapes: h\.0\.attn\.c_attn\.weight "
                                              r"\(32, 90\) \(expected \(32, 96\)\)"):
        load_gpt2(out)


@pytest.mark.parametrize("field, value, expected", [
    ("n_embd", 64, r"emb_dim 64.*wrong shapes: wte\.weight \(101, 32\) \(expected \(101, 64\)\)"),
    ("n_layer", 3, r"3 layers.*missing tensors: h\.2\."),
    ("n_layer", 1, r"unexpected tensors: h\.1\."),
    ("n_positions", 64, r"wrong shapes: wpe\.weight \(48, 32\) \(expected \(64, 32\)\)"),
    ("vocab_size", 50257, r"vocab 50257.*wte\.weight \(101, 32\)"),
])
def test_checkpoint_that_does_not_fit_its_config(small_dir, tmp_path, field, value, expected):
    out = _copy_with(small_dir, tmp_path, "mismatch",
                     config_edit=lambda c: c.__setitem__(field, value))
    with pytest.raises(CheckpointError, match=expected) as info:
        load_gpt2(out)
    assert str(out / "model.safetensors") in str(info.value)


def test_untied_config_without_lm_head_is_an_error(small_dir, tmp_path):
    """An untied config promises a head of its own; a file without one must not silently
    get the embedding matrix as its head."""
    out = _copy_with(small_dir, tmp_path, "nohead",
                     config_edit=lambda c: c.__setitem__("tie_word_embeddings", False))
    with pytest.raises(CheckpointError, match=r"missing tensors: lm_head\.weight"):
        load_gpt2(out)


def test_bad_config_json(small_dir, tmp_path):
    out = _copy_with(small_dir, tmp_path, "badjson")
    (out / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_gpt2(out)
    out = _copy_with(small_dir, tmp_path, "nofield", config_edit=lambda c: c.pop("n_head"))
    with pytest.raises(CheckpointError, match="config.json lacks the GPT-2 field 'n_head'"):
        load_gpt2(out)


def test_file_without_embeddings_or_config(tmp_path):
    path = tmp_path / "other.safetensors"
    write_raw({"weight": numpy.zeros((2, 2), numpy.float32)}, path)
    with pytest.raises(CheckpointError, match="holds no GPT-2 embeddings"):
        load_gpt2(path)


# ----------------------------------------------------------------------------- atomic writes

def _tiny_model(seed):
    tinygpt.manual_seed(seed)
    return GPTModel(GPTConfig(vocab_size=40, context_length=8, emb_dim=8, n_heads=2,
                              n_layers=1, drop_rate=0.0, qkv_bias=True, tie_embeddings=True))


def _failing_save_file(tensors, filename, metadata=None):
    """Writes half a file, then fails, as a full disk or a kill would."""
    Path(filename).write_bytes(b"\x00" * 1000)
    raise OSError("No space left on device (simulated)")


def test_failed_write_leaves_old_checkpoint_untouched(tmp_path, monkeypatch):
    directory = tmp_path / "ckpt"
    save_pretrained(_tiny_model(0), directory)
    old = {p.name: p.read_bytes() for p in directory.iterdir()}
    monkeypatch.setattr(weights, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(_tiny_model(1), directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == old  # no temp files left
    monkeypatch.undo()
    load_gpt2(directory)  # still a valid checkpoint


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "save_file", _failing_save_file)
    with pytest.raises(OSError, match="simulated"):
        save_pretrained(_tiny_model(0), tmp_path / "fresh")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_atomic_write_on_interrupt(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def interrupted(tmp):
        Path(tmp).write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(target, interrupted)
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    assert target.read_text() == "old"
    fileio.atomic_write(target, lambda tmp: Path(tmp).write_text("new"))
    assert target.read_text() == "new"


# ----------------------------------------------------------------------------- download

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubStandIn(http.server.ThreadingHTTPServer):
    """Just enough of the Hugging Face hub for ``hf_hub_download``: HEAD and GET on
    ``/{repo_id}/resolve/{revision}/{filename}``, answering with the headers it checks
    (X-Repo-Commit, ETag / X-Linked-Etag, Content-Length). ``status`` set to an error code
    makes every request fail with it; ``requests`` logs (method, path)."""

    daemon_threads = True

    def __init__(self, files: dict):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.files = files  # {(repo_id, filename): bytes}
        self.status = 200
        self.truncate = False  # True: bodies stop halfway, the connection closes
        self.requests = []
        self.lock = threading.Lock()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, method, filename):
        with self.lock:
            return sum(m == method and p.endswith("/" + filename) for m, p in self.requests)


class _HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _answer(self, with_body):
        hub = self.server
        with hub.lock:
            hub.requests.append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        # org / name / "resolve" / revision / filename
        found = None
        if len(parts) >= 5 and parts[2] == "resolve":
            found = hub.files.get(("/".join(parts[:2]), "/".join(parts[4:])))
        status = hub.status if hub.status != 200 else (200 if found is not None else 404)
        if status != 200:
            body = json.dumps({"error": f"stand-in hub says {status}"}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if status == 404:  # as the hub says it: which of repository or file is missing
                repo_known = any(repo == "/".join(parts[:2]) for repo, _ in hub.files)
                code = "EntryNotFound" if repo_known and hub.status == 200 else "RepoNotFound"
                self.send_header("X-Error-Code", code)
                self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            return
        etag = '"' + hashlib.sha256(found).hexdigest() + '"'
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(found)))
        self.send_header("ETag", etag)
        self.send_header("X-Linked-Etag", etag)
        self.send_header("X-Linked-Size", str(len(found)))
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if with_body and hub.truncate and len(found) > 1000:
            self.wfile.write(found[:len(found) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif with_body:
            self.wfile.write(found)

    def do_HEAD(self):
        self._answer(with_body=False)

    def do_GET(self):
        self._answer(with_body=True)


@pytest.fixture(scope="module")
def hub_checkpoint(tmp_path_factory):
    """A small random GPT-2 in the hub's own layout (no prefix, mask buffers), and its model."""
    hf = hf_model(seed=11)
    directory = save_hf(hf, tmp_path_factory.mktemp("hub-src"))
    raw = read_raw(directory / "model.safetensors")
    n = SMALL["n_positions"]
    hub = {k.removeprefix("transformer."): v for k, v in raw.items()}
    for i in range(SMALL["n_layer"]):
        hub[f"h.{i}.attn.bias"] = numpy.tril(numpy.ones((n, n), numpy.float32))[None, None]
    write_raw(hub, directory / "hub.safetensors")
    files = {("openai-community/gpt2", "config.json"): (directory / "config.json").read_bytes(),
             ("openai-community/gpt2", "model.safetensors"):
                 (directory / "hub.safetensors").read_bytes()}
    return files, hf


@pytest.fixture
def hub(hub_checkpoint):
    server = HubStandIn(dict(hub_checkpoint[0]))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


LOAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy
    import huggingface_hub.utils._http as hub_http
    hub_http.time.sleep = lambda seconds: None  # skip the hub client's back-off waits
    from tinygpt.checkpoints import load_gpt2
    from tinygpt.weights import CheckpointError
    try:
        model = load_gpt2("gpt2")
    except CheckpointError as err:
        print("CheckpointError:", err)
        sys.exit(3)
    ids = numpy.arange(24).reshape(2, 12) % model.cfg.vocab_size
    numpy.save(sys.argv[1], model(ids).numpy())
""")


def hub_env(endpoint, hf_home, **extra):
    """The environment of a fresh interpreter whose hub is ``endpoint`` and cache ``hf_home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "TRANSFORMERS_OFFLINE"
           and k.lower() not in ("https_proxy", "all_proxy", "http_proxy")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
               HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_ETAG_TIMEOUT="5",
               PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def run_generate(endpoint, hf_home, **extra):
    """`python -m tinygpt generate "Hello" --model gpt2`, as a newcomer types it."""
    return subprocess.run(
        [sys.executable, "-m", "tinygpt", "generate", "Hello", "--model", "gpt2",
         "--max-new-tokens", "2"], env=hub_env(endpoint, hf_home, **extra), cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120)


def closed_port() -> int:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_generate_fails_fast_in_one_line_naming_model_dir(tmp_path):
    """issue 15 item 5: offline, `tinygpt generate --model gpt2` printed 12 retry lines over
    23 s, then a long error. Now one line that says what to do."""
    result = run_generate(f"http://127.0.0.1:{closed_port()}", tmp_path / "hf-home")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the Hugging Face hub" in lines[0] and "--model DIR" in lines[0]


def test_hf_hub_offline_is_honoured_without_touching_the_network(hub, tmp_path):
    result = run_generate(hub.endpoint, tmp_path / "hf-home", HF_HUB_OFFLINE="1")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HF_HUB_OFFLINE is set" in lines[0] and "--model DIR" in lines[0]
    assert hub.requests == []


def test_a_cached_model_loads_offline(hub, tmp_path):
    """Once downloaded, gpt2 loads with the network gone (and with HF_HUB_OFFLINE)."""
    hf_home = tmp_path / "hf-home"
    assert run_load(hub.endpoint, hf_home, tmp_path / "a.npy").returncode == 0
    requests = len(hub.requests)
    offline = run_load(f"http://127.0.0.1:{closed_port()}", hf_home, tmp_path / "b.npy")
    assert offline.returncode == 0, offline.stdout + offline.stderr
    numpy.testing.assert_array_equal(numpy.load(tmp_path / "a.npy"),
                                     numpy.load(tmp_path / "b.npy"))
    assert len(hub.requests) == requests


def run_load(endpoint, hf_home, out):
    """load_gpt2('gpt2') in a fresh interpreter whose hub is ``endpoint``."""
    return subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(out)],
                          env=hub_env(endpoint, hf_home),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_download_then_cache(hub, hub_checkpoint, tmp_path):
    hf_home = tmp_path / "hf-home"
    first = run_load(hub.endpoint, hf_home, tmp_path / "first.npy")
    assert first.returncode == 0, first.stdout + first.stderr
    assert hub.count("GET", "model.safetensors") == 1
    assert hub.count("GET", "config.json") == 1
    snapshot = hf_home / "hub" / "models--openai-community--gpt2" / "snapshots" / COMMIT
    assert (snapshot / "model.safetensors").is_file() and (snapshot / "config.json").is_file()

    ids = numpy.arange(24).reshape(2, 12) % SMALL["vocab_size"]
    logits = numpy.load(tmp_path / "first.npy")
    assert_close_logits(logits, hf_logits(hub_checkpoint[1], ids))

    second = run_load(hub.endpoint, hf_home, tmp_path / "second.npy")
    assert second.returncode == 0, second.stdout + second.stderr
    assert hub.count("GET", "model.safetensors") == 1  # served from the cache
    assert hub.count("GET", "config.json") == 1
    numpy.testing.assert_array_equal(numpy.load(tmp_path / "second.npy"), logits)


@pytest.mark.parametrize("status", [404, 500])
def test_download_error_is_a_checkpoint_error(hub, tmp_path, status):
    hub.status = status
    result = run_load(hub.endpoint, tmp_path / "hf-home", tmp_path / "x.npy")
    assert result.returncode == 3, result.stdout + result.stderr
    message = result.stdout
    assert "could not download config.json of gpt2" in message
    assert "openai-community/gpt2" in message
    assert "pass a local directory" in message
    assert str(status) in message
    assert hub.count("GET", "model.safetensors") == 0
    assert not (tmp_path / "x.npy").exists()


def test_download_of_a_file_the_hub_lacks(hub, tmp_path):
    del hub.files[("openai-community/gpt2", "model.safetensors")]
    result = run_load(hub.endpoint, tmp_path / "hf-home", tmp_path / "x.npy")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not download model.safetensors of gpt2" in result.stdout
    assert "404" in result.stdout


def test_truncated_download_is_one_line_and_not_kept(hub, tmp_path):
    """A connection that drops halfway through model.safetensors: one line naming the file
    (not a traceback), nothing half-downloaded used; the next try downloads it whole."""
    hub.truncate = True
    hf_home = tmp_path / "hf-home"
    result = run_load(hub.endpoint, hf_home, tmp_path / "x.npy")
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "could not download model.safetensors of gpt2" in lines[0]
    assert "Traceback" not in result.stderr and "Trying to resume" not in result.stderr
    hub.truncate = False
    again = run_load(hub.endpoint, hf_home, tmp_path / "x.npy")
    assert again.returncode == 0, again.stdout + again.stderr


def test_download_with_no_server(tmp_path):
    port = closed_port()
    result = run_load(f"http://127.0.0.1:{port}", tmp_path / "hf-home", tmp_path / "x.npy")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "could not download config.json of gpt2" in result.stdout
    assert "Check the network" in result.stdout
