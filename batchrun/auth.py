"""Access tokens for every request: Google credentials refreshed ahead of expiry and on 401, or a static key.

Nothing here is ever logged: every token and key is registered with `redact` the moment it is known.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import google.auth.exceptions

if TYPE_CHECKING:
    import requests

from batchrun import redact
from batchrun.credentials import google_credentials
from batchrun.errors import StoppedError

_EARLY_REFRESH_S = 225.0  # google-auth's own REFRESH_THRESHOLD: 3 min 45 s before expiry
_MAX_REFRESH_WAIT_S = 30.0


class TokenSource(Protocol):
    """What the client asks for the Authorization header of each attempt."""

    async def token(self) -> str:
        """A bearer token that is valid now."""
        ...

    def rejected(self, token: str) -> None:
        """The endpoint answered 401 to `token`: never hand it out again."""
        ...


class StaticKey:
    """An API key from the environment, for OpenAI-compatible servers."""

    def __init__(self, key: str) -> None:
        redact.register(key)
        self._key = key

    async def token(self) -> str:
        """The key itself; it does not expire."""
        return self._key

    def rejected(self, token: str) -> None:
        """A static key cannot be refreshed; the 401 becomes a final error."""


class GoogleTokens:
    """Google credentials with one refresh in flight at a time, ahead of expiry and again on 401.

    A token that is due for refresh but still valid is handed out while a background refresh runs,
    so the pool never stalls on the hourly refresh. Token-endpoint outages are waited out with
    backoff; only a refusal (bad key, revoked account) stops the run.
    """

    def __init__(self, credentials: Any, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._clock = clock
        import requests  # google-auth's HTTP transport (14 MB, 0.15 s): only runs that use Google tokens load it

        self._session: requests.Session = requests.Session()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0

    @classmethod
    def from_environment(cls) -> GoogleTokens:
        """Application Default Credentials with the cloud-platform scope (key file, gcloud, metadata server)."""
        return cls(google_credentials())

    async def token(self) -> str:
        """A valid token; starts a background refresh when due and waits only when none is valid."""
        now = self._clock()
        if self._token is not None and now < self._expires_at:
            if now >= self._refresh_at:
                self._start_refresh()
            return self._token
        await asyncio.shield(self._start_refresh())
        assert self._token is not None
        return self._token

    def rejected(self, token: str) -> None:
        """Forget a token the endpoint refused, so the next caller triggers one refresh."""
        if token == self._token:
            self._token = None
            self._expires_at = 0.0

    def _start_refresh(self) -> asyncio.Task[None]:
        """The refresh in flight, or a new one: never two at a time."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresh())
        return self._task

    async def _refresh(self) -> None:
        """Refresh in a thread (google-auth is blocking), retrying while the token endpoint is unavailable."""
        from google.auth.transport.requests import Request

        wait = 0.5
        while True:
            try:
                await asyncio.to_thread(self._credentials.refresh, Request(self._session))
                break
            except google.auth.exceptions.RefreshError as exc:
                if not exc.retryable and not _looks_transient(exc):
                    raise StoppedError(
                        f"Google auth refused the credentials: {redact.redact(str(exc))} "
                        "(check the service account key, its roles, and GOOGLE_APPLICATION_CREDENTIALS)"
                    ) from exc
            except google.auth.exceptions.TransportError:
                pass
            await asyncio.sleep(wait)
            wait = min(wait * 2, _MAX_REFRESH_WAIT_S)
        self._install(self._credentials.token, self._credentials.expiry)

    def _install(self, token: str, expiry: datetime.datetime | None) -> None:
        """Adopt a fresh token and schedule its early refresh from its real lifetime."""
        redact.register(token)
        now = self._clock()
        if expiry is None:
            lifetime = 3600.0
        else:
            utc_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
            lifetime = max(1.0, (expiry.replace(tzinfo=None) - utc_now).total_seconds())
        self._token = token
        self._expires_at = now + lifetime - min(5.0, lifetime * 0.1)
        self._refresh_at = now + lifetime - min(_EARLY_REFRESH_S, lifetime * 0.25)
        self.refreshes += 1


def _looks_transient(exc: google.auth.exceptions.RefreshError) -> bool:
    """google-auth marks few errors retryable; a 5xx or 429 from the token endpoint is transient too."""
    text = str(exc)
    return any(code in text for code in ("500", "502", "503", "504", "429", "Internal", "Unavailable"))
