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

import pyarrow as pa

from batchrun import storage
from batchrun.errors import OutputError, StorageError
from batchrun.ids import SavedIds, id_array
from batchrun.journal import Journal, fold, read_rows, read_sends, segments
from batchrun.rerun import same_job
from batchrun.saved import META_DIR, PART_SUFFIX, SavedOutput, encode
from batchrun.schema import ResultRow
from batchrun.shards import Shard, shard_of_part


class OutputWriter:
    """One shard's hold on the output directory: what only a run does to it."""

    def __init__(self, path: str, shard: Shard) -> None:
        self.saved = SavedOutput(path)
        self.path = self.saved.path
        self.shard = shard
        self.shard_tag = shard.tag
        self.meta_path = self.saved.meta_path
        self._replacing: _Placement | None = None
        # id -> requests sent before this run for rows it sends again: a replaced error row's, and those a kill lost
        self.replaced_attempts: dict[str, int] = {}

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
            except BlockingIOError as exc:
                raise OutputError(
                    f"{self.path}: another `batchrun run` is writing this shard ({self.shard_tag}) right now; "
                    "wait for it to finish, or stop it, then run again"
                ) from exc
            except OSError:
                pass  # a file system without locks (some FUSE mounts): run unguarded, as on an object store
            yield
        finally:
            os.close(descriptor)

    def prepare(self) -> None:
        """Create the directory, check it takes files, and clean this shard's crash leftovers."""
        storage.makedirs(self.path)
        storage.check_writable(self.path)
        self._clean_temp()

    def record_job(self, record: dict[str, Any]) -> None:
        """Write job.json for this run's spec and input, unless it says so already (or a peer task just wrote it)."""
        if same_job(self.saved.meta(), record):
            return
        stamped = {**record, "written_at": datetime.datetime.now(datetime.UTC).isoformat()}
        try:
            for tries_left in reversed(range(3)):
                try:
                    storage.write_once(self.meta_path, json.dumps(stamped, indent=2).encode())
                    break
                except FileNotFoundError:
                    # A peer task starting up cleaned our temporary file away (`_clean_temp`): write it again.
                    if tries_left == 0 or same_job(self.saved.meta(), record):
                        raise
        except OSError as exc:
            # Another task of the same job may have written it first (tasks start together).
            if not same_job(self.saved.meta(), record):
                raise OutputError(
                    f"{self.path}: cannot write to the output directory ({exc.strerror or exc}); "
                    "free space or fix permissions and run again",
                    unwritable=True,
                ) from exc

    def _clean_temp(self) -> int:
        """Remove temporary files a killed run left: this shard's parts, and job.json's.

        A peer task writing job.json at this moment loses its temporary file and writes it again
        (`record_job`); other shards' part files are theirs to clean.
        """
        if storage.is_remote(self.path):
            return 0
        removed = 0
        for name in storage.list_files(self.path, storage.TEMP_SUFFIX):
            if os.path.basename(name).startswith(f"part-{self.shard_tag}-") or f"/{META_DIR}/" in name:
                storage.remove(name)
                removed += 1
        return removed

    def may_rewrite(self, part: str) -> bool:
        """Whether this run may rewrite a part: a single task owns every row; one of N tasks only the parts
        named for it, since a part written under another task count holds rows of the tasks beside it and two
        tasks rewriting one part would undo each other's work."""
        return self.shard.count == 1 or shard_of_part(os.path.basename(part)) == self.shard

    def replace_rows(self, placed: pa.Table, parts: list[str]) -> None:
        """Rows (id, part index, ok, attempts) whose new row, when committed, replaces the old one in its part;
        the error rows among them carry their attempts on to their new rows."""
        import pyarrow.compute as pc  # loaded only by a run with saved rows

        self._replacing = _Placement(placed, parts)
        errors = placed.filter(pc.invert(placed["ok"]))
        self.replaced_attempts.update(
            zip(errors["id"].to_pylist(), (n or 0 for n in errors["attempts"].to_pylist()), strict=True)
        )

    def drop(self, placed: pa.Table, parts: list[str]) -> None:
        """Remove rows (id, part index) from their parts, each part rewritten whole."""
        import pyarrow.compute as pc

        for index in sorted(set(placed["part"].to_pylist())):
            self._rewrite(parts[index], placed.filter(pc.equal(placed["part"], index))["id"], None)

    def commit(self, path: str, table: pa.Table) -> None:
        """Save finished rows: new ids as the part `path`; each replacement inside the part its old row is in.

        One write a file, each whole (storage.write_once), and every id in exactly one of them, so each id's
        swap from old row to new is one atomic step: a reader, or a kill at any instant, sees one or the other.
        """
        places = self._replacing.locate(table.column("id").to_pylist()) if self._replacing else None
        if places is None or all(place is None for place in places):
            storage.write_once(path, encode(table))
            return
        fresh = table.filter(pa.array([place is None for place in places]))
        if fresh.num_rows:
            storage.write_once(path, encode(fresh))
        for part in sorted({place for place in places if place is not None}):
            rows = table.filter(pa.array([place == part for place in places]))
            self._rewrite(part, rows["id"], rows)

    def _rewrite(self, part: str, ids: pa.Array | pa.ChunkedArray, rows: pa.Table | None) -> None:
        """Replace a part whole by itself without `ids`, plus `rows` (removed when nothing is left)."""
        import pyarrow.compute as pc

        table = storage.read_parquet(part)  # through storage.open_parquet: Arrow never holds a Python file object
        kept = table.filter(pc.invert(pc.is_in(table["id"], value_set=id_array(ids))))
        if rows is not None:
            kept = pa.concat_tables([kept, rows], promote_options="permissive")
        if kept.num_rows == 0:
            storage.remove(part)
        else:
            storage.write_once(part, encode(kept))


class _Placement:
    """Which saved part holds each row being replaced."""

    def __init__(self, placed: pa.Table, parts: list[str]) -> None:
        self._ids = SavedIds(placed["id"])
        self._parts = [parts[index] for index in placed["part"].to_pylist()]

    def locate(self, ids: list[str]) -> list[str | None]:
        """For each id, the part that holds its old row, or None for an id saved nowhere."""
        return [None if row is None else self._parts[row] for row in self._ids.rows_of(ids)]


class PartWriter:
    """The one writer: workers hand it rows, it commits a part every `flush_rows` rows or `flush_seconds`."""

    def __init__(self, output: OutputWriter, schema: pa.Schema, *, flush_rows: int, flush_seconds: float) -> None:
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
        self.held: list[ResultRow] = []  # journaled rows whose ids a part held at recover()
        self._unsaved: dict[str, int] = {}  # id -> requests sent for it so far (all runs), until its row is added
        remote = storage.is_remote(output.path)
        self._journal = None if remote else Journal(self._meta_dir, f"{output.shard_tag}-{self._run_id}")

    @property
    def _meta_dir(self) -> str:
        return os.path.join(self._output.path, META_DIR)

    def recover(self) -> int:
        """Fold the journal a killed run left into one part; returns the rows saved.

        Run before the rerun comparison, with no replacements marked, so the fold writes new ids only. An id a part
        already holds is skipped and kept in `held`: a row committed before the kill (its segments not yet
        removed), or a replacement (--refresh, --retry-errors) whose old row is still saved, which the comparison
        picks out and `replace_now` saves in place of the old row, so an id is never in two parts.
        """
        if self._journal is None:
            return 0
        left = segments(self._meta_dir, self._output.shard_tag)
        self._carry_lost_sends(left)
        folded, self.held = fold(left, self._output.saved.holding, lambda rows: self._write(self._part_path(0), rows))
        self.rows_written += folded
        return folded

    def _carry_lost_sends(self, left: list[str]) -> None:
        """The requests a killed run sent for rows it never answered: marked again in this run's journal (before the
        old segments go) and added to the `attempts` of the rows this run saves for those ids."""
        assert self._journal is not None
        sends = read_sends(left)
        if not sends:
            return
        for row in read_rows(left):
            sends.pop(row["id"], None)  # an answered row's attempts count its own requests
        for rid in self._output.saved.holding(set(sends)):
            del sends[rid]  # saved since (its segments not yet removed at the kill)
        self._journal.mark(sends)
        self._unsaved.update(sends)
        replaced = self._output.replaced_attempts
        for rid, attempts in sends.items():
            replaced[rid] = replaced.get(rid, 0) + attempts

    def sent(self, rid: str) -> None:
        """Mark in the journal that a request for `rid` goes out now (before any answer can be saved)."""
        if self._journal is not None:
            attempt = self._unsaved.get(rid, 0) + 1
            self._unsaved[rid] = attempt
            self._journal.mark({rid: attempt})

    def _mark_unsaved(self) -> None:
        """Mark the rows sent and not yet answered again in the current segment, before older segments are removed
        (one append for them all: 2,000 rows in flight hold the loop about 15 ms per part)."""
        assert self._journal is not None
        self._journal.mark(self._unsaved)

    def replace_now(self, rows: list[ResultRow]) -> None:
        """Save journaled answers in place of the saved rows they replace (marked by OutputWriter.replace_rows)."""
        self._sequence += 1
        self._write(self._part_path(self._sequence), rows)
        for row in rows:
            self._output.replaced_attempts.pop(row["id"], None)  # the journaled row already counts them
        self.rows_written += len(rows)
        self.held = []

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
            self._failure = OutputError(
                f"{self._output.path}: writing the answer journal failed "
                f"({exc.strerror or exc}); free space or fix permissions and run again",
                unwritable=True,
            )
            raise self._failure
        self._buffer.append(row)
        self._unsaved.pop(row["id"], None)
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
                self._mark_unsaved()
                self._journal.release(sealed)

    def _write(self, path: str, rows: list[ResultRow]) -> None:
        """Encode and write one part (runs in a thread)."""
        self._output.commit(path, pa.Table.from_pylist(rows, schema=self._schema))

    async def close(self) -> None:
        """Let the periodic flush finish its current part, then commit whatever is left."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        await self.flush()
        if self._journal is not None:
            committed = self._failure is None and not self._buffer
            if committed and self._unsaved:  # requests sent for rows a stop left unanswered: kept for the next run
                sealed = self._journal.seal()
                self._mark_unsaved()
                self._journal.release(sealed)
                committed = False
            await self._journal.close(committed=committed)
