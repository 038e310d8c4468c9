"""The readers' side of an output directory: its committed parts, their rows and ids, and the job record.

Read-only: `status`, `report`, `export` and `export-media` use this alone; a run's writer (sink.py)
reads through it too. A part file is whole or absent (see storage.py), so any listing is consistent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from batchrun import storage
from batchrun.schema import output_schema

META_DIR = "_batchrun"
PART_SUFFIX = ".parquet"
_READERS = 16


class SavedOutput:
    """An output directory as readers see it: every shard's committed parts."""

    def __init__(self, path: str) -> None:
        self.path = path.rstrip("/")

    @property
    def meta_path(self) -> str:
        """Where the job record lives (not a .parquet file, so scans skip it)."""
        return storage.join(self.path, META_DIR, "job.json")

    def meta(self) -> dict[str, Any] | None:
        """The job record the last run wrote, or None before the first run (or when it cannot be read)."""
        try:
            record = json.loads(storage.read_bytes(self.meta_path))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def parts(self) -> list[str]:
        """Every committed part file, all shards."""
        return [p for p in storage.list_files(self.path, PART_SUFFIX) if f"/{META_DIR}/" not in p]

    def table(self, columns: list[str] | None = None, parts: list[str] | None = None) -> pa.Table:
        """The chosen columns (default: all) of every committed part, or of the given ones; a column a part written
        by an older version lacks is null there, and every column is present when nothing is saved yet."""
        parts = self.parts() if parts is None else parts
        empty = output_schema([]).empty_table()
        table = pa.concat_tables([empty, *read_parts(parts, columns)], promote_options="permissive")
        wanted = table.column_names if columns is None else columns
        for name in wanted:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        return table.select(wanted)

    def scan(self, columns: list[str], batch_rows: int = 256) -> Iterator[dict[str, Any]]:
        """Every committed row's chosen columns, one row group batch in memory at a time (media can be large)."""
        for part in self.parts():
            with storage.open_parquet(part) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                    yield from batch.to_pylist()

    def holding(self, ids: set[str]) -> set[str]:
        """Which of `ids` a committed part already holds."""
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            found = pool.map(
                lambda part: ids.intersection(storage.read_parquet(part, ["id"]).column("id").to_pylist()), self.parts()
            )
            return set().union(*found)

    def count_ids(self, owns: Callable[[str], bool] | None = None) -> int:
        """How many saved ids `owns` keeps (default: all), counted part by part so the ids are never all in memory."""

        def count(part: str) -> int:
            if owns is None:
                with storage.open_parquet(part) as parquet:
                    return int(parquet.metadata.num_rows)
            return sum(map(owns, storage.read_parquet(part, ["id"]).column("id").to_pylist()))

        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            return sum(pool.map(count, self.parts()))


def read_parts(parts: list[str], columns: list[str] | None) -> Iterator[pa.Table]:
    """Each part's chosen columns (default: all) that it has, in order: a part written by an older version may
    lack one. Thousands of objects on gs:// are read side by side; local parts on one thread, since each reader
    thread keeps a malloc arena of its own."""

    def read(part: str) -> pa.Table:
        with storage.open_parquet(part) as parquet:
            names = parquet.schema_arrow.names
            present = names if columns is None else [name for name in columns if name in names]
            return parquet.read(columns=present, use_threads=False)

    if parts and storage.is_remote(parts[0]):
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            yield from pool.map(read, parts)
    else:
        yield from map(read, parts)


def live(table: pa.Table, ids: pa.Array) -> pa.Table:
    """The saved rows whose id is in the input now: a gone row stays on disk only until the next run."""
    import pyarrow.compute as pc  # loaded by the readers only

    return table.filter(pc.is_in(table["id"], value_set=ids))


def encode(table: pa.Table) -> bytes:
    """A whole Parquet file in memory, ready to be written in one go."""
    import pyarrow.parquet as pq  # loaded by the first part a run writes (storage.open_parquet says why)

    buffer = pa.BufferOutputStream()  # Arrow's own buffer: no Python file object is handed to Arrow
    pq.write_table(table, buffer, compression="zstd")
    return bytes(buffer.getvalue())
