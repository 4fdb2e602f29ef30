"""GPT-2 checkpoints in and out, in Hugging Face's layout (config.json + model.safetensors).

OpenAI's GPT-2 stores each layer the way its TensorFlow code used it; tinygpt stores it the
way the book's PyTorch model does. One table (``BLOCK_NAMES`` and ``OUTER_NAMES`` below) pairs
the names, ``h.{i}.ln_1.weight`` with ``trf_blocks.{i}.norm1.scale`` and so on, and marks the
weights to transpose: GPT-2's "Conv1D" layers keep weights as (in, out), the transpose of a
Linear's (out, in), and its ``c_attn`` (C, 3C) holds query, key and value side by side.
Loading, saving and the checks of names and shapes all read that one table. The output head
is GPT-2's token embedding (tied) unless a file stores its own ``lm_head.weight``.
Files written by ``transformers`` prefix every name with ``transformer.``; the hub's own GPT-2
files do not. Both load. Everything is read with ``safetensors`` (no pickle, so loading a
file cannot run code), and every write goes to a temporary name first, then is renamed.

``save_pretrained`` also stores the config.json it writes inside model.safetensors' own
metadata, and ``load_hf`` reads that copy when it is there: the weights and their config
then always come from the same (atomically renamed) file, and config.json is for other
tools such as transformers. Editing config.json of a folder tinygpt wrote therefore changes
nothing for tinygpt; files from transformers or the hub carry no copy and use config.json.
"""

from __future__ import annotations

import json
import os
import socket
import urllib.parse
from pathlib import Path

import numpy
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save_file

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.fileio import atomic_path
from tinygpt.nn.gpt import GPTModel, TransformerBlock
from tinygpt.nn.layers import uninitialized
from tinygpt.nn.quantization import quantized_mode

HUB_REPOS = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"
HUB_FILES = (HF_CONFIG, HF_WEIGHTS)
# Buffers some GPT-2 files carry (the causal mask); they are not weights.
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: the message says which file and what is wrong."""


# ----------------------------------------------------------------------------- config

HF_SIZES = {"vocab_size": "vocab_size", "n_positions": "context_length", "n_embd": "emb_dim",
            "n_head": "n_heads", "n_layer": "n_layers"}  # config.json field -> GPTConfig field


def config_from_hf(hf, source="config.json") -> GPTConfig:
    """A GPTConfig from a Hugging Face GPT-2 config.json dictionary, each size checked to
    be a positive integer (``source`` names the file in errors)."""
    if not isinstance(hf, dict):
        raise CheckpointError(f"{source} holds a JSON {type(hf).__name__}, expected an object "
                              "with GPT-2's fields (n_embd, n_layer, ...)")
    sizes = {}
    for key, field in HF_SIZES.items():
        if key not in hf:
            raise CheckpointError(f"{source} lacks the GPT-2 field {key!r}")
        value = hf[key]
        if type(value) is not int or value <= 0:  # also refuses 1e8, "12", true, [12]
            raise CheckpointError(f"{source}: {key} must be a positive integer, got {value!r}")
        sizes[field] = value
    tied = hf.get("tie_word_embeddings", True)
    if not isinstance(tied, bool):
        raise CheckpointError(f"{source}: tie_word_embeddings must be true or false, "
                              f"got {tied!r}")
    try:
        return GPTConfig(**sizes, drop_rate=0.0, qkv_bias=True, tie_embeddings=tied)
    except ValueError as err:  # e.g. n_embd not divisible by n_head
        raise CheckpointError(f"{source}: {err}") from None


def config_to_hf(cfg: GPTConfig) -> dict:
    """The config.json that transformers' GPT2LMHeadModel reads for this model."""
    eos = 50256 if cfg.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, if it exists
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length,
        "n_ctx": cfg.context_length, "n_embd": cfg.emb_dim, "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.drop_rate, "embd_pdrop": cfg.drop_rate,
        "attn_pdrop": cfg.drop_rate, "initializer_range": 0.02,
        "bos_token_id": eos, "eos_token_id": eos,
        "tie_word_embeddings": cfg.tie_embeddings,
    }


# GPT-2's four sizes: (emb_dim, layers) -> heads. Only for these is the head count of a file
# without config.json known for certain (heads do not show in any tensor's shape).
GPT2_HEADS = {(768, 12): 12, (1024, 24): 16, (1280, 36): 20, (1600, 48): 25}


def _infer_config(tensors: dict, source) -> GPTConfig:
    """Architecture from tensor shapes alone (a bare .safetensors file with no config.json),
    refused unless it is one of GPT-2's sizes: a wrong head count would load without error
    and compute a different function."""
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        raise CheckpointError(f"{source} holds no GPT-2 embeddings (wte.weight, "
                              "wpe.weight) and there is no config.json beside it")
    vocab, emb = tensors["wte.weight"].shape
    n_layers = _layer_count(tensors)
    heads = GPT2_HEADS.get((emb, n_layers))
    if heads is None:
        raise CheckpointError(
            f"{source} has no config.json beside it, and its number of attention heads "
            f"cannot be read from its tensors (emb_dim {emb}, {n_layers} layers is not one of "
            "GPT-2's sizes); put the model's config.json beside it")
    return GPTConfig(vocab_size=vocab, context_length=tensors["wpe.weight"].shape[0],
                     emb_dim=emb, n_heads=heads, n_layers=n_layers, drop_rate=0.0,
                     qkv_bias=True, tie_embeddings="lm_head.weight" not in tensors)


def _layer_count(tensors: dict) -> int:
    """How many blocks the file holds: one more than the largest i of an ``h.{i}.`` name."""
    indices = [int(k.split(".")[1]) for k in tensors
               if k.startswith("h.") and k.split(".")[1].isdigit()]
    return max(indices, default=-1) + 1


# ----------------------------------------------------------------------------- name mapping

# One row per Hugging Face tensor of a block: (tinygpt names, HF name, transposed). The HF
# tensor is the tinygpt tensors, each transposed if marked, joined along the last axis; GPT-2
# fuses query, key and value into one c_attn. This table drives loading, saving and the key
# and shape checks alike (as nanoGPT's from_pretrained does in one loop).
BLOCK_NAMES = [
    (("norm1.scale",), "ln_1.weight", False),
    (("norm1.shift",), "ln_1.bias", False),
    (("att.W_query.weight", "att.W_key.weight", "att.W_value.weight"),
     "attn.c_attn.weight", True),
    (("att.W_query.bias", "att.W_key.bias", "att.W_value.bias"), "attn.c_attn.bias", False),
    (("att.out_proj.weight",), "attn.c_proj.weight", True),
    (("att.out_proj.bias",), "attn.c_proj.bias", False),
    (("norm2.scale",), "ln_2.weight", False),
    (("norm2.shift",), "ln_2.bias", False),
    (("ff.layers.0.weight",), "mlp.c_fc.weight", True),
    (("ff.layers.0.bias",), "mlp.c_fc.bias", False),
    (("ff.layers.2.weight",), "mlp.c_proj.weight", True),
    (("ff.layers.2.bias",), "mlp.c_proj.bias", False),
]
OUTER_NAMES = [
    (("tok_emb.weight",), "wte.weight", False),
    (("pos_emb.weight",), "wpe.weight", False),
    (("final_norm.scale",), "ln_f.weight", False),
    (("final_norm.shift",), "ln_f.bias", False),
]


def name_table(n_layers: int) -> list[tuple[tuple[str, ...], str, bool]]:
    """Every (tinygpt names, HF name, transposed) row of a GPT-2 with ``n_layers`` blocks
    (the output head, tied or ``lm_head.weight``, is handled by the callers)."""
    rows = list(OUTER_NAMES)
    for i in range(n_layers):
        rows += [(tuple(f"trf_blocks.{i}.{n}" for n in names), f"h.{i}.{hf}", transposed)
                 for names, hf, transposed in BLOCK_NAMES]
    return rows


def hf_to_tinygpt(tensors: dict, cfg: GPTConfig) -> dict:
    """Translate Hugging Face GPT-2 tensors into a tinygpt state dict (NumPy arrays)."""
    state = {}
    for names, hf_name, transposed in name_table(cfg.n_layers):
        pieces = numpy.split(tensors[hf_name], len(names), axis=-1)
        state.update({n: p.T if transposed else p for n, p in zip(names, pieces)})
    state["out_head.weight"] = tensors.get("lm_head.weight", tensors["wte.weight"])
    return state


def tinygpt_to_hf(state: dict, cfg: GPTConfig) -> dict:
    """The inverse of ``hf_to_tinygpt`` (without the head). GPT-2 always has query, key and
    value biases: a model without them (``qkv_bias=False``) gets zeros there."""
    zeros = numpy.zeros(cfg.emb_dim, dtype=state["tok_emb.weight"].dtype)
    out = {}
    for names, hf_name, transposed in name_table(cfg.n_layers):
        parts = [state[n] if n in state else zeros for n in names]
        out[hf_name] = numpy.concatenate([p.T if transposed else p for p in parts], axis=-1)
    return out


def expected_hf_shapes(cfg: GPTConfig, n_layers: int) -> dict:
    """The shape of every Hugging Face tensor of the first ``n_layers`` blocks and the
    embeddings, for a model of config ``cfg``: the table applied to the shapes of one
    TransformerBlock's parameters (allocated, never filled)."""
    C = cfg.emb_dim
    shapes = {"tok_emb.weight": (cfg.vocab_size, C), "pos_emb.weight": (cfg.context_length, C),
              "final_norm.scale": (C,), "final_norm.shift": (C,)}
    with uninitialized():
        block = TransformerBlock(cfg.replace(qkv_bias=True))  # GPT-2 files always have them
    for i in range(n_layers):
        shapes.update({f"trf_blocks.{i}.{name}": tuple(p.shape)
                       for name, p in block._named_tensors()})
    expected = {}
    for names, hf_name, transposed in name_table(n_layers):
        parts = [shapes[n][::-1] if transposed else shapes[n] for n in names]
        expected[hf_name] = parts[0][:-1] + (sum(part[-1] for part in parts),)
    if not cfg.tie_embeddings:
        expected["lm_head.weight"] = (cfg.vocab_size, C)
    return expected


def _check_tensors(tensors: dict, cfg: GPTConfig, source) -> None:
    """Every tensor the config needs present with the right shape, nothing unexpected, and
    every weight finite floating point: checked before the model is allocated, so a config
    claiming 10^8 layers costs nothing (only one block past the file's own is listed)."""
    expected = expected_hf_shapes(cfg, min(cfg.n_layers, _layer_count(tensors) + 1))
    # Tied checkpoints may or may not store the head; an untied one must.
    optional = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = [k for k in expected if k not in tensors and k not in optional]
    unexpected = [k for k in tensors if k not in expected and k not in optional]
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {expected[k]})"
             for k in expected if k in tensors and tuple(tensors[k].shape) != expected[k]]
    problems = [f"{label}: {', '.join(items[:8])}{' ...' if len(items) > 8 else ''}"
                for label, items in (("missing tensors", missing),
                                     ("unexpected tensors", unexpected),
                                     ("wrong shapes", wrong)) if items]
    if problems:
        raise CheckpointError(f"{source} does not match the GPT-2 config "
                              f"({cfg.n_layers} layers, emb_dim {cfg.emb_dim}, vocab "
                              f"{cfg.vocab_size}): " + "; ".join(problems))
    check_weight_values(tensors, source)


def check_weight_values(tensors: dict, source) -> None:
    """Refuse integer weights and NaN or infinite values (a diverged or damaged model would
    otherwise load and generate garbage without an error)."""
    for name, array in tensors.items():
        if not numpy.issubdtype(array.dtype, numpy.floating):
            raise CheckpointError(f"{source}: tensor {name} has dtype {array.dtype}; model "
                                  "weights must be floating point")
        if not numpy.isfinite(array).all():
            raise CheckpointError(f"{source}: tensor {name} holds NaN or infinite values "
                                  "(a diverged or damaged model)")


# ----------------------------------------------------------------------------- reading

def read_safetensors(path) -> dict:
    """All tensors of a safetensors file as NumPy arrays, names without 'transformer.'."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or "
                              f"corrupt?): {err}") from None
    tensors = {}
    for name, array in raw.items():
        name = name.removeprefix("transformer.")
        if not name.endswith(IGNORED_SUFFIXES):
            tensors[name] = array
    return tensors


def _embedded_config(path):
    """The config.json dictionary that save_pretrained stores in the file's metadata, or
    None (files written by transformers or the hub have none)."""
    with safe_open(str(path), framework="numpy") as handle:
        text = (handle.metadata() or {}).get("config")
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the config in its metadata is not valid JSON: "
                              f"{err}") from None


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def _resolve(name_or_path) -> tuple[Path, Path | None]:
    """(safetensors file, config.json or None) for a hub name, a directory or a file."""
    text = str(name_or_path)
    if text in HUB_REPOS:
        directory = download_gpt2(text)
        return directory / HF_WEIGHTS, directory / HF_CONFIG
    path = Path(text).expanduser()
    if path.is_dir():
        weights, config = path / HF_WEIGHTS, path / HF_CONFIG
        if not weights.is_file():
            raise CheckpointError(f"{path} has no model.safetensors (a Hugging Face GPT-2 "
                                  "directory holds config.json and model.safetensors, a "
                                  "`tinygpt train` directory checkpoint.safetensors)")
        return weights, config if config.is_file() else None
    if path.is_file():
        config = path.with_name("config.json")
        return path, config if config.is_file() else None
    names = ", ".join(HUB_REPOS)
    raise CheckpointError(f"{text!r} is neither a GPT-2 model name ({names}) nor an "
                          "existing directory or .safetensors file")


def load_hf(name_or_path, dtype="float32") -> GPTModel:
    """A GPTModel with GPT-2 weights in Hugging Face's layout: from a hub name (downloaded
    once, cached) or a local directory or .safetensors file. The head is tied to the token
    embedding, as in GPT-2, unless the checkpoint stores its own ``lm_head.weight``.
    (``tinygpt.load_gpt2`` takes these and tinygpt's own checkpoints too.)"""
    weights_path, config_path = _resolve(name_or_path)
    tensors = read_safetensors(weights_path)
    embedded = _embedded_config(weights_path)
    if embedded is not None:  # written by save_pretrained: always matches its tensors
        cfg = config_from_hf(embedded, f"{weights_path} (the config in its metadata)")
    elif config_path is not None:
        cfg = config_from_hf(_read_json(config_path), config_path)
    else:
        cfg = _infer_config(tensors, weights_path)
    if cfg.tie_embeddings and "lm_head.weight" in tensors and not numpy.array_equal(
            tensors["lm_head.weight"], tensors["wte.weight"]):
        cfg = cfg.replace(tie_embeddings=False)
    _check_tensors(tensors, cfg, weights_path)
    with uninitialized():  # every parameter is loaded below: no random draws
        model = GPTModel(cfg)
    # Cast after loading: casting the uninitialised memory first would read garbage (and
    # NumPy warns "invalid value encountered in cast" when that garbage holds a NaN).
    model.load_state_dict(hf_to_tinygpt(tensors, cfg))
    return model.to(dtype=dtype).eval()


# ----------------------------------------------------------------------------- writing

def save_pretrained(model: GPTModel, directory) -> Path:
    """Write ``model`` as config.json + model.safetensors in Hugging Face's GPT-2 layout,
    loadable by ``transformers.GPT2LMHeadModel.from_pretrained`` and by ``load_gpt2``.
    A quantized model is refused: its float32 weights are gone, and writing the rounded
    ones back as float32 would pass them off as the original."""
    mode = quantized_mode(model)
    if mode is not None:
        raise ValueError(f"save_pretrained: the model is quantized ({mode}) and for inference "
                         "only; save the float32 model (before quantize) instead")
    cfg = model.cfg
    directory = Path(directory)
    state = {k: numpy.ascontiguousarray(backend.to_numpy(v))
             for k, v in model.state_dict().items()}
    tensors = {"transformer." + k: numpy.ascontiguousarray(v)
               for k, v in tinygpt_to_hf(state, cfg).items()}
    if not model.weights_tied:
        tensors["lm_head.weight"] = state["out_head.weight"]
    config = json.dumps(config_to_hf(cfg.replace(tie_embeddings=model.weights_tied)), indent=2)
    # Both files are written completely before either is renamed into place: the weights
    # first, then config.json. The weights carry the same config in their metadata, which
    # load_hf prefers, so a crash between the two renames still loads the new model.
    try:
        with atomic_path(directory / HF_CONFIG) as config_tmp:
            Path(config_tmp).write_text(config, encoding="utf-8")
            with atomic_path(directory / HF_WEIGHTS) as weights_tmp:
                save_file(tensors, weights_tmp, metadata={"format": "pt", "config": config})
    except (SafetensorError, OSError) as err:  # e.g. the disk is full
        raise OSError(f"could not write {directory / HF_WEIGHTS}: {err}") from None
    return directory


# ----------------------------------------------------------------------------- downloading

LOCAL_HINT = ("pass a local directory instead (--model DIR): one holding config.json and "
              "model.safetensors, or one written by `tinygpt train`")


def download_gpt2(name: str) -> Path:
    """The local directory of a GPT-2 checkpoint from the Hugging Face hub, downloaded once
    (later calls read the cache without touching the network). ``HF_ENDPOINT``, ``HF_HOME``
    and ``HF_HUB_OFFLINE`` are honoured. Offline, this fails at once with one line instead
    of the hub client's retries: the endpoint is probed with one short connection first."""
    if name not in HUB_REPOS:
        raise CheckpointError(f"unknown GPT-2 model {name!r}; expected one of: "
                              + ", ".join(HUB_REPOS))
    from huggingface_hub import constants, hf_hub_download

    cached = _cached_files(HUB_REPOS[name])
    if cached is not None:
        return cached
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
                              f" and HF_HUB_OFFLINE is set, so it cannot be downloaded; "
                              + LOCAL_HINT)
    _probe(constants.ENDPOINT, name)
    paths = [_download(hf_hub_download, name, filename) for filename in HUB_FILES]
    return paths[0].parent


def _cached_files(repo) -> Path | None:
    """The cached snapshot directory holding both files of ``repo``, or None."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo, filename) for filename in HUB_FILES]
    if all(isinstance(p, str) for p in paths):
        return Path(paths[0]).parent
    return None


def _probe(endpoint: str, name: str, timeout=3.0) -> None:
    """Fail fast when the hub cannot be reached: one TCP connection, ``timeout`` seconds.
    Skipped behind a proxy (the direct route may be closed while the proxy works)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise CheckpointError(
            f"could not download config.json of {name}: cannot reach the Hugging Face hub "
            f"at {endpoint} ({err.strerror or err}), and {name} is not in the cache. Check "
            "the network, or " + LOCAL_HINT) from None


def _download(hf_hub_download, name, filename) -> Path:
    """One file through huggingface_hub, any failure turned into one line (its retry
    warnings are silenced: the error says what happened)."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import logging as hub_logging

    verbosity = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        return Path(hf_hub_download(HUB_REPOS[name], filename))
    except Exception as err:  # HTTP status, socket, protocol (a body cut short), disk: all
        reason = " ".join(str(err).split()).rstrip(".")  # mean "could not download"
        if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
            # "not in the cache" hides why the hub failed: its status or socket error
            reason += f" (because: {' '.join(str(err.__cause__).split()).rstrip('.')})"
        raise CheckpointError(
            f"could not download {filename} of {name} from the Hugging Face hub "
            f"({HUB_REPOS[name]}): {reason}. Check the network, or " + LOCAL_HINT) from None
    finally:
        hub_logging.set_verbosity(verbosity)
