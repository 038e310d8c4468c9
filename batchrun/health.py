"""Whether the endpoint works at all, judged from a run's first answers: a dead or refusing endpoint stops the run.

Two symptoms say the endpoint, not the row, is wrong, as long as the endpoint has not yet proved itself:

- connection-level failures (connection refused, a host name that does not resolve, a TLS handshake
  that fails) while nothing has ever answered: after UNREACHABLE_AFTER attempts the run stops, within
  seconds, naming the host, the port and the cause;
- 401/403/404 answers before any success (a wrong key, project, permission or model name): after
  REFUSED_AFTER such rows the run stops.

Rows that end with a symptom are held back, not saved, so the run after the fix sends them again;
they are saved as ordinary error rows once the endpoint has proved itself (any answer for the first
symptom, a success for the second). A run that ends with rows still held has not finished: it stops
(exit 3) and says why.
"""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from collections.abc import Callable

from batchrun.errors import RequestError
from batchrun.schema import ResultRow

UNREACHABLE_AFTER = 3
REFUSED_AFTER = 10
REFUSED_STATUSES = frozenset({401, 403, 404})
_CHAIN_DEPTH = 8


def unreachable_cause(error: BaseException) -> str | None:
    """Why no connection could be made, when that is what `error` (or what caused it) says; else None."""
    seen: BaseException | None = error
    for _ in range(_CHAIN_DEPTH):
        if seen is None:
            return None
        cause = _connection_cause(seen)
        if cause is not None:
            return cause
        seen = seen.__cause__ or seen.__context__
    return None


def _connection_cause(exc: BaseException) -> str | None:
    """The cause one exception names, if it is a failure to connect at all."""
    import aiohttp  # imported by the run already; not by validate, which imports this module

    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return "the host name does not resolve (DNS lookup failed); check endpoint.base_url"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"its TLS certificate was refused ({exc.certificate_error}); check endpoint.base_url"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | ssl.SSLError):
        reason = getattr(exc, "reason", None) or getattr(getattr(exc, "os_error", None), "reason", None)
        return (
            f"the TLS handshake failed ({reason or exc}), as when base_url says https:// to a server "
            "that speaks plain http://, or a proxy intercepts TLS"
        )
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ConnectionRefusedError)
    ):
        return "connection refused: nothing listens on that port (is the server running, and is the port right)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if type(exc).__name__ == "ConnectError":  # httpx's, under the openai SDK: its message names the cause
        return f"cannot connect ({exc})"
    return None


def host_and_port(base_url: str) -> str:
    """`host:port` of a base URL, the port filled in from the scheme when the URL has none."""
    parts = urllib.parse.urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


class EndpointHealth:
    """Watches each attempt and each finished row until the endpoint has proved itself; stops the run if it cannot."""

    def __init__(self, stop: Callable[[str], None]) -> None:
        self._where = "the endpoint"
        self._stop = stop
        self._answered = False
        self._succeeded = False
        self._unreachable = 0
        self._cause: str | None = None
        self._held: list[ResultRow] = []
        self.verdict: str | None = None  # why the run must stop, once it must

    def connected(self, base_url: str) -> None:
        """The endpoint's address, for the messages that name its host and port."""
        self._where = host_and_port(base_url)

    # --- attempts (from the client) ----------------------------------------------------------------

    def attempt_failed(self, error: RequestError) -> None:
        """One attempt failed: an HTTP answer proves the endpoint is there; a failure to connect counts."""
        if error.http_status is not None:
            self._answered = True
            return
        cause = None if self._answered else unreachable_cause(error)
        if cause is None:
            return
        self._unreachable += 1
        self._cause = cause
        if self._unreachable >= UNREACHABLE_AFTER and self.verdict is None:
            self._give_up(
                f"cannot reach the endpoint at {self._where}: {cause}; {self._unreachable} attempts, "
                "none answered. The rows tried are not saved: running again once the endpoint is "
                "reachable sends them"
            )

    def attempt_succeeded(self) -> None:
        """An answer with a result: the endpoint works, and every held row is an ordinary error."""
        self._answered = self._succeeded = True

    # --- rows (from the runner) ----------------------------------------------------------------------

    def admit(self, row: ResultRow, error: RequestError | None = None) -> list[ResultRow]:
        """The rows to save now: none while `row` is a symptom (it is held), else any held rows and `row`."""
        if self._is_symptom(row, error):
            if self.verdict is None:
                self._held.append(row)
                refused = sum(1 for held in self._held if held.get("http_status") in REFUSED_STATUSES)
                if refused >= REFUSED_AFTER:
                    self._give_up(
                        f"the endpoint refused the first {refused} requests ({row.get('error_message')}); "
                        "check the model name, project and permissions"
                    )
            return []
        return [*self.release(), row]

    def release(self) -> list[ResultRow]:
        """The held rows, once the endpoint has proved itself; none before."""
        if not self._held or self.verdict is not None:
            return []
        proved = self._succeeded or (
            self._answered and all(held.get("http_status") not in REFUSED_STATUSES for held in self._held)
        )
        if not proved:
            return []
        held, self._held = self._held, []
        return held

    def settle(self) -> None:
        """At the end of the pool: rows still held mean every one failed for the endpoint's reason, not its own."""
        if self._held and self.verdict is None:
            first = self._held[0]
            cause = (
                f"could not reach {self._where}: {self._cause}"
                if first.get("http_status") is None
                else f"{first.get('error_message')}; check the model name, project and permissions"
            )
            self.verdict = (
                f"every one of the {len(self._held)} rows sent failed for the same reason, the endpoint's: "
                f"{cause}. They are not saved; fix it and run again to send them"
            )

    @property
    def held(self) -> int:
        """Rows held back right now."""
        return len(self._held)

    def _is_symptom(self, row: ResultRow, error: RequestError | None) -> bool:
        """A row failed by what says the endpoint, not the row, is wrong, before the endpoint proved itself."""
        if row.get("status") != "error" or error is None:
            return False
        if error.http_status in REFUSED_STATUSES:
            return not self._succeeded
        return error.http_status is None and not self._answered and unreachable_cause(error) is not None

    def _give_up(self, reason: str) -> None:
        """Decide the run cannot go on, and stop it."""
        self.verdict = reason
        self._stop(reason)
