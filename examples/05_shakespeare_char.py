"""nanoGPT's CPU run on tinygpt: a character-level "baby" GPT on Tiny Shakespeare.

4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 iterations, AdamW at 1e-3 with
warm-up and cosine decay to 1e-4, no dropout — the settings for which nanoGPT reports a
validation loss of about 1.88. Prints losses, writes a loss plot and a checkpoint (which
`tinygpt generate "ROMEO:" --model OUT` continues), and ends with a sample.

    python examples/05_shakespeare_char.py --data ../shared/data/tinyshakespeare.txt
"""

import argparse
import time

import numpy

import tinygpt
from tinygpt.config import GPTConfig
from tinygpt.download import fetch_data
from tinygpt.nn import GPTModel
from tinygpt.tokenizer import CharTokenizer, save_tokenizer
from tinygpt.data import RandomWindows
from tinygpt.plots import plot_losses
from tinygpt.train import TrainConfig, sample_text, train

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="tinyshakespeare.txt (downloaded when not given)")
    parser.add_argument("--out", default="runs/shakespeare_char", help="output directory")
    parser.add_argument("--max-iters", type=int, default=2000, help="optimizer steps")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between evals")
    parser.add_argument("--eval-iters", type=int, default=20, help="batches per eval")
    parser.add_argument("--seed", type=int, default=1337, help="random seed")
    args = parser.parse_args()

    text = fetch_data(URL, args.data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)  # 65 characters
    save_tokenizer(tokenizer, args.out)
    tokens = numpy.asarray(tokenizer.encode(text), dtype=numpy.int64)
    split = int(0.9 * len(tokens))  # nanoGPT: first 90% train, last 10% validation

    cfg = GPTConfig.preset("baby", vocab_size=tokenizer.n_vocab)
    batches = RandomWindows(tokens[:split], tokens[split:], batch_size=12,
                            context_length=cfg.context_length, seed=args.seed)
    run = TrainConfig(max_steps=args.max_iters, batch_size=12, peak_lr=1e-3, initial_lr=0.0,
                      min_lr=1e-4, warmup_steps=100, weight_decay=0.1, grad_clip=1.0,
                      eval_every=args.eval_every, eval_iters=args.eval_iters,
                      checkpoint_every=500, seed=args.seed)

    tinygpt.manual_seed(args.seed)
    model = GPTModel(cfg)
    print(f"{model.num_parameters():,} parameters, {len(tokens):,} characters")
    start = time.perf_counter()
    history = train(model, batches, run, out_dir=args.out, tokenizer=tokenizer)
    print(f"wall time {time.perf_counter() - start:.1f} s; "
          f"final val loss {history.val_loss[-1]:.4f}")
    print(f"loss plot: {plot_losses(history, f'{args.out}/losses.png')}")
    print(sample_text(model, tokenizer, "ROMEO:", 200))


if __name__ == "__main__":
    main()
