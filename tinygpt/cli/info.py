"""``tinygpt info`` (a model's size and memory) and ``tinygpt prepare`` (a token file)."""

from __future__ import annotations

from pathlib import Path

from tinygpt.cli.options import MODEL_HELP


def cmd_info(args):
    from tinygpt.checkpoints import load_model
    from tinygpt.config import ALIASES, PRESETS, GPTConfig

    if args.model in PRESETS or args.model in ALIASES:
        cfg = GPTConfig.preset(args.model)
        counts = _preset_counts(cfg)
        source = "preset (not loaded)"
    else:
        model, _ = load_model(args.model)
        cfg, source = model.cfg, f"loaded from {args.model}"
        counts = (model.num_parameters(), model.weights_tied)
        del model
    total, tied = counts
    head = cfg.vocab_size * cfg.emb_dim
    print(f"model:            {args.model} ({source})")
    print(f"layers / heads:   {cfg.n_layers} / {cfg.n_heads}, emb_dim {cfg.emb_dim}, "
          f"context {cfg.context_length}, vocab {cfg.vocab_size}")
    print(f"parameters:       {total:,}" + (" (head tied to the token embedding)" if tied
                                           else f" ({total - head:,} if the head were tied)"))
    for name, size in (("float32", 4), ("float16", 2)):
        print(f"memory {name}:   {total * size / 2**20:,.1f} MiB for the weights")
    print(f"AdamW training:   about {total * 16 / 2**20:,.0f} MiB (weights, grads, 2 moments,"
          " float32) plus activations")


def _preset_counts(cfg):
    """Parameter count of a config without allocating it."""
    C, V, L = cfg.emb_dim, cfg.vocab_size, cfg.n_layers
    qkv = 3 * C * C + (3 * C if cfg.qkv_bias else 0)
    block = qkv + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C
    total = V * C + cfg.context_length * C + L * block + 2 * C
    return (total if cfg.tie_embeddings else total + V * C), cfg.tie_embeddings


def cmd_prepare(args):
    from tinygpt.data import prepare_token_file

    path = prepare_token_file(args.text_file, args.out_file)
    count = Path(path).stat().st_size // 2
    print(f"wrote {count:,} tokens to {path}")


def add_parsers(sub, formatter):
    p = sub.add_parser("info", help="parameters and memory of a model", formatter_class=formatter,
                       description="Print a model's size: layers, parameters, memory.")
    p.add_argument("model", help=MODEL_HELP + ", or a config preset (baby, gpt2-124M, ...)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prepare", help="tokenize a text file once into a uint16 token file",
                       formatter_class=formatter,
                       description="Tokenize TEXT_FILE with GPT-2's BPE into OUT_FILE (uint16 "
                                   "token ids), which `tinygpt train --data OUT_FILE` reads "
                                   "by memory map: for corpora larger than memory.")
    p.add_argument("text_file", help="UTF-8 text to tokenize")
    p.add_argument("out_file", help="where to write the token file (.bin)")
    p.set_defaults(func=cmd_prepare)
