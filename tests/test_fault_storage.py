"""Storage faults on real filesystems: a disk that fills up, an output that turns or starts read-only.

The run must stop with exit 3 and one clear message, keep every row it saved before, leave no
half-written file behind, and finish the job when run again after the fault clears. Mounting a
tmpfs needs root; where that is not allowed these cases skip and say why.
"""

from __future__ import annotations

import base64
import random
import time
from pathlib import Path
from typing import Any

from tests.faults import committed_ids, complaints, drain, finished_table, numbered_rows, record, repeated, tmpfs


def _bulky_rows(n: int) -> list[dict[str, Any]]:
    """Rows whose kept text (~2 KB, incompressible) makes each part file large, so a small disk fills."""
    rng = random.Random(6)
    return [
        {**row, "text": f"{row['text']} " + base64.b64encode(rng.randbytes(1500)).decode()} for row in numbered_rows(n)
    ]


def _one_message(stderr: str, *fragments: str) -> str:
    """The message a stopped run ends with, checked to mention each fragment, with no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    message = complaints(stderr)[-1]
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_disk_full_while_writing_a_part(make_job: Any, tmp_path: Path) -> None:
    """The output's disk fills up mid-run: exit 3, saved rows stay, no partial file; after it is freed, the job ends."""
    rows = _bulky_rows(400)
    with tmpfs(tmp_path / "out", "400k") as disk:
        job = make_job(rows, output__flush_rows=50)
        result = job.run("run")
        assert result.returncode == 3, result.stderr
        message = _one_message(result.stderr, "No space left on device", "run again")
        saved = committed_ids(job.output)
        assert saved and not repeated(saved)
        assert not list(job.output.rglob("*.tmp")), "a failed write must not leave its temporary file"
        disk.remount("size=8m")
        again = job.run("run")
        assert again.returncode == 0, again.stderr
        table = finished_table(job, {r["id"] for r in rows})
        assert set(saved) <= set(table["id"])
    record(
        "disk full while writing a part (tmpfs 400 KiB)",
        rows=len(rows),
        exit_code=result.returncode,
        saved_before_fault=len(saved),
        lost=0,
        duplicates=0,
        message=message,
    )


def test_output_turns_read_only_mid_run(sim: Any, make_job: Any, tmp_path: Path) -> None:
    """The output filesystem is remounted read-only during a run: exit 3, saved rows stay, a rerun finishes."""
    rows = numbered_rows(500)
    with tmpfs(tmp_path / "out", "16m") as disk:
        job = make_job(rows, output__flush_rows=50, output__flush_seconds=0.2)
        sim.configure(latency_s=0.05)
        process = job.popen("run")
        stderr = drain(process)
        while process.poll() is None and not committed_ids(job.output):
            time.sleep(0.02)
        for _ in range(100):  # a remount waits for no open writer
            try:
                disk.remount("ro")
                break
            except Exception:
                time.sleep(0.01)
        process.wait(timeout=120)
        assert process.returncode == 3, "".join(stderr)
        message = _one_message("".join(stderr), "Read-only file system", "run again")
        saved = committed_ids(job.output)
        assert saved and not repeated(saved)
        disk.remount("rw")
        again = job.run("run")
        assert again.returncode == 0, again.stderr
        finished_table(job, {r["id"] for r in rows})
    record(
        "output remounted read-only mid-run",
        rows=len(rows),
        exit_code=process.returncode,
        saved_before_fault=len(saved),
        lost=0,
        duplicates=0,
        message=message,
    )


def test_output_read_only_from_the_start(sim: Any, make_job: Any, tmp_path: Path) -> None:
    """A read-only output directory, new or holding an earlier run: refused before any request is sent."""
    rows = numbered_rows(20)
    with tmpfs(tmp_path / "out", "1m") as disk:
        job = make_job(rows)
        disk.remount("ro")
        fresh = job.run("run")
        disk.remount("rw")
        assert job.run("run", "--limit", "5").returncode == 0
        disk.remount("ro")
        resumed = job.run("run")
        disk.remount("rw")
    for result in (fresh, resumed):
        assert result.returncode == 3, result.stderr
        _one_message(result.stderr, "Read-only file system")
    assert sim.stats()["requests"] == 5, "no request may be sent when nothing can be saved"
    record(
        "output read-only before the run starts",
        exit_code=fresh.returncode,
        requests_sent=sim.stats()["requests"] - 5,
        message=_one_message(fresh.stderr),
    )


def test_output_path_under_a_file(sim: Any, make_job: Any) -> None:
    """output.path inside a regular file (no mount needed): one clear message, exit 3, nothing sent."""
    job = make_job(output__path="input.jsonl/out")
    result = job.run("run")
    assert result.returncode == 3, result.stderr
    message = _one_message(result.stderr, "input.jsonl/out", "Not a directory")
    assert sim.stats()["requests"] == 0
    record("output path under a regular file", exit_code=result.returncode, requests_sent=0, message=message)
