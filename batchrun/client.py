"""One request through the openai client, with one tenacity policy for every retry.

The SDK's own retries are off; its errors are translated into batchrun's at `_translate`, the one
boundary where third-party exceptions are caught.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from batchrun.endpoints import Connection
from batchrun.errors import (
    AuthExpiredError,
    FinalError,
    InvalidOutputError,
    RateLimitedError,
    RequestError,
    RetryableError,
)
from batchrun.limits import Limits
from batchrun.progress import Counters
from batchrun.redact import redact
from batchrun.spec import RetrySpec

_DELAY = re.compile(r"^\s*([0-9.]+)\s*s?\s*$")
BACKOFF_INITIAL_S = 1.0
_DROPPED = ("disconnect", "reset", "refused", "closed", "broken pipe")
BACKOFF_MAX_S = 60.0


@dataclass(slots=True)
class Answer:
    """A successful response and what it cost to get it."""

    response: dict[str, Any]
    attempts: int
    latency_ms: float
    ttft_ms: float | None


Check = Callable[[dict[str, Any]], None]


class ChatClient:
    """Sends one Chat Completions body until it succeeds, fails for good, or runs out of attempts."""

    def __init__(
        self,
        connection: Connection,
        retry: RetrySpec,
        limits: Limits,
        counters: Counters,
        *,
        concurrency: int,
    ) -> None:
        self._connection = connection
        self._retry = retry
        self._limits = limits
        self._counters = counters
        self._openai = openai.AsyncOpenAI(
            base_url=connection.base_url,
            api_key="set-per-request",
            max_retries=0,
            timeout=retry.timeout_s,
            http_client=openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency + 8),
            ),
        )

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._openai.close()

    async def complete(self, body: dict[str, Any], estimate: int, check: Check | None = None) -> Answer:
        """The answer for `body`; raises the last RequestError when retries are spent or it is final."""
        attempts = 0
        retryable: tuple[type[BaseException], ...] = (RetryableError, AuthExpiredError)
        if check is not None and self._retry.on_invalid_output:
            retryable = (*retryable, InvalidOutputError)
        policy = AsyncRetrying(
            stop=stop_after_attempt(self._retry.max_attempts),
            wait=_wait,
            retry=retry_if_exception_type(retryable),
            reraise=True,
        )
        try:
            async for attempt in policy:
                with attempt:
                    attempts += 1
                    answer = await self._attempt(body, estimate)
                    answer.attempts = attempts
                    if check is not None:
                        check(answer.response)
                    return answer
        except RequestError as exc:
            exc.attempts = attempts
            raise
        raise AssertionError("unreachable: tenacity either returns or reraises")

    @property
    def needs_estimate(self) -> bool:
        """Whether requests must be sized before sending (a tokens/min budget is set)."""
        return self._limits.tokens is not None

    async def _attempt(self, body: dict[str, Any], estimate: int) -> Answer:
        """One HTTP request, timed, with its token and its place in the limits."""
        await self._limits.acquire(estimate)
        token = await self._connection.tokens.token()
        self._counters.requests += 1
        started = time.perf_counter()
        try:
            if body.get("stream"):
                response, ttft = await self._stream(body, token, started)
            else:
                raw = await self._openai.post(
                    "/chat/completions",
                    cast_to=bytes,
                    body=body,
                    options={"headers": {"Authorization": f"Bearer {token}"}},
                )
                response, ttft = _decode(raw), None
        except RequestError as exc:
            self._note_failure(exc, token)
            raise
        except Exception as exc:
            error = _translate(exc)
            self._note_failure(error, token)
            raise error from None
        latency_ms = (time.perf_counter() - started) * 1000
        self._limits.succeeded()
        usage = response.get("usage") or {}
        await self._limits.settle(estimate, int(usage.get("total_tokens") or 0))
        return Answer(response=response, attempts=1, latency_ms=latency_ms, ttft_ms=ttft)

    async def _stream(self, body: dict[str, Any], token: str, started: float) -> tuple[dict[str, Any], float]:
        """Read a streamed answer and assemble it into the shape of a non-streamed one."""
        from batchrun.results import StreamAssembler

        stream = await self._openai.post(
            "/chat/completions",
            cast_to=object,
            body=body,
            options={"headers": {"Authorization": f"Bearer {token}"}},
            stream=True,
            stream_cls=openai.AsyncStream[object],
        )
        assembler = StreamAssembler()
        ttft: float | None = None
        async for chunk in stream:
            if ttft is None:
                ttft = (time.perf_counter() - started) * 1000
            if isinstance(chunk, dict):
                assembler.add(chunk)
        return assembler.result(), ttft if ttft is not None else 0.0

    def _note_failure(self, error: RequestError, token: str) -> None:
        """Counters, the adaptive pace, and a 401'd token, before tenacity decides what follows."""
        if isinstance(error, RateLimitedError):
            self._counters.rate_limited += 1
            self._limits.rate_limited()
        if isinstance(error, AuthExpiredError):
            if not self._connection.is_google:
                raise FinalError(error.message, http_status=401) from None
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


def _decode(raw: bytes) -> dict[str, Any]:
    """Parse a response body; a cut or non-JSON body is a transient failure."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RetryableError(f"response body is not JSON ({len(raw)} bytes, truncated?)") from None
    if not isinstance(data, dict):
        raise RetryableError(f"response body is a JSON {type(data).__name__}, not an object")
    return data


def _translate(exc: BaseException) -> RequestError:
    """Map openai's exceptions onto batchrun's retry classes, keeping the server's message."""
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        message = redact(f"HTTP {status}: {_server_message(exc.body) or exc.message}")
        retry_after = _retry_after(exc)
        if status == 429:
            return RateLimitedError(message, http_status=status, retry_after=retry_after)
        if status == 401:
            return AuthExpiredError(message, http_status=status)
        if status in (408, 409) or status >= 500:
            return RetryableError(message, http_status=status, retry_after=retry_after)
        return FinalError(message, http_status=status)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is a subclass
        cause = exc.__cause__ or exc.__context__
        detail = str(cause) if cause else ""
        # The aiohttp transport reports a dropped connection as a connect timeout: tell them apart.
        if isinstance(exc, openai.APITimeoutError) and not any(w in detail.lower() for w in _DROPPED):
            return RetryableError("request timed out (retry.timeout_s)")
        return RetryableError(redact(f"connection failed or dropped: {detail or type(cause).__name__}"))
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return RetryableError(redact(f"malformed response: {exc}"))
    raise exc


def _server_message(body: object) -> str | None:
    """The message in a Google list body `[{"error": {...}}]` or an OpenAI object body."""
    if isinstance(body, list) and body:
        body = body[0]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            status = error.get("status")
            return f"{status}: {error['message']}" if status else str(error["message"])
    return None


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds to wait from a Retry-After header or Google's RetryInfo.retryDelay ("42s")."""
    header = exc.response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    body: Any = exc.body
    if isinstance(body, list) and body:
        body = body[0]
    details = body.get("error", {}).get("details", []) if isinstance(body, dict) else []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None

