"""One request and its retry policy, over real HTTP to the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.oauth2 import service_account

from batchrun.auth import GoogleTokens, StaticKey
from batchrun.client import ChatClient
from batchrun.credentials import CLOUD_PLATFORM
from batchrun.endpoints import Connection, vertex_url
from batchrun.errors import FinalError, RateLimitedError, RetryableError
from batchrun.limits import Limits
from batchrun.progress import Counters
from batchrun.results import ResultBuilder
from batchrun.simulator import make_service_account_info, vertex_base_url
from batchrun.spec import EndpointSpec, LimitsSpec, RetrySpec
from tests.conftest import Sim

BODY = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hello"}]}
CHECK = ResultBuilder(thought_marker=None, response_format=None).check


def complete(connection: Connection, attempts: int = 1, body: dict[str, Any] = BODY) -> Any:
    async def main() -> Any:
        client = ChatClient(
            connection, RetrySpec(max_attempts=attempts, timeout_s=5), Limits(LimitsSpec(concurrency=4)), Counters()
        )
        try:
            return await client.complete(body, CHECK)
        finally:
            await client.close()

    return asyncio.run(main())


def google(sim: Sim) -> Connection:
    info = make_service_account_info(f"{sim.url}/token")
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
    return Connection(vertex_base_url(sim.url), GoogleTokens(credentials), is_google=True)


def test_retry_after_and_retry_info_are_read(sim: Sim) -> None:
    """A 429 carries the server's wait (Retry-After header or RetryInfo.retryDelay) into the retry policy."""
    sim.configure(rate_429=1.0, retry_after_s=7)
    with pytest.raises(RateLimitedError) as err:
        complete(google(sim))
    assert err.value.retry_after == 7.0 and err.value.http_status == 429
    assert "RESOURCE_EXHAUSTED" in err.value.message and err.value.attempts == 1


def test_server_errors_are_retried_until_attempts_run_out(sim: Sim) -> None:
    """500s are retried (with backoff) and the last one is reported with the attempt count."""
    sim.configure(rate_500=1.0)
    with pytest.raises(RetryableError) as err:
        complete(google(sim), attempts=2)
    assert err.value.attempts == 2 and err.value.http_status == 500
    assert sim.stats()["by_status"]["500"] == 2


def test_bad_request_is_final_after_one_attempt(sim: Sim) -> None:
    """A 400 is not retried."""
    with pytest.raises(FinalError) as err:
        complete(google(sim), attempts=5, body={"messages": [{"role": "user", "content": "no model"}]})
    assert err.value.http_status == 400 and err.value.attempts == 1


def test_revoked_token_is_refreshed_and_the_request_succeeds(sim: Sim) -> None:
    """A 401 drops the token, a new one is fetched, and the same request goes through."""
    connection = google(sim)
    asyncio.run(connection.tokens.token())
    sim.configure(revoke_now=True)
    answer = complete(connection, attempts=3)
    assert answer.attempts == 2 and answer.reply.response["choices"][0]["message"]["content"]


def test_wrong_api_key_is_final_and_not_echoed(sim: Sim) -> None:
    """A static key refused with 401 is a final error whose message does not contain the key."""
    sim.configure(api_key="sk-right-key-abcdefghijklmnop")
    connection = Connection(f"{sim.url}/v1", StaticKey("sk-wrong-key-abcdefghijklmnop"), is_google=False)
    with pytest.raises(FinalError) as err:
        complete(connection, attempts=4)
    assert err.value.http_status == 401 and err.value.attempts == 1
    assert "sk-wrong-key" not in err.value.message


def test_dropped_connection_and_timeout_are_transient(sim: Sim) -> None:
    """A reset connection or an answer that never comes is a retryable failure."""
    sim.configure(rate_reset=1.0)
    with pytest.raises(RetryableError, match="connection"):
        complete(google(sim))
    sim.configure(rate_reset=0.0, rate_hang=1.0)

    async def main() -> None:
        client = ChatClient(
            google(sim), RetrySpec(max_attempts=1, timeout_s=0.5), Limits(LimitsSpec(concurrency=2)), Counters()
        )
        try:
            await client.complete(BODY, CHECK)
        finally:
            await client.close()

    with pytest.raises(RetryableError, match="timed out"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (
            {"project": "p"},
            "https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/endpoints/openapi",
        ),
        (
            {"project": "p", "location": "global", "api_version": "v1beta1"},
            "https://aiplatform.googleapis.com/v1beta1/projects/p/locations/global/endpoints/openapi",
        ),
        (
            {"project": "p", "location": "europe-west4", "endpoint_id": "123"},
            "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4/endpoints/123",
        ),
    ],
)
def test_vertex_urls(endpoint: dict[str, str], url: str) -> None:
    """Regional, global and self-deployed endpoints get Vertex's documented roots."""
    assert vertex_url(EndpointSpec(kind="vertex", **endpoint)) == url


def test_a_success_takes_one_attempt(sim: Sim) -> None:
    """The common case: one request, attempts = 1, no retry machinery."""
    answer = complete(google(sim), attempts=4)
    assert answer.attempts == 1
    assert sim.stats()["requests"] == 1


def test_a_429_is_retried_after_its_hint(sim: Sim) -> None:
    """A 429 storm shorter than the hint is waited out and the row sent again: both attempts recorded."""
    connection = google(sim)
    asyncio.run(connection.tokens.token())
    sim.configure(storm_for_s=0.2, retry_after_s=0.3)
    answer = complete(connection, attempts=4)
    assert answer.attempts == 2
    assert sim.stats()["by_status"] == {"429": 1, "200": 1}


def test_one_attempt_allowed_means_no_retry(sim: Sim) -> None:
    """max_attempts 1: a retryable failure is final at once."""
    sim.configure(rate_429=1.0, retry_after_s=0.01)
    with pytest.raises(RateLimitedError) as err:
        complete(google(sim), attempts=1)
    assert err.value.attempts == 1 and sim.stats()["requests"] == 1
