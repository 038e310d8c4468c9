"""Every limit a request passes: concurrency, requests/min and tokens/min budgets, an adaptive pace that
learns the endpoint's quota from 429s, and the cost cap.

A configured budget is a promise about every 60-second window, not an average:

- requests/min: an aiolimiter bucket whose burst plus one minute of leak equals the budget;
- tokens/min: a `BudgetWindow` ledger. A request reserves its estimated size before it is sent and
  settles to the real usage when the answer comes: unused tokens are refunded at once, an overrun
  is charged at the moment the request was sent, so the ledger always matches what the endpoint
  counted over the last minute;
- neither set: `AdaptivePace`, which sends freely until the endpoint refuses, then keeps both a
  sliding minute and an even pace under what the endpoint accepted. It reads 429s only, never
  latency, so slow answers (Flex PayGo's, by design) are not taken for overload;
- limits.max_cost: `CostCap`, a ledger in money that works like the tokens/min one: a request reserves
  its worst case (prompt bound plus answer bound at the dearest traffic type that may serve it) and
  settles to its real cost.

Everything here waits on the event loop's clock (`loop.time()`), so tests drive it with a virtual
clock and nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

from batchrun import tokens
from batchrun.spec import LimitsSpec

if TYPE_CHECKING:
    from batchrun.prices import PriceBook

# A quota counts requests when they arrive, the budgets here when they are sent. Send-to-arrival
# delays vary by milliseconds, so a budget that frees a slot at exactly send + 60 s lets the next
# request arrive while the endpoint still counts the old one (measured: 18% 429s under a tight
# tokens/min quota). Every budget therefore spans one extra second (`_SKEW_S`): 1.6% of throughput.
_SKEW_S = 1.0
BUDGET_WINDOW_S = 60.0 + _SKEW_S


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
            if now - self._window.oldest(now) < self._window_s - 2 * _SKEW_S:
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


class CapReached(Exception):
    """The next request's worst case would take the spend past limits.max_cost: the run stops sending."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CostCap:
    """limits.max_cost as a ledger: each request reserves its worst case before it is sent and settles to its
    real cost after, so what was spent plus what is in flight never exceeds the cap.

    A request that does not fit waits while others are in flight (their real cost is usually far
    below their worst case); once nothing is in flight and it still does not fit, the cap is reached.
    """

    def __init__(self, limit: float, book: PriceBook, traffic_types: list[str], *, spent: float = 0.0) -> None:
        self.limit = limit  # math.inf: no cap, only the meter that the progress line reads
        self.spent = spent  # the saved rows' cost at the start, then every answer's real cost
        self.reserved = 0.0
        self.unpriced = 0  # answers whose traffic type has no price
        self._start = spent
        self._book = book
        self.currency = book.currency
        worst = [book.get(t) for t in traffic_types]
        self._worst = [p for p in worst if p is not None]  # unpriced Provisioned Throughput: nothing more to pay
        self._settled = asyncio.Event()

    def worst_case(self, body: dict[str, Any]) -> float:
        """The most this request can cost at the price of any traffic type that may serve it."""
        prompt, answer = tokens.prompt_bound(body), tokens.answer_bound(body)
        return max((p.worst(prompt, answer) for p in self._worst), default=0.0)

    async def reserve(self, body: dict[str, Any]) -> float:
        """Reserve the request's worst case, waiting for in-flight requests to settle; CapReached when it cannot fit."""
        if self.limit == math.inf:
            return 0.0
        amount = self.worst_case(body)
        while self.spent + self.reserved + amount > self.limit:
            if self.reserved <= 0:
                raise CapReached(
                    f"limits.max_cost reached: {self.spent:.4f} of {self.limit:g} {self._book.currency} spent, and the "
                    f"next request may cost up to {amount:.4f}; to go on, run again with "
                    f"--set limits.max_cost={_raised(self.limit, self.spent + amount)}"
                )
            self._settled.clear()
            await self._settled.wait()
        self.reserved += amount
        return amount

    def settle(self, amount: float, usage: dict[str, Any] | None) -> None:
        """Replace a reservation by the answer's real cost (none without an answer; the worst case if unpriced)."""
        self.reserved -= amount
        if usage is not None:
            cost = self._book.cost(usage)
            self.unpriced += cost is None
            self.spent += amount if cost is None else cost
        self._settled.set()

    @property
    def run_spent(self) -> float:
        """What this run's answers cost (the saved rows' cost at the start left out)."""
        return self.spent - self._start


def _raised(limit: float, needed: float) -> str:
    """A larger cap to suggest: the next request's worst case on top, plus half the old cap, rounded up."""
    return f"{math.ceil(max(needed, limit * 1.5) * 100) / 100:g}"


@dataclass(slots=True)
class Ticket:
    """What one attempt holds from `start` until it ends: its places in the budgets and its reserved cost."""

    tokens: Reservation | None = None
    request: Reservation | None = None
    cost: float = 0.0


class Limits:
    """Every limit a request passes through: concurrency, requests/min, tokens/min (or the adaptive pace), cost.

    In the spirit of aiometer's meter: `start(body)` waits until the request may be sent (sizing it
    from its own body), and exactly one of `finished`, `refused` or `failed` ends it.
    """

    def __init__(self, spec: LimitsSpec, *, share: float = 1.0, cost: CostCap | None = None) -> None:
        rpm = spec.requests_per_minute * share if spec.requests_per_minute else None
        tpm = spec.tokens_per_minute * share if spec.tokens_per_minute else None
        self.concurrency = spec.concurrency
        self.requests = window_safe_limiter(rpm, burst_seconds=0.5) if rpm else None
        self.tokens = BudgetWindow(tpm) if tpm else None
        self.pace = AdaptivePace() if not rpm and not tpm else None
        self.cost = cost
        self._slots = asyncio.Semaphore(spec.concurrency)

    async def start(self, body: dict[str, Any]) -> Ticket:
        """Wait until `body` may be sent: a free slot, then room in every budget; raises CapReached."""
        await self._slots.acquire()
        ticket = Ticket()
        try:
            if self.cost is not None:
                ticket.cost = await self.cost.reserve(body)
            if self.requests is not None:
                await self.requests.acquire()
            if self.pace is not None:
                ticket.request = await self.pace.acquire()
            if self.tokens is not None:
                ticket.tokens = await self.tokens.reserve(tokens.budget_estimate(body))
        except BaseException:
            self.failed(ticket)
            raise
        return ticket

    def finished(self, ticket: Ticket, usage: dict[str, Any]) -> None:
        """An answer: settle tokens and cost to its usage and tell the adaptive pace (slow answers are no overload)."""
        if self.tokens is not None and ticket.tokens is not None:
            self.tokens.settle(ticket.tokens, int(usage.get("total_tokens") or 0))
        if self.pace is not None and ticket.request is not None:
            self.pace.on_success(ticket.request)
        self._end(ticket, usage)

    def refused(self, ticket: Ticket) -> None:
        """A 429: the endpoint counted neither the request nor its tokens, and billed nothing; tell the pace."""
        if self.tokens is not None and ticket.tokens is not None:
            self.tokens.settle(ticket.tokens, 0)
        if self.pace is not None and ticket.request is not None:
            self.pace.on_rate_limited(ticket.request)
        self._end(ticket, None)

    def failed(self, ticket: Ticket) -> None:
        """Any other failure without an answer: the tokens stay counted (the endpoint may have), no cost is billed."""
        self._end(ticket, None)

    def _end(self, ticket: Ticket, usage: dict[str, Any] | None) -> None:
        """Settle the cost and free the slot."""
        if self.cost is not None:
            self.cost.settle(ticket.cost, usage)
            ticket.cost = 0.0
        self._slots.release()
