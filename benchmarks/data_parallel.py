"""Data-parallel training on this machine: 1 process × 2 threads against 2 processes × 1 thread.

    python benchmarks/data_parallel.py                     # baby and mid, every mode
    python benchmarks/data_parallel.py --config mid --steps 10

For each model config, each mode runs in fresh processes of its own:

* ``1 proc x 2 threads`` — plain one-process training, BLAS and Numba on 2 threads;
* ``1 proc x 1 thread`` — the same on one thread (what each rank below has);
* ``2 procs x 1 thread`` — ``mpiexec -n 2``, each rank half of every batch, one all-reduce
  of the flat gradient per step (replicated AdamW);
* ``2 procs x 1 thread, ZeRO-1`` — the same with AdamW's moments sharded over the ranks
  (reduce-scatter, AdamW on half the parameters, all-gather).

A step is what ``tinygpt.train`` does per step (forward, cross-entropy, backward, gradient
clipping, AdamW) on random tokens, float32, the same global batch in every mode. Reported:
tokens per second over ``--steps`` timed steps after ``--warmup`` untimed ones (median step
time), the share of the step spent inside MPI calls (rank 0; it includes waiting for the
slower rank), the optimizer's moments per rank, each rank's peak resident memory, and the
machine's 1-minute load average after each mode (on a shared machine, other work slows the
modes unequally: threads that wait for each other suffer most).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name -> (GPTConfig fields, batch size)
    "baby": (dict(vocab_size=65, context_length=64, emb_dim=128, n_heads=4, n_layers=4,
                  drop_rate=0.0), 12),
    "mid": (dict(vocab_size=65, context_length=128, emb_dim=384, n_heads=6, n_layers=6,
                 drop_rate=0.0), 8),
}
MODES = {  # name -> (processes, threads per process, ZeRO-1)
    "1 proc x 2 threads": (1, 2, False),
    "1 proc x 1 thread": (1, 1, False),
    "2 procs x 1 thread": (2, 1, False),
    "2 procs x 1 thread, ZeRO-1": (2, 1, True),
}
COLLECTIVES = ("sum_", "sum_scalars", "any", "reduce_scatter_sum", "all_gather_")


# ----------------------------------------------------------------------------- one run

def timed_communicator(comm, clock):
    """Wrap the collectives of ``comm`` so their wall time adds up in ``clock[0]``."""
    for name in COLLECTIVES:
        original = getattr(comm, name)

        def timed(*args, _original=original):
            start = time.perf_counter()
            try:
                return _original(*args)
            finally:
                clock[0] += time.perf_counter() - start

        setattr(comm, name, timed)
    return comm


def worker(config, zero, steps, warmup, result_file):
    """Train ``config`` for warmup + steps steps on this rank; rank 0 writes the figures."""
    # tinygpt before NumPy: it sets how idle BLAS threads wait before NumPy loads them
    from tinygpt import backend
    from tinygpt.config import GPTConfig
    from tinygpt.distributed import DataParallel, init
    from tinygpt.nn import GPTModel
    from tinygpt.train import TrainConfig, batch_loss, make_optimizer

    fields, batch_size = CONFIGS[config]
    clock = [0.0]
    parallel = DataParallel(timed_communicator(init(), clock), shard_optimizer=zero)
    backend.manual_seed(0)
    model = GPTModel(GPTConfig(**fields))
    cfg = TrainConfig(batch_size=batch_size, peak_lr=4e-4, weight_decay=0.1, grad_clip=1.0)
    optimizer = make_optimizer(model, cfg, parallel)
    rng = backend.xp().random.default_rng(0)
    shape = (batch_size, fields["context_length"] + 1)
    times, comm_times = [], []
    for step in range(warmup + steps):
        rows = rng.integers(0, fields["vocab_size"], shape)
        clock[0], start = 0.0, time.perf_counter()
        x, y, share = parallel.local_rows(rows[:, :-1], rows[:, 1:])
        loss = batch_loss(model, x, y) * share
        loss.backward()
        parallel.sum(loss.item())
        parallel.step(model, optimizer, cfg.grad_clip)
        optimizer.zero_grad()
        if step >= warmup:
            times.append(time.perf_counter() - start)
            comm_times.append(clock[0])
    moments = _moment_bytes(optimizer)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    gathered = _gather_objects(parallel.comm, {"moments": moments, "peak_rss": peak_rss})
    if parallel.is_main:
        step_time = statistics.median(times)
        Path(result_file).write_text(json.dumps({
            "params": model.num_parameters(),
            "tokens_per_s": batch_size * fields["context_length"] / step_time,
            "step_ms": step_time * 1e3,
            "comm_share": statistics.median(comm_times) / step_time,
            "moments_per_rank": max(r["moments"] for r in gathered),
            "peak_rss_per_rank": max(r["peak_rss"] for r in gathered),
        }))


def _gather_objects(comm, obj):
    """``obj`` of every rank, as a list on rank 0 (mpi4py's pickling gather)."""
    return comm.comm.gather(obj, root=0) if comm.size > 1 else [obj]


def _moment_bytes(optimizer):
    """Bytes of AdamW moments this rank holds (ZeroAdamW: only its pieces)."""
    inner = getattr(optimizer, "inner", optimizer)
    return sum(v.nbytes for state in inner.state.values() for k, v in state.items()
               if k in ("exp_avg", "exp_avg_sq"))


# ----------------------------------------------------------------------------- driver

def run_mode(config, mode, steps, warmup):
    """Run one mode in fresh processes; returns rank 0's figures."""
    from tinygpt.distributed import mpiexec_command

    processes, threads, zero = MODES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        args = [__file__, "--worker", config, "--steps", str(steps), "--warmup", str(warmup),
                "--result", str(result)] + (["--zero"] if zero else [])
        command, env = mpiexec_command(processes, args, threads=threads)
        if processes == 1:  # no mpiexec: one plain process, with the same thread settings
            command = [sys.executable, *args]
        subprocess.run(command, env=env, check=True)
        figures = json.loads(result.read_text())
    figures["load"] = os.getloadavg()[0]  # other work on the machine during the run
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=[*CONFIGS, "all"], default="all")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--zero", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.zero, args.steps, args.warmup, args.result)
        return
    configs = list(CONFIGS) if args.config == "all" else [args.config]
    print(f"{os.cpu_count()} cores; load average (1 min) {os.getloadavg()[0]:.1f} at the start")
    print("| config | mode | tokens/s | ms/step | vs 1 proc x 2 threads | in MPI calls | "
          "AdamW moments per rank | peak RSS per rank | load after |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        fields, batch = CONFIGS[config]
        baseline = None
        for mode in MODES:
            r = run_mode(config, mode, args.steps, args.warmup)
            baseline = baseline or r["tokens_per_s"]
            name = (f"{config} ({fields['n_layers']} layers, {fields['emb_dim']} dims, "
                    f"{r['params'] / 1e6:.1f}M params, batch {batch} x "
                    f"{fields['context_length']})")
            print(f"| {name} | {mode} | {r['tokens_per_s']:,.0f} | {r['step_ms']:.1f} | "
                  f"{r['tokens_per_s'] / baseline:.2f}x | {r['comm_share']:.0%} | "
                  f"{r['moments_per_rank'] / 2**20:.1f} MiB | "
                  f"{r['peak_rss_per_rank'] / 2**20:.0f} MiB | {r['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
