"""The models fine-tuning starts from: one set of ``--model`` names for every fine-tuning
command (GPT-2 names, model folders and files, or ``scratch``)."""

from __future__ import annotations

from pathlib import Path

from tinygpt import backend
from tinygpt.config import GPTConfig
from tinygpt.finetune.alpaca import END_OF_TEXT_ID
from tinygpt.finetune.outputs import CLASSIFIER_FILE
from tinygpt.nn.gpt import GPTModel

SCRATCH = "scratch"

# "--model scratch": a small randomly initialised GPT with GPT-2's vocabulary, for runs where
# no pretrained weights are at hand. It learns the format of a task, not language.
SCRATCH_CONFIG = GPTConfig(vocab_size=END_OF_TEXT_ID + 1, context_length=256, emb_dim=128,
                           n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)


def is_scratch(name) -> bool:
    return str(name) == SCRATCH


def load_base_model(name_or_path, seed=123, scratch_config: GPTConfig = SCRATCH_CONFIG):
    """(model, tokenizer) for ``--model``: ``scratch`` (a random GPT of ``scratch_config``,
    initialised from ``seed``, with GPT-2's tokenizer) or anything
    ``tinygpt.checkpoints.load_model`` accepts."""
    if is_scratch(name_or_path):
        from tinygpt.tokenizer import gpt2_encoding

        backend.manual_seed(seed)
        return GPTModel(scratch_config), gpt2_encoding()
    from tinygpt.checkpoints import load_model

    if (Path(str(name_or_path)) / CLASSIFIER_FILE).is_file():
        raise ValueError(f"--model {name_or_path} holds a classifier ({CLASSIFIER_FILE}), not a "
                         f"language model; label texts with `tinygpt classify --model "
                         f"{name_or_path} TEXT`")
    return load_model(name_or_path)


def check_vocabulary(model, what="fine-tuning", pad_token_id=END_OF_TEXT_ID) -> None:
    """Refuse a model whose vocabulary lacks the padding id (by default GPT-2's
    <|endoftext|>: a character model has none): fine-tuning data is padded with it."""
    if model.cfg.vocab_size <= pad_token_id:
        raise ValueError(f"{what} pads with token {pad_token_id} (GPT-2's <|endoftext|>), "
                         f"but the model's vocabulary has only {model.cfg.vocab_size} tokens; "
                         "use a model with GPT-2's tokenizer")
