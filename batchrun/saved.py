"""The readers' side of an output directory: its committed parts, their rows and ids, and the job record.

Read-only: `status`, `report`, `export` and `export-media` use this alone; a run's writer (sink.py)
reads through it too. A part file is whole or absent (see storage.py), so any listing is consistent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun import storage
from batchrun.schema import output_schema

if TYPE_CHECKING:
    import polars as pl  # 0.25 s and 26 MB to import: loaded only where a frame is built (resume, readers)

META_DIR = "_batchrun"
PART_SUFFIX = ".parquet"
_READERS = 16
_ID_BATCH = 128  # parts whose ids are read and sorted together on resume


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

    def table(self, columns: list[str] | None = None, parts: list[str] | None = None) -> pl.DataFrame:
        """The chosen columns (default: all) of every committed part, or of the given ones."""
        import polars as pl

        parts = self.parts() if parts is None else parts
        with ThreadPoolExecutor(max_workers=_READERS) as pool:  # thousands of parts on gs:// are read at once
            frames = list(pool.map(lambda part: frame_of(storage.read_parquet(part, columns)), parts))
        if not frames:
            return pl.DataFrame(schema=_empty_schema(columns))
        return pl.concat(frames, how="diagonal_relaxed")

    def rows(self, columns: list[str], parts: list[str]) -> pl.DataFrame:
        """The chosen columns of every row in `parts`, and `part`, its part's index there; a column a part
        written by an older version lacks (request_hash) is null."""
        import polars as pl

        def read(index: int) -> pa.Table:
            with storage.open_parquet(parts[index]) as parquet:
                present = [name for name in columns if name in parquet.schema_arrow.names]
                table = parquet.read(columns=present, use_threads=False)
            return table.append_column("part", pa.array([index] * table.num_rows, pa.int64()))

        # Arrow tables joined once, then one polars frame: a frame per part, concatenated, held 80 MB more
        # at a million rows. Local parts are read on one thread (each reader thread keeps a malloc arena).
        if parts and storage.is_remote(parts[0]):
            with ThreadPoolExecutor(max_workers=_READERS) as pool:
                tables = list(pool.map(read, range(len(parts))))
        else:
            tables = [read(index) for index in range(len(parts))]
        empty = pl.DataFrame(schema=_empty_schema(columns) | {"part": pl.Int64()})
        if not tables:
            return empty.select(*columns, "part")
        frame = frame_of(pa.concat_tables(tables, promote_options="default"))
        del tables
        return pl.concat([empty, frame], how="diagonal_relaxed").select(*columns, "part")

    def scan(self, columns: list[str], batch_rows: int = 256) -> Iterator[dict[str, Any]]:
        """Every committed row's chosen columns, one row group batch in memory at a time (media can be large)."""
        for part in self.parts():
            with storage.open_parquet(part) as parquet:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                    yield from batch.to_pylist()

    def done_ids(self) -> pl.Series:
        """The ids that already have a saved row, sorted, for skipping on resume.

        Parts are read and sorted a batch at a time, then merged: reading a million ids this way
        peaks about 45 MB lower than reading every part into one frame and sorting that.
        """
        import polars as pl

        parts = self.parts()
        runs = [pl.Series("id", [], dtype=pl.String)]
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            for start in range(0, len(parts), _ID_BATCH):
                columns = pool.map(_ids, parts[start : start + _ID_BATCH])
                runs.append(pl.concat(columns).sort())
        return pl.concat(runs).sort()

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


def live(frame: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    """The saved rows whose id is in the input now: a gone row stays on disk only until the next run."""
    import polars as pl

    return frame.filter(pl.col("id").is_in(ids.implode()))


def _ids(part: str) -> pl.Series:
    """One part's id column."""
    import polars as pl

    return pl.Series("id", storage.read_parquet(part, ["id"]).column("id"), dtype=pl.String)


def frame_of(table: pa.Table) -> pl.DataFrame:
    """An Arrow table as a polars frame."""
    import polars as pl

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _empty_schema(columns: list[str] | None) -> dict[str, pl.DataType]:
    """The polars schema of an output with no parts yet, so readers need no special case."""
    import polars as pl

    frame = frame_of(output_schema([]).empty_table())
    return {name: dtype for name, dtype in frame.schema.items() if columns is None or name in columns} | {
        name: pl.String() for name in columns or [] if name not in frame.schema
    }


def encode(table: pa.Table) -> bytes:
    """A whole Parquet file in memory, ready to be written in one go."""
    buffer = pa.BufferOutputStream()  # Arrow's own buffer: no Python file object is handed to Arrow
    pq.write_table(table, buffer, compression="zstd")
    return bytes(buffer.getvalue())


class SavedIds:
    """Ids that already have a saved row, sorted once so each input batch is checked by binary search.

    Exact, a few bytes per id where a Python set of str costs about a hundred, and about 1 ms per
    2,048-row batch at a million saved ids (polars' `is_in` rebuilds its hash table every call:
    0.8 s per batch at that size).
    """

    def __init__(self, ids: pl.Series | None) -> None:
        self._ids: pl.Series | None = None
        if ids is not None and len(ids):
            import polars as pl

            self._ids = ids.cast(pl.String).sort()

    def __len__(self) -> int:
        return 0 if self._ids is None else len(self._ids)

    def adding(self, ids: list[str]) -> SavedIds:
        """These ids and `ids` (rows saved since they were read)."""
        if not ids:
            return self
        import polars as pl

        more = pl.Series(ids, dtype=pl.String)
        return SavedIds(more if self._ids is None else pl.concat([self._ids, more]))

    def contains(self, ids: list[str]) -> list[bool]:
        """For each id, whether it is saved."""
        return [at is not None for at in self.positions(ids)]

    def positions(self, ids: list[str]) -> list[int | None]:
        """For each id, its place in the sorted saved ids, or None when it is not saved."""
        if self._ids is None:
            return [None] * len(ids)
        import polars as pl

        probe = pl.Series(ids, dtype=pl.String)
        at = self._ids.search_sorted(probe).clip(0, len(self._ids) - 1)
        hits = (self._ids.gather(at) == probe).to_list()
        return [place if hit else None for place, hit in zip(at.to_list(), hits, strict=True)]
