"""Row -> request body: pure functions over the spec, checked once before any request is sent."""

from __future__ import annotations

import difflib
import json
import string
from dataclasses import dataclass
from typing import Any

from batchrun.errors import RowInputError, SpecError
from batchrun.media import media_part
from batchrun.sources import Record
from batchrun.spec import NO_N, JobSpec, MediaSpec
from batchrun.spec_files import response_format

__all__ = ["Renderer", "RowInputError"]


@dataclass(frozen=True)
class _Template:
    """A prompt template parsed once: its text and the columns it names."""

    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, where: str) -> _Template:
        """Parse `{column}` placeholders; a format mistake is a spec error naming the key."""
        try:
            fields = tuple(name for _, name, _, _ in string.Formatter().parse(text) if name is not None)
        except ValueError as exc:
            raise SpecError(f"{where}: bad template ({exc}); write literal braces as {{{{ and }}}}") from exc
        for name in fields:
            if not name or any(c in name for c in ".[]"):
                raise SpecError(f"{where}: placeholder {{{name}}} must name a column, e.g. {{text}}")
        return cls(text, fields)

    def render(self, data: dict[str, Any]) -> str:
        """Fill the placeholders from the row; a missing or null value is this row's input error."""
        values: dict[str, Any] = {}
        for name in self.fields:
            value = data.get(name)
            if value is None:
                raise RowInputError(f"column '{name}' is missing or null in this row")
            values[name] = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
        try:
            return self.text.format_map(values)
        except (ValueError, TypeError) as exc:
            raise RowInputError(f"template cannot format this row's values ({exc})") from exc


class Renderer:
    """Builds the Chat Completions body for each row, exactly as it is sent."""

    def __init__(self, spec: JobSpec, input_format: str) -> None:
        self.spec = spec
        self.input_format = input_format
        request = spec.request
        self.system = _Template.parse(request.system, "request.system") if request.system else None
        self.prompt = _Template.parse(request.prompt, "request.prompt") if request.prompt else None
        if input_format == "rows" and self.prompt is None and request.messages_column is None:
            raise SpecError("request: set request.prompt (a template over columns) or request.messages_column")
        self.params = dict(request.params)
        if spec.endpoint.kind == "openai" and self.params.get("stream") and "stream_options" not in self.params:
            self.params["stream_options"] = {"include_usage": True}  # OpenAI streams usage only when asked
        self.google = request.google_options
        self.params.pop("extra_body", None)  # sent merged with request.google, below
        self.extra_body = {k: v for k, v in (request.params.get("extra_body") or {}).items() if k != "google"}

    def columns_needed(self) -> dict[str, str]:
        """Every input column the spec reads, with the spec key that names it."""
        request = self.spec.request
        needed: dict[str, str] = {}
        for key, template in (("request.system", self.system), ("request.prompt", self.prompt)):
            for name in template.fields if template else ():
                needed.setdefault(name, key)
        if request.messages_column:
            needed[request.messages_column] = "request.messages_column"
        for media in request.media:
            needed.setdefault(media.column, "request.media")
        for name in self.spec.output.keep_columns:
            needed.setdefault(name, "output.keep_columns")
        if self.spec.input.id_column and self.input_format == "rows":
            needed[self.spec.input.id_column] = "input.id_column"
        if self.input_format == "openai-batch":
            needed |= {"custom_id": "input.format", "body": "input.format"}
        return needed

    def check_columns(self, columns: list[str], path: str) -> None:
        """Refuse a spec that names a column the input does not have, naming the key and the nearest column."""
        if self.input_format != "rows":
            return
        for name, key in sorted(self.columns_needed().items()):
            if name not in columns:
                close = difflib.get_close_matches(name, columns, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"its columns are: {', '.join(columns)}"
                raise SpecError(f"{key} names column '{name}', which {path} does not have; {hint}")

    def render(self, record: Record, *, read_media: bool = True) -> dict[str, Any]:
        """The request body for one row; without `read_media`, media parts name their column value (path or URI)
        instead of holding the file's bytes, which is what a row's request_hash covers (no file is read)."""
        assert record.data is not None
        if self.input_format == "openai-batch":
            return self._batch_body(record.data)
        body: dict[str, Any] = {}
        if self.spec.model:
            body["model"] = self.spec.model
        body["messages"] = self._messages(record.data, read_media)
        body.update(self.params)
        extra = {**self.extra_body, **({"google": self.google} if self.google else {})}
        if extra:
            body["extra_body"] = extra
        return body

    def _messages(self, data: dict[str, Any], read_media: bool) -> list[dict[str, Any]]:
        """The messages list: system + user from templates, or the row's own messages column."""
        column = self.spec.request.messages_column
        if column:
            messages = data.get(column)
            if isinstance(messages, str):
                try:
                    messages = json.loads(messages)
                except json.JSONDecodeError as exc:
                    raise RowInputError(f"column '{column}' is not a JSON messages list ({exc.msg})") from exc
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise RowInputError(f"column '{column}' must hold a list of {{role, content}} messages")
            result = list(messages)
            parts = self._media_parts(data, read_media)
            if parts:
                result = _with_media(result, parts, column)
        else:
            result = []
            if self.system:
                result.append({"role": "system", "content": self.system.render(data)})
            assert self.prompt is not None
            text = self.prompt.render(data)
            parts = self._media_parts(data, read_media)
            content: Any = [{"type": "text", "text": text}, *parts] if parts else text
            result.append({"role": "user", "content": content})
        return result

    def _media_parts(self, data: dict[str, Any], read_media: bool = True) -> list[dict[str, Any]]:
        """The content parts of the row's media columns (an empty cell adds none); without `read_media`, each
        part is its column value alone (see `_media_ref`)."""
        openai_style = self.spec.endpoint.kind == "openai"
        parts = [
            _media_part(m, data.get(m.column), openai_style=openai_style)
            if read_media
            else _media_ref(m, data.get(m.column))
            for m in self.spec.request.media
        ]
        return [p for p in parts if p is not None]

    def _batch_body(self, data: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI Batch line's body, sent as is; the spec's model and params fill what it lacks."""
        body = data.get("body")
        if not isinstance(body, dict) or "messages" not in body:
            raise RowInputError("'body' must be an object with 'messages' (OpenAI Batch API format)")
        if "response_format" in body:
            try:
                response_format(body["response_format"], read_files=False)
            except ValueError as exc:
                raise RowInputError(f"body.{exc}") from exc
        if body.get("n", 1) != 1:
            raise RowInputError(f"body.n: {NO_N}")
        result = dict(body)
        if self.spec.model and "model" not in result:
            result["model"] = self.spec.model
        for key, value in self.params.items():
            result.setdefault(key, value)
        defaults = {**self.extra_body, **({"google": self.google} if self.google else {})}
        if defaults:
            result["extra_body"] = {**defaults, **(result.get("extra_body") or {})}
        return result


def _with_media(messages: list[dict[str, Any]], parts: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """The messages with the media parts added to the last user message, after its own content."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") != "user":
            continue
        content = message.get("content")
        own = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
        return [*messages[:index], {**message, "content": [*own, *parts]}, *messages[index + 1 :]]
    raise RowInputError(f"column '{column}' has no user message to attach request.media to")


def _media_ref(media: MediaSpec, value: Any) -> dict[str, Any] | None:
    """A media part as its column value alone: what the request's hash covers, with no file read."""
    return None if value is None or value == "" else {"media": media.model_dump(), "value": value}


def _media_part(media: MediaSpec, value: Any, *, openai_style: bool) -> dict[str, Any] | None:
    """One content part for a media column's value; an empty cell adds no part."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RowInputError(f"media column '{media.column}' must hold a path or URI, got {type(value).__name__}")
    return media_part(media.column, media.type, value, openai_style=openai_style, inline_gs=media.inline)
