"""Run directories: one writer at a time, through a lock file holding the writer's pid.

Two ``tinygpt train --out runs/x`` started side by side would overwrite each other's
checkpoints in turn. Every command that writes into a run directory holds
``locked(directory)`` while it does: the first creates ``.tinygpt.lock`` with its process id
and host name, a second finds it and stops with a message naming the holder. A lock left by
a process that no longer runs (killed with SIGKILL, a crashed machine) is stale and is taken
over; a lock from another host cannot be checked, so it is respected.
"""

from __future__ import annotations

import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".tinygpt.lock"


class RunDirectoryBusy(RuntimeError):
    """Another process is writing into the run directory."""


@contextmanager
def locked(directory):
    """Hold the lock of ``directory`` (created if missing) inside the block.

    Re-entrant within one process: a block nested in another for the same directory (the
    ``train`` command around the training loop) neither takes nor releases the lock again.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    if _read_holder(lock) == (os.getpid(), socket.gethostname()):
        yield
        return
    _acquire(lock)
    try:
        yield
    finally:
        if _read_holder(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)


def _acquire(lock: Path) -> None:
    """Create ``lock`` with this process's id, replacing a stale one; raise if it is held."""
    for _ in range(2):  # the second try follows the removal of a stale lock
        if _create_with_content(lock, f"{os.getpid()}\n{socket.gethostname()}\n"):
            return
        holder = _read_holder(lock)
        if holder is None or (holder[1] == socket.gethostname() and not _running(holder[0])):
            # Stale (or empty: its writer died before writing). Two processes clearing the
            # same stale lock at the same instant could both proceed; that needs a kill and
            # two restarts within microseconds, which we accept.
            lock.unlink(missing_ok=True)
            continue
        pid, host = holder
        raise RunDirectoryBusy(
            f"{lock.parent} is in use by process {pid} on {host} (lock file {lock}): wait for "
            f"it to finish or use another directory; if that process is gone, delete {lock}")
    raise RunDirectoryBusy(f"could not take the lock {lock}: another process keeps taking it")


def _create_with_content(lock: Path, content: str) -> bool:
    """Atomically create ``lock`` holding ``content``; False if it exists already.

    The content goes to a temporary file first, which is then hard-linked under the lock's
    name: the link fails if the name exists, and a reader never sees a half-written lock."""
    fd, temporary = tempfile.mkstemp(dir=lock.parent, prefix=".lock-")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(content)
        os.link(temporary, lock)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temporary)


def _read_holder(lock: Path) -> tuple[int, str] | None:
    """(pid, host) written in ``lock``; None if there is no lock or it is unreadable."""
    try:
        pid, host = lock.read_text().split("\n")[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, but belongs to another user
        return True
    return True
