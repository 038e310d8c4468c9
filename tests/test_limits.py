"""The budgets and the adaptive pace, on a virtual clock: time jumps to the next timer, nothing sleeps."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Any

import pytest

from batchrun.limits import AdaptivePace, BudgetWindow, Limits, Reservation, window_safe_limiter
from batchrun.spec import LimitsSpec
from tests.virtual_time import now, run


def sized(tokens: int) -> dict[str, Any]:
    """A request body that Limits sizes at `tokens` (no message text, an answer budget of `tokens`)."""
    return {"messages": [], "max_tokens": tokens}


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


def test_token_budget_refunds_a_rate_limited_request() -> None:
    """A 429 gives back the whole estimate: the endpoint did not count those tokens."""

    async def main() -> int:
        limits = Limits(LimitsSpec(tokens_per_minute=1_000))
        ticket = await limits.start(sized(800))
        limits.refused(ticket)
        assert limits.tokens is not None
        return limits.tokens.used(now())

    assert run(main) == 0


class QuotaServer:
    """A fixed quota over a sliding minute, as Vertex and the simulator count it, with a little latency."""

    def __init__(
        self, per_minute: int, *, latency_s: float = 0.05, random_429: float = 0.0, storm: tuple[float, float] = (0, 0)
    ) -> None:
        self.per_minute = per_minute
        self.latency_s = latency_s
        self.random_429 = random_429
        self.storm = storm  # every request refused from storm[0] to storm[1] seconds
        self.rng = random.Random(11)
        self.admitted: list[float] = []
        self.arrivals: list[float] = []
        self.refused = 0
        self._window: deque[float] = deque()

    async def answer(self) -> bool:
        """True for an answer, False for a 429."""
        at = now()
        self.arrivals.append(at)
        while self._window and self._window[0] + 60 <= at:
            self._window.popleft()
        stormy = self.storm[0] <= at < self.storm[1]
        refused = stormy or len(self._window) >= self.per_minute or self.rng.random() < self.random_429
        if not refused:
            self._window.append(at)
            self.admitted.append(at)
        await asyncio.sleep(self.latency_s)
        self.refused += refused
        return not refused


async def drive(pace: AdaptivePace, server: QuotaServer, *, seconds: float, workers: int = 64) -> None:
    """Workers send through the pace until the time is up."""

    async def worker() -> None:
        while now() < seconds:
            reservation = await pace.acquire()
            if await server.answer():
                pace.on_success(reservation)
            else:
                pace.on_rate_limited(reservation)

    await asyncio.gather(*(worker() for _ in range(workers)))


def test_adaptive_pace_finds_an_unknown_quota_with_few_429s() -> None:
    """Against an unknown 6,000/min sliding quota: at least 90% of it, at most 3% of requests refused."""
    server = QuotaServer(6_000)

    async def main() -> None:
        await drive(AdaptivePace(), server, seconds=300)

    run(main)
    steady = [t for t in server.admitted if t >= 60]
    assert len(steady) / 4 >= 0.90 * 6_000
    assert server.refused <= 0.03 * len(server.arrivals)


def test_adaptive_pace_ignores_isolated_429s() -> None:
    """5% of requests refused at random (no quota): they are retried, the pool does not slow down."""
    server = QuotaServer(10**9, random_429=0.05)
    pace = AdaptivePace()

    async def main() -> None:
        await drive(pace, server, seconds=60, workers=16)

    run(main)
    assert pace.per_minute is None
    assert len(server.arrivals) >= 0.95 * 16 * 60 / server.latency_s


def test_adaptive_pace_speeds_up_again_when_429s_stop() -> None:
    """Once a whole minute passes without a 429, every second of successes raises the figure again."""
    server = QuotaServer(3_000)
    pace = AdaptivePace()

    async def main() -> float:
        await drive(pace, server, seconds=120)
        assert pace.per_minute is not None
        cut = pace.per_minute
        server.per_minute = 10**9
        await drive(pace, server, seconds=360)
        return cut

    cut = run(main)
    assert pace.per_minute is not None and pace.per_minute > 1.2 * cut


def test_budgets_leave_a_second_for_arrival_delays() -> None:
    """A spent token budget frees up 61 s after the send, so the endpoint's minute (from arrival) has passed."""

    async def main() -> float:
        limits = Limits(LimitsSpec(tokens_per_minute=1_000))
        first = await limits.start(sized(1_000))
        limits.finished(first, {"total_tokens": 1_000})
        second = await limits.start(sized(10))
        assert first.tokens is not None and second.tokens is not None
        return second.tokens.at - first.tokens.at

    assert run(main) == pytest.approx(61, abs=1e-3)


def test_the_ledger_keeps_only_the_last_window() -> None:
    """With no limit the ledger still forgets old reservations, so a long run does not grow in memory."""

    async def main() -> int:
        window = BudgetWindow(None, window_s=60)
        for _ in range(1_000):
            await window.reserve(1)
            await asyncio.sleep(1)
        return len(window)

    assert run(main) == 60


@pytest.mark.parametrize("storm", [(0.0, 10.0), (30.0, 40.0)], ids=["at-start", "mid-run"])
def test_a_storm_does_not_outlive_itself(storm: tuple[float, float]) -> None:
    """Every request refused for 10 s (no quota otherwise): within seconds of the end the pool is back at full speed."""
    server = QuotaServer(10**9, storm=storm)
    pace = AdaptivePace()

    async def main() -> None:
        await drive(pace, server, seconds=storm[1] + 30, workers=16)

    run(main)
    full_speed = 16 / server.latency_s
    after = [t for t in server.admitted if storm[1] + 5 <= t < storm[1] + 30]
    assert len(after) / 25 >= 0.9 * full_speed


def test_slow_answers_are_not_read_as_overload() -> None:
    """Answers that take minutes (Flex PayGo's, by design) never slow the adaptive pace: only 429s do."""
    pace = AdaptivePace()

    async def main() -> float | None:
        async def worker() -> None:
            for _ in range(5):
                reservation = await pace.acquire()
                await asyncio.sleep(600)  # ten minutes an answer
                pace.on_success(reservation)

        await asyncio.gather(*(worker() for _ in range(32)))
        return pace.per_minute

    assert run(main) is None
