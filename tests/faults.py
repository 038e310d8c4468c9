"""What the fault tests share: the ids on disk, sends per row, a live run driven on a schedule, real mounts,
and the figures docs/reliability.md quotes (printed, and appended to $BATCHRUN_FIGURES when set)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.conftest import Job, Sim

FIGURES_ENV = "BATCHRUN_FIGURES"
POLL_S = 0.05


def record(fault: str, **values: Any) -> None:
    """Print one case's measured outcome, and append it to $BATCHRUN_FIGURES (bench/reliability.py reads it)."""
    entry = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0], "fault": fault, **values}
    line = json.dumps(entry, default=str)
    print(f"figures: {line}")
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def complaints(stderr: str) -> list[str]:
    """The messages a run told its user it stopped with: `batchrun: error: ...` lines on a terminal,
    ERROR/WARNING JSON lines off one (as a subprocess or a captured stream is)."""
    found: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("batchrun: error: "):
            found.append(line.removeprefix("batchrun: error: "))
        elif line.startswith("{"):
            event = json.loads(line)
            if event.get("severity") in ("ERROR", "WARNING") and "rows_done" not in event:
                found.append(str(event["message"]))
    return found


# --- the output on disk ------------------------------------------------------------------------------


def part_files(output: Path) -> list[Path]:
    """Committed part files: what `scan_parquet(f"{output}/**/*.parquet")` reads."""
    return sorted(p for p in output.rglob("*.parquet") if "_batchrun" not in p.parts)


def committed_ids(output: Path) -> list[str]:
    """Every id in every committed part; a part that does not read whole fails the test here."""
    ids: list[str] = []
    for part in part_files(output):
        ids.extend(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return ids


def repeated(ids: Sequence[str]) -> list[str]:
    """Ids that appear more than once."""
    return [i for i, n in Counter(ids).items() if n > 1]


def finished_table(job: Job, expected: set[str]) -> pl.DataFrame:
    """The output after a finished run, checked to hold exactly one row per input id."""
    ids = committed_ids(job.output)
    assert not repeated(ids), f"ids written twice: {repeated(ids)[:5]}"
    assert set(ids) == expected, f"{len(expected - set(ids))} rows lost, {len(set(ids) - expected)} unknown"
    return job.table()


def outcome(table: pl.DataFrame, sim: Sim, rows: int) -> dict[str, Any]:
    """The figures every endpoint-fault case reports: rows by status, requests, re-sends, attempts."""
    stats = sim.stats()
    return {
        "rows": rows,
        "ok": int((table["status"] == "ok").sum()),
        "error": int((table["status"] == "error").sum()),
        "lost": rows - table["id"].n_unique(),
        "duplicates": table.height - table["id"].n_unique(),
        "requests": stats["requests"],
        "extra_requests": stats["requests"] - rows,
        "max_attempts": int(cast("int | None", table["attempts"].max()) or 0),
        "by_status": stats["by_status"],
    }


# --- sends per row -------------------------------------------------------------------------------------


def numbered_rows(n: int, text: str = "review number {i}") -> list[dict[str, Any]]:
    """`n` input rows with unique ids and texts (the simulator counts sends by prompt text)."""
    return [{"id": f"row-{i:05d}", "text": text.format(i=i)} for i in range(n)]


def prompts_of(rows: list[dict[str, Any]], template: str = "Classify: {text}") -> dict[str, str]:
    """The prompt each row is sent with, mapped back to its id."""
    return {template.format(**row): str(row["id"]) for row in rows}


def sends_per_row(sim: Sim, prompts: dict[str, str]) -> dict[str, int]:
    """How many requests the simulator received for each row id."""
    counts = sim.counts()
    return {rid: counts.get(prompt, 0) for prompt, rid in prompts.items()}


# --- a live run ---------------------------------------------------------------------------------------


def drain(process: subprocess.Popen[str]) -> list[str]:
    """Read a child's stderr in the background so a chatty run never blocks on a full pipe."""
    chunks: list[str] = []
    assert process.stderr is not None
    stream = process.stderr
    threading.Thread(target=lambda: chunks.append(stream.read()), daemon=True).start()
    return chunks


@dataclass(frozen=True)
class Step:
    """A change to the simulator `after_s` seconds after the previous step (the first: after the first answer)."""

    after_s: float
    name: str
    changes: dict[str, Any]
    lasts_s: float = 0.0  # for faults that end by themselves (storm_for_s, token_fail_for_s)


@dataclass
class Timeline:
    """What a driven run did: when each step happened, when answers arrived, how it ended."""

    returncode: int
    stderr: str
    ends: dict[str, float]
    oks: list[tuple[float, int]] = field(default_factory=list)
    finished: float = 0.0

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from `moment` until the simulator served a new 200, or None if it never did."""
        before = max((n for t, n in self.oks if t <= moment), default=0)
        after = next((t for t, n in self.oks if t > moment and n > before), None)
        return None if after is None else round(after - moment, 2)

    def served_by(self, moment: float) -> int:
        """200s the simulator had served by `moment`."""
        return max((n for t, n in self.oks if t <= moment), default=0)

    def rate_after(self, step: str) -> float:
        """Answers per second from the end of a fault to the end of the job."""
        end = self.ends[step]
        return (self.oks[-1][1] - self.served_by(end)) / max(self.finished - end, 1e-9)

    def recovery(self, step: str) -> dict[str, float | None]:
        """For a fault that ended: seconds to the first answer after it, and to the end of the job."""
        end = self.ends[step]
        return {
            "first_ok_after_fault_s": self.first_ok_after(end),
            "job_done_after_fault_s": round(self.finished - end, 2),
        }


def drive(job: Job, sim: Sim, steps: Sequence[Step], *args: str, timeout_s: float = 300) -> Timeline:
    """Run the job in a subprocess, apply `steps` on their schedule, and watch the simulator until it exits."""
    process = job.popen("run", *args)
    errors = drain(process)
    ends: dict[str, float] = {}
    oks: list[tuple[float, int]] = []
    pending = list(steps)
    deadline = time.monotonic() + timeout_s
    last: float | None = None
    try:
        while process.poll() is None:
            now = time.monotonic()
            assert now < deadline, "the run did not finish in time"
            served = int(sim.stats()["by_status"].get("200", 0))
            oks.append((now, served))
            if last is None and served > 0:
                last = now
            while pending and last is not None and now >= last + pending[0].after_s:
                step = pending.pop(0)
                sim.configure(**step.changes)
                last = now
                ends[step.name] = now + step.lasts_s
            time.sleep(POLL_S)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    finished = time.monotonic()
    oks.append((finished, int(sim.stats()["by_status"].get("200", 0))))
    assert not pending, f"the run ended before steps {[s.name for s in pending]} could apply"
    return Timeline(process.returncode, "".join(errors), ends, oks, finished)


# --- real mounts ---------------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    """mount(8), raising CalledProcessError with its message."""
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


@dataclass
class Mount:
    """A tmpfs this test mounted: remount it to resize it or make it read-only."""

    path: Path

    def remount(self, options: str) -> None:
        """`mount -o remount,OPTIONS`."""
        _mount("-o", f"remount,{options}", str(self.path))

    def fill(self, leave_bytes: int) -> Path:
        """A filler file that leaves about `leave_bytes` free."""
        stats = os.statvfs(self.path)
        filler = self.path / "filler.bin"
        filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
        return filler


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Mount]:
    """A small tmpfs mounted at `path` for the test; skipped with the reason where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        _mount("-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path))
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        pytest.skip(f"storage faults need a real tmpfs, and mounting one needs root (CAP_SYS_ADMIN): {detail}")
    try:
        yield Mount(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
