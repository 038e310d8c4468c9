"""Cloud Run jobs for real: task processes on gs:// (the Storage emulator), kills, SIGTERM, logs, metadata auth."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import polars as pl
import pytest

from batchrun.shards import owner
from tests.conftest import Gcs, Job, Sim, base_env

TASKS = 4
BATCHRUN = [sys.executable, "-m", "batchrun"]


def task_env(job: Job, gcs: Gcs, index: int, attempt: int = 0) -> dict[str, str]:
    """The environment Cloud Run gives task `index` of a job (plus the emulator's address)."""
    return {
        **job.env,
        **gcs.env,
        "CLOUD_RUN_JOB": "test-job",
        "CLOUD_RUN_TASK_INDEX": str(index),
        "CLOUD_RUN_TASK_COUNT": str(TASKS),
        "CLOUD_RUN_TASK_ATTEMPT": str(attempt),
    }


def start_task(job: Job, gcs: Gcs, index: int, attempt: int = 0) -> subprocess.Popen[str]:
    """`batchrun run job.yaml` as one Cloud Run task."""
    return subprocess.Popen(
        [*BATCHRUN, "run", str(job.spec), "--log-interval", "0.5"],
        env=task_env(job, gcs, index, attempt),
        cwd=job.dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def cli_json(job: Job, env: dict[str, str], *args: str) -> Any:
    """An analyst command's --json output."""
    result = subprocess.run(
        [*BATCHRUN, args[0], str(job.spec), *args[1:], "--json"],
        env=env,
        cwd=job.dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def parts_of(gcs: Gcs, output: str, index: int) -> list[str]:
    """The part objects task `index` has committed so far."""
    return list(gcs.fs().glob(f"{output}/part-{index:04d}of{TASKS:04d}-*.parquet"))


def wait_for_part(gcs: Gcs, output: str, index: int, process: subprocess.Popen[str]) -> None:
    """Block until the task has committed at least one part (it is then mid-run), or fail if it exited."""
    deadline = time.monotonic() + 60
    while not parts_of(gcs, output, index):
        assert process.poll() is None, f"task {index} exited early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"task {index} wrote no part"
        time.sleep(0.05)


def read_all(gcs: Gcs, output: str) -> pl.DataFrame:
    """Every committed row, read from the bucket as an analyst would."""
    fs = gcs.fs()
    frames = [pl.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob(f"{output}/*.parquet")]
    return pl.concat(frames, how="diagonal_relaxed")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as JSON; fails on any line that is not (Cloud Logging would lose its structure)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line!r}")
    return parsed


def test_four_tasks_on_gcs_survive_sigkill_and_sigterm_with_one_row_per_id(make_job: Any, sim: Sim, gcs: Gcs) -> None:
    """4 task processes, gs:// in and out: one SIGKILLed and retried as attempt 1, one SIGTERMed and
    retried; the union holds exactly one row per id and `report --json` totals equal the Parquet sums."""
    sim.configure(latency_s=0.03, record=False)
    root = gcs.make_bucket()
    output = f"{root}/out/test-job"
    rows = 480
    job = make_job(
        n=rows,
        input={"path": f"{root}/in/input.jsonl", "id_column": "id"},
        output={"path": output, "keep_columns": ["text"], "flush_rows": 10, "flush_seconds": 0.2},
        limits={"concurrency": 2},
    )
    gcs.fs().pipe_file(f"{root}/in/input.jsonl", (job.dir / "input.jsonl").read_bytes())

    tasks = {index: start_task(job, gcs, index) for index in range(TASKS)}
    wait_for_part(gcs, output, 1, tasks[1])
    tasks[1].kill()
    wait_for_part(gcs, output, 2, tasks[2])
    tasks[2].send_signal(signal.SIGTERM)
    tasks[1].communicate(timeout=60)
    assert tasks[1].returncode == -signal.SIGKILL
    _, stopped_log = tasks[2].communicate(timeout=60)
    assert tasks[2].returncode == 3, stopped_log[-2000:]
    last = json_lines(stopped_log)[-1]
    assert last["severity"] == "WARNING" and "stopped by SIGTERM" in last["message"] and "pending" in last["message"]

    finishing = {0: tasks[0], 1: start_task(job, gcs, 1, attempt=1), 2: start_task(job, gcs, 2, attempt=1), 3: tasks[3]}
    for index, process in finishing.items():
        _, log = process.communicate(timeout=120)
        assert process.returncode == 0, f"task {index}: {log[-2000:]}"
        lines = json_lines(log)
        assert all(line["severity"] == "INFO" for line in lines)
        assert all(line.get("shard", f"{index}/{TASKS}") == f"{index}/{TASKS}" for line in lines)

    table = read_all(gcs, output)
    counts = table.group_by("id").len().filter(pl.col("len") > 1)
    assert counts.is_empty(), f"ids saved twice: {counts}"
    missing = sorted({f"row-{i:05d}" for i in range(rows)} - set(table.get_column("id")))
    assert not missing, f"ids never saved (id, task): {[(m, owner(m, TASKS)) for m in missing]}"
    assert len(table) == rows and set(table.get_column("id")) == {f"row-{i:05d}" for i in range(rows)}
    assert (table.get_column("status") == "ok").all()
    sends = sim.counts()
    stopped_part = [i for i in range(rows) if owner(f"row-{i:05d}", TASKS) == 2]
    assert all(sends[f"Classify: review number {i}"] == 1 for i in stopped_part), (
        "after SIGTERM every answered row was saved, so the retry sends each remaining row once"
    )

    env = {**job.env, **gcs.env}
    status = cli_json(job, env, "status")
    assert (status["done"], status["pending"], status["duplicates"]) == (rows, 0, 0)
    assert [s["shard"] for s in status["shards"]] == [f"{i}/{TASKS}" for i in range(TASKS)]
    assert sum(s["rows"] for s in status["shards"]) == rows and all(s["parts"] > 0 for s in status["shards"])

    report = cli_json(job, env, "report")
    assert report["rows"] == {"total": rows, "ok": rows, "error": 0}
    assert report["requests"] == table.get_column("attempts").sum()
    for name in ("prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"):
        assert report["tokens"][name] == (table.get_column(name).sum() or 0)
        assert sum(g[name] for g in report["by_traffic_type"]) == report["tokens"][name]
    assert sum(m["rows"] for m in report["per_minute"]) == rows
    assert sum(m["tokens"] for m in report["per_minute"]) == report["tokens"]["total_tokens"]


@pytest.mark.slow  # the four-task test above covers SIGTERM by default; this one isolates it on a local disk
def test_sigterm_saves_finished_rows_and_exits_3_then_the_rerun_finishes(make_job: Any, sim: Sim) -> None:
    """SIGTERM: no new rows, every answered row saved, exit 3 with what remains; the rerun sends only the rest."""
    sim.configure(latency_s=0.05, record=False)
    job = make_job(
        n=200,
        output={"path": "out", "keep_columns": ["text"], "flush_rows": 1000, "flush_seconds": 30},
        limits={"concurrency": 4},
    )
    process = job.popen("run")
    deadline = time.monotonic() + 60
    while sim.stats()["by_status"].get("200", 0) < 20:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, log = process.communicate(timeout=60)
    assert process.returncode == 3, log[-2000:]
    answered = sim.stats()["by_status"]["200"]
    saved = job.table()
    assert len(saved) == answered > 0  # flush_seconds is 30 s: only the stop can have saved them
    last = json_lines(log)[-1]
    assert last["severity"] == "WARNING" and f"{200 - answered} pending" in last["message"]

    rerun = job.run("run")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert Counter(sim.counts().values()) == Counter({1: 200})
    assert job.table().get_column("id").n_unique() == len(job.table()) == 200


def test_logs_off_a_terminal_are_json_with_figures_and_no_secrets(make_job: Any, sim: Sim, key_file: Any) -> None:
    """Every stderr line of a run is one JSON object with severity and message; progress lines carry the
    figures; no token, key or private key appears, even in an error."""
    sim.configure(latency_s=0.02)
    job = make_job(n=60, limits={"concurrency": 2})
    result = job.run("run", "--log-interval", "0.2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = json_lines(result.stderr)
    assert all({"severity", "message"} <= line.keys() for line in lines)
    progress = [line for line in lines if "rows_done" in line]
    figures = {"rows_done", "rows_total", "requests_per_min", "tokens_per_min", "rate_limited_429", "errors"}
    assert len(progress) >= 2 and all(figures <= line.keys() for line in progress)
    assert progress[-1]["rows_done"] == progress[-1]["rows_total"] == 60
    assert all(line["shard"] == "0/1" and line["attempt"] == 0 for line in progress)

    failing = job.run("run", "--set", "input.path=missing.jsonl")
    assert failing.returncode == 2
    (error,) = json_lines(failing.stderr)
    assert error["severity"] == "ERROR" and "missing.jsonl" in error["message"]
    private_key = json.loads(key_file.read_text())["private_key"]
    for text in (result.stderr, failing.stderr):
        assert "ya29." not in text and "PRIVATE KEY" not in text
        assert private_key.splitlines()[1] not in text


def test_metadata_server_credentials_with_refresh(make_job: Any, sim: Sim, tmp_path: Any) -> None:
    """On Cloud Run there is no key file: credentials come from the metadata server (the simulator here,
    via GCE_METADATA_HOST), and short-lived tokens are refreshed while the pool keeps running."""
    sim.configure(latency_s=0.02, token_ttl_s=1, revoke_every_s=0.3, record=False)
    job = make_job(n=200, limits={"concurrency": 4})
    host = sim.url.removeprefix("http://")
    env = {k: v for k, v in base_env().items() if k != "NO_GCE_CHECK"}
    env.update({"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")})
    result = subprocess.run(
        [*BATCHRUN, "run", str(job.spec)], env=env, cwd=job.dir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    table = job.table()
    assert len(table) == 200 and (table.get_column("status") == "ok").all()
    stats = sim.stats()
    assert stats["token_requests"] >= 3  # the first token and refreshes (expiry, revocation), all from the metadata
    assert stats["by_status"].get("401", 0) > 0  # revoked tokens were refused and replaced mid-run
    assert "ya29." not in result.stderr
