"""Buffered Parquet parts, written whole by one writer: the committed parts are the checkpoint.

A part file is written to a temporary name and renamed into place (locally) or PUT as one object
(gs://), so a reader sees it whole or not at all. Every id appears in at most one committed part.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchrun import storage
from batchrun.errors import OutputError, StorageError
from batchrun.journal import Journal, fold, segments
from batchrun.schema import ResultRow, output_schema
from batchrun.shards import Shard, shard_of_part

if TYPE_CHECKING:
    import polars as pl  # 0.25 s and 26 MB to import: loaded only where a frame is built (resume, readers)

META_DIR = "_batchrun"
PART_SUFFIX = ".parquet"
_READERS = 16
_ID_BATCH = 128  # parts whose ids are read and sorted together on resume


class Output:
    """The output directory: its fingerprint, its committed parts, and the ids they hold."""

    def __init__(self, path: str, shard_tag: str) -> None:
        self.path = path.rstrip("/")
        self.shard_tag = shard_tag
        self.replaced_attempts: dict[str, int] = {}  # id -> attempts of the error rows drop_errors removed

    @property
    def meta_path(self) -> str:
        """Where the job fingerprint lives (not a .parquet file, so scans skip it)."""
        return storage.join(self.path, META_DIR, "job.json")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this shard of a local output for one run: a second run beside it would clean its temporary
        files and send its rows again. An flock, so the kernel drops it when the holder dies (SIGKILL too);
        object stores have none, and there Cloud Run runs each task index once at a time."""
        if storage.is_remote(self.path):
            yield
            return
        path = os.path.join(self.path, META_DIR, f"lock-{self.shard_tag}")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Read-only, so a held lock never keeps the file system from being remounted or unmounted.
            descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError:
            yield  # an unwritable output: prepare() stops the run with the reason
            return
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputError(
                    f"{self.path}: another `batchrun run` is writing this shard ({self.shard_tag}) right now; "
                    "wait for it to finish, or stop it, then run again"
                ) from None
            except OSError:
                pass  # a file system without locks (some FUSE mounts): run unguarded, as on an object store
            yield
        finally:
            os.close(descriptor)

    def prepare(self, fingerprint: str, identity: dict[str, Any], *, force: bool) -> None:
        """Create the directory, refuse one written by another spec or input, and clean crash leftovers."""
        storage.makedirs(self.path)
        storage.check_writable(self.path)
        if storage.exists(self.meta_path):
            meta = json.loads(storage.read_bytes(self.meta_path))
            if (meta.get("fingerprint"), meta.get("input")) != (fingerprint, identity) and not force:
                raise OutputError(
                    f"{self.path} holds results of a different job spec or input "
                    f"(fingerprint {meta.get('fingerprint')}, input {meta.get('input', {}).get('path')}). "
                    "Use another output.path, or pass --force to add to it anyway"
                )
            if meta.get("fingerprint") == fingerprint and meta.get("input") == identity:
                self._clean_temp()
                return
        record = {
            "fingerprint": fingerprint,
            "input": identity,
            "written_at": datetime.datetime.now(datetime.UTC).isoformat(),
        }
        try:
            storage.write_once(self.meta_path, json.dumps(record, indent=2).encode())
        except OSError as exc:
            if not self._written_by_peer(fingerprint, identity):
                raise OutputError(
                    f"{self.path}: cannot write to the output directory ({exc.strerror or exc}); "
                    "free space or fix permissions and run again", unwritable=True
                ) from None
        self._clean_temp()

    def _written_by_peer(self, fingerprint: str, identity: dict[str, Any]) -> bool:
        """Whether another task of the same job wrote the fingerprint first (tasks start together)."""
        try:
            meta = json.loads(storage.read_bytes(self.meta_path))
        except (OSError, ValueError):
            return False
        return bool((meta.get("fingerprint"), meta.get("input")) == (fingerprint, identity))

    def _clean_temp(self) -> int:
        """Remove temporary files a killed run left: this shard's parts, and job.json's.

        A peer task writing job.json at this moment loses its temporary file, finds the file written
        (`_written_by_peer`) and carries on; other shards' part files are theirs to clean.
        """
        if storage.is_remote(self.path):
            return 0
        removed = 0
        for name in storage.list_files(self.path, storage.TEMP_SUFFIX):
            if os.path.basename(name).startswith(f"part-{self.shard_tag}-") or f"/{META_DIR}/" in name:
                storage.remove(name)
                removed += 1
        return removed

    def parts(self) -> list[str]:
        """Every committed part file, all shards."""
        return [p for p in storage.list_files(self.path, PART_SUFFIX) if f"/{META_DIR}/" not in p]

    def table(self, columns: list[str] | None = None, parts: list[str] | None = None) -> pl.DataFrame:
        """The chosen columns (default: all) of every committed part, or of the given ones."""
        import polars as pl

        parts = self.parts() if parts is None else parts
        with ThreadPoolExecutor(max_workers=_READERS) as pool:  # thousands of parts on gs:// are read at once
            frames = list(pool.map(lambda part: _frame(storage.read_parquet(part, columns)), parts))
        if not frames:
            return pl.DataFrame(schema=_empty_schema(columns))
        return pl.concat(frames, how="diagonal_relaxed")

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
                columns = pool.map(_ids, parts[start: start + _ID_BATCH])
                runs.append(pl.concat(columns).sort())
        return pl.concat(runs).sort()

    def saved(self, shard: Shard) -> SavedIds:
        """The ids of `shard` that already have a saved row; a first run (no parts) never loads polars."""
        return SavedIds(shard.owned(self.done_ids()) if self.parts() else None)

    def holding(self, ids: set[str]) -> set[str]:
        """Which of `ids` a committed part already holds."""
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            found = pool.map(lambda part: ids.intersection(storage.read_parquet(part, ["id"]).column("id").to_pylist()),
                             self.parts())
            return set().union(*found)

    def count_ids(self, owns: Callable[[str], bool] | None = None) -> int:
        """How many saved ids `owns` keeps (default: all), counted part by part so the ids are never all in memory."""

        def count(part: str) -> int:
            if owns is None:
                with storage.open_read(part) as handle:
                    return int(pq.read_metadata(handle).num_rows)
            return sum(map(owns, storage.read_parquet(part, ["id"]).column("id").to_pylist()))

        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            return sum(pool.map(count, self.parts()))

    def drop_errors(self, shard: Shard) -> tuple[int, int]:
        """Remove the `error` rows this run owns so --retry-errors sends them again; each part is replaced whole.

        Returns (dropped, left). A single task owns every row and rewrites any part. One of N tasks
        rewrites only the parts named for it: a part written under another task count holds rows of
        the tasks running beside it, and two tasks rewriting one part would undo each other's work.
        The error rows it owns in such parts are counted as left.
        """
        import polars as pl

        dropped = left = 0
        for part in self.parts():
            named = shard_of_part(os.path.basename(part))
            if shard.count > 1 and named != shard:
                if named is None or named.count != shard.count:
                    frame = _frame(storage.read_parquet(part, ["id", "status"])).filter(pl.col("status") == "error")
                    left += len(shard.owned(frame.get_column("id")))
                continue
            table = storage.read_parquet(part)
            frame = _frame(table)
            mask = (frame.get_column("status") == "error") & frame.get_column("id").map_elements(
                shard.owns, return_dtype=pl.Boolean
            )
            count = int(mask.sum())
            if count == 0:
                continue
            replaced = frame.filter(mask)
            self.replaced_attempts.update(
                zip(replaced.get_column("id").to_list(), replaced.get_column("attempts").fill_null(0).to_list(),
                    strict=True)
            )
            kept = table.filter(pa.array((~mask).to_list()))
            if kept.num_rows == 0:
                storage.remove(part)
            else:
                storage.write_once(part, _encode(kept))
            dropped += count
        return dropped, left


def _ids(part: str) -> pl.Series:
    """One part's id column."""
    import polars as pl

    return pl.Series("id", storage.read_parquet(part, ["id"]).column("id"), dtype=pl.String)


def _frame(table: pa.Table) -> pl.DataFrame:
    """An Arrow table as a polars frame."""
    import polars as pl

    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _empty_schema(columns: list[str] | None) -> dict[str, pl.DataType]:
    """The polars schema of an output with no parts yet, so readers need no special case."""
    import polars as pl

    frame = _frame(output_schema([]).empty_table())
    return {name: dtype for name, dtype in frame.schema.items() if columns is None or name in columns} | {
        name: pl.String() for name in columns or [] if name not in frame.schema
    }


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

    def contains(self, ids: list[str]) -> list[bool]:
        """For each id, whether it is saved."""
        if self._ids is None:
            return [False] * len(ids)
        import polars as pl

        probe = pl.Series(ids, dtype=pl.String)
        at = self._ids.search_sorted(probe).clip(0, len(self._ids) - 1)
        return (self._ids.gather(at) == probe).to_list()


def _encode(table: pa.Table) -> bytes:
    """A whole Parquet file in memory, ready to be written in one go."""
    buffer = pa.BufferOutputStream()  # Arrow's own buffer: no Python file object is handed to Arrow
    pq.write_table(table, buffer, compression="zstd")
    return bytes(buffer.getvalue())


class PartWriter:
    """The one writer: workers hand it rows, it commits a part every `flush_rows` rows or `flush_seconds`."""

    def __init__(self, output: Output, schema: pa.Schema, *, flush_rows: int, flush_seconds: float) -> None:
        self._output = output
        self._schema = schema
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._buffer: list[ResultRow] = []
        self._run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: OutputError | None = None
        self._closing = False
        self.rows_written = 0
        remote = storage.is_remote(output.path)
        self._journal = None if remote else Journal(self._meta_dir, f"{output.shard_tag}-{self._run_id}")

    @property
    def _meta_dir(self) -> str:
        return os.path.join(self._output.path, META_DIR)

    def recover(self) -> int:
        """Fold the journal a killed run left into one part (ids already in parts skipped); returns the rows saved."""
        if self._journal is None:
            return 0
        left = segments(self._meta_dir, self._output.shard_tag)
        folded = fold(left, self._output.holding, lambda rows: self._write(self._part_path(0), rows))
        self.rows_written += folded
        return folded

    def _part_path(self, sequence: int) -> str:
        name = f"part-{self._output.shard_tag}-{self._run_id}-{sequence:05d}{PART_SUFFIX}"
        return storage.join(self._output.path, name)

    def start(self) -> None:
        """Run the periodic flush in the background."""
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())
        if self._journal is not None:
            self._journal.start()

    def add(self, row: ResultRow) -> None:
        """Queue one finished row and journal it; a full buffer wakes the writer at once."""
        if self._failure is not None:
            raise self._failure
        if self._journal is not None and self._journal.failure is not None:
            exc = self._journal.failure
            self._failure = OutputError(f"{self._output.path}: writing the answer journal failed "
                                        f"({exc.strerror or exc}); free space or fix permissions and run again",
                                        unwritable=True)
            raise self._failure
        self._buffer.append(row)
        if self._journal is not None:
            self._journal.append(row)
        if len(self._buffer) >= self._flush_rows:
            self._wake.set()

    @property
    def failure(self) -> OutputError | None:
        """The write error that stopped the writer, if any."""
        return self._failure

    async def _flush_loop(self) -> None:
        """Flush when the buffer fills or the interval passes, whichever comes first."""
        deadline = time.monotonic() + self._flush_seconds
        while not self._closing:
            timeout = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self.flush()
            if self._failure is not None:
                return
            if time.monotonic() >= deadline or not self._buffer:
                deadline = time.monotonic() + self._flush_seconds

    async def flush(self) -> None:
        """Commit the buffered rows as one part file, off the event loop."""
        async with self._lock:
            if not self._buffer or self._failure is not None:
                return
            rows, self._buffer = self._buffer, []
            sealed = self._journal.seal() if self._journal is not None else 0
            self._sequence += 1
            path = self._part_path(self._sequence)
            name = os.path.basename(path)
            write = asyncio.ensure_future(asyncio.to_thread(self._write, path, rows))
            try:
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await write  # rows handed to the thread are committed (or reported) before giving up
                    raise
            except (OSError, StorageError) as exc:
                reason = exc.message if isinstance(exc, StorageError) else exc.strerror or exc
                self._failure = OutputError(
                    f"{self._output.path}: writing {name} failed ({reason}); "
                    f"{self.rows_written} rows saved before stay; free space or fix permissions and run again",
                    unwritable=True,
                )
                return
            self.rows_written += len(rows)
            if self._journal is not None:
                self._journal.release(sealed)

    def _write(self, path: str, rows: list[ResultRow]) -> None:
        """Encode and write one part (runs in a thread)."""
        table = pa.Table.from_pylist(rows, schema=self._schema)
        storage.write_once(path, _encode(table))

    async def close(self) -> None:
        """Let the periodic flush finish its current part, then commit whatever is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
        if self._journal is not None:
            await self._journal.close(committed=self._failure is None and not self._buffer)
