"""Time every hot kernel, forward and backward, against its plain-array reference.

    python benchmarks/kernels.py                  # float32, GPT-2 small shapes
    python benchmarks/kernels.py --dtype float64 --repeat 5 --only attention --threads 1

Each row is the median of ``--repeat`` timed calls after two warm-up calls (the first call of
a Numba kernel compiles it, or loads it from Numba's cache); reference and Numba calls take
turns, so that other load on the machine does not favour either. A kernel in
``tinygpt.kernels.numba_cpu`` that is not faster than its reference here is removed from that
module (it re-exports the reference instead, and its row shows "reference").
"""

import argparse
import math
import os
import platform
import statistics
import time

import numba
import numpy as np

from tinygpt.kernels import numba_cpu, reference


def attention_case(B, H, Tq, Tk, D, dropout=False):
    """(forward args, backward args) for attention with the given shapes."""
    def make(rng, dtype):
        q = rng.standard_normal((B, H, Tq, D)).astype(dtype)
        k = rng.standard_normal((B, H, Tk, D)).astype(dtype)
        v = rng.standard_normal((B, H, Tk, D)).astype(dtype)
        mask = None
        if dropout:
            mask = (rng.random((B, H, Tq, Tk)) > 0.1).astype(dtype) / dtype(0.9)
        scale = 1.0 / math.sqrt(D)  # a NumPy float64 here would make the reference float64
        _, att = reference.attention_forward(q, k, v, scale, True, mask)
        dout = rng.standard_normal((B, H, Tq, D)).astype(dtype)
        return (q, k, v, scale, True, mask), (dout, q, k, v, att, scale, mask)
    return make


def cross_entropy_case(N, V):
    def make(rng, dtype):
        logits = (rng.standard_normal((N, V)) * 3).astype(dtype)
        targets = rng.integers(0, V, N)
        targets[rng.random(N) < 0.1] = -100
        _, lse = reference.cross_entropy_forward(logits, targets, -100)
        return (logits, targets, -100), (logits, targets, lse, -100, np.float32(1.0))
    return make


def last_axis_case(shape, forward):
    """Softmax-like ops: backward takes (forward output, upstream gradient)."""
    def make(rng, dtype):
        x = (rng.standard_normal(shape) * 3).astype(dtype)
        return (x,), (forward(x), rng.standard_normal(shape).astype(dtype))
    return make


def layernorm_case(N, C):
    def make(rng, dtype):
        x = rng.standard_normal((N, C)).astype(dtype)
        w = (1 + 0.1 * rng.standard_normal(C)).astype(dtype)
        b = (0.1 * rng.standard_normal(C)).astype(dtype)
        _, mean, rstd = reference.layernorm_forward(x, w, b, 1e-5)
        dy = rng.standard_normal((N, C)).astype(dtype)
        return (x, w, b, 1e-5), (dy, x, w, mean, rstd)
    return make


def gelu_case(shape):
    def make(rng, dtype):
        x = rng.standard_normal(shape).astype(dtype)
        return (x,), (x, rng.standard_normal(shape).astype(dtype))
    return make


# (name, shape label, make(rng, dtype) -> (forward args, backward args))
CASES = [
    ("softmax", "(2,12,256,256)", last_axis_case((2, 12, 256, 256), reference.softmax_forward)),
    ("log_softmax", "(512,50257)", last_axis_case((512, 50257), reference.log_softmax_forward)),
    ("cross_entropy", "N=512 V=50257", cross_entropy_case(512, 50257)),
    ("layernorm", "B=2 T=256 C=768", layernorm_case(2 * 256, 768)),
    ("gelu", "(2,256,3072)", gelu_case((2, 256, 3072))),
    ("attention", "B=2 H=12 T=256 D=64", attention_case(2, 12, 256, 256, 64)),
    ("attention", "B=12 H=4 T=64 D=32", attention_case(12, 4, 64, 64, 32)),
    ("attention", "B=2 H=12 T=256 +dropout", attention_case(2, 12, 256, 256, 64, True)),
    ("attention", "decode B=1 H=12 Tq=1 Tk=256", attention_case(1, 12, 1, 256, 64)),
]


def mlp_block(kernels, x, w1, w2, weight, bias):
    """GELU and layer norm between matrix products, as in a transformer block: here the
    kernels share the cores with the BLAS threads of the products, which an isolated kernel
    benchmark does not show."""
    return kernels.layernorm_forward(kernels.gelu_forward(x @ w1) @ w2, weight, bias, 1e-5)


def mlp_block_args(rng, dtype, N=512, C=768):
    x = rng.standard_normal((N, C)).astype(dtype)
    w1 = (0.03 * rng.standard_normal((C, 4 * C))).astype(dtype)
    w2 = (0.03 * rng.standard_normal((4 * C, C))).astype(dtype)
    return x, w1, w2, np.ones(C, dtype), np.zeros(C, dtype)


def median_ms(fns, args, repeat):
    """Median wall time in ms of each function in ``fns`` on ``args``, after two warm-up
    calls each. The functions take turns, so that load from other processes on the machine
    falls on all of them alike."""
    for fn in fns:
        fn(*args)
        fn(*args)
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, fn_times in zip(fns, times):
            start = time.perf_counter()
            fn(*args)
            fn_times.append(time.perf_counter() - start)
    return [1e3 * statistics.median(fn_times) for fn_times in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=7, help="timed calls per row")
    parser.add_argument("--only", default="", help="run only the kernels whose name has this")
    parser.add_argument("--threads", type=int, default=numba.get_num_threads(),
                        help="Numba threads (default: all cores)")
    args = parser.parse_args()
    numba.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype).type

    print(f"machine: {platform.machine()} {platform.processor()}, "
          f"{os.cpu_count()} CPUs, Numba {numba.__version__} with {numba.get_num_threads()} "
          f"threads, NumPy {np.__version__}, "
          f"Python {platform.python_version()}, {args.dtype}, median of {args.repeat}, "
          f"load average {os.getloadavg()[0]:.2f} (other processes skew the timings)")
    header = f"{'kernel':<22} {'shape':<28} {'reference ms':>13} {'numba ms':>10} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for name, label, make in CASES:
        if args.only not in name:
            continue
        forward_args, backward_args = make(rng, dtype)
        for direction, call_args in (("forward", forward_args), ("backward", backward_args)):
            fn_name = f"{name}_{direction}"
            ref_fn, fast_fn = getattr(reference, fn_name), getattr(numba_cpu, fn_name)
            if fast_fn is ref_fn:
                [ref_ms] = median_ms([ref_fn], call_args, args.repeat)
                print(f"{fn_name:<22} {label:<28} {ref_ms:>13.2f} {'reference':>10} {'-':>9}")
                continue
            ref_ms, fast_ms = median_ms([ref_fn, fast_fn], call_args, args.repeat)
            print(f"{fn_name:<22} {label:<28} {ref_ms:>13.2f} {fast_ms:>10.2f} "
                  f"{ref_ms / fast_ms:>8.2f}x")
    if args.only in "mlp_block":
        block_args = mlp_block_args(rng, dtype)
        ref_ms, fast_ms = median_ms([lambda *a: mlp_block(reference, *a),
                                     lambda *a: mlp_block(numba_cpu, *a)], block_args, args.repeat)
        print(f"{'mlp_block (in context)':<22} {'@W1 gelu @W2 layernorm N=512':<28} "
              f"{ref_ms:>13.2f} {fast_ms:>10.2f} {ref_ms / fast_ms:>8.2f}x")


if __name__ == "__main__":
    main()
