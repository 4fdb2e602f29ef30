"""The book's chapter 5 pretraining run on "The Verdict", on tinygpt.

GPT-2 124M architecture with a context of 256 tokens, trained for 10 epochs on the short
story (90% train, 10% validation), AdamW lr 4e-4, weight decay 0.1, batch 2, evaluating
every 5 steps — the book's `train_model_simple` settings (its "Every effort moves you"
sample is printed after each epoch). The book trains with PyTorch's random stream, so the
exact losses differ; the shape does not: training loss falls below 1 while validation
loss stalls near 6.5 (the model memorises a 5,000-token story).

    python examples/05_pretrain.py --data ../shared/data/the-verdict.txt
"""

import argparse
import time

import tinygpt
from tinygpt.config import GPTConfig
from tinygpt.data import EpochBatches, GPTDataset
from tinygpt.download import fetch_data
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import gpt2_encoding, save_tokenizer
from tinygpt.plots import plot_losses
from tinygpt.train import TrainConfig, sample_text, train

URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/"
       "01_main-chapter-code/the-verdict.txt")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the-verdict.txt (downloaded when not given)")
    parser.add_argument("--out", default="runs/verdict", help="output directory")
    parser.add_argument("--epochs", type=int, default=10, help="passes over the story")
    args = parser.parse_args()

    text = fetch_data(URL, args.data).read_text(encoding="utf-8")
    tokenizer = gpt2_encoding()
    save_tokenizer(tokenizer, args.out)
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
                      sample_every=steps_per_epoch, sample_tokens=50, seed=123)

    tinygpt.manual_seed(123)
    model = GPTModel(cfg)
    print(f"{model.num_parameters():,} parameters; {len(train_set)} training windows, "
          f"{steps_per_epoch} steps per epoch")
    start = time.perf_counter()
    history = train(model, batches, run, out_dir=args.out, tokenizer=tokenizer)
    print(f"wall time {time.perf_counter() - start:.0f} s")
    print(f"loss plot: {plot_losses(history, f'{args.out}/losses.png')}")
    print(sample_text(model, tokenizer, "Every effort moves you", 25))


if __name__ == "__main__":
    main()
