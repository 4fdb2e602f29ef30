"""Writing files atomically and durably: a reader sees the old file or the complete new one.

Everything tinygpt writes (weights, checkpoints, token files, downloads, plots, JSON) goes
through ``atomic_path``: the bytes go to a temporary file in the destination folder, which
is renamed over the destination only once complete. ``os.replace`` is atomic within one
file system, so an interrupted write (Ctrl-C, a full disk, a crash) leaves no partial file
and the previous version, if any, untouched. Before the rename the file's bytes are flushed
to disk (``fsync``), and after it the folder's entry, so a power cut cannot leave a renamed
but empty file either.

A process killed mid-write (SIGKILL) cannot delete its temporary file. Temporary names carry
the writer's process id, ``.NAME.PID.RANDOM.tmp``, and the next write into the same folder
removes those whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds,
    delete it if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)  # mkstemp makes files private (0600); give the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)``, then move tmp_path to ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _fsync(path) -> None:
    """Flush a file's (or a folder's) contents to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    try:
        fd = os.open(path, flags)
    except OSError:  # e.g. folders cannot be opened on Windows; the rename still happened
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory) -> list[Path]:
    """Delete the temporary files in ``directory`` left by writers that were killed (their
    process id no longer runs); returns what was deleted."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        parts = tmp.name.split(".")  # "", NAME..., PID, RANDOM, "tmp"
        if len(parts) >= 5 and parts[-3].isdigit() and not _process_alive(int(parts[-3])):
            with contextlib.suppress(FileNotFoundError):  # another writer got there first
                tmp.unlink()
                removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, but belongs to another user
        return True
    return True
