"""The writer's side of an output directory: the shard's lock, its job record, rewrites, and the part writer.

A part file is written to a temporary name and renamed into place (locally) or PUT as one object
(gs://), so a reader sees it whole or not at all. Every id appears in at most one committed part.
Reading the directory is saved.py's concern; this module only writes.
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
from collections.abc import Iterator
from typing import Any

import polars as pl
import pyarrow as pa

from batchrun import storage
from batchrun.errors import OutputError
from batchrun.results import Row
from batchrun.saved import META_DIR, PART_SUFFIX, SavedOutput, encode, frame_of
from batchrun.shards import Shard, shard_of_part


class OutputWriter:
    """One shard's hold on the output directory: what only a run does to it."""

    def __init__(self, path: str, shard: Shard) -> None:
        self.saved = SavedOutput(path)
        self.path = self.saved.path
        self.shard = shard
        self.shard_tag = shard.tag
        self.meta_path = self.saved.meta_path

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
        job = {"fingerprint": fingerprint, "input": identity}
        meta = self.saved.meta()
        if meta is not None and not _same_job(meta, job) and not force:
            raise OutputError(
                f"{self.path} holds results of a different job spec or input "
                f"(fingerprint {meta.get('fingerprint')}, input {(meta.get('input') or {}).get('path')}). "
                "Use another output.path, or pass --force to add to it anyway"
            )
        if meta is None or not _same_job(meta, job):
            record = {**job, "written_at": datetime.datetime.now(datetime.UTC).isoformat()}
            try:
                storage.write_once(self.meta_path, json.dumps(record, indent=2).encode())
            except OSError as exc:
                # Another task of the same job may have written it first (tasks start together).
                if not _same_job(self.saved.meta() or {}, job):
                    raise OutputError(
                        f"{self.path}: cannot write to the output directory ({exc.strerror}); "
                        "free space or fix permissions and run again", unwritable=True
                    ) from None
        self._clean_temp()

    def _clean_temp(self) -> int:
        """Remove temporary files a killed run left: this shard's parts, and job.json's.

        A peer task writing job.json at this moment loses its temporary file, finds the file written
        by this task and carries on; other shards' part files are theirs to clean.
        """
        if storage.is_remote(self.path):
            return 0
        removed = 0
        for name in storage.list_files(self.path, storage.TEMP_SUFFIX):
            if os.path.basename(name).startswith(f"part-{self.shard_tag}-") or f"/{META_DIR}/" in name:
                storage.remove(name)
                removed += 1
        return removed

    def drop_errors(self) -> tuple[int, int]:
        """Remove the `error` rows this run owns so --retry-errors sends them again; each part is replaced whole.

        Returns (dropped, left). A single task owns every row and rewrites any part. One of N tasks
        rewrites only the parts named for it: a part written under another task count holds rows of
        the tasks running beside it, and two tasks rewriting one part would undo each other's work.
        The error rows it owns in such parts are counted as left.
        """
        shard = self.shard
        dropped = left = 0
        for part in self.saved.parts():
            named = shard_of_part(os.path.basename(part))
            if shard.count > 1 and named != shard:
                if named is None or named.count != shard.count:
                    frame = frame_of(storage.read_parquet(part, ["id", "status"])).filter(pl.col("status") == "error")
                    left += len(shard.owned(frame.get_column("id")))
                continue
            table = storage.read_parquet(part)
            frame = frame_of(table)
            mask = (frame.get_column("status") == "error") & frame.get_column("id").map_elements(
                shard.owns, return_dtype=pl.Boolean
            )
            count = int(mask.sum())
            if count == 0:
                continue
            kept = table.filter(pa.array((~mask).to_list()))
            if kept.num_rows == 0:
                storage.remove(part)
            else:
                storage.write_once(part, encode(kept))
            dropped += count
        return dropped, left


def _same_job(meta: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether a job record was written by this spec over this input: the one place they are compared."""
    return all(meta.get(key) == value for key, value in job.items())


class PartWriter:
    """The one writer: workers hand it rows, it commits a part every `flush_rows` rows or `flush_seconds`."""

    def __init__(self, output: OutputWriter, schema: pa.Schema, *, flush_rows: int, flush_seconds: float) -> None:
        self._output = output
        self._schema = schema
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._buffer: list[Row] = []
        self._run_id = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: OutputError | None = None
        self._closing = False
        self.rows_written = 0

    def start(self) -> None:
        """Run the periodic flush in the background."""
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    def add(self, row: Row) -> None:
        """Queue one finished row; a full buffer wakes the writer at once."""
        if self._failure is not None:
            raise self._failure
        self._buffer.append(row)
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
            self._sequence += 1
            name = f"part-{self._output.shard_tag}-{self._run_id}-{self._sequence:05d}{PART_SUFFIX}"
            path = storage.join(self._output.path, name)
            write = asyncio.ensure_future(asyncio.to_thread(self._write, path, rows))
            try:
                try:
                    await asyncio.shield(write)
                except asyncio.CancelledError:
                    await write  # rows handed to the thread are committed (or reported) before giving up
                    raise
            except OSError as exc:
                self._failure = OutputError(
                    f"{self._output.path}: writing {name} failed ({exc.strerror or exc}); "
                    f"{self.rows_written} rows saved before stay; free space or fix permissions and run again",
                    unwritable=True,
                )
                return
            self.rows_written += len(rows)

    def _write(self, path: str, rows: list[Row]) -> None:
        """Encode and write one part (runs in a thread)."""
        table = pa.Table.from_pylist(rows, schema=self._schema)
        storage.write_once(path, encode(table))

    async def close(self) -> None:
        """Let the periodic flush finish its current part, then commit whatever is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
