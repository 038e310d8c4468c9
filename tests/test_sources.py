"""Inputs: JSONL, Parquet and OpenAI Batch files streamed, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrun.errors import InputError
from batchrun.sources import Source
from batchrun.spec import InputSpec


def jsonl(tmp_path: Path, lines: list[str], name: str = "in.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_jsonl_rows_with_ids_and_broken_line(tmp_path: Path) -> None:
    """A broken line becomes a record with an error naming file and line; the rest stream on."""
    path = jsonl(tmp_path, ['{"id": "a", "t": 1}', "{not json", '{"id": "b", "t": 2}'])
    source = Source(InputSpec(path=path, id_column="id"))
    records = [r for b in source.batches() for r in b]
    assert [r.id for r in records] == ["a", "line:2", "b"]
    assert records[1].data is None and f"{path}:line 2: not valid JSON" in (records[1].error or "")
    summary = source.summarize(["t"])
    assert (summary.rows, summary.broken) == (3, 1)
    assert summary.types["t"] == pa.int64()


def test_default_id_is_row_number(tmp_path: Path) -> None:
    """Without id_column the id is the 0-based row number."""
    path = jsonl(tmp_path, ['{"t": "x"}', "", '{"t": "y"}'])
    assert [r.id for b in Source(InputSpec(path=path)).batches() for r in b] == ["0", "1"]


def test_duplicate_ids_are_refused_with_both_lines(tmp_path: Path) -> None:
    """Duplicate ids stop validation, naming both places."""
    path = jsonl(tmp_path, ['{"id": "a"}', '{"id": "b"}', '{"id": "a"}'])
    with pytest.raises(InputError, match=r"line 3: duplicate id 'a' \(first at line 1\)"):
        Source(InputSpec(path=path, id_column="id")).summarize([])


def test_missing_id_value_names_the_line(tmp_path: Path) -> None:
    """A row without its id names the line and the fix."""
    path = jsonl(tmp_path, ['{"id": "a"}', '{"other": 1}'])
    with pytest.raises(InputError, match=r"line 2: no value in id column 'id'"):
        Source(InputSpec(path=path, id_column="id")).summarize([])


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    """A missing or empty input stops before any request."""
    with pytest.raises(InputError, match="input file not found"):
        Source(InputSpec(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(InputError, match="no rows"):
        Source(InputSpec(path=jsonl(tmp_path, [""]))).summarize([])


def test_non_utf8_bytes_are_reported(tmp_path: Path) -> None:
    """Non-UTF-8 input names the line."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff\xfe"}\n')
    records = [r for b in Source(InputSpec(path=str(path), id_column="id")).batches() for r in b]
    assert records[-1].data is None and "line 2: not UTF-8" in (records[-1].error or "")


def test_parquet_rows_and_exact_types(tmp_path: Path) -> None:
    """Parquet is read in batches and kept columns keep their Arrow types."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "score": pa.array([1.5, 2.5], pa.float32())}), path)
    source = Source(InputSpec(path=str(path), id_column="id"))
    summary = source.summarize(["score"])
    assert summary.rows == 2 and summary.types["score"] == pa.float32()
    assert [r.data for b in source.batches() for r in b][1] == {"id": "y", "score": 2.5}


def test_truncated_parquet_is_a_clear_error(tmp_path: Path) -> None:
    """A cut Parquet file is refused with a message, not a traceback."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["x"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="not a readable Parquet file"):
        Source(InputSpec(path=str(path), id_column="id")).summarize([])


def test_openai_batch_format_is_detected(tmp_path: Path) -> None:
    """custom_id/body lines are an OpenAI Batch file; custom_id is the id."""
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
    source = Source(InputSpec(path=jsonl(tmp_path, [json.dumps(line)])))
    assert source.format == "openai-batch"
    assert [r.id for b in source.batches() for r in b] == ["req-1"]


def test_parquet_decodes_only_the_columns_asked_for(tmp_path: Path) -> None:
    """A run reads the columns its spec uses; the counting pass reads the id column alone."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["x", "y"], "text": ["a", "b"], "blob": ["big", "bigger"]}), path)
    source = Source(InputSpec(path=str(path), id_column="id"))
    assert [r.data for b in source.batches(columns={"id", "text"}) for r in b] == [
        {"id": "x", "text": "a"},
        {"id": "y", "text": "b"},
    ]
    assert source.summarize([]).columns == ["id", "text", "blob"]


def test_openai_batch_parquet_is_detected_from_its_schema(tmp_path: Path) -> None:
    """A Parquet file with custom_id and body columns is an OpenAI Batch input."""
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"custom_id": ["req-1"], "body": ['{"messages": []}']}), path)
    source = Source(InputSpec(path=str(path)))
    assert source.format == "openai-batch"
    assert [r.id for b in source.batches() for r in b] == ["req-1"]


def test_duplicate_ids_are_found_among_many(tmp_path: Path) -> None:
    """The hashed duplicate check names both lines however far apart they are."""
    lines = [json.dumps({"id": f"id-{i}"}) for i in range(5_000)] + [json.dumps({"id": "id-1234"})]
    with pytest.raises(InputError, match=r"line 5001: duplicate id 'id-1234' \(first at line 1235\)"):
        Source(InputSpec(path=jsonl(tmp_path, lines), id_column="id")).summarize([])
