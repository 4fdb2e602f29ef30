"""Asking a judge LLM one question over HTTP (Ollama's or the OpenAI chat API), with the
standard library only: a deadline for the whole request, a size limit on the reply, and
bounded retries.

* ``ollama``: POST {url}/api/chat; Ollama streams its answer as JSON lines, each carrying a
  piece of ``message.content`` (the book's ``query_model``);
* ``openai``: POST {url}/v1/chat/completions, any OpenAI-compatible server (vLLM, llama.cpp's
  server, LM Studio, OpenAI itself with an API key); one JSON answer in
  ``choices[0].message.content``.

A ``url`` with no path gets the API's usual path appended; a full URL is used as given.

Failures: a refused connection (no server listening) or an unknown or unreachable host fails
at once with a ``JudgeError`` naming the URL and how to start Ollama; server errors (5xx,
429), timeouts and dropped connections are retried a bounded number of times with
exponential backoff; other HTTP errors (a 404 for an unknown model, say) fail at once with
the server's message.

``timeout`` bounds each attempt as a whole, from connecting to the last byte of the reply: a
timer shuts the socket down when it runs out, so a server that sends one byte a second
cannot hold the request open past it (a per-read socket timeout alone would wait forever).
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import threading
import time
import urllib.parse

OLLAMA_URL = "http://localhost:11434"
API_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
START_OLLAMA_HINT = (
    "Is the judge server running? For Ollama: install it from https://ollama.com, start it "
    "with `ollama serve` (in another terminal) and fetch a model with `ollama pull llama3`. "
    "For an OpenAI-compatible server pass --api openai and its URL."
)
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
MAX_REPLY_BYTES = 1 << 20  # a score is a few bytes; a megabyte means the wrong server


class JudgeError(RuntimeError):
    """The judge could not be asked: no server, a failing server, or a malformed reply."""


class _ReplyTooLarge(Exception):
    pass


def endpoint(url, api) -> str:
    """The URL to POST to: ``url`` itself, or with the API's path when it has none."""
    if api not in API_PATHS:
        raise ValueError(f"unknown judge API {api!r}; expected one of: {', '.join(API_PATHS)}")
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"judge URL {url!r} is not an http(s) URL like {OLLAMA_URL}")
    if parts.path in ("", "/"):
        parts = parts._replace(path=API_PATHS[api])
    return urllib.parse.urlunsplit(parts)


def _payload(prompt, model, api, seed, temperature) -> dict:
    messages = [{"role": "user", "content": prompt}]
    if api == "ollama":  # as the book: deterministic answers
        return {"model": model, "messages": messages,
                "options": {"seed": seed, "temperature": temperature, "num_ctx": 2048}}
    return {"model": model, "messages": messages, "seed": seed, "temperature": temperature}


def _post(target, body, headers, timeout, max_bytes) -> tuple[int, str, bytes]:
    """POST ``body`` to ``target`` -> (status, reason, reply bytes), all within ``timeout``
    seconds (TimeoutError otherwise) and at most ``max_bytes`` of reply (_ReplyTooLarge)."""
    parts = urllib.parse.urlsplit(target)
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    started = time.monotonic()
    connection.connect()  # bounded by the socket timeout
    sock = connection.sock  # kept: http.client forgets it once a closing reply arrives
    expired = threading.Event()

    def expire():  # wakes a read blocked on the socket: it returns or raises at once
        expired.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    timer = threading.Timer(max(timeout - (time.monotonic() - started), 0.0), expire)
    timer.start()
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = bytearray()
        while chunk := response.read1(65536):
            data += chunk
            if len(data) > max_bytes:
                raise _ReplyTooLarge()
        if expired.is_set():
            raise TimeoutError()
        return response.status, response.reason, bytes(data)
    except (OSError, http.client.HTTPException):
        if expired.is_set():
            raise TimeoutError() from None
        raise
    finally:
        timer.cancel()
        connection.close()


def _answer_text(data: bytes, api, url) -> str:
    """The text of the judge's reply: Ollama's JSON lines joined, or OpenAI's message."""
    try:
        text = data.decode("utf-8")
        if api == "ollama":
            pieces = []
            for line in text.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if "error" in item:
                    raise JudgeError(f"the judge at {url} answered with an error: "
                                     f"{item['error']}")
                pieces.append(item["message"]["content"])
            return "".join(pieces)
        return json.loads(text)["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
        raise JudgeError(f"the judge at {url} sent a reply that is not {api}-style chat JSON "
                         f"({type(err).__name__}: {err}); is --api right?") from None


def _error_detail(data: bytes) -> str:
    """The server's error message from an error reply's body, if it has one."""
    text = data.decode("utf-8", "replace").strip()
    try:
        item = json.loads(text)
        if isinstance(item, dict) and "error" in item:
            error = item["error"]
            return error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except json.JSONDecodeError:
        pass
    return text[:200]


_UNREACHABLE = (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EHOSTUNREACH)


def _is_unreachable(err) -> bool:
    """Nothing to retry: the connection was refused, or the host is unknown or unreachable."""
    return isinstance(err, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(err, OSError) and err.errno in _UNREACHABLE)


def check_request_limits(retries, timeout) -> None:
    """Reject retry counts below 0 and timeouts that are not positive."""
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")


def query_model(prompt, model="llama3", url=OLLAMA_URL, api="ollama", *, retries=3,
                backoff=1.0, timeout=120.0, api_key=None, seed=123, temperature=0.0,
                max_bytes=MAX_REPLY_BYTES) -> str:
    """Ask the judge ``model`` one question; returns its answer text.

    Each attempt may take ``timeout`` seconds in all. Retries up to ``retries`` times
    (waiting ``backoff``, then 2x, 4x, ...) on server errors, timeouts and dropped
    connections; raises ``JudgeError`` when no server listens at ``url`` (at once), when the
    reply is larger than ``max_bytes``, or when the retries run out.
    """
    check_request_limits(retries, timeout)
    target = endpoint(url, api)
    body = json.dumps(_payload(prompt, model, api, seed, temperature)).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            status, reason, data = _post(target, body, headers, timeout, max_bytes)
        except _ReplyTooLarge:
            raise JudgeError(f"the judge at {target} sent more than {max_bytes:,} bytes; a "
                             "score takes a few. Is --url right?") from None
        except TimeoutError:
            last = f"no complete answer within --timeout {timeout:g} s"
            continue
        except (OSError, http.client.HTTPException) as err:
            if _is_unreachable(err):
                raise JudgeError(f"no judge server answers at {target} ({err}). "
                                 + START_OLLAMA_HINT) from None
            last = f"{type(err).__name__}: {err}"
            continue
        if status == 200:
            return _answer_text(data, api, target)
        detail = _error_detail(data)
        last = f"HTTP {status} {reason}{': ' + detail if detail else ''}"
        if status not in RETRY_STATUS:
            raise JudgeError(f"the judge at {target} refused the request ({last}); check the "
                             f"model name {model!r} (for Ollama: `ollama pull {model}`) and "
                             "--api")
    raise JudgeError(f"the judge at {target} failed {retries + 1} times; last error: {last}. "
                     + START_OLLAMA_HINT)
