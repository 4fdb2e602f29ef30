"""A fine-tuned classifier on disk: ``classifier.safetensors`` (the weights) and
``classifier.json`` (GPT config, labels, padding, max length, LoRA rank/alpha)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.fileio import atomic_write, atomic_write_text
from tinygpt.finetune.classify.model import Classifier, new_classifier
from tinygpt.finetune.outputs import CLASSIFIER_FILE
from tinygpt.nn.gpt import GPTModel
from tinygpt.nn.layers import uninitialized
from tinygpt.nn.lora import apply_lora

WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = CLASSIFIER_FILE
FORMAT = "tinygpt-classifier-1"


def save_classifier(classifier: Classifier, directory) -> Path:
    """Write the weights, then the config, each atomically, into ``directory``."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    tensors = {k: numpy.ascontiguousarray(backend.move(v, "numpy"))
               for k, v in classifier.model.state_dict().items()}
    lora = classifier.lora
    config = {
        "format": FORMAT, "model_config": classifier.model.cfg.to_dict(),
        "num_classes": len(classifier.labels), "labels": list(classifier.labels),
        "pad_token_id": classifier.pad_token_id, "max_length": classifier.max_length,
        "lora": None if lora is None else {"rank": lora[0], "alpha": lora[1]},
    }
    atomic_write(directory / WEIGHTS_NAME,
                 lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2))
    return directory


def load_classifier(directory) -> Classifier:
    """A classifier written by ``save_classifier``, in eval mode."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no saved classifier: {path.name} is "
                                    f"missing (`tinygpt finetune-classifier --out DIR` writes "
                                    f"{CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path} is not a tinygpt classifier config "
                         f"(format {found!r}, expected {FORMAT!r})")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file: {err}") from None
    with uninitialized():  # every weight is loaded below: no random draws (seconds for 124M)
        try:
            gpt = GPTModel(GPTConfig(**config["model_config"]))
            classifier = new_classifier(gpt, config["labels"], config["max_length"],
                                        config["pad_token_id"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{config_path}: missing or malformed field {err}") from None
        if config.get("lora"):
            apply_lora(classifier.model, config["lora"]["rank"], config["lora"]["alpha"])
    classifier.model.load_state_dict(tensors)
    classifier.model.eval()
    return classifier
