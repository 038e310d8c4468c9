"""The answer journal: rows durable as they arrive, folded into one part on resume, never two rows per id."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import os
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq

from batchrun.journal import Journal, read_rows, segments
from batchrun.saved import META_DIR
from batchrun.schema import ResultRow, output_schema
from batchrun.shards import Shard
from batchrun.sink import OutputWriter, PartWriter

from .faults import tmpfs

TAG = "0000of0001"
SCHEMA = output_schema([])


def row(rid: str) -> ResultRow:
    return {
        "id": rid,
        "status": "ok",
        "content": f"answer {rid}",
        "media": b"\x00\x01",
        "finished_at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
    }


def part_ids(output: Path) -> list[str]:
    """Every id in the committed parts."""
    return sorted(i for p in output.glob("part-*.parquet") for i in pq.read_table(p, columns=["id"])["id"].to_pylist())


def journal_rows(directory: Path, rids: list[str]) -> None:
    """Journal `rids`, then stop as a kill would: nothing removed, no part written."""
    journal = Journal(str(directory), f"{TAG}-run1")
    for rid in rids:
        journal.append(row(rid))


def test_a_row_is_on_disk_once_appended(tmp_path: Path) -> None:
    """Each appended row reads back at once, with its bytes, timestamp and kept values exact; a clean close removes
    the segments."""

    async def main() -> None:
        journal = Journal(str(tmp_path), f"{TAG}-run1")
        journal.start()
        journal.append(row("a"))
        assert [r["id"] for r in read_rows(segments(str(tmp_path), TAG))] == ["a"]
        odd: dict[str, Any] = {**row("b"), "day": datetime.date(2026, 5, 1), "price": decimal.Decimal("1.10")}
        odd["tags"] = ["x", 1]
        journal.append(cast(ResultRow, odd))  # kept input columns join a row as it is saved
        back = read_rows(segments(str(tmp_path), TAG))
        assert back == [row("a"), odd]
        await journal.close(committed=True)
        assert segments(str(tmp_path), TAG) == []

    asyncio.run(main())


def test_a_row_json_cannot_carry_is_left_to_the_part(tmp_path: Path) -> None:
    """A kept value of a type the journal has no encoding for skips the journal, not the run."""
    journal = Journal(str(tmp_path), f"{TAG}-run1")
    journal.append(cast(ResultRow, {**row("a"), "span": datetime.timedelta(seconds=3)}))
    journal.append(row("b"))
    assert [r["id"] for r in read_rows(segments(str(tmp_path), TAG))] == ["b"]


def test_a_line_cut_short_is_skipped(tmp_path: Path) -> None:
    """A half-written last line (a host crash mid-write) is ignored; the whole lines before it read back."""
    journal_rows(tmp_path, ["a", "b", "c"])
    [segment] = segments(str(tmp_path), TAG)
    os.truncate(segment, os.path.getsize(segment) - 20)
    assert [r["id"] for r in read_rows([segment])] == ["a", "b"]


def test_resume_folds_the_journal_once_skipping_ids_already_in_parts(tmp_path: Path) -> None:
    """A kill after a part committed but before its segment was removed: the fold saves only the new ids."""

    async def write_part(rids: list[str]) -> None:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), SCHEMA, flush_rows=1000, flush_seconds=60)
        for rid in rids:
            writer.add(row(rid))
        await writer.close()

    asyncio.run(write_part(["a", "b"]))
    journal_rows(tmp_path / META_DIR, ["a", "b", "c", "d"])
    writer = PartWriter(OutputWriter(str(tmp_path), Shard()), SCHEMA, flush_rows=1000, flush_seconds=60)
    assert writer.recover() == 2
    assert part_ids(tmp_path) == ["a", "b", "c", "d"]
    assert segments(str(tmp_path / META_DIR), TAG) == []
    assert PartWriter(OutputWriter(str(tmp_path), Shard()), SCHEMA, flush_rows=1000, flush_seconds=60).recover() == 0


def test_a_committed_part_releases_its_segments(tmp_path: Path) -> None:
    """While the run goes on, each committed part removes the journal segments its rows came from."""

    async def main() -> None:
        writer = PartWriter(OutputWriter(str(tmp_path), Shard()), SCHEMA, flush_rows=1000, flush_seconds=60)
        writer.start()
        for rid in "abc":
            writer.add(row(rid))
        assert len(segments(str(tmp_path / META_DIR), TAG)) == 1
        await writer.flush()
        assert segments(str(tmp_path / META_DIR), TAG) == []
        for rid in "de":
            writer.add(row(rid))
        assert [r["id"] for r in read_rows(segments(str(tmp_path / META_DIR), TAG))] == ["d", "e"]
        await writer.close()
        assert segments(str(tmp_path / META_DIR), TAG) == []

    asyncio.run(main())
    assert part_ids(tmp_path) == ["a", "b", "c", "d", "e"]


def test_a_segment_the_disk_will_not_let_go_stays_for_the_next_fold(tmp_path: Path) -> None:
    """A disk turned read-only after a part committed: releasing its segment fails quietly, and the next run's fold
    skips the ids the part holds."""
    with tmpfs(tmp_path / "out", "4m") as disk:
        output = tmp_path / "out"
        journal = Journal(str(output / META_DIR), f"{TAG}-run1")
        journal.append(row("a"))
        sealed = journal.seal()
        disk.remount("ro")
        journal.release(sealed)
        assert len(segments(str(output / META_DIR), TAG)) == 1
        disk.remount("rw")
        writer = PartWriter(OutputWriter(str(output), Shard()), SCHEMA, flush_rows=1000, flush_seconds=60)
        assert writer.recover() == 1
        assert part_ids(output) == ["a"]
