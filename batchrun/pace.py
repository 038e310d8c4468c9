"""The adaptive pace: with no requests/min or tokens/min configured, the pool learns the endpoint's quota from its
429s (never from latency, so slow answers such as Flex PayGo's are not taken for overload)."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque

from batchrun.budgets import BUDGET_WINDOW_S, SKEW_S, BudgetWindow, Reservation


class AdaptivePace:
    """No limit until the endpoint refuses; then a learned requests-per-minute figure, kept two ways.

    Vertex's Dynamic Shared Quota has no number to configure, and fixed quotas count over a sliding
    minute, so the pool learns a figure. A scattering of 429s is left to the retry policy (cutting
    on each would drive the pace to nothing while the endpoint refuses the same small share at any
    speed): only when 429s are more than `trigger` of recent answers does the figure drop, to
    `decrease` times what the endpoint accepted over the last minute. It is kept as an even pace
    and, when the refusals marked a level, also as a sliding minute.

    A level: the endpoint took most of the minute's requests, then refused (a quota, or a pool that
    filled up). That acceptance is remembered as known-good, and nothing is sent until the mirrored
    minute has room, so a burst that filled the endpoint's window is not followed by a minute of
    refusals; after `probe_s` of waiting one request goes anyway, and if it is accepted the
    refusals were a passing storm and the mirror is dropped. A storm that refused nearly everything
    marks no level: only the pace holds.

    Recovery: below 90% of known-good each success raises the figure by `recover` (a storm's low
    pace must not outlive the storm), then by `increase_per_s` a second up to known-good; beyond
    it only after a whole window without a 429, and any 429 up there sends it back. With no level
    known, a figure far above what the pool sends is lifted altogether.

    Waiters pass the pace one at a time: the first sleeps until one interval at the *current*
    figure has passed since the last send and wakes early when the figure changes, so a cut
    during a storm never books slots far into the calm that follows.
    """

    def __init__(
        self,
        *,
        decrease: float = 0.95,
        increase_per_s: float = 0.002,
        recover: float = 1.0,
        trigger: float = 0.2,
        memory: int = 200,
        floor_per_minute: float = 60.0,
        probe_s: float = 5.0,
        window_s: float = BUDGET_WINDOW_S,
    ) -> None:
        self.per_minute: float | None = None
        self._decrease = decrease
        self._increase = increase_per_s
        self._recover = recover
        self._trigger = trigger
        self._alpha = 1.0 / memory
        self._floor = floor_per_minute
        self._probe_s = probe_s
        self._refused = 0.0  # moving average of "this answer was a 429"
        self._window = BudgetWindow(None, window_s)
        self._window_s = window_s
        self._known_good = math.inf  # the level the sliding minute holds to (inf: none known)
        self._proven = math.inf  # the highest level the endpoint accepted without refusing
        self._refusals: deque[float] = deque()  # 429s over the last window
        self._probe: Reservation | None = None
        self._last_probe = -math.inf
        self._last_cut = -math.inf
        self._last_refusal = -math.inf
        self._last_raise: float | None = None
        self._last_send = -math.inf
        self._turn = asyncio.Lock()
        self._changed = asyncio.Event()

    async def acquire(self) -> Reservation:
        """Wait for this request's turn in the pace, then for room in the learned minute."""
        loop = asyncio.get_running_loop()
        if self.per_minute is not None:
            async with self._turn:
                while self.per_minute is not None:
                    wait = self._last_send + 60.0 / self.per_minute - loop.time()
                    if wait <= 0:
                        break
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                self._last_send = loop.time()
        while True:
            reservation = await self._window.reserve_within(1, self._probe_s)
            if reservation is not None:
                return reservation
            if loop.time() - self._last_probe >= self._probe_s:
                self._last_probe = loop.time()
                self._probe = self._window.force(1)
                return self._probe

    def on_rate_limited(self, reservation: Reservation) -> None:
        """A 429: the endpoint did not count it; cut when refusals are frequent, step back when probing."""
        self._window.settle(reservation, 0)
        now = asyncio.get_running_loop().time()
        self._refusals.append(now)
        while self._refusals[0] + self._window_s <= now:
            self._refusals.popleft()
        if reservation.at < self._last_cut:
            return  # sent before the last cut, which already answered it
        self._last_refusal = now
        self._refused += self._alpha * (1.0 - self._refused)
        if self._refused >= self._trigger:
            accepted = self._window.used(now)
            marks_a_level = accepted >= len(self._refusals)
            if marks_a_level and (self.per_minute is None or self.per_minute >= 0.99 * self._known_good):
                self._know(accepted * self._decrease)  # refused at the known-good level: it was wrong
                self._proven = self._known_good
            base = accepted if self.per_minute is None else min(self.per_minute, accepted)
            self._last_cut, self._refused, self._last_raise = now, 0.0, None
            self._set(max(self._floor, base * self._decrease))
        elif self._known_good > self._proven:  # probing above the proven level was refused: step back
            self._know(self._proven)
            if self.per_minute is not None:
                self._set(min(self.per_minute, self._proven))

    def on_success(self, reservation: Reservation) -> None:
        """A success: raise the figure; a probe that got through proves the minute it was sent into."""
        self._refused -= self._alpha * self._refused
        now = asyncio.get_running_loop().time()
        if reservation is self._probe:
            self._probe = None
            # The endpoint took more than the mirrored minute allowed. Near the minute's end that is
            # only its clock being a little ahead of ours; earlier, the refusals were no level at all.
            if now - self._window.oldest(now) < self._window_s - 2 * SKEW_S:
                self._know(math.inf)
                self._proven = math.inf
        if self.per_minute is None:
            return
        if self._known_good == math.inf and self.per_minute > 2 * self._window.used(now) + 60:
            self._lift()  # no level known and far above what the pool sends: the pace only holds it back
        elif self.per_minute < 0.9 * self._known_good:
            self._set(min(self.per_minute * (1.0 + self._recover), self._known_good))
        elif self._last_raise is not None:
            step = min(now - self._last_raise, 1.0)
            if self.per_minute < self._known_good:
                self._set(min(self.per_minute * (1.0 + self._increase * step), self._known_good))
            elif now - self._last_refusal >= self._window_s:  # a quiet window: what it carried is proven
                self._proven = max(min(self._proven, self._known_good), self._window.used(now))
                self._know(self._known_good * (1.0 + self._increase * step))
                self._set(self._known_good)
        self._last_raise = now

    def _set(self, per_minute: float) -> None:
        """Adopt a new pace and wake the waiter to re-measure its wait."""
        self.per_minute = per_minute
        self._changed.set()

    def _know(self, per_minute: float) -> None:
        """A level the endpoint showed (inf: none), which the sliding minute holds to."""
        self._known_good = per_minute
        self._window.limit = None if per_minute == math.inf else per_minute

    def _lift(self) -> None:
        """No pace at all, as before the first refusal (no level is known)."""
        self.per_minute = None
        self._changed.set()
