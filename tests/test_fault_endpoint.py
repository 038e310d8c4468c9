"""Endpoint faults, each alone and all together, against the real CLI: a transient fault never costs a row.

Every case checks the output holds exactly one row per input id, that every row is `ok` unless the
endpoint refused it for good, and records its figures (requests, re-sends, time to recover).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tenacity import AsyncRetrying, RetryCallState

from batchrun.client import BACKOFF_INITIAL_S, BACKOFF_MAX_S, _wait
from batchrun.errors import RateLimitedError
from batchrun.pace import AdaptivePace
from tests.faults import Step, drive, finished_table, numbered_rows, outcome, record
from tests.virtual_time import now, run

SEED = 6

SLOW = pytest.mark.slow  # CI runs a sample; test_all_faults_together covers every kind in the default run
TRANSIENT = [
    pytest.param("500/503 errors", {"rate_500": 0.05, "rate_503": 0.05}, {}, id="5xx", marks=SLOW),
    pytest.param("dropped connections", {"rate_reset": 0.1}, {}, id="reset", marks=SLOW),
    pytest.param("responses that never come", {"rate_hang": 0.05}, {"retry__timeout_s": 1}, id="hang"),
    pytest.param("truncated JSON bodies", {"rate_truncated": 0.1}, {}, id="truncated", marks=SLOW),
    pytest.param("non-JSON bodies (HTML page)", {"rate_not_json": 0.1}, {}, id="not-json"),
]


def _injected(stats: dict[str, Any]) -> dict[str, int]:
    """How many faults the simulator actually served, by kind."""
    by_status = stats["by_status"]
    counts = {
        "429": by_status.get("429", 0),
        "401": by_status.get("401", 0),
        "5xx": by_status.get("500", 0) + by_status.get("503", 0),
        "resets": stats["resets"],
        "hangs": stats["hangs"],
        "truncated": stats["truncated"],
        "not_json": stats["not_json"],
        "token_503": stats["token_requests"] - stats["tokens_issued"],
    }
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize(("fault", "settings", "spec"), TRANSIENT)
def test_random_transient_fault_ends_every_row_ok(
    sim: Any, make_job: Any, fault: str, settings: dict[str, Any], spec: dict[str, Any]
) -> None:
    """Each transient fault alone, on a random tenth (a twentieth for hangs) of requests: every row ok, once."""
    rows = numbered_rows(100)
    job = make_job(rows, **spec)
    sim.configure(seed=SEED, **settings)
    result = job.run("run")
    assert result.returncode == 0, result.stderr
    table = finished_table(job, {r["id"] for r in rows})
    assert table["status"].to_list() == ["ok"] * len(rows)
    record(fault, injected=_injected(sim.stats()), **outcome(table, sim, len(rows)))


@SLOW
def test_5xx_burst_then_recovery(sim: Any, make_job: Any) -> None:
    """Every request answered 500 or 503 for 3 s mid-run: the run rides the burst out, every row ok."""
    rows = numbered_rows(400)
    job = make_job(rows)
    sim.configure(latency_s=0.02, seed=SEED)
    timeline = drive(
        job,
        sim,
        [
            Step(0.3, "burst", {"rate_500": 0.5, "rate_503": 0.5}),
            Step(3.0, "calm", {"rate_500": 0.0, "rate_503": 0.0}),
        ],
    )
    assert timeline.returncode == 0, timeline.stderr
    table = finished_table(job, {r["id"] for r in rows})
    assert table["status"].to_list() == ["ok"] * len(rows)
    record(
        "500/503 burst, 3 s",
        injected=_injected(sim.stats()),
        **outcome(table, sim, len(rows)),
        **timeline.recovery("calm"),
    )


@pytest.mark.parametrize(
    ("storm_s", "retry_after_s"),
    [
        pytest.param(5.0, None, id="5s"),
        pytest.param(30.0, None, id="30s", marks=SLOW),
        pytest.param(30.0, 1.0, id="30s-retryinfo-1s", marks=SLOW),
    ],
)
def test_429_storm_then_recovery(sim: Any, make_job: Any, storm_s: float, retry_after_s: float | None) -> None:
    """Every request refused with 429 for the storm's length, then none: no row fails, the pool speeds up again."""
    rows = numbered_rows(600)
    job = make_job(rows, limits__concurrency=16)
    sim.configure(latency_s=0.05, retry_after_s=retry_after_s, seed=SEED)
    timeline = drive(job, sim, [Step(0.3, "storm", {"storm_for_s": storm_s}, lasts_s=storm_s)])
    assert timeline.returncode == 0, timeline.stderr
    table = finished_table(job, {r["id"] for r in rows})
    assert table["status"].to_list() == ["ok"] * len(rows)
    # The storm cuts the adaptive pace to at most what the endpoint took before it (at least 60 a minute); a pool
    # that sped up again answers the rows after the storm at more than twice that pace.
    storm_pace_per_s = max(60, timeline.served_by(timeline.ends["storm"])) / 60
    assert timeline.rate_after("storm") > 2 * storm_pace_per_s, (timeline.rate_after("storm"), storm_pace_per_s)
    hint = "no Retry-After" if retry_after_s is None else f"RetryInfo {retry_after_s:g}s"
    record(
        f"429 storm, {storm_s:g} s ({hint})",
        injected=_injected(sim.stats()),
        **outcome(table, sim, len(rows)),
        **timeline.recovery("storm"),
        answers_per_s_after=round(timeline.rate_after("storm"), 1),
        storm_pace_per_s=round(storm_pace_per_s, 1),
    )


def test_pace_lifted_after_a_storm_wakes_a_waiting_request() -> None:
    """A request queued behind a storm's floor pace (one a second) goes as answers come back, not at its slot."""

    async def scenario() -> float:
        pace = AdaptivePace()
        while pace.per_minute is None or pace.per_minute > 60:  # every answer a 429: the pace sinks to its floor
            pace.on_rate_limited(await pace.acquire())
        assert pace.per_minute == 60
        sent = await pace.acquire()
        waiter = asyncio.create_task(pace.acquire())
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the floor holds it for a second
        started = now()
        for _ in range(4):  # the storm is over: answers come back
            pace.on_success(sent)
            await asyncio.sleep(0.01)
        await waiter
        return now() - started

    assert run(scenario) < 0.2


@pytest.mark.parametrize("attempt", [1, 3, 6])
def test_retry_info_is_a_floor_under_the_backoff(attempt: int) -> None:
    """A 429 saying "retry in 1 s" waits at least 1 s, and no less than the exponential backoff of that attempt."""
    state = RetryCallState(retry_object=AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((RateLimitedError, RateLimitedError("HTTP 429", http_status=429, retry_after=1.0), None))
    floor = max(1.0, min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (attempt - 1)) / 2)
    assert all(_wait(state) >= floor for _ in range(50))


def test_token_endpoint_outage_waits_and_resumes(sim: Any, make_job: Any) -> None:
    """The token endpoint answers 503 at the start and again while the token runs out: the run waits, no row fails."""
    rows = numbered_rows(300)
    job = make_job(rows, limits__concurrency=4)
    sim.configure(token_ttl_s=3, latency_s=0.05, token_fail_for_s=1.5)
    timeline = drive(job, sim, [Step(0.5, "outage", {"token_fail_for_s": 3.0}, lasts_s=3.0)])
    assert timeline.returncode == 0, timeline.stderr
    table = finished_table(job, {r["id"] for r in rows})
    assert table["status"].to_list() == ["ok"] * len(rows)
    assert table["attempts"].max() == 1, "waiting for a token must not spend a row's attempts"
    stats = sim.stats()
    assert stats["tokens_issued"] >= 2, "the token must have run out during the outage"
    record(
        "token endpoint 503 for 1.5 s at start, 3 s mid-run (3 s tokens)",
        injected=_injected(stats),
        tokens_issued=stats["tokens_issued"],
        **outcome(table, sim, len(rows)),
        **timeline.recovery("outage"),
    )


def test_tokens_revoked_mid_run(sim: Any, make_job: Any) -> None:
    """Every token revoked at once, then every second to the end: 401s refresh the token, every row ends ok."""
    rows = numbered_rows(400)
    job = make_job(rows, limits__concurrency=8)
    sim.configure(latency_s=0.05)
    timeline = drive(
        job,
        sim,
        [
            Step(0.3, "revoke", {"revoke_now": True}),
            Step(0.5, "revoke every 1 s", {"revoke_every_s": 1.0}),
        ],
    )
    assert timeline.returncode == 0, timeline.stderr
    table = finished_table(job, {r["id"] for r in rows})
    assert table["status"].to_list() == ["ok"] * len(rows)
    stats = sim.stats()
    assert stats["by_status"].get("401", 0) > 0, "the revocations must have been noticed"
    record(
        "tokens revoked (all at once, then every 1 s)",
        injected=_injected(stats),
        tokens_issued=stats["tokens_issued"],
        **outcome(table, sim, len(rows)),
    )


# 429s come from the storm: a steady random 429 rate holds the adaptive pace down for the whole run
# (see docs/reliability.md), which would measure the pace, not the faults.
ALL_RATES = {
    "rate_500": 0.02,
    "rate_503": 0.02,
    "rate_reset": 0.02,
    "rate_hang": 0.01,
    "rate_truncated": 0.02,
    "rate_not_json": 0.02,
}


@pytest.mark.parametrize(
    ("n", "storm_s", "outage_s"),
    [pytest.param(300, 3.0, 3.0, id="short"), pytest.param(3000, 10.0, 10.0, id="long", marks=SLOW)],
)
def test_all_faults_together(sim: Any, make_job: Any, n: int, storm_s: float, outage_s: float) -> None:
    """Every fault at once, with a storm, a token outage and a revocation on top: only oversized rows end `error`."""
    rows = numbered_rows(n)
    oversized = {rows[k]["id"] for k in (7, n // 2, n - 3)}
    for row in rows:
        if row["id"] in oversized:
            row["text"] = "x" * 30_000
    job = make_job(rows, limits__concurrency=8, retry__timeout_s=1)
    sim.configure(seed=SEED, latency_s=0.05, token_ttl_s=3, max_body_bytes=20_000, **ALL_RATES)
    timeline = drive(
        job,
        sim,
        [
            Step(0.3, "storm", {"storm_for_s": storm_s}, lasts_s=storm_s),
            Step(1.0, "token outage", {"token_fail_for_s": outage_s}, lasts_s=outage_s),
            Step(1.0, "revoke", {"revoke_now": True}),
        ],
    )
    assert timeline.returncode == 0, timeline.stderr
    table = finished_table(job, {r["id"] for r in rows})
    errors = table.filter(table["status"] == "error")
    assert set(errors["id"]) == oversized
    assert set(errors["http_status"]) == {400} and set(errors["error_type"]) == {"http"}
    assert all("payload size exceeds the limit" in m for m in errors["error_message"])
    record(
        f"all together ({n} rows, storm {storm_s:g} s, token outage {outage_s:g} s)",
        injected=_injected(sim.stats()),
        **outcome(table, sim, n),
        **timeline.recovery("storm"),
    )
