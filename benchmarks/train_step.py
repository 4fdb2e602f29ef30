"""One full training step, tinygpt against the same model in PyTorch, on this machine.

    python benchmarks/train_step.py                        # both configs, all rows
    python benchmarks/train_step.py --config baby --rounds 3
    python benchmarks/train_step.py --config gpt2-124M --steps 5 --warmup 2
    python benchmarks/train_step.py --config baby --load busy,train   # slowdown under load
    python benchmarks/train_step.py --config baby --profile          # where one step goes

A step is what ``tinygpt.train`` does per optimizer step: set the warm-up/cosine learning
rate, forward, mean next-token cross-entropy, backward, clip the gradient norm to 1.0 (rows
"clip"; the rows "no clip" leave it out, as the book's chapter 5 does), AdamW (weight decay
0.1 on the matrices, none on vectors), zero the gradients. Every framework runs it in
float32 on the same weights (tinygpt's initialisation, copied into the book's PyTorch
GPTModel from ``tests/torch_gpt.py``) and the same batches, each in its own fresh process,
with its default threads (every core) unless ``--threads`` says otherwise. PyTorch runs
twice: its default AdamW (``foreach`` on CPU) and ``fused=True``.

Time: the median of ``--steps`` timed steps after ``--warmup`` untimed ones (the first steps
allocate the optimizer state and load or compile Numba kernels); with ``--rounds`` the
frameworks alternate in fresh processes and the timed steps are pooled. "vs torch" and
"vs fused" divide tinygpt's median by PyTorch's.

Memory: after the warm-up, freed heap is returned to the OS (malloc_trim) and the kernel's
peak-RSS counter is reset (/proc/self/clear_refs). "step MB" = peak RSS during the timed
steps - RSS before them: gradients, activations, temporaries, as the OS sees them (tinygpt
keeps its flat gradient buffer between steps, so its size is added back). "faults" are minor
page faults per timed step from the second on (``resource.getrusage().ru_minflt``), i.e.
memory the process had to be given afresh by the OS in steady state.

MFU: the model's matrix-product FLOPs per step (6 x tokens x matrix weights, plus attention's
12 x layers x T x C per token) per second, over the best float32 GEMM rate NumPy reaches on
this machine (measured first, in its own process, and printed).

Load (``--load busy,train``): the same measurement beside a process that spins on one core
("busy"), and beside a second copy of the same framework's training ("train"). "slowdown" is
the median under load over the median alone; the target is tinygpt's <= PyTorch's.
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
FRAMEWORKS = ("tinygpt", "torch", "torch-fused")
PEAK_LR, WEIGHT_DECAY, MAX_NORM = 4e-4, 0.1, 1.0
PHASES = ("forward", "backward", "clip", "optimizer", "zero_grad")


# ----------------------------------------------------------------------------- memory

def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def release_free_heap():
    """Give memory that setup freed back to the OS (so the torch worker's RSS does not carry
    the tinygpt model it copied its weights from)."""
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
    """tinygpt model (float32, seeded), config, batches: shared by every worker."""
    # tinygpt before NumPy, so its thread and malloc settings apply as in `tinygpt train`
    import tinygpt  # noqa: I001
    import numpy
    from tinygpt.nn import GPTModel

    preset, batch, tokens = CONFIGS[config]
    cfg = tinygpt.GPTConfig.preset(preset)
    tinygpt.manual_seed(123)
    model = GPTModel(cfg)
    rng = numpy.random.default_rng(0)
    batches = [rng.integers(0, cfg.vocab_size, size=(batch, tokens + 1)) for _ in range(4)]
    return model, cfg, batches


def model_flops(cfg, batch, tokens):
    """Matrix-product FLOPs of one training step (forward + backward = 3 x forward)."""
    C, L, V = cfg.emb_dim, cfg.n_layers, cfg.vocab_size
    matrix_weights = L * (4 * C * C + 8 * C * C) + C * V  # attention, feed-forward, head
    per_token = 6 * matrix_weights + 12 * L * tokens * C   # + q k^T and att @ v
    return per_token * batch * tokens


def run_tinygpt(config, steps, warmup, clip, profile):
    from tinygpt import functional as F
    from tinygpt.optim import AdamW, clip_grad_norm, param_groups_for_weight_decay

    model, cfg, batches = build(config)
    model.train()
    optimizer = AdamW(param_groups_for_weight_decay(model, WEIGHT_DECAY), lr=PEAK_LR,
                      weight_decay=WEIGHT_DECAY)
    params = model.parameters()

    def phases(ids):
        yield "forward"
        loss = F.cross_entropy(model(ids[:, :-1]), ids[:, 1:])
        yield "backward"
        loss.backward()
        if clip:
            yield "clip"
            clip_grad_norm(params, MAX_NORM)
        yield "optimizer"
        optimizer.step()
        yield "zero_grad"
        optimizer.zero_grad()
        yield loss.item()

    result = measure(phases, optimizer.param_groups, batches, steps, warmup,
                     kept_mb=optimizer.buffer.grad.nbytes / 2**20)
    if profile:
        result["profile"] = op_profile(phases, batches[0])
    return result


def op_profile(phases, ids):
    """tinygpt.profile's per-op table of one step (forward and backward ops)."""
    import tinygpt

    with tinygpt.profile() as prof:
        for _ in phases(ids):
            pass
    return str(prof)


def run_torch(config, steps, warmup, clip, profile, fused=False):
    import torch

    spec = importlib.util.spec_from_file_location("torch_gpt", ROOT / "tests" / "torch_gpt.py")
    torch_gpt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(torch_gpt)
    if os.environ.get("TRAIN_STEP_THREADS"):
        torch.set_num_threads(int(os.environ["TRAIN_STEP_THREADS"]))
    torch.manual_seed(0)  # dropout masks (they differ from tinygpt's, hence loss[0])

    tiny, cfg, batches = build(config)
    model = torch_gpt.from_tinygpt(tiny)
    del tiny
    gc.collect()
    model.train()
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in named if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
         {"params": [p for _, p in named if p.dim() < 2], "weight_decay": 0.0}],
        lr=PEAK_LR, weight_decay=WEIGHT_DECAY, fused=fused or None)
    batches = [torch.from_numpy(b) for b in batches]

    def phases(ids):
        yield "forward"
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        yield "backward"
        loss.backward()
        if clip:
            yield "clip"
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        yield "optimizer"
        optimizer.step()
        yield "zero_grad"
        optimizer.zero_grad()
        yield loss.item()

    result = measure(phases, optimizer.param_groups, batches, steps, warmup)
    result["threads"] = torch.get_num_threads()
    return result


def measure(phases, param_groups, batches, steps, warmup, kept_mb=0.0):
    """Warm-up steps, then reset the peak-RSS counter, then the timed steps, each timed per
    phase. ``kept_mb``: memory a step uses that stays allocated between steps (tinygpt's
    flat gradient buffer), so it is in the base RSS; it is added back into "step mem"."""
    from tinygpt.optim import warmup_cosine_lr

    total = warmup + steps

    def step(i, times):
        lr = warmup_cosine_lr(i, peak_lr=PEAK_LR, total_steps=total, warmup_steps=1)
        for group in param_groups:
            group["lr"] = lr
        start, phase = time.perf_counter(), "lr"
        for item in phases(batches[i % len(batches)]):
            now = time.perf_counter()
            times[phase] = times.get(phase, 0.0) + now - start
            start, phase = now, item
        return item  # the loss, yielded last

    losses = [step(i, {}) for i in range(warmup)]
    gc.collect()
    release_free_heap()
    base, reset_worked = reset_peak_rss()
    per_step, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(warmup, total):
        if i == warmup + 1:  # steady state: after the first step has refilled the heap
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = {}
        losses.append(step(i, times))
        per_step.append({k: 1000 * v for k, v in times.items()})
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    peak = peak_rss_mb(reset_worked)
    return {"ms": [sum(t.values()) for t in per_step], "phases": per_step, "losses": losses,
            "base_mb": base, "peak_mb": peak, "step_mb": peak - base + kept_mb,
            "exact_peak": reset_worked, "faults": faults / max(1, steps - 1)}


def gemm_peak():
    """Best float32 GFLOP/s of NumPy's matmul over square and GPT-2-shaped products."""
    import tinygpt  # noqa: F401, I001  (first: the same thread settings as the tinygpt worker)
    import numpy

    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (512, 768, 3072), (512, 3072, 768), (512, 768, 2304)]:
        a = numpy.ones((m, k), numpy.float32)
        b = numpy.ones((k, n), numpy.float32)
        a @ b
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - start) / 1e9)
    return {"gflops": best}


def worker(args):
    if args.worker == "gemm":
        result = gemm_peak()
    elif args.worker == "tinygpt":
        result = run_tinygpt(args.config, args.steps, args.warmup, args.clip, args.profile)
    else:
        result = run_torch(args.config, args.steps, args.warmup, args.clip, args.profile,
                           fused=args.worker == "torch-fused")
    print(json.dumps(result))


# ----------------------------------------------------------------------------- driver

def machine_line():
    load = os.getloadavg()[0]
    versions = []
    for name in ("numpy", "numba", "torch"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return (f"{platform.machine()}, {os.cpu_count()} cores, load {load:.1f}; "
            f"Python {platform.python_version()}, " + ", ".join(versions))


def worker_command(framework, config, steps, warmup, clip, profile=False):
    cmd = [sys.executable, __file__, "--worker", framework, "--config", config,
           "--steps", str(steps), "--warmup", str(warmup)]
    return cmd + ["--clip", "yes" if clip else "no"] + (["--profile"] if profile else [])


def environment(threads):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if threads:
        env.update(TINYGPT_NUM_THREADS=str(threads), TRAIN_STEP_THREADS=str(threads))
    return env


def start_load(kind, framework, config, threads):
    """The process a "busy" or "train" measurement runs beside (None for no load)."""
    if kind == "none":
        return None
    if kind == "busy":
        cmd = [sys.executable, "-c", "while True: pass"]
    else:
        cmd = worker_command(framework, config, 100000, 0, clip=True)
    proc = subprocess.Popen(cmd, env=environment(threads), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(3 if kind == "busy" else 10)  # let a second training get into its steps
    return proc


def spawn(framework, config, steps, warmup, clip, threads, load="none", profile=False):
    background = start_load(load, framework, config, threads)
    try:
        proc = subprocess.run(worker_command(framework, config, steps, warmup, clip, profile),
                              capture_output=True, text=True, env=environment(threads))
    finally:
        if background is not None:
            background.kill()
            background.wait()
    if proc.returncode:
        sys.exit(f"{framework} worker failed on {config}:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pooled(runs):
    """One result from several rounds: timed steps pooled, the larger memory readings."""
    out = dict(runs[0])
    out["ms"] = [t for r in runs for t in r["ms"]]
    out["phases"] = [p for r in runs for p in r["phases"]]
    for key in ("base_mb", "peak_mb", "faults"):
        out[key] = max(r[key] for r in runs)
    out["step_mb"] = max(r["step_mb"] for r in runs)
    out["median"] = statistics.median(out["ms"])
    return out


def print_table(config, clip, results, flops, peak_gflops):
    batch, tokens = CONFIGS[config][1:]
    mfu = {fw: flops / (r["median"] / 1000) / (peak_gflops * 1e9) for fw, r in results.items()}
    for fw, r in results.items():
        ratios = "" if fw != "tinygpt" else "  ".join(
            f"{r['median'] / results[other]['median']:.2f}x"
            for other in ("torch", "torch-fused") if other in results)
        mem = "" if fw != "tinygpt" or "torch" not in results else (
            f"{r['step_mb'] / results['torch']['step_mb']:.2f}x")
        print(f"{config:<10} {f'{batch}x{tokens}':>7} {'clip' if clip else 'no clip':<8} "
              f"{fw:<12} {r['median']:>9.1f} {min(r['ms']):>8.1f} {100 * mfu[fw]:>5.1f}% "
              f"{r['step_mb']:>8.0f} {r['faults']:>9.0f} {r['losses'][0]:>8.4f}  "
              f"{ratios:<13} {mem}")


def print_phases(config, clip, results):
    for fw, r in results.items():
        medians = [statistics.median(p.get(ph, 0.0) for p in r["phases"]) for ph in PHASES]
        cells = " ".join(f"{m:>9.1f}" for m in medians)
        print(f"{config:<10} {'clip' if clip else 'no clip':<8} {fw:<12} {cells}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="all", choices=[*CONFIGS, "all"])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default: 20 for baby, 5 for gpt2-124M)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for every framework (default: each one's default)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the frameworks this many times (fresh processes) and "
                             "pool the timed steps: fairer on a machine with other load")
    parser.add_argument("--clip", choices=["both", "yes", "no"], default="both",
                        help="rows with gradient clipping, without, or both (default)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                        help=f"comma-separated subset of {','.join(FRAMEWORKS)}")
    parser.add_argument("--load", default="",
                        help="also measure beside load: comma-separated 'busy' (a spinning "
                             "process) and/or 'train' (a second training of the same kind)")
    parser.add_argument("--profile", action="store_true",
                        help="print tinygpt.profile's per-op table of one tinygpt step")
    parser.add_argument("--worker", choices=[*FRAMEWORKS, "gemm"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.clip = args.clip == "yes"
        return worker(args)
    frameworks = [fw for fw in args.frameworks.split(",") if fw]
    if "tinygpt" not in frameworks or not set(frameworks) <= set(FRAMEWORKS):
        parser.error(f"--frameworks must include tinygpt and name only {', '.join(FRAMEWORKS)}")
    loads = [kind for kind in args.load.split(",") if kind]
    if not set(loads) <= {"busy", "train"}:
        parser.error(f"--load takes 'busy' and/or 'train', got {args.load!r}")

    print(machine_line())
    peak = spawn_gemm(args.threads)
    print(f"threads: {args.threads or 'defaults (all cores)'}; rounds: {args.rounds}; "
          f"NumPy float32 GEMM peak here: {peak:.0f} GFLOP/s\n")
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    clips = {"both": [True, False], "yes": [True], "no": [False]}[args.clip]
    header = (f"{'config':<10} {'B x T':>7} {'step':<8} {'framework':<12} {'ms/step':>9} "
              f"{'min ms':>8} {'MFU':>6} {'step MB':>8} {'faults':>9} {'loss[0]':>8}  "
              f"{'vs torch, fused':<13} mem vs torch")
    print(header + "\n" + "-" * len(header))
    all_results = []
    for config in configs:
        steps = args.steps or (20 if config == "baby" else 5)
        cfg_flops = flops_of(config)
        for clip in clips:
            runs = {fw: [] for fw in frameworks}
            for _ in range(args.rounds):
                for fw in frameworks:
                    runs[fw].append(spawn(fw, config, steps, args.warmup, clip, args.threads))
            results = {fw: pooled(r) for fw, r in runs.items()}
            print_table(config, clip, results, cfg_flops, peak)
            all_results.append((config, clip, results))
    print("\nmedian ms per phase of the step")
    print(f"{'config':<10} {'step':<8} {'framework':<12} " +
          " ".join(f"{ph:>9}" for ph in PHASES))
    for config, clip, results in all_results:
        print_phases(config, clip, results)
    if loads:
        print_load(configs, loads, frameworks, args)
    if args.profile:
        for config in configs:
            r = spawn("tinygpt", config, 1, args.warmup, True, args.threads, profile=True)
            print(f"\ntinygpt.profile of one {config} step (forward and backward ops):\n"
                  f"{r['profile']}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


def spawn_gemm(threads):
    proc = subprocess.run([sys.executable, __file__, "--worker", "gemm"], capture_output=True,
                          text=True, env=environment(threads))
    if proc.returncode:
        sys.exit(f"GEMM worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["gflops"]


def flops_of(config):
    from tinygpt.config import GPTConfig

    preset, batch, tokens = CONFIGS[config]
    return model_flops(GPTConfig.preset(preset), batch, tokens)


def print_load(configs, loads, frameworks, args):
    """Each framework alone and beside each load, alternating; slowdown = loaded / alone."""
    print(f"\nslowdown under load (step with clipping; median ms; {args.rounds} round(s))")
    print(f"{'config':<10} {'framework':<12} {'alone':>9} " +
          " ".join(f"{kind:>9} {'slowdown':>9}" for kind in loads))
    for config in configs:
        steps = args.steps or (20 if config == "baby" else 5)
        for fw in frameworks:
            medians = {}
            for kind in ["none", *loads]:
                times = []
                for _ in range(args.rounds):
                    times += spawn(fw, config, steps, args.warmup, True, args.threads,
                                   load=kind)["ms"]
                medians[kind] = statistics.median(times)
            cells = " ".join(f"{medians[k]:>9.1f} {medians[k] / medians['none']:>8.2f}x"
                             for k in loads)
            print(f"{config:<10} {fw:<12} {medians['none']:>9.1f} {cells}")


if __name__ == "__main__":
    main()
