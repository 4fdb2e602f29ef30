"""tinygpt.profile(): per-op calls and bytes counted exactly, times adding up to the wall time,
the table, and no recorder left behind."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

import tinygpt
import tinygpt.functional as F
from tinygpt import Function
from tinygpt.nn import GPTModel
from tinygpt.profiler import profile

engine = sys.modules["tinygpt.tensor"]  # the module (tinygpt.tensor is also a function)


class Double(Function):
    @staticmethod
    def forward(ctx, x):
        return 2.0 * x

    @staticmethod
    def backward(ctx, grad):
        return 2.0 * grad


def test_calls_and_bytes_per_op():
    x = tinygpt.tensor(np.ones((4, 3)), requires_grad=True)  # float64: 8 bytes an element
    w = tinygpt.tensor(np.ones((3, 5)), requires_grad=True)
    with profile() as prof:
        for _ in range(3):
            Double.apply(x @ w).tanh().sum().backward()
    stats = {row.op: row for row in prof.rows()}
    assert set(stats) == {"matmul", "Double", "tanh", "sum"}
    for row in stats.values():
        assert (row.forward_calls, row.backward_calls) == (3, 3)
    assert stats["matmul"].forward_bytes == 3 * 4 * 5 * 8  # the (4, 5) output
    assert stats["matmul"].backward_bytes == 3 * (4 * 3 + 3 * 5) * 8  # dx and dw
    assert stats["sum"].forward_bytes == 3 * 8
    assert engine._profiler is None  # nothing records after the block


def test_op_times_add_up_to_the_wall_time():
    """Each op is charged the time since the previous one, so the rows must add up to the
    wall time of the block, less the moments before the first op and after the last: we
    allow 10% of a ~0.1 s block for those."""
    cfg = tinygpt.GPTConfig(vocab_size=50, context_length=16, emb_dim=32, n_heads=4,
                            n_layers=2, drop_rate=0.0, qkv_bias=True)
    model = GPTModel(cfg)
    ids, targets = np.arange(32).reshape(2, 16) % 50, np.ones((2, 16), dtype=np.int64)
    start = time.perf_counter()
    with profile() as prof:
        for _ in range(5):
            F.cross_entropy(model(ids), targets).backward()
    wall = time.perf_counter() - start
    charged = sum(row.total_seconds for row in prof.rows())
    assert 0.9 * wall <= charged <= prof.wall_seconds <= wall
    assert all(row.forward_seconds >= 0 and row.backward_seconds >= 0 for row in prof.rows())


def test_table_is_sorted_by_total_time():
    x = tinygpt.tensor(np.full((64, 64), 0.01), requires_grad=True)
    with profile() as prof:
        (x @ x @ x).exp().sum().backward()
    lines = str(prof).splitlines()
    assert lines[0].split() == ["op", "fwd", "calls", "fwd", "ms", "bwd", "calls", "bwd", "ms",
                                "total", "ms", "%", "MB"]
    rows = prof.rows()
    assert [line.split()[0] for line in lines[2:-1]] == [row.op for row in rows]
    totals = [row.total_seconds for row in rows]
    assert totals == sorted(totals, reverse=True)
    assert lines[-1].startswith(f"{len(rows)} ops, ")


def test_profiles_do_not_nest_and_leave_no_recorder():
    with profile():
        with pytest.raises(RuntimeError, match="cannot be nested"):
            with profile():
                pass
        assert engine._profiler is not None  # the outer one is still recording
    assert engine._profiler is None


def test_tinygpt_profile_is_loaded_lazily():
    assert tinygpt.profile is profile
