"""Quality of int8 and bfloat16 weights on real text: held-out perplexity and greedy agreement.

    python benchmarks/quantize.py --data tinyshakespeare.txt                # trains, then measures
    python benchmarks/quantize.py --data tinyshakespeare.txt --model runs/baby   # a trained model
    python benchmarks/quantize.py --data tinyshakespeare.txt --model gpt2   # GPT-2, if at hand

Without ``--model`` it first trains nanoGPT's character-level baby GPT on ``--data`` with
``tinygpt train`` (``--steps`` steps, into ``--out``, reused when already there). The
held-out text is the last 10% of the tokens, the part ``tinygpt train`` never trains on.

For float32, bfloat16 and int8 copies of the same model it reports:

  perplexity    exp(mean cross-entropy) over the held-out tokens, in non-overlapping windows
                of the context length (each token predicted from the window before it);
  argmax agreement  how often the quantized model's most likely next token equals float32's,
                at every held-out position (teacher forcing: both see the same text);
  greedy agreement  ``--prompts`` held-out prompts each continued greedily for
                ``--new-tokens`` tokens: the share of positions where the quantized model's
                tokens equal float32's, and the mean length of the identical prefix (once two
                greedy runs differ in one token, they continue from different text).

Targets (issue 11): bfloat16 perplexity within 0.5% of float32's, int8 within 2%.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy

MODES = ("float32", "bfloat16", "int8")


def train_model(data, out, steps):
    """Train the char-level baby GPT with the tinygpt command unless ``out`` has one."""
    if (Path(out) / "checkpoint.safetensors").exists():
        print(f"using the model already trained in {out}")
        return
    print(f"training the baby GPT on {data} for {steps} steps into {out} ...", flush=True)
    subprocess.run([sys.executable, "-m", "tinygpt", "train", "--data", str(data),
                    "--config", "baby", "--tokenizer", "char", "--out", str(out),
                    "--max-steps", str(steps)], check=True)


def load(model_path, mode):
    from tinygpt.checkpoints import load_model

    return load_model(model_path, quantize=None if mode == "float32" else mode)


def held_out_tokens(tokenizer, data):
    tokens = numpy.asarray(tokenizer.encode(Path(data).read_text(encoding="utf-8")))
    return tokens[int(len(tokens) * 0.9):]


def window_logits(model, tokens, batch=16):
    """(inputs, targets, logits) over non-overlapping context-length windows of ``tokens``."""
    import tinygpt

    T = model.cfg.context_length
    n = (len(tokens) - 1) // T
    inputs = tokens[:n * T].reshape(n, T)
    targets = tokens[1:n * T + 1].reshape(n, T)
    with tinygpt.no_grad():
        logits = [model(inputs[i:i + batch]).data for i in range(0, n, batch)]
    return inputs, targets, numpy.concatenate(logits)


def perplexity(logits, targets):
    logits = logits.astype(numpy.float64)
    top = logits.max(axis=-1, keepdims=True)
    log_z = numpy.log(numpy.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = numpy.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return float(numpy.exp((log_z - picked).mean()))


def greedy(model, prompts, new_tokens):
    import tinygpt

    return tinygpt.generate(model, prompts, new_tokens)[:, prompts.shape[1]:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the text (e.g. tinyshakespeare.txt)")
    parser.add_argument("--model", default=None,
                        help="a trained model (any --model of tinygpt); default: train one")
    parser.add_argument("--out", default="runs/quantize-baby",
                        help="where to train the model when --model is not given")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=200)
    args = parser.parse_args(argv)
    if args.model is None:
        train_model(args.data, args.out, args.steps)
    model_path = args.model or args.out

    results = {}
    for mode in MODES:
        model, tokenizer = load(model_path, mode)
        tokens = held_out_tokens(tokenizer, args.data)
        _, targets, logits = window_logits(model, tokens)
        starts = numpy.linspace(0, len(tokens) - args.prompt_tokens, args.prompts).astype(int)
        prompts = numpy.stack([tokens[s:s + args.prompt_tokens] for s in starts])
        results[mode] = dict(ppl=perplexity(logits, targets), argmax=logits.argmax(axis=-1),
                             greedy=greedy(model, prompts, args.new_tokens))
        del model

    base = results["float32"]
    print(f"\nmodel {model_path}: {targets.size} held-out tokens, {args.prompts} prompts of "
          f"{args.prompt_tokens} tokens continued greedily for {args.new_tokens}")
    header = (f"{'weights':<10}{'perplexity':>12}{'vs float32':>12}{'argmax agreement':>18}"
              f"{'greedy agreement':>18}{'same prefix':>13}")
    print(header)
    print("-" * len(header))
    for mode, r in results.items():
        same = r["greedy"] == base["greedy"]
        prefix = numpy.where(same.all(axis=1), same.shape[1], (~same).argmax(axis=1)).mean()
        print(f"{mode:<10}{r['ppl']:>12.4f}{(r['ppl'] / base['ppl'] - 1) * 100:>+11.2f}%"
              f"{(r['argmax'] == base['argmax']).mean() * 100:>17.2f}%"
              f"{same.mean() * 100:>17.1f}%{prefix:>13.1f}")


if __name__ == "__main__":
    main()
