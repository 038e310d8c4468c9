"""`report` after SIGKILLs and a resume counts the requests of rows that were in flight at each kill."""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import pytest

from tests.conftest import Job
from tests.faults import drain, numbered_rows, record

CONCURRENCY = 8


def _kill_once_sending(job: Job, sim: Any, after_requests: int) -> None:
    """Start a run and SIGKILL it once the simulator has received `after_requests` requests in all."""
    process = job.popen("run")
    drain(process)
    deadline = time.monotonic() + 120
    while sim.stats()["requests"] < after_requests and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill: make the job bigger"


@pytest.mark.parametrize(("kills", "rate_503"), [(1, 0.0), (3, 0.2)], ids=["one-kill", "three-kills-with-503s"])
def test_report_counts_the_requests_of_rows_in_flight_at_a_kill(
    sim: Any, make_job: Any, kills: int, rate_503: float
) -> None:
    """Rows in flight at a SIGKILL are sent again on resume: report counts every send, the lost ones too, as the
    endpoint saw them (a request journaled in the instant before the kill but never sent may count too)."""
    n = 240
    job = make_job(numbered_rows(n), limits__concurrency=CONCURRENCY, output__flush_seconds=0.2)
    sim.configure(latency_s=0.2, rate_503=rate_503)
    for k in range(kills):
        _kill_once_sending(job, sim, after_requests=(k + 1) * n // (kills + 2))
    sim.configure(latency_s=0.0, rate_503=0.0)
    resumed = job.run("run")
    assert resumed.returncode == 0, resumed.stderr
    report = job.run("report", "--json")
    assert report.returncode == 0, report.stderr
    figures = json.loads(report.stdout)
    sent = sim.stats()["requests"]
    assert figures["rows"] == {"total": n, "ok": n, "error": 0}
    assert sent <= figures["requests"] <= sent + kills * CONCURRENCY, (figures["requests"], sent)
    assert sent > n, "no request was lost to a kill: nothing was checked"
    record(f"report after {kills} SIGKILLs", rows=n, endpoint_requests=sent, report_requests=figures["requests"])
