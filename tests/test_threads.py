"""Thread counts set in one place reach the BLAS (as threadpoolctl reports it) and Numba."""

import json
import os
import subprocess
import sys

import numba
import pytest
from threadpoolctl import threadpool_info

from tinygpt import backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def blas_threads():
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture
def restore_threads():
    before = (numba.get_num_threads(), backend._num_threads)
    yield
    backend.set_num_threads(before[0])
    backend._num_threads = before[1]


def test_set_num_threads_reaches_blas_and_numba(restore_threads):
    backend.set_num_threads(1)
    assert blas_threads() == {1}
    assert numba.get_num_threads() == 1
    assert backend.num_threads() == 1


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2", True])
def test_set_num_threads_rejects_non_positive_integers(bad):
    with pytest.raises(ValueError, match="positive integer"):
        backend.set_num_threads(bad)


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter with extra environment variables."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ROOT, **env}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


REPORT = ("import tinygpt, json, numba, numpy, threadpoolctl; print(json.dumps({"
          "'blas': [p['num_threads'] for p in threadpoolctl.threadpool_info() "
          "if p['user_api'] == 'blas'], 'numba': numba.get_num_threads(), "
          "'numba_pool': numba.config.NUMBA_NUM_THREADS, 'timeout': "
          "__import__('os').environ.get('OPENBLAS_THREAD_TIMEOUT')}))")


def test_environment_variable_sets_every_pool_at_import():
    report = json.loads(run_python(REPORT, TINYGPT_NUM_THREADS="1").stdout)
    assert report["blas"] == [1] and report["numba"] == 1 and report["numba_pool"] == 1
    assert report["timeout"] == "4"  # OpenBLAS told not to spin, before NumPy loaded it


def test_bad_environment_value_is_one_warning_and_ignored():
    proc = run_python(REPORT, TINYGPT_NUM_THREADS="many")
    assert "TINYGPT_NUM_THREADS must be a positive integer, got 'many'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["numba"] == numba.config.NUMBA_NUM_THREADS


def test_threads_flag_on_a_command(restore_threads, monkeypatch, capsys):
    from tinygpt.cli import main

    monkeypatch.setenv("TINYGPT_NUM_THREADS", "2")  # undone after the test
    assert main(["info", "baby", "--threads", "1"]) == 0
    assert "baby" in capsys.readouterr().out
    assert blas_threads() == {1} and numba.get_num_threads() == 1
    assert os.environ["TINYGPT_NUM_THREADS"] == "1"  # inherited by --nproc ranks
