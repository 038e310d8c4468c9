"""The output table's Arrow schema: one definition that writer, reports and docs agree on."""

from __future__ import annotations

import pyarrow as pa

RESULT_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("content", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("parsed", pa.string()),
    pa.field("tool_calls", pa.string()),
    pa.field("media", pa.binary()),
    pa.field("media_mime_type", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("model", pa.string()),
    pa.field("response_id", pa.string()),
    pa.field("prompt_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("reasoning_tokens", pa.int64()),
    pa.field("total_tokens", pa.int64()),
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


def output_schema(keep: list[pa.Field]) -> pa.Schema:
    """The full schema of a part file: the result columns, then the kept input columns."""
    return pa.schema([*RESULT_FIELDS, *keep])
