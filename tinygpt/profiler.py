"""``tinygpt.profile()``: where the time goes, per op, forward and backward.

    with tinygpt.profile() as prof:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
    print(prof)            # a table, the most expensive op first
    prof.rows()            # the same numbers as OpStats records

How it measures, cheaply: ``tensor.py`` calls the recorder once per op it creates (in
``Tensor._make``) and once per node ``backward()`` processes; nothing else is wrapped, so with
no profiler active the cost is one ``is None`` check per op. Each call is charged the time
since the previous call (or since the block started): that is the op's own work plus the
Python that ran between it and the op before (input checks, reshapes of plain arrays, your
own code between ops). So the rows add up to the time spent inside the block, less the
stretch after the last op, and no time is counted twice. Ops are named as in the graph
(``matmul``, ``layer_norm``, a ``Function`` subclass's class name).

Bytes are the sizes of the arrays each op returns: the forward's output and the backward's
input gradients, which is what the op allocates (temporaries inside an op are not seen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

from tinygpt.tensor import set_profiler


@dataclasses.dataclass
class OpStats:
    """Calls, seconds and bytes allocated by one op, forward and backward."""

    op: str
    forward_calls: int = 0
    forward_seconds: float = 0.0
    forward_bytes: int = 0
    backward_calls: int = 0
    backward_seconds: float = 0.0
    backward_bytes: int = 0

    @property
    def total_seconds(self) -> float:
        return self.forward_seconds + self.backward_seconds


class Profile:
    """What one ``with tinygpt.profile()`` block recorded; ``str()`` is a table."""

    def __init__(self):
        self.stats: dict[str, OpStats] = {}
        self.wall_seconds = 0.0  # from entering the block to leaving it
        self._last = None

    def rows(self) -> list[OpStats]:
        """One record per op, the most time-consuming first."""
        return sorted(self.stats.values(), key=lambda s: s.total_seconds, reverse=True)

    @property
    def total_seconds(self) -> float:
        """The time charged to ops: the wall time less the stretch after the last op."""
        return sum(s.total_seconds for s in self.stats.values())

    # -- called by tensor.py ------------------------------------------------------------

    def _elapsed(self) -> float:
        """Seconds since the previous event; starts the next interval."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed

    def record_forward(self, op, data) -> None:
        stats = self.stats.get(op) or self.stats.setdefault(op, OpStats(op))
        stats.forward_calls += 1
        stats.forward_seconds += self._elapsed()
        stats.forward_bytes += getattr(data, "nbytes", 0)

    def record_backward(self, op, grads) -> None:
        stats = self.stats.get(op) or self.stats.setdefault(op, OpStats(op))
        stats.backward_calls += 1
        stats.backward_seconds += self._elapsed()
        stats.backward_bytes += sum(getattr(g, "nbytes", 0) for g in grads if g is not None)

    # -- the table ----------------------------------------------------------------------

    def __str__(self) -> str:
        header = ("op", "fwd calls", "fwd ms", "bwd calls", "bwd ms", "total ms", "%", "MB")
        total = self.total_seconds or 1.0
        lines = [[s.op, str(s.forward_calls), f"{s.forward_seconds * 1e3:.2f}",
                  str(s.backward_calls), f"{s.backward_seconds * 1e3:.2f}",
                  f"{s.total_seconds * 1e3:.2f}", f"{100 * s.total_seconds / total:.1f}",
                  f"{(s.forward_bytes + s.backward_bytes) / 1e6:.2f}"] for s in self.rows()]
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

        def fmt(row):  # the op name left-aligned, numbers right-aligned
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(row, widths)))

        footer = (f"{len(self.stats)} ops, {self.total_seconds * 1e3:.2f} ms of "
                  f"{self.wall_seconds * 1e3:.2f} ms wall time")
        return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines),
                          footer])


@contextlib.contextmanager
def profile():
    """Record every op created or backpropagated inside the block; yields the Profile."""
    prof = Profile()
    previous = set_profiler(prof)
    if previous is not None:
        set_profiler(previous)
        raise RuntimeError("tinygpt.profile() blocks cannot be nested")
    start = prof._last = time.perf_counter()
    try:
        yield prof
    finally:
        prof.wall_seconds = time.perf_counter() - start
        set_profiler(None)
