"""Response -> row: thoughts split out, JSON parsed and checked, tool calls, media, usage, cut-off answers."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, cast

import pytest

from batchrun.errors import InvalidOutputError, MalformedResponseError, StreamCutError
from batchrun.results import ResultBuilder, StreamAssembler, assistant_message


def response(
    message: dict[str, Any] | None, usage: dict[str, Any] | None = None, finish: str = "stop"
) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if message is not None:
        choice["message"] = message
    return {
        "id": "resp1",
        "model": "google/gemini-2.5-flash",
        "choices": [choice],
        "usage": usage
        or {
            "prompt_tokens": 3,
            "completion_tokens": 2,
            "total_tokens": 5,
            "extra_properties": {"google": {"traffic_type": "ON_DEMAND"}},
        },
    }


def build(resp: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The row an answer makes, as a plain dict: the tests read its columns as the values they hold."""
    builder = ResultBuilder(**{"thought_marker": None, "response_format": None, **kw})
    return cast("dict[str, Any]", builder.ok("r1", builder.check(resp), attempts=1, latency_ms=5.0, ttft_ms=None))


def test_usage_and_traffic_type() -> None:
    """Token counts and traffic_type come from usage."""
    row = build(
        response(
            {"role": "assistant", "content": "hi"},
            {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 9,
                "completion_tokens_details": {"reasoning_tokens": 4},
                "extra_properties": {"google": {"traffic_type": "PROVISIONED_THROUGHPUT"}},
            },
        )
    )
    assert (row["content"], row["prompt_tokens"], row["reasoning_tokens"], row["total_tokens"]) == ("hi", 3, 4, 9)
    assert row["traffic_type"] == "PROVISIONED_THROUGHPUT" and row["status"] == "ok"


def test_thoughts_move_to_reasoning() -> None:
    """With thought_tag_marker the tagged thoughts leave content."""
    row = build(response({"content": "<think>step 1</think>\nAnswer: 4"}), thought_marker="think")
    assert row["content"] == "Answer: 4" and row["reasoning"] == "step 1"


def test_cut_off_response_without_message_is_ok_with_nulls() -> None:
    """Vertex omits message and completion_tokens on cut-off output: an ok row with nulls."""
    row = build(response(None, {"prompt_tokens": 5, "total_tokens": 12}, finish="length"))
    assert row["status"] == "ok" and row["content"] is None and row["completion_tokens"] is None
    assert row["finish_reason"] == "length"


def test_json_schema_answer_is_parsed_and_checked() -> None:
    """A JSON answer that fits the schema goes to parsed; one that does not raises InvalidOutputError."""
    fmt = {
        "type": "json_schema",
        "json_schema": {
            "name": "x",
            "schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]},
        },
    }
    row = build(response({"content": '{"n": 1}'}), response_format=fmt)
    assert json.loads(row["parsed"]) == {"n": 1}
    builder = ResultBuilder(thought_marker=None, response_format=fmt)
    with pytest.raises(InvalidOutputError, match="does not match the schema"):
        builder.check(response({"content": '{"n": "one"}'}))
    with pytest.raises(InvalidOutputError, match="not valid JSON"):
        builder.check(response({"content": "n is one"}))


def test_tool_calls_keep_thought_signature() -> None:
    """Every call with id, name, arguments and Google's extra_content as received, so it can be sent back."""
    call = {
        "id": "function-call-1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
        "extra_content": {"google": {"thought_signature": "sig"}},
    }
    plain = {"id": "function-call-2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}}
    row = build(response({"content": None, "tool_calls": [call, plain]}, finish="tool_calls"))
    signed = {"id": "function-call-1", "name": "f", "arguments": "{}", "extra_content": call["extra_content"]}
    assert json.loads(row["tool_calls"]) == [signed, {"id": "function-call-2", "name": "g", "arguments": '{"a":1}'}]
    assert assistant_message(row["tool_calls"]) == {"role": "assistant", "tool_calls": [call, plain]}


def test_invalid_output_row_keeps_text_and_usage() -> None:
    """An answer that fails the schema is an invalid_output error row with its text, thoughts and tokens."""
    fmt = {"type": "json_object"}
    builder = ResultBuilder(thought_marker="think", response_format=fmt)
    bad = response({"content": "<think>hmm</think>not json"})
    with pytest.raises(InvalidOutputError) as err:
        builder.check(bad)
    row = builder.failed("r1", err.value, attempts=3)
    assert (row["status"], row["error_type"], row["attempts"]) == ("error", "invalid_output", 3)
    assert (row["content"], row["reasoning"], row["prompt_tokens"], row["total_tokens"]) == ("not json", "hmm", 3, 5)
    assert "parsed" not in row


def test_generated_image_bytes() -> None:
    """message.audio.data holds the bytes; extra_content.google.mime_type the type."""
    audio = {"data": base64.b64encode(b"\x89PNG").decode(), "extra_content": {"google": {"mime_type": "image/png"}}}
    row = build(response({"content": None, "audio": audio}))
    assert row["media"] == b"\x89PNG" and row["media_mime_type"] == "image/png"


def test_stream_assembly_keys_tool_calls_by_id() -> None:
    """Streamed argument pieces join per call id even when indexes disagree (as Vertex sends them)."""
    a = StreamAssembler()
    chunks: list[dict[str, Any]] = [
        {
            "id": "x",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "index": 1,
                                "function": {"name": "w", "arguments": ""},
                                "extra_content": {"google": {"thought_signature": "s"}},
                            }
                        ],
                    },
                }
            ],
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"id": "c1", "index": 0, "function": {"name": "w", "arguments": '{"a":'}}]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"id": "c1", "index": 0, "function": {"name": "w", "arguments": "1}"}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"id": "c2", "index": 1, "function": {"name": "w", "arguments": "{}"}}]},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"total_tokens": 7},
        },
    ]
    for chunk in chunks:
        a.add(chunk)
    result = a.result()
    calls = result["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [("c1", '{"a":1}'), ("c2", "{}")]
    assert result["usage"] == {"total_tokens": 7} and result["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"error": {"code": 500, "message": "Internal error encountered.", "status": "INTERNAL"}}, "INTERNAL"),
        ([{"error": {"code": 503, "message": "The service is unavailable.", "status": "UNAVAILABLE"}}], "UNAVAILABLE"),
        ({"id": "r", "object": "chat.completion", "choices": []}, "choices: []"),
        ({"id": "r", "object": "chat.completion", "usage": {}}, "no `choices`"),
        ({"choices": [{"index": 0}]}, "neither a message nor a finish_reason"),
        (["not", "an", "answer"], "JSON list"),
    ],
    ids=["error-object", "error-list", "empty-choices", "no-choices", "bare-choice", "list"],
)
def test_a_200_that_is_no_whole_answer_is_malformed(body: object, words: str) -> None:
    """An error body (object or Google's list), no choices or an empty list are malformed, never an ok row."""
    with pytest.raises(MalformedResponseError, match=re.escape(words)) as err:
        ResultBuilder(thought_marker=None, response_format=None).check(body)
    assert err.value.error_type == "malformed_response"


def test_media_that_are_not_base64_are_invalid_output() -> None:
    """`audio.data` that does not decode is an invalid_output error, not an ok row without media."""
    with pytest.raises(InvalidOutputError, match="not valid base64"):
        build(response({"content": None, "audio": {"data": "not*base64*data!"}}))


def test_the_message_extra_content_is_kept() -> None:
    """Image generation's message-level thought_signature lands in `extra_content` as JSON text."""
    extra = {"google": {"thought_signature": "c2ln"}}
    audio = {"data": base64.b64encode(b"\x89PNG").decode(), "extra_content": {"google": {"mime_type": "image/png"}}}
    row = build(response({"content": None, "audio": audio, "extra_content": extra}))
    assert json.loads(row["extra_content"]) == extra and row["media_mime_type"] == "image/png"
    assert build(response({"content": "hi"}))["extra_content"] is None


def test_the_json_answer_is_parsed_once_and_carried() -> None:
    """The check's parsed value is what the row holds: results never parse the answer again."""
    builder = ResultBuilder(thought_marker=None, response_format={"type": "json_object"})
    reply = builder.check(response({"content": '```json\n{"a": 1}\n```'}))
    assert reply.parsed == '{"a":1}'
    assert builder.ok("r1", reply, attempts=1, latency_ms=1.0, ttft_ms=None)["parsed"] == '{"a":1}'


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    """One stream chunk of choice 0."""
    return {"id": "x", "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_a_stream_without_its_finish_chunk_is_cut() -> None:
    """Chunks that never reach a finish_reason are part of an answer: StreamCutError, not a short ok row."""
    assembler = StreamAssembler()
    assembler.add(chunk({"role": "assistant", "content": "The answer is"}))
    with pytest.raises(StreamCutError, match="1 chunks"):
        assembler.result()


def test_streamed_media_pieces_are_joined() -> None:
    """`delta.audio.data` over several chunks is one image; the first piece's mime_type and signature stay."""
    data = base64.b64encode(b"\x89PNG" + bytes(range(200))).decode()
    extra = {"google": {"thought_signature": "c2ln"}}
    mime = {"google": {"mime_type": "image/png"}}
    assembler = StreamAssembler()
    assembler.add(chunk({"audio": {"data": data[:40], "extra_content": mime}, "extra_content": extra}))
    assembler.add(chunk({"audio": {"data": data[40:100]}}))
    assembler.add(chunk({"audio": {"data": data[100:]}}, finish="stop"))
    row = build(assembler.result())
    assert row["media"] == b"\x89PNG" + bytes(range(200)) and row["media_mime_type"] == "image/png"
    assert json.loads(row["extra_content"]) == extra
