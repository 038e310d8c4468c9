"""The answer journal: every finished row written down the moment it arrives, so a SIGKILL re-sends only rows in flight.

Rows wait in the writer's buffer for up to `flush_rows` rows or `flush_seconds` before they become a
Parquet part; a kill in that window used to lose every buffered answer. The writer also appends each
row, as it is handed over, as one JSON line to a local file in the output's `_batchrun/` directory:
one `write` on the event loop (about 15 us), so the row is in the kernel before its worker sends
the next request, and a killed process loses nothing written. A background thread fsyncs the file
every `SYNC_EVERY_S`, so a host that crashes loses at most that much.

Each request is marked too, as it is sent (`{"$sent": id, "attempt": n}`, n counting the row's requests
over every run), so the requests of rows in flight at a kill, sent but never answered, still count: the
next run carries them on to the row it saves (`attempts`, what `report` sums). The writer marks the rows
still unanswered again in each new segment, so removing sealed segments never loses a mark.

Readers never see the journal: Parquet parts stay the checkpoint. It is written in numbered
segments; the writer seals the current one as it takes its buffer for a part and removes sealed
segments once that part is committed. A run that starts after a kill folds what the segments hold
into one part first, skipping ids a part already holds (a kill between committing a part and
removing its segments leaves both), then removes them: an id is never in two parts.
Object stores have no append, so a gs:// output has no journal (docs/reliability.md says why).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import decimal
import json
import os
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from batchrun.schema import ResultRow

PREFIX = "journal-"
SUFFIX = ".jsonl"
SYNC_EVERY_S = 0.2
_SENT = "$sent"
_TAGS: dict[str, Callable[[str], Any]] = {
    "$bytes": base64.b64decode,
    "$datetime": datetime.datetime.fromisoformat,
    "$date": datetime.date.fromisoformat,
    "$decimal": decimal.Decimal,
}


def _tagged(value: Any) -> dict[str, str]:
    """JSON for the values a row holds that JSON has no type for (media bytes, timestamps, kept dates)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, datetime.date):
        return {"$date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    raise TypeError(type(value).__name__)


def _untagged(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        ((key, value),) = obj.items()
        if key in _TAGS and isinstance(value, str):
            return _TAGS[key](value)
    return obj


def segments(directory: str, shard_tag: str) -> list[str]:
    """This shard's journal segments in `directory`, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    mine = [n for n in names if n.startswith(f"{PREFIX}{shard_tag}-") and n.endswith(SUFFIX)]
    return [os.path.join(directory, n) for n in sorted(mine)]


def _lines(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Every whole line the segments hold; a line cut short by a host crash is skipped."""
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                with contextlib.suppress(ValueError):
                    yield json.loads(line, object_hook=_untagged)


def read_rows(paths: list[str]) -> list[ResultRow]:
    """Every finished row the segments hold."""
    return [cast("ResultRow", line) for line in _lines(paths) if _SENT not in line]


def read_sends(paths: list[str]) -> dict[str, int]:
    """For each id marked as sent, how many requests it was sent in all (the highest attempt marked)."""
    sends: dict[str, int] = {}
    for line in _lines(paths):
        if _SENT in line:
            rid, attempt = str(line[_SENT]), int(line.get("attempt") or 0)
            sends[rid] = max(sends.get(rid, 0), attempt)
    return sends


class Journal:
    """One run's append-only journal of finished rows, in segments sealed as parts are committed.

    Each append opens the segment, writes one line and closes it again: a file held open for writing
    would keep the file system from being remounted read-only or unmounted (the fsync thread opens
    it read-only, which fsync accepts on Linux).
    """

    def __init__(self, directory: str, name: str) -> None:
        self._directory = directory
        self._name = name  # "<shard tag>-<run id>": segment names sort by run, then by sequence
        self._sequence = 1
        self._written: set[int] = set()  # sequences written since the last fsync
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.failure: OSError | None = None

    def _path(self, sequence: int) -> str:
        return os.path.join(self._directory, f"{PREFIX}{self._name}-{sequence:05d}{SUFFIX}")

    def start(self) -> None:
        """fsync in the background every SYNC_EVERY_S."""
        self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    def append(self, row: ResultRow) -> None:
        """Write one finished row; a value JSON cannot carry leaves that row to the part write alone."""
        if self.failure is not None:
            return
        try:
            line = json.dumps(row, default=_tagged, ensure_ascii=False).encode() + b"\n"
        except (TypeError, ValueError):
            return
        self._write(line)

    def mark(self, sends: dict[str, int]) -> None:
        """Write that each row id was sent its n-th request (counted over every run), all in one append."""
        if self.failure is None and sends:
            lines = (json.dumps({_SENT: rid, "attempt": n}, ensure_ascii=False) + "\n" for rid, n in sends.items())
            self._write("".join(lines).encode())

    def _write(self, line: bytes) -> None:
        """Append one line to the current segment, in one open-write-close."""
        try:
            try:
                fd = os.open(self._path(self._sequence), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            except FileNotFoundError:
                os.makedirs(self._directory, exist_ok=True)
                fd = os.open(self._path(self._sequence), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
        except OSError as exc:
            self.failure = exc
        self._written.add(self._sequence)

    def seal(self) -> int:
        """Start a new segment for rows appended from now on; returns the last sequence the old rows are in."""
        sealed = self._sequence
        self._sequence += 1
        return sealed

    def release(self, sealed: int) -> None:
        """Remove segments up to `sealed`: a committed part holds their rows now.

        A segment that cannot be removed (the disk turned read-only) is left for the next run, whose fold
        skips the ids a part already holds.
        """
        for path in segments(self._directory, self._name):
            if int(path[-len(SUFFIX) - 5 : -len(SUFFIX)]) <= sealed:
                with contextlib.suppress(OSError):
                    os.remove(path)

    async def _sync_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SYNC_EVERY_S)
            await self._sync()

    async def _sync(self) -> None:
        """fsync the segments written since the last time (in a thread: it waits on the disk)."""
        if not self._written:
            return
        paths = [self._path(sequence) for sequence in sorted(self._written)]
        self._written = set()
        try:
            await asyncio.to_thread(_fsync, paths)
        except OSError as exc:
            self.failure = exc

    async def close(self, *, committed: bool) -> None:
        """fsync; with `committed` (every row is in a part) remove every segment."""
        self._stop.set()
        if self._task is not None:
            await self._task
        await self._sync()
        if committed:
            self.release(self._sequence)


def _fsync(paths: list[str]) -> None:
    """fsync each segment through a read-only descriptor (one a committed part released may be gone)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fold(
    paths: list[str], saved: Callable[[set[str]], set[str]], commit: Callable[[list[ResultRow]], None]
) -> tuple[int, list[ResultRow]]:
    """Commit the rows of a killed run's journal as one part, skipping ids `saved` reports in parts; then remove it.

    Returns how many rows were folded, and the skipped rows: each is either the very row a part holds, or
    an answer meant to replace an older one (--refresh, --retry-errors), which only the rerun comparison
    can tell apart. Run before the saved ids are read, under the shard's lock.
    """
    latest = {row["id"]: row for row in read_rows(paths)}
    rows: list[ResultRow] = []
    held: list[ResultRow] = []
    if latest:
        already = saved(set(latest))
        rows = [row for rid, row in latest.items() if rid not in already]
        held = [row for rid, row in latest.items() if rid in already]
        if rows:
            commit(rows)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return len(rows), held
