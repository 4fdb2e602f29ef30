"""nanoGPT's CPU Shakespeare run, tinygpt against PyTorch on the same machine.

Both train the same char-level baby GPT (4 layers, 4 heads, 128 dims, context 64, batch
12) from the same initial weights on the same batches, with AdamW, warm-up + cosine decay
1e-3 -> 1e-4 and gradient clipping 1.0, for --iters steps; then each reports its validation
loss over the same 20 batches and its wall time (training only). Each framework runs in a
process of its own: PyTorch's OpenMP runtime, once loaded, slows Numba's kernels in the same
process by about 2x. nanoGPT reports a validation loss of about 1.88 for this configuration
at 2000 iterations.

    python benchmarks/shakespeare.py --data ../shared/data/tinyshakespeare.txt
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy

import tinygpt
from tinygpt.config import GPTConfig
from tinygpt.data import RandomWindows
from tinygpt.nn import GPTModel
from tinygpt.optim import warmup_cosine_lr
from tinygpt.tokenizer import CharTokenizer
from tinygpt.train import TrainConfig, evaluate, train

ROOT = Path(__file__).resolve().parents[1]
LR = dict(peak_lr=1e-3, initial_lr=0.0, min_lr=1e-4, warmup_steps=100)


def load_torch_gpt():
    spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "tests" / "torch_gpt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tinygpt(model, batches, iters):
    cfg = TrainConfig(max_steps=iters, batch_size=12, weight_decay=0.1, grad_clip=1.0,
                      eval_every=iters, eval_iters=1, **LR)
    start = time.perf_counter()
    train(model, batches, cfg, progress=False, log=lambda s: None)
    seconds = time.perf_counter() - start
    return evaluate(model, batches.eval_batches("val", 20)), seconds


def run_torch(model, batches, iters):
    import torch
    import torch.nn.functional as F

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": 0.1},
         {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3)
    model.train()
    start = time.perf_counter()
    for step in range(iters):
        lr = warmup_cosine_lr(step, total_steps=iters, **LR)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = (torch.from_numpy(a) for a in batches.train_batch(step))
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(torch.from_numpy(x)).flatten(0, 1),
                                  torch.from_numpy(y).flatten()).item()
                  for x, y in batches.eval_batches("val", 20)]
    return float(numpy.mean(losses)), seconds


def build(data):
    """Tokens, batches and the seeded initial model: identical in every process."""
    text = Path(data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    tokens = numpy.asarray(tokenizer.encode(text), dtype=numpy.int64)
    split = int(0.9 * len(tokens))
    batches = RandomWindows(tokens[:split], tokens[split:], 12, 64, seed=1337)
    tinygpt.manual_seed(1337)
    return GPTModel(GPTConfig.preset("baby", vocab_size=tokenizer.n_vocab)), batches


def run_one(framework, data, iters):
    """Train with one framework in this process; print one JSON line with the result."""
    model, batches = build(data)
    if framework == "tinygpt":
        val, seconds = run_tinygpt(model, batches, iters)
    else:
        import torch

        torch.set_num_threads(os.cpu_count())
        val, seconds = run_torch(load_torch_gpt().from_tinygpt(model), batches, iters)
    print(json.dumps({"val": val, "seconds": seconds}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--framework", choices=["tinygpt", "torch"],
                        help="run only this one, in this process (used internally)")
    args = parser.parse_args()
    if args.framework:
        return run_one(args.framework, args.data, args.iters)

    results = {}
    for framework in ("tinygpt", "torch"):
        out = subprocess.run([sys.executable, __file__, "--data", args.data, "--iters",
                              str(args.iters), "--framework", framework],
                             capture_output=True, text=True, check=True).stdout
        results[framework] = json.loads(out.strip().splitlines()[-1])
    print(f"machine: {os.cpu_count()} CPUs, numpy {numpy.__version__}; {args.iters} "
          "iterations, batch 12 x 64, one process per framework")
    print(f"{'':10s}{'val loss':>10s}{'wall s':>10s}{'ms/iter':>10s}")
    for name, r in results.items():
        print(f"{name:10s}{r['val']:10.4f}{r['seconds']:10.1f}"
              f"{1000 * r['seconds'] / args.iters:10.1f}")
    print(f"wall time tinygpt / PyTorch: "
          f"{results['tinygpt']['seconds'] / results['torch']['seconds']:.2f}")


if __name__ == "__main__":
    main()
