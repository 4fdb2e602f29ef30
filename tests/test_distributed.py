"""Data-parallel training over 2 MPI ranks against the same training on one process.

The reference is one process training the same model on the same global batches (that
path is itself checked against PyTorch in test_train_parity.py); two ranks must give the
same per-step losses, evaluation losses and final weights, to 1e-10 in float64 and 1e-4
relative in float32, replicated or with the optimizer state sharded (ZeRO-1), and when a
run is interrupted on one rank count and resumed on another. The MPI runs are described in
tests/distributed_runs.py; they need `pip install -e ".[mpi]"` (part of ".[dev]").
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygpt import distributed
from tinygpt.checkpoints import CHECKPOINT_NAME, load_checkpoint
from tinygpt.distributed import DataParallel, SingleProcess, shard_bounds

sys.path.insert(0, str(Path(__file__).parent))
from distributed_runs import MODEL, RUN, tiny_run  # noqa: E402

RUNS_SCRIPT = str(Path(__file__).parent / "distributed_runs.py")


def run_on_two_ranks(runs, tmp_path, timeout=240):
    """Run ``runs`` (dicts of tiny_run options) on 2 ranks; returns (process, results)."""
    plan = [{"options": options, "result": str(tmp_path / f"run{i}.npz")}
            for i, options in enumerate(runs)]
    plan_file = tmp_path / "runs.json"
    plan_file.write_text(json.dumps(plan))
    command, env = distributed.mpiexec_command(2, [RUNS_SCRIPT, str(plan_file)])
    process = subprocess.run(command, env=env, capture_output=True, text=True,
                             timeout=timeout)
    results = [dict(np.load(p["result"])) if Path(p["result"]).is_file() else None
               for p in plan]
    return process, results


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    """One MPI job for all comparisons (each mpiexec start costs seconds)."""
    tmp = tmp_path_factory.mktemp("dp")
    # a run interrupted on one process, for the 2 ranks to resume
    tiny_run(out_dir=tmp / "one_to_two", interrupt_at=5)
    runs = {
        "replicated64": {"dtype": "float64"},
        "zero64": {"dtype": "float64", "zero": True},
        "replicated32": {"dtype": "float32"},
        "zero32": {"dtype": "float32", "zero": True},
        # Ctrl-C on rank 0 at batch 5 (step 3's second micro-batch): both ranks stop after
        # step 3 and rank 0 saves; the test resumes it on one process
        "two_to_one": {"dtype": "float64", "zero": True, "interrupt_at": 5,
                       "out_dir": str(tmp / "two_to_one")},
        "one_to_two": {"dtype": "float64", "zero": True, "out_dir": str(tmp / "one_to_two")},
    }
    process, results = run_on_two_ranks(list(runs.values()), tmp)
    assert process.returncode == 0, process.stderr[-3000:]
    return dict(zip(runs, results)), tmp


@pytest.fixture(scope="module")
def one_process():
    from tinygpt import backend

    runs = {dtype: tiny_run(dtype=dtype) for dtype in ("float64", "float32")}
    backend.set_default_dtype("float32")
    return runs


def assert_same_run(got, expected, rtol, atol):
    for key in ("step_loss", "train_loss", "val_loss"):
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=atol, err_msg=key)
    params = [k for k in expected if k.startswith("param:")]
    assert params and sorted(params) == sorted(k for k in got if k.startswith("param:"))
    for key in params:
        np.testing.assert_allclose(got[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


@pytest.mark.parametrize("name", ["replicated64", "zero64"])
def test_two_ranks_equal_one_process_float64(two_rank_results, one_process, name):
    results, _ = two_rank_results
    expected = one_process["float64"]
    assert len(expected["step_loss"]) == 6 and len(expected["val_loss"]) == 2
    assert_same_run(results[name], expected, rtol=0, atol=1e-10)
    # the weights moved: the comparison is not between two untrained models
    assert np.abs(expected["param:tok_emb.weight"] - tiny_run_initial_weights()).max() > 1e-3


def tiny_run_initial_weights():
    from tinygpt import backend
    from tinygpt.nn import GPTModel

    backend.set_default_dtype("float64")
    backend.manual_seed(RUN.seed)
    weights = GPTModel(MODEL).state_dict()["tok_emb.weight"]
    backend.set_default_dtype("float32")
    return weights


@pytest.mark.parametrize("name", ["replicated32", "zero32"])
def test_two_ranks_equal_one_process_float32(two_rank_results, one_process, name):
    results, _ = two_rank_results
    assert_same_run(results[name], one_process["float32"], rtol=1e-4, atol=1e-6)


def test_zero_equals_replicated(two_rank_results):
    results, _ = two_rank_results
    assert_same_run(results["zero64"], results["replicated64"], rtol=0, atol=1e-12)


def test_resume_two_ranks_on_one_process(two_rank_results, one_process):
    results, tmp = two_rank_results
    saved = load_checkpoint(tmp / "two_to_one" / CHECKPOINT_NAME)
    assert saved["step"] == 3  # the Ctrl-C on rank 0 stopped both ranks after step 3
    resumed = tiny_run(dtype="float64", out_dir=tmp / "two_to_one")
    assert_same_run(resumed, one_process["float64"], rtol=0, atol=1e-10)


def test_resume_one_process_on_two_ranks(two_rank_results, one_process):
    results, _ = two_rank_results
    assert_same_run(results["one_to_two"], one_process["float64"], rtol=0, atol=1e-10)


def test_failing_rank_stops_every_rank(tmp_path):
    """Rank 1 raises in step 3; rank 0 would wait in the next all-reduce forever without
    abort_on_error. The job must end promptly, non-zero, keeping a whole checkpoint: step 2's,
    or step 1's when the abort caught rank 0 while it was still writing step 2's."""
    start = time.monotonic()
    process, _ = run_on_two_ranks([{"fail_at": 5, "checkpoint_every": 1,
                                    "out_dir": str(tmp_path / "run")}], tmp_path, timeout=120)
    assert process.returncode != 0
    assert "error on rank 1 of 2: injected failure at batch 5" in process.stderr
    assert time.monotonic() - start < 100
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] in (1, 2)


def test_rows_split_like_one_batch():
    """Each rank's rows, in rank order, are the batch; shares add up to 1."""
    x = np.arange(10 * 3).reshape(10, 3)
    pieces = []
    for rank in range(3):
        comm = SingleProcess()
        comm.rank, comm.size = rank, 3
        xr, yr, share = DataParallel(comm).local_rows(x, x + 1)
        pieces.append((xr, share))
    np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), x)
    assert [s for _, s in pieces] == [0.4, 0.3, 0.3]
    assert shard_bounds(10, 3) == [(0, 4), (4, 7), (7, 10)]


def test_nproc_without_mpi_says_what_to_install(monkeypatch):
    monkeypatch.setattr(distributed.launcher, "find_mpiexec", lambda: None)
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[mpi\]"'):
        distributed.launch(2, ["train"])


def test_mpiexec_is_installed():
    """CI installs the [mpi] extra with [dev]: the tests above must really run on 2 ranks."""
    assert shutil.which(distributed.check_mpi_installed())


# ----------------------------------------------------------------------------- the command

def train_command(text_file, out, *extra):
    return ["train", "--data", str(text_file), "--config", "baby", "--context-length", "16",
            "--batch-size", "4", "--eval-iters", "1", "--warmup-steps", "1", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "text.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(rng.choice(list("abcdefgh \n"), 20000)))
    return path


def test_train_command_on_two_processes_equals_one(text_file, tmp_path, capfd):
    """`tinygpt train --nproc 2 --zero` relaunches itself under mpiexec and ends with the
    checkpoint one process writes (float32, the Numba kernels, 4 steps)."""
    from tinygpt.cli import main

    steps = ["--max-steps", "4", "--eval-every", "2"]
    assert main(train_command(text_file, tmp_path / "two", *steps, "--nproc", "2",
                              "--zero")) == 0
    out = capfd.readouterr().out
    assert "starting 2 processes" in out
    assert "training on 2 processes, AdamW moments sharded (ZeRO-1)" in out
    assert out.count("final: train loss") == 1  # rank 0 alone prints
    # one process, one thread (as each rank has): two threads spin-wait on a busy machine
    one_thread = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                         "NUMBA_NUM_THREADS")}
    subprocess.run([sys.executable, "-m", "tinygpt.cli",
                    *train_command(text_file, tmp_path / "one", *steps)],
                   env={**os.environ, **one_thread}, check=True, capture_output=True)
    two = load_checkpoint(tmp_path / "two" / CHECKPOINT_NAME)
    one = load_checkpoint(tmp_path / "one" / CHECKPOINT_NAME)
    assert two["step"] == one["step"] == 4
    for key, expected in one["model"].items():
        scale = np.abs(expected).max()
        np.testing.assert_allclose(two["model"][key], expected, rtol=0, atol=1e-4 * scale,
                                   err_msg=key)
    for index, state in one["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            scale = np.abs(state[name]).max()
            np.testing.assert_allclose(two["optimizer"]["state"][index][name], state[name],
                                       rtol=0, atol=1e-4 * scale, err_msg=f"{index} {name}")


def test_ctrl_c_stops_every_process_and_saves(text_file, tmp_path):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: mpiexec
    forwards it, both ranks stop after the same step, rank 0 saves, nothing hangs."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tinygpt.cli",
               *train_command(text_file, out, "--max-steps", "5000", "--eval-every", "1000",
                              "--checkpoint-every", "1", "--nproc", "2")]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    checkpoint = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    step = load_checkpoint(checkpoint)["step"]
    assert 1 <= step < 5000
    assert stderr.count(f"interrupted by SIGINT at step {step}: saved step {step}") == 1
    assert "error on rank" not in stderr


def test_plot_grads_refused_with_nproc(text_file, tmp_path, capsys):
    """Each process holds only its share of the gradient: plotting one would mislead."""
    from tinygpt.cli import main

    with pytest.raises(SystemExit, match="--plot-grads needs one process"):
        main(train_command(text_file, tmp_path / "run", "--nproc", "2", "--plot-grads"))
    assert not (tmp_path / "run").exists()
