"""The ``tinygpt`` command: generate, train, info, prepare (and the fine-tuning commands).

    tinygpt generate "Every effort moves you" --model gpt2
    tinygpt train --data input.txt --config baby --out runs/shakespeare
    tinygpt info gpt2-124M
    tinygpt prepare big.txt big.bin
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy

from tinygpt import backend

MODEL_HELP = ("a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl: downloaded once), a "
              "Hugging Face directory (config.json + model.safetensors), a .safetensors file, "
              "or a directory written by `tinygpt train`")


# ----------------------------------------------------------------------------- generate

def cmd_generate(args):
    from tinygpt.checkpoints import load_model
    from tinygpt.generation import TextStreamer, stream

    if args.seed is not None:
        backend.manual_seed(args.seed)
    model, tokenizer = load_model(args.model)
    ids = tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"})
    if not ids:
        raise SystemExit("error: the prompt is empty")
    eos = getattr(tokenizer, "eot_token", None) if args.stop_at_eos else None
    print(args.prompt, end="", flush=True)
    streamer = TextStreamer(tokenizer, write=lambda text: print(text, end="", flush=True))
    for token in stream(model, [ids], args.max_new_tokens, temperature=args.temperature,
                        top_k=args.top_k, top_p=args.top_p, eos_id=eos,
                        use_cache=not args.no_cache):
        streamer.put(int(token[0]))
    streamer.end()
    print()


def add_generate(sub):
    p = sub.add_parser("generate", help="generate text from a prompt, streamed as it comes",
                       description="Continue PROMPT with a GPT model, printing tokens as they "
                                   "are generated.")
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--model", default="gpt2", help=MODEL_HELP + " (default: gpt2)")
    p.add_argument("--max-new-tokens", type=int, default=50,
                   help="how many tokens to add at most (default: 50)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 picks the most likely token (greedy); higher values sample more "
                        "freely (default: 0)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample only among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only among the most likely tokens whose probabilities add up "
                        "to p (nucleus sampling)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible samples")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole sequence for every token (slower; for comparison)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="stop when the model emits <|endoftext|>")
    p.set_defaults(func=cmd_generate)


# ----------------------------------------------------------------------------- train

def cmd_train(args):
    from tinygpt.config import GPTConfig
    from tinygpt.nn.gpt import GPTModel
    from tinygpt.train import RandomWindows, TrainConfig, plot_losses, train

    out = Path(args.out)
    tokenizer, tokens = _training_tokens(args, out)
    overrides = {"vocab_size": tokenizer.n_vocab}
    if args.context_length:
        overrides["context_length"] = args.context_length
    if args.dropout is not None:
        overrides["drop_rate"] = args.dropout
    model_cfg = GPTConfig.preset(args.config, **overrides)
    split = int(len(tokens) * (1 - args.val_fraction))
    batches = RandomWindows(tokens[:split], tokens[split:], args.batch_size,
                            model_cfg.context_length, seed=args.seed)
    cfg = TrainConfig(
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
        peak_lr=args.lr, initial_lr=args.lr * 0.01 if args.warmup_steps else args.lr,
        min_lr=args.min_lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip or None, eval_every=args.eval_every,
        eval_iters=args.eval_iters, sample_every=args.sample_every,
        sample_prompt=args.sample_prompt, checkpoint_every=args.checkpoint_every,
        seed=args.seed)
    backend.manual_seed(args.seed)
    model = GPTModel(model_cfg)
    print(f"model: {args.config}, {model.num_parameters():,} parameters; "
          f"{len(tokens):,} tokens ({split:,} train)")
    history = train(model, batches, cfg, out_dir=out, tokenizer=tokenizer)
    if history.steps:
        print(f"loss plot: {plot_losses(history, out / 'losses.png')}")
        print(f"final: train loss {history.train_loss[-1]:.4f}, "
              f"val loss {history.val_loss[-1]:.4f}")


def _training_tokens(args, out):
    """(tokenizer, token array) for --data: a text file or a token file from `prepare`."""
    from tinygpt.tokenizer import CharTokenizer, gpt2_encoding, save_tokenizer

    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"error: --data {data}: no such file")
    if data.suffix == ".bin":
        return gpt2_encoding(), numpy.memmap(data, dtype=numpy.uint16, mode="r")
    text = data.read_text(encoding="utf-8")
    if not text:
        raise SystemExit(f"error: --data {data} is empty")
    tokenizer_kind = args.tokenizer or ("char" if args.config == "baby" else "gpt2")
    if tokenizer_kind == "char":
        existing = out / "tokenizer.json"
        tokenizer = (CharTokenizer.load(existing) if existing.is_file()
                     else CharTokenizer.from_text(text))
    else:
        tokenizer = gpt2_encoding()
    save_tokenizer(tokenizer, out)
    tokens = numpy.asarray(tokenizer.encode(text, allowed_special={"<|endoftext|>"}),
                           dtype=numpy.int64)
    return tokenizer, tokens


def add_train(sub):
    p = sub.add_parser(
        "train", help="pretrain a GPT on a text file (resumable)",
        description="Train a GPT from scratch on --data. Checkpoints go to --out; running the "
                    "same command again resumes from the last checkpoint.")
    p.add_argument("--data", required=True,
                   help="a UTF-8 text file, or a token file made by `tinygpt prepare` (.bin)")
    p.add_argument("--config", default="baby",
                   help="model size: baby (4 layers, 128 dims), gpt2-124M, gpt2-355M, "
                        "gpt2-774M, gpt2-1558M (default: baby)")
    p.add_argument("--out", required=True, help="directory for checkpoints, tokenizer and plot")
    p.add_argument("--tokenizer", choices=["char", "gpt2"], default=None,
                   help="characters (default for baby) or GPT-2 BPE (default otherwise)")
    p.add_argument("--context-length", type=int, default=None,
                   help="tokens per training window (default: the config's)")
    p.add_argument("--max-steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=12, help="sequences per step (default 12)")
    p.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches whose gradients add up before each step (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--min-lr", type=float, default=1e-4,
                   help="learning rate at the end of the cosine decay (default 1e-4)")
    p.add_argument("--warmup-steps", type=int, default=100,
                   help="steps of linear warm-up to the peak rate (default 100)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay (default 0.1)")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient norm to this (0 turns it off; default 1.0)")
    p.add_argument("--dropout", type=float, default=None, help="dropout rate (default: config's)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the tokens held out for validation (default 0.1)")
    p.add_argument("--eval-every", type=int, default=100,
                   help="steps between loss evaluations (default 100)")
    p.add_argument("--eval-iters", type=int, default=20,
                   help="batches per loss evaluation (default 20)")
    p.add_argument("--sample-every", type=int, default=0,
                   help="steps between printed samples (0: never)")
    p.add_argument("--sample-prompt", default="\n", help="prompt for the printed samples")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between checkpoints (one is also written at the end and on "
                        "Ctrl-C; default 500)")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------- info

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


def add_info(sub):
    p = sub.add_parser("info", help="parameters and memory of a model",
                       description="Print a model's size: layers, parameters, memory.")
    p.add_argument("model", help=MODEL_HELP + ", or a config preset (baby, gpt2-124M, ...)")
    p.set_defaults(func=cmd_info)


# ----------------------------------------------------------------------------- prepare

def cmd_prepare(args):
    from tinygpt.data import prepare_token_file

    path = prepare_token_file(args.text_file, args.out_file)
    count = Path(path).stat().st_size // 2
    print(f"wrote {count:,} tokens to {path}")


def add_prepare(sub):
    p = sub.add_parser("prepare", help="tokenize a text file once into a uint16 token file",
                       description="Tokenize TEXT_FILE with GPT-2's BPE into OUT_FILE (uint16 "
                                   "token ids), which `tinygpt train --data OUT_FILE` reads "
                                   "by memory map: for corpora larger than memory.")
    p.add_argument("text_file", help="UTF-8 text to tokenize")
    p.add_argument("out_file", help="where to write the token file (.bin)")
    p.set_defaults(func=cmd_prepare)


# ----------------------------------------------------------------------------- main

def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinygpt", description="A GPT-2 built from NumPy up: generate, train, fine-tune.")
    sub = parser.add_subparsers(dest="command", required=True)
    from tinygpt.finetune import classify, instruct

    for add in (add_generate, add_train, add_info, add_prepare, classify.add_parser,
                instruct.add_parsers):
        add(sub)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
