"""Generation speed: tinygpt float32 / bfloat16 / int8 against transformers on GPT-2 124M.

    python benchmarks/generate.py                       # the README's table (about 10 min)
    python benchmarks/generate.py --rounds 1 --new-tokens 20 --uncached-tokens 5   # quick look
    python benchmarks/generate.py --threads 1           # one core each (steadier on a busy box)

The checkpoint is the full GPT-2 124M architecture with random weights (no download needed):
a ``GPT2LMHeadModel(GPT2Config())`` made under ``torch.manual_seed(0)`` and written with
``save_pretrained``; tinygpt reads it with ``load_gpt2(..., quantize=...)``, transformers
with ``from_pretrained`` (in float32 and, where this CPU runs it, bfloat16). All generate
greedily from the same random prompt, with the end-of-text token switched off so that
every run makes the requested number of tokens.

Each framework and weight format runs in its own process (PyTorch's OpenMP runtime slows
Numba's threads in a shared process), once per round; rounds take turns over the
processes so that other load on the machine does not favour one of them, and the table
shows the median over rounds. In each process, every configuration gets one untimed
warm-up run of at most two tokens (Numba loads its compiled kernels, PyTorch warms its
allocator), then one timed run:

  tokens/s      batch x new tokens / seconds, for batch 1 and 8, KV cache on and off (the
                uncached runs make ``--uncached-tokens`` tokens: each of them recomputes
                the whole sequence)
  first token   seconds to the first new token after a ``--long-prompt``-token prompt at
                batch 1 (prompt processing, "prefill")
  peak memory   the process's peak resident memory (VmHWM) while generating, weights
                included; after loading, freed memory is returned to the OS and the
                high-water mark reset, so the float32 weights that quantization read do
                not count
  agreement     of each run's batch-1 cached greedy tokens with tinygpt float32's

The ratio column is tokens/s over transformers float32's on the same batch and cache row.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")
RUNNERS = ("tinygpt:float32", "tinygpt:bfloat16", "tinygpt:int8",
           "transformers:float32", "transformers:bfloat16")
VOCAB = 50257


# ----------------------------------------------------------------------------- in a worker

def make_checkpoint(directory):
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(directory)


def tinygpt_generator(directory, weights):
    from tinygpt.checkpoints import load_gpt2
    from tinygpt.generation import generate

    model = load_gpt2(directory, quantize=None if weights == "float32" else weights)

    def run(ids, new_tokens, use_cache):
        return generate(model, ids, new_tokens, use_cache=use_cache)
    return run


def transformers_generator(directory, weights, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[weights]
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory, dtype=dtype).eval()
    hf.generation_config.eos_token_id = None  # always generate every requested token
    hf.generation_config.pad_token_id = 50256

    def run(ids, new_tokens, use_cache):
        t = torch.as_tensor(ids)
        with torch.inference_mode():
            out = hf.generate(t, attention_mask=torch.ones_like(t), do_sample=False,
                              use_cache=use_cache, max_new_tokens=new_tokens)
        return out.numpy()
    return run


def reset_peak_memory():
    """Hand freed heap memory back to the OS (glibc keeps large freed blocks, such as the
    float32 weights that quantization read), then reset this process's resident-memory
    high-water mark (Linux: clear_refs 5)."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_memory_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(run, ids, new_tokens, use_cache):
    """(seconds, output) of one call after an untimed warm-up call with the same prompt
    (at most two new tokens: enough to compile, allocate and fill caches)."""
    run(ids, min(new_tokens, 2), use_cache)
    start = time.perf_counter()
    out = run(ids, new_tokens, use_cache)
    return time.perf_counter() - start, out


def worker(args):
    """Measure one framework and weight format; print one JSON line."""
    import numpy

    framework, weights = args.worker.split(":")
    if framework == "tinygpt":
        run = tinygpt_generator(args.checkpoint, weights)
    else:
        run = transformers_generator(args.checkpoint, weights, args.threads or os.cpu_count())
    reset_peak_memory()
    rng = numpy.random.default_rng(0)
    prompt = rng.integers(0, VOCAB, (8, args.prompt_tokens))
    long_prompt = rng.integers(0, VOCAB, (1, args.long_prompt))
    result = {"rows": {}, "tokens": None}
    for batch in (1, 8):
        for cache in (True, False):
            n = args.new_tokens if cache else args.uncached_tokens
            seconds, out = timed(run, prompt[:batch], n, cache)
            result["rows"][f"{batch}:{int(cache)}"] = batch * n / seconds
            if batch == 1 and cache:
                result["tokens"] = out[0, args.prompt_tokens:].tolist()
    result["first_token_s"], _ = timed(run, long_prompt, 1, True)
    result["peak_mb"] = peak_memory_mb()
    print(json.dumps(result))


# ----------------------------------------------------------------------------- the driver

def run_worker(runner, args, checkpoint):
    """One worker process for ``runner``; its JSON result, or None if it failed."""
    command = [sys.executable, __file__, "--worker", runner, "--checkpoint", checkpoint,
               "--new-tokens", str(args.new_tokens), "--uncached-tokens",
               str(args.uncached_tokens), "--prompt-tokens", str(args.prompt_tokens),
               "--long-prompt", str(args.long_prompt)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{runner} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_results(results):
    """The median of each figure over rounds; the tokens of the first round."""
    rows = {key: statistics.median(r["rows"][key] for r in results) for key in results[0]["rows"]}
    return {"rows": rows, "tokens": results[0]["tokens"],
            "first_token_s": statistics.median(r["first_token_s"] for r in results),
            "peak_mb": statistics.median(r["peak_mb"] for r in results)}


def agreement(tokens, reference):
    return sum(a == b for a, b in zip(tokens, reference)) / len(reference)


def print_tables(medians, args, threads):
    print(f"GPT-2 124M (random weights), greedy; prompt {args.prompt_tokens} tokens; "
          f"{args.new_tokens} new tokens with the KV cache, {args.uncached_tokens} without; "
          f"median of {args.rounds} rounds")
    print(f"{platform.machine()}, {os.cpu_count()} cores, {threads} threads each; Python "
          f"{platform.python_version()}, numpy {version('numpy')}, numba {version('numba')}, "
          f"torch {version('torch')}, transformers {version('transformers')}")
    base = medians.get("transformers:float32")
    print(f"\n{'runner':<22}{'batch':>6}{'cache':>7}{'tokens/s':>10}{'vs transformers fp32':>22}")
    for runner, result in medians.items():
        for key, rate in result["rows"].items():
            batch, cache = key.split(":")
            ratio = f"{rate / base['rows'][key]:.2f}x" if base else "-"
            print(f"{runner:<22}{batch:>6}{'on' if cache == '1' else 'off':>7}{rate:>10.1f}"
                  f"{ratio:>22}")
    reference = medians["tinygpt:float32"]["tokens"] if "tinygpt:float32" in medians else None
    print(f"\n{'runner':<22}{'first token (ms)':>18}{'peak memory (MB)':>18}"
          f"{'greedy agreement':>18}")
    for runner, result in medians.items():
        agree = f"{agreement(result['tokens'], reference):.0%}" if reference else "-"
        print(f"{runner:<22}{result['first_token_s'] * 1e3:>18.0f}{result['peak_mb']:>18.0f}"
              f"{agree:>18}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--uncached-tokens", type=int, default=20)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--long-prompt", type=int, default=512,
                        help="prompt length for the time to first token")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runners", default=",".join(RUNNERS),
                        help=f"comma-separated subset of {','.join(RUNNERS)}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for each framework (default: every core)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count()
    if args.threads:  # before NumPy, PyTorch and Numba start their thread pools
        os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    if args.worker:
        return worker(args)
    runners = args.runners.split(",")
    with tempfile.TemporaryDirectory() as checkpoint:
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "import generate; generate.make_checkpoint(sys.argv[2])",
                        str(Path(__file__).parent), checkpoint], check=True)
        results = {runner: [] for runner in runners}
        for _ in range(args.rounds):
            for runner in runners:
                result = run_worker(runner, args, checkpoint)
                if result is not None:
                    results[runner].append(result)
    medians = {runner: median_results(r) for runner, r in results.items() if r}
    print_tables(medians, args, threads)


if __name__ == "__main__":
    main()
