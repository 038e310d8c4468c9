"""Requests/min and tokens/min budgets (aiolimiter) and an adaptive pace that backs off on 429s.

A configured budget is a promise about every 60-second window, not an average: each bucket holds
at most a small burst and leaks so that burst + one minute of leak never exceeds the budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

from aiolimiter import AsyncLimiter

from batchrun.spec import LimitsSpec


def window_safe_limiter(per_minute: float, burst_seconds: float) -> AsyncLimiter:
    """A leaky bucket whose burst plus 60 s of leak equals `per_minute`, so no minute exceeds it."""
    burst = max(1.0, per_minute * burst_seconds / 60)
    leak_per_s = max((per_minute - burst) / 60, 1e-6)
    return AsyncLimiter(max_rate=burst, time_period=burst / leak_per_s)


class AdaptivePace:
    """No pace until the endpoint says 429; then additive increase, multiplicative decrease, then none again.

    Vertex's Dynamic Shared Quota has no number to configure, so the pool learns one: when 429s
    make up more than `tolerance` of the last few seconds' answers, the pace is cut (at most once
    per `cooldown_s`, so one burst of 429s counts once), and every success adds back a little,
    about `increase_per_s` requests/s each second. A scattering of 429s below the tolerance is
    left to the retry policy: cutting on each would drive the pace to nothing while the endpoint
    keeps refusing the same small share of requests at any speed. Once no cut has come for
    `release_after_s`, the pace is lifted: a storm's low rate must not outlive the storm.

    Waiters go one at a time in arrival order; the first sleeps until one interval at the
    *current* rate has passed since the last send, and wakes early when the rate changes, so a
    cut during a storm never books slots far into the calm that follows.
    """

    def __init__(
        self,
        *,
        decrease: float = 0.7,
        increase_per_s: float = 0.5,
        cooldown_s: float = 1.0,
        tolerance: float = 0.1,
        window_s: float = 3.0,
        min_answers: int = 50,
        release_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate: float | None = None
        self._tolerance = tolerance
        self._window = window_s
        self._min_answers = min_answers
        self._answers: deque[tuple[float, bool]] = deque()
        self._decrease = decrease
        self._increase = increase_per_s
        self._cooldown = cooldown_s
        self._release_after = release_after_s
        self._clock = clock
        self._last_send = float("-inf")
        self._last_cut = float("-inf")
        self._sent: deque[float] = deque()
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        """Wait for this request's turn in the pace, if one is set."""
        now = self._clock()
        self._sent.append(now)
        while self._sent and self._sent[0] < now - 5.0:
            self._sent.popleft()
        if self.rate is None:
            return
        async with self._turn:
            while self.rate is not None:
                wait = self._last_send + 1.0 / self.rate - self._clock()
                if wait <= 0:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), wait)
            self._last_send = self._clock()

    def _answered(self, now: float, limited: bool) -> float:
        """Record an answer; the share of 429s among the answers of the last `window_s` seconds."""
        answers = self._answers
        answers.append((now, limited))
        while answers and answers[0][0] < now - self._window:
            answers.popleft()
        if len(answers) < self._min_answers:
            return 0.0  # too few answers to tell a quota from chance
        return sum(1 for _, refused in answers if refused) / len(answers)

    def on_rate_limited(self) -> None:
        """A 429: cut the pace when 429s are more than a scattering (the first cut starts from the measured rate)."""
        now = self._clock()
        share = self._answered(now, True)
        if now - self._last_cut < self._cooldown or share <= self._tolerance:
            return
        span = min(5.0, now - self._sent[0]) if self._sent else 0.0
        measured = max(len(self._sent) / max(span, 1.0), 1.0)
        base = self.rate if self.rate is not None else measured
        self.rate = max(0.2, base * self._decrease)
        self._last_cut = now
        self._changed.set()

    def on_success(self) -> None:
        """A success: raise the pace by about `increase_per_s` per second, or lift it after a calm spell."""
        now = self._clock()
        self._answered(now, False)
        if self.rate is None:
            return
        if now - self._last_cut >= self._release_after:
            self.rate = None
        else:
            self.rate += self._increase / self.rate * max(1.0, self.rate / 10)
        self._changed.set()


class Limits:
    """Every gate a request passes before it is sent: requests/min, tokens/min, adaptive pace."""

    def __init__(self, spec: LimitsSpec, *, share: float = 1.0) -> None:
        rpm = spec.requests_per_minute * share if spec.requests_per_minute else None
        tpm = spec.tokens_per_minute * share if spec.tokens_per_minute else None
        self.requests = window_safe_limiter(rpm, burst_seconds=0.5) if rpm else None
        self.tokens = window_safe_limiter(tpm, burst_seconds=10.0) if tpm else None
        self.pace = AdaptivePace() if not rpm and not tpm else None

    async def acquire(self, estimated_tokens: int) -> None:
        """Wait until this request fits every budget."""
        if self.requests is not None:
            await self.requests.acquire()
        if self.tokens is not None:
            await self.tokens.acquire(min(float(estimated_tokens), self.tokens.max_rate))
        if self.pace is not None:
            await self.pace.acquire()

    async def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Charge the tokens a request used beyond its estimate, so the next ones wait for them."""
        if self.tokens is None:
            return
        extra = float(actual_tokens - estimated_tokens)
        while extra > 0:
            step = min(extra, self.tokens.max_rate)
            await self.tokens.acquire(step)
            extra -= step

    def rate_limited(self) -> None:
        """Tell the adaptive pace about a 429."""
        if self.pace is not None:
            self.pace.on_rate_limited()

    def succeeded(self) -> None:
        """Tell the adaptive pace about a success."""
        if self.pace is not None:
            self.pace.on_success()
