"""Response -> output row: content without thoughts, reasoning, parsed JSON, tool calls, media, usage."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from typing import Any

import jsonschema

from batchrun.errors import InvalidOutputError, RequestError
from batchrun.redact import redact

Row = dict[str, Any]


def _now() -> datetime.datetime:
    """finished_at: UTC, microseconds."""
    return datetime.datetime.now(datetime.UTC)


class ResultBuilder:
    """Turns answers and failures into rows of the output table (design.md section 3)."""

    def __init__(self, *, thought_marker: str | None, response_format: dict[str, Any] | None) -> None:
        self._thoughts = (
            re.compile(rf"<{re.escape(thought_marker)}>(.*?)(?:</{re.escape(thought_marker)}>|$)", re.S)
            if thought_marker
            else None
        )
        kind = (response_format or {}).get("type")
        self._wants_json = kind in ("json_object", "json_schema")
        schema = (response_format or {}).get("json_schema", {}).get("schema") if kind == "json_schema" else None
        self._validator = jsonschema.Draft202012Validator(schema) if isinstance(schema, dict) else None

    @property
    def wants_json(self) -> bool:
        """Whether the spec asked for a JSON answer (response_format)."""
        return self._wants_json

    def check(self, response: dict[str, Any]) -> None:
        """Raise InvalidOutputError when a JSON answer was asked for and this one does not parse or fit."""
        if self._wants_json:
            self._parse(response)

    def _parse(self, response: dict[str, Any]) -> str | None:
        """The JSON answer re-serialised, or InvalidOutputError; None when there is no text answer."""
        content = self._split(_message(response).get("content"))[0]
        if content is None:
            return None
        text = _strip_fence(content)
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise InvalidOutputError(f"answer is not valid JSON ({exc})", raw=response) from None
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

    def ok(self, rid: str, response: dict[str, Any], *, attempts: int, latency_ms: float,
           ttft_ms: float | None) -> Row:
        """The `ok` row for a response (fields Vertex omits on cut-off answers stay null)."""
        return {
            "id": rid,
            "status": "ok",
            **self._answer(response),
            "parsed": self._parse(response) if self._wants_json else None,
            "attempts": attempts,
            "latency_ms": latency_ms,
            "ttft_ms": ttft_ms,
            "finished_at": _now(),
        }

    def failed(self, rid: str, error: RequestError, *, attempts: int) -> Row:
        """The `error` row for a request that failed for good; an invalid answer keeps its text and usage."""
        row: Row = {
            "id": rid,
            "status": "error",
            "attempts": attempts,
            "error_type": error.error_type,
            "error_message": redact(error.message),
            "http_status": error.http_status,
            "finished_at": _now(),
        }
        if isinstance(error, InvalidOutputError):
            row.update(self._answer(error.raw))
        return row

    def _answer(self, response: dict[str, Any]) -> Row:
        """The columns every answer fills: text, thoughts, tool calls, media, finish_reason and usage."""
        message = _message(response)
        content, reasoning = self._split(message.get("content"))
        usage = response.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        google = ((usage.get("extra_properties") or {}).get("google")) or {}
        media, mime = _media(message)
        return {
            "content": content,
            "reasoning": reasoning,
            "tool_calls": _tool_calls(message),
            "media": media,
            "media_mime_type": mime,
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


def input_error(rid: str, message: str) -> Row:
    """The `error` row for an input line or row that cannot become a request."""
    return {
        "id": rid,
        "status": "error",
        "attempts": 0,
        "error_type": "input",
        "error_message": redact(message),
        "finished_at": _now(),
    }


def _choice(response: dict[str, Any]) -> dict[str, Any]:
    """The first choice, or an empty one."""
    choices = response.get("choices") or [{}]
    first = choices[0]
    return first if isinstance(first, dict) else {}


def _message(response: dict[str, Any]) -> dict[str, Any]:
    """The first choice's message; Vertex omits it when output is cut off or empty."""
    message = _choice(response).get("message")
    return message if isinstance(message, dict) else {}


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
        item: dict[str, Any] = {"id": call.get("id"), "name": function.get("name"),
                                "arguments": function.get("arguments")}
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


def _media(message: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """Generated image/audio bytes from `message.audio` and their MIME type."""
    audio = message.get("audio")
    if not isinstance(audio, dict) or not audio.get("data"):
        return None, None
    try:
        data = base64.b64decode(audio["data"], validate=False)
    except (binascii.Error, ValueError):
        return None, None
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
        self._calls: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        self._last_key: str | None = None
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None
        self._audio: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        """Fold one chunk in; usage and finish_reason arrive on the last content chunk."""
        if not self._first:
            self._first = {k: chunk.get(k) for k in ("id", "model", "created")}
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self._content.append(delta["content"])
            if isinstance(delta.get("audio"), dict):
                self._audio = delta["audio"]
            for call in delta.get("tool_calls") or []:
                self._add_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]

    def _add_call(self, call: dict[str, Any]) -> None:
        """Append argument pieces to the call with the same id (indexes are not reliable on Vertex)."""
        key = call.get("id") or self._last_key or str(call.get("index", 0))
        self._last_key = key
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
        """The assembled response, shaped like a non-streamed one."""
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._content) or None}
        if self._calls:
            message["tool_calls"] = [self._calls[k] for k in self._order]
        if self._audio:
            message["audio"] = self._audio
        return {
            **self._first,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": self._finish}],
            "usage": self._usage or {},
        }
