"""Starting ranks: ``--nproc N`` relaunches the command under ``mpiexec``; each rank joins.

Two ways in, one result:

* ``tinygpt train ... --nproc 4`` finds ``mpiexec`` and runs ``mpiexec -n 4 python -m
  tinygpt.cli train ...`` (the same arguments), giving each rank ``cores / 4`` threads;
* ``mpiexec -n 4 tinygpt train ...`` (or ``srun``) on a cluster starts the ranks itself.

Either way each rank calls ``init()``, which sees from the environment that it runs under an
MPI launcher, joins ``COMM_WORLD`` through mpi4py and limits its own BLAS and Numba threads
to its share of the cores of its machine. Without a launcher, ``init()`` returns the
single-process communicator and never imports mpi4py.

A rank that fails must stop the others, which would otherwise wait forever for it in the
next collective: ``abort_on_error`` turns an exception on any rank into ``MPI_Abort``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from tinygpt import backend
from tinygpt.distributed.comm import MPICommunicator, SingleProcess

MPI_INSTALL_HINT = ('training on several processes needs MPI: install it with '
                    'pip install -e ".[mpi]" (mpi4py and MPICH from PyPI), or '
                    'pip install mpi4py mpich')

# Set by MPI launchers in every rank they start: MPICH / Intel MPI / Slurm's srun (PMI) and
# Open MPI. Their presence is how a process knows it is one rank of several.
_WORLD_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LOCAL_SIZE_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")

# The thread pools of BLAS (OpenBLAS, MKL, OpenMP) and Numba, capped in each started rank.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMBA_NUM_THREADS")


def world_size_from_environment() -> int:
    """How many ranks the MPI launcher that started this process started (1 if none)."""
    for name in _WORLD_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def local_size_from_environment() -> int | None:
    """How many ranks the MPI launcher started on this machine (MPICH's and Open MPI's
    variables), or None when it does not say."""
    for name in _LOCAL_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return None


def find_mpiexec() -> str | None:
    """The ``mpiexec`` beside this Python (the one pip installed with mpich), else on PATH."""
    beside_python = Path(sys.executable).parent / "mpiexec"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("mpiexec")


def check_mpi_installed() -> str:
    """The path of ``mpiexec``; a RuntimeError saying what to install if MPI is missing."""
    mpiexec = find_mpiexec()
    if mpiexec is None or importlib.util.find_spec("mpi4py") is None:
        missing = "mpiexec" if mpiexec is None else "mpi4py"
        raise RuntimeError(f"{MPI_INSTALL_HINT} ({missing} was not found)")
    return mpiexec


def threads_per_rank(ranks_on_this_machine: int) -> int:
    """This machine's cores shared out among its ranks, at least one thread each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // ranks_on_this_machine)


def mpiexec_command(nproc: int, python_args: list[str],
                    threads: int | None = None) -> tuple[list[str], dict]:
    """The command and environment that run ``python *python_args`` on ``nproc`` ranks.

    Each rank gets ``threads`` threads, else TINYGPT_NUM_THREADS, else ``cores / nproc``.
    """
    mpiexec = check_mpi_installed()
    env = dict(os.environ)
    threads = str(threads or env.get("TINYGPT_NUM_THREADS") or threads_per_rank(nproc))
    env.update({name: threads for name in _THREAD_VARIABLES})
    env["TINYGPT_NUM_THREADS"] = threads
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses to run as root without these (MPICH ignores them)
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    return [mpiexec, "-n", str(nproc), sys.executable, *python_args], env


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``tinygpt *argv`` on ``nproc`` ranks; returns mpiexec's exit code.

    Ctrl-C reaches the ranks (mpiexec forwards it), which stop after the current step and
    save; this process only waits for them.
    """
    command, env = mpiexec_command(nproc, ["-m", "tinygpt.cli", *argv])
    print(f"starting {nproc} processes with {env['TINYGPT_NUM_THREADS']} thread(s) each: "
          f"{' '.join(command[:3])} tinygpt {' '.join(argv)}", flush=True)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(command, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)


def init(nproc: int | None = None) -> SingleProcess:
    """This process's communicator: MPI's COMM_WORLD under a launcher, else a single process.

    ``nproc`` (from ``--nproc``), if given, must equal the number of ranks the launcher
    started. Under MPI, BLAS and Numba are limited to this rank's share of the cores.
    """
    if world_size_from_environment() == 1:
        if nproc not in (None, 1):
            raise RuntimeError(f"--nproc {nproc} needs an MPI launcher (use launch())")
        return SingleProcess()
    if importlib.util.find_spec("mpi4py") is None:
        raise RuntimeError(MPI_INSTALL_HINT)
    from mpi4py import MPI

    comm = MPICommunicator(MPI.COMM_WORLD)
    if nproc not in (None, comm.size):
        raise ValueError(f"--nproc {nproc} does not match the {comm.size} processes that "
                         "mpiexec started; leave --nproc out under mpiexec")
    backend.set_num_threads(int(os.environ.get("TINYGPT_NUM_THREADS") or
                                threads_per_rank(comm.local_size)))
    return comm


@contextmanager
def abort_on_error(comm: SingleProcess, agreed: tuple = ()):
    """Turn an error on one rank into the end of all ranks (with a message naming the rank).

    Without this, a rank that raised would leave the others waiting in their next
    collective forever. ``agreed`` are exception types every rank raises at the same point
    (a stop the ranks agreed on, such as train's TrainingInterrupted): they end each rank
    normally, and only rank 0 lets the exception through to report it. A single process
    just lets every error through.
    """
    try:
        yield
    except BaseException as err:
        clean_exit = isinstance(err, SystemExit) and err.code in (0, None)
        if comm.size == 1 or clean_exit:
            raise
        if isinstance(err, agreed):
            if comm.rank == 0:
                raise
            raise SystemExit(getattr(err, "exit_status", 1)) from None
        message = str(err) or type(err).__name__
        print(f"error on rank {comm.rank} of {comm.size}: {message}", file=sys.stderr,
              flush=True)
        comm.abort(1)
