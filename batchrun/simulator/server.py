"""A Vertex-compatible Chat Completions simulator: the sample job's endpoint and every test's server.

One aiohttp app serves what a batch job talks to on Google Cloud:

    POST /{v1|v1beta1}/projects/P/locations/L/endpoints/{openapi|ID}/chat/completions   Vertex; OAuth token
    POST /v1/chat/completions, /v1beta/openai/chat/completions                           API key (kind: openai)
    POST /token                                                  OAuth2 token endpoint (JWT bearer, refresh)
    GET  /, /computeMetadata/v1/...                              GCE metadata server (GCE_METADATA_HOST)
    GET  /_sim/stats, /_sim/counts, /_sim/requests               what happened, for tests and benchmarks
    GET  /_sim/arrivals                                          each chat request's arrival time and status
    POST /_sim/config, /_sim/reset                               change faults at runtime; zero the figures

A chat request meets, in order: auth, body size, storm, quota, random faults, then the answer
(`simulator.answers`, deterministic for the same body), broken into one of `config.BROKEN_SHAPES` on a
fraction `rate_broken` of answers when `broken_answer` names one. Errors have Google's list bodies. The knobs
are `config.SimulatorConfig`; the token endpoint's and metadata server's rules are in `oauth`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import secrets
import threading
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from aiohttp import web

from batchrun.simulator.answers import GeneratedAnswer, InvalidArgument, build_answer, read_conversation
from batchrun.simulator.config import FAULTS, SSE_SHAPES, STATUS, STREAM_SHAPES, SimulatorConfig
from batchrun.simulator.oauth import METADATA, PROJECT, SCOPES, SERVICE_ACCOUNT, TokenStore, grant_problem

QUOTA_WINDOW_S = 60.0  # quotas count over a sliding minute
HANG_S = 3600.0  # a "hang" outlives any client timeout
SHUTDOWN_S = 0.5  # stop() does not wait for hanging handlers
MAX_READ_BYTES = 1 << 30  # aiohttp's own cap; max_body_bytes is checked after reading, as Vertex answers 400
BAD_BASE64 = "not*base64*data!"
BAD_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other "
    "valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
API_KEY_REFUSED = (
    "API keys are not supported by this API. Expected OAuth2 access token or other authentication "
    "credentials that assert a principal. See https://cloud.google.com/docs/authentication"
)
BAD_API_KEY = "Incorrect API key provided."
STATUS_FAULTS = {"rate_429": 429, "rate_500": 500, "rate_503": 503}
PROVISIONED_EXCEEDED = "Too many requests. Exceeded the Provisioned Throughput."  # Google's 429 for a full reservation
PROXY_PAGE = (  # what a misrouted proxy or captive portal answers with a 200 in place of JSON
    "<!DOCTYPE html><html><head><title>Gateway</title></head><body><h1>Please wait</h1>"
    "<p>Your request is being processed.</p></body></html>"
)
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # built once: json.dumps builds one per call


@dataclass
class SimStats:
    """Counters a test or benchmark reads from /_sim/stats."""

    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    resets: int = 0
    hangs: int = 0
    truncated: int = 0
    not_json: int = 0
    broken: int = 0
    tokens_issued: int = 0
    token_requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0

    def enter(self) -> None:
        """Count a chat request arriving."""
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def answered(self, status: int) -> None:
        """Count a response by its status code."""
        key = str(status)
        self.by_status[key] = self.by_status.get(key, 0) + 1


class QuotaWindow:
    """Amounts admitted over the last minute, oldest first: one quota's memory."""

    def __init__(self) -> None:
        self._events: deque[tuple[float, int]] = deque()
        self.total = 0

    def fits(self, now: float, amount: int, limit: int) -> bool:
        """Whether `amount` more stays within `limit` over the minute ending now."""
        while self._events and self._events[0][0] <= now - QUOTA_WINDOW_S:
            self.total -= self._events.popleft()[1]
        return self.total + amount <= limit

    def add(self, now: float, amount: int) -> None:
        """Charge an admitted amount."""
        self._events.append((now, amount))
        self.total += amount


@dataclass(frozen=True)
class _Route:
    """How one chat path authenticates, names its model and shapes its errors."""

    vertex: bool  # OAuth tokens from this simulator, else the configured API key
    google_errors: bool  # Google's list bodies, else OpenAI's error object
    endpoint_id: str | None = None  # a self-deployed endpoint: its id is the default model


OPENAI_ROUTE = _Route(vertex=False, google_errors=False)
GEMINI_ROUTE = _Route(vertex=False, google_errors=True)


class Simulator:
    """The simulator server; `start` binds a port, `stop` closes it."""

    # per-run state, set by _reset_state
    _counts: Counter[str]
    _records: list[dict[str, Any]]
    _arrivals: array[float]  # clock() at arrival, one per chat request: 10 bytes each with its status
    _statuses: array[int]  # 0: the connection was dropped
    _rpm: QuotaWindow
    _tpm: QuotaWindow
    _provisioned: QuotaWindow
    _cached_prefixes: set[bytes]  # system prompts seen, for implicit caching
    _seed: int
    _rng: random.Random

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SimulatorConfig()
        self.clock = clock  # monotonic seconds; tests pass a fake one to move quotas and expiry along
        self.stats = SimStats()
        self.url = ""
        self._tokens = TokenStore()
        self._runner: web.AppRunner | None = None
        self._reset_state()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port) and return the root URL."""
        app = web.Application(client_max_size=MAX_READ_BYTES)
        self._add_routes(app.router)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_S)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=1024).start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.url = f"http://{f'[{bound_host}]' if ':' in bound_host else bound_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Close the port; hanging requests are cancelled."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _add_routes(self, router: web.UrlDispatcher) -> None:
        """Every path the simulator answers; anything else is a Google-style 404."""
        vertex = "/{version:v1|v1beta1}/projects/{project}/locations/{location}/endpoints/{endpoint}"
        router.add_post(f"{vertex}/chat/completions", self._vertex_chat)
        router.add_post("/v1/chat/completions", functools.partial(self._chat, route=OPENAI_ROUTE))
        router.add_post("/v1beta/openai/chat/completions", functools.partial(self._chat, route=GEMINI_ROUTE))
        router.add_post("/token", self._token)
        router.add_get("/", self._metadata)  # google-auth's GCE detection pings the root
        router.add_route("*", "/computeMetadata/{tail:.*}", self._metadata)
        router.add_get("/_sim/stats", self._stats)
        router.add_get("/_sim/counts", self._counts_view)
        router.add_get("/_sim/requests", self._records_view)
        router.add_get("/_sim/arrivals", self._arrivals_view)
        router.add_post("/_sim/config", self._set_config)
        router.add_post("/_sim/reset", self._reset)
        router.add_route("*", "/{tail:.*}", self._not_found)

    # --- chat ---------------------------------------------------------------------------------------

    async def _vertex_chat(self, request: web.Request) -> web.StreamResponse:
        """Managed models under endpoints/openapi, self-deployed ones under endpoints/ID."""
        endpoint = request.match_info["endpoint"]
        route = _Route(vertex=True, google_errors=True, endpoint_id=None if endpoint == "openapi" else endpoint)
        return await self._chat(request, route)

    async def _chat(self, request: web.Request, route: _Route) -> web.StreamResponse:
        """Serve one chat request and count it; a dropped connection gets no status."""
        self.stats.enter()
        arrived = self.clock()
        try:
            response = await self._serve_chat(request, route)
        finally:
            self.stats.in_flight -= 1  # the current stats: a reset carries in_flight over
        self._arrivals.append(arrived)
        self._statuses.append(0 if response is None else response.status)
        if response is None:
            return web.Response()  # the transport is already closed; nothing reaches the client
        self.stats.answered(response.status)
        if self.config.echo_headers and response.status >= 400 and isinstance(response, web.Response):
            headers = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
            return _echoing(response, f"request headers: {headers}")
        return response

    async def _serve_chat(self, request: web.Request, route: _Route) -> web.StreamResponse | None:
        """Auth, body size, storm, quota, random faults, then the answer."""
        config = self.config
        refusal = self._auth_refusal(request, route)
        if refusal is not None:
            return refusal
        raw = await request.read()
        if len(raw) > config.max_body_bytes:
            message = f"Request payload size exceeds the limit: {config.max_body_bytes} bytes."
            return self._error(400, route, message)
        try:
            body = json.loads(raw)
        except ValueError:
            return self._error(400, route, "Invalid JSON payload received.")
        if not isinstance(body, dict):
            return self._error(400, route)
        conv = read_conversation(body.get("messages"))
        self._note(request, body, conv.prompt)
        now = self.clock()
        if now < config.storm_until or not self._admit(now, conv.prompt_tokens):
            return self._error(429, route)
        traffic_type = self._traffic_type(request.headers, now)
        if traffic_type is None:
            return self._error(429, route, PROVISIONED_EXCEEDED)
        fault = self._draw_fault()
        if fault in STATUS_FAULTS:
            return self._error(STATUS_FAULTS[fault], route)
        if fault in ("rate_reset", "rate_hang"):
            await self._drop(request, hang=fault == "rate_hang")
            return None
        if fault == "rate_not_json":
            self.stats.not_json += 1
            return web.Response(text=PROXY_PAGE, content_type="text/html")
        truncated = fault == "rate_truncated"
        broken_json = self._rng.random() < config.rate_invalid_json_answer
        try:
            model = _model(body, route)
            answer = build_answer(body, conv, model=model, broken_json=broken_json)
        except InvalidArgument as exc:
            return self._error(400, route, exc.message)
        self._charge(now, answer)
        cached = self._cached_tokens(body.get("messages"))
        head = {"created": int(time.time()), "id": secrets.token_urlsafe(16), "model": model}
        await self._tier_delay(traffic_type)
        stream = bool(body.get("stream"))
        shape = self._draw_broken(stream)
        if stream and shape is not None and shape not in SSE_SHAPES:
            stream = False  # a plain JSON body in reply to a stream
        if stream:
            chunks = answer.chunks(head, traffic_type)
            _add_cached(chunks[-1]["usage"], cached)
            return await self._stream(request, self._events(chunks, shape), truncated)
        await asyncio.sleep(self._latency())
        completion = answer.completion(head, traffic_type)
        _add_cached(completion["usage"], cached)
        payload = _dumps(self._broken(completion, shape))
        return web.Response(body=self._cut(payload) if truncated else payload, content_type="application/json")

    def _draw_broken(self, stream: bool) -> str | None:
        """The broken shape this answer gets, if any; drawn only when the switch is on, so seeded runs
        without it see the same faults as before."""
        config = self.config
        if config.broken_answer is None or not config.rate_broken or self._rng.random() >= config.rate_broken:
            return None
        if not stream and config.broken_answer in STREAM_SHAPES:
            return None
        self.stats.broken += 1
        return config.broken_answer

    def _broken_error(self) -> dict[str, Any]:
        """The error object a broken body or event carries: Google's fields, its code an HTTP status."""
        status = self.config.broken_status
        return {"code": status, "message": STATUS[status][1], "status": STATUS[status][0]}

    def _broken(self, completion: dict[str, Any], shape: str | None) -> Any:
        """A non-streamed completion, broken into `shape`."""
        if shape == "error_body":
            return {"error": self._broken_error()}
        if shape == "error_list_body":
            return [{"error": self._broken_error()}]
        if shape == "empty_choices":
            return {**completion, "choices": []}
        if shape == "no_choices":
            return {k: v for k, v in completion.items() if k != "choices"}
        if shape == "bad_media":
            message = completion["choices"][0].setdefault("message", {"role": "assistant", "content": None})
            message["audio"] = {**(message.get("audio") or {}), "data": BAD_BASE64}
        return completion

    def _events(self, chunks: list[dict[str, Any]], shape: str | None) -> list[bytes]:
        """A stream's SSE events ending in [DONE], or broken into `shape`."""
        if shape == "bad_media":
            delta = chunks[0]["choices"][0]["delta"]
            delta["audio"] = {**(delta.get("audio") or {}), "data": BAD_BASE64}
        events = [b"data: " + _dumps(c) + b"\n\n" for c in chunks]
        if shape == "stream_cut":
            return events[:-1]
        if shape in ("stream_error", "stream_error_list"):
            error: Any = {"error": self._broken_error()}
            return [events[0], b"data: " + _dumps(error if shape == "stream_error" else [error]) + b"\n\n"]
        return [*events, b"data: [DONE]\n\n"]

    def _traffic_type(self, headers: Mapping[str, str], now: float) -> str | None:
        """Which consumption option serves the request, as Vertex's headers choose it; None: dedicated and full.

        `X-Vertex-AI-LLM-Request-Type: dedicated` is served by Provisioned Throughput or refused with 429,
        `shared` never uses it, and no header uses it first while the reservation has room; the pay-as-you-go
        tier follows `X-Vertex-AI-LLM-Shared-Request-Type` (flex, priority, else standard).
        """
        request_type = headers.get("X-Vertex-AI-LLM-Request-Type", "").lower()
        if request_type != "shared":
            limit = self.config.provisioned_rpm
            if limit is not None and self._provisioned.fits(now, 1, limit):
                self._provisioned.add(now, 1)
                return "PROVISIONED_THROUGHPUT"
            if request_type == "dedicated":
                return None
        tier = headers.get("X-Vertex-AI-LLM-Shared-Request-Type", "").lower()
        return {"flex": "ON_DEMAND_FLEX", "priority": "ON_DEMAND_PRIORITY"}.get(tier, self.config.traffic_type)

    async def _tier_delay(self, traffic_type: str) -> None:
        """Flex answers take longer than the others."""
        if traffic_type == "ON_DEMAND_FLEX" and self.config.flex_latency_s:
            await asyncio.sleep(self.config.flex_latency_s)

    def _cached_tokens(self, messages: object) -> int:
        """Implicit caching: a long system prompt seen before is served from the cache (its tokens, 4 chars each)."""
        first = messages[0] if isinstance(messages, list) and messages else None
        text = first.get("content") if isinstance(first, dict) and first.get("role") == "system" else None
        if not isinstance(text, str) or len(text) < self.config.cache_min_chars:
            return 0
        key = hashlib.sha256(text.encode()).digest()
        if key not in self._cached_prefixes:
            self._cached_prefixes.add(key)
            return 0
        return len(text) // 4

    def _auth_refusal(self, request: web.Request, route: _Route) -> web.Response | None:
        """401 unless the bearer is a live token (Vertex paths) or the API key (OpenAI-style paths)."""
        config = self.config
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        bearer = credential.strip() if scheme.lower() == "bearer" else ""
        if not route.vertex:
            if config.api_key is None or bearer == config.api_key:
                return None
            return self._error(401, route, BAD_CREDENTIALS if route.google_errors else BAD_API_KEY)
        if not config.require_auth:
            return None
        if config.api_key is not None and bearer == config.api_key:
            return self._error(401, route, API_KEY_REFUSED)
        if self._tokens.valid(bearer, self.clock(), config.revoke_every_s):
            return None
        return self._error(401, route, BAD_CREDENTIALS)

    def _note(self, request: web.Request, body: dict[str, Any], prompt: str) -> None:
        """Count the request under its prompt (re-sends per row) and keep it, with its X- headers, when recording."""
        self._counts[prompt] += 1
        if self.config.record:
            record: dict[str, Any] = {"body": body, "path": request.path}
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower().startswith("x-") and not k.lower().startswith("x-stainless-")
            }  # not the SDK's own
            if headers:
                record["headers"] = headers
            self._records.append(record)

    def _admit(self, now: float, prompt_tokens: int) -> bool:
        """Charge the configured rpm/tpm windows, or refuse without charging either."""
        quotas = [
            (window, amount, limit)
            for window, amount, limit in (
                (self._rpm, 1, self.config.rpm_quota),
                (self._tpm, prompt_tokens, self.config.tpm_quota),
            )
            if limit is not None
        ]
        if not all(window.fits(now, amount, limit) for window, amount, limit in quotas):
            return False
        for window, amount, _ in quotas:
            window.add(now, amount)
        return True

    def _charge(self, now: float, answer: GeneratedAnswer) -> None:
        """Add the answer's output tokens to the tpm window and the stats."""
        if self.config.tpm_quota is not None:
            self._tpm.add(now, answer.total_tokens - answer.prompt_tokens)
        self.stats.prompt_tokens += answer.prompt_tokens
        self.stats.completion_tokens += answer.completion_tokens or 0
        self.stats.reasoning_tokens += answer.reasoning_tokens

    def _draw_fault(self) -> str | None:
        """One draw per request from the seeded generator picks at most one fault."""
        if self.config.seed != self._seed:
            self._seed = self.config.seed
            self._rng.seed(self._seed)
        draw = self._rng.random()
        for name in FAULTS:
            rate = getattr(self.config, name)
            if draw < rate:
                return name
            draw -= rate
        return None

    async def _drop(self, request: web.Request, *, hang: bool) -> None:
        """Close the connection without an answer, at once or after outliving the client's timeout."""
        if hang:
            self.stats.hangs += 1
            await asyncio.sleep(HANG_S)
        else:
            self.stats.resets += 1
        if request.transport is not None:
            request.transport.abort()

    def _cut(self, payload: bytes) -> bytes:
        """The first half of a body: a 200 whose JSON is cut off."""
        self.stats.truncated += 1
        return payload[: len(payload) // 2]

    def _latency(self) -> float:
        """Configured latency plus seeded jitter."""
        config = self.config
        jitter = self._rng.uniform(0, config.latency_jitter_s) if config.latency_jitter_s else 0.0
        return config.latency_s + jitter

    async def _stream(self, request: web.Request, events: list[bytes], truncated: bool) -> web.StreamResponse:
        """Send SSE events: the first after half the latency, the rest spread over the other half."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if truncated:
            events = [self._cut(b"".join(events))]
        latency = self._latency()
        if not latency:
            events = [b"".join(events)]
        for k, event in enumerate(events):
            if latency:
                await asyncio.sleep(latency / 2 if k == 0 else latency / 2 / (len(events) - 1))
            await response.write(event)
        await response.write_eof()
        return response

    def _error(self, status: int, route: _Route, message: str | None = None) -> web.Response:
        """A Google list body (or an OpenAI error object), with Retry-After info on 429s."""
        name, default = STATUS[status]
        retry_after = self.config.retry_after_s if status == 429 else None
        headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
        if not route.google_errors:
            kind = "rate_limit_exceeded" if status == 429 else name.lower()
            error = {"code": kind, "message": message or default, "param": None, "type": kind}
            return _json({"error": error}, status=status, headers=headers)
        google: dict[str, Any] = {"code": status, "message": message or default, "status": name}
        if retry_after is not None:
            info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}
            google["details"] = [info]
        return _json([{"error": google}], status=status, headers=headers)

    # --- tokens and metadata ------------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        """OAuth2 token endpoint: the JWT-bearer grant (service accounts) and refresh_token (users)."""
        self.stats.token_requests += 1
        form = await request.post()
        if self.clock() < self.config.token_fail_until:
            error = {"error": "temporarily_unavailable", "error_description": STATUS[503][1]}
            return self._token_refusal(error, form, status=503)
        problem = grant_problem(form)
        if problem is not None:
            return self._token_refusal({"error": problem[0], "error_description": problem[1]}, form, status=400)
        token, ttl = self._issue_token(), self.config.token_ttl_s
        # Google has been seen to send expires_in as a string; alternate so clients handle both.
        expires_in: int | str = ttl if self.stats.tokens_issued % 2 else str(ttl)
        return _json({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"})

    def _token_refusal(self, error: dict[str, str], form: Mapping[str, Any], *, status: int) -> web.Response:
        """A token-endpoint error, repeating the posted form when `echo_headers` is on."""
        if self.config.echo_headers:
            echoed = "&".join(f"{key}={value}" for key, value in form.items())
            error = {**error, "error_description": f"{error['error_description']} (request: {echoed})"}
        return _json(error, status=status)

    def _issue_token(self) -> str:
        """Issue a token and count it."""
        self.stats.tokens_issued += 1
        return self._tokens.issue(self.clock(), self.config.token_ttl_s, self.config.revoke_every_s)

    async def _metadata(self, request: web.Request) -> web.Response:
        """The GCE metadata server: requests must carry Metadata-Flavor: Google, answers always do."""
        headers = {"Metadata-Flavor": "Google"}
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(status=403, text="Missing required header: Metadata-Flavor: Google", headers=headers)
        path = request.path.removeprefix("/computeMetadata/v1").replace(f"/{SERVICE_ACCOUNT}/", "/default/")
        if path == "/instance/service-accounts/default/token":
            self.stats.token_requests += 1
            token = self._issue_token()  # expires_in must be a number here: google-auth adds it to a datetime
            return _json(
                {"access_token": token, "expires_in": self.config.token_ttl_s, "token_type": "Bearer"}, headers=headers
            )
        if path == "/instance/service-accounts/default/" and request.query.get("recursive") == "true":
            return _json({"aliases": ["default"], "email": SERVICE_ACCOUNT, "scopes": SCOPES}, headers=headers)
        if path not in METADATA:
            return web.Response(status=404, text="Not Found", headers=headers)
        return web.Response(text=METADATA[path], headers=headers)

    # --- admin --------------------------------------------------------------------------------------

    async def _stats(self, _: web.Request) -> web.Response:
        """The counters."""
        return _json(asdict(self.stats))

    async def _counts_view(self, _: web.Request) -> web.Response:
        """Requests per prompt text: how often each row was sent."""
        return _json(self._counts)

    async def _arrivals_view(self, _: web.Request) -> web.Response:
        """Arrival times (seconds, simulator clock) and statuses, to check a budget over any minute."""
        return _json({"t": self._arrivals.tolist(), "status": self._statuses.tolist()})

    async def _records_view(self, _: web.Request) -> web.Response:
        """The recorded request bodies and paths."""
        return _json(self._records)

    async def _not_found(self, _: web.Request) -> web.Response:
        """Google's 404 for any other path."""
        return self._error(404, GEMINI_ROUTE)

    async def _set_config(self, request: web.Request) -> web.Response:
        """Change any config fields at runtime; `revoke_now: true` revokes every issued token."""
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            revoke = changes.pop("revoke_now", False)
            merged = SimulatorConfig.from_mapping({**asdict(self.config), **changes}, now=self.clock())
        except ValueError as exc:
            return _json({"error": str(exc)}, status=400)
        if revoke:
            self._tokens.revoke_all()
        for item in fields(merged):
            setattr(self.config, item.name, getattr(merged, item.name))
        return _json(asdict(self.config))

    async def _reset(self, _: web.Request) -> web.Response:
        """Zero stats, counts, records and quota windows, and re-seed the fault generator."""
        self._reset_state()
        return _json(asdict(self.stats))

    def _reset_state(self) -> None:
        """A fresh run: requests still in flight stay counted as in flight."""
        in_flight = self.stats.in_flight
        self.stats = SimStats(in_flight=in_flight, max_in_flight=in_flight)
        self._counts = Counter()
        self._records = []
        self._arrivals, self._statuses = array("d"), array("H")
        self._rpm, self._tpm, self._provisioned = QuotaWindow(), QuotaWindow(), QuotaWindow()
        self._cached_prefixes = set()
        self._seed = self.config.seed
        self._rng = random.Random(self._seed)


class SimulatorThread:
    """A Simulator on its own event loop in a daemon thread, for synchronous callers."""

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.simulator = Simulator(config, clock=clock)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="batchrun-simulator", daemon=True)

    def start(self) -> str:
        """Start serving and return the root URL once the port listens."""
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.simulator.start(), self._loop).result()
        return self.url

    def stop(self) -> None:
        """Close the port and end the thread; calling it again does nothing."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.simulator.stop(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()  # a no-op once closed

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def vertex_base_url(
    root: str,
    project: str = PROJECT,
    location: str = "us-central1",
    api_version: str = "v1",
    endpoint_id: str | None = None,
) -> str:
    """The API root a Vertex client appends /chat/completions to."""
    return f"{root}/{api_version}/projects/{project}/locations/{location}/endpoints/{endpoint_id or 'openapi'}"


def _model(body: Mapping[str, Any], route: _Route) -> str:
    """The model to echo: the body's, else the self-deployed endpoint's id; managed models need one."""
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    if route.endpoint_id is not None:
        return route.endpoint_id
    raise InvalidArgument("model is required, e.g. google/gemini-2.5-flash.")


def _echoing(response: web.Response, extra: str) -> web.Response:
    """The same error response with `extra` appended to its message (Google list or OpenAI object body)."""
    assert isinstance(response.body, bytes)
    body = json.loads(response.body)
    error = (body[0] if isinstance(body, list) else body)["error"]
    error["message"] = f"{error['message']} ({extra})"
    retry_after = response.headers.get("Retry-After")
    return _json(body, status=response.status, headers={"Retry-After": retry_after} if retry_after else None)


def _add_cached(usage: dict[str, Any], cached: int) -> None:
    """Report prompt tokens served from the cache, as `usage.prompt_tokens_details.cached_tokens`."""
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": min(cached, int(usage.get("prompt_tokens") or 0))}


def _dumps(value: Any) -> bytes:
    """Compact JSON with sorted keys, as Vertex orders them."""
    return _ENCODER.encode(value).encode()


def _json(value: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response."""
    return web.Response(body=_dumps(value), status=status, headers=headers, content_type="application/json")
