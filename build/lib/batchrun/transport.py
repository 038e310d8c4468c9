"""HTTP for one attempt: a direct aiohttp POST on the hot path, the openai SDK for streams and as the fallback.

The SDK costs about 2 ms of CPU per request on this project's benchmark machine (bench/README.md), ten
times a plain aiohttp POST, which would make batchrun the bottleneck at a few hundred requests a
second. So `endpoint.transport: direct` (the default) posts non-streamed requests itself, while
streams, and every request under `transport: openai`, go through the SDK (imported only then).
Both paths raise only batchrun's RequestErrors: this module is the one boundary where aiohttp's and
openai's exceptions are translated.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import yarl
from multidict import CIMultiDict

from batchrun import __version__
from batchrun.errors import AuthExpiredError, FinalError, RateLimitedError, RequestError, RetryableError
from batchrun.redact import redact

if TYPE_CHECKING:
    import openai

_DELAY = re.compile(r"^\s*([0-9.]+)\s*s?\s*$")
_ERROR_TEXT_CHARS = 300
_DROPPED = ("disconnect", "reset", "refused", "closed", "broken pipe")


class Transport:
    """Sends one Chat Completions attempt and returns the response as a dict."""

    def __init__(self, base_url: str, *, timeout_s: float, concurrency: int, direct: bool = True,
                 headers: Mapping[str, str] | None = None) -> None:
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._connections = concurrency + 8
        self._direct = direct
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._proxy = _env_proxy(self._url)
        self._target = yarl.URL(self._url)  # parsed once, not per request
        self._headers = {"Accept": "application/json", "Content-Type": "application/json",
                         "User-Agent": f"batchrun/{__version__} aiohttp/{aiohttp.__version__}", **(headers or {})}
        self._extra_headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._client: openai.AsyncOpenAI | None = None
        self._auth: tuple[str, CIMultiDict[str]] = ("", CIMultiDict())

    async def close(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()
        if self._client is not None:
            await self._client.close()

    def wind_down(self) -> None:
        """Ask for `Connection: close` from now on, so each connection closes with its answer instead of
        all 2,000 at once in `close`, which stalls the event loop for tens of milliseconds. Every worker
        calls it as it finishes; only the first rebuilds the headers."""
        if self._headers.get("Connection") != "close":
            self._headers["Connection"] = "close"
            self._auth = ("", CIMultiDict())

    async def send(self, body: dict[str, Any], token: str) -> dict[str, Any]:
        """One non-streamed request."""
        if not self._direct:
            try:
                raw = await self._sdk().post("/chat/completions", cast_to=bytes, body=body,
                                           options={"headers": {"Authorization": f"Bearer {token}"}})
            except Exception as exc:
                raise translate(exc) from None
            return decode(raw)
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            session, headers = self._open(), self._headers_for(token)
            async with session.post(self._target, data=payload, headers=headers, proxy=self._proxy) as response:
                raw = await response.read()
                status = response.status
                if status >= 400:
                    raise status_error(status, response.headers, _body_of(raw), raw.decode(errors="replace"))
        except Exception as exc:
            raise translate(exc) from None
        return decode(raw)

    async def stream(self, body: dict[str, Any], token: str, started: float) -> tuple[dict[str, Any], float]:
        """A streamed request, assembled into the shape of a non-streamed answer, and its time to first token."""
        from batchrun.results import StreamAssembler

        assembler = StreamAssembler()
        ttft: float | None = None
        try:
            import openai

            stream = await self._sdk().post(
                "/chat/completions",
                cast_to=object,
                body=body,
                options={"headers": {"Authorization": f"Bearer {token}"}},
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            async for chunk in stream:
                if ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
                if isinstance(chunk, dict):
                    assembler.add(chunk)
        except Exception as exc:
            raise translate(exc) from None
        return assembler.result(), ttft if ttft is not None else 0.0

    def _sdk(self) -> openai.AsyncOpenAI:
        """The SDK client, imported and built on first use (its import alone costs half a second of CPU)."""
        if self._client is None:
            import httpx2
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self._base_url,
                api_key="set-per-request",
                default_headers=self._extra_headers,
                max_retries=0,
                timeout=self._timeout_s,
                http_client=openai.DefaultAioHttpClient(
                    limits=httpx2.Limits(max_connections=self._connections,
                                         max_keepalive_connections=self._connections),
                ),
            )
        return self._client

    def _open(self) -> aiohttp.ClientSession:
        """The session, created inside the running loop on first use."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            timeout = aiohttp.ClientTimeout(total=self._timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                                  cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _headers_for(self, token: str) -> CIMultiDict[str]:
        """The headers with this token's Authorization, rebuilt only when the token changes."""
        if self._auth[0] != token:
            self._auth = (token, CIMultiDict({**self._headers, "Authorization": f"Bearer {token}"}))
        return self._auth[1]


def _env_proxy(url: str) -> str | None:
    """The proxy HTTPS_PROXY/HTTP_PROXY/NO_PROXY name for `url`, looked up once: aiohttp's trust_env
    does it per request, in a thread, which costs more CPU than the rest of the request."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return urllib.request.getproxies().get(parts.scheme)


def decode(raw: bytes) -> dict[str, Any]:
    """Parse a response body; a cut or non-JSON body is a transient failure."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RetryableError(f"response body is not JSON ({len(raw)} bytes, truncated?)") from None
    if not isinstance(data, dict):
        raise RetryableError(f"response body is a JSON {type(data).__name__}, not an object")
    return data


def translate(exc: BaseException) -> RequestError:
    """Map aiohttp's and openai's exceptions onto batchrun's retry classes; anything else is a bug."""
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return RetryableError("request timed out (retry.timeout_s)")
    if isinstance(exc, aiohttp.ClientError):
        return RetryableError(redact(f"connection failed or dropped: {exc or type(exc).__name__}"))
    if isinstance(exc, ValueError):
        return RetryableError(redact(f"malformed response: {exc}"))
    import openai  # only the SDK's errors are left, and raising them imported it

    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, exc.response.headers, exc.body, exc.message)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is a subclass
        cause = exc.__cause__ or exc.__context__
        detail = str(cause) if cause else ""
        # The SDK's aiohttp layer reports a dropped connection as a connect timeout: tell them apart.
        if isinstance(exc, openai.APITimeoutError) and not any(w in detail.lower() for w in _DROPPED):
            return RetryableError("request timed out (retry.timeout_s)")
        return RetryableError(redact(f"connection failed or dropped: {detail or type(cause).__name__}"))
    if isinstance(exc, openai.APIResponseValidationError):
        return RetryableError(redact(f"malformed response: {exc}"))
    raise exc


def status_error(status: int, headers: Mapping[str, str], body: object, text: str) -> RequestError:
    """The RequestError for an HTTP error status, keeping the server's message and its retry hint."""
    message = redact(f"HTTP {status}: {_server_message(body) or text[:_ERROR_TEXT_CHARS]}")
    retry_after = _retry_after(headers, body)
    if status == 429:
        return RateLimitedError(message, http_status=status, retry_after=retry_after)
    if status == 401:
        return AuthExpiredError(message, http_status=status)
    if status in (408, 409) or status >= 500:
        return RetryableError(message, http_status=status, retry_after=retry_after)
    return FinalError(message, http_status=status)


def _body_of(raw: bytes) -> object:
    """An error body as JSON when it is JSON, else None (the text is the message)."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


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


def _retry_after(headers: Mapping[str, str], body: object) -> float | None:
    """Seconds to wait from a Retry-After header or Google's RetryInfo.retryDelay ("42s")."""
    header = headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
