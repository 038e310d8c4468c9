"""The sliding-window budgets, on a virtual clock: time jumps to the next timer, nothing sleeps."""

from __future__ import annotations

import asyncio
import random

import pytest

from batchrun.budgets import BudgetWindow, Reservation, window_safe_limiter
from tests.virtual_time import now, run


def most_in_any_window(events: list[tuple[float, int]], window: float = 60.0) -> int:
    """The largest total over any window of `window` seconds (a window starts just after an event)."""
    events = sorted(events)
    best = total = start = 0
    for at, amount in events:
        total += amount
        while events[start][0] + window <= at:  # the same sum the ledger expires by
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def test_sliding_window_never_exceeds_its_limit_with_refunds_and_overruns() -> None:
    """Reservations settled below and above their estimate never put more than the limit in any minute."""

    async def main() -> list[Reservation]:
        window = BudgetWindow(10_000, window_s=60)
        rng = random.Random(3)
        granted: list[Reservation] = []

        async def worker() -> None:
            for _ in range(60):
                estimate = rng.choice([50, 300, 2_000])
                reservation = await window.reserve(estimate)
                granted.append(reservation)
                await asyncio.sleep(rng.uniform(0.1, 3.0))
                window.settle(reservation, int(estimate * rng.uniform(0.05, 1.0)))

        await asyncio.gather(*(worker() for _ in range(16)))
        return granted

    granted = run(main)
    assert len(granted) == 16 * 60
    assert most_in_any_window([(r.at, r.amount) for r in granted]) <= 10_000
    assert granted[-1].at > 120  # the budget, not the workers, set the pace


def test_a_refund_frees_room_at_once() -> None:
    """A waiter that does not fit is let in the moment an earlier request settles below its estimate."""

    async def main() -> tuple[float, float]:
        window = BudgetWindow(100, window_s=60)
        first = await window.reserve(100)
        waiter = asyncio.create_task(window.reserve(50))
        await asyncio.sleep(5)
        assert not waiter.done()
        window.settle(first, 10)
        second = await waiter
        return first.at, second.at

    first_at, second_at = run(main)
    assert second_at - first_at == pytest.approx(5, abs=1e-3)


def test_an_overrun_counts_at_its_send_time_until_it_leaves_the_window() -> None:
    """Tokens used beyond the estimate block later requests until the request that used them is a minute old."""

    async def main() -> float:
        window = BudgetWindow(100, window_s=60)
        first = await window.reserve(10)
        window.settle(first, 95)
        await asyncio.sleep(1)
        later = await window.reserve(20)
        return later.at - first.at

    assert run(main) == pytest.approx(60, abs=1e-3)


def test_waiters_are_served_in_order() -> None:
    """A large request first in line is not overtaken by smaller ones behind it."""

    async def main() -> list[str]:
        window = BudgetWindow(100, window_s=60)
        await window.reserve(90)
        order: list[str] = []

        async def take(name: str, amount: int) -> None:
            await window.reserve(amount)
            order.append(name)

        big = asyncio.create_task(take("big", 80))
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 5))
        await asyncio.gather(big, small)
        return order

    assert run(main) == ["big", "small"]


def test_a_cancelled_waiter_leaves_no_charge_behind() -> None:
    """Cancelling a task that waits for room neither keeps a charge nor blocks the next waiter."""

    async def main() -> tuple[int, float]:
        window = BudgetWindow(100, window_s=60)
        await window.reserve(100)
        doomed = asyncio.create_task(window.reserve(60))
        await asyncio.sleep(1)
        doomed.cancel()
        await asyncio.gather(doomed, return_exceptions=True)
        nxt = await window.reserve(40)
        return window.used(now()), nxt.at

    used, at = run(main)
    assert used == 40
    assert at == pytest.approx(60, abs=1e-3)


def test_a_request_larger_than_the_budget_goes_alone() -> None:
    """An estimate above the whole minute's budget waits for an empty window instead of forever."""

    async def main() -> float:
        window = BudgetWindow(100, window_s=60)
        await window.reserve(30)
        huge = await window.reserve(500)
        return huge.at

    assert run(main) == pytest.approx(60, abs=1e-3)


def test_requests_per_minute_bucket_never_exceeds_its_budget() -> None:
    """The configured requests/min bucket: burst plus a minute of leak stays within the budget."""

    async def main() -> list[float]:
        limiter = window_safe_limiter(600, burst_seconds=0.5)
        times: list[float] = []
        for _ in range(1_500):
            await limiter.acquire()
            times.append(now())
        return times

    times = run(main)
    assert most_in_any_window([(t, 1) for t in times]) <= 600
    assert len(times) / (times[-1] / 60) > 0.97 * 600


def test_the_ledger_keeps_only_the_last_window() -> None:
    """With no limit the ledger still forgets old reservations, so a long run does not grow in memory."""

    async def main() -> int:
        window = BudgetWindow(None, window_s=60)
        for _ in range(1_000):
            await window.reserve(1)
            await asyncio.sleep(1)
        return len(window)

    assert run(main) == 60
