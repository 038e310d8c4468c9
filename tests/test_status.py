"""`batchrun status` and `report` through the real CLI: mixed task counts, rows replaced by --retry-errors."""

from __future__ import annotations

import json
from typing import Any


def test_status_splits_by_the_latest_task_count_when_parts_come_from_several(make_job: Any) -> None:
    """Parts from a 2-task execution, then a 3-task one: three shards, every row counted once, a note on the rest."""
    job = make_job(n=30)
    for shard in ("0/2", "1/2"):
        assert job.run("run", "--shard", shard, "--limit", "5").returncode == 0
    for shard in ("0/3", "1/3", "2/3"):
        assert job.run("run", "--shard", shard).returncode == 0
    result = job.run("status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert [s["shard"] for s in status["shards"]] == ["0/3", "1/3", "2/3"]
    assert sum(s["rows"] for s in status["shards"]) == 30 and status["ok"] == 30 and status["pending"] == 0
    assert all(s["parts"] > 0 for s in status["shards"])
    assert status["parts_of_other_task_counts"] == {"2": 2}
    text = job.run("status").stdout
    assert "split as 3 tasks own them" in text and "2 by 2 tasks" in text


def test_report_counts_the_requests_of_rows_replaced_by_retry_errors(sim: Any, make_job: Any) -> None:
    """After --retry-errors, report's requests are every chat request the endpoint received, first run's too."""
    sim.configure(rate_500=1.0)
    job = make_job(n=10, retry={"max_attempts": 2, "timeout_s": 5})
    assert job.run("run").returncode == 0
    sim.configure(rate_500=0.0)
    assert job.run("run", "--retry-errors").returncode == 0
    result = job.run("report", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["rows"] == {"total": 10, "ok": 10, "error": 0}
    assert report["requests"] == sim.stats()["requests"] == 30
