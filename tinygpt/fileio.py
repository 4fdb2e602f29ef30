"""Writing files atomically: a reader sees the old file or the complete new one, never half.

Everything tinygpt writes (weights, checkpoints, token files, downloads, plots, JSON) goes
through ``atomic_path``: the bytes go to a temporary file in the destination folder, which
is renamed over the destination only once complete. ``os.replace`` is atomic within one
file system, so an interrupted write (Ctrl-C, a full disk, a crash) leaves no partial file
and the previous version, if any, untouched.
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)  # mkstemp makes files private (0600); give the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
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
