"""The adaptive pace against a fixed sliding-minute quota, on a virtual clock: nothing sleeps."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest

from batchrun.pace import AdaptivePace
from tests.virtual_time import now, run


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
