"""Row -> request body: templates, messages columns, media parts, OpenAI Batch bodies, Google extras."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import SpecError
from batchrun.prompts import Renderer, RowInputError
from batchrun.sources import Record
from batchrun.spec import parse_spec


def make(request: dict[str, Any], fmt: str = "rows", **extra: Any) -> Renderer:
    raw = {
        "name": "j",
        "input": {"path": "x.jsonl"},
        "endpoint": {"kind": "simulator"},
        "model": "google/gemini-2.5-flash",
        "request": request,
        "output": {"path": "o"},
        **extra,
    }
    return Renderer(parse_spec(raw), fmt)


def rec(data: dict[str, Any]) -> Record:
    return Record(line=1, id="r", data=data)


def test_system_and_prompt_template() -> None:
    """system + prompt render over columns; params pass through; google goes to extra_body.google."""
    r = make(
        {
            "system": "You are {role}.",
            "prompt": "Review: {text}",
            "params": {"temperature": 0},
            "google": {"thought_tag_marker": "think"},
        }
    )
    body = r.render(rec({"role": "a judge", "text": "good"}))
    assert body == {
        "model": "google/gemini-2.5-flash",
        "messages": [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Review: good"}],
        "temperature": 0,
        "extra_body": {"google": {"thought_tag_marker": "think"}},
    }


def test_missing_value_is_a_row_error() -> None:
    """A null or missing column fails this row only."""
    with pytest.raises(RowInputError, match="column 'text' is missing"):
        make({"prompt": "{text}"}).render(rec({}))


def test_unknown_column_is_a_spec_error_with_suggestion() -> None:
    """A placeholder naming no column is refused before any request, with the nearest column."""
    with pytest.raises(SpecError, match="request.prompt names column 'txt'.*did you mean 'text'"):
        make({"prompt": "{txt}"}).check_columns(["id", "text"], "in.jsonl")


def test_messages_column_json_string() -> None:
    """A messages column may hold a list or its JSON text; extra_content passes untouched."""
    msgs = [{"role": "user", "content": "hi", "extra_content": {"google": {"x": 1}}}]
    r = make({"messages_column": "m"})
    assert r.render(rec({"m": msgs}))["messages"] == msgs
    import json

    assert r.render(rec({"m": json.dumps(msgs)}))["messages"] == msgs
    with pytest.raises(RowInputError):
        r.render(rec({"m": "not json"}))


def test_local_image_is_inlined_and_uris_pass_through(tmp_path: Path) -> None:
    """Local media become data: URIs with their MIME type; gs:// stays a URI in the seeds' REST string form."""
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG fake")
    r = make({"prompt": "Describe", "media": [{"column": "img", "type": "image"}]})
    parts = r.render(rec({"img": str(image)}))["messages"][0]["content"]
    assert parts[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    parts = r.render(rec({"img": "gs://bucket/a.jpg"}))["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": "gs://bucket/a.jpg"}
    parts = r.render(rec({"img": "https://example.com/a.jpg"}))["messages"][0]["content"]
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}


def test_missing_media_file_is_a_row_error(tmp_path: Path) -> None:
    """A missing local file names the path."""
    r = make({"prompt": "Describe", "media": [{"column": "img", "type": "image"}]})
    with pytest.raises(RowInputError, match="cannot read .*nope.png"):
        r.render(rec({"img": str(tmp_path / "nope.png")}))


def test_audio_part_has_format(tmp_path: Path) -> None:
    """Audio goes as input_audio with base64 data and its format."""
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"RIFF....WAVE")
    r = make({"prompt": "Transcribe", "media": [{"column": "a", "type": "audio"}]})
    part = r.render(rec({"a": str(clip)}))["messages"][0]["content"][1]
    assert part["type"] == "input_audio" and part["input_audio"]["format"] == "wav"
    assert base64.b64decode(part["input_audio"]["data"]) == b"RIFF....WAVE"


def test_openai_batch_body_is_sent_as_is_with_spec_defaults() -> None:
    """The body is sent as is; the spec's model and params fill only what it lacks."""
    r = make({"params": {"temperature": 0, "max_tokens": 10}}, fmt="openai-batch")
    body = r.render(rec({"custom_id": "c", "body": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}}))
    assert body == {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 5,
        "model": "google/gemini-2.5-flash",
        "temperature": 0,
    }


def test_openai_streams_ask_for_usage_and_vertex_streams_stay_as_written() -> None:
    """OpenAI sends usage in a stream only when asked; Vertex always does, so its body stays the seed's."""
    openai_body = make(
        {"prompt": "{t}", "params": {"stream": True}}, endpoint={"kind": "openai", "base_url": "http://x/v1"}
    ).render(rec({"t": "a"}))
    assert openai_body["stream_options"] == {"include_usage": True}
    vertex_body = make({"prompt": "{t}", "params": {"stream": True}}).render(rec({"t": "a"}))
    assert "stream_options" not in vertex_body


def test_openai_batch_line_with_a_bad_response_format_is_a_row_error() -> None:
    """A line's own response_format is checked like the spec's; a bad one fails that line only."""
    r = make({}, fmt="openai-batch")
    body = {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}
    with pytest.raises(RowInputError, match="body.response_format.json_schema: expected"):
        r.render(rec({"custom_id": "c", "body": body}))


def test_openai_batch_line_asking_for_several_choices_is_a_row_error() -> None:
    """A line with n > 1 would lose all but the first choice in its one-answer row: that line fails, saying why."""
    r = make({}, fmt="openai-batch")
    with pytest.raises(RowInputError, match="body.n: .*n must be 1"):
        r.render(rec({"custom_id": "c", "body": {"messages": [{"role": "user", "content": "x"}], "n": 3}}))


def test_messages_column_with_media_attaches_the_parts_to_the_last_user_message() -> None:
    """request.messages_column + request.media: the media parts join the last user message, after its text."""
    r = make({"messages_column": "conv", "media": [{"column": "img"}]})
    conv = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "what is in it?"},
    ]
    body = r.render(rec({"conv": conv, "img": "gs://b/cat.jpg"}))
    assert body["messages"][:2] == conv[:2]
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "text", "text": "what is in it?"}, {"type": "image_url", "image_url": "gs://b/cat.jpg"}],
    }
    assert conv[2]["content"] == "what is in it?", "the row's own value is left as it was"
    with pytest.raises(RowInputError, match="no user message to attach request.media to"):
        r.render(rec({"conv": [{"role": "system", "content": "x"}], "img": "gs://b/cat.jpg"}))


def test_params_extra_body_and_request_google_are_merged() -> None:
    """params.extra_body (as the seeds write it) and request.google both reach extra_body; neither is dropped."""
    r = make(
        {
            "prompt": "{text}",
            "google": {"thinking_config": {"thinking_budget": 0}},
            "params": {"extra_body": {"google": {"thought_tag_marker": "think"}, "other": 1}},
        }
    )
    body = r.render(rec({"text": "hi"}))
    assert body["extra_body"] == {
        "other": 1,
        "google": {"thought_tag_marker": "think", "thinking_config": {"thinking_budget": 0}},
    }
    assert r.spec.request.google_options["thought_tag_marker"] == "think"


def test_the_same_google_option_in_both_places_is_refused() -> None:
    """One option set in request.google and in params.extra_body.google: a spec error naming it, not a silent pick."""
    with pytest.raises(SpecError, match="thought_tag_marker set in both request.google and request.params"):
        make(
            {
                "prompt": "{text}",
                "google": {"thought_tag_marker": "a"},
                "params": {"extra_body": {"google": {"thought_tag_marker": "b"}}},
            }
        )


def test_gs_images_on_kind_openai_use_the_url_form() -> None:
    """kind: openai takes image_url as {"url": ...} for gs:// too; Vertex keeps its REST string form."""
    openai = make(
        {"prompt": "{text}", "media": [{"column": "img"}]},
        endpoint={"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
    )
    part = openai.render(rec({"text": "t", "img": "gs://b/cat.jpg"}))["messages"][0]["content"][1]
    assert part == {"type": "image_url", "image_url": {"url": "gs://b/cat.jpg"}}
