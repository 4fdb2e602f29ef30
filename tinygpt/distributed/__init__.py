"""Data-parallel training over MPI processes ("ranks"), as PyTorch's DDP and llm.c do it.

Every rank holds the whole model, takes its own rows of each global batch, and after
backward the ranks sum their (share-weighted) gradients, so every rank steps with the
gradient one process would have computed from the whole batch:

* ``comm``     — communicators: ``SingleProcess`` (no MPI needed) and ``MPICommunicator``
  (mpi4py), with all-reduce, reduce-scatter and all-gather on flat arrays;
* ``launcher`` — ``tinygpt train --nproc N`` relaunching itself under ``mpiexec``, each rank
  joining with ``init()`` and its share of the cores, and ``abort_on_error``;
* ``parallel`` — ``DataParallel``: row slicing, gradient summing, clipping, the step;
* ``zero``     — ``ZeroAdamW``: AdamW's moments sharded over the ranks (ZeRO stage 1).

Install MPI with ``pip install -e ".[mpi]"`` (mpi4py and MPICH from PyPI).
"""

from tinygpt.distributed.comm import MPICommunicator, SingleProcess, shard_bounds
from tinygpt.distributed.launcher import (
    MPI_INSTALL_HINT,
    abort_on_error,
    check_mpi_installed,
    init,
    launch,
    local_size_from_environment,
    mpiexec_command,
    world_size_from_environment,
)
from tinygpt.distributed.parallel import DataParallel
from tinygpt.distributed.zero import ZeroAdamW

__all__ = [
    "MPICommunicator", "SingleProcess", "shard_bounds", "MPI_INSTALL_HINT", "abort_on_error",
    "check_mpi_installed", "init", "launch", "local_size_from_environment", "mpiexec_command",
    "world_size_from_environment",
    "DataParallel", "ZeroAdamW",
]
