"""tinygpt's own checkpoints, and ``load_model``: the one loader behind every ``--model``.

A training checkpoint is one safetensors file, ``checkpoint.safetensors``: the model's
tensors under ``model.``, the optimizer's arrays under ``optimizer.``, arrays of the loss
history under ``history.`` (a long run's history would overflow the header), and everything
else (configs, step, random generator) as JSON strings in the file's metadata — no
pickle, so loading a file cannot run code. A tied output head is stored once, as the token
embedding.

``load_gpt2(name_or_path)`` turns whatever a command's ``--model`` accepts into a model, and
``load_model`` into (model, tokenizer): a GPT-2 name (downloaded once), a Hugging Face
directory or ``.safetensors`` file, a directory written by ``tinygpt train`` or by a
fine-tuning command. They read only the model's tensors, never the optimizer state.

This module sits in the io layer: the training loop hands it plain dicts (its config and
history), so nothing here imports ``tinygpt.train``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.fileio import atomic_write
from tinygpt.nn.gpt import GPTModel
from tinygpt.nn.layers import uninitialized
from tinygpt.nn.quantization import MODES as QUANTIZE_MODES
from tinygpt.nn.quantization import quantize as quantize_model
from tinygpt.tokenizer import load_tokenizer
from tinygpt.weights import HF_WEIGHTS, CheckpointError, check_weight_values, load_hf

CHECKPOINT_NAME = "checkpoint.safetensors"
FORMAT = "tinygpt-checkpoint-1"
WEIGHTS_NAME = HF_WEIGHTS  # model.safetensors: Hugging Face layout, beside config.json


# ----------------------------------------------------------------------------- nested arrays

def _split_arrays(obj, prefix, arrays):
    """Replace every array inside nested dicts/lists by a reference, collecting the arrays,
    so the rest can be stored as JSON next to the tensors (no pickle anywhere)."""
    if backend.is_array(obj) or isinstance(obj, numpy.ndarray):
        arrays[prefix] = numpy.ascontiguousarray(backend.move(obj, "numpy"))
        return {"__array__": prefix}
    if isinstance(obj, dict):
        pairs = [[k, _split_arrays(v, f"{prefix}.{k}", arrays)] for k, v in obj.items()]
        return {"__dict__": pairs}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]
    if isinstance(obj, numpy.generic):
        return obj.item()
    return obj


def _join_arrays(obj, arrays):
    """The inverse of ``_split_arrays``: put the arrays back where their references are."""
    if isinstance(obj, dict) and "__array__" in obj:
        return arrays[obj["__array__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join_arrays(v, arrays) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


# ----------------------------------------------------------------------------- write

def save_checkpoint(path, model, optimizer_state: dict, step: int, history: dict,
                    train_config: dict) -> Path:
    """Write one checkpoint file atomically.

    ``optimizer_state`` is ``optimizer.state_dict()``; ``history`` (lists or arrays) and
    ``train_config`` are plain dicts (e.g. ``dataclasses.asdict`` of the loop's classes)."""
    state = model.state_dict()
    tied = [k for k in state if _is_tied_head(model, k)]
    arrays = {f"model.{k}": numpy.ascontiguousarray(backend.move(v, "numpy"))
              for k, v in state.items() if k not in tied}
    optimizer_meta = _split_arrays(optimizer_state, "optimizer", arrays)
    meta = {
        "format": FORMAT,
        "model_config": json.dumps(model.cfg.to_dict()),
        "train_config": json.dumps(train_config),
        "optimizer": json.dumps(optimizer_meta),
        "history": json.dumps(_split_arrays(history, "history", arrays)),
        "rng": json.dumps(backend.get_rng_state()),
        "step": str(step),
        "tied_keys": json.dumps(tied),
    }
    try:
        atomic_write(path, lambda tmp: save_file(arrays, tmp, metadata=meta))
    except (SafetensorError, OSError) as err:  # e.g. the disk is full: one line, the file
        raise OSError(f"could not write {path}: {err}") from None
    return Path(path)


# The head's weight, plain or inside a LoRA layer (which keeps the original as ``linear``).
HEAD_KEYS = ("out_head.weight", "out_head.linear.weight")


def _is_tied_head(model, key):
    return key in HEAD_KEYS and model.weights_tied


# ----------------------------------------------------------------------------- read

def _read(path, prefix) -> tuple[dict, dict]:
    """(metadata, tensors whose names start with ``prefix``) of a tinygpt checkpoint; the
    other tensors are not read from disk."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a tinygpt training checkpoint "
                                      "(GPT-2 weights in Hugging Face layout load with load_gpt2)")
            arrays = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(prefix)}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or corrupt?): "
                              f"{err}") from None
    return meta, arrays


def _model_state(arrays: dict, meta: dict) -> dict:
    """The model's state dict from a checkpoint's ``model.*`` tensors.

    A tied head is stored once, as the token embedding (see save_checkpoint); the keys it
    was saved under are listed in the metadata (``out_head.linear.weight`` for a LoRA
    model). Checkpoints from before that list restore ``out_head.weight`` when missing."""
    state = {k.removeprefix("model."): v for k, v in arrays.items() if k.startswith("model.")}
    if "tied_keys" in meta:
        tied = json.loads(meta["tied_keys"])
    else:
        tied = ["out_head.weight"] if "out_head.weight" not in state else []
    if "tok_emb.weight" in state:
        for key in tied:
            state[key] = state["tok_emb.weight"]
    return state


def _field(meta: dict, key: str, path, parse=json.loads):
    """One metadata field, parsed; a missing or malformed one is a one-line error."""
    if key not in meta:
        raise CheckpointError(f"{path}: its metadata lacks {key!r} (not written by tinygpt, "
                              "or damaged)")
    try:
        return parse(meta[key])
    except ValueError as err:  # JSONDecodeError is a ValueError, as is int("x")
        raise CheckpointError(f"{path}: metadata field {key!r} is malformed: {err}") from None


def _model_config(meta: dict, path) -> GPTConfig:
    """The checkpoint's GPTConfig, every field checked before anything is allocated."""
    fields = _field(meta, "model_config", path)
    known = set(GPTConfig.__dataclass_fields__)
    if not isinstance(fields, dict) or set(fields) - known:
        extra = sorted(set(fields) - known) if isinstance(fields, dict) else fields
        raise CheckpointError(f"{path}: model_config must be an object with GPTConfig's "
                              f"fields ({', '.join(sorted(known))}); got {extra!r}")
    for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
        if name in fields and (type(fields[name]) is not int or fields[name] <= 0):
            raise CheckpointError(f"{path}: model_config.{name} must be a positive integer, "
                                  f"got {fields[name]!r}")
    try:
        return GPTConfig(**fields)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: model_config: {err}") from None


def _check_sizes(cfg: GPTConfig, state: dict, path) -> None:
    """The sizes the config declares against the tensors actually in the file, before the
    model is built: a small file claiming 100,000 layers must not allocate gigabytes."""
    layers = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("trf_blocks.")),
                     default=-1)
    tok, pos = state.get("tok_emb.weight"), state.get("pos_emb.weight")
    found = (layers, None if tok is None else tuple(tok.shape),
             None if pos is None else tuple(pos.shape))
    declared = (cfg.n_layers, (cfg.vocab_size, cfg.emb_dim), (cfg.context_length, cfg.emb_dim))
    if found != declared:
        raise CheckpointError(
            f"{path}: its model_config declares {declared[0]} layers, token embedding "
            f"{declared[1]} and position embedding {declared[2]}, but the file holds "
            f"{found[0]} layers, {found[1]} and {found[2]}")
    check_weight_values(state, path)


def load_checkpoint(path) -> dict:
    """Read a checkpoint whole: {model, model_config, train_config, optimizer, history, rng,
    step}; the configs and history come back as plain dicts except model_config (GPTConfig).
    """
    meta, arrays = _read(path, "")
    return {
        "model": _model_state(arrays, meta),
        "model_config": _model_config(meta, path),
        "train_config": _field(meta, "train_config", path),
        "optimizer": _join_arrays(_field(meta, "optimizer", path), arrays),
        "history": _join_arrays(_field(meta, "history", path), arrays),
        "rng": _field(meta, "rng", path),
        "step": _field(meta, "step", path, int),
    }


def checkpoint_step(path) -> int:
    """The number of optimizer steps a checkpoint holds, read without loading any tensor."""
    meta, _ = _read(path, prefix="\0")  # no tensor name starts with NUL: metadata only
    return _field(meta, "step", path, int)


def model_from_checkpoint(path, dtype="float32") -> GPTModel:
    """Just the model of a checkpoint, in eval mode (the optimizer state is not read)."""
    meta, arrays = _read(path, "model.")
    cfg, state = _model_config(meta, path), _model_state(arrays, meta)
    _check_sizes(cfg, state, path)
    with uninitialized():  # every parameter is loaded next: no random draws
        model = GPTModel(cfg)
    try:
        model.load_state_dict(state)
    except ValueError as err:  # names the keys; say which file they came from
        raise CheckpointError(f"{path}: {err}") from None
    return model.to(dtype=dtype).eval()


# ----------------------------------------------------------------------------- any --model

def _training_checkpoint(name_or_path) -> Path | None:
    """The tinygpt checkpoint file that ``name_or_path`` means, or None for GPT-2 weights in
    Hugging Face's layout. A directory holding both kinds is ambiguous: an error."""
    path = Path(str(name_or_path)).expanduser()
    if path.is_dir():
        checkpoint, weights = path / CHECKPOINT_NAME, path / WEIGHTS_NAME
        if checkpoint.is_file() and weights.is_file():
            raise CheckpointError(
                f"{path} holds both a training checkpoint ({CHECKPOINT_NAME}) and Hugging Face "
                f"weights ({WEIGHTS_NAME}); pass the file you mean: {checkpoint} or {weights}")
        return checkpoint if checkpoint.is_file() else None
    if path.is_file() and (path.name == CHECKPOINT_NAME or _is_tinygpt_file(path)):
        return path
    return None


def _is_tinygpt_file(path) -> bool:
    """True for a safetensors file in tinygpt's checkpoint format (read from its header)."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError):
        return False  # not ours; load_hf says what is wrong with it


def check_quantize_mode(mode) -> None:
    """Refuse an unknown ``quantize=`` before a model is read, not after."""
    if mode is not None and mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be None or one of {', '.join(QUANTIZE_MODES)}; "
                         f"got {mode!r}")


def load_gpt2(name_or_path, dtype="float32", quantize=None) -> GPTModel:
    """A GPTModel in eval mode from anything ``--model`` accepts: a GPT-2 name (gpt2,
    gpt2-medium, gpt2-large, gpt2-xl: downloaded once, cached), a Hugging Face directory or
    ``.safetensors`` file, or a directory (or checkpoint file) written by ``tinygpt train``
    or a fine-tuning command. Only the model's tensors are read. ``quantize`` ("int8" or
    "bfloat16") stores the weights small, for inference (``nn.quantize``)."""
    check_quantize_mode(quantize)
    checkpoint = _training_checkpoint(name_or_path)
    model = (model_from_checkpoint(checkpoint, dtype) if checkpoint is not None
             else load_hf(name_or_path, dtype))
    return quantize_model(model, quantize) if quantize else model


def load_model(name_or_path, dtype="float32", quantize=None):
    """(model, tokenizer) for anything ``--model`` accepts (see ``load_gpt2``). The tokenizer
    is the one recorded beside the model (``tokenizer.json``), GPT-2's when there is none."""
    model = load_gpt2(name_or_path, dtype, quantize)
    path = Path(str(name_or_path)).expanduser()
    folder = path if path.is_dir() else path.parent if path.is_file() else None
    return model, load_tokenizer(folder)
