"""One full training step, tinygpt against the same model in PyTorch, on this machine.

    python benchmarks/train_step.py                       # both configs
    python benchmarks/train_step.py --config baby --steps 20
    python benchmarks/train_step.py --config gpt2-124M --steps 5 --warmup 1
    python benchmarks/train_step.py --threads 1 --rounds 2  # on a machine with other load

A step is what ``tinygpt.train`` does per optimizer step: set the warm-up/cosine learning
rate, forward, mean next-token cross-entropy, backward, clip the gradient norm to 1.0, AdamW
(weight decay 0.1 on the matrices, none on vectors), zero the gradients. Both frameworks run
it in float32 on the same weights (tinygpt's initialisation, copied into the book's PyTorch
GPTModel from ``tests/torch_gpt.py``) and the same batches, with every core of the machine
(``torch.set_num_threads(os.cpu_count())``; NumPy's BLAS and Numba use all cores by default).

Time: the median wall-clock time of ``--steps`` steps after ``--warmup`` untimed ones (the
first steps allocate the optimizer moments and, in tinygpt, load or compile Numba kernels).

Memory: each framework runs in a fresh subprocess. After the warm-up steps (so the AdamW
moments exist and libraries are loaded) freed heap is returned to the OS (malloc_trim) and
the kernel's peak-RSS counter (VmHWM) is reset through /proc/self/clear_refs. "base RSS" is
the resident memory at that moment: weights, optimizer moments, interpreter and libraries.
"peak RSS" is the highest resident memory during the timed steps, and "step mem" = peak - base
is what a step adds on top: gradients, activations kept for the backward, temporaries, as the
OS sees it (allocator caches included). Where the counter cannot be reset, ru_maxrss over the
whole process is reported instead (marked "*").
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> (preset, batch size, tokens per sequence)
    "baby": ("baby", 12, 64),
    "gpt2-124M": ("gpt2-124M", 2, 256),
}
PEAK_LR, WEIGHT_DECAY, MAX_NORM = 4e-4, 0.1, 1.0


# ----------------------------------------------------------------------------- memory

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def release_free_heap():
    """Give memory that setup freed back to the OS (glibc keeps freed heap pages resident),
    so the torch worker's RSS does not carry the tinygpt model it copied its weights from."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss():
    """Reset VmHWM to the current RSS; returns (current RSS in MB, whether it worked)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kb("VmRSS") / 1024, True
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, False


def peak_rss_mb(reset_worked):
    if reset_worked:
        return _status_kb("VmHWM") / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- workers

def build(config):
    """tinygpt model (float32, seeded), config, batches: shared by both workers."""
    import numpy

    import tinygpt
    from tinygpt.nn import GPTModel

    preset, batch, tokens = CONFIGS[config]
    cfg = tinygpt.GPTConfig.preset(preset)
    tinygpt.manual_seed(123)
    model = GPTModel(cfg)
    rng = numpy.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, size=(batch, tokens + 1)) for _ in range(4)]
    return model, cfg, batches


def run_tinygpt(config, steps, warmup):
    from tinygpt import functional as F
    from tinygpt.optim import (
        AdamW,
        clip_grad_norm,
        param_groups_for_weight_decay,
        warmup_cosine_lr,
    )

    model, cfg, batches = build(config)
    model.train()
    optimizer = AdamW(param_groups_for_weight_decay(model, WEIGHT_DECAY), lr=PEAK_LR,
                      weight_decay=WEIGHT_DECAY)
    total = warmup + steps

    def step(i):
        lr = warmup_cosine_lr(i, peak_lr=PEAK_LR, total_steps=total, warmup_steps=1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = batches[i % len(batches)]
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        loss.backward()
        clip_grad_norm(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return measure(step, steps, warmup)


def run_torch(config, steps, warmup):
    import torch

    from tinygpt.optim import warmup_cosine_lr

    torch.set_num_threads(int(os.environ.get("TRAIN_STEP_THREADS", os.cpu_count())))
    torch.manual_seed(0)  # dropout masks (they differ from tinygpt's, hence loss[0])
    spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "tests" / "torch_gpt.py")
    torch_gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_gpt)

    tiny, cfg, batches = build(config)
    model = torch_gpt.from_tinygpt(tiny)
    del tiny
    gc.collect()
    model.train()
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
         {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}],
        lr=PEAK_LR, weight_decay=WEIGHT_DECAY)
    batches = [torch.from_numpy(b) for b in batches]
    total = warmup + steps

    def step(i):
        lr = warmup_cosine_lr(i, peak_lr=PEAK_LR, total_steps=total, warmup_steps=1)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = batches[i % len(batches)]
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    result = measure(step, steps, warmup)
    result["threads"] = torch.get_num_threads()
    return result


def measure(step, steps, warmup):
    """Warm-up steps, then reset the peak-RSS counter, then the timed steps."""
    losses = [step(i) for i in range(warmup)]
    gc.collect()
    release_free_heap()
    base, reset_worked = reset_peak_rss()
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb(reset_worked)
    return {"ms": [1000 * t for t in times], "losses": losses, "base_mb": base,
            "peak_mb": peak, "exact_peak": reset_worked}


def worker(framework, config, steps, warmup):
    run = run_tinygpt if framework == "tinygpt" else run_torch
    print(json.dumps(run(config, steps, warmup)))


# ----------------------------------------------------------------------------- driver

def machine_line():
    import numba
    import numpy
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"load {load:.1f}; Python {platform.python_version()}, NumPy {numpy.__version__}, "
            f"Numba {numba.__version__}, "
            f"torch {torch.__version__}")


def spawn(framework, config, steps, warmup, threads=None):
    cmd = [sys.executable, __file__, "--worker", framework, "--config", config,
           "--steps", str(steps), "--warmup", str(warmup)]
    env = dict(os.environ)
    if threads:  # tinygpt: Numba's and the BLAS's pools; torch: set_num_threads
        env.update(TRAIN_STEP_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{framework} worker failed on {config}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="all", choices=[*CONFIGS, "all"])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default: 20 for baby, 5 for gpt2-124M)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both frameworks (default: tinygpt's defaults, i.e. "
                             "all cores for Numba and the BLAS, and torch.set_num_threads("
                             "os.cpu_count()))")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the two frameworks this many times (fresh processes) "
                             "and pool the timed steps: fairer on a machine with other load")
    parser.add_argument("--worker", choices=["tinygpt", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.config, args.steps, args.warmup)

    print(machine_line())
    print(f"threads: {args.threads or 'defaults (all cores)'}; rounds: {args.rounds}")
    print("step = lr schedule + forward + cross-entropy + backward + clip_grad_norm + AdamW "
          "+ zero_grad, float32; median of timed steps after warm-up\n")
    header = (f"{'config':<10} {'batch x T':>9} {'framework':<9} {'ms/step':>9} {'min ms':>8} "
              f"{'base RSS MB':>11} {'peak RSS MB':>11} {'step mem MB':>11} {'loss[0]':>8}  "
              "tinygpt/torch")
    print(header)
    print("-" * len(header))
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    for config in configs:
        steps = args.steps or (20 if config == "baby" else 5)
        _, batch, tokens = CONFIGS[config]
        results = {}
        for _ in range(args.rounds):
            for fw in ("tinygpt", "torch"):
                r = spawn(fw, config, steps, args.warmup, args.threads)
                r["step_mb"] = r["peak_mb"] - r["base_mb"]
                if fw in results:  # pool the times; keep the larger memory readings
                    r["ms"] = results[fw]["ms"] + r["ms"]
                    for key in ("base_mb", "peak_mb", "step_mb"):
                        r[key] = max(r[key], results[fw][key])
                results[fw] = r
        median = {fw: statistics.median(r["ms"]) for fw, r in results.items()}
        for fw, r in results.items():
            star = "" if r["exact_peak"] else "*"
            ratio = f"{median['tinygpt'] / median['torch']:.2f}x" if fw == "torch" else ""
            print(f"{config:<10} {f'{batch}x{tokens}':>9} {fw:<9} {median[fw]:>9.1f} "
                  f"{min(r['ms']):>8.1f} {r['base_mb']:>11.0f} {r['peak_mb']:>10.0f}{star} "
                  f"{r['step_mb']:>11.0f} {r['losses'][0]:>8.4f}  {ratio}")
    print("\nbase RSS: resident memory after the warm-up steps (weights, AdamW moments, "
          "libraries);\npeak RSS: highest resident memory during the timed steps (VmHWM, reset "
          "after warm-up);\nstep mem = peak - base: gradients, activations, temporaries.")
    print("loss[0]: first step's loss, equal where drop_rate is 0 (baby); gpt2-124M's dropout "
          "masks differ between frameworks.")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
