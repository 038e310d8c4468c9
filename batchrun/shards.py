"""Which ids a task owns: a stable hash of the id, so a retried task takes exactly the same part."""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass

from batchrun.errors import SpecError

_TAG = re.compile(r"part-(\d+)of(\d+)-")


@dataclass(frozen=True)
class Shard:
    """Task `index` of `count` (0-based), as Cloud Run numbers its tasks."""

    index: int = 0
    count: int = 1

    def owns(self, rid: str) -> bool:
        """Whether this task processes the row with id `rid`."""
        return self.count == 1 or owner(rid, self.count) == self.index

    @property
    def tag(self) -> str:
        """The part-file name tag, so each task writes and cleans only its own files."""
        return f"{self.index:04d}of{self.count:04d}"

    @property
    def share(self) -> float:
        """This task's share of a job-wide rate budget."""
        return 1.0 / self.count

    @property
    def label(self) -> str:
        """`I/N`, as --shard takes it and logs show it."""
        return f"{self.index}/{self.count}"


def owner(rid: str, count: int) -> int:
    """The index of the task that owns `rid` when the job runs as `count` tasks."""
    return zlib.crc32(rid.encode("utf-8")) % count


def shard_of_part(name: str) -> Shard | None:
    """The shard that wrote a part file, read back from its name (None for a name not ours)."""
    match = _TAG.search(name)
    if match is None:
        return None
    index, count = int(match.group(1)), int(match.group(2))
    return Shard(index, count) if 0 <= index < count else None


def task_attempt() -> int:
    """CLOUD_RUN_TASK_ATTEMPT: 0 on a task's first run, 1 and up on its retries."""
    text = os.environ.get("CLOUD_RUN_TASK_ATTEMPT", "0")
    try:
        return max(int(text), 0)
    except ValueError as exc:
        raise SpecError(f"CLOUD_RUN_TASK_ATTEMPT {text!r}: expected a whole number") from exc


def parse_shard(text: str | None) -> Shard:
    """--shard I/N, else CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT, else the whole job."""
    if text is None:
        index = os.environ.get("CLOUD_RUN_TASK_INDEX")
        count = os.environ.get("CLOUD_RUN_TASK_COUNT")
        if index is None and count is None:
            return Shard()
        text = f"{index or 0}/{count or 1}"
        source = "CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT"
    else:
        source = "--shard"
    try:
        left, right = text.split("/")
        shard = Shard(int(left), int(right))
    except ValueError as exc:
        raise SpecError(f"{source} {text!r}: expected I/N with 0 <= I < N, e.g. --shard 0/4") from exc
    if not 0 <= shard.index < shard.count:
        raise SpecError(f"{source} {text!r}: the index must be at least 0 and below the count")
    return shard
