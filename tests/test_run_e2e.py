"""The whole main path through the real CLI: spec -> Vertex requests over HTTP -> Parquet, resumable."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.conftest import Job, Sim, base_env, read_output, run_cli


def assert_one_ok_row_per_id(table: pl.DataFrame, n: int) -> None:
    """Exactly one row per id, all ok, each answering its own prompt with usage and traffic_type."""
    assert table.height == n
    assert table["id"].n_unique() == n
    assert table.filter(pl.col("status") != "ok").height == 0
    for row in table.select("id", "content", "text").iter_rows(named=True):
        assert row["text"] in row["content"], row
    assert table["prompt_tokens"].null_count() == 0
    assert table["total_tokens"].null_count() == 0
    assert set(table["traffic_type"].to_list()) == {"ON_DEMAND"}


def test_sample_job_runs(sim: Sim, make_job: object) -> None:
    """A small job finishes with exit 0, one ok row per id, kept columns and usage."""
    job: Job = make_job(n=30)  # type: ignore[operator]
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = job.table()
    assert_one_ok_row_per_id(table, 30)
    assert table["attempts"].to_list() == [1] * 30
    assert table.schema["finished_at"] == pl.Datetime("us", "UTC")
    assert "Traceback" not in result.stderr


def test_builtin_simulator_sample_job(tmp_path: Path) -> None:
    """The README's sample job (endpoint.kind: simulator) runs from a fresh directory."""
    from tests.conftest import REPO

    spec = (REPO / "jobs" / "reviews-sentiment.yaml").read_text()
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.yaml").write_text(spec)
    (tmp_path / "sample_data").mkdir()
    (tmp_path / "sample_data" / "reviews.jsonl").write_text((REPO / "sample_data" / "reviews.jsonl").read_text())
    result = run_cli(["run", "jobs/job.yaml"], env=base_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = read_output(tmp_path / "out" / "reviews-sentiment")
    assert table.height == 60 and table["id"].n_unique() == 60
    assert set(table["content"].to_list()) <= {"positive", "negative", "neutral"}
    status = run_cli(["status", "jobs/job.yaml", "--json"], env=base_env(), cwd=tmp_path)
    assert json.loads(status.stdout)["pending"] == 0


@pytest.mark.parametrize("rows", [3000, pytest.param(20_000, marks=pytest.mark.slow)])
def test_faulty_endpoint_large_job(rows: int, sim: Sim, make_job: object) -> None:
    """Under 5% 429s, 3% 500s, 1% dropped connections and revoked tokens: one correct row per id."""
    sim.configure(rate_429=0.05, rate_500=0.03, rate_reset=0.01, revoke_every_s=1.0, record=False)
    job: Job = make_job(n=rows, limits={"concurrency": 128}, output__flush_rows=2000)  # type: ignore[operator]
    result = job.run("run", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = job.table()
    assert_one_ok_row_per_id(table, rows)
    stats = sim.stats()
    assert stats["by_status"].get("429", 0) > 0 and stats["by_status"].get("500", 0) > 0
    assert stats["by_status"].get("401", 0) > 0, "tokens were revoked mid-run"
    most = table["attempts"].max()
    assert isinstance(most, int) and most > 1


def committed_ids(output: Path) -> list[str]:
    """Every id on disk right now, reading each committed part whole (a half part would fail here)."""
    ids: list[str] = []
    for part in sorted(output.glob("*.parquet")):
        ids.extend(pq.read_table(part, columns=["id"]).column("id").to_pylist())
    return ids


def run_until(job: Job, fraction: float, total: int) -> tuple[subprocess.Popen[str], int]:
    """Start a run and watch the disk until `fraction` of rows are saved, checking uniqueness throughout."""
    process = job.popen("run")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ids = committed_ids(job.output)
        assert len(ids) == len(set(ids)), "an id was on disk twice"
        if len(ids) >= fraction * total:
            return process, len(ids)
        if process.poll() is not None:
            raise AssertionError(
                f"run ended early: {process.returncode} {process.stderr.read() if process.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("run did not reach the kill point")


def test_sigkill_twice_then_resume(sim: Sim, make_job: object) -> None:
    """SIGKILL at 30% and 60%, then run: one row per id, nothing lost, bounded re-sends per kill."""
    total, concurrency, flush_rows = 3000, 16, 100
    sim.configure(latency_s=0.01, record=False)
    job: Job = make_job(
        n=total, limits={"concurrency": concurrency}, output__flush_rows=flush_rows, output__flush_seconds=0.5
    )  # type: ignore[operator]
    for fraction in (0.3, 0.6):
        process, _ = run_until(job, fraction, total)
        process.send_signal(signal.SIGKILL)
        process.wait()
        ids = committed_ids(job.output)
        assert len(ids) == len(set(ids))
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    print(result.stderr)
    assert_one_ok_row_per_id(job.table(), total)
    resent = sum(1 for count in sim.counts().values() if count > 1)
    # Per kill: the rows in flight plus the rows buffered since the last flush (by rows or by time).
    rows_per_flush_interval = flush_rows + 0.5 * (concurrency / 0.01)
    assert resent <= 2 * (concurrency + rows_per_flush_interval)


def test_sigterm_saves_finished_rows_and_exits_3(sim: Sim, make_job: object) -> None:
    """SIGTERM stops new requests, saves finished rows, exits 3; running again finishes the job."""
    sim.configure(latency_s=0.02)
    job: Job = make_job(n=2000, limits={"concurrency": 8}, output__flush_seconds=30, output__flush_rows=100_000)  # type: ignore[operator]
    process = job.popen("run")
    while sim.stats()["requests"] < 100:
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 3, stderr
    assert "stopped by SIGTERM" in stderr and "run the same command again" in stderr.lower()
    saved = committed_ids(job.output)
    assert 0 < len(saved) < 2000, "the finished rows were saved although the flush interval had not come"
    result = job.run("run")
    assert result.returncode == 0
    assert_one_ok_row_per_id(job.table(), 2000)


def test_a_second_run_beside_the_first_is_refused_until_it_dies(sim: Sim, make_job: object) -> None:
    """Two runs of one shard on one output would clean each other's files and send rows twice: the second is
    refused (exit 2) while the first runs, and the lock dies with it, SIGKILL included."""
    sim.configure(latency_s=0.05)
    job: Job = make_job(n=600, limits={"concurrency": 4})  # type: ignore[operator]
    first = job.popen("run")
    while sim.stats()["requests"] < 20:
        assert first.poll() is None
        time.sleep(0.05)
    second = job.run("run")
    assert second.returncode == 2
    assert "another `batchrun run` is writing this shard (0000of0001) right now" in second.stderr
    assert "Traceback" not in second.stderr
    first.kill()
    first.communicate(timeout=15)
    sim.configure(latency_s=0.0)
    assert job.run("run").returncode == 0
    assert_one_ok_row_per_id(job.table(), 600)


def test_configured_rpm_is_achieved_without_429s(sim: Sim, make_job: object) -> None:
    """A configured requests_per_minute against a server enforcing the same quota: >= 90% of it, < 1% 429s."""
    rpm, rows = 3000, 500
    sim.configure(rpm_quota=rpm)
    job: Job = make_job(n=rows, limits={"concurrency": 64, "requests_per_minute": rpm})  # type: ignore[operator]
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = job.table()
    span = (table["finished_at"].max() - table["finished_at"].min()).total_seconds()  # type: ignore[operator, union-attr]
    achieved = (rows - 1) / span * 60
    assert achieved >= 0.9 * rpm
    assert sim.stats()["by_status"].get("429", 0) < 0.01 * rows


def test_resume_sends_only_missing_rows(sim: Sim, make_job: object) -> None:
    """A second run of a finished job sends nothing and exits 0; --limit runs part of a job."""
    job: Job = make_job(n=50)  # type: ignore[operator]
    assert job.run("run", "--limit", "20").returncode == 0
    assert job.table().height == 20
    assert job.run("run").returncode == 0
    before = sim.stats()["requests"]
    assert job.run("run").returncode == 0
    assert sim.stats()["requests"] == before
    assert_one_ok_row_per_id(job.table(), 50)
    assert max(sim.counts().values()) == 1


def test_retry_errors_replaces_error_rows(sim: Sim, make_job: object) -> None:
    """Rows refused for good are error rows; --retry-errors sends them again and replaces them."""
    sim.configure(rate_500=1.0)
    job: Job = make_job(n=10, retry={"max_attempts": 2, "timeout_s": 5})  # type: ignore[operator]
    assert job.run("run").returncode == 0
    table = job.table()
    assert table.height == 10 and set(table["status"]) == {"error"}
    assert set(table["http_status"]) == {500} and set(table["attempts"]) == {2}
    sim.configure(rate_500=0.0)
    assert job.run("run").returncode == 0
    assert set(job.table()["status"]) == {"error"}, "a plain run keeps error rows"
    assert job.run("run", "--retry-errors").returncode == 0
    assert_one_ok_row_per_id(job.table(), 10)


def test_retry_errors_after_a_sharded_job(sim: Sim, make_job: object) -> None:
    """Error rows of a 2-task job: one of 3 tasks leaves them (and says how to retry), one task replaces them all."""
    sim.configure(rate_500=1.0)
    job: Job = make_job(n=12, retry={"max_attempts": 1, "timeout_s": 5})  # type: ignore[operator]
    for index in (0, 1):
        assert job.run("run", "--shard", f"{index}/2").returncode == 0
    assert set(job.table()["status"]) == {"error"} and job.table().height == 12
    sim.configure(rate_500=0.0)
    other_count = job.run("run", "--shard", "0/3", "--retry-errors")
    assert other_count.returncode == 0
    assert "run the same command as one task" in other_count.stderr
    assert set(job.table()["status"]) == {"error"}
    assert job.run("run", "--retry-errors").returncode == 0
    assert_one_ok_row_per_id(job.table(), 12)


def test_final_errors_are_not_retried(sim: Sim, make_job: object) -> None:
    """A 400 (request too large) is final after one attempt; other rows are unaffected."""
    sim.configure(max_body_bytes=2000)
    rows = [{"id": "big", "text": "x" * 5000}] + [{"id": f"r{i}", "text": f"small {i}"} for i in range(5)]
    job: Job = make_job(rows=rows)  # type: ignore[operator]
    assert job.run("run").returncode == 0
    table = job.table().sort("id")
    big = table.filter(pl.col("id") == "big").row(0, named=True)
    assert (big["status"], big["http_status"], big["attempts"], big["error_type"]) == ("error", 400, 1, "http")
    assert "INVALID_ARGUMENT" in big["error_message"]
    assert table.filter(pl.col("status") == "ok").height == 5


def test_short_lived_tokens_are_refreshed_without_stopping(sim: Sim, make_job: object) -> None:
    """Tokens living 3 s are refreshed ahead of expiry, one refresh at a time, while the pool runs."""
    # 1,500 rows at 0.1 s each over 32 workers take at least 4.7 s, so one token cannot last the run.
    sim.configure(token_ttl_s=3, latency_s=0.1)
    job: Job = make_job(n=1500, limits={"concurrency": 32})  # type: ignore[operator]
    started = time.monotonic()
    result = job.run("run")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert_one_ok_row_per_id(job.table(), 1500)
    stats = sim.stats()
    assert stats["tokens_issued"] >= 2
    # Single flight: about one refresh per token lifetime, not one per worker.
    assert stats["tokens_issued"] <= elapsed / 1.5 + 3


def test_openai_kind_uses_the_api_key(sim: Sim, tmp_path: Path) -> None:
    """kind: openai sends the key from api_key_env; a wrong key is a clear final error, never echoed."""
    import yaml

    from tests.conftest import write_rows

    sim.configure(api_key="sk-test-abcdefghijklmnopqrstuvwxyz")
    write_rows(tmp_path / "in.jsonl", [{"text": f"hello {i}"} for i in range(5)])
    spec = {
        "name": "oa",
        "input": {"path": "in.jsonl"},
        "endpoint": {"kind": "openai", "base_url": f"{sim.url}/v1beta/openai", "api_key_env": "MY_KEY"},
        "model": "gemini-2.5-flash",
        "request": {"prompt": "{text}"},
        "output": {"path": "out"},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = base_env()
    env["MY_KEY"] = "sk-test-abcdefghijklmnopqrstuvwxyz"
    result = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(read_output(tmp_path / "out")["status"]) == {"ok"}
    env.pop("MY_KEY")
    missing = run_cli(["run", "job.yaml"], env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "MY_KEY is not set" in missing.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown_key", "limits.concurency: unknown key; did you mean 'concurrency'?"),
        (
            "missing_column",
            "request.prompt names column 'body', which input.jsonl does not have; its columns are: id, text",
        ),
        ("missing_file", "input file not found"),
        ("duplicate_ids", "line 3: duplicate id 'a' (first at line 1)"),
    ],
)
def test_bad_spec_or_input_is_one_clear_message(case: str, expected: str, make_job: object) -> None:
    """Each mistake gives one message naming the place and the fix, exit 2, and no traceback."""
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]
    if case == "duplicate_ids":
        rows.append({"id": "a", "text": "z"})
    job: Job = make_job(rows=rows)  # type: ignore[operator]
    text = job.spec.read_text()
    if case == "unknown_key":
        text = text.replace("concurrency:", "concurency:")
    elif case == "missing_column":
        text = text.replace("{text}", "{body}")
    elif case == "missing_file":
        text = text.replace("input.jsonl", "nope.jsonl")
    job.spec.write_text(text)
    for command in ("validate", "run"):
        result = job.run(command)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert not job.output.exists() or not list(job.output.glob("*.parquet"))


def test_broken_jsonl_line_becomes_an_input_error_row(make_job: object) -> None:
    """A malformed line is an `input` error row naming the line; the rest of the file is processed."""
    job: Job = make_job(rows=[{"id": "a", "text": "x"}])  # type: ignore[operator]
    with (job.dir / "input.jsonl").open("a") as f:
        f.write('{"id": "b", "text": \n{"id": "c", "text": "z"}\n')
    validated = job.run("validate")
    assert validated.returncode == 0 and "1 unreadable" in validated.stdout
    assert job.run("run").returncode == 0
    table = job.table().sort("id")
    assert table["id"].to_list() == ["a", "c", "line:2"]
    broken = table.filter(pl.col("id") == "line:2").row(0, named=True)
    assert broken["status"] == "error" and broken["error_type"] == "input"
    assert "input.jsonl:line 2: not valid JSON" in broken["error_message"]


def test_validate_prints_count_and_first_request(make_job: object) -> None:
    """validate renders the first request and sends nothing."""
    job: Job = make_job(n=7)  # type: ignore[operator]
    result = job.run("validate")
    assert result.returncode == 0
    assert "7 rows" in result.stdout and '"content": "Classify: review number 0"' in result.stdout
    assert not job.output.exists()
