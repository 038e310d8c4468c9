"""Answer shapes of real OpenAI-compatible servers, served by a small local server (not the simulator), through
the real CLI with `endpoint.kind: openai` over both transports: the row each shape becomes.

Vertex's own shapes (tests/seeds.py and /work/shared/vertex-notes.md: error bodies as a list, choices
without `message`, usage in the last content chunk) sit next to what vLLM, LiteLLM and OpenAI send
(`reasoning_content`, usage in a final `choices: []` chunk, SSE comments and `\\r\\n` lines, `event: error`,
Retry-After as an HTTP date). Each row of the one input names the shape the server answers it with, so a
whole matrix costs one CLI run per transport and mode.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.conftest import base_env, read_output, run_cli, write_rows

TRANSPORTS = ["direct", "openai"]
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
VERTEX_USAGE = {**USAGE, "extra_properties": {"google": {"traffic_type": "ON_DEMAND"}}}
SSE = {"Content-Type": "text/event-stream"}
JSON = {"Content-Type": "application/json"}

Reply = tuple[int, dict[str, str], bytes]


def answer(message: dict[str, Any] | None = None, finish: str = "stop", **fields: Any) -> bytes:
    """A chat.completion body, Vertex's usage unless `usage` is given (None leaves it out)."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    choice["message"] = message or {"role": "assistant", "content": "hello"}
    body: dict[str, Any] = {"id": "r1", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]}
    body["usage"] = VERTEX_USAGE
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def chunk(delta: dict[str, Any] | None, finish: str | None = None, *, index: int = 0, **fields: Any) -> dict[str, Any]:
    """A chat.completion.chunk with one choice (or the `choices` given)."""
    body = {"id": "r1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**body, "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **fields}


def events(*chunks: object, done: bool = True, end: str = "\n", prefix: str = "data: ") -> bytes:
    """An event stream of `data:` lines, each a JSON chunk (or text as is), then `[DONE]` unless told."""
    lines = [f"{prefix}{c if isinstance(c, str) else json.dumps(c)}{end}{end}" for c in chunks]
    return ("".join(lines) + (f"{prefix}[DONE]{end}{end}" if done else "")).encode()


def error_body(code: int, status: str, listed: bool, **extra: Any) -> bytes:
    """Google's error body: a JSON list holding one {"error"} (its OpenAI-compatible layers) or the object."""
    error = {"error": {"code": code, "message": f"said {code}", "status": status, **extra}}
    return json.dumps([error] if listed else error).encode()


def retry_at(seconds: float) -> Callable[[], Reply]:
    """A 429 whose Retry-After is an HTTP date `seconds` from when it is sent."""

    def reply() -> Reply:
        when = email.utils.formatdate(time.time() + seconds, usegmt=True)
        return 429, {**JSON, "Retry-After": when}, error_body(429, "RESOURCE_EXHAUSTED", True)

    return reply


PLAIN: dict[str, Reply | Callable[[], Reply]] = {
    "vertex-image": (  # the seeds' image generation answer
        200,
        JSON,
        answer(
            {
                "role": "assistant",
                "content": None,
                "audio": {"data": "aGVsbG8=", "extra_content": {"google": {"mime_type": "image/png"}}},
                "extra_content": {"google": {"thought_signature": "sig"}},
            }
        ),
    ),
    "no-message": (
        200,
        JSON,
        b'{"choices":[{"index":0,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"total_tokens":12}}',
    ),
    "no-usage": (200, JSON, answer(usage=None)),
    "tool-calls": (
        200,
        JSON,
        answer(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "tool_calls",
        ),
    ),
    "reasoning-content": (200, JSON, answer({"role": "assistant", "content": "42", "reasoning_content": "because"})),
    "reasoning": (200, JSON, answer({"role": "assistant", "content": "42", "reasoning": "because"})),
    "content-parts": (
        200,
        JSON,
        answer({"role": "assistant", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]}),
    ),
    "arguments-object": (  # Ollama-style: the arguments as an object, not JSON text
        200,
        JSON,
        answer(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
            },
            "tool_calls",
        ),
    ),
    "text-plain": (200, {"Content-Type": "text/plain"}, answer()),
    "gzip": (200, {**JSON, "Content-Encoding": "gzip"}, gzip.compress(answer())),
    "length": (200, JSON, answer(finish="length")),
    "content-filter": (200, JSON, answer({"role": "assistant", "content": None}, "content_filter")),
    "empty-stop": (200, JSON, answer({"role": "assistant", "content": ""})),
    "null-stop": (200, JSON, answer({"role": "assistant", "content": None})),
    "safety": (200, JSON, answer({"role": "assistant", "content": ""}, "SAFETY")),
    "html-200": (200, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"),
    "error-200": (200, JSON, error_body(500, "INTERNAL", True)),
    "400-list": (400, JSON, error_body(400, "INVALID_ARGUMENT", True)),
    "400-object": (400, JSON, error_body(400, "INVALID_ARGUMENT", False)),
    "400-html": (400, {"Content-Type": "text/html"}, b"<html>bad request</html>"),
    "403-list": (403, JSON, error_body(403, "PERMISSION_DENIED", True)),
    "404-object": (404, JSON, error_body(404, "NOT_FOUND", False)),
    "429-openai": (
        429,
        JSON,
        b'{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}',
    ),
    "500-object": (500, JSON, error_body(500, "INTERNAL", False)),
    "503-list": (503, JSON, error_body(503, "UNAVAILABLE", True)),
    "retry-after-seconds": (429, {**JSON, "Retry-After": "2"}, error_body(429, "RESOURCE_EXHAUSTED", False)),
    "retry-after-date": retry_at(3),
    "retry-info": (
        429,
        JSON,
        error_body(
            429,
            "RESOURCE_EXHAUSTED",
            True,
            details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}],
        ),
    ),
}

HELLO = [
    chunk({"role": "assistant", "content": "hel"}),
    chunk({"role": "assistant", "content": "lo"}, "stop", usage=USAGE),
]
STREAMED: dict[str, Reply | Callable[[], Reply]] = {
    "vertex-usage-last": (200, SSE, events(*HELLO)),
    "openai-usage-apart": (
        200,
        SSE,
        events(
            chunk({"content": "hel"}), chunk({"content": "lo"}, "stop"), {**chunk(None), "choices": [], "usage": USAGE}
        ),
    ),
    "crlf": (200, SSE, events(*HELLO, end="\r\n")),
    "comments": (  # comments, a lone retry:, an id: and a blank line more: no event without data: lines
        200,
        SSE,
        b": ping\n\nretry: 3000\n\n"
        + events(HELLO[0], done=False)
        + b": keep-alive\nid: 7\n"
        + events(HELLO[1], done=False)
        + b"\n"
        + events(),
    ),
    "no-space": (200, SSE, events(*HELLO, prefix="data:")),
    "no-done": (200, SSE, events(*HELLO, done=False)),
    "no-finish": (200, SSE, events(chunk({"content": "hel"}), chunk({"content": "lo"}))),
    "event-error": (
        200,
        SSE,
        events(HELLO[0], done=False) + b"event: error\ndata: " + error_body(503, "UNAVAILABLE", False) + b"\n\n",
    ),
    "event-error-bare": (
        200,
        SSE,
        events(HELLO[0], done=False) + b'event: error\ndata: {"message":"overloaded","code":503}\n\n',
    ),
    "reasoning-content": (
        200,
        SSE,
        events(
            chunk({"reasoning_content": "be"}),
            chunk({"reasoning_content": "cause"}),
            chunk({"content": "42"}, "stop", usage=USAGE),
        ),
    ),
    "openai-tool-calls": (  # OpenAI names a call in its first piece only, then by index
        200,
        SSE,
        events(
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "a", "type": "function", "function": {"name": "f", "arguments": ""}}
                    ]
                }
            ),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":1}'}}]}),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"y":2}'}}]}, "tool_calls", usage=USAGE),
        ),
    ),
    "content-filter": (200, SSE, events(chunk({"content": ""}, "content_filter", usage=USAGE))),
    "empty-stop": (200, SSE, events(chunk({"role": "assistant"}), chunk({"content": ""}, "stop", usage=USAGE))),
    "length": (200, SSE, events(chunk({"content": "hel"}, "length", usage=USAGE))),
    "json-as-text-plain": (200, {"Content-Type": "text/plain"}, answer()),
    "events-as-text-plain": (200, {"Content-Type": "text/plain"}, events(*HELLO)),
    "html-200": (200, {"Content-Type": "text/html"}, b"<html><body>502 Bad Gateway</body></html>"),
    "gzip": (200, {**SSE, "Content-Encoding": "gzip"}, gzip.compress(events(*HELLO))),
}


@dataclass
class Server:
    """A local OpenAI-compatible server answering each row with the shape its prompt names; it records
    every request body, its Authorization header, and when each shape was asked."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    asked: dict[str, list[float]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization", ""))
        content = body["messages"][-1]["content"]
        shape = content if isinstance(content, str) else content[0]["text"]  # the text part before any media
        self.asked.setdefault(shape, []).append(time.monotonic())
        reply = (STREAMED if body.get("stream") else PLAIN)[shape]
        status, headers, raw = reply() if callable(reply) else reply
        return web.Response(status=status, headers=headers, body=raw)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """The server on a loopback port, in its own thread and loop."""
    state = Server()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.handle)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/v1"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def run_shapes(
    server: Server, tmp_path: Path, shapes: list[str], transport: str, stream: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """One `batchrun run` over a row per shape, two attempts a row; the saved rows by shape, and the summary
    (the last JSON line on stderr, which is not a terminal here)."""
    write_rows(tmp_path / "input.jsonl", [{"id": s, "text": s} for s in shapes])
    spec = {
        "name": "wire-shapes",
        "input": {"path": "input.jsonl", "id_column": "id"},
        "endpoint": {"kind": "openai", "base_url": server.url, "api_key_env": "WIRE_KEY", "transport": transport},
        "model": "some-model",
        "request": {"prompt": "{text}", "params": {"stream": True} if stream else {}},
        "limits": {"concurrency": 8},
        "retry": {"max_attempts": 2, "timeout_s": 20},
        "output": {"path": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    done = run_cli(["run", str(tmp_path / "job.yaml")], env={**base_env(), "WIRE_KEY": "sk-local"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    return {row["id"]: row for row in read_output(tmp_path / "out").to_dicts()}, summary


def fields(row: dict[str, Any], *names: str) -> dict[str, Any]:
    """The named columns of a row."""
    return {name: row[name] for name in names}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_plain_answer_shapes_become_the_rows_they_are(server: Server, tmp_path: Path, transport: str) -> None:
    """Every non-streamed shape: whole answers are ok rows with what they hold, the rest (an empty answer
    among them) error rows saying why."""
    rows, summary = run_shapes(server, tmp_path, list(PLAIN), transport, stream=False)

    image = rows["vertex-image"]
    assert image["status"] == "ok" and image["media"] == b"hello" and image["media_mime_type"] == "image/png"
    assert json.loads(image["extra_content"]) == {"google": {"thought_signature": "sig"}}
    assert image["traffic_type"] == "ON_DEMAND" and image["total_tokens"] == 8
    assert fields(rows["no-message"], "status", "content", "finish_reason", "completion_tokens", "total_tokens") == {
        "status": "ok",
        "content": None,
        "finish_reason": "length",
        "completion_tokens": None,
        "total_tokens": 12,
    }
    assert fields(rows["no-usage"], "status", "content", "prompt_tokens", "traffic_type") == {
        "status": "ok",
        "content": "hello",
        "prompt_tokens": None,
        "traffic_type": None,
    }
    tools = rows["tool-calls"]
    assert tools["status"] == "ok" and tools["content"] is None and tools["finish_reason"] == "tool_calls"
    assert json.loads(tools["tool_calls"]) == [{"id": "c1", "name": "f", "arguments": "{}"}]
    for shape in ("reasoning-content", "reasoning"):  # vLLM / DeepSeek / LiteLLM put thoughts beside the answer
        assert fields(rows[shape], "status", "content", "reasoning") == {
            "status": "ok",
            "content": "42",
            "reasoning": "because",
        }
    assert json.loads(rows["arguments-object"]["tool_calls"]) == [{"id": "c2", "name": "f", "arguments": '{"x": 1}'}]
    for shape in ("text-plain", "gzip", "content-parts"):
        assert fields(rows[shape], "status", "content", "total_tokens") == {
            "status": "ok",
            "content": "hello",
            "total_tokens": 8,
        }
    # cut off at max_tokens: the answer the endpoint gave, its finish_reason saying so, counted in the summary
    assert fields(rows["length"], "status", "content", "finish_reason") == {
        "status": "ok",
        "content": "hello",
        "finish_reason": "length",
    }
    assert summary["ok_cut_off"] == 2 and "2 ok rows hit max_tokens" in summary["message"]
    for shape, reason in (("content-filter", "content_filter"), ("safety", "SAFETY")):  # withheld: not an answer
        row = rows[shape]
        assert row["status"] == "error" and row["error_type"] == "content_filter" and row["attempts"] == 1, row
        assert row["finish_reason"] == reason and reason in row["error_message"] and row["total_tokens"] == 8
    for shape in ("empty-stop", "null-stop"):  # finished with nothing in it: asked again, then an error row
        assert fields(rows[shape], "status", "error_type", "finish_reason", "attempts", "total_tokens") == {
            "status": "error",
            "error_type": "empty_answer",
            "finish_reason": "stop",
            "attempts": 2,
            "total_tokens": 8,
        }, shape
        assert "the answer is empty" in rows[shape]["error_message"]
    assert fields(rows["html-200"], "status", "error_type", "attempts") == {
        "status": "error",
        "error_type": "malformed_response",
        "attempts": 2,
    }
    assert "INTERNAL: said 500" in rows["error-200"]["error_message"]
    for shape, status, kind, attempts in (
        ("400-list", 400, "http", 1),
        ("400-object", 400, "http", 1),
        ("400-html", 400, "http", 1),
        ("403-list", 403, "http", 1),
        ("404-object", 404, "http", 1),
        ("429-openai", 429, "rate_limited", 2),
        ("500-object", 500, "transient", 2),
        ("503-list", 503, "transient", 2),
    ):
        row = rows[shape]
        assert (row["status"], row["http_status"], row["error_type"], row["attempts"]) == (
            "error",
            status,
            kind,
            attempts,
        )
    assert (
        rows["400-list"]["error_message"]
        == rows["400-object"]["error_message"]
        == "HTTP 400: INVALID_ARGUMENT: said 400"
    )
    assert rows["400-html"]["error_message"] == "HTTP 400: <html>bad request</html>"
    assert rows["429-openai"]["error_message"] == "HTTP 429: Rate limit reached"
    for shape, delay in (("retry-after-seconds", 2), ("retry-after-date", 2), ("retry-info", 2)):
        first, second = server.asked[shape][-2:]
        assert second - first >= delay, f"{shape}: the second attempt came {second - first:.2f} s after the first"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_streamed_answer_shapes_become_the_rows_they_are(server: Server, tmp_path: Path, transport: str) -> None:
    """Every streamed shape: usage wherever it comes, SSE as servers write it, and cut or broken streams retried."""
    rows, summary = run_shapes(server, tmp_path, list(STREAMED), transport, stream=True)

    hello = {"status": "ok", "content": "hello", "finish_reason": "stop", "total_tokens": 8}
    for shape in (
        "vertex-usage-last",
        "openai-usage-apart",
        "crlf",
        "comments",
        "no-space",
        "json-as-text-plain",
        "events-as-text-plain",
        "gzip",
    ):
        assert fields(rows[shape], *hello) == hello, shape
    # no [DONE] but a finish_reason: whole, as the openai SDK also takes it; no finish_reason: cut
    assert fields(rows["no-done"], *hello) == hello
    assert fields(rows["no-finish"], "status", "error_type", "attempts") == {
        "status": "error",
        "error_type": "stream_cut",
        "attempts": 2,
    }
    for shape in ("event-error", "event-error-bare"):
        row = rows[shape]
        assert (row["status"], row["error_type"], row["http_status"], row["attempts"]) == (
            "error",
            "transient",
            503,
            2,
        ), row
    assert "overloaded" in rows["event-error-bare"]["error_message"]
    assert fields(rows["reasoning-content"], "status", "content", "reasoning") == {
        "status": "ok",
        "content": "42",
        "reasoning": "because",
    }
    calls = rows["openai-tool-calls"]
    assert calls["status"] == "ok" and json.loads(calls["tool_calls"]) == [
        {"id": "a", "name": "f", "arguments": '{"x":1}'},
        {"id": "b", "name": "g", "arguments": '{"y":2}'},
    ]
    assert fields(rows["content-filter"], "status", "error_type", "finish_reason", "attempts") == {
        "status": "error",
        "error_type": "content_filter",
        "finish_reason": "content_filter",
        "attempts": 1,
    }
    assert fields(rows["length"], "status", "content", "finish_reason") == {
        "status": "ok",
        "content": "hel",
        "finish_reason": "length",
    }
    assert fields(rows["empty-stop"], "status", "error_type", "attempts") == {
        "status": "error",
        "error_type": "empty_answer",
        "attempts": 2,
    }
    assert summary["ok_cut_off"] == 1
    html = rows["html-200"]
    assert (
        html["status"] == "error"
        and html["error_type"] == "malformed_response"
        and "text/html" in html["error_message"]
    )
    sent = [b for b in server.bodies if b["messages"][-1]["content"] == "crlf"][-1]
    assert sent["stream_options"] == {"include_usage": True}  # OpenAI streams usage only when asked


def test_n_above_one_is_refused_before_anything_is_sent(server: Server, tmp_path: Path) -> None:
    """params.n > 1 would lose every choice but the first in a one-answer row: validation says so instead."""
    write_rows(tmp_path / "input.jsonl", [{"id": "a", "text": "length"}])
    spec = {
        "name": "wire-n",
        "input": {"path": "input.jsonl", "id_column": "id"},
        "endpoint": {"kind": "openai", "base_url": server.url, "api_key_env": "WIRE_KEY"},
        "model": "some-model",
        "request": {"prompt": "{text}", "params": {"n": 2}},
        "output": {"path": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    before = len(server.bodies)
    done = run_cli(["run", str(tmp_path / "job.yaml")], env={**base_env(), "WIRE_KEY": "sk-local"}, cwd=tmp_path)
    assert done.returncode == 2 and "n must be 1" in done.stderr
    assert len(server.bodies) == before


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_what_a_spec_sends_to_an_openai_compatible_server(server: Server, tmp_path: Path, transport: str) -> None:
    """The Gemini Developer API's form of the seeds' requests (bare model name, `extra_body.google` at the top
    level, media as data: URIs, tools, a JSON schema, stream with usage asked for): the body on the wire is the
    spec, nothing left out, under either transport."""
    (tmp_path / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    (tmp_path / "hi.wav").write_bytes(b"RIFF fake WAVE")
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    params = {
        "stream": True,
        "temperature": 0,
        "tools": [tool],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}},
    }
    google = {"thinking_config": {"include_thoughts": True, "thinking_budget": 10000}, "thought_tag_marker": "think"}
    write_rows(
        tmp_path / "input.jsonl", [{"id": "a", "text": "vertex-usage-last", "img": "cat.png", "audio": "hi.wav"}]
    )
    spec = {
        "name": "wire-request",
        "input": {"path": "input.jsonl", "id_column": "id"},
        "endpoint": {"kind": "openai", "base_url": server.url, "api_key_env": "WIRE_KEY", "transport": transport},
        "model": "gemini-2.5-flash",
        "request": {
            "system": "You are a helpful assistant.",
            "prompt": "{text}",
            "media": [{"column": "img", "type": "image"}, {"column": "audio", "type": "audio"}],
            "params": params,
            "google": google,
        },
        "retry": {"max_attempts": 1},
        "output": {"path": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    before = len(server.bodies)
    done = run_cli(["run", str(tmp_path / "job.yaml")], env={**base_env(), "WIRE_KEY": "sk-local"}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(server.bodies) == before + 1 and server.auth[-1] == "Bearer sk-local"
    png = base64.b64encode((tmp_path / "cat.png").read_bytes()).decode()
    wav = base64.b64encode((tmp_path / "hi.wav").read_bytes()).decode()
    assert server.bodies[-1] == {
        "model": "gemini-2.5-flash",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "vertex-usage-last"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}},
                    {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
                ],
            },
        ],
        **params,
        "stream_options": {"include_usage": True},
        "extra_body": {"google": google},
    }
