"""``tinygpt info`` (a model's size and memory) and ``tinygpt prepare`` (a token file)."""

from __future__ import annotations

from pathlib import Path

from tinygpt.cli.options import MODEL_HELP, positive_int


def cmd_info(args):
    from tinygpt.checkpoints import load_model
    from tinygpt.config import ALIASES, PRESETS, GPTConfig
    from tinygpt.memory import parameter_count

    if args.model is None:
        _list_presets(PRESETS, ALIASES)
        return
    if args.model in PRESETS or args.model in ALIASES:
        cfg = GPTConfig.preset(args.model)
        total, tied, source = parameter_count(cfg), cfg.tie_embeddings, "preset (not loaded)"
    else:
        model, _ = load_model(args.model)
        cfg, source = model.cfg, f"loaded from {args.model}"
        total, tied = model.num_parameters(), model.weights_tied
        del model
    head = cfg.vocab_size * cfg.emb_dim
    print(f"model:            {args.model} ({source})")
    print(f"layers / heads:   {cfg.n_layers} / {cfg.n_heads}, emb_dim {cfg.emb_dim}, "
          f"context {cfg.context_length}, vocab {cfg.vocab_size}")
    print(f"parameters:       {total:,}" + (" (head tied to the token embedding)" if tied
                                           else f" ({total - head:,} if the head were tied)"))
    for name, size in (("float32", 4), ("float16", 2)):
        print(f"memory {name}:   {total * size / 2**20:,.1f} MiB for the weights")
    _print_training_memory(cfg, args.batch_size)


def _print_training_memory(cfg, batch_size):
    """The estimate `tinygpt train` makes before it starts, for this model."""
    from tinygpt.memory import GiB, available_memory, estimate_step_memory

    estimate = estimate_step_memory(cfg, batch_size)
    available = available_memory()
    print(f"training:         about {estimate.total / GiB:,.2f} GiB per step with batches of "
          f"{batch_size} x {cfg.context_length} tokens "
          f"({estimate.weights_and_optimizer / GiB:,.2f} GiB weights, gradients and AdamW "
          f"moments in float32; {estimate.activations / GiB:,.2f} GiB activations)"
          + (f"; {available / GiB:,.1f} GiB available here" if available else ""))


def _list_presets(presets, aliases):
    from tinygpt.memory import parameter_count

    print("config presets (tinygpt info NAME, tinygpt train --config NAME):")
    for name, cfg in presets.items():
        also = [a for a, target in aliases.items() if target == name]
        print(f"  {name:11} {cfg.n_layers:2} layers, {cfg.n_heads:2} heads, {cfg.emb_dim:4} dims, "
              f"context {cfg.context_length:4}, {parameter_count(cfg):>13,} parameters"
              + (f"  (also: {', '.join(also)})" if also else ""))


def cmd_prepare(args):
    from tinygpt.data import prepare_token_file

    path = prepare_token_file(args.text_file, args.out_file)
    count = Path(path).stat().st_size // 2
    print(f"wrote {count:,} tokens to {path}")


def add_parsers(sub, formatter):
    p = sub.add_parser("info", help="parameters and memory of a model", formatter_class=formatter,
                       description="Print a model's size: layers, parameters, memory, and "
                                   "the memory a training step needs. Without MODEL, list "
                                   "the config presets.")
    p.add_argument("model", nargs="?", default=None,
                   help=MODEL_HELP + ", or a config preset (`tinygpt info` lists them)")
    p.add_argument("--batch-size", type=positive_int, default=12,
                   help="sequences per step, for the training-memory estimate")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prepare", help="tokenize a text file once into a uint16 token file",
                       formatter_class=formatter,
                       description="Tokenize TEXT_FILE with GPT-2's BPE into OUT_FILE (uint16 "
                                   "token ids), which `tinygpt train --data OUT_FILE` reads "
                                   "by memory map: for corpora larger than memory.")
    p.add_argument("text_file", help="UTF-8 text to tokenize")
    p.add_argument("out_file", help="where to write the token file (.bin)")
    p.set_defaults(func=cmd_prepare)
