"""Broken answers through the real CLI: each shape a 200 can carry ends as the right row, never an ok row of nulls.

The simulator breaks half the answers (seeded) into one shape; one request at a time, so the seed decides
which. With two attempts a row, a row broken once is retried to an ok row and a row broken twice is an
error row with the shape's error_type: the run exits 0 with both kinds of rows saved.
docs/reliability.md ("Broken answers") cites these tests.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults import finished_table, numbered_rows, record

SEED = 0  # with 4 rows and 2 attempts: one row broken twice, one broken once, two never
SLOW = pytest.mark.slow
TRANSPORTS = ["direct", "openai"]

# shape, whether streamed, the error row's error_type and http_status
RETRIED = [
    ("error_body", False, "malformed_response", None),
    ("error_list_body", False, "malformed_response", None),
    ("empty_choices", False, "malformed_response", None),
    ("no_choices", False, "malformed_response", None),
    ("bad_media", False, "invalid_output", None),
    ("stream_cut", True, "stream_cut", None),
    ("stream_error", True, "transient", 500),
    ("stream_error_list", True, "transient", 500),
    ("error_body", True, "malformed_response", None),
    ("bad_media", True, "invalid_output", None),
]


def _cases() -> list[Any]:
    """Every shape over both transports. The default run takes each shape once, plain ones alternating
    between the transports (a stream takes the same SDK path under either); the rest run under -m slow."""
    cases = []
    for k, (shape, stream, error_type, status) in enumerate(RETRIED):
        default = "direct" if stream else TRANSPORTS[k % 2]
        for transport in TRANSPORTS:
            marks = [] if transport == default else [SLOW]
            name = f"{shape}-{'stream' if stream else 'plain'}-{transport}"
            cases.append(pytest.param(shape, stream, error_type, status, transport, id=name, marks=marks))
    return cases


def _job(make_job: Any, transport: str, stream: bool, attempts: int = 2) -> Any:
    """A 4-row job sent one request at a time with `attempts` attempts a row."""
    request = {"prompt": "Classify: {text}", "params": {"stream": True}} if stream else {"prompt": "Classify: {text}"}
    return make_job(
        numbered_rows(4),
        endpoint__transport=transport,
        request=request,
        limits__concurrency=1,
        retry__max_attempts=attempts,
    )


@pytest.mark.parametrize(("shape", "stream", "error_type", "status", "transport"), _cases())
def test_a_broken_answer_is_retried_then_an_error_row(
    sim: Any, make_job: Any, shape: str, stream: bool, error_type: str, status: int | None, transport: str
) -> None:
    """Half the answers broken: a row broken once ends ok on its second attempt, a row broken twice is an
    error row naming what was wrong; no ok row lacks its answer, and the run exits 0."""
    job = _job(make_job, transport, stream)
    sim.configure(seed=SEED, broken_answer=shape, rate_broken=0.5)
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {f"row-{i:05d}" for i in range(4)})
    ok, errors = table.filter(status="ok"), table.filter(status="error")
    assert sorted(ok["attempts"].to_list()) == [1, 1, 2] and errors["attempts"].to_list() == [2]
    assert ok["content"].null_count() == 0 and set(ok["finish_reason"]) == {"stop"}
    assert ok["media"].null_count() == len(ok)
    error = errors.row(0, named=True)
    assert (error["error_type"], error["http_status"]) == (error_type, status), error["error_message"]
    assert sim.stats()["broken"] == 3
    record(
        f"broken answer: {shape}{' (stream)' if stream else ''}",
        transport=transport,
        error_type=error_type,
        message=error["error_message"],
    )


@pytest.mark.parametrize("transport", [pytest.param("direct"), pytest.param("openai", marks=SLOW)])
def test_a_400_error_event_in_a_stream_is_final(sim: Any, make_job: Any, transport: str) -> None:
    """`data: {"error": {"code": 400}}` mid-stream is a refusal like an HTTP 400: an error row after one attempt."""
    job = _job(make_job, transport, stream=True, attempts=4)
    sim.configure(seed=SEED, broken_answer="stream_error", rate_broken=1.0, broken_status=400)
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {f"row-{i:05d}" for i in range(4)})
    assert set(table["status"]) == {"error"} and set(table["attempts"]) == {1}
    assert set(table["error_type"]) == {"http"} and set(table["http_status"]) == {400}
    assert "INVALID_ARGUMENT" in table["error_message"][0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_plain_json_reply_to_a_stream_is_an_ok_row(sim: Any, make_job: Any, transport: str) -> None:
    """A server that answers `stream: true` with a whole JSON completion gives the same ok rows, once each."""
    job = _job(make_job, transport, stream=True)
    sim.configure(broken_answer="json_for_stream", rate_broken=1.0)
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {f"row-{i:05d}" for i in range(4)})
    assert set(table["status"]) == {"ok"} and set(table["attempts"]) == {1}
    assert table["content"].null_count() == 0 and table["total_tokens"].null_count() == 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_image_generation_keeps_the_bytes_and_the_thought_signature(sim: Any, make_job: Any, stream: bool) -> None:
    """`modalities: [image]`: the whole PNG (joined from a stream's pieces) and the message's extra_content."""
    params: dict[str, Any] = {"modalities": ["image"], **({"stream": True} if stream else {})}
    job = make_job(
        numbered_rows(2),
        model="google/gemini-3-pro-image-preview",
        request={"prompt": "Draw: {text}", "params": params},
    )
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {"row-00000", "row-00001"})
    for row in table.iter_rows(named=True):
        assert row["media"].startswith(b"\x89PNG") and row["media_mime_type"] == "image/png"
        assert '"thought_signature"' in row["extra_content"]
