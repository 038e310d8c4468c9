"""Where requests go and how they are authenticated: Vertex, any OpenAI-compatible server, or the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchrun import redact
from batchrun.credentials import CLOUD_PLATFORM, api_key, google_credentials
from batchrun.errors import SpecError
from batchrun.spec import EndpointSpec

if TYPE_CHECKING:
    from batchrun.auth import TokenSource
    from batchrun.simulator import SimulatorConfig


@dataclass(frozen=True)
class Connection:
    """The API root (ending before /chat/completions) and the token source for it."""

    base_url: str
    tokens: TokenSource
    is_google: bool
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request; values never logged


def request_headers(spec: EndpointSpec) -> dict[str, str]:
    """endpoint.headers plus the headers that choose Vertex's consumption option; values are registered as secrets.

    As Google documents them: `X-Vertex-AI-LLM-Request-Type: dedicated` uses only Provisioned Throughput,
    `shared` never uses it; `X-Vertex-AI-LLM-Shared-Request-Type: flex|priority` picks the pay-as-you-go tier.
    Standard PayGo with Provisioned Throughput first is Vertex's default and sends neither.
    """
    headers = dict(spec.headers)
    for value in headers.values():
        redact.register(value)
    if spec.provisioned != "first":
        headers["X-Vertex-AI-LLM-Request-Type"] = "dedicated" if spec.provisioned == "only" else "shared"
    if spec.consumption != "standard":
        headers["X-Vertex-AI-LLM-Shared-Request-Type"] = spec.consumption
    return headers


def vertex_url(spec: EndpointSpec, host: str | None = None) -> str:
    """The Vertex OpenAI-compatible API root for a region, `global`, or a self-deployed endpoint."""
    if host is None:
        host = (
            "https://aiplatform.googleapis.com"
            if spec.location == "global"
            else f"https://{spec.location}-aiplatform.googleapis.com"
        )
    endpoint = spec.endpoint_id or "openapi"
    return (
        f"{host}/{spec.api_version}/projects/{spec.project or 'sim-project'}"
        f"/locations/{spec.location}/endpoints/{endpoint}"
    )


def check(spec: EndpointSpec) -> None:
    """Everything `connect` would refuse, checked before anything is created or sent (`validate` and `run`)."""
    if spec.kind == "simulator":
        _simulator_config(spec)
    elif spec.kind == "openai":
        api_key(spec)
    else:
        google_credentials()


@contextmanager
def connect(spec: EndpointSpec) -> Iterator[Connection]:
    """Open the endpoint for a run; the simulator lives exactly as long as this context."""
    from batchrun.auth import GoogleTokens, StaticKey

    if spec.kind == "simulator":
        with _simulated(spec) as connection:
            yield connection
        return
    if spec.kind == "openai":
        assert spec.base_url is not None
        yield Connection(
            spec.base_url.rstrip("/"), StaticKey(api_key(spec)), is_google=False, headers=request_headers(spec)
        )
        return
    base = spec.base_url.rstrip("/") if spec.base_url else vertex_url(spec)
    yield Connection(base, GoogleTokens.from_environment(), is_google=True, headers=request_headers(spec))


def _simulator_config(spec: EndpointSpec) -> SimulatorConfig:
    """The simulator's settings from `endpoint.simulator`; an unknown or mistyped one is a spec error."""
    from batchrun.simulator import SimulatorConfig

    try:
        return SimulatorConfig.from_mapping(spec.simulator)
    except ValueError as exc:
        raise SpecError(f"endpoint.simulator: {exc}") from exc


@contextmanager
def _simulated(spec: EndpointSpec) -> Iterator[Connection]:
    """Start the built-in simulator and authenticate with a generated key through its token endpoint."""
    from google.oauth2 import service_account

    from batchrun.auth import GoogleTokens
    from batchrun.simulator import SimulatorThread, make_service_account_info

    config = _simulator_config(spec)
    with SimulatorThread(config) as simulator:
        info = make_service_account_info(f"{simulator.url}/token")
        credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
        yield Connection(
            vertex_url(spec, host=simulator.url),
            GoogleTokens(credentials),
            is_google=True,
            headers=request_headers(spec),
        )
