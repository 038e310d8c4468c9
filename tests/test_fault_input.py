"""Bad input through the real CLI: one clear message naming the file and line/row (exit 2, nothing sent),
or, when the rest of the file is readable, an `input` error row that says where and what to fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.cli import main
from tests.faults import complaints, finished_table, numbered_rows, record


def _jsonl_bytes(path: Path, lines: list[bytes]) -> None:
    """Replace the job's input with raw lines (to plant bytes JSON cannot carry)."""
    path.write_bytes(b"\n".join(lines) + b"\n")


def _truncated_parquet(directory: Path) -> None:
    """A Parquet copy of the rows, cut in half as an interrupted upload leaves it."""
    whole = directory / "whole.parquet"
    pq.write_table(pa.Table.from_pylist(numbered_rows(200)), whole)
    data = whole.read_bytes()
    (directory / "input.parquet").write_bytes(data[: len(data) // 2])


@dataclass(frozen=True)
class Refusal:
    """A case the run must refuse before sending anything: how to make it, what the message must say."""

    what: str
    says: tuple[str, ...]
    rows: list[dict[str, Any]] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    plant: Callable[[Path], object] | None = None
    line_of_key: str | None = None  # the message must name the job.yaml line where this key is written


ROWS = numbered_rows(6)
REFUSALS = [
    Refusal(
        "truncated Parquet file",
        ("input.parquet", "truncated"),
        spec={"input__path": "input.parquet"},
        plant=_truncated_parquet,
    ),
    Refusal(
        "id column missing",
        ("input.jsonl:line 1", "no id column 'review_id'", "its columns are: id, text", "set input.id_column"),
        spec={"input__id_column": "review_id"},
    ),
    Refusal(
        "id value missing in one row",
        ("input.jsonl:line 3", "no value in id column 'id'"),
        rows=[*ROWS[:2], {"text": "no id here"}, *ROWS[2:]],
    ),
    Refusal(
        "template column missing",
        ("column 'body'", "input.jsonl", "columns are: id, text"),
        spec={"request__prompt": "Classify: {body}"},
    ),
    Refusal(
        "duplicate ids",
        ("input.jsonl:line 5", "duplicate id 'row-00001'", "first at line 2"),
        rows=[*ROWS[:4], {"id": "row-00001", "text": "again"}],
    ),
    Refusal("empty input", ("input.jsonl", "no rows"), rows=[]),
    Refusal(
        "every line unreadable",
        ("input.jsonl", "no line or row could be read", "line 1: not valid JSON"),
        plant=lambda p: _jsonl_bytes(p / "input.jsonl", [b"{not json", b"[1, 2]"]),
    ),
    Refusal(
        "a Latin-1 file",
        (
            "input.jsonl",
            "no line or row could be read",
            "line 1: not UTF-8 text",
            "re-encode the file as UTF-8",
            "iconv -f latin1",
        ),
        plant=lambda p: _jsonl_bytes(
            p / "input.jsonl", [b'{"id": "a", "text": "caf\xe9"}', b'{"id": "b", "text": "th\xe9"}']
        ),
    ),
    Refusal(
        "a directory as input",
        ("rows", "is a directory, not an input file", "set input.path"),
        spec={"input__path": "rows"},
        plant=lambda p: (p / "rows").mkdir(),
    ),
    Refusal(
        "placeholder naming no column",
        ("column 'txt'", "did you mean 'text'"),
        spec={"request__prompt": "Classify: {txt}"},
    ),
    Refusal("bad template syntax", ("request.prompt", "bad template"), spec={"request__prompt": "Classify: {text"}),
    Refusal(
        "unknown spec key",
        ("job.yaml", "limits.concurency: unknown key; did you mean 'concurrency'?"),
        spec={"limits": {"concurency": 4}},
        line_of_key="concurency",
    ),
    Refusal(
        "wrong type",
        ("job.yaml", "limits.concurrency", "integer"),
        spec={"limits__concurrency": "many"},
        line_of_key="concurrency",
    ),
    Refusal(
        "env var unset",
        ("job.yaml", "endpoint.project", "BATCHRUN_UNSET_PROJECT is not set", "export"),
        spec={"endpoint__project": "${BATCHRUN_UNSET_PROJECT}"},
        line_of_key="project",
    ),
    Refusal(
        "YAML syntax error",
        ("job.yaml", "line", "not valid YAML"),
        plant=lambda p: (p / "job.yaml").write_text((p / "job.yaml").read_text() + "limits: [\n"),
    ),
    Refusal(
        "unclosed YAML quote",
        ("job.yaml: line 1, column 7:", "quoted scalar", "close the quote"),
        plant=lambda p: (p / "job.yaml").write_text('name: "test-job\n' + (p / "job.yaml").read_text()),
    ),
    Refusal(
        "unclosed YAML quote closed by a later line's quote",
        ("job.yaml: line 1, column 7:", "a quoted value starts here", "close the quote on line 1"),
        plant=lambda p: (p / "job.yaml").write_text('name: "test-job\nmodel: "m"\n' + (p / "job.yaml").read_text()),
    ),
    Refusal(
        "${column} read as a variable",
        ("request.prompt", "environment variable price is not set", "$${price} for a literal ${price}"),
        spec={"request__prompt": "Price: ${price}"},
        line_of_key="prompt",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.what for c in REFUSALS])
def test_bad_input_is_refused_with_one_clear_message(
    sim: Any,
    make_job: Any,
    case: Refusal,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restored_logging: None,
) -> None:
    """Exit 2 with one `batchrun: error:` message naming the file and line/key, no traceback, nothing sent.

    `batchrun run` is called in-process (the CLI's own `main`): every case stops before the first
    request, so a subprocess per case would only measure interpreter start-up."""
    job = make_job(case.rows if case.rows is not None else ROWS, **case.spec)
    if case.plant is not None:
        case.plant(job.dir)
    monkeypatch.chdir(job.dir)
    monkeypatch.delenv("BATCHRUN_UNSET_PROJECT", raising=False)
    code = main(["run", str(job.spec)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "Traceback" not in stderr
    messages = complaints(stderr)
    assert len(messages) == 1, stderr
    for fragment in case.says:
        assert fragment in messages[0], messages[0]
    if case.line_of_key is not None:
        written = job.spec.read_text().splitlines()
        line = next(n for n, text in enumerate(written, 1) if text.strip().startswith(f"{case.line_of_key}:"))
        assert f"line {line}:" in messages[0], messages[0]
    assert sim.stats()["requests"] == 0
    assert not job.output.exists(), "a refused run must not create its output"
    record(f"bad input: {case.what}", exit_code=2, message=messages[0].replace("\n", " "))


def test_dollar_dollar_brace_is_a_literal_before_a_column_placeholder(sim: Any, make_job: Any) -> None:
    """`$${price}` is sent as a `$` followed by the row's `{price}` value, not read from the environment."""
    job = make_job([{"id": "a", "text": "mug", "price": 7}], request__prompt="{text} for $${price}")
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {"a"})
    assert table["status"].to_list() == ["ok"]
    assert sim.counts() == {"mug for $7": 1}


def test_a_byte_order_mark_does_not_break_line_one(make_job: Any) -> None:
    """A UTF-8 file with a byte-order mark (as Windows tools write it) is read whole: line 1 is a row like any."""
    job = make_job(ROWS)
    path = job.dir / "input.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {r["id"] for r in ROWS})
    assert set(table["status"].to_list()) == {"ok"}


def test_unreadable_lines_become_input_error_rows(make_job: Any) -> None:
    """Broken JSON, non-UTF-8 bytes, a non-object line and a null template value: `input` rows that say where."""
    job = make_job(ROWS)
    good = (job.dir / "input.jsonl").read_bytes().splitlines()
    _jsonl_bytes(
        job.dir / "input.jsonl",
        [
            good[0],
            b'{"id": "broken", "text": "cut',
            good[1],
            b'{"id": "latin1", "text": "caf\xe9"}',
            good[2],
            b"[1, 2, 3]",
            good[3],
            b'{"id": "null-text", "text": null}',
            *good[4:],
        ],
    )
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {r["id"] for r in ROWS} | {"line:2", "line:4", "line:6", "null-text"})
    errors = {row["id"]: row for row in table.filter(table["status"] == "error").iter_rows(named=True)}
    assert set(errors) == {"line:2", "line:4", "line:6", "null-text"}
    assert {row["error_type"] for row in errors.values()} == {"input"}
    expected = {
        "line:2": "input.jsonl:line 2: not valid JSON",
        "line:4": "input.jsonl:line 4: not UTF-8 text",
        "line:6": "input.jsonl:line 6: expected a JSON object",
        "null-text": "input.jsonl:line 8: column 'text' is missing or null",
    }
    for rid, fragment in expected.items():
        assert fragment in errors[rid]["error_message"], errors[rid]["error_message"]
    assert (table["status"] == "ok").sum() == len(ROWS)
    for rid, fragment in expected.items():
        record(
            f"bad input row: {fragment.split(': ', 1)[1]}",
            exit_code=0,
            error_type="input",
            message=errors[rid]["error_message"],
        )


def test_row_over_the_endpoint_size_limit_is_an_error_row(sim: Any, make_job: Any) -> None:
    """A row too large for the endpoint: its own `error` row with the endpoint's 400; the others are ok."""
    rows = [*ROWS, {"id": "huge", "text": "x" * 50_000}]
    job = make_job(rows)
    sim.configure(max_body_bytes=20_000)
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {r["id"] for r in rows})
    huge = table.filter(table["id"] == "huge").row(0, named=True)
    assert (huge["status"], huge["http_status"], huge["attempts"]) == ("error", 400, 1)
    assert "payload size exceeds the limit" in huge["error_message"]
    assert (table["status"] == "ok").sum() == len(ROWS)
    record(
        "bad input row: over the endpoint's size limit",
        exit_code=0,
        error_type=huge["error_type"],
        http_status=400,
        attempts=1,
        message=huge["error_message"],
    )
