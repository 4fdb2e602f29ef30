"""download_file and fetch_data against a real HTTP server on 127.0.0.1."""

import hashlib
import http.server
import os
import threading

import pytest

from tinygpt.download import DownloadError, download_file, fetch_data

BODY = b"I HAD always thought Jack Gisburn rather a cheap genius\n" * 100


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.requests.append(self.path)
        if self.path == "/truncated.txt":  # announce more bytes than are sent
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY) + 100))
            self.end_headers()
            self.wfile.write(BODY)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve the folder tmp_path/site; yields the base URL."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "the-verdict.txt").write_bytes(BODY)
    handler = lambda *args, **kwargs: _Handler(*args, directory=str(site), **kwargs)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    _Handler.requests.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_success_with_checks(server, tmp_path):
    dest = tmp_path / "out" / "verdict.txt"
    sha = hashlib.sha256(BODY).hexdigest()
    path = download_file(
        f"{server}/the-verdict.txt", dest, expected_sha256=sha, expected_size=len(BODY)
    )
    assert path == dest
    assert dest.read_bytes() == BODY
    assert os.listdir(dest.parent) == ["verdict.txt"]


def test_sha_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "out" / "verdict.txt"
    with pytest.raises(
        DownloadError, match=f"SHA-256 {hashlib.sha256(BODY).hexdigest()}, expected {'0' * 64}"
    ):
        download_file(f"{server}/the-verdict.txt", dest, expected_sha256="0" * 64)
    assert os.listdir(dest.parent) == []


def test_size_mismatch_leaves_no_file(server, tmp_path):
    dest = tmp_path / "out" / "verdict.txt"
    with pytest.raises(DownloadError, match=f"gave {len(BODY)} bytes, expected 10"):
        download_file(f"{server}/the-verdict.txt", dest, expected_size=10)
    assert os.listdir(dest.parent) == []


def test_404_is_a_clear_error(server, tmp_path):
    dest = tmp_path / "missing.txt"
    with pytest.raises(DownloadError, match="could not download .*/missing.txt: HTTP 404"):
        download_file(f"{server}/missing.txt", dest)
    assert os.listdir(tmp_path) == ["site"]


def test_truncated_download_is_an_error(server, tmp_path):
    with pytest.raises(DownloadError, match="truncated.txt"):
        download_file(f"{server}/truncated.txt", tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="could not download http://127.0.0.1:9/x"):
        download_file("http://127.0.0.1:9/x", tmp_path / "x", timeout=5)


def test_fetch_data_prefers_the_given_file(tmp_path):
    given = tmp_path / "mine.txt"
    given.write_text("mine")
    assert fetch_data("http://127.0.0.1:9/x.txt", str(given)) == given
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        fetch_data("http://127.0.0.1:9/x.txt", tmp_path / "nope.txt")


def test_fetch_data_downloads_once_into_the_cache(server, tmp_path):
    cache = tmp_path / "cache"
    url = f"{server}/the-verdict.txt"
    first = fetch_data(url, None, cache_dir=cache)
    second = fetch_data(url, None, cache_dir=cache)
    assert first == second == cache / "the-verdict.txt"
    assert first.read_bytes() == BODY
    assert _Handler.requests == ["/the-verdict.txt"]
