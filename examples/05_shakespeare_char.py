"""nanoGPT's CPU run on tinygpt: a character-level "baby" GPT on Tiny Shakespeare.

4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 steps, AdamW at 1e-3 with
warm-up and cosine decay to 1e-4, no dropout — the settings for which nanoGPT reports a
validation loss of about 1.88. Prints losses, writes a loss plot and a checkpoint (which
`tinygpt generate "ROMEO:" --model OUT --temperature 0.8 --top-k 200` continues), and ends
with a sample drawn as nanoGPT draws them (temperature 0.8, top-k 200). The text ships with
tinygpt; `--data` takes any other.

    python examples/05_shakespeare_char.py
"""

import argparse
import sys
import time

import numpy

import tinygpt
from tinygpt.cli.options import (
    HelpFormatter,
    add_eval_options,
    add_seed_option,
    positive_int,
)
from tinygpt.config import GPTConfig
from tinygpt.corpora import SHAKESPEARE, corpus_path
from tinygpt.data import RandomWindows
from tinygpt.nn import GPTModel
from tinygpt.plots import plot_losses
from tinygpt.tokenizer import CharTokenizer
from tinygpt.train import TrainConfig, TrainingInterrupted, sample_text, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", default=str(corpus_path(SHAKESPEARE)),
                        help="a UTF-8 text file to learn")
    parser.add_argument("--out", default="runs/shakespeare_char", help="output directory")
    parser.add_argument("--max-steps", type=positive_int, default=2000, help="optimizer steps")
    add_eval_options(parser, every=250, iters=20)
    add_seed_option(parser, default=1337)
    args = parser.parse_args()

    text = open(args.data, encoding="utf-8").read()
    tokenizer = CharTokenizer.from_text(text)  # 65 characters
    tokens = numpy.asarray(tokenizer.encode(text), dtype=numpy.int64)
    split = int(0.9 * len(tokens))  # nanoGPT: first 90% train, last 10% validation

    cfg = GPTConfig.preset("baby", vocab_size=tokenizer.n_vocab)
    batches = RandomWindows(tokens[:split], tokens[split:], batch_size=12,
                            context_length=cfg.context_length, seed=args.seed)
    run = TrainConfig(max_steps=args.max_steps, batch_size=12, peak_lr=1e-3, initial_lr=0.0,
                      min_lr=1e-4, warmup_steps=min(100, args.max_steps // 10),
                      weight_decay=0.1, grad_clip=1.0, eval_every=args.eval_every,
                      eval_iters=args.eval_iters, checkpoint_every=500, seed=args.seed)

    tinygpt.manual_seed(args.seed)
    model = GPTModel(cfg)
    print(f"{model.num_parameters():,} parameters, {len(tokens):,} characters")
    start = time.perf_counter()
    try:
        history = train(model, batches, run, out_dir=args.out, tokenizer=tokenizer)
    except TrainingInterrupted as stop:  # Ctrl-C or SIGTERM: saved; run again to resume
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_status)
    print(f"wall time {time.perf_counter() - start:.1f} s; "
          f"final val loss {history.val_loss[-1]:.4f}")
    print(f"loss plot: {plot_losses(history, f'{args.out}/losses.png')}")
    print(sample_text(model, tokenizer, "ROMEO:", 200))


if __name__ == "__main__":
    main()
