"""What a fine-tuning output directory (``--out``) holds, and the checks made before a
command writes into one, so that a directory never holds two models nor a run continued
with other settings than it started with.

One rule: a directory holds one model.

    finetune-instruct         checkpoint.safetensors (the training checkpoint; resumable)
    finetune-instruct --lora  model.safetensors + config.json (merged), and the training
                              checkpoint in lora-checkpoint/
    finetune-dpo              model.safetensors + config.json
    finetune-classifier       classifier.safetensors + classifier.json

and ``settings.json`` beside it records the command's settings, so a second run on the same
``--out`` can tell a resume (same settings) from a mistake (other settings).
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from tinygpt.checkpoints import CHECKPOINT_NAME, WEIGHTS_NAME
from tinygpt.finetune.alpaca import read_json, save_json

SETTINGS_FILE = "settings.json"
LORA_DIR = "lora-checkpoint"  # a LoRA run's training checkpoint; the merged model sits above
CLASSIFIER_FILE = "classifier.json"

MODEL_FILES = (CHECKPOINT_NAME, WEIGHTS_NAME, CLASSIFIER_FILE, f"{LORA_DIR}/{CHECKPOINT_NAME}")


def models_in(out: Path) -> list[str]:
    """The model files ``out`` holds (paths relative to it)."""
    return [name for name in MODEL_FILES if (Path(out) / name).is_file()]


def require_empty_of_models(out: Path, command: str) -> None:
    """Refuse an ``--out`` that already holds a model: ``command`` would write a second one
    beside it (or replace it), and a later ``--model OUT`` could load the wrong one."""
    found = models_in(out)
    if found:
        raise ValueError(f"--out {out} already holds a model ({', '.join(found)}); "
                         f"`tinygpt {command}` writes its own model there, so choose a new "
                         "--out (or delete that directory)")


def plain_settings(settings) -> dict:
    """A dataclass of settings as JSON-ready values (paths as strings)."""
    values = asdict(settings) if is_dataclass(settings) else dict(settings)
    return json.loads(json.dumps(values, default=str))


def settings_changes(out: Path, settings: dict, ignore=()) -> list[str] | None:
    """How ``settings`` differ from those recorded in ``out`` ("--lr 0.001 (the run used
    5e-05)", ...); None when nothing is recorded there. Keys in ``ignore`` may change."""
    path = Path(out) / SETTINGS_FILE
    if not path.is_file():
        return None
    recorded = read_json(path, "run settings")
    changes = []
    for key, value in settings.items():
        if key in ignore or recorded.get(key) == value:
            continue
        option = "--" + key.replace("_", "-")
        changes.append(f"{option} {value} (the run used {recorded.get(key)})")
    return changes


def record_settings(out: Path, settings: dict) -> None:
    """Write ``settings`` to ``out``/settings.json (atomically)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    save_json(settings, Path(out) / SETTINGS_FILE)
