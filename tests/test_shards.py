"""Shards: disjoint, stable parts of the ids per Cloud Run task, each task's share of the rate budget,
and N real task processes on one output directory."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from batchrun.budgets import BUDGET_WINDOW_S
from batchrun.errors import SpecError
from batchrun.limits import Limits
from batchrun.shards import Shard, parse_shard, shard_of_part, task_attempt
from batchrun.spec import LimitsSpec
from tests.conftest import Job, Sim

IDS = [f"id-{i}" for i in range(5000)]


def test_tasks_take_disjoint_parts_that_cover_every_id() -> None:
    """Every id is owned by exactly one of N tasks, and the parts are of similar size."""
    for count in (1, 3, 10):
        owners = [[Shard(i, count).owns(rid) for i in range(count)] for rid in IDS]
        assert all(sum(row) == 1 for row in owners)
        sizes = [sum(row[i] for row in owners) for i in range(count)]
        assert min(sizes) > len(IDS) / count * 0.8


def test_a_retried_task_takes_the_same_part() -> None:
    """Ownership depends on the id alone (a hash, not the order or the process), so a retry resumes its own part."""
    first = [rid for rid in IDS if Shard(2, 4).owns(rid)]
    again = [rid for rid in reversed(IDS) if Shard(2, 4).owns(rid)]
    assert first == list(reversed(again))
    script = "from batchrun.shards import Shard; print(sum(Shard(2, 4).owns(f'id-{i}') for i in range(5000)))"
    other_process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(other_process.stdout) == len(first)


def test_shard_comes_from_the_flag_or_cloud_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """--shard wins; else CLOUD_RUN_TASK_INDEX/COUNT; else the whole job; bad values name their source."""
    monkeypatch.delenv("CLOUD_RUN_TASK_INDEX", raising=False)
    monkeypatch.delenv("CLOUD_RUN_TASK_COUNT", raising=False)
    assert parse_shard(None) == Shard(0, 1)
    monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", "3")
    monkeypatch.setenv("CLOUD_RUN_TASK_COUNT", "8")
    assert parse_shard(None) == Shard(3, 8)
    assert parse_shard("1/2") == Shard(1, 2)
    with pytest.raises(SpecError, match="--shard '2/2'"):
        parse_shard("2/2")
    monkeypatch.setenv("CLOUD_RUN_TASK_INDEX", "x")
    with pytest.raises(SpecError, match="CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT"):
        parse_shard(None)
    monkeypatch.setenv("CLOUD_RUN_TASK_ATTEMPT", "2")
    assert task_attempt() == 2


def test_part_names_say_which_task_wrote_them() -> None:
    """The tag in a part file's name reads back as its shard (status counts parts per task from it)."""
    name = f"gs://b/out/part-{Shard(3, 10).tag}-20261121T000000-abc123-00002.parquet"
    assert shard_of_part(name) == Shard(3, 10)
    assert shard_of_part("gs://b/out/other.parquet") is None


def test_each_task_takes_its_share_of_the_job_budget() -> None:
    """requests_per_minute and tokens_per_minute are the job's: a task of 4 may use a quarter in any minute."""
    spec = LimitsSpec(requests_per_minute=600, tokens_per_minute=400_000)
    for share, expected_rpm, expected_tpm in ((1.0, 600, 400_000), (0.25, 150, 100_000)):
        limits = Limits(spec, share=share)
        assert limits.requests is not None and limits.tokens is not None
        leak_per_s = limits.requests.max_rate / limits.requests.time_period
        assert limits.requests.max_rate + BUDGET_WINDOW_S * leak_per_s == pytest.approx(expected_rpm)
        assert limits.tokens.limit == pytest.approx(expected_tpm)


def test_three_local_task_processes_one_killed_and_retried_give_one_row_per_id(make_job: Any, sim: Sim) -> None:
    """N processes on one output directory (--shard and the Cloud Run variables both used); one SIGKILLed
    mid-run and retried with CLOUD_RUN_TASK_ATTEMPT=1; together they hold exactly one row per id."""
    sim.configure(latency_s=0.03, record=False)
    rows = 240
    job: Job = make_job(
        n=rows,
        limits={"concurrency": 2},
        output={"path": "out", "keep_columns": ["text"], "flush_rows": 10, "flush_seconds": 0.2},
    )

    def task(index: int, attempt: int = 0) -> subprocess.Popen[str]:
        env = {**job.env, "CLOUD_RUN_TASK_ATTEMPT": str(attempt)}
        if index == 0:
            args = ["--shard", "0/3"]
        else:
            env.update({"CLOUD_RUN_TASK_INDEX": str(index), "CLOUD_RUN_TASK_COUNT": "3"})
            args = []
        return subprocess.Popen(
            [sys.executable, "-m", "batchrun", "run", str(job.spec), *args],
            env=env,
            cwd=job.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    tasks = [task(i) for i in range(3)]
    deadline = time.monotonic() + 60
    while not list(job.output.glob("part-0001of0003-*.parquet")):
        assert tasks[1].poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    tasks[1].send_signal(signal.SIGKILL)
    tasks[1].communicate(timeout=60)
    assert tasks[1].returncode == -signal.SIGKILL
    tasks[1] = task(1, attempt=1)
    logs = []
    for index, process in enumerate(tasks):
        _, log = process.communicate(timeout=120)
        assert process.returncode == 0, f"task {index}: {log[-2000:]}"
        logs.append(log)
    assert "shard 1/3 attempt 1" in logs[1] and " 0 already saved" not in logs[1]

    table = job.table()
    assert len(table) == rows == table.get_column("id").n_unique()
    assert set(table.get_column("id")) == {f"row-{i:05d}" for i in range(rows)}
