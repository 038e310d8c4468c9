"""Iterating on a job through the real CLI: edit the prompt, add, fix or remove rows; only what changed is sent."""

from __future__ import annotations

import json
import random
import signal
import time
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from batchrun.journal import read_rows, segments
from tests.conftest import Job, Sim, write_rows
from tests.faults import committed_ids, repeated


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Input rows with ids and texts the simulator's answers echo."""
    return [{"id": f"row-{i:05d}", "text": f"review number {i}"} for i in range(start, start + n)]


def edit_prompt(job: Job, new: str) -> None:
    """Change request.prompt in the job spec, as a user edits the YAML."""
    job.spec.write_text(job.spec.read_text().replace("Classify: {text}", new))


def status(job: Job) -> dict[str, Any]:
    """`batchrun status --json`."""
    result = job.run("status", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def assert_answers(table: pl.DataFrame, ids: set[str], prompt: str) -> None:
    """One ok row per id, each answering `prompt` over its own text."""
    assert table.height == len(ids) and set(table["id"]) == ids
    for row in table.select("content", "text").iter_rows(named=True):
        assert row["text"] in row["content"] and prompt in row["content"], row


def test_an_edited_prompt_is_refused_with_counts_then_refresh_resends_exactly_the_changed_rows(
    sim: Sim, make_job: Any
) -> None:
    """After a prompt edit, run stops with exit 2 naming the count, the key and both flags, sending nothing;
    --refresh sends each changed row once and the output holds one new answer per id."""
    job: Job = make_job(rows(20))
    assert job.run("run").returncode == 0
    hashes = dict(job.table().select("id", "request_hash").iter_rows())
    assert len(set(hashes.values())) == 20 and all(hashes.values())
    edit_prompt(job, "Summarise: {text}")
    before = sim.stats()["requests"]
    refused = job.run("run")
    assert refused.returncode == 2, refused.stderr
    assert "20 saved rows changed since they were answered (the spec's request.prompt differs" in refused.stderr
    assert "--refresh" in refused.stderr and "--keep" in refused.stderr and "tokens" in refused.stderr
    assert sim.stats()["requests"] == before
    figures = status(job)
    assert (figures["changed"], figures["done"], figures["pending"], figures["gone"]) == (20, 0, 0, 0)
    assert not figures["kept"]
    refreshed = job.run("run", "--refresh")
    assert refreshed.returncode == 0, refreshed.stderr
    assert sim.stats()["requests"] == before + 20
    assert all(sim.counts().get(f"Summarise: review number {i}") == 1 for i in range(20))
    table = job.table()
    assert_answers(table, {r["id"] for r in rows(20)}, "Summarise")
    assert all(hashes[rid] != new for rid, new in table.select("id", "request_hash").iter_rows())
    assert status(job)["done"] == 20
    again = job.run("run")
    assert again.returncode == 0 and sim.stats()["requests"] == before + 20


def test_keep_sends_only_pending_rows_and_is_remembered_for_that_spec(sim: Sim, make_job: Any) -> None:
    """--keep leaves the old answers and sends only the appended rows; the same spec then runs with no flag, and
    status says the changed rows are kept."""
    job: Job = make_job(rows(10))
    assert job.run("run").returncode == 0
    edit_prompt(job, "Summarise: {text}")
    write_rows(job.dir / "input.jsonl", rows(13))
    before = sim.stats()["requests"]
    assert job.run("run").returncode == 2
    kept = job.run("run", "--keep")
    assert kept.returncode == 0, kept.stderr
    assert sim.stats()["requests"] == before + 3
    table = job.table().sort("id")
    assert table.height == 13
    assert all("Classify" in c for c in table["content"][:10]) and all("Summarise" in c for c in table["content"][10:])
    assert job.run("run").returncode == 0, "--keep is remembered for this spec over this input"
    assert sim.stats()["requests"] == before + 3
    figures = status(job)
    assert (figures["changed"], figures["kept"], figures["pending"]) == (10, True, 0)
    assert "10 saved rows answer a request that changed since, kept as `run --keep` asked" in job.run("status").stdout


def test_appended_rows_are_simply_pending(sim: Sim, make_job: Any) -> None:
    """Rows appended to the input are sent with no flag; the saved ones are not sent again."""
    job: Job = make_job(rows(10))
    assert job.run("run").returncode == 0
    write_rows(job.dir / "input.jsonl", rows(15))
    before = sim.stats()["requests"]
    assert job.run("run").returncode == 0
    assert sim.stats()["requests"] == before + 5
    assert_answers(job.table(), {r["id"] for r in rows(15)}, "Classify")


def test_a_fixed_malformed_line_gives_one_row_per_input(sim: Sim, make_job: Any) -> None:
    """Fixing the line an input error row names: its `line:N` row leaves and the row is sent, 20 rows for 20."""
    data = rows(20)
    job: Job = make_job(data)
    lines = (job.dir / "input.jsonl").read_text().splitlines()
    lines[10] = lines[10][:-3]  # a cut-off JSON object on line 11
    (job.dir / "input.jsonl").write_text("\n".join(lines) + "\n")
    assert job.run("run").returncode == 0
    assert "line:11" in set(job.table()["id"]) and job.table().height == 20
    assert job.run("run").returncode == 0 and job.table().height == 20, "a still broken line stays one row"
    write_rows(job.dir / "input.jsonl", data)
    figures = status(job)
    assert (figures["gone"], figures["pending"]) == (1, 1)
    before = sim.stats()["requests"]
    assert job.run("run").returncode == 0
    assert sim.stats()["requests"] == before + 1
    assert_answers(job.table(), {r["id"] for r in data}, "Classify")
    exported = job.run("export", str(job.dir / "all.parquet"))
    assert exported.returncode == 0 and pl.read_parquet(job.dir / "all.parquet").height == 20


def test_removed_input_rows_leave_the_output(sim: Sim, make_job: Any) -> None:
    """Rows removed from the input are counted gone by status and hidden by report, then the run drops them
    without counting them among its rows done."""
    job: Job = make_job(rows(20))
    assert job.run("run").returncode == 0
    write_rows(job.dir / "input.jsonl", rows(12))
    assert status(job)["gone"] == 8
    report = json.loads(job.run("report", "--json").stdout)
    assert report["rows"]["total"] == 12
    before = sim.stats()["requests"]
    rerun = job.run("run")
    assert rerun.returncode == 0
    assert sim.stats()["requests"] == before
    summary = json.loads(rerun.stderr.strip().splitlines()[-1])
    assert summary["rows_done"] == summary["rows_total"] == 12, "gone rows are not counted as done"
    assert_answers(job.table(), {r["id"] for r in rows(12)}, "Classify")
    assert status(job)["gone"] == 0


def test_cloud_run_tasks_refresh_each_their_own_shard(sim: Sim, make_job: Any) -> None:
    """Three tasks on one output: after an edit each task refuses, then --refresh sends exactly its own changed rows,
    drops its own gone rows, and together they leave one new answer per current id."""
    job: Job = make_job(rows(30))
    tasks = [("--shard", f"{i}/3") for i in range(3)]
    assert all(job.run("run", *task).returncode == 0 for task in tasks)
    edit_prompt(job, "Summarise: {text}")
    write_rows(job.dir / "input.jsonl", rows(24))
    before = sim.stats()["requests"]
    assert all(job.run("run", *task).returncode == 2 for task in tasks)
    assert sim.stats()["requests"] == before
    for task in tasks:
        result = job.run("run", "--refresh", *task)
        assert result.returncode == 0, result.stderr
    assert sim.stats()["requests"] == before + 24
    assert all(sim.counts().get(f"Summarise: review number {i}") == 1 for i in range(24))
    assert_answers(job.table(), {r["id"] for r in rows(24)}, "Summarise")
    figures = status(job)
    assert (figures["done"], figures["gone"]) == (24, 0)


def test_an_output_of_other_ids_is_refused(sim: Sim, make_job: Any) -> None:
    """An input sharing no id with the output (another job's?) is refused rather than emptying the output."""
    job: Job = make_job(rows(5))
    assert job.run("run").returncode == 0
    write_rows(job.dir / "input.jsonl", rows(5, start=100))
    refused = job.run("run")
    assert refused.returncode == 2 and "none of its 5 saved rows has an id in" in refused.stderr
    assert job.run("run", "--refresh").returncode == 0
    assert set(job.table()["id"]) == {r["id"] for r in rows(5, start=100)}


def test_rows_saved_before_request_hash_count_as_done(sim: Sim, make_job: Any) -> None:
    """Parts without the request_hash column stay readable; their rows cannot be compared and count as done."""
    job: Job = make_job(rows(10))
    assert job.run("run").returncode == 0
    for part in job.output.glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns(["request_hash"]), part)
    edit_prompt(job, "Summarise: {text}")
    before = sim.stats()["requests"]
    assert job.run("run").returncode == 0
    assert sim.stats()["requests"] == before
    assert status(job)["unhashed"] == 10


def _watch_and_kill(job: Job, sim: Sim, wait_s: float) -> None:
    """Run --refresh, check at every poll that no id is on disk twice, and SIGKILL it `wait_s` after it sends."""
    process = job.popen("run", "--refresh")
    start = sim.stats()["requests"]
    sending: float | None = None
    while process.poll() is None:
        ids = committed_ids(job.output)
        assert not repeated(ids), f"an id is on disk twice during --refresh: {repeated(ids)[:3]}"
        if sending is None and sim.stats()["requests"] > start:
            sending = time.monotonic()
        if sending is not None and time.monotonic() - sending >= wait_s:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.communicate(timeout=30)


def test_answers_journaled_before_a_kill_during_refresh_are_saved_not_sent_again(sim: Sim, make_job: Any) -> None:
    """SIGKILL during --refresh while the new answers wait in the writer's buffer (journaled, in no part): the next
    --refresh saves them in place of the old rows and sends only the rest, so no changed row is answered twice."""
    data = rows(300)
    job: Job = make_job(data, limits={"concurrency": 8}, output__flush_rows=100_000, output__flush_seconds=600)
    assert job.run("run").returncode == 0
    edit_prompt(job, "Summarise: {text}")
    sim.configure(latency_s=0.02)
    prompts = {f"Summarise: {row['text']}": row["id"] for row in data}

    def answered_so_far() -> int:
        counts = sim.counts()
        return sum(counts.get(prompt, 0) for prompt in prompts)

    process = job.popen("run", "--refresh")
    while answered_so_far() < 100 and process.poll() is None:
        time.sleep(0.01)
    time.sleep(0.1)  # the writer journals each answer as it arrives: let the last ones land
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    journaled = {row["id"] for row in read_rows(segments(str(job.output / "_batchrun"), "0000of0001"))}
    assert len(journaled) >= 100
    assert_answers(job.table(), {r["id"] for r in data}, "Classify")  # the kill left every old answer saved
    sim.configure(latency_s=0.0)
    final = job.run("run", "--refresh")
    assert final.returncode == 0, final.stderr
    assert f"{len(journaled)} answers the last run journaled but did not save are saved now" in final.stderr
    counts = sim.counts()
    assert all(counts[prompt] == 1 for prompt, rid in prompts.items() if rid in journaled)
    assert sum(counts.get(prompt, 0) for prompt in prompts) <= len(data) + 8, "only the requests in flight again"
    assert_answers(job.table(), {r["id"] for r in data}, "Summarise")
    assert not list((job.output / "_batchrun").glob("journal-*"))


@pytest.mark.parametrize(("n", "kills"), [(2000, 4), pytest.param(20_000, 12, marks=pytest.mark.slow)])
def test_sigkill_during_refresh_never_shows_two_rows_for_an_id(sim: Sim, make_job: Any, n: int, kills: int) -> None:
    """SIGKILL again and again during --refresh: at most one row per id on disk after each kill, and at the end
    exactly one, each answering its current request."""
    data = rows(n)
    job: Job = make_job(data, limits={"concurrency": 32}, output__flush_rows=200, output__flush_seconds=0.2)
    assert job.run("run", timeout=600).returncode == 0
    edit_prompt(job, "Summarise: {text}")
    sim.configure(latency_s=0.02, record=False)
    rng = random.Random(12)
    for _ in range(kills):
        _watch_and_kill(job, sim, rng.uniform(0.1, 0.8))
        ids = committed_ids(job.output)
        assert not repeated(ids)
        assert len(ids) == n, "a kill mid-replacement leaves the old row or the new one, never neither"
    sim.configure(latency_s=0.0)
    final = job.run("run", "--refresh", timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    table = job.table()
    assert_answers(table, {r["id"] for r in data}, "Summarise")
    assert not list(job.output.rglob("*.tmp"))


def test_refresh_on_gcs_replaces_answers_in_place(sim: Sim, make_job: Any, gcs: Any) -> None:
    """On gs:// objects the same rerun works: refused after an edit, --refresh replaces each answer, removed rows go."""
    import io

    bucket = gcs.make_bucket()
    job: Job = make_job(rows(30), output__path=f"{bucket}/out")
    job.env.update(gcs.env)

    def table() -> pl.DataFrame:
        fs = gcs.fs()
        return pl.concat([pl.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob(f"{bucket}/out/*.parquet")])

    assert job.run("run").returncode == 0
    edit_prompt(job, "Summarise: {text}")
    write_rows(job.dir / "input.jsonl", rows(25))
    assert job.run("run").returncode == 2
    before = sim.stats()["requests"]
    result = job.run("run", "--refresh")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sim.stats()["requests"] == before + 25
    assert_answers(table(), {r["id"] for r in rows(25)}, "Summarise")
