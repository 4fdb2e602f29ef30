"""Score instruction responses with a larger LLM as the judge (the book's section 7.8).

Each test entry holds the instruction, the correct ``output`` and the fine-tuned model's
``model_response``. The judge (e.g. Llama 3 served by Ollama) gets the book's prompt

    Given the input `{format_input(entry)}` and correct output `{output}`, score the model
    response `{model_response}` on a scale from 0 to 100, where 100 is the best score.
    Respond with the integer number only.

and its answer is parsed into an integer. Two HTTP APIs are spoken, with the standard
library only (urllib):

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

Unparseable answers: like the book, an answer with no number from 0 to 100 in it is skipped
(not scored as 0) and counted; ``JudgeResult`` reports the average over the scored entries
and how many were skipped. An empty model response scores 0 without asking the judge.
"""

from __future__ import annotations

import errno
import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from tinygpt.finetune.instruct import format_input

OLLAMA_URL = "http://localhost:11434"
API_PATHS = {"ollama": "/api/chat", "openai": "/v1/chat/completions"}
START_OLLAMA_HINT = (
    "Is the judge server running? For Ollama: install it from https://ollama.com, start it "
    "with `ollama serve` (in another terminal) and fetch a model with `ollama pull llama3`. "
    "For an OpenAI-compatible server pass --api openai and its URL."
)
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """The judge could not be asked: no server, a failing server, or a malformed reply."""


def scoring_prompt(entry, key="model_response") -> str:
    """The book's scoring prompt for one entry."""
    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry[key]}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


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


def _read_answer(response, api, url) -> str:
    """The text of the judge's reply: Ollama's JSON lines joined, or OpenAI's message."""
    try:
        if api == "ollama":
            pieces = []
            while True:
                line = response.readline().decode("utf-8")
                if not line:
                    break
                if not line.strip():
                    continue
                data = json.loads(line)
                if "error" in data:
                    raise JudgeError(f"the judge at {url} answered with an error: "
                                     f"{data['error']}")
                pieces.append(data["message"]["content"])
            return "".join(pieces)
        data = json.loads(response.read().decode("utf-8"))
        return data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError) as err:
        raise JudgeError(f"the judge at {url} sent a reply that is not {api}-style chat JSON "
                         f"({type(err).__name__}: {err}); is --api right?") from None


_UNREACHABLE = (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EHOSTUNREACH)


def _is_unreachable(err) -> bool:
    """Nothing to retry: the connection was refused, or the host is unknown or unreachable."""
    reason = getattr(err, "reason", err)
    return isinstance(reason, (ConnectionRefusedError, socket.gaierror)) or (
        isinstance(reason, OSError) and reason.errno in _UNREACHABLE)


def query_model(prompt, model="llama3", url=OLLAMA_URL, api="ollama", *, retries=3,
                backoff=1.0, timeout=120.0, api_key=None, seed=123, temperature=0.0) -> str:
    """Ask the judge ``model`` one question; returns its answer text.

    Retries up to ``retries`` times (waiting ``backoff``, then 2x, 4x, ...) on server errors,
    timeouts and dropped connections; raises ``JudgeError`` when no server listens at
    ``url`` (at once) or when the retries run out.
    """
    target = endpoint(url, api)
    body = json.dumps(_payload(prompt, model, api, seed, temperature)).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    last = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        request = urllib.request.Request(target, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return _read_answer(response, api, target)
        except urllib.error.HTTPError as err:
            detail = _error_body(err)
            last = f"HTTP {err.code} {err.reason}{': ' + detail if detail else ''}"
            if err.code not in RETRY_STATUS:
                raise JudgeError(f"the judge at {target} refused the request ({last}); check "
                                 f"the model name {model!r} (for Ollama: `ollama pull "
                                 f"{model}`) and --api") from None
        except urllib.error.URLError as err:
            if _is_unreachable(err):
                raise JudgeError(f"no judge server answers at {target} ({err.reason}). "
                                 + START_OLLAMA_HINT) from None
            last = f"{type(err.reason).__name__}: {err.reason}"
        except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
            last = f"{type(err).__name__}: {err}"
    raise JudgeError(f"the judge at {target} failed {retries + 1} times; last error: {last}. "
                     + START_OLLAMA_HINT)


def _error_body(err) -> str:
    try:
        text = err.read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - the body is only decoration for the message
        return ""
    try:
        data = json.loads(text)
        if isinstance(data, dict) and "error" in data:
            error = data["error"]
            return error.get("message", str(error)) if isinstance(error, dict) else str(error)
    except json.JSONDecodeError:
        pass
    return text[:200]


_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


def parse_score(text) -> int | None:
    """The score in a judge's answer: its first number if that lies in [0, 100] (rounded),
    so "85", " 85.\\n", "Score: 85" and "85/100" all give 85; None when there is none."""
    if not isinstance(text, str):
        return None
    match = _NUMBER.search(text)
    if match is None:
        return None
    value = float(match.group())
    if not 0 <= value <= 100:
        return None
    return int(round(value))


@dataclass
class JudgeResult:
    """Scores per entry (None where the answer could not be parsed) and their summary."""

    scores: list = field(default_factory=list)
    answers: list = field(default_factory=list)

    @property
    def scored(self) -> list:
        return [s for s in self.scores if s is not None]

    @property
    def skipped(self) -> int:
        return sum(s is None for s in self.scores)

    @property
    def average(self) -> float | None:
        scored = self.scored
        return sum(scored) / len(scored) if scored else None

    def summary(self) -> str:
        text = f"Number of scores: {len(self.scored)} of {len(self.scores)}"
        if self.skipped:
            text += f" ({self.skipped} answer(s) held no score from 0 to 100 and were skipped)"
        avg = self.average
        return text + (f"\nAverage score: {avg:.2f}" if avg is not None
                       else "\nAverage score: none (no answer could be parsed)")


def score_responses(entries, model="llama3", url=OLLAMA_URL, api="ollama",
                    key="model_response", progress=True, log=print, **query_args) -> JudgeResult:
    """Ask the judge to score every entry's ``key`` against its ``output`` (0-100)."""
    from tqdm.auto import tqdm

    result = JudgeResult()
    for i, entry in enumerate(tqdm(entries, desc="Scoring entries", disable=not progress,
                                   leave=False)):
        for name in ("instruction", "output", key):
            if not isinstance(entry.get(name), str):
                raise ValueError(f"entry {i} has no text field {name!r} (responses files "
                                 "hold instruction, input, output and model_response)")
        if entry[key] == "":
            result.scores.append(0)
            result.answers.append("")
            continue
        answer = query_model(scoring_prompt(entry, key), model, url, api, **query_args)
        score = parse_score(answer)
        if score is None and log is not None:
            log(f"Could not convert score: {answer!r}")
        result.scores.append(score)
        result.answers.append(answer)
    return result


# ----------------------------------------------------------------------------- command line

def cmd_judge(args):
    import os

    from tinygpt.finetune.instruct import read_json, save_json

    entries = read_json(args.responses, "responses file")
    if not isinstance(entries, list):
        raise ValueError(f"{args.responses}: expected a JSON list of entries")
    if args.limit is not None:
        entries = entries[:args.limit]
    api_key = (args.api_key or os.environ.get("OPENAI_API_KEY")) if args.api == "openai" else None
    result = score_responses(entries, model=args.judge_model, url=args.url, api=args.api,
                             key=args.key, retries=args.retries, timeout=args.timeout,
                             api_key=api_key)
    print(result.summary())
    if args.out:
        scored = [{**e, "score": s, "judge_answer": a}
                  for e, s, a in zip(entries, result.scores, result.answers)]
        print(f"scores: {save_json(scored, args.out)}")
    if result.average is None:
        raise RuntimeError("the judge gave no usable score")


def add_judge(sub):
    p = sub.add_parser(
        "judge", help="score model responses 0-100 with an LLM judge (Ollama or OpenAI API)",
        description="Ask a judge LLM to score each entry's model_response against its correct "
                    "output, with the book's prompt, and print the average score.")
    p.add_argument("--responses", required=True,
                   help="JSON list of entries with instruction, input, output and "
                        "model_response (as written by `tinygpt finetune-instruct`)")
    p.add_argument("--url", default=OLLAMA_URL,
                   help="the judge server: a base URL (the API's path is added) or a full "
                        f"endpoint URL (default {OLLAMA_URL}, Ollama's)")
    p.add_argument("--api", choices=sorted(API_PATHS), default="ollama",
                   help="ollama: POST /api/chat, streamed JSON lines; openai: POST "
                        "/v1/chat/completions (default ollama)")
    p.add_argument("--judge-model", default="llama3",
                   help="the model name the server knows (default llama3)")
    p.add_argument("--key", default="model_response",
                   help="the entry field holding the response to score (default "
                        "model_response)")
    p.add_argument("--api-key", default=None,
                   help="bearer token for an OpenAI-compatible server (default: the "
                        "OPENAI_API_KEY environment variable, if set)")
    p.add_argument("--retries", type=int, default=3,
                   help="retries per request after server errors or timeouts (default 3)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds to wait for one answer (default 120)")
    p.add_argument("--limit", type=int, default=None, help="score only the first N entries")
    p.add_argument("--out", default=None,
                   help="also write the entries with their score and the judge's answer to "
                        "this JSON file")
    p.set_defaults(func=cmd_judge)
    return p
