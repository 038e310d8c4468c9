"""A budget over a sliding window: at most N units in any 61 seconds, each reserved before a request is sent.

`BudgetWindow` is a ledger of reservations: a request reserves its estimated size, and settles to what it
really used when the answer comes; an unused part is refunded at once, an overrun is charged at the moment the
request was sent, so the ledger always matches what the endpoint counted over the last minute. Waiters are
woken by `loop.call_at`, never by polling, so tests drive it with a virtual clock. `window_safe_limiter` is
the requests/min bucket (aiolimiter) sized to the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from aiolimiter import AsyncLimiter

# A quota counts requests when they arrive, the budgets here when they are sent. Send-to-arrival
# delays vary by milliseconds, so a budget that frees a slot at exactly send + 60 s lets the next
# request arrive while the endpoint still counts the old one (measured: 18% 429s under a tight
# tokens/min quota). Every budget therefore spans one extra second (`SKEW_S`): 1.6% of throughput.
SKEW_S = 1.0
BUDGET_WINDOW_S = 60.0 + SKEW_S


def window_safe_limiter(per_minute: float, burst_seconds: float) -> AsyncLimiter:
    """A leaky bucket whose burst plus a window (`BUDGET_WINDOW_S`) of leak equals `per_minute`."""
    burst = max(1.0, per_minute * burst_seconds / 60)
    leak_per_s = max((per_minute - burst) / BUDGET_WINDOW_S, 1e-6)
    return AsyncLimiter(max_rate=burst, time_period=burst / leak_per_s)


class Reservation:
    """What one request holds in a BudgetWindow: when it was charged and how much it is charged now."""

    __slots__ = ("amount", "at")

    def __init__(self, at: float, amount: int) -> None:
        self.at = at
        self.amount = amount


class BudgetWindow:
    """At most `limit` units over any `window_s` seconds, each unit counted when it was reserved.

    A ledger of reservations, oldest first. Waiters are served first come, first served and woken
    by `loop.call_at` at the exact moment enough old reservations leave the window, or at once by a
    refund or a higher limit; there is no polling loop. `limit=None` admits everything but keeps
    the ledger, so a limit set later starts from what the last minute really holds.
    """

    def __init__(self, limit: float | None, window_s: float = BUDGET_WINDOW_S) -> None:
        self._limit = limit
        self._window = window_s
        self._ledger: deque[Reservation] = deque()
        self._used = 0
        self._waiters: deque[tuple[int, asyncio.Future[Reservation]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def limit(self) -> float | None:
        """Units allowed per window (None: no limit)."""
        return self._limit

    @limit.setter
    def limit(self, value: float | None) -> None:
        self._limit = value
        self._wake()

    def __len__(self) -> int:
        """Reservations in the ledger: at most one window's worth once the clock has moved on."""
        return len(self._ledger)

    def oldest(self, now: float) -> float:
        """When the oldest reservation still in the window was made (`now` when there is none)."""
        self._expire(now)
        return self._ledger[0].at if self._ledger else now

    def used(self, now: float) -> int:
        """Units charged over the window ending `now`."""
        self._expire(now)
        return self._used

    async def reserve(self, amount: int) -> Reservation:
        """Charge `amount` now, waiting until it fits; an amount larger than the limit waits for an empty window."""
        reservation = await self.reserve_within(amount, None)
        assert reservation is not None
        return reservation

    async def reserve_within(self, amount: int, wait_s: float | None) -> Reservation | None:
        """`reserve`, giving up (None) after `wait_s` seconds without room."""
        loop = asyncio.get_running_loop()
        if not self._waiters and self._fits(amount, loop.time()):
            return self._charge(amount, loop.time())
        future: asyncio.Future[Reservation] = loop.create_future()
        self._waiters.append((amount, future))
        self._wake()
        try:
            return await (future if wait_s is None else asyncio.wait_for(future, wait_s))
        except TimeoutError:
            with contextlib.suppress(ValueError):
                self._waiters.remove((amount, future))
            self._wake()
            return None
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.settle(future.result(), 0)  # granted as the task was cancelled: give it back
            with contextlib.suppress(ValueError):
                self._waiters.remove((amount, future))
            self._wake()
            raise

    def force(self, amount: int) -> Reservation:
        """Charge `amount` at once, room or not (a probe past a limit that may be wrong)."""
        return self._charge(amount, asyncio.get_running_loop().time())

    def settle(self, reservation: Reservation, actual: int) -> None:
        """Correct a reservation to what was really used: a refund frees room now, an overrun counts at its time."""
        if self._ledger and reservation.at >= self._ledger[0].at:  # still in the ledger: expiry is oldest first
            self._used += actual - reservation.amount
        reservation.amount = actual
        self._wake()

    def _fits(self, amount: int, now: float) -> bool:
        """Whether `amount` more stays within the limit over the window ending `now`."""
        used = self.used(now)  # expires old reservations even with no limit, so the ledger stays a minute long
        return self._limit is None or used + amount <= self._limit or used <= 0

    def _charge(self, amount: int, now: float) -> Reservation:
        """Add a reservation at `now`."""
        reservation = Reservation(now, amount)
        self._ledger.append(reservation)
        self._used += amount
        return reservation

    def _expire(self, now: float) -> None:
        """Forget reservations older than the window."""
        ledger, window = self._ledger, self._window
        while ledger and ledger[0].at + window <= now:  # the very sum `_room_at` schedules the wake-up for
            self._used -= ledger.popleft().amount

    def _wake(self) -> None:
        """Grant every waiter that fits now, in order; then set a timer for when the first of the rest will."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters and self._waiters[0][1].done():
            self._waiters.popleft()
        if not self._waiters:
            return
        loop = self._waiters[0][1].get_loop()
        now = loop.time()
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if not self._fits(amount, now):
                break
            self._waiters.popleft()
            future.set_result(self._charge(amount, now))
        if self._waiters:
            self._timer = loop.call_at(self._room_at(self._waiters[0][0]), self._wake)

    def _room_at(self, amount: int) -> float:
        """When enough of the oldest reservations will have left the window for `amount` to fit."""
        assert self._limit is not None
        excess = self._used + amount - self._limit
        for reservation in self._ledger:
            excess -= reservation.amount
            if excess <= 0:
                return reservation.at + self._window
        return self._ledger[-1].at + self._window if self._ledger else 0.0
