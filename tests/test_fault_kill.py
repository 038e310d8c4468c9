"""SIGKILL at random moments, again and again, each time resumed: no row lost, none on disk twice, only rows in flight
re-sent.

The test watches the output directory while each run is live (every committed part must read whole
and no id may appear twice at any moment), kills the run at a seeded random moment or the instant a
part file is being written, and counts from the simulator which rows each kill forced to be sent again:
rows sent whose answer was neither in a part nor in the answer journal at the kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.journal import read_rows, segments
from tests.faults import (
    committed_ids,
    drain,
    finished_table,
    numbered_rows,
    prompts_of,
    record,
    repeated,
    sends_per_row,
)

CONCURRENCY = 16
FLUSH_ROWS = 100
CHECK_EVERY_S = 0.1
WRITE_WAIT_S = 5.0  # how long to wait for a part write before killing anyway


def _temp_files(output: Path) -> list[Path]:
    """Files caught half-written (the sink writes `part-....parquet.PID.tmp`, then renames)."""
    return list(output.rglob("*.tmp")) if output.exists() else []


def _part_in_write(output: Path) -> bool:
    """Whether a part file is being written right now."""
    return output.exists() and any(output.glob("part-*.tmp"))


def _watch_and_kill(process: subprocess.Popen[str], sim: Any, output: Path, kill_after: float, in_write: bool) -> str:
    """Check the directory while the run is live; SIGKILL it `kill_after` s after its first request reached the
    simulator or, with `in_write`, the instant a part is mid-write. Returns when the kill landed."""
    requests_before = sim.stats()["requests"]
    sending_since: float | None = None
    next_check = 0.0
    while process.poll() is None:
        now = time.monotonic()
        if sending_since is None and sim.stats()["requests"] > requests_before:
            sending_since = now
        if sending_since is not None:
            if in_write and _part_in_write(output):
                process.send_signal(signal.SIGKILL)
                return "during a part write"
            if now - sending_since >= (kill_after if not in_write else WRITE_WAIT_S):
                process.send_signal(signal.SIGKILL)
                return "at a random moment"
        if now >= next_check:
            ids = committed_ids(output) if output.exists() else []
            assert not repeated(ids), f"an id is on disk twice while the run is live: {repeated(ids)[:3]}"
            next_check = now + CHECK_EVERY_S
        time.sleep(0.001 if sending_since is not None and in_write else 0.005)
    return "not killed: the run finished"


@pytest.mark.parametrize(
    ("kills", "n"),
    [pytest.param(10, 4000, id="10-kills"), pytest.param(40, 8000, id="40-kills", marks=pytest.mark.slow)],
)
def test_sigkill_loop_loses_nothing_and_writes_nothing_twice(sim: Any, make_job: Any, kills: int, n: int) -> None:
    """SIGKILLs, every third aimed at a part write (and at least one lands there), resumed each time: one row per id
    at the end, and each kill re-sends at most the requests in flight (answers are journaled as they arrive)."""
    rows = numbered_rows(n, text="review number {i} " + "with some padding " * 20)
    job = make_job(rows, limits__concurrency=CONCURRENCY, output__flush_rows=FLUSH_ROWS, output__flush_seconds=0.5)
    sim.configure(latency_s=0.25)  # 64 rows/s: ten kills (three may wait 5 s for a part write) leave rows to send
    prompts = prompts_of(rows)
    rng = random.Random(6)
    resent_per_kill: list[int] = []
    moments: dict[str, int] = {}
    leftovers = 0
    for k in range(kills):
        before = sends_per_row(sim, prompts)
        process = job.popen("run")
        drain(process)
        moment = _watch_and_kill(process, sim, job.output, rng.uniform(0.0, 1.0), in_write=k % 3 == 2)
        process.wait()
        moments[moment] = moments.get(moment, 0) + 1
        if process.returncode != -signal.SIGKILL:
            break
        leftovers += len(_temp_files(job.output))
        saved = committed_ids(job.output) if job.output.exists() else []
        assert not repeated(saved)
        if saved:
            assert pl.scan_parquet(f"{job.output}/**/*.parquet").select("id").collect().height == len(saved)
        after = sends_per_row(sim, prompts)
        sent = {rid for rid, count in after.items() if count > before[rid]}
        journaled = {row["id"] for row in read_rows(segments(str(job.output / "_batchrun"), "0000of0001"))}
        resent_per_kill.append(len(sent - set(saved) - journaled))
    assert len(resent_per_kill) == kills, f"the job finished after {len(resent_per_kill)} kills; make it bigger"
    assert moments.get("during a part write", 0) >= 1, f"no kill landed during a part write: {moments}"
    sim.configure(latency_s=0.0)  # the rows no kill reached: sent at full speed
    final = job.run("run")
    assert final.returncode == 0, final.stderr
    finished_table(job, {r["id"] for r in rows})
    assert not _temp_files(job.output), "leftover temporary files must be cleaned by the next run"
    sends = sends_per_row(sim, prompts)
    assert sum(sends.values()) - n == sum(resent_per_kill), "every re-send is explained by one kill"
    bound = CONCURRENCY
    assert max(resent_per_kill) <= bound, f"a kill cost {max(resent_per_kill)} re-sends; at most {bound} are in flight"
    record(
        f"SIGKILL x{kills}, resumed each time ({n} rows)",
        rows=n,
        kills=kills,
        moments=moments,
        leftover_temp_files=leftovers,
        lost=0,
        duplicates=0,
        resent_total=sum(resent_per_kill),
        resent_max_per_kill=max(resent_per_kill),
        resent_mean_per_kill=round(sum(resent_per_kill) / kills, 1),
        bound_per_kill=bound,
        rows_sent_twice_or_more=sum(1 for c in sends.values() if c > 1),
    )


def test_leftover_temporary_files_are_ignored_and_cleaned(make_job: Any) -> None:
    """A half-written part left by a crash is invisible to readers and removed by the next run."""
    job = make_job(n=30)
    assert job.run("run", "--limit", "10").returncode == 0
    parts = list(job.output.glob("part-*.parquet"))
    leftover = Path(f"{parts[0]}.{os.getpid()}.tmp")
    leftover.write_bytes(parts[0].read_bytes()[:100])
    assert pl.scan_parquet(f"{job.output}/**/*.parquet").collect().height == 10
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    assert not leftover.exists()
    assert job.table().height == 30
