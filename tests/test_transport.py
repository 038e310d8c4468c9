"""Both transports against the simulator over HTTP: the same answers, and every failure in the same class."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from typing import Any

import psutil
import pytest

from batchrun.errors import (
    AuthExpiredError,
    FinalError,
    RateLimitedError,
    RequestError,
    RetryableError,
)
from batchrun.transport import Transport
from tests.conftest import Sim

BODY = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "Say hi"}]}


def send(sim: Sim, direct: bool, body: dict[str, Any] = BODY, *, token: str = "key", timeout_s: float = 10) -> Any:
    """One request through a fresh transport to the simulator's OpenAI-style path."""

    async def main() -> Any:
        transport = Transport(f"{sim.url}/v1", timeout_s=timeout_s, concurrency=4, direct=direct)
        try:
            if body.get("stream"):
                return (await transport.stream(body, token, time.perf_counter()))[0]
            return await transport.send(body, token)
        finally:
            await transport.close()

    return asyncio.run(main())


def failure(sim: Sim, direct: bool, **kwargs: Any) -> RequestError:
    """The RequestError one request raises."""
    with pytest.raises(RequestError) as caught:
        send(sim, direct, **kwargs)
    return caught.value


both = pytest.mark.parametrize("direct", [True, False], ids=["direct", "openai-sdk"])


@both
def test_an_answer_is_the_response_object(sim: Sim, direct: bool) -> None:
    """A 200 comes back as the parsed chat.completion, the same through either transport."""
    response = send(sim, direct)
    assert response["object"] == "chat.completion"
    assert response["choices"][0]["message"]["content"]
    assert response["usage"]["extra_properties"]["google"]["traffic_type"] == "ON_DEMAND"
    assert sim.requests()[-1]["body"] == BODY


@both
def test_a_stream_is_assembled(sim: Sim, direct: bool) -> None:
    """A streamed request goes through the SDK and comes back shaped like a non-streamed answer."""
    response = send(sim, direct, {**BODY, "stream": True})
    assert response["choices"][0]["message"]["content"]
    assert response["usage"]["total_tokens"] > 0


@both
def test_429_carries_the_retry_hint(sim: Sim, direct: bool) -> None:
    """A 429 is RateLimitedError with Retry-After / RetryInfo as retry_after and Google's message."""
    sim.configure(rate_429=1.0, retry_after_s=7)
    error = failure(sim, direct)
    assert isinstance(error, RateLimitedError)
    assert error.http_status == 429
    assert error.retry_after == 7
    assert "Resource exhausted" in error.message


@both
@pytest.mark.parametrize("status", [500, 503])
def test_5xx_is_retryable(sim: Sim, direct: bool, status: int) -> None:
    """500 and 503 are transient."""
    sim.configure(**{f"rate_{status}": 1.0})
    error = failure(sim, direct)
    assert type(error) is RetryableError
    assert error.http_status == status


@both
def test_400_is_final_with_the_server_message(sim: Sim, direct: bool) -> None:
    """A refused request is final and keeps what the server said."""
    error = failure(sim, direct, body={"messages": BODY["messages"]})
    assert isinstance(error, FinalError)
    assert error.http_status == 400
    assert "model is required" in error.message


@both
def test_401_is_auth_expired(sim: Sim, direct: bool) -> None:
    """A refused credential is AuthExpiredError, so the client refreshes and retries (Google) or stops."""
    sim.configure(api_key="the-right-key")
    error = failure(sim, direct, token="a-wrong-key")
    assert isinstance(error, AuthExpiredError)
    assert error.http_status == 401
    assert "a-wrong-key" not in error.message


@both
@pytest.mark.parametrize(("fault", "words"), [("rate_reset", "connection"), ("rate_truncated", "not JSON")])
def test_dropped_and_cut_answers_are_retryable(sim: Sim, direct: bool, fault: str, words: str) -> None:
    """A reset connection and a cut body are transient (the SDK's aiohttp layer calls a reset a timeout)."""
    sim.configure(**{fault: 1.0})
    error = failure(sim, direct)
    assert type(error) is RetryableError
    assert words in error.message or (not direct and fault == "rate_reset" and "timed out" in error.message)


@both
def test_a_hang_times_out_as_retryable(sim: Sim, direct: bool) -> None:
    """A server that never answers is a timeout after retry.timeout_s, and transient."""
    sim.configure(rate_hang=1.0)
    error = failure(sim, direct, timeout_s=0.3)
    assert type(error) is RetryableError
    assert "timed out" in error.message


def test_after_wind_down_each_connection_closes_with_its_answer(sim: Sim) -> None:
    """Connections are kept alive while rows remain; once none do, each closes as its answer is read,
    so the pool's end does not close thousands of them at once."""
    port = urllib.parse.urlsplit(sim.url).port

    def open_to_simulator() -> int:
        return sum(1 for c in psutil.Process().net_connections("tcp")
                   if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED)

    async def main() -> tuple[int, int]:
        transport = Transport(f"{sim.url}/v1", timeout_s=10, concurrency=4)
        try:
            await transport.send(BODY, "key")
            kept = open_to_simulator()
            transport.wind_down()
            await transport.send(BODY, "key")
            await asyncio.sleep(0.1)  # the socket closes on the loop's next turn
            return kept, open_to_simulator()
        finally:
            await transport.close()

    assert asyncio.run(main()) == (1, 0)
