"""Your own op with a hand-derived backward: RMSNorm as a tinygpt.Function, checked.

    python examples/08_custom_op.py [--out-dir graphs] [--examples 50]

RMSNorm (Zhang & Sennrich 2019, used by LLaMA in place of LayerNorm) scales each row of
x (N, C) by the reciprocal of its root mean square, then by a learned weight w (C,):

    y = x * r * w,   r = 1 / sqrt(mean(x^2) + eps)   (one r per row)

1. the op as a tinygpt.Function: forward saves x-hat = x * r and r; backward is derived below;
2. tinygpt.gradcheck compares that backward with finite differences in float64;
3. hypothesis, through tinygpt.testing, does the same over many shapes and values;
4. a backward with a planted sign error is caught;
5. the fused op and RMSNorm composed from primitive tensor ops give the same gradients, and
   their graphs are drawn (one op node against seven) and profiled.

The backward, by hand. With x-hat_i = x_i r and dr/dx_j = -r^3 x_j / C:

    dL/dw   = sum over rows of  g * x-hat                 (g = dL/dy)
    dL/dx_j = sum_i (g_i w_i) (delta_ij r + x_i dr/dx_j)
            = r * (gw_j - x-hat_j * mean_i(gw_i * x-hat_i)),   gw = g * w

It runs in a few seconds; the graphs are written as SVG when Graphviz is installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import tinygpt
from tinygpt import Function, GradcheckError, Tensor, gradcheck, viz


class RMSNorm(Function):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) over the last axis."""

    @staticmethod
    def forward(ctx, x, w, eps=1e-6):
        # x (..., C), w (C,) -> y (..., C)
        r = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        x_hat = x * r
        ctx.save_for_backward(x_hat, r, w)
        return x_hat * w

    @staticmethod
    def backward(ctx, grad):
        x_hat, r, w = ctx.saved_tensors
        gw = grad * w  # dL/dx-hat, (..., C)
        dx = r * (gw - x_hat * (gw * x_hat).mean(axis=-1, keepdims=True))
        dw = (grad * x_hat).reshape(-1, w.shape[0]).sum(axis=0)  # summed over every row
        return dx, dw


class RMSNormWrongSign(RMSNorm):
    """The same op with one sign flipped in dx: the kind of slip gradcheck exists for."""

    @staticmethod
    def backward(ctx, grad):
        x_hat, r, w = ctx.saved_tensors
        gw = grad * w
        dx = r * (gw + x_hat * (gw * x_hat).mean(axis=-1, keepdims=True))  # + should be -
        return dx, (grad * x_hat).reshape(-1, w.shape[0]).sum(axis=0)


def rmsnorm_composed(x, w, eps=1e-6):
    """The same function from primitive ops: autograd derives the backward for us."""
    return x * ((x * x).mean(axis=-1, keepdims=True) + eps) ** -0.5 * w


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--out-dir", type=Path, default=Path("graphs"),
                   help="where the two graphs are drawn (default: graphs/)")
    p.add_argument("--examples", type=int, default=50,
                   help="hypothesis examples for step 3 (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    return p.parse_args()


def random_inputs(rng, shape):
    x = Tensor(rng.standard_normal(shape), requires_grad=True)  # float64
    w = Tensor(rng.standard_normal(shape[-1]), requires_grad=True)
    return x, w


def check_with_hypothesis(examples):
    """Step 3: gradcheck over hypothesis-drawn shapes (1-3 dimensions) and values."""
    try:
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from tinygpt.testing import arrays, shapes
    except ImportError as error:
        print(f"3. hypothesis: skipped ({error})")
        return

    @settings(settings.get_profile("tinygpt"), max_examples=examples, database=None)
    @given(st.data())
    def rmsnorm_matches_finite_differences(data):
        shape = data.draw(shapes(min_dims=1))
        x = data.draw(arrays(shape, min_value=-2.0, max_value=2.0))
        w = data.draw(arrays(shape[-1:], min_value=-2.0, max_value=2.0))
        gradcheck(RMSNorm.apply, [Tensor(x), Tensor(w)])

    rmsnorm_matches_finite_differences()
    print(f"3. hypothesis: {examples} random shapes and values, every gradient matches")


def compare_with_composed(rng, out_dir):
    """Step 5: the same gradients from the fused op and from primitives; their graphs."""
    x, w = random_inputs(rng, (2, 3, 8))
    fused = RMSNorm.apply(x, w)
    fused.sum().backward(retain_graph=True)
    fused_grads = x.grad, w.grad

    x2, w2 = Tensor(x.data, requires_grad=True), Tensor(w.data, requires_grad=True)
    composed = rmsnorm_composed(x2, w2)
    composed.sum().backward(retain_graph=True)
    print(f"5. fused vs composed: max |dy| {np.abs(fused.data - composed.data).max():.1e}, "
          f"max |dx| {np.abs(fused_grads[0] - x2.grad).max():.1e}, "
          f"max |dw| {np.abs(fused_grads[1] - w2.grad).max():.1e}")
    for name, out, leaves in (("fused", fused, {"x": x, "w": w}),
                              ("composed", composed, {"x": x2, "w": w2})):
        ops = viz.to_dot(out, names=leaves).count("shape=box")
        path = viz.draw(out, out_dir / f"rmsnorm_{name}.svg", names=leaves, grads=True)
        print(f"   {name:>8}: {ops} op node(s), graph in {path}")


def profile_both(rng):
    """Step 5, continued: where the time goes at GPT-2's width (B 8, T 256, C 768)."""
    x, w = random_inputs(rng, (8, 256, 768))
    profiles = {}
    for name, op in (("fused", RMSNorm.apply), ("composed", rmsnorm_composed)):
        with tinygpt.profile() as profiles[name]:
            for _ in range(3):
                op(x, w).sum().backward()
    for name, prof in profiles.items():
        allocated = sum(row.forward_bytes + row.backward_bytes for row in prof.rows())
        print(f"   {name:>8}: 3 forward + backward passes at (8, 256, 768), float64: "
              f"{prof.total_seconds * 1e3:.0f} ms, {allocated / 1e6:.0f} MB allocated")
    print("   the composed version, op by op (tinygpt.profile):")
    print("   " + str(profiles["composed"]).replace("\n", "\n   "))


def main():
    args = parse_args()
    rng = np.random.default_rng(args.seed)

    x, w = random_inputs(rng, (4, 6))
    gradcheck(RMSNorm.apply, [x, w])
    print("1-2. RMSNorm as a tinygpt.Function: gradcheck against finite differences passes")

    check_with_hypothesis(args.examples)

    try:
        gradcheck(RMSNormWrongSign.apply, [x, w])
        raise SystemExit("4. the planted sign error was NOT caught")
    except GradcheckError as error:
        print(f"4. planted sign error caught: {error}")

    compare_with_composed(rng, args.out_dir)
    profile_both(rng)


if __name__ == "__main__":
    main()
