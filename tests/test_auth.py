"""Google tokens: real google-auth flows against the simulator, single-flight refresh, outages waited out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import google.oauth2.credentials
import pytest
from google.oauth2 import service_account

from batchrun.auth import GoogleTokens
from batchrun.credentials import CLOUD_PLATFORM
from batchrun.errors import CredentialsError, StoppedError
from batchrun.simulator import make_service_account_info
from tests.conftest import Sim


def service_account_tokens(sim: Sim) -> GoogleTokens:
    info = make_service_account_info(f"{sim.url}/token")
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
    return GoogleTokens(credentials)


def test_many_callers_share_one_refresh(sim: Sim) -> None:
    """A hundred concurrent first calls cause one token request, and all get the same token."""

    async def main() -> set[str]:
        tokens = service_account_tokens(sim)
        return set(await asyncio.gather(*(tokens.token() for _ in range(100))))

    assert len(asyncio.run(main())) == 1
    assert sim.stats()["token_requests"] == 1


def test_rejected_token_is_replaced_once(sim: Sim) -> None:
    """After a 401 the token is dropped; many callers then share one new refresh."""

    async def main() -> tuple[str, set[str]]:
        tokens = service_account_tokens(sim)
        first = await tokens.token()
        for _ in range(50):
            tokens.rejected(first)
        return first, set(await asyncio.gather(*(tokens.token() for _ in range(50))))

    first, after = asyncio.run(main())
    assert len(after) == 1 and first not in after
    assert sim.stats()["token_requests"] == 2


def test_short_lived_token_is_refreshed_ahead_without_waiting(sim: Sim) -> None:
    """A token due for refresh is still handed out while one background refresh replaces it."""
    sim.configure(token_ttl_s=4)
    now = [0.0]

    async def main() -> tuple[str, str, str]:
        info = make_service_account_info(f"{sim.url}/token")
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
        tokens = GoogleTokens(credentials, clock=lambda: now[0])
        first = await tokens.token()
        now[0] = 3.2  # past the early-refresh point (75% of 4 s), before expiry
        during = await tokens.token()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if tokens.refreshes == 2:
                break
        return first, during, await tokens.token()

    first, during, after = asyncio.run(main())
    assert during == first, "a valid token is handed out while the refresh runs"
    assert after != first
    assert sim.stats()["token_requests"] == 2


def test_token_endpoint_outage_is_waited_out(sim: Sim) -> None:
    """While the token endpoint answers 503 the caller waits; it gets a token once it recovers."""
    sim.configure(token_fail_for_s=1.5)

    async def main() -> str:
        return await service_account_tokens(sim).token()

    assert asyncio.run(main()).startswith("ya29.")
    assert sim.stats()["token_requests"] >= 2


def test_refused_credentials_stop_with_a_clear_message(sim: Sim) -> None:
    """A key the token endpoint refuses (wrong signature) stops the run with a message and no secret in it."""
    info = make_service_account_info(f"{sim.url}/token")
    info["private_key"] = make_service_account_info(f"{sim.url}/token")["private_key"]  # not the key of this id
    credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]

    async def main() -> str:
        return await GoogleTokens(credentials).token()

    with pytest.raises(StoppedError, match="Google auth refused the credentials") as err:
        asyncio.run(main())
    assert "PRIVATE KEY" not in err.value.message and info["private_key"][40:80] not in err.value.message


def test_user_credentials_refresh_token_flow(sim: Sim, tmp_path: Path) -> None:
    """gcloud-style user credentials (authorized_user) refresh through the token endpoint."""
    credentials = google.oauth2.credentials.Credentials(  # type: ignore[no-untyped-call]
        token=None,
        refresh_token="1//refresh-token-for-tests",
        client_id="client.apps.googleusercontent.com",
        client_secret="client-secret",
        token_uri=f"{sim.url}/token",
        scopes=[CLOUD_PLATFORM],
    )

    async def main() -> str:
        return await GoogleTokens(credentials).token()

    assert asyncio.run(main()).startswith("ya29.")


def test_adc_from_key_file(sim: Sim, key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS names a key file: Application Default Credentials use it."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))

    async def main() -> str:
        return await GoogleTokens.from_environment().token()

    assert asyncio.run(main()).startswith("ya29.")
    assert json.loads(key_file.read_text())["token_uri"].startswith(sim.url)


def test_a_missing_or_damaged_key_file_is_named_with_the_fix(
    key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key file that is not there, or not a key, is named in the message, with what to do about it."""
    missing = tmp_path / "nowhere.json"
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(missing))
    with pytest.raises(CredentialsError, match=f"names {missing}, which does not exist"):
        GoogleTokens.from_environment()
    info = json.loads(key_file.read_text())
    info["private_key"] = info["private_key"].replace("A", "B")
    key_file.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    with pytest.raises(CredentialsError) as stopped:
        GoogleTokens.from_environment()
    message = str(stopped.value)
    assert f"credentials file {key_file}" in message and "create a new key" in message
    assert info["private_key"].splitlines()[1] not in message
