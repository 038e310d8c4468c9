"""status, report and export over a known output: counts per shard, tokens, cost, errors, latency, per minute."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.commands.export import export_job
from batchrun.commands.report import build_report, format_report
from batchrun.commands.status import format_status, job_status
from batchrun.errors import OutputError, SpecError
from batchrun.schema import output_schema
from batchrun.spec import JobSpec, parse_spec
from tests.conftest import Gcs, duckdb_rows, write_rows

T0 = datetime.datetime(2026, 11, 21, 12, 0, 5, tzinfo=datetime.UTC)


def ok(
    rid: str,
    traffic: str | None,
    tokens: tuple[int, int | None, int, int],
    latency: float,
    minute: int,
    attempts: int = 1,
) -> dict[str, Any]:
    prompt, completion, reasoning, total = tokens
    return {
        "id": rid,
        "status": "ok",
        "content": "x",
        "traffic_type": traffic,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
        "total_tokens": total,
        "attempts": attempts,
        "latency_ms": latency,
        "finished_at": T0 + datetime.timedelta(minutes=minute),
    }


def error(rid: str, kind: str, status: int, minute: int, attempts: int = 1) -> dict[str, Any]:
    return {
        "id": rid,
        "status": "error",
        "error_type": kind,
        "http_status": status,
        "attempts": attempts,
        "error_message": f"HTTP {status}: refused",
        "finished_at": T0 + datetime.timedelta(minutes=minute),
    }


ROWS = {
    "part-0000of0002-run-00001.parquet": [
        ok("a", "ON_DEMAND", (100, 50, 0, 150), 10.0, 0),
        ok("b", "ON_DEMAND", (200, 100, 300, 600), 20.0, 0, attempts=2),  # Vertex: thoughts beside completion
        ok("c", "ON_DEMAND_FLEX", (1000, 500, 200, 1500), 30.0, 1),  # OpenAI-style: thoughts inside completion
    ],
    "part-0001of0002-run-00001.parquet": [
        ok("d", "PROVISIONED_THROUGHPUT", (10, None, 0, 17), 40.0, 1),  # cut off: no completion_tokens
        error("e", "rate_limited", 429, 1, attempts=8),
        error("f", "http", 400, 3),
        error("g", "http", 400, 3),
    ],
}
INPUT_IDS = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]


@pytest.fixture
def spec(tmp_path: Path) -> JobSpec:
    """A job whose output holds ROWS in two shards' parts, and whose input has two more (pending) ids."""
    out = tmp_path / "out"
    out.mkdir()
    for name, rows in ROWS.items():
        pq.write_table(pa.Table.from_pylist(rows, schema=output_schema([])), out / name)
    write_rows(tmp_path / "in.jsonl", [{"id": rid, "text": f"text {rid}", "n": i} for i, rid in enumerate(INPUT_IDS)])
    return parse_spec(
        {
            "name": "known",
            "input": {"path": str(tmp_path / "in.jsonl"), "id_column": "id"},
            "model": "m",
            "endpoint": {"kind": "simulator"},
            "request": {"prompt": "{text}"},
            "output": {"path": str(out)},
            "report": {
                "prices": {
                    "ON_DEMAND": {"input": 1, "output": 10},
                    "ON_DEMAND_FLEX": {"input": 0.5, "output": 5, "reasoning": 4},
                }
            },
        }
    )


def test_report_figures(spec: JobSpec) -> None:
    """Totals are the column sums; cost prices input, answer and thinking tokens per traffic type."""
    report = build_report(spec)
    assert report["rows"] == {"total": 7, "ok": 4, "error": 3}
    assert report["requests"] == 1 + 2 + 1 + 1 + 8 + 1 + 1
    assert report["tokens"] == {
        "prompt_tokens": 1310,
        "completion_tokens": 650,
        "reasoning_tokens": 500,
        "total_tokens": 2267,
    }
    by_type = {g["traffic_type"]: g for g in report["by_traffic_type"]}
    assert by_type["ON_DEMAND"]["rows"] == 2 and by_type["ON_DEMAND"]["total_tokens"] == 750
    # ON_DEMAND: 100*1 + 50*10 and 200*1 + 100*10 + 300*10 (thinking bills as output by default)
    assert by_type["ON_DEMAND"]["cost"] == pytest.approx(4800 / 1e6)
    # ON_DEMAND_FLEX: 1000*0.5 + (500-200)*5 + 200*4: the 200 thinking tokens inside completion count once
    assert by_type["ON_DEMAND_FLEX"]["cost"] == pytest.approx(2800 / 1e6)
    assert by_type["PROVISIONED_THROUGHPUT"]["cost"] is None
    assert by_type[None]["rows"] == 3 and by_type[None]["total_tokens"] == 0
    cost = report["cost"]
    assert (cost["currency"], cost["total"]) == ("USD", pytest.approx(7600 / 1e6))
    assert (cost["unpriced_traffic_types"], cost["unpriced_rows"]) == (["PROVISIONED_THROUGHPUT"], 1)
    assert cost["prices"]["ON_DEMAND_FLEX"] == {
        "input": 0.5,
        "cached_input": 0.5,
        "output": 5,
        "reasoning": 4,
        "source": "report.prices",
    }
    assert [(e["error_type"], e["http_status"], e["rows"]) for e in report["errors"]] == [
        ("http", 400, 2),
        ("rate_limited", 429, 1),
    ]
    assert report["latency_ms"] == {"rows": 4, "p50": 25.0, "p90": 37.0, "p99": 39.7, "mean": 25.0, "max": 40.0}
    assert [(m["minute"][11:16], m["rows"], m["requests"], m["tokens"]) for m in report["per_minute"]] == [
        ("12:00", 2, 3, 750),
        ("12:01", 3, 10, 1517),
        ("12:03", 2, 2, 0),
    ]


def test_report_latency_matches_duckdb_quantile_cont(spec: JobSpec) -> None:
    """The percentiles are DuckDB's quantile_cont over the same files, as docs/analysts.md promises."""
    query = (
        f"SELECT quantile_cont(latency_ms, [0.5, 0.9, 0.99]) FROM read_parquet('{spec.output.path}/*.parquet') "
        "WHERE status = 'ok'"
    )
    (row,) = duckdb_rows(query)
    latency = build_report(spec)["latency_ms"]
    assert [latency["p50"], latency["p90"], latency["p99"]] == pytest.approx(row[0])


def test_report_text_shows_every_section(spec: JobSpec) -> None:
    """The terminal report has the tables an analyst looks for, with the cost and what is unpriced."""
    text = format_report(build_report(spec))
    for heading in ("tokens by traffic_type:", "errors:", "latency (ms, ok rows):", "per minute (UTC):"):
        assert heading in text
    assert "total cost: 0.0076 USD (no price for: PROVISIONED_THROUGHPUT, 1 rows;" in text
    assert "prices (USD per million tokens):" in text and "report.prices" in text
    assert "ON_DEMAND_FLEX" in text and "0.0028" in text


def test_cached_tokens_are_priced_at_cached_input(spec: JobSpec) -> None:
    """Prompt tokens served from the cache cost cached_input, the rest of the prompt input."""
    rows = [{**ok("z", "ON_DEMAND", (1000, 10, 0, 1010), 5.0, 0), "cached_tokens": 800}]
    table = pa.Table.from_pylist(rows, schema=output_schema([]))
    priced = spec.model_copy(
        update={
            "report": parse_spec(
                {
                    "name": "j",
                    "input": {"path": "i"},
                    "output": {"path": "o"},
                    "model": "m",
                    "endpoint": {"kind": "simulator"},
                    "report": {"prices": {"ON_DEMAND": {"input": 1, "cached_input": 0.1, "output": 10}}},
                }
            ).report
        }
    )
    (group,) = build_report(priced, table)["by_traffic_type"]
    assert group["cached_tokens"] == 800
    assert group["cost"] == pytest.approx((200 * 1 + 800 * 0.1 + 10 * 10) / 1e6)


def test_prices_are_validated_with_the_key_named() -> None:
    """A misspelt price key is refused, naming the path and the closest valid key."""
    raw = {
        "name": "j",
        "input": {"path": "i.jsonl"},
        "model": "m",
        "endpoint": {"kind": "simulator"},
        "output": {"path": "o"},
        "report": {"prices": {"ON_DEMAND": {"input": 1, "ouput": 2}}},
    }
    with pytest.raises(SpecError, match=r"report\.prices\.ON_DEMAND\.ouput: unknown key; did you mean 'output'"):
        parse_spec(raw)


def test_status_per_shard_from_part_names_or_as_asked(spec: JobSpec) -> None:
    """Done / error / changed / pending / gone per task, the task count read from the part names unless --shards
    says otherwise; rows written without request_hash count as done."""
    status = job_status(spec)
    assert (status["rows"], status["done"], status["ok"], status["error"], status["pending"]) == (9, 7, 4, 3, 2)
    assert (status["duplicates"], status["changed"], status["gone"], status["parts"]) == (0, 0, 0, 2)
    assert [s["shard"] for s in status["shards"]] == ["0/2", "1/2"]
    assert sum(s["rows"] for s in status["shards"]) == 9 and sum(s["parts"] for s in status["shards"]) == 2
    assert len(job_status(spec, shards=5)["shards"]) == 5
    text = format_status(status)
    assert "7 done (4 ok, 3 error), 0 changed, 2 pending of 9 rows, 0 gone" in text and "0/2" in text


def test_an_id_saved_twice_counts_once_as_its_later_row(spec: JobSpec) -> None:
    """An older version's duplicate: status counts the id once, as the row of the later part, and warns."""
    out = Path(spec.output.path)
    late = [error("a", "http", 500, 5)]
    pq.write_table(pa.Table.from_pylist(late, schema=output_schema([])), out / "part-0001of0002-run-00002.parquet")
    status = job_status(spec)
    assert (status["rows"], status["ok"], status["error"], status["pending"]) == (9, 3, 4, 2)
    assert status["duplicates"] == 1
    assert "warning: 1 ids appear more than once in the output" in format_status(status)


def test_export_is_one_file_with_one_row_per_id_joined_to_the_input(spec: JobSpec, tmp_path: Path) -> None:
    """One compacted Parquet file, sorted by id, with the input's columns when asked; DuckDB reads it."""
    result = export_job(spec, str(tmp_path / "all.parquet"), join_input=True)
    assert (result["rows"], result["parts"], result["duplicates_dropped"]) == (7, 2, 0)
    rows = duckdb_rows(f"SELECT id, status, text, n FROM read_parquet('{tmp_path / 'all.parquet'}')")
    assert [r[0] for r in rows] == sorted("abcdefg")
    assert rows[1] == ("b", "ok", "text b", 1)
    plain = export_job(spec, str(tmp_path / "plain.parquet"))
    assert "text" not in plain["columns"] and plain["rows"] == 7
    with pytest.raises(OutputError, match="ending in .parquet"):
        export_job(spec, str(tmp_path / "all.csv"))


def test_export_keeps_a_jsonl_column_of_mixed_types_as_json_text(spec: JobSpec, tmp_path: Path) -> None:
    """An input column holding a number in one row, text in another and an object in a third is joined as
    each value's JSON text; one row per id, and a later duplicate of a saved id wins."""
    values: list[Any] = [1, "two", {"three": 3}, None, [5], 6.5, True, "h", "i"]
    write_rows(Path(spec.input.path), [{"id": rid, "text": v} for rid, v in zip(INPUT_IDS, values, strict=True)])
    late = ok("a", "ON_DEMAND", (1, 1, 0, 2), 1.0, 9)
    pq.write_table(pa.Table.from_pylist([late], schema=output_schema([])), Path(spec.output.path) / "part-x.parquet")
    result = export_job(spec, str(tmp_path / "mixed.parquet"), join_input=True)
    assert (result["rows"], result["duplicates_dropped"]) == (7, 1)
    table = pq.read_table(tmp_path / "mixed.parquet")
    assert table["text"].to_pylist() == ["1", '"two"', '{"three": 3}', None, "[5]", "6.5", "true"]
    assert table["total_tokens"].to_pylist()[0] == 2


def test_export_writes_to_gcs(spec: JobSpec, gcs: Gcs) -> None:
    """The export can go straight to a bucket, as one object."""
    root = gcs.make_bucket()
    export_job(spec, f"{root}/exports/known.parquet", join_input=True)
    data = gcs.fs().cat_file(f"{root}/exports/known.parquet")
    table = pq.read_table(pa.BufferReader(data))
    assert table.num_rows == 7 and "text" in table.column_names


def test_report_and_status_json_through_the_cli(spec: JobSpec, tmp_path: Path) -> None:
    """`batchrun report --json` and `status --json` print the same figures the functions return."""
    from tests.conftest import base_env, run_cli

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    report = run_cli(["report", str(spec_file), "--json"], env=base_env(), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["tokens"]["total_tokens"] == 2267
    status = run_cli(["status", str(spec_file), "--shards", "0"], env=base_env(), cwd=tmp_path)
    assert status.returncode == 2 and "--shards must be 1 or more" in status.stderr
