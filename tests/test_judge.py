"""The LLM judge against a small HTTP server started on 127.0.0.1 for each test: Ollama's
streamed JSON lines, the OpenAI chat API, a retry after a 500, unusable answers, and no
server at all."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tinygpt.cli import main
from tinygpt.finetune import judge, judge_client
from tinygpt.finetune.alpaca import format_input
from tinygpt.finetune.judge import parse_score, score_responses
from tinygpt.finetune.judge_client import JudgeError, query_model

ENTRY = {"instruction": "Name the capital of France.", "input": "",
         "output": "The capital of France is Paris.", "model_response": "Paris."}


class _LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``Handler``; ``url`` is its
    address, ``close()`` stops it."""

    def _serve(self, Handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeJudge(_LocalServer):
    """Answers POSTs with queued (status, content) replies, in Ollama or OpenAI style."""

    def __init__(self, replies=(), default=(200, "42")):
        self.replies, self.default = list(replies), default
        self.requests = []  # (path, parsed JSON body)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append((self.path, body, dict(self.headers)))
                status, content = owner.replies.pop(0) if owner.replies else owner.default
                if status != 200:
                    self._send(status, json.dumps({"error": content}).encode())
                elif self.path == "/api/chat":  # Ollama: one JSON object per line
                    pieces = [content[:1], content[1:]] if len(content) > 1 else [content]
                    lines = [json.dumps({"model": body["model"], "done": False,
                                         "message": {"role": "assistant", "content": p}})
                             for p in pieces]
                    lines.append(json.dumps({"model": body["model"], "done": True,
                                             "message": {"role": "assistant", "content": ""}}))
                    self._send(200, ("\n".join(lines) + "\n").encode(), "application/x-ndjson")
                elif self.path == "/v1/chat/completions":
                    reply = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": content}}]}
                    self._send(200, json.dumps(reply).encode())
                else:
                    self._send(404, b'{"error": "no such endpoint"}')

            def _send(self, status, data, kind="application/json"):
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self._serve(Handler)


@pytest.fixture
def fake_judge():
    servers = []

    def start(*args, **kwargs):
        servers.append(FakeJudge(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_ollama_api_streams_json_lines_with_the_books_prompt(fake_judge):
    server = fake_judge(default=(200, "85"))
    answer = query_model(judge.scoring_prompt(ENTRY), "llama3", server.url, "ollama")
    assert answer == "85"  # joined from the streamed pieces "8" and "5"
    path, body, _ = server.requests[0]
    assert path == "/api/chat" and body["model"] == "llama3"
    assert body["options"]["temperature"] == 0 and body["options"]["seed"] == 123
    assert body["messages"] == [{"role": "user", "content": (
        f"Given the input `{format_input(ENTRY)}` and correct output "
        "`The capital of France is Paris.`, score the model response `Paris.` on a scale "
        "from 0 to 100, where 100 is the best score. Respond with the integer number only.")}]


def test_openai_api_and_bearer_token(fake_judge):
    server = fake_judge(default=(200, " 72\n"))
    answer = query_model("prompt", "gpt-4o-mini", server.url, "openai", api_key="sk-test")
    assert answer == " 72\n" and parse_score(answer) == 72
    path, body, headers = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "gpt-4o-mini"
    assert body["messages"][0]["content"] == "prompt" and body["temperature"] == 0
    assert headers["Authorization"] == "Bearer sk-test"


def test_a_full_endpoint_url_is_used_as_given(fake_judge):
    server = fake_judge(default=(200, "60"))
    assert query_model("p", "m", server.url + "/v1/chat/completions", "openai") == "60"
    assert judge_client.endpoint("localhost:11434", "ollama") == "http://localhost:11434/api/chat"
    assert judge_client.endpoint("http://h:1/", "openai") == "http://h:1/v1/chat/completions"
    with pytest.raises(ValueError, match="unknown judge API"):
        judge_client.endpoint("http://h:1", "anthropic")


def test_retries_after_a_server_error(fake_judge):
    server = fake_judge(replies=[(500, "overloaded")], default=(200, "90"))
    start = time.perf_counter()
    assert query_model("p", "m", server.url, "ollama", retries=2, backoff=0.05) == "90"
    assert len(server.requests) == 2
    assert time.perf_counter() - start >= 0.05  # it waited before retrying


def test_retries_are_bounded(fake_judge):
    server = fake_judge(default=(503, "still loading"))
    with pytest.raises(JudgeError, match=r"failed 3 times.*HTTP 503.*still loading"):
        query_model("p", "m", server.url, "openai", retries=2, backoff=0.01)
    assert len(server.requests) == 3


def test_an_unknown_model_fails_at_once_with_the_servers_message(fake_judge):
    server = fake_judge(default=(404, "model 'llama9' not found, try pulling it first"))
    with pytest.raises(JudgeError, match=r"HTTP 404.*llama9' not found.*ollama pull llama9"):
        query_model("p", "llama9", server.url, "ollama", retries=3, backoff=10)
    assert len(server.requests) == 1


def test_no_server_gives_a_clear_error_quickly():
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    with pytest.raises(JudgeError) as info:
        query_model("p", "llama3", url, "ollama")  # default retries and backoff
    assert time.perf_counter() - start < 2.0
    message = str(info.value)
    assert f"127.0.0.1:{port}/api/chat" in message and "ollama serve" in message


def test_a_reply_in_the_wrong_format_is_a_clear_error(fake_judge):
    server = fake_judge(default=(200, "80"))
    with pytest.raises(JudgeError, match="not ollama-style chat JSON"):
        # an OpenAI-style endpoint read as Ollama
        query_model("p", "m", server.url + "/v1/chat/completions", "ollama")


@pytest.mark.parametrize("text, score", [
    ("85", 85), (" 85\n", 85), ("85.", 85), ("Score: 85", 85), ("85/100", 85),
    ("100", 100), ("0", 0), ("72.6", 73), ("I'd say 40 out of 100", 40),
    ("excellent", None), ("", None), ("150", None), ("-5", None), (None, None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_score_responses_skips_and_counts_unusable_answers(fake_judge):
    server = fake_judge(replies=[(200, "80"), (200, "I cannot rate this."), (200, "Score: 60")])
    entries = [ENTRY, {**ENTRY, "model_response": "London."}, {**ENTRY, "model_response": "?"},
               {**ENTRY, "model_response": ""}]
    logged = []
    result = score_responses(entries, model="m", url=server.url, api="ollama",
                             progress=False, log=logged.append)
    assert result.scores == [80, None, 60, 0]  # the empty response scores 0 unasked
    assert len(server.requests) == 3
    assert result.skipped == 1 and result.scored == [80, 60, 0]
    assert result.average == pytest.approx(140 / 3)
    assert "Number of scores: 3 of 4" in result.summary()
    assert "1 answer(s)" in result.summary() and "Average score: 46.67" in result.summary()
    assert logged == ["Could not convert score: 'I cannot rate this.'"]


def test_judge_command_writes_scores(fake_judge, tmp_path, capsys):
    server = fake_judge(default=(200, "70"))
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([ENTRY, ENTRY]))
    out = tmp_path / "scores.json"
    assert main(["judge", "--responses", str(responses), "--url", server.url,
                 "--api", "openai", "--judge-model", "m", "--out", str(out)]) == 0
    assert "Average score: 70.00" in capsys.readouterr().out
    assert [e["score"] for e in json.loads(out.read_text())] == [70, 70]


# ----------------------------------------------------------------------------- limits

class _RawServer(_LocalServer):
    """A server on 127.0.0.1 whose handler writes whatever ``reply(handler)`` writes."""

    def __init__(self, reply):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                reply(self)

            def log_message(self, *args):
                pass

        self._serve(Handler)


@pytest.fixture
def raw_server():
    servers = []

    def start(reply):
        servers.append(_RawServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _drip(handler, seconds=6.0):
    """Headers at once, then one byte of a valid answer every 0.1 s for ``seconds``."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    try:
        for _ in range(int(seconds / 0.1)):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.1)
    except OSError:  # the client gave up: what the test wants
        pass


def test_timeout_bounds_the_whole_request_against_a_dripping_server(raw_server):
    server = raw_server(_drip)
    start = time.perf_counter()
    with pytest.raises(JudgeError, match=r"failed 1 times.*within --timeout 0.5 s"):
        query_model("p", "m", server.url, "openai", retries=0, timeout=0.5)
    assert time.perf_counter() - start < 2.0  # a per-read timeout would wait 6 s


def test_a_reply_larger_than_the_limit_is_refused(raw_server):
    content = "x" * (2 << 20)  # a 2 MiB "answer"

    def huge(handler):
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            handler.wfile.write(data)
        except OSError:
            pass

    server = raw_server(huge)
    with pytest.raises(JudgeError, match="sent more than 1,048,576 bytes"):
        query_model("p", "m", server.url, "openai", retries=3)


@pytest.mark.parametrize("option, value", [("--retries", "-1"), ("--timeout", "0"),
                                           ("--limit", "-1")])
def test_judge_rejects_out_of_range_options(tmp_path, capsys, option, value):
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps([ENTRY]))
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "--responses", str(responses), "--url", "http://127.0.0.1:9",
              option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err
    for bad in (dict(retries=-1), dict(timeout=0)):
        with pytest.raises(ValueError, match="retries|timeout"):
            query_model("p", "m", "http://127.0.0.1:9", "ollama", **bad)


def test_scores_obtained_are_kept_when_a_later_entry_fails(fake_judge, tmp_path, capsys):
    entries = [ENTRY, {**ENTRY, "model_response": "London."}, {**ENTRY, "model_response": "?"}]
    responses = tmp_path / "responses.json"
    responses.write_text(json.dumps(entries))
    failing = fake_judge(replies=[(200, "80"), (404, "model 'm' not found")])
    command = ["judge", "--responses", str(responses), "--api", "openai", "--judge-model", "m"]
    assert main(command + ["--url", failing.url]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "the 1 scores obtained are kept in" in err
    out = tmp_path / "responses-scores.json"
    assert [e["score"] for e in json.loads(out.read_text())] == [80]
    working = fake_judge(default=(200, "30"))
    assert main(command + ["--url", working.url]) == 0
    assert len(working.requests) == 2  # only the entries not scored yet were asked for
    assert [e["score"] for e in json.loads(out.read_text())] == [80, 30, 30]
    assert "Average score: 46.67" in capsys.readouterr().out
