"""`batchrun status` through the real CLI when the output holds parts written under different task counts."""

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
