"""Limits, the one interface a request passes through, on a virtual clock: nothing sleeps."""

from __future__ import annotations

from typing import Any

import pytest

from batchrun.limits import Limits
from batchrun.spec import LimitsSpec
from tests.virtual_time import now, run


def sized(tokens: int) -> dict[str, Any]:
    """A request body that Limits sizes at `tokens` (no message text, an answer budget of `tokens`)."""
    return {"messages": [], "max_tokens": tokens}


def test_token_budget_refunds_a_rate_limited_request() -> None:
    """A 429 gives back the whole estimate: the endpoint did not count those tokens."""

    async def main() -> int:
        limits = Limits(LimitsSpec(tokens_per_minute=1_000))
        ticket = await limits.start(sized(800))
        limits.refused(ticket)
        assert limits.tokens is not None
        return limits.tokens.used(now())

    assert run(main) == 0


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
