"""tinygpt.testing: the strategies really vary shapes and dtypes, keep to their bounds, and
the module is an optional (test-time) dependency."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from hypothesis import given, settings

import tinygpt.testing as S

DRAWS = settings(max_examples=150, derandomize=True, database=None)


def collect(strategy, check=lambda value: None):
    """Draw ~150 values from ``strategy`` through @given, checking each; return them all."""
    values = []

    @DRAWS
    @given(strategy)
    def draw(value):
        check(value)
        values.append(value)

    draw()
    return values


def test_arrays_vary_shapes_and_dtypes_within_bounds():
    def check(a):
        assert np.isfinite(a).all() and (a >= -0.5).all() and (a <= 2.0).all()

    drawn = collect(S.arrays(S.shapes(), dtype=S.float_dtypes(), min_value=-0.5,
                             max_value=2.0), check)
    assert len({a.shape for a in drawn}) >= 15
    assert {a.ndim for a in drawn} == {0, 1, 2, 3}
    assert {a.dtype for a in drawn} == {np.dtype("float32"), np.dtype("float64")}
    assert len({float(v) for a in drawn for v in a.flat}) >= 100  # values vary too


def test_arrays_keep_a_margin_around_kinks():
    def check(a):
        assert (np.abs(a) >= 0.25).all() and (np.abs(a - 1.0) >= 0.25).all()

    drawn = collect(S.arrays((3, 4), avoid=(0.0, 1.0), margin=0.25), check)
    values = np.concatenate([a.ravel() for a in drawn])
    assert (values < 0).any() and ((values > 0) & (values < 1)).any() and (values > 1).any()


def test_nonzero_and_positive_arrays_in_both_precisions():
    """Bounds such as 0.2, which float32 cannot hold exactly, are rounded inwards."""
    dtypes = S.float_dtypes()
    nonzero = np.concatenate([a.ravel() for a in collect(S.nonzero_arrays((5,), dtype=dtypes))])
    assert (np.abs(nonzero) >= 0.3).all() and (nonzero < 0).any() and (nonzero > 0).any()
    positive = np.concatenate([a.ravel() for a in collect(S.positive_arrays((5,), dtype=dtypes))])
    assert (positive >= 0.2).all() and (positive <= 3.0).all()


def test_broadcastable_shapes_broadcast_and_vary():
    drawn = collect(S.broadcastable_shapes(num_shapes=3), lambda s: np.broadcast_shapes(*s))
    assert all(len(shapes) == 3 for shapes in drawn)
    assert len(set(drawn)) >= 30
    # both ways broadcasting stretches an operand show up: missing leading dims, size-1 dims
    assert any(len({len(s) for s in shapes}) > 1 for shapes in drawn)
    assert any(1 in s and np.broadcast_shapes(*shapes) != s for shapes in drawn for s in shapes)


def test_logits_reach_large_ranges():
    drawn = collect(S.logits((2, 5)), lambda x: np.isfinite(x).all())
    largest = [np.abs(x).max() for x in drawn]
    assert min(largest) < 1.0 and max(largest) > 100.0  # exp(100) overflows float32


def test_targets_lie_in_range_and_include_ignore_index():
    def check(t):
        kept = t[t != -100]
        assert t.dtype == np.int64 and kept.size > 0  # never all ignored
        assert ((kept >= 0) & (kept < 7)).all()

    drawn = collect(S.targets((3, 4), vocab=7), check)
    assert any((t == -100).any() for t in drawn)
    assert len({int(v) for t in drawn for v in t.flat}) == 8  # 0..6 and -100


def test_profiles_are_registered_without_deadline():
    assert settings.get_profile("tinygpt").deadline is None
    assert settings.get_profile("ci").derandomize


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_tinygpt_does_not_import_hypothesis():
    result = run_python("import sys, tinygpt; print('hypothesis' in sys.modules)")
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_testing_without_hypothesis_says_what_to_install():
    result = run_python("import sys; sys.modules['hypothesis'] = None; import tinygpt.testing")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        'ImportError: tinygpt.testing needs hypothesis: pip install hypothesis '
        '(or pip install -e ".[dev]")')
