"""What a job costs: prices from the spec or genai-prices, the cost cap over real HTTP (never above it, a rerun
finishes exactly once), the cost on the progress lines, and the ledger on a virtual clock."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from batchrun.commands.report import build_report
from batchrun.limits import CapReached, CostCap
from batchrun.prices import PriceBook, price_book
from batchrun.spec import LimitsSpec, load_spec, parse_spec
from tests.conftest import Job, Sim
from tests.test_features import vertex
from tests.virtual_time import run

PRICES = {"ON_DEMAND": {"input": 1000.0, "cached_input": 100.0, "output": 2000.0}}  # dear, so rows cost cents


def capped_job(make_job: Any, sim: Sim, cap: float, n: int = 30) -> Job:
    """A job whose rows cost about 0.03-0.05 each, under limits.max_cost."""
    job: Job = make_job(
        n=n,
        endpoint=vertex(sim),
        limits={"concurrency": 4, "max_cost": cap},
        request={"prompt": "Classify: {text}", "params": {"max_tokens": 16, "reasoning_effort": "none"}},
        report={"prices": PRICES},
        output={"path": "out", "keep_columns": ["text"], "flush_rows": 5, "flush_seconds": 0.2},
    )
    return job


def saved_cost(job: Job) -> float:
    """The saved rows' cost, as `batchrun report` computes it from the Parquet files."""
    spec = load_spec(job.spec, [f"output.path={job.output}", f"input.path={job.dir / 'input.jsonl'}"])
    return float(build_report(spec)["cost"]["total"])


def test_the_cap_is_never_exceeded_and_a_rerun_with_more_finishes_exactly_once(make_job: Any, sim: Sim) -> None:
    """The run stops before the cap (exit 3), saves every finished row and says how to go on; the saved rows'
    cost is never above the cap; a rerun with a larger cap sends only the rest, each row once."""
    job = capped_job(make_job, sim, cap=0.5)
    first = job.run("run")
    assert first.returncode == 3, first.stderr
    assert "limits.max_cost reached" in first.stderr and "--set limits.max_cost=" in first.stderr
    saved = job.table()
    assert 0 < len(saved) < 30
    assert saved_cost(job) <= 0.5
    assert set(saved["status"].to_list()) == {"ok"}

    again = job.run("run")  # the same cap: the saved rows' spend counts against it, nothing more fits
    assert again.returncode == 3 and saved_cost(job) <= 0.5

    done = job.run("run", "--set", "limits.max_cost=100")
    assert done.returncode == 0, done.stderr
    table = job.table()
    assert table["id"].n_unique() == len(table) == 30
    assert set(sim.counts().values()) == {1}  # no row was ever sent twice
    assert saved_cost(job) <= 100


def test_the_cap_stops_before_the_first_request_when_the_saved_rows_spent_it(make_job: Any, sim: Sim) -> None:
    """A cap too small for one request's worst case sends nothing and exits 3 with the fix."""
    job = capped_job(make_job, sim, cap=0.001, n=3)
    result = job.run("run")
    assert result.returncode == 3 and "limits.max_cost reached: 0.0000 of 0.001 USD spent" in result.stderr
    assert sim.stats()["requests"] == 0


def test_max_cost_without_a_price_for_flex_is_refused(make_job: Any, sim: Sim) -> None:
    """genai-prices publishes no Flex rate for gemini-2.5-flash: max_cost on Flex needs report.prices, and
    validate and run both say so (exit 2, nothing sent)."""
    job: Job = make_job(n=2, endpoint=vertex(sim, location="global", consumption="flex"), limits={"max_cost": 5})
    for command in ("validate", "run"):
        result = job.run(command)
        assert result.returncode == 2, result.stderr
        assert "limits.max_cost needs a price for ON_DEMAND_FLEX" in result.stderr
        assert "report.prices.ON_DEMAND_FLEX: {input: ..., cached_input: ..., output: ...}" in result.stderr
    assert sim.stats()["requests"] == 0


def test_json_log_lines_carry_the_cost_so_far(make_job: Any, sim: Sim) -> None:
    """Off a terminal, the progress and final log lines show what this run's answers cost so far."""
    job: Job = make_job(n=5, report={"prices": PRICES})
    result = job.run("run", "--log-interval", "0.05")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    final = [line for line in lines if "finished" in line["message"]][-1]
    assert final["currency"] == "USD" and final["cost"] == pytest.approx(saved_cost(job), rel=1e-6)


def test_default_prices_come_from_genai_prices_and_the_spec_overrides_them() -> None:
    """Standard prices for a known Gemini model come from genai-prices (named as the source); report.prices wins;
    a tier the library does not publish stays unpriced instead of taking the standard rate."""
    pytest.importorskip("genai_prices", reason="genai-prices (a dependency in pyproject.toml) is not installed")
    base = {
        "name": "j",
        "input": {"path": "i.jsonl"},
        "output": {"path": "o"},
        "model": "google/gemini-2.5-flash",
        "endpoint": {"kind": "simulator"},
    }
    book = price_book(parse_spec(base))
    standard = book.get("ON_DEMAND")
    assert standard is not None and standard.source.startswith("genai-prices")
    assert (standard.input, standard.output) == (0.3, 2.5) and standard.cached_input < standard.input
    assert book.get("ON_DEMAND_FLEX") is None
    given = price_book(parse_spec({**base, "report": {"prices": {"ON_DEMAND": {"input": 1, "output": 2}}}}))
    price = given.get("ON_DEMAND")
    assert price is not None and (price.input, price.cached_input, price.output, price.source) == (
        1,
        1,
        2,
        "report.prices",
    )


def test_the_ledger_waits_for_in_flight_requests_then_refuses() -> None:
    """A request that does not fit waits while others are in flight, gets in when their real cost is lower,
    and is refused (CapReached) once nothing is in flight and it still does not fit."""
    spec = parse_spec(
        {
            "name": "j",
            "input": {"path": "i.jsonl"},
            "output": {"path": "o"},
            "model": "m",
            "endpoint": {"kind": "simulator"},
            "report": {"prices": {"ON_DEMAND": {"input": 1_000_000, "output": 1_000_000}}},
        }
    )
    book: PriceBook = price_book(spec, library=False)
    body = {"messages": [{"role": "user", "content": "x" * 84}], "max_tokens": 100, "reasoning_effort": "none"}

    async def main() -> tuple[float, float, str]:
        cap = CostCap(450.0, book, ["ON_DEMAND"])
        worst = cap.worst_case(body)  # 84 bytes + 16 markers + 100 answer tokens: 200
        first = await cap.reserve(body)
        second = await cap.reserve(body)
        waiting = asyncio.create_task(cap.reserve(body))
        await asyncio.sleep(1)
        assert not waiting.done()
        cap.settle(first, {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50})
        third = await waiting
        cap.settle(second, {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50})
        cap.settle(third, {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50})
        cap.spent = 300.0
        try:
            await cap.reserve(body)
        except CapReached as exc:
            return worst, cap.reserved, exc.message
        raise AssertionError("the cap let a request past it")

    worst, reserved, message = run(main)
    assert worst == 200.0 and reserved == 0.0
    assert message == (
        "limits.max_cost reached: 300.0000 of 450 USD spent, and the next request may cost up to "
        "200.0000; to go on, run again with --set limits.max_cost=675"
    )


def test_limits_own_concurrency() -> None:
    """At most limits.concurrency requests are between start and their end at once."""

    async def main() -> int:
        from batchrun.limits import Limits

        limits = Limits(LimitsSpec(concurrency=3))
        most = active = 0

        async def one() -> None:
            nonlocal most, active
            ticket = await limits.start({"messages": []})
            active += 1
            most = max(most, active)
            await asyncio.sleep(1)
            active -= 1
            limits.finished(ticket, {})

        await asyncio.gather(*(one() for _ in range(10)))
        return most

    assert run(main) == 3


def test_estimate_sends_nothing_and_comes_within_two_percent_of_the_real_prompt_tokens(make_job: Any, sim: Sim) -> None:
    """`batchrun estimate --json` reads every row and sends nothing; its prompt tokens are within 2% of what
    the run then reports (4 characters a token, as the simulator counts), its answer bound is max_tokens a row,
    the real cost lies in its range, and --sample scales a few rows to the whole input."""
    rows = [{"id": f"r{i:03d}", "text": "word " * (i % 17 + 3)} for i in range(40)]
    job: Job = make_job(
        rows=rows,
        report={"prices": PRICES},
        request={
            "system": "Label it.",
            "prompt": "Classify: {text}",
            "params": {"max_tokens": 16, "reasoning_effort": "none"},
        },
    )
    result = job.run("estimate", "--json")
    assert result.returncode == 0, result.stderr
    estimate = json.loads(result.stdout)
    assert sim.stats()["requests"] == 0
    assert (estimate["rows"], estimate["rows_read"], estimate["sampled"]) == (40, 40, False)
    assert estimate["tokens"]["answer_tokens_bound"] == 40 * 16
    assert job.run("run").returncode == 0
    table = job.table()
    real = int(table["prompt_tokens"].sum())
    assert abs(estimate["tokens"]["prompt_tokens"] - real) <= 0.02 * real
    standard = next(o for o in estimate["cost"] if o["consumption"] == "standard")
    assert standard["source"] == "report.prices" and standard["low"] <= saved_cost(job) <= standard["high"]
    sampled = json.loads(job.run("estimate", "--json", "--sample", "17").stdout)
    assert (sampled["rows_read"], sampled["sampled"]) == (17, True)
    assert abs(sampled["tokens"]["prompt_tokens"] - real) <= 0.2 * real


def test_estimate_shows_the_time_at_the_configured_limits(make_job: Any, sim: Sim) -> None:
    """With requests_per_minute set, the estimate says how many minutes the rows take at it."""
    job: Job = make_job(n=300, limits={"concurrency": 8, "requests_per_minute": 60})
    result = job.run("estimate")
    assert result.returncode == 0, result.stderr
    assert "time: at least 5.0 minutes (0.1 h) at limits.requests_per_minute" in result.stdout
    assert "standard     ON_DEMAND" in result.stdout and "nothing sent" in result.stdout
    assert sim.stats()["requests"] == 0
