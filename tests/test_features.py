"""Every feature of Vertex's OpenAI-compatible API, end to end: a job spec -> the real CLI -> the simulator ->
Parquet read back, with the request bodies the simulator received compared to Google's examples (tests/seeds.py).

The simulator is reached at its Vertex paths: the base URL is batchrun's own `vertex_url` for the spec's
location, API version and endpoint id, with only the host swapped for the simulator's.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import polars as pl
import yaml

from batchrun import assistant_message
from batchrun.endpoints import vertex_url
from batchrun.spec import EndpointSpec
from tests import seeds
from tests.conftest import REPO, Job, Sim, base_env, read_output, run_cli, write_rows

VOLATILE = ["response_id", "latency_ms", "ttft_ms", "finished_at", "request_hash"]  # the hash covers `stream`


def vertex(sim: Sim, **fields: Any) -> dict[str, Any]:
    """An endpoint section whose base URL is batchrun's Vertex URL for `fields`, on the simulator's host."""
    spec = EndpointSpec(kind="vertex", project=seeds.PROJECT, **fields)
    return {"kind": "vertex", "project": seeds.PROJECT, **fields, "base_url": vertex_url(spec, host=sim.url)}


def recorded(sim: Sim, text: str | None = None) -> list[dict[str, Any]]:
    """The recorded requests ({path, body}), optionally only those whose JSON mentions `text`."""
    return [r for r in sim.requests() if text is None or text in json.dumps(r["body"])]


def only(sim: Sim, text: str | None = None) -> dict[str, Any]:
    """The one recorded request (mentioning `text`)."""
    found = recorded(sim, text)
    assert len(found) == 1, [r["body"] for r in found]
    return found[0]


def run_ok(job: Job, *args: str, output: str | None = None) -> pl.DataFrame:
    """`batchrun run` exits 0; the output table (of output.path, or `output`) sorted by id."""
    result = job.run("run", *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return read_output(job.dir / (output or yaml.safe_load(job.spec.read_text())["output"]["path"])).sort("id")


def rows_by_id(table: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """The table as {id: row}."""
    return {row["id"]: row for row in table.iter_rows(named=True)}


def comparable(table: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows without per-request values (ids, timings, request hashes); tool call ids are random per request."""
    rows = table.drop(VOLATILE).sort("id").to_dicts()
    for row in rows:
        if row["tool_calls"]:
            row["tool_calls"] = [{**c, "id": None} for c in json.loads(row["tool_calls"])]
    return rows


# --- thinking ---------------------------------------------------------------------------------------


def test_thinking_config_thoughts_go_to_reasoning_streamed_or_not(sim: Sim, make_job: Any) -> None:
    """The seed's thinking_config request: thoughts in `reasoning`, the answer alone in `content`, the same rows
    whether streamed or not."""
    job: Job = make_job(
        rows=[{"id": "primes", "messages": seeds.THINKING_CONFIG["messages"]}],
        endpoint=vertex(sim),
        model="google/gemini-2.5-flash-preview-04-17",
        request={
            "messages_column": "messages",
            "params": {"stream": True},
            "google": {
                "thinking_config": {"include_thoughts": True, "thinking_budget": 10000},
                "thought_tag_marker": "think",
            },
        },
        output__keep_columns=[],
    )
    streamed = run_ok(job)
    sent = only(sim)
    assert sent["body"] == seeds.THINKING_CONFIG
    assert sent["path"] == seeds.path()
    row = streamed.row(0, named=True)
    assert row["reasoning"].startswith("Thinking about: Are there any primes")
    assert "<think>" not in row["content"] and "Thinking about" not in row["content"]
    assert row["content"].startswith("Simulated answer to: Are there any primes")
    assert 0 < row["reasoning_tokens"] <= 10000
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"] + row["reasoning_tokens"]
    assert row["ttft_ms"] is not None

    plain = run_ok(job, "--set", "request.params.stream=false", "--set", "output.path=plain", output="plain")
    assert plain["ttft_ms"].to_list() == [None]
    assert comparable(plain) == comparable(streamed)


def test_reasoning_effort_low_and_none(sim: Sim, make_job: Any) -> None:
    """reasoning_effort is sent as the SDK example sends it; low thinks within 1,024 tokens, none not at all."""
    job: Job = make_job(
        rows=[{"id": "ai", "text": "Explain to me how AI works"}],
        endpoint=vertex(sim),
        model="google/gemini-2.5-flash-preview-04-17",
        request={"system": "You are a helpful assistant.", "prompt": "{text}", "params": {"reasoning_effort": "low"}},
    )
    low = run_ok(job).row(0, named=True)
    assert only(sim)["body"] == seeds.REASONING_EFFORT
    assert 0 < low["reasoning_tokens"] <= 1024 and low["reasoning"] is None

    off = run_ok(job, "--set", "request.params.reasoning_effort=none", "--set", "output.path=none", output="none").row(
        0, named=True
    )
    assert only(sim, '"none"')["body"]["reasoning_effort"] == "none"
    assert off["status"] == "ok" and off["reasoning_tokens"] is None
    assert off["total_tokens"] == off["prompt_tokens"] + off["completion_tokens"]


def test_reasoning_effort_with_thinking_config_is_refused(sim: Sim, make_job: Any) -> None:
    """Setting both is a spec error (exit 2) before any request; Vertex accepts only one."""
    job: Job = make_job(
        n=2,
        endpoint=vertex(sim),
        request={
            "prompt": "{text}",
            "params": {"reasoning_effort": "high"},
            "google": {"thinking_config": {"thinking_budget": 100}},
        },
    )
    for command in ("validate", "run"):
        result = job.run(command)
        assert result.returncode == 2
        assert "set params.reasoning_effort or google.thinking_config, not both" in result.stderr
    assert sim.stats()["requests"] == 0


# --- structured output ------------------------------------------------------------------------------


def test_json_schema_from_a_file_is_parsed_into_parsed(sim: Sim, make_job: Any) -> None:
    """A JSON Schema file named in response_format is sent inline, as the SDK's parse() sends CalendarEvent;
    each answer is checked against it and lands in `parsed`."""
    expected = seeds.structured_output()
    job: Job = make_job(
        rows=[{"id": "fair", "text": "Alice and Bob are going to a science fair on Friday."}],
        endpoint=vertex(sim),
        model=expected["model"],
        request={
            "system": "Extract the event information.",
            "prompt": "{text}",
            "params": {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "CalendarEvent", "strict": True, "schema": "schemas/calendar-event.json"},
                }
            },
        },
    )
    (job.dir / "schemas").mkdir()
    shutil.copy(REPO / "jobs" / "schemas" / "calendar-event.json", job.dir / "schemas")
    row = run_ok(job).row(0, named=True)
    assert only(sim)["body"] == expected
    schema = expected["response_format"]["json_schema"]["schema"]
    jsonschema.validate(json.loads(row["parsed"]), schema)
    assert row["status"] == "ok" and row["attempts"] == 1


def test_invalid_answers_are_retried_then_become_invalid_output_rows(sim: Sim, make_job: Any) -> None:
    """An inline json_schema whose answers never parse: each row is asked again, then saved as an
    `invalid_output` error with the model's text kept in `content` and the tokens it cost."""
    sim.configure(rate_invalid_json_answer=1.0)
    schema = {"type": "object", "properties": {"sentiment": {"type": "string"}}, "required": ["sentiment"]}
    job: Job = make_job(
        n=3,
        endpoint=vertex(sim),
        request={
            "prompt": "{text}",
            "params": {"response_format": {"type": "json_schema", "json_schema": {"name": "review", "schema": schema}}},
        },
        retry={"max_attempts": 3, "timeout_s": 10},
    )
    table = run_ok(job)
    assert recorded(sim, "review number 0")[0]["body"]["response_format"]["json_schema"]["schema"] == schema
    assert table.height == 3 and set(table["status"]) == {"error"}
    assert set(table["error_type"]) == {"invalid_output"} and set(table["attempts"]) == {3}
    assert sim.stats()["requests"] == 9
    for row in table.iter_rows(named=True):
        assert row["content"].startswith('{"sentiment": "') and row["parsed"] is None
        assert "not valid JSON" in row["error_message"] and row["prompt_tokens"] > 0


def test_json_object_without_retries_on_invalid_output(sim: Sim, make_job: Any) -> None:
    """json_object answers are parsed into `parsed`; with retry.on_invalid_output off a bad one is final at once."""
    sim.configure(rate_invalid_json_answer=0.5)
    job: Job = make_job(
        n=12,
        endpoint=vertex(sim),
        request={"prompt": "{text}", "params": {"response_format": {"type": "json_object"}}},
        retry={"max_attempts": 5, "timeout_s": 10, "on_invalid_output": False},
    )
    table = run_ok(job)
    assert sim.stats()["requests"] == 12 and set(table["attempts"]) == {1}
    good, bad = table.filter(pl.col("status") == "ok"), table.filter(pl.col("status") == "error")
    assert good.height > 0 and bad.height > 0
    for row in good.iter_rows(named=True):
        assert json.loads(row["parsed"]) == {"answer": f"Simulated answer to: {row['text']}"}
    assert set(bad["error_type"]) == {"invalid_output"} and bad["content"].null_count() == 0


# --- function calling --------------------------------------------------------------------------------


def test_tools_from_files_and_the_signature_round_trip(sim: Sim, make_job: Any) -> None:
    """Tools and tool_choice read from files; `tool_calls` keeps id, name, arguments and the thought_signature,
    and sending those calls back (assistant_message) satisfies Gemini 3's signature check."""
    job: Job = make_job(
        rows=[{"id": "chicago", "text": "What's the weather like in Chicago today?"}],
        endpoint=vertex(sim),
        model="google/gemini-2.0-flash",
        request={"prompt": "{text}", "params": {"tools": "tools.json", "tool_choice": "choice.yaml"}},
    )
    (job.dir / "tools.json").write_text(json.dumps([seeds.WEATHER_TOOL]))
    (job.dir / "choice.yaml").write_text("type: function\nfunction: {name: get_weather}\n")
    row = run_ok(job).row(0, named=True)
    choice = {"type": "function", "function": {"name": "get_weather"}}
    assert only(sim)["body"] == {**seeds.FUNCTION_CALLING, "tool_choice": choice}
    assert row["finish_reason"] == "tool_calls" and row["content"] is None
    (call,) = json.loads(row["tool_calls"])
    assert call["id"].startswith("function-call-") and call["name"] == "get_weather"
    assert json.loads(call["arguments"])["location"] == "Chicago"
    assert call["extra_content"]["google"]["thought_signature"]

    history = [
        {"role": "user", "content": "What's the weather like in Chicago today?"},
        assistant_message(row["tool_calls"]),
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temperature": 21, "unit": "celsius"}'},
    ]
    unsigned = [
        *history[:1],
        {
            **history[1],
            "tool_calls": [{k: v for k, v in c.items() if k != "extra_content"} for c in history[1]["tool_calls"]],
        },
        history[2],
    ]
    follow_up = make_job(
        rows=[
            {"id": "chicago", "messages": history},
            {"id": "unsigned", "messages": unsigned},
            {"id": "shirt", "messages": seeds.SHIRT_MESSAGES},
        ],
        endpoint=vertex(sim, location="global"),
        model="google/gemini-3.1-pro-preview",
        request={"messages_column": "messages", "params": {"tools": [seeds.GET_IMAGE_TOOL]}},
        output={"path": "out2"},
    )
    answers = rows_by_id(run_ok(follow_up))
    assert answers["chicago"]["status"] == "ok" and "temperature" in answers["chicago"]["content"]
    assert answers["unsigned"]["status"] == "error" and answers["unsigned"]["http_status"] == 400
    assert "thought_signature" in answers["unsigned"]["error_message"]
    assert answers["shirt"]["content"].endswith(
        "I received the file dress.jpg (image/jpg, gs://cloud-samples-data/generative-ai/image/dress.jpg)."
    )
    shirt = only(sim, "Show me the green shirt")
    assert shirt["body"] == seeds.MULTIMODAL_FUNCTION_RESPONSE
    assert shirt["path"] == seeds.path("global")
    assert [r["body"]["messages"] for r in recorded(sim, "temperature")].count(history) == 1


# --- media in ------------------------------------------------------------------------------------------


def test_media_columns_of_every_type(sim: Sim, make_job: Any) -> None:
    """Local files go inline with their MIME type, gs:// and https:// URIs as URIs in the seeds' forms; a missing
    file is an `input` error row naming the path while every other row is answered."""
    media = REPO / "sample_data" / "media"
    rows = [
        {
            "id": "scones",
            "question": "Describe this image",
            "photo": "gs://cloud-samples-data/generative-ai/image/scones.jpg",
        },
        {"id": "pixel", "question": "Describe this: ", "clip": "gs://cloud-samples-data/generative-ai/audio/pixel.mp3"},
        {
            "id": "local",
            "question": "Describe all of these",
            "photo": "sunset.png",
            "clip": "greeting.wav",
            "movie": "walk.mp4",
            "doc": "invoice.pdf",
        },
        {"id": "web", "question": "Describe the video", "movie": "https://example.com/clips/walk.mov"},
        {"id": "missing", "question": "Describe this image", "photo": "photos/nope.png"},
    ]
    job: Job = make_job(
        rows=rows,
        endpoint=vertex(sim),
        model="google/gemini-2.0-flash-001",
        request={
            "prompt": "{question}",
            "media": [
                {"column": "photo", "type": "image"},
                {"column": "clip", "type": "audio"},
                {"column": "movie", "type": "video"},
                {"column": "doc", "type": "file"},
            ],
        },
        output__keep_columns=[],
    )
    for name in ("sunset.png", "greeting.wav", "invoice.pdf"):
        shutil.copy(media / name, job.dir / name)
    movie = b"\x00\x00\x00\x18ftypmp42" + bytes(16)
    (job.dir / "walk.mp4").write_bytes(movie)
    table = rows_by_id(run_ok(job))

    assert only(sim, "scones")["body"] == seeds.IMAGE_GS
    assert only(sim, "pixel.mp3")["body"] == seeds.AUDIO_GS
    local = only(sim, "Describe all of these")["body"]["messages"][0]["content"]

    def inline(name: str) -> str:
        return base64.b64encode((job.dir / name).read_bytes()).decode()

    assert local == [
        {"type": "text", "text": "Describe all of these"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{inline('sunset.png')}"}},
        {"type": "input_audio", "input_audio": {"data": inline("greeting.wav"), "format": "wav"}},
        {"type": "image_url", "image_url": {"url": f"data:video/mp4;base64,{inline('walk.mp4')}"}},
        {"type": "image_url", "image_url": {"url": f"data:application/pdf;base64,{inline('invoice.pdf')}"}},
    ]
    web = only(sim, "walk.mov")["body"]["messages"][0]["content"][1]
    assert web == {"type": "image_url", "image_url": {"url": "https://example.com/clips/walk.mov"}}
    assert (
        "1 image (image/png, 74 bytes) and 1 audio clip (audio/wav, 1644 bytes) and 1 video (video/mp4, 28 bytes)"
        " and 1 file (application/pdf, 714 bytes)" in table["local"]["content"]
    )
    assert "1 video (video/quicktime, https://example.com/clips/walk.mov)" in table["web"]["content"]
    missing = table["missing"]
    assert (missing["status"], missing["error_type"], missing["attempts"]) == ("error", "input", 0)
    assert "input.jsonl:line 5: media column 'photo': cannot read photos/nope.png" in missing["error_message"]
    assert [r["status"] for k, r in sorted(table.items()) if k != "missing"] == ["ok"] * 4
    assert len(recorded(sim)) == 4


# --- media out ------------------------------------------------------------------------------------------


def test_generated_images_land_in_media_and_export_as_files(sim: Sim, make_job: Any) -> None:
    """modalities [image]: the bytes go to `media`, the type to `media_mime_type`; export-media writes them
    as files named by id."""
    job: Job = make_job(
        rows=[{"id": "cat", "text": "Generate an image of a cat."}, {"id": "dogs/1", "text": "Generate a dog."}],
        endpoint=vertex(sim, location="global"),
        model="google/gemini-3-pro-image-preview",
        request={"prompt": "{text}", "params": {"modalities": ["image"]}},
    )
    table = rows_by_id(run_ok(job))
    sent = only(sim, "cat")
    assert sent["body"] == seeds.IMAGE_GENERATION and sent["path"] == seeds.path("global")
    for row in table.values():
        assert row["media"].startswith(b"\x89PNG\r\n\x1a\n") and row["media_mime_type"] == "image/png"
        assert row["content"] is None and row["completion_tokens"] == 1290
    exported = job.run("export-media", "images")
    assert exported.returncode == 0, exported.stderr
    assert "wrote 2 media files" in exported.stdout
    files = {p.name: p.read_bytes() for p in (job.dir / "images").iterdir()}
    assert files == {"cat.png": table["cat"]["media"], "dogs%2F1.png": table["dogs/1"]["media"]}


def test_generated_audio_exports_as_wav(sim: Sim, make_job: Any) -> None:
    """modalities [audio]: WAV bytes in `media` with audio/wav, exported as <id>.wav."""
    job: Job = make_job(
        rows=[{"id": "hello", "text": "Say hello."}],
        endpoint=vertex(sim),
        request={"prompt": "{text}", "params": {"modalities": ["audio"]}},
    )
    row = run_ok(job).row(0, named=True)
    assert only(sim)["body"]["modalities"] == ["audio"]
    assert row["media"][:4] == b"RIFF" and row["media_mime_type"] == "audio/wav"
    assert job.run("export-media", "sounds").returncode == 0
    assert (job.dir / "sounds" / "hello.wav").read_bytes() == row["media"]


# --- streaming -----------------------------------------------------------------------------------------


def test_streamed_tool_call_arguments_assemble_into_the_same_rows(sim: Sim, make_job: Any) -> None:
    """stream_function_call_arguments: argument pieces join into whole calls (keyed by id, as Vertex's indexes
    are off), with usage from the last chunk and ttft_ms; the rows equal a non-streamed run's."""
    rows = [
        {"id": "boston-delhi", "messages": seeds.STREAM_FUNCTION_CALL_ARGUMENTS["messages"]},
        {"id": "shirt", "messages": seeds.SHIRT_MESSAGES},
    ]
    job: Job = make_job(
        rows=rows,
        endpoint=vertex(sim, location="global"),
        model="google/gemini-3.1-pro-preview",
        request={
            "messages_column": "messages",
            "params": {"tools": [seeds.CURRENT_WEATHER_TOOL], "stream": True},
            "google": {"stream_function_call_arguments": True},
        },
        output__keep_columns=[],
    )
    streamed = run_ok(job)
    sent = only(sim, "Boston")
    assert sent["body"] == seeds.STREAM_FUNCTION_CALL_ARGUMENTS and sent["path"] == seeds.path("global")
    row = rows_by_id(streamed)["boston-delhi"]
    calls = json.loads(row["tool_calls"])
    assert [json.loads(c["arguments"]) for c in calls] == [
        {"location": "Boston", "unit": "celsius"},
        {"location": "New Delhi", "unit": "celsius"},
    ]
    assert calls[0]["extra_content"]["google"]["thought_signature"] and "extra_content" not in calls[1]
    assert len({c["id"] for c in calls}) == 2
    assert row["finish_reason"] == "tool_calls" and row["traffic_type"] == "ON_DEMAND"
    assert row["ttft_ms"] is not None and row["completion_tokens"] > 0

    plain = run_ok(job, "--set", "request.params.stream=false", "--set", "output.path=plain", output="plain")
    assert comparable(plain) == comparable(streamed)


# --- endpoints -------------------------------------------------------------------------------------------


def test_self_deployed_endpoint_on_global_v1beta1(sim: Sim, make_job: Any) -> None:
    """endpoint_id and no model: the body has no model and the path names the endpoint, as the seeds' plain and
    streamed requests show; the streamed row equals the plain one."""
    job: Job = make_job(
        rows=[{"id": "story", "text": "Write a story about a magic backpack."}],
        endpoint=vertex(sim, location="global", api_version="v1beta1", endpoint_id=seeds.ENDPOINT_ID),
        model=None,
        request={"prompt": "{text}"},
    )
    plain = run_ok(job)
    sent = only(sim)
    assert sent["body"] == seeds.SELF_DEPLOYED
    assert sent["path"] == seeds.path("global", "v1beta1", seeds.ENDPOINT_ID)
    row = plain.row(0, named=True)
    assert row["status"] == "ok" and row["model"] == seeds.ENDPOINT_ID and row["content"]
    streamed = run_ok(job, "--set", "request.params.stream=true", "--set", "output.path=streamed", output="streamed")
    assert only(sim, '"stream"')["body"] == seeds.SELF_DEPLOYED_STREAMING
    assert comparable(streamed) == comparable(plain)


def test_vertex_urls_match_the_seeds() -> None:
    """Regional, global, v1beta1 and self-deployed roots are the seeds' URLs without /chat/completions."""
    cases = {
        "regional_v1beta1": {"api_version": "v1beta1"},
        "regional_v1": {},
        "global_v1": {"location": "global"},
        "global_v1beta1": {"location": "global", "api_version": "v1beta1"},
        "self_deployed": {"location": "global", "api_version": "v1beta1", "endpoint_id": seeds.ENDPOINT_ID},
    }
    for name, fields in cases.items():
        spec = EndpointSpec(kind="vertex", project=seeds.PROJECT, **fields)
        assert vertex_url(spec) + "/chat/completions" == seeds.URLS[name]


def batch_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """One line of an OpenAI Batch API file."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_openai_kind_against_the_gemini_api_with_a_batch_file(sim: Sim, tmp_path: Path) -> None:
    """kind: openai on the Gemini Developer API's OpenAI path, streamed, from an OpenAI Batch file: each body is
    sent as is plus the spec's params (and stream_options, so usage comes back); a line's own response_format is
    parsed; an answer cut off before any token (no `message`, no `completion_tokens`) is an ok row with nulls."""
    sim.configure(api_key="gemini-key-123")
    hello = {"model": "gemini-2.0-flash", "messages": [{"role": "user", "content": "Hello World"}]}
    lines = [
        batch_line("full", hello),
        batch_line("cut", {"messages": [{"role": "user", "content": "Write a long essay."}], "max_tokens": 1}),
        batch_line(
            "json",
            {"messages": [{"role": "user", "content": "Name a colour."}], "response_format": {"type": "json_object"}},
        ),
        batch_line("bad", {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json"}}),
    ]
    write_rows(tmp_path / "batch.jsonl", lines)
    spec = {
        "name": "gemini-api",
        "input": {"path": "batch.jsonl"},
        "endpoint": {"kind": "openai", "base_url": f"{sim.url}/v1beta/openai/", "api_key_env": "GEMINI_API_KEY"},
        "model": "gemini-2.5-flash",
        "request": {"params": {"stream": True}},
        "output": {"path": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    result = run_cli(["run", "job.yaml"], env={**base_env(), "GEMINI_API_KEY": "gemini-key-123"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = rows_by_id(read_output(tmp_path / "out"))
    streamed = {"stream": True, "stream_options": {"include_usage": True}}
    assert only(sim, "Hello World") == {"path": "/v1beta/openai/chat/completions", "body": {**hello, **streamed}}
    assert only(sim, "essay")["body"]["model"] == "gemini-2.5-flash"
    full, cut, answer, bad = (table[k] for k in ("full", "cut", "json", "bad"))
    assert (full["status"], full["model"], full["total_tokens"] > 0) == ("ok", "gemini-2.0-flash", True)
    assert (cut["status"], cut["finish_reason"], cut["content"], cut["completion_tokens"]) == (
        "ok",
        "length",
        None,
        None,
    )
    assert cut["prompt_tokens"] > 0 and cut["total_tokens"] == cut["prompt_tokens"]
    assert json.loads(answer["parsed"]) == {"answer": "Simulated answer to: Name a colour."}
    assert (bad["status"], bad["error_type"]) == ("error", "input")
    assert "batch.jsonl:line 4: body.response_format: expected {type: text | json_object" in bad["error_message"]
    assert len(recorded(sim)) == 3
