"""The output table's Arrow schema (docs/design.md §3): one definition that writer, reports and docs agree on.

`ResultRow` is the same table as a type, key for key: a misspelt column is a mypy error where a row is
built, not a silently null column (`pa.Table.from_pylist` drops keys the schema lacks), and
tests/test_schema.py holds the two definitions together.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, TypedDict, cast

import pyarrow as pa

RESULT_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("content", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("parsed", pa.string()),
    pa.field("tool_calls", pa.string()),
    pa.field("extra_content", pa.string()),
    pa.field("media", pa.binary()),
    pa.field("media_mime_type", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("model", pa.string()),
    pa.field("response_id", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("reasoning_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
    pa.field("cached_tokens", pa.int64()),
    pa.field("traffic_type", pa.string()),
    pa.field("attempts", pa.int32()),
    pa.field("request_hash", pa.string()),
    pa.field("latency_ms", pa.float64()),
    pa.field("ttft_ms", pa.float64()),
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("http_status", pa.int32()),
    pa.field("finished_at", pa.timestamp("us", tz="UTC")),
]

RESULT_COLUMNS: list[str] = [f.name for f in RESULT_FIELDS]


class ResultRow(TypedDict, total=False):
    """One output row's result columns; the kept input columns join it when it is saved."""

    id: str
    status: str
    content: str | None
    reasoning: str | None
    parsed: str | None
    tool_calls: str | None
    extra_content: str | None
    media: bytes | None
    media_mime_type: str | None
    finish_reason: str | None
    model: str | None
    response_id: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None
    total_tokens: int | None
    cached_tokens: int | None
    traffic_type: str | None
    attempts: int
    request_hash: str | None
    latency_ms: float | None
    ttft_ms: float | None
    error_type: str | None
    error_message: str | None
    http_status: int | None
    finished_at: datetime.datetime


def output_schema(keep: list[pa.Field]) -> pa.Schema:
    """The full schema of a part file: the result columns, then the kept input columns."""
    return pa.schema([*RESULT_FIELDS, *keep])


class KeptColumns:
    """The input columns every output row carries (`output.keep_columns`), each with one type in every part."""

    def __init__(self, names: list[str], types: dict[str, pa.DataType]) -> None:
        self.fields = [pa.field(name, types.get(name, pa.string())) for name in names]

    def fill(self, row: ResultRow, values: dict[str, Any] | None) -> None:
        """Copy the kept values of the row's input record (None: it did not parse), fitted to their column types."""
        if values is None:
            return
        columns = cast(dict[str, Any], row)  # the one set of keys known only once the spec is read
        for field in self.fields:
            columns[field.name] = coerce_kept(values.get(field.name), field.type)


def coerce_kept(value: Any, type_: pa.DataType) -> Any:
    """Fit a kept JSON value to its column type so no part file disagrees with another."""
    if value is None:
        return None
    if pa.types.is_string(type_):
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if pa.types.is_boolean(type_):
        return value if isinstance(value, bool) else None
    if pa.types.is_integer(type_):
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if pa.types.is_floating(type_):
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    return value
