"""``DataParallel``: what the training loop asks of the ranks, in a few calls.

    x, y, share = parallel.local_rows(x, y)    # this rank's rows of the global batch
    loss = batch_loss(model, x, y) * share      # weighted, so the ranks' losses add up to
    loss.backward()                             #   the loss of the whole batch
    parallel.step(model, optimizer, grad_clip)  # sum gradients over ranks, clip, update
    mean_loss = parallel.sum(loss.item())       # what one process would have printed

One process is the case N = 1 of the same code: ``local_rows`` returns the whole batch with
share 1 and ``step`` is ``clip_grad_norm`` + ``optimizer.step()``.

Why weighting and a *sum*: rank r holds b_r of the batch's B rows, and its loss is the mean
over them. (b_r / B) × (mean over rank r's rows), summed over ranks, is the mean over all B
rows — the one-process loss — and so is its gradient. B need not divide evenly by N.
"""

from __future__ import annotations

from pathlib import Path

from tinygpt import backend
from tinygpt.distributed.comm import SingleProcess, shard_bounds
from tinygpt.optim import clip_grad_norm


class DataParallel:
    """Data-parallel training over the ranks of ``comm`` (a single process by default);
    ``shard_optimizer`` makes the training loop use ``ZeroAdamW`` (ZeRO stage 1)."""

    def __init__(self, comm: SingleProcess | None = None, shard_optimizer: bool = False):
        self.comm = comm if comm is not None else SingleProcess()
        self.shard_optimizer = shard_optimizer

    @property
    def is_main(self) -> bool:
        """Rank 0: the one rank that writes checkpoints, plots and logs."""
        return self.comm.rank == 0

    def local_rows(self, x, y):
        """This rank's contiguous slice of the rows of batch (x, y), and its share of them.

        Rank r of N takes rows shard_bounds(B, N)[r], so the N ranks together see exactly
        the batch one process would; every rank needs at least one row.
        """
        rows = len(x)
        if rows < self.comm.size:
            raise ValueError(f"a batch of {rows} rows cannot be split over {self.comm.size} "
                             "processes: use a batch size of at least the number of processes")
        start, end = shard_bounds(rows, self.comm.size)[self.comm.rank]
        return x[start:end], y[start:end], (end - start) / rows

    def sum(self, value: float) -> float:
        """A number summed over ranks (each rank's share-weighted loss → the batch's loss)."""
        return self.comm.sum_scalars(value)[0]

    def any(self, flag: bool) -> bool:
        """True on every rank when true on one (a Ctrl-C that reached only some ranks)."""
        return self.comm.any(flag)

    def file_exists(self, path) -> bool:
        """Whether rank 0 sees ``path``; an error if this rank does not see the same."""
        exists = self.comm.broadcast(Path(path).is_file())
        if exists != Path(path).is_file():
            raise RuntimeError(f"rank {self.comm.rank} does not see {path} as rank 0 does: "
                               "the output directory must be on a file system every process "
                               "can read")
        return exists

    def separate_random_streams(self) -> None:
        """Give each rank its own random stream (dropout masks), derived from the current one.

        Ranks start from the same seed; without this, row i of every rank's slice would get
        the same dropout mask. A single process keeps its stream untouched, so with dropout
        runs on different numbers of ranks draw different masks: each run is reproducible,
        but they are not equal.
        """
        if self.comm.size > 1:
            base = int(backend.generator().integers(2**62))
            backend.manual_seed(base + self.comm.rank)

    def step(self, model, optimizer, grad_clip: float | None) -> None:
        """Sum the gradients over ranks, clip their global norm, and update the parameters.

        A ``ZeroAdamW`` optimizer does its own communication (reduce-scatter, all-gather);
        any other optimizer gets the summed gradient on every rank (one all-reduce) and
        runs as it would in one process.
        """
        if getattr(optimizer, "shards_state", False):
            optimizer.step(grad_clip)
            return
        if self.comm.size > 1:
            self._sum_gradients(optimizer)
        if grad_clip:
            clip_grad_norm(model.parameters(), grad_clip)
        optimizer.step()

    def _sum_gradients(self, optimizer):
        """One all-reduce over the optimizer's flat gradient buffer (every ``p.grad`` is a
        view of it, so the parameters see the sum at once)."""
        if optimizer.buffer is None:
            raise ValueError("data-parallel training sums the gradients in the optimizer's "
                             "flat buffer, which needs every parameter in one dtype on one "
                             "backend")
        self.comm.sum_(optimizer.buffer.full_grad())
