"""Generation speed: tinygpt against transformers on the same GPT-2 124M checkpoint.

    python benchmarks/generate.py                      # 100 new tokens, prompt of 10, batch 1
    python benchmarks/generate.py --new-tokens 50 --repeat 5 --no-uncached
    python benchmarks/generate.py --threads 1          # one core each (steadier on a busy box)

The checkpoint is the full GPT-2 124M architecture with random weights (no download needed):
a ``GPT2LMHeadModel(GPT2Config())`` made under ``torch.manual_seed(0)``, written with
``save_pretrained`` to a temporary directory and read back by ``tinygpt.load_gpt2``, so both
frameworks run exactly the same float32 weights. Both generate greedily (tinygpt with
temperature 0, transformers with ``do_sample=False``), batch 1, from the same prompt, with and
without their KV caches. transformers' end-of-text token is switched off so that both always
make ``--new-tokens`` tokens; the table says whether their tokens agree (they should: greedy on
the same weights).

Time: the fastest of ``--repeat`` runs after one untimed warm-up run of each (the first run
loads Numba's compiled kernels and warms PyTorch's allocator); the runs take turns, so that
other load on the machine does not favour one framework. Both use every core
(``torch.set_num_threads(os.cpu_count())``; NumPy's BLAS and Numba use all cores by default),
or ``--threads N`` each (set for OpenBLAS, OpenMP and Numba before they load). On a machine
busy with other work, multi-threaded BLAS can be many times slower than one thread (threads
wait for siblings that are not scheduled); compare runs taken under the same conditions.
The ratio column is tinygpt's tokens/s over transformers' on the same row (> 1: tinygpt is
faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def build_models(directory):
    import torch
    import transformers

    from tinygpt.checkpoints import load_gpt2

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    hf.generation_config.eos_token_id = None  # always generate every requested token
    hf.generation_config.pad_token_id = 50256
    hf.save_pretrained(directory)
    return hf, load_gpt2(directory)


def tinygpt_runner(model, ids, new_tokens, use_cache):
    from tinygpt.generation import generate

    def run():
        return generate(model, ids, new_tokens, use_cache=use_cache)
    return run


def transformers_runner(hf, ids, new_tokens, use_cache):
    import torch

    t = torch.as_tensor(ids)
    mask = torch.ones_like(t)

    def run():
        with torch.inference_mode():
            out = hf.generate(t, attention_mask=mask, do_sample=False, use_cache=use_cache,
                              max_new_tokens=new_tokens)
        return out.numpy()
    return run


def time_runs(runners, repeat):
    """{name: (best seconds, output)} with the runners taking turns, after one warm-up each."""
    outputs = {name: run() for name, run in runners.items()}  # warm-up
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: (best[name], outputs[name]) for name in runners}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--prompt-tokens", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-uncached", action="store_true",
                        help="skip the runs without KV cache (the slow ones)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for each framework (default: every core)")
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count()
    if args.threads:  # before NumPy, PyTorch and Numba start their thread pools
        os.environ.update({name: str(threads) for name in THREAD_VARIABLES})

    import numpy
    import torch
    import transformers

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as directory:
        hf, model = build_models(directory)

    ids = numpy.random.default_rng(0).integers(0, 50257, (1, args.prompt_tokens))
    n = args.new_tokens
    modes = [True] if args.no_uncached else [True, False]
    runners = {}
    for cache in modes:
        runners[("tinygpt", cache)] = tinygpt_runner(model, ids, n, cache)
        runners[("transformers", cache)] = transformers_runner(hf, ids, n, cache)
    results = time_runs(runners, args.repeat)

    print(f"GPT-2 124M (random weights), greedy, batch 1, prompt {args.prompt_tokens} tokens, "
          f"{n} new tokens; best of {args.repeat}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} "
          f"threads each; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"numpy {numpy.__version__}")
    header = (f"{'KV cache':<9}{'tinygpt tok/s':>15}{'transformers tok/s':>20}"
              f"{'tinygpt/transformers':>22}{'same tokens':>13}")
    print(header)
    print("-" * len(header))
    for cache in modes:
        ours, ours_out = results[("tinygpt", cache)]
        theirs, theirs_out = results[("transformers", cache)]
        same = ours_out.shape == theirs_out.shape and bool((ours_out == theirs_out).all())
        print(f"{'on' if cache else 'off':<9}{n / ours:>15.1f}{n / theirs:>20.1f}"
              f"{theirs / ours:>21.2f}x{'yes' if same else 'NO':>13}")
    for cache in modes:
        ms = results[("tinygpt", cache)][0] / n * 1e3
        print(f"tinygpt {'with' if cache else 'without'} cache: {ms:.1f} ms per token")


if __name__ == "__main__":
    main()
