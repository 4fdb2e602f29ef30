"""The book's chapter 5 pretraining run on "The Verdict", on tinygpt.

GPT-2 124M architecture with a context of 256 tokens, trained for 10 epochs on the short
story (90% train, 10% validation), AdamW lr 4e-4, weight decay 0.1, batch 2, evaluating
every 5 steps — the book's `train_model_simple` settings (its "Every effort moves you"
sample, greedy as the book's, is printed after each epoch). The book trains with PyTorch's
random stream, so the exact losses differ; the shape does not: training loss falls below 1
while validation loss stalls near 6.5 (the model memorises a 5,000-token story).

The story ships with tinygpt. The checkpoint written to --out holds the weights and AdamW's
two moments of 163 million parameters in float32: about 1.9 GB.

    python examples/05_pretrain.py
"""

import argparse
import sys
import time
from pathlib import Path

import tinygpt
from tinygpt.checkpoints import CHECKPOINT_NAME
from tinygpt.cli.options import HelpFormatter, positive_int
from tinygpt.config import GPTConfig
from tinygpt.corpora import VERDICT, corpus_path
from tinygpt.data import EpochBatches, GPTDataset
from tinygpt.nn import GPTModel
from tinygpt.plots import plot_losses
from tinygpt.tokenizer import gpt2_encoding
from tinygpt.train import TrainConfig, TrainingInterrupted, sample_text, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", default=str(corpus_path(VERDICT)), help="the text to learn")
    parser.add_argument("--out", default="runs/verdict",
                        help="output directory (the checkpoint there is about 1.9 GB)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="passes over the story")
    args = parser.parse_args()

    text = open(args.data, encoding="utf-8").read()
    tokenizer = gpt2_encoding()
    split = int(0.9 * len(text))
    cfg = GPTConfig.preset("gpt2-124M", context_length=256)  # drop_rate 0.1, no qkv bias
    # The book's loaders: windows of 256 tokens with stride 256.
    train_set = GPTDataset(text[:split], 256, 256, tokenizer=tokenizer)
    val_set = GPTDataset(text[split:], 256, 256, tokenizer=tokenizer)
    batches = EpochBatches(train_set, val_set, batch_size=2, seed=123)
    steps_per_epoch = batches.batches_per_epoch
    run = TrainConfig(max_steps=args.epochs * steps_per_epoch, batch_size=2, peak_lr=4e-4,
                      initial_lr=4e-4, min_lr=4e-4, warmup_steps=0, weight_decay=0.1,
                      grad_clip=None, eval_every=5, eval_iters=5,
                      sample_every=steps_per_epoch, sample_tokens=50, sample_temperature=0.0,
                      seed=123)

    tinygpt.manual_seed(123)
    model = GPTModel(cfg)
    print(f"{model.num_parameters():,} parameters; {len(train_set)} training windows, "
          f"{steps_per_epoch} steps per epoch")
    start = time.perf_counter()
    try:
        history = train(model, batches, run, out_dir=args.out, tokenizer=tokenizer)
    except TrainingInterrupted as stop:  # Ctrl-C or SIGTERM: saved; run again to resume
        print(stop, file=sys.stderr)
        sys.exit(stop.exit_status)
    size = (Path(args.out) / CHECKPOINT_NAME).stat().st_size
    print(f"wall time {time.perf_counter() - start:.0f} s; checkpoint {size / 1e9:.2f} GB")
    print(f"loss plot: {plot_losses(history, f'{args.out}/losses.png')}")
    print(sample_text(model, tokenizer, "Every effort moves you", 25, temperature=0.0))


if __name__ == "__main__":
    main()
