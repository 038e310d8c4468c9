"""Every limit a request passes, behind one interface (`Limits`): concurrency, requests/min and tokens/min
budgets, an adaptive pace that learns the endpoint's quota from 429s, and the cost cap.

A configured budget is a promise about every 60-second window, not an average:

- requests/min: an aiolimiter bucket whose burst plus one minute of leak equals the budget (budgets.py);
- tokens/min: a `BudgetWindow` ledger (budgets.py). A request reserves its estimated size before it is sent and
  settles to the real usage when the answer comes: unused tokens are refunded at once, an overrun
  is charged at the moment the request was sent, so the ledger always matches what the endpoint
  counted over the last minute;
- neither set: `AdaptivePace` (pace.py), which sends freely until the endpoint refuses, then keeps both a
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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun import tokens
from batchrun.budgets import BudgetWindow, Reservation, window_safe_limiter
from batchrun.pace import AdaptivePace
from batchrun.spec import LimitsSpec

if TYPE_CHECKING:
    from batchrun.prices import PriceBook


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
