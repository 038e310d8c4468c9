"""Both transports against the simulator over HTTP: the same answers, and every failure in the same class."""

from __future__ import annotations

import asyncio
import base64
import time
import traceback
import urllib.parse
from typing import Any

import psutil
import pytest

from batchrun.errors import (
    AuthExpiredError,
    FinalError,
    MalformedResponseError,
    RateLimitedError,
    RequestError,
    RetryableError,
    StreamCutError,
)
from batchrun.redact import redact
from batchrun.redact import register as redact_register
from batchrun.transport import DirectTransport, open_transport
from tests.conftest import Sim

BODY = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "Say hi"}]}


def send(sim: Sim, direct: bool, body: dict[str, Any] = BODY, *, token: str = "key", timeout_s: float = 10) -> Any:
    """One request through a fresh transport to the simulator's OpenAI-style path."""

    async def main() -> Any:
        transport = open_transport(f"{sim.url}/v1", timeout_s=timeout_s, concurrency=4, direct=direct)
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
    assert type(error) is (MalformedResponseError if fault == "rate_truncated" else RetryableError)
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
        return sum(
            1
            for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )

    async def main() -> tuple[int, int]:
        transport = DirectTransport(f"{sim.url}/v1", timeout_s=10, connections=4)
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


STREAM = {**BODY, "stream": True}


@both
def test_a_stream_without_its_finish_chunk_is_cut(sim: Sim, direct: bool) -> None:
    """A stream that ends before its finish chunk (no finish_reason, no [DONE]) is StreamCutError, retryable."""
    sim.configure(broken_answer="stream_cut", rate_broken=1.0)
    error = failure(sim, direct, body=STREAM)
    assert isinstance(error, StreamCutError) and isinstance(error, RetryableError)
    assert error.error_type == "stream_cut"


@both
@pytest.mark.parametrize("shape", ["stream_error", "stream_error_list"])
@pytest.mark.parametrize(
    ("status", "kind"), [(500, RetryableError), (503, RetryableError), (429, RateLimitedError), (400, FinalError)]
)
def test_an_error_event_in_a_stream_is_classed_like_its_status(
    sim: Sim, direct: bool, shape: str, status: int, kind: type[RequestError]
) -> None:
    """`data: {"error": ...}` (object or Google's list form) mid-stream is translated like that HTTP status."""
    sim.configure(broken_answer=shape, rate_broken=1.0, broken_status=status)
    error = failure(sim, direct, body=STREAM)
    assert type(error) is kind and error.http_status == status
    assert "HTTP" in error.message and ("INTERNAL" in error.message or status != 500)
    assert error.__cause__ is not None or shape == "stream_error_list"  # the SDK's APIError is kept


@both
def test_a_plain_json_reply_to_a_stream_is_read_as_the_answer(sim: Sim, direct: bool) -> None:
    """A 200 with a JSON body to `stream: true` is parsed as the completion it is, not an empty stream."""
    sim.configure(broken_answer="json_for_stream", rate_broken=1.0)
    response = send(sim, direct, STREAM)
    assert response["object"] == "chat.completion" and response["choices"][0]["message"]["content"]


@both
def test_streamed_media_pieces_are_joined(sim: Sim, direct: bool) -> None:
    """`delta.audio.data` split over chunks (mime_type in the first) joins into the bytes a plain request gets."""
    body = {**BODY, "modalities": ["image"]}
    whole = send(sim, direct, body)["choices"][0]["message"]
    streamed = send(sim, direct, {**body, "stream": True})["choices"][0]["message"]
    assert streamed["audio"] == whole["audio"] and streamed["extra_content"] == whole["extra_content"]
    assert base64.b64decode(streamed["audio"]["data"]).startswith(b"\x89PNG")


def test_a_translated_error_keeps_its_cause_and_shows_no_secret(sim: Sim) -> None:
    """The SDK's exception stays as `__cause__` (a bug report shows where it came from), while the message
    and the chain as the CLI prints it (redacted) never show the key the server echoed back."""
    key = "wrong-key-" + "q7" * 10
    redact_register(key)
    sim.configure(api_key="the-right-key", echo_headers=True)
    error = failure(sim, False, token=key)
    assert type(error.__cause__).__name__ == "AuthenticationError" and key in str(error.__cause__)
    printed = redact("".join(traceback.format_exception(error)))
    assert "AuthenticationError" in printed and key not in printed and key not in error.message
