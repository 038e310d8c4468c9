"""Response -> output row: content without thoughts, reasoning, parsed JSON, tool calls, media, usage.

An answer is checked here once, as it arrives (`ResultBuilder.check`, which the client calls on every
attempt): is it a whole chat.completion, does its media decode, does its JSON parse and fit the schema.
The check's error decides the retry; its `Reply` carries what it parsed into the row.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun.errors import (
    AnswerError,
    EmptyAnswerError,
    FilteredError,
    InvalidOutputError,
    MalformedResponseError,
    RequestError,
    StreamCutError,
    error_of,
    server_message,
)
from batchrun.redact import redact
from batchrun.schema import ResultRow

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

# finish_reasons that mean the endpoint withheld the answer: OpenAI's, and Gemini's own names as
# OpenAI-compatible layers pass them through (lower-cased).
_WITHHELD = frozenset(
    {
        "content_filter",
        "safety",
        "recitation",
        "blocklist",
        "prohibited_content",
        "spii",
        "image_safety",
        "image_prohibited_content",
        "image_recitation",
    }
)
_REASONING_FIELDS = ("reasoning_content", "reasoning")  # vLLM, DeepSeek, LiteLLM, OpenRouter
# finish_reasons of an answer cut off by max_tokens: Vertex may then send no text at all, and that is the answer.
_CUT_OFF = frozenset({"length", "max_tokens"})


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer that passed its check, with what the check decoded: nothing is parsed twice."""

    response: dict[str, Any]
    parsed: str | None  # the JSON answer re-serialised, when the spec asked for JSON
    media: bytes | None
    media_mime_type: str | None


def _now() -> datetime.datetime:
    """finished_at: UTC, microseconds."""
    return datetime.datetime.now(datetime.UTC)


class ResultBuilder:
    """Turns answers and failures into rows of the output table (docs/analysts.md lists them)."""

    def __init__(self, *, thought_marker: str | None, response_format: dict[str, Any] | None) -> None:
        self._thoughts = (
            re.compile(rf"<{re.escape(thought_marker)}>(.*?)(?:</{re.escape(thought_marker)}>|$)", re.S)
            if thought_marker
            else None
        )
        kind = (response_format or {}).get("type")
        self._wants_json = kind in ("json_object", "json_schema")
        schema = (response_format or {}).get("json_schema", {}).get("schema") if kind == "json_schema" else None
        self._validator = _validator(schema) if isinstance(schema, dict) else None

    def check(self, body: object) -> Reply:
        """The Reply for a 200's JSON; MalformedResponseError when it is not a whole answer (retried like a
        5xx), FilteredError when the endpoint withheld it, EmptyAnswerError when it finished with nothing in
        it, InvalidOutputError when its media do not decode or its JSON does not parse or fit."""
        response = whole(body)
        finish = _choice(response).get("finish_reason")
        if isinstance(finish, str) and finish.lower() in _WITHHELD:
            raise FilteredError(
                f"the endpoint withheld the answer (finish_reason {finish}); its safety settings or "
                "the prompt decide this, so it is not retried",
                raw=response,
            )
        media, mime = _media(response)
        if media is None and not (isinstance(finish, str) and finish.lower() in _CUT_OFF) and self._empty(response):
            raise EmptyAnswerError(
                f"the answer is empty (finish_reason {finish}: no text, tool call or media); check the prompt, "
                "and max_tokens where the model thinks (thoughts count against it)",
                raw=response,
            )
        return Reply(response, self._parse(response) if self._wants_json else None, media, mime)

    def _empty(self, response: dict[str, Any]) -> bool:
        """Whether the first choice carries neither text (thoughts aside) nor a tool call."""
        message = _message(response)
        text = self._split(_text(message))[0]
        return not message.get("tool_calls") and not (isinstance(text, str) and text.strip())

    def _parse(self, response: dict[str, Any]) -> str | None:
        """The JSON answer re-serialised, or InvalidOutputError; None when there is no text answer."""
        content = self._split(_text(_message(response)))[0]
        if content is None:
            return None
        text = _strip_fence(content)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidOutputError(f"answer is not valid JSON ({exc})", raw=response) from exc
        if self._validator is not None:
            problem = next(iter(self._validator.iter_errors(value)), None)
            if problem is not None:
                where = "/".join(str(p) for p in problem.absolute_path) or "(root)"
                raise InvalidOutputError(
                    f"answer does not match the schema at {where}: {problem.message}", raw=response
                )
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def _split(self, content: Any) -> tuple[str | None, str | None]:
        """(answer, thoughts): tagged thoughts move out of the content into `reasoning`."""
        if not isinstance(content, str):
            return None, None
        if self._thoughts is None:
            return content, None
        thoughts = [m.strip() for m in self._thoughts.findall(content)]
        if not thoughts:
            return content, None
        answer = self._thoughts.sub("", content).strip()
        return answer, "\n\n".join(t for t in thoughts if t) or None

    def ok(self, rid: str, reply: Reply, *, attempts: int, latency_ms: float, ttft_ms: float | None) -> ResultRow:
        """The `ok` row for a checked answer (fields Vertex omits on cut-off answers stay null)."""
        return {
            "id": rid,
            "status": "ok",
            **self._answer(reply.response),
            "media": reply.media,
            "media_mime_type": reply.media_mime_type,
            "parsed": reply.parsed,
            "attempts": attempts,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "finished_at": _now(),
        }

    def failed(self, rid: str, error: RequestError, *, attempts: int) -> ResultRow:
        """The `error` row for a request that failed for good; an invalid answer keeps its text and usage."""
        row: ResultRow = {
            "id": rid,
            "status": "error",
            "attempts": attempts,
            "error_type": error.error_type,
            "error_message": redact(error.message),
            "http_status": error.http_status,
            "finished_at": _now(),
        }
        if isinstance(error, AnswerError):
            row.update(self._answer(error.raw))  # its media, if any, are what failed
        return row

    def _answer(self, response: dict[str, Any]) -> ResultRow:
        """The columns every answer fills: text, thoughts, tool calls, media, finish_reason and usage."""
        message = _message(response)
        content, tagged = self._split(_text(message))
        reasoning = message.get("reasoning_content") or message.get("reasoning")  # vLLM, DeepSeek, LiteLLM
        reasoning = reasoning if isinstance(reasoning, str) else None
        if tagged:
            reasoning = f"{reasoning}\n\n{tagged}" if reasoning else tagged
        usage = response.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        google = ((usage.get("extra_properties") or {}).get("google")) or {}
        extra = message.get("extra_content")
        return {
            "content": content,
            "reasoning": reasoning,
            "tool_calls": _tool_calls(message),
            "extra_content": json.dumps(extra, ensure_ascii=False) if extra else None,
            "finish_reason": _choice(response).get("finish_reason"),
            "model": response.get("model"),
            "response_id": response.get("id"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "reasoning_tokens": details.get("reasoning_tokens"),
            "total_tokens": usage.get("total_tokens"),
            "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "traffic_type": google.get("traffic_type"),
        }


def _validator(schema: dict[str, Any]) -> Validator:
    """A JSON Schema validator; jsonschema (0.1 s to import) is loaded only by jobs that ask for a schema."""
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def input_error(rid: str, message: str) -> ResultRow:
    """The `error` row for an input line or row that cannot become a request."""
    return {
        "id": rid,
        "status": "error",
        "attempts": 0,
        "error_type": "input",
        "error_message": redact(message),
        "finished_at": _now(),
    }


def whole(body: object) -> dict[str, Any]:
    """The body when it is a whole chat.completion, else MalformedResponseError saying what it is instead.

    A first choice with `finish_reason` and no `message` is whole: Vertex answers so when the output was
    cut off before any token (an ok row with null content).
    """
    error = error_of(body)
    if error is not None:
        said = server_message(body) or json.dumps(error)[:300]
        raise MalformedResponseError(redact(f"a 200 whose body is an error: {said}"))
    if not isinstance(body, dict):
        raise MalformedResponseError(f"response body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list):
        raise MalformedResponseError("response has no `choices`")
    if not choices:
        raise MalformedResponseError("response has `choices: []`: no answer")
    first = choices[0]
    if not isinstance(first, dict) or not (isinstance(first.get("message"), dict) or first.get("finish_reason")):
        raise MalformedResponseError("response's first choice has neither a message nor a finish_reason")
    return body


def _choice(response: dict[str, Any]) -> dict[str, Any]:
    """The choice with index 0 (the first, when it says no index), or an empty one."""
    choices = response.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    if first.get("index", 0) == 0:
        return first
    return next((c for c in choices if isinstance(c, dict) and c.get("index") == 0), first)


def _message(response: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message; Vertex omits it when output is cut off or empty."""
    message = _choice(response).get("message")
    return message if isinstance(message, dict) else {}


def _text(message: dict[str, Any]) -> Any:
    """The message's text: `content` as a string, or the text of its parts when a server sends a list of
    `{"type": "text", "text": ...}` parts (Mistral, some LiteLLM routes)."""
    content = message.get("content")
    if not isinstance(content, list):
        return content
    texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return "".join(texts) if texts else None


def _json_text(value: Any) -> Any:
    """Tool-call arguments as JSON text, as OpenAI sends them; Ollama and some others send the object."""
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _tool_calls(message: dict[str, Any]) -> str | None:
    """Every tool call as JSON {id, name, arguments, extra_content?}, or null.

    `extra_content` is Google's object as received (`{"google": {"thought_signature": ...}}`), so the call
    can be sent back in a later turn exactly as Gemini requires.
    """
    calls = message.get("tool_calls")
    if not calls:
        return None
    out = []
    for call in calls:
        function = call.get("function") or {}
        item: dict[str, Any] = {
            "id": call.get("id"),
            "name": function.get("name"),
            "arguments": _json_text(function.get("arguments")),
        }
        if call.get("extra_content"):
            item["extra_content"] = call["extra_content"]
        out.append(item)
    return json.dumps(out, ensure_ascii=False)


def assistant_message(tool_calls: str) -> dict[str, Any]:
    """The assistant turn that sends a row's `tool_calls` back in a later request, thought signatures included."""
    return {
        "role": "assistant",
        "tool_calls": [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": call["arguments"]},
                **({"extra_content": call["extra_content"]} if call.get("extra_content") else {}),
            }
            for call in json.loads(tool_calls)
        ],
    }


def _media(response: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """Generated image/audio bytes from `message.audio` and their MIME type; bytes that are not base64
    are an invalid answer, not an answer without media."""
    audio = _message(response).get("audio")
    if not isinstance(audio, dict) or not audio.get("data"):
        return None, None
    try:
        data = base64.b64decode(str(audio["data"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidOutputError(f"the answer's media (audio.data) is not valid base64 ({exc})", raw=response) from exc
    mime = ((audio.get("extra_content") or {}).get("google") or {}).get("mime_type") or audio.get("format")
    return data, mime


def _strip_fence(text: str) -> str:
    """Models sometimes wrap JSON in a ```json fence; the JSON inside is the answer."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped


class StreamAssembler:
    """Builds one chat.completion from chat.completion.chunk events, tool calls keyed by id."""

    def __init__(self) -> None:
        self._first: dict[str, Any] = {}
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._index_keys: dict[object, str] = {}
        self._calls: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._last_key: str | None = None
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._audio: dict[str, Any] | None = None
        self._media: list[str] = []
        self._extra: object = None
        self._chunks = 0

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one chunk in; usage and finish_reason arrive on the last content chunk."""
        self._chunks += 1
        if not self._first:
            self._first = {k: chunk.get(k) for k in ("id", "model", "created")}
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            if isinstance(delta.get("content"), str):
                self._content.append(delta["content"])
            for field in _REASONING_FIELDS:
                if isinstance(delta.get(field), str):
                    self._reasoning.append(delta[field])
                    break
            if isinstance(delta.get("audio"), dict):
                self._add_media(delta["audio"])
            if delta.get("extra_content"):
                self._extra = delta["extra_content"]
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def _add_media(self, audio: dict[str, Any]) -> None:
        """Join `audio.data` pieces; the first piece carries the rest of the object (its mime_type)."""
        if self._audio is None:
            self._audio = {k: v for k, v in audio.items() if k != "data"}
        if isinstance(audio.get("data"), str):
            self._media.append(audio["data"])

    def _add_call(self, call: dict[str, Any]) -> None:
        """Append argument pieces to the call with the same id (indexes are not reliable on Vertex, which
        names the call in every piece); OpenAI and vLLM name it in the first piece only, then by index."""
        index = call.get("index")
        key = call.get("id") or self._index_keys.get(index) or self._last_key or str(index or 0)
        self._last_key = key
        self._index_keys[index] = key
        function = call.get("function") or {}
        entry = self._calls.get(key)
        if entry is None:
            entry = {"id": call.get("id"), "type": "function", "function": {"name": None, "arguments": ""}}
            self._calls[key] = entry
            self._order.append(key)
        if function.get("name"):
            entry["function"]["name"] = function["name"]
        entry["function"]["arguments"] += function.get("arguments") or ""
        if call.get("extra_content"):
            entry["extra_content"] = call["extra_content"]

    def result(self) -> dict[str, Any]:
        """The assembled response, shaped like a non-streamed one; StreamCutError when the stream ended
        before its finish chunk (whether `[DONE]` came is not visible through the SDK; the finish is)."""
        if self._finish is None:
            raise StreamCutError(f"the stream ended before its finish chunk ({self._chunks} chunks, no finish_reason)")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._content) or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [self._calls[k] for k in self._order]
        if self._audio is not None:
            message["audio"] = {**self._audio, "data": "".join(self._media)}
        if self._extra:
            message["extra_content"] = self._extra
        return {
            **self._first,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish}],
            "usage": self._usage or {},
        }
