"""HTTP for one attempt: a direct aiohttp POST on the hot path, the openai SDK for streams and as the fallback.

The SDK costs about 2 ms of CPU per request on this project's benchmark machine (bench/README.md), ten
times a plain aiohttp POST, which would make batchrun the bottleneck at a few hundred requests a
second. So `endpoint.transport: direct` (the default) posts non-streamed requests itself, while
streams, and every request under `transport: openai`, go through the SDK (imported only then).
`DirectTransport` and `SdkTransport` are the two answers to the `Transport` interface. Both raise only
batchrun's RequestErrors: this module is the one boundary where aiohttp's and openai's exceptions,
HTTP error statuses and a stream's error events are translated (the original kept as `__cause__`;
messages are redacted here, tracebacks where they are printed). Whether a 200's JSON is a whole answer
is for `results` to say.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import yarl
from multidict import CIMultiDict

from batchrun import __version__
from batchrun.errors import (
    AuthExpiredError,
    FinalError,
    MalformedResponseError,
    RateLimitedError,
    RequestError,
    RetryableError,
    error_of,
    server_message,
)
from batchrun.redact import redact

if TYPE_CHECKING:
    import openai

_DELAY = re.compile(r"^\s*([0-9.]+)\s*s?\s*$")
_ERROR_TEXT_CHARS = 300
_DROPPED = ("disconnect", "reset", "refused", "closed", "broken pipe")
# What an attempt may raise besides the SDK's own errors: a timeout, aiohttp's failures, and the SDK's JSON
# parse of a stream event. `translate` maps exactly these (and openai.APIError); anything else is a bug.
_NETWORK_ERRORS = (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError)
_RPC_STATUS = {  # google.rpc.Code names an error event may carry instead of an HTTP code
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class Transport(Protocol):
    """What the client needs of a transport: one attempt, plain or streamed, and the pool's end."""

    async def send(self, body: dict[str, Any], token: str) -> object:
        """One non-streamed request: the reply's JSON, not yet checked for being a whole answer."""

    async def stream(self, body: dict[str, Any], token: str, started: float) -> tuple[object, float]:
        """A streamed request, assembled into the shape of a non-streamed answer, and its time to first token."""

    async def close(self) -> None:
        """Close every connection."""

    def wind_down(self) -> None:
        """No rows are left to send: close each connection as its answer arrives."""


def open_transport(
    base_url: str, *, timeout_s: float, concurrency: int, direct: bool, headers: Mapping[str, str] | None = None
) -> Transport:
    """The transport `endpoint.transport` names: `direct` (aiohttp, the SDK for streams) or `openai`;
    `headers` go on every request."""
    kind = DirectTransport if direct else SdkTransport
    return kind(base_url, timeout_s=timeout_s, connections=concurrency + 8, headers=headers)


class SdkTransport:
    """Every request through the openai SDK, imported and built on first use (its import alone costs
    half a second of CPU)."""

    def __init__(
        self, base_url: str, *, timeout_s: float, connections: int, headers: Mapping[str, str] | None = None
    ) -> None:
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._connections = connections
        self._extra_headers = dict(headers or {})
        self._client: openai.AsyncOpenAI | None = None
        self._closing: dict[str, str] = {}

    async def close(self) -> None:
        """Close every connection."""
        if self._client is not None:
            await self._client.close()

    def wind_down(self) -> None:
        """Ask for `Connection: close` from now on, as DirectTransport does."""
        self._closing = {"Connection": "close"}

    async def send(self, body: dict[str, Any], token: str) -> object:
        """One non-streamed request."""
        import openai

        try:
            raw = await self._sdk().post("/chat/completions", cast_to=bytes, body=body, options=self._options(token))
        except (*_NETWORK_ERRORS, openai.APIError) as exc:
            raise translate(exc) from exc
        return decode(raw)

    async def stream(self, body: dict[str, Any], token: str, started: float) -> tuple[object, float]:
        """A streamed request; a server that answers it with a plain JSON body gets that body parsed."""
        import openai

        from batchrun.results import StreamAssembler

        assembler = StreamAssembler()
        ttft: float | None = None
        try:
            stream = await self._sdk().post(
                "/chat/completions",
                cast_to=object,
                body=body,
                options=self._options(token, events=True),
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
            if "text/event-stream" not in stream.response.headers.get("content-type", ""):
                raw = await stream.response.aread()
                return not_a_stream(raw, stream.response.headers.get("content-type")), (
                    time.perf_counter() - started
                ) * 1000
            async for item in stream:
                if ttft is None:
                    ttft = (time.perf_counter() - started) * 1000
                # synthesize_event_and_data: each item is {"event", "data"}, so an `event: error` is seen
                event, chunk = (item.get("event"), item.get("data")) if isinstance(item, dict) else (None, item)
                if event == "error":  # its data may be {"error": {...}} or the error object itself
                    raise event_error(chunk if error_of(chunk) else {"error": chunk})
                if not isinstance(chunk, dict):
                    raise event_error(chunk)
                assembler.add(chunk)
        except (*_NETWORK_ERRORS, openai.APIError) as exc:
            raise translate(exc) from exc
        return assembler.result(), ttft if ttft is not None else 0.0

    def _options(self, token: str, *, events: bool = False) -> Any:
        """The per-request headers: this token, and `Connection: close` once winding down; with `events`,
        a stream yields each event's name with its data."""
        options = {"headers": {"Authorization": f"Bearer {token}", **self._closing}}
        return {**options, "synthesize_event_and_data": True} if events else options

    def _sdk(self) -> openai.AsyncOpenAI:
        """The SDK client, built on first use."""
        if self._client is None:
            import httpx2
            import openai

            self._client = _sdk_client_class()(
                base_url=self._base_url,
                api_key="set-per-request",
                default_headers=self._extra_headers,
                max_retries=0,
                timeout=self._timeout_s,
                http_client=openai.DefaultAioHttpClient(
                    limits=httpx2.Limits(
                        max_connections=self._connections, max_keepalive_connections=self._connections
                    ),
                ),
            )
        return self._client


def _sdk_client_class() -> type[openai.AsyncOpenAI]:
    """AsyncOpenAI with an event-stream decoder that follows the SSE spec where the SDK's does not: an event
    without `data:` lines (a lone `retry:` or `id:`, or an extra blank line after an `id:`) is not
    dispatched, where the SDK yields it with empty data and then fails to parse it as JSON."""
    import openai
    from openai._streaming import ServerSentEvent, SSEDecoder

    class Decoder(SSEDecoder):
        def decode(self, line: str) -> ServerSentEvent | None:
            if not line and not self._data:
                self._event, self._retry = None, None
                return None
            return super().decode(line)

    class Client(openai.AsyncOpenAI):
        def _make_sse_decoder(self) -> SSEDecoder:
            return Decoder()

    return Client


class DirectTransport:
    """Non-streamed requests as plain aiohttp POSTs (the hot path); streams through an SdkTransport."""

    def __init__(
        self, base_url: str, *, timeout_s: float, connections: int, headers: Mapping[str, str] | None = None
    ) -> None:
        self._timeout_s = timeout_s
        self._connections = connections
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._proxy = _env_proxy(self._url)
        self._target = yarl.URL(self._url)  # parsed once, not per request
        self._headers = {
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": f"batchrun/{__version__} aiohttp/{aiohttp.__version__}",
            **(headers or {}),
        }
        self._session: aiohttp.ClientSession | None = None
        self._streams = SdkTransport(base_url, timeout_s=timeout_s, connections=connections, headers=headers)
        self._auth: tuple[str, CIMultiDict[str]] = ("", CIMultiDict())

    async def close(self) -> None:
        """Close every connection."""
        if self._session is not None:
            await self._session.close()
        await self._streams.close()

    def wind_down(self) -> None:
        """Ask for `Connection: close` from now on, so each connection closes with its answer instead of
        all 2,000 at once in `close`, which stalls the event loop for tens of milliseconds. Every worker
        calls it as it finishes; only the first rebuilds the headers."""
        if self._headers.get("Connection") != "close":
            self._headers["Connection"] = "close"
            self._auth = ("", CIMultiDict())
            self._streams.wind_down()

    async def send(self, body: dict[str, Any], token: str) -> object:
        """One non-streamed request."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            session, headers = self._open(), self._headers_for(token)
            async with session.post(self._target, data=payload, headers=headers, proxy=self._proxy) as response:
                raw = await response.read()
                status = response.status
        except _NETWORK_ERRORS as exc:
            raise translate(exc) from exc
        if status >= 400:
            raise status_error(status, response.headers, _body_of(raw), raw.decode(errors="replace"))
        return decode(raw)

    async def stream(self, body: dict[str, Any], token: str, started: float) -> tuple[object, float]:
        """A streamed request, through the SDK."""
        return await self._streams.stream(body, token, started)

    def _open(self) -> aiohttp.ClientSession:
        """The session, created inside the running loop on first use."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections)
            timeout = aiohttp.ClientTimeout(total=self._timeout_s)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
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


def decode(raw: bytes) -> object:
    """Parse a 200's body; a cut or non-JSON body is malformed (and retried). Its shape is checked in results."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedResponseError(f"response body is not JSON ({len(raw)} bytes, truncated?)") from exc


def not_a_stream(raw: bytes, content_type: str | None) -> object:
    """The answer in a reply to a streamed request that is not `text/event-stream`: a plain JSON answer
    (some servers ignore `stream`), or the `data:` lines of an event stream sent under another type."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    lines = raw.decode(errors="replace").splitlines()
    events = [line[5:].strip() for line in lines if line.startswith("data:")]
    if not events:
        raise MalformedResponseError(
            redact(
                f"a streamed request got a {content_type or 'untyped'} reply that is neither an event stream"
                f" nor JSON ({len(raw)} bytes: {raw[:80].decode(errors='replace')!r})"
            )
        )
    from batchrun.results import StreamAssembler

    assembler = StreamAssembler()
    for data in events:
        if data.startswith("[DONE]"):
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError as exc:
            raise MalformedResponseError(redact(f"a stream event is not JSON: {exc}")) from exc
        if not isinstance(chunk, dict) or error_of(chunk):
            raise event_error(chunk)
        assembler.add(chunk)
    return assembler.result()


def translate(
    exc: TimeoutError | aiohttp.ClientError | json.JSONDecodeError | UnicodeDecodeError | openai.APIError,
) -> RequestError:
    """Map the exceptions an attempt may raise (`_NETWORK_ERRORS` and the SDK's) onto batchrun's retry classes."""
    if isinstance(exc, TimeoutError):
        return RetryableError("request timed out (retry.timeout_s)")
    if isinstance(exc, aiohttp.ClientError):
        return RetryableError(redact(f"connection failed or dropped: {exc or type(exc).__name__}"))
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):  # the SDK parsing a stream's event
        return MalformedResponseError(redact(f"a stream event is not JSON: {exc}"))
    import openai  # only the SDK's errors are left, and raising them imported it

    if isinstance(exc, openai.APIStatusError):
        # a body that is not JSON arrives as its text, and exc.message is then "Error code: 400" alone
        text = exc.body if isinstance(exc.body, str) and exc.body else exc.message
        return status_error(exc.status_code, exc.response.headers, exc.body, text)
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError is a subclass
        cause = exc.__cause__ or exc.__context__
        detail = str(cause) if cause else ""
        # The SDK's aiohttp layer reports a dropped connection as a connect timeout: tell them apart.
        if isinstance(exc, openai.APITimeoutError) and not any(w in detail.lower() for w in _DROPPED):
            return RetryableError("request timed out (retry.timeout_s)")
        return RetryableError(redact(f"connection failed or dropped: {detail or type(cause).__name__}"))
    if isinstance(exc, openai.APIResponseValidationError):
        return MalformedResponseError(redact(f"malformed response: {exc}"))
    return event_error({"error": exc.body}, exc.message)  # how the SDK raises a stream's `data: {"error": ...}`


def event_error(event: object, text: str = "") -> RequestError:
    """The RequestError for an error event inside a 200 stream, classed as its own status would be;
    an event that is neither a chunk nor an error is malformed."""
    error = error_of(event)
    if error is None:
        return MalformedResponseError(f"a stream event is a JSON {type(event).__name__}, not a chunk")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else _RPC_STATUS.get(str(error.get("status")), 500)
    return status_error(status, {}, {"error": error}, text or "error event in the stream")


def status_error(status: int, headers: Mapping[str, str], body: object, text: str) -> RequestError:
    """The RequestError for an HTTP error status, keeping the server's message and its retry hint."""
    message = redact(f"HTTP {status}: {server_message(body) or text[:_ERROR_TEXT_CHARS]}")
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
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _retry_after(headers: Mapping[str, str], body: object) -> float | None:
    """Seconds to wait from a Retry-After header or Google's RetryInfo.retryDelay ("42s")."""
    header = headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:  # the other form RFC 9110 allows: an HTTP date
            return max(0.0, email.utils.parsedate_to_datetime(header).timestamp() - time.time())
        except (TypeError, ValueError, IndexError):
            pass
    error = error_of(body)
    details = error.get("details") if error else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None
