"""The writer and the output directory: whole parts, flushes by size and time, resume state, fingerprints."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batchrun.errors import OutputError
from batchrun.ids import SavedIds
from batchrun.saved import SavedOutput
from batchrun.schema import ResultRow, output_schema
from batchrun.shards import Shard
from batchrun.sink import OutputWriter, PartWriter


def row(rid: str, status: str = "ok") -> ResultRow:
    return {"id": rid, "status": status, "finished_at": datetime.datetime.now(datetime.UTC)}


def read(path: Path) -> pl.DataFrame:
    return pl.scan_parquet(f"{path}/**/*.parquet").collect()


def test_flush_by_rows_and_on_close(tmp_path: Path) -> None:
    """A full buffer becomes a part at once; close() commits the rest."""

    async def main() -> None:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), output_schema([]), flush_rows=3, flush_seconds=60)
        writer.start()
        for i in range(3):
            writer.add(row(f"r{i}"))
        for _ in range(200):
            if list(tmp_path.glob("*.parquet")):
                break
            await asyncio.sleep(0.01)
        assert len(list(tmp_path.glob("*.parquet"))) == 1
        writer.add(row("r3"))
        await writer.close()

    asyncio.run(main())
    assert sorted(read(tmp_path)["id"]) == ["r0", "r1", "r2", "r3"]
    assert len(list(tmp_path.glob("*.parquet"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_flush_by_time(tmp_path: Path) -> None:
    """A part is committed after flush_seconds even when the buffer is not full."""

    async def main() -> None:
        output = OutputWriter(str(tmp_path), Shard())
        writer = PartWriter(output, output_schema([]), flush_rows=1000, flush_seconds=0.05)
        writer.start()
        writer.add(row("a"))
        for _ in range(200):
            if list(tmp_path.glob("*.parquet")):
                break
            await asyncio.sleep(0.01)
        assert list(tmp_path.glob("*.parquet")), "no time-based flush"
        await writer.close()

    asyncio.run(main())


def test_a_steady_trickle_makes_one_part_per_interval_not_one_per_row(tmp_path: Path) -> None:
    """Past the first interval the writer still waits flush_seconds between parts: rows arriving one by one are
    batched, never committed as a part each (which would spin the loop and leave thousands of tiny files)."""

    async def main() -> float:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), output_schema([]), flush_rows=1000, flush_seconds=0.3)
        writer.start()
        began = time.monotonic()
        for i in range(60):
            writer.add(row(f"r{i:03d}"))
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - began
        await writer.close()
        return elapsed

    elapsed = asyncio.run(main())
    parts = len(list(tmp_path.glob("*.parquet")))
    assert parts <= elapsed / 0.3 + 2, f"{parts} parts for 60 rows over {elapsed:.1f} s at one part per 0.3 s"
    assert read(tmp_path).height == 60


def test_cancelled_flush_still_commits_its_rows(tmp_path: Path) -> None:
    """Cancelling a task that is waiting on a flush never drops the rows handed to the writer thread."""

    async def main() -> None:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), output_schema([]), flush_rows=1000, flush_seconds=60)
        for i in range(50):
            writer.add(row(f"r{i}"))
        flushing = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0)
        flushing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flushing
        await writer.close()

    asyncio.run(main())
    assert read(tmp_path).height == 50


def test_failed_write_is_reported_and_keeps_earlier_parts(tmp_path: Path) -> None:
    """A write error stops the writer with a message naming the part; the error is the run's exit 3."""
    out = tmp_path / "out"

    async def main() -> PartWriter:
        writer = PartWriter(OutputWriter(str(out), Shard()), output_schema([]), flush_rows=1000, flush_seconds=60)
        writer.add(row("a"))
        await writer.flush()
        saved = next(out.glob("*.parquet"))
        saved.rename(tmp_path / saved.name)
        shutil.rmtree(out)  # the part and the answer journal beside it
        out.write_text("a file where the output directory was")  # even root cannot write below a file
        writer.add(row("b"))
        await writer.flush()
        return writer

    writer = asyncio.run(main())
    assert writer.failure is not None and "writing part-0000of0001-" in writer.failure.message
    assert "1 rows saved before stay" in writer.failure.message
    assert writer.failure.exit_code == 3
    with pytest.raises(OutputError):
        writer.add(row("c"))


def test_the_job_record_is_written_once_per_spec_and_compared_in_one_place(tmp_path: Path) -> None:
    """job.json is rewritten only when the spec or input differs from what it records."""
    output = OutputWriter(str(tmp_path), Shard())
    output.record_job({"fingerprint": "fp1", "input": {"path": "in.jsonl"}})
    written = (tmp_path / "_batchrun" / "job.json").read_text()
    output.record_job({"fingerprint": "fp1", "input": {"path": "in.jsonl"}})
    assert (tmp_path / "_batchrun" / "job.json").read_text() == written
    output.record_job({"fingerprint": "fp2", "input": {"path": "in.jsonl"}})
    assert output.saved.meta() is not None and output.saved.meta()["fingerprint"] == "fp2"  # type: ignore[index]


def test_temp_files_of_this_shard_are_cleaned(tmp_path: Path) -> None:
    """Leftover temporary parts of this shard are removed at start; other shards' are left to them."""
    (tmp_path / "part-0000of0002-x-00001.parquet.123.tmp").write_bytes(b"half")
    (tmp_path / "part-0001of0002-x-00001.parquet.456.tmp").write_bytes(b"half")
    OutputWriter(str(tmp_path), Shard(0, 2)).prepare()
    assert [p.name for p in tmp_path.glob("*.tmp")] == ["part-0001of0002-x-00001.parquet.456.tmp"]


def _write_part(directory: Path, shard: Shard, rows: list[ResultRow]) -> None:
    """Commit `rows` as one part named for `shard`."""

    async def write() -> None:
        writer = PartWriter(OutputWriter(str(directory), shard), output_schema([]), flush_rows=1000, flush_seconds=60)
        for r in rows:
            writer.add(r)
        await writer.close()

    asyncio.run(write())


def _placed(output: OutputWriter, ids: list[str]) -> tuple[pa.Table, list[str]]:
    """(id, part index, ok, attempts) of saved rows, as a run's plan gives them to the writer."""
    parts = output.saved.parts()
    tables = [
        pq.read_table(part, columns=["id", "status", "attempts"]).append_column(
            "part", pa.array([index] * pq.read_metadata(part).num_rows, pa.int32())
        )
        for index, part in enumerate(parts)
    ]
    table = pa.concat_tables(tables)
    table = table.append_column("ok", pc.equal(table["status"], "ok")).drop_columns(["status"])
    return table.filter(pc.is_in(table["id"], pa.array(ids))), parts


def test_drop_rewrites_each_part_whole_and_removes_an_emptied_one(tmp_path: Path) -> None:
    """Dropped rows leave their parts, each part replaced whole; a part left with no row is removed."""
    _write_part(tmp_path, Shard(), [row("1"), row("2", "error")])
    _write_part(tmp_path, Shard(), [row("3", "error")])
    output = OutputWriter(str(tmp_path), Shard())
    output.drop(*_placed(output, ["2", "3"]))
    assert sorted(read(tmp_path)["id"]) == ["1"]
    assert len(list(tmp_path.glob("*.parquet"))) == 1


def test_a_replacement_is_written_into_the_part_of_the_row_it_replaces(tmp_path: Path) -> None:
    """A new row for a saved id swaps into that id's part in one write; new ids go to a new part."""
    _write_part(tmp_path, Shard(), [row("a"), row("b", "error")])
    output = OutputWriter(str(tmp_path), Shard())
    output.replace_rows(*_placed(output, ["b"]))
    _write_part_with(output, [row("b"), row("c")])
    table = read(tmp_path)
    assert sorted(table["id"]) == ["a", "b", "c"] and set(table["status"]) == {"ok"}
    assert len(list(tmp_path.glob("*.parquet"))) == 2


def test_one_of_n_tasks_rewrites_only_its_own_parts() -> None:
    """Task 0 of 2 may rewrite parts named for it; a single task any part; no task another count's parts."""
    mine, theirs = "part-0000of0002-x-00001.parquet", "part-0001of0002-x-00001.parquet"
    single = "part-0000of0001-x-00001.parquet"
    assert OutputWriter("out", Shard(0, 2)).may_rewrite(f"out/{mine}")
    assert not OutputWriter("out", Shard(0, 2)).may_rewrite(f"out/{theirs}")
    assert not OutputWriter("out", Shard(0, 2)).may_rewrite(f"out/{single}")
    assert OutputWriter("out", Shard()).may_rewrite(f"out/{theirs}")


def _write_part_with(output: OutputWriter, rows: list[ResultRow]) -> None:
    """Commit `rows` through a writer on `output`."""

    async def write() -> None:
        writer = PartWriter(output, output_schema([]), flush_rows=1000, flush_seconds=60)
        for r in rows:
            writer.add(r)
        await writer.close()

    asyncio.run(write())


def test_saved_ids_are_found_exactly() -> None:
    """Only ids that are saved match: no prefix, neighbour or empty-set false positives; each gives its row."""
    saved = SavedIds(["r10", "r2", "r30", "a"])
    assert len(saved) == 4
    assert saved.contains(["r2", "r1", "r3", "r30", "zz", "", "a"]) == [True, False, False, True, False, False, True]
    assert saved.rows_of(["a", "r10", "nope"]) == [3, 0, None]
    assert SavedIds().contains(["r1"]) == [False] and len(SavedIds()) == 0


def test_saved_ids_tell_apart_ids_that_share_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids whose keys collide (forced here: the key is the length) are still found exactly, each its own row."""
    import batchrun.ids

    monkeypatch.setattr(batchrun.ids, "_key", len)
    saved = SavedIds(["ab", "cd", "ef", "x"])
    assert saved.rows_of(["cd", "ef", "ab", "zz", "x", "y"]) == [1, 2, 0, None, 3, None]


def test_an_id_saved_twice_is_found_at_its_last_row() -> None:
    """An older version's duplicate: the lookup gives the last copy's row and counts the earlier ones."""
    saved = SavedIds(["b", "a", "b", "c", "b"])
    assert saved.rows_of(["b", "a"]) == [4, 1]
    assert saved.repeated == 2 and len(saved) == 3


def test_hiding_and_adding_change_what_is_contained_not_the_rows() -> None:
    """A hidden row (sent again) is no longer contained; added ids are; the index itself is shared, not copied."""
    saved = SavedIds(["a", "b", "c"])
    view = saved.hiding(bytes([0, 1, 0])).adding(["z"])
    assert view.contains(["a", "b", "c", "z"]) == [True, False, True, True]
    assert saved.contains(["b", "z"]) == [True, False]
    assert len(view) == 3


def test_count_ids_filters_part_by_part(tmp_path: Path) -> None:
    """count_ids counts the saved ids a filter keeps, part by part, and every id without one."""

    async def write(ids: list[str]) -> None:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), output_schema([]), flush_rows=1000, flush_seconds=60)
        for rid in ids:
            writer.add(row(rid))
        await writer.close()

    ids = [f"r{i}" for i in range(50)]
    for part in range(5):
        asyncio.run(write(ids[part::5]))
    output = SavedOutput(str(tmp_path))
    assert output.count_ids(lambda rid: rid.endswith("7")) == 5
    assert output.count_ids() == len(ids)
