"""examples/08_custom_op.py runs end to end: the fused RMSNorm passes gradcheck and
hypothesis, the planted sign error is caught, and fused and composed gradients agree."""

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "08_custom_op.py"


def run(*args, cwd):
    return subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_custom_op_example(tmp_path):
    result = run("--out-dir", str(tmp_path), "--examples", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gradcheck against finite differences passes" in out
    assert "3. hypothesis: 5 random shapes and values, every gradient matches" in out
    assert re.search(r"4\. planted sign error caught: input 0, element", out)
    differences = re.search(r"max \|dy\| (\S+), max \|dx\| (\S+), max \|dw\| (\S+)", out)
    assert all(float(d) < 1e-12 for d in differences.groups())
    assert "fused: 1 op node(s)" in out and "composed: 7 op node(s)" in out
    assert sorted(p.name for p in tmp_path.glob("rmsnorm_*")) in (
        ["rmsnorm_composed.dot", "rmsnorm_fused.dot"],  # without Graphviz
        ["rmsnorm_composed.svg", "rmsnorm_fused.svg"])


def test_custom_op_example_help(tmp_path):
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0 and "RMSNorm" in result.stdout and "--out-dir" in result.stdout
