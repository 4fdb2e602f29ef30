"""``DataParallel``: what the training loop asks of the ranks, in four calls.

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


class FlatLayout:
    """Where each parameter sits in one flat vector of all of them (in the given order)."""

    def __init__(self, params):
        self.params = list(params)
        self.offsets, total = [], 0
        for p in self.params:
            self.offsets.append(total)
            total += p.size
        self.total = total
        self.dtype = self.params[0].dtype
        self._grads = None  # the flat gradient buffer, allocated on first use

    def spans(self):
        """(parameter, start, end) of each parameter in the flat vector."""
        for p, start in zip(self.params, self.offsets):
            yield p, start, start + p.size

    def gather_grads(self):
        """All gradients copied into one flat buffer (zeros for a parameter without one)."""
        if self._grads is None:
            self._grads = backend.xp().empty(self.total, dtype=self.dtype)
        for p, start, end in self.spans():
            if p.grad is None:
                self._grads[start:end] = 0
            else:
                self._grads[start:end] = p.grad.reshape(-1)
        return self._grads

    def scatter_grads(self, flat):
        """Make every ``p.grad`` a view of its span of ``flat`` (no copy)."""
        for p, start, end in self.spans():
            p.grad = flat[start:end].reshape(p.shape)

    def gather_params(self, flat):
        """Copy every parameter into its span of ``flat``."""
        for p, start, end in self.spans():
            flat[start:end] = p.data.reshape(-1)

    def scatter_params(self, flat):
        """Copy ``flat`` back into the parameters, in place (tied weights stay tied)."""
        for p, start, end in self.spans():
            p.data[...] = flat[start:end].reshape(p.shape)


class DataParallel:
    """Data-parallel training over the ranks of ``comm`` (a single process by default);
    ``shard_optimizer`` makes the training loop use ``ZeroAdamW`` (ZeRO stage 1)."""

    def __init__(self, comm: SingleProcess | None = None, shard_optimizer: bool = False):
        self.comm = comm if comm is not None else SingleProcess()
        self.shard_optimizer = shard_optimizer
        self._layout = None

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
        the same dropout mask. One process keeps its stream untouched, which is why runs
        with dropout are reproducible, but not equal, across different numbers of ranks.
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
        if self._layout is None:
            self._layout = FlatLayout(_params_of(optimizer))
        flat = self._layout.gather_grads()
        self.comm.sum_(flat)
        self._layout.scatter_grads(flat)


def _params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]
