"""One request, retried by one tenacity policy, through the limits and the transport.

The SDK's own retries are off; `transport` translates every HTTP failure into batchrun's errors.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun.endpoints import Connection
from batchrun.errors import (
    AuthExpiredError,
    FinalError,
    InvalidOutputError,
    RateLimitedError,
    RequestError,
    RetryableError,
)
from batchrun.health import EndpointHealth
from batchrun.limits import Limits, Ticket
from batchrun.progress import Counters
from batchrun.results import Reply
from batchrun.spec import RetrySpec
from batchrun.transport import open_transport

if TYPE_CHECKING:
    from tenacity import RetryCallState

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0


@dataclass(slots=True)
class Answer:
    """A checked answer and what it cost to get it."""

    reply: Reply
    attempts: int
    latency_ms: float
    ttft_ms: float | None


Check = Callable[[object], Reply]  # results' check of one reply: its verdict (an error) decides the retry


class ChatClient:
    """Sends one Chat Completions body until it succeeds, fails for good, or runs out of attempts."""

    def __init__(
        self,
        connection: Connection,
        retry: RetrySpec,
        limits: Limits,
        counters: Counters,
        *,
        direct: bool = True,
        health: EndpointHealth | None = None,
    ) -> None:
        self._connection = connection
        self._health = health
        self._retry = retry
        self._limits = limits
        self._counters = counters
        self._transport = open_transport(
            connection.base_url,
            timeout_s=retry.timeout_s,
            concurrency=limits.concurrency,
            direct=direct,
            headers=connection.headers,
        )

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._transport.close()

    async def first_token(self) -> None:
        """Get a token before any worker needs one: 2,000 workers woken by the first at once stall the loop."""
        await self._connection.tokens.token()

    def wind_down(self) -> None:
        """No rows are left to send: close each connection as its last request ends."""
        self._transport.wind_down()

    async def complete(self, body: dict[str, Any], check: Check, sent: Callable[[], None] | None = None) -> Answer:
        """The answer for `body`, checked once per attempt by `check`; raises the last RequestError when
        retries are spent or it is final (a malformed or cut answer is retried like a 5xx). `sent` is called as
        each attempt's request goes out."""
        retryable: tuple[type[BaseException], ...] = (RetryableError, AuthExpiredError)
        if self._retry.on_invalid_output:
            retryable = (*retryable, InvalidOutputError)
        try:
            return await self._attempt(body, check, sent)
        except RequestError as exc:
            first = exc
            if not isinstance(exc, retryable) or self._retry.max_attempts == 1:
                exc.attempts = 1
                raise
        # Most rows succeed at once and never reach tenacity (a quarter of batchrun's own CPU per
        # request when every call built a policy). A failure enters the one policy as its first
        # attempt, so waits and the attempt count are exactly what they would have been. tenacity is imported
        # here, by the first failure, not before a run's first request.
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

        policy = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=_wait,
            retry=retry_if_exception_type(retryable),
            reraise=True,
        )
        attempts = 1
        try:
            async for attempt in policy:
                with attempt:
                    if attempt.retry_state.attempt_number == 1:
                        raise first
                    attempts += 1
                    answer = await self._attempt(body, check, sent)
                    answer.attempts = attempts
                    return answer
        except RequestError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _attempt(self, body: dict[str, Any], check: Check, sent: Callable[[], None] | None) -> Answer:
        """One HTTP request, timed, with its token and its place in the limits, and its answer checked."""
        ticket = await self._limits.start(body)
        try:
            token = await self._connection.tokens.token()
        except BaseException:
            self._limits.failed(ticket)
            raise
        self._counters.requests += 1
        if sent is not None:
            sent()
        started = time.perf_counter()
        try:
            if body.get("stream"):
                response, ttft = await self._transport.stream(body, token, started)
            else:
                response, ttft = await self._transport.send(body, token), None
        except RequestError as exc:
            self._note_failure(exc, token, ticket)
            if self._health is not None:
                self._health.attempt_failed(exc)
            raise
        except BaseException:
            self._limits.failed(ticket)
            raise
        if self._health is not None:
            self._health.attempt_succeeded()
        latency_ms = (time.perf_counter() - started) * 1000
        usage = response.get("usage") if isinstance(response, dict) else None
        self._limits.finished(ticket, usage if isinstance(usage, dict) else {})
        if self._limits.cost is not None:
            self._counters.cost = self._limits.cost.run_spent
        return Answer(reply=check(response), attempts=1, latency_ms=latency_ms, ttft_ms=ttft)

    def _note_failure(self, error: RequestError, token: str, ticket: Ticket) -> None:
        """Counters, the limits, and a 401'd token, before tenacity decides what follows."""
        if isinstance(error, RateLimitedError):
            self._counters.rate_limited += 1
            self._limits.refused(ticket)
        else:
            self._limits.failed(ticket)
        if isinstance(error, AuthExpiredError):
            if not self._connection.is_google:
                raise FinalError(error.message, http_status=401) from error
            self._connection.tokens.rejected(token)


def _wait(state: RetryCallState) -> float:
    """Exponential backoff with jitter, never sooner than Retry-After / RetryInfo; 401s and bad answers at once.

    The server's delay is a floor, not the whole wait: a 30 s 429 storm that keeps saying "retry in
    1 s" would otherwise spend all of a row's attempts within its first 10 seconds.
    """
    error = state.outcome.exception() if state.outcome else None
    if isinstance(error, AuthExpiredError | InvalidOutputError):
        return 0.0
    ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** (state.attempt_number - 1))
    backoff = random.uniform(ceiling / 2, ceiling)
    if isinstance(error, RequestError) and error.retry_after is not None:
        return max(backoff, error.retry_after + random.uniform(0, 0.25 * max(error.retry_after, 0.1)))
    return backoff
