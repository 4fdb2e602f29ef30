"""Communicators: the collective operations data-parallel training needs, on flat arrays.

Two classes with the same methods:

* ``SingleProcess`` — rank 0 of 1, every collective a no-op. Training on one process goes
  through it, so the training loop has one code path and needs no MPI installed.
* ``MPICommunicator`` — ``mpi4py``'s ``COMM_WORLD``: N ranks, on one machine or many.

Every collective works in place on a 1-D array (NumPy, or CuPy on a GPU) and sums; the
callers weight what they contribute so that a sum is the average they want. Sharded
collectives take ``bounds``, the (start, end) of each rank's slice (``shard_bounds``).

CuPy buffers: with ``TINYGPT_CUDA_AWARE_MPI=1`` the device arrays go to MPI as they are
(an MPI built with CUDA support reads GPU memory directly, or over NVLink/InfiniBand);
otherwise each collective copies the buffer to the host and back, which is correct
everywhere but costs two PCIe transfers per call. NCCL is not used.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy


def shard_bounds(total: int, size: int) -> list[tuple[int, int]]:
    """Split ``total`` elements into ``size`` contiguous slices as equal as possible.

    The first ``total % size`` slices get one element more: 10 over 3 → (0,4), (4,7), (7,10).
    """
    base, extra = divmod(total, size)
    bounds, start = [], 0
    for rank in range(size):
        end = start + base + (1 if rank < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class SingleProcess:
    """One process alone: rank 0 of 1. Sums over one rank leave everything as it is."""

    rank, size, local_size = 0, 1, 1

    def sum_(self, buffer):
        """Sum ``buffer`` over all ranks, in place; returns it."""
        return buffer

    def sum_scalars(self, *values: float) -> list[float]:
        """Each of a few Python numbers summed over all ranks."""
        return [float(v) for v in values]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on at least one."""
        return bool(flag)

    def reduce_scatter_sum(self, buffer, bounds):
        """Sum ``buffer`` over ranks, but only this rank's slice is made right; returns it."""
        start, end = bounds[self.rank]
        return buffer[start:end]

    def all_gather_(self, buffer, bounds):
        """Every rank's slice of ``buffer`` copied to every other rank, in place."""
        return buffer

    def gather(self, shard, bounds):
        """The slices of all ranks joined into one array on rank 0 (None elsewhere)."""
        return shard

    def broadcast(self, obj):
        """Rank 0's Python object, on every rank."""
        return obj

    def abort(self, code: int = 1):
        raise SystemExit(code)


class MPICommunicator(SingleProcess):
    """The ranks of an MPI job (``mpiexec -n N ...``), through mpi4py."""

    def __init__(self, comm):
        from mpi4py import MPI

        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        # ranks on this machine (they share its cores); the rest run on other hosts
        self.local_size = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        self._receive = {}  # reused receive buffers for reduce_scatter_sum, by (size, dtype)

    def sum_(self, buffer):
        with _exchangeable(buffer) as array:
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return buffer

    def sum_scalars(self, *values: float) -> list[float]:
        array = numpy.array(values, dtype=numpy.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array.tolist()

    def any(self, flag: bool) -> bool:
        return self.comm.allreduce(bool(flag), op=self.MPI.LOR)

    def reduce_scatter_sum(self, buffer, bounds):
        start, end = bounds[self.rank]
        counts = [e - s for s, e in bounds]
        with _exchangeable(buffer) as array:
            received = self._receive_buffer(array, end - start)
            self.comm.Reduce_scatter(array, received, recvcounts=counts, op=self.MPI.SUM)
            array[start:end] = received
        return buffer[start:end]

    def _receive_buffer(self, like, count):
        key = (count, like.dtype.str, type(like))
        if key not in self._receive:
            self._receive[key] = numpy.empty_like(like, shape=count)
        return self._receive[key]

    def all_gather_(self, buffer, bounds):
        counts, starts = [e - s for s, e in bounds], [s for s, _ in bounds]
        with _exchangeable(buffer) as array:
            self.comm.Allgatherv(self.MPI.IN_PLACE,
                                 [array, counts, starts, _mpi_type(array.dtype)])
        return buffer

    def gather(self, shard, bounds):
        counts, starts = [e - s for s, e in bounds], [s for s, _ in bounds]
        host = numpy.ascontiguousarray(_to_host(shard))
        full = numpy.empty(bounds[-1][1], dtype=host.dtype) if self.rank == 0 else None
        target = [full, counts, starts, _mpi_type(host.dtype)] if self.rank == 0 else None
        self.comm.Gatherv(host, target, root=0)
        return full

    def broadcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def abort(self, code: int = 1):
        """End every rank of the job now (they may be waiting in a collective)."""
        self.comm.Abort(code)


def _mpi_type(dtype):
    from mpi4py.util.dtlib import from_numpy_dtype

    return from_numpy_dtype(dtype)


def _to_host(array):
    """A NumPy array with the data of ``array`` (a copy only for CuPy arrays)."""
    return array if isinstance(array, numpy.ndarray) else array.get()


@contextmanager
def _exchangeable(buffer):
    """``buffer`` in a form MPI can read and write; changes made to it land in ``buffer``.

    NumPy arrays go as they are. A CuPy array goes as it is to a CUDA-aware MPI (after the
    GPU has finished writing it), or else as a host copy that is copied back afterwards.
    """
    if isinstance(buffer, numpy.ndarray):
        yield buffer
        return
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    if os.environ.get("TINYGPT_CUDA_AWARE_MPI") == "1":
        yield buffer
        return
    host = buffer.get()
    yield host
    buffer.set(host)
