"""Download a file once, safely: stream to a temporary file, check it, then rename.

A download that fails half-way or brings the wrong bytes leaves nothing behind at the
destination, so the next run tries again instead of reading a broken file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tinygpt.fileio import atomic_path

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tinygpt"


class DownloadError(RuntimeError):
    """A download failed or brought bytes other than the expected ones."""


def download_file(
    url: str,
    dest_path: str | os.PathLike,
    expected_sha256: str | None = None,
    expected_size: int | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest_path`` and return the path.

    The bytes go to a temporary file in the destination folder; only when the download is
    complete — as long as the server's Content-Length said, and matching ``expected_size`` and
    ``expected_sha256`` when given — is it renamed to ``dest_path``. Any failure raises
    DownloadError and leaves no file.
    """
    dest_path = Path(dest_path)
    with atomic_path(dest_path) as temporary, open(temporary, "wb") as out:
        size, sha256 = _stream(url, out, timeout)
        _check(url, size, sha256, expected_size, expected_sha256)
    return dest_path


def _stream(url: str, out, timeout: float) -> tuple[int, str]:
    """Copy the body at ``url`` into ``out``; return its size and SHA-256."""
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                size += len(block)
    except urllib.error.HTTPError as error:
        raise DownloadError(
            f"could not download {url}: HTTP {error.code} {error.reason}"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or repr(error)
        raise DownloadError(f"could not download {url}: {reason}") from error
    if announced is not None and int(announced) != size:
        raise DownloadError(
            f"download of {url} was cut short: got {size} bytes of {announced} announced"
        )
    return size, digest.hexdigest()


def _check(url, size, sha256, expected_size, expected_sha256) -> None:
    """Compare what was downloaded with what was expected."""
    if expected_size is not None and size != expected_size:
        raise DownloadError(f"{url} gave {size} bytes, expected {expected_size}")
    if expected_sha256 is not None and sha256 != expected_sha256.lower():
        raise DownloadError(
            f"{url} has SHA-256 {sha256}, expected {expected_sha256}: the file on the server "
            "changed or the download was corrupted"
        )


def fetch_data(
    url: str,
    data_arg: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None = None,
    expected_sha256: str | None = None,
) -> Path:
    """The data file to use: ``data_arg`` when the user gave one (e.g. ``--data PATH``),
    else ``url`` downloaded once into ``cache_dir`` (default ``~/.cache/tinygpt``)."""
    if data_arg is not None:
        path = Path(data_arg)
        if not path.is_file():
            raise FileNotFoundError(f"data file not found: {path}")
        return path
    folder = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    dest = folder / url.rstrip("/").rsplit("/", 1)[-1]
    if not dest.is_file():
        print(f"downloading {url} to {dest}", file=sys.stderr)
        download_file(url, dest, expected_sha256=expected_sha256)
    return dest
