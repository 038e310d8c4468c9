"""The simulator's knobs: latency, quotas, random faults, broken answers and token rules, checked as they are set.

`SimulatorConfig` is read from the job spec's `endpoint.simulator`, from flags and JSON on the command line, and
from `POST /_sim/config` while the simulator runs; each way goes through `from_mapping` and its type checks.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

FAULTS = ("rate_429", "rate_500", "rate_503", "rate_reset", "rate_hang", "rate_truncated", "rate_not_json")
BROKEN_SHAPES = {  # what a 200 can carry that is not a whole answer (docs/reliability.md, "Broken answers")
    "error_body": 'a JSON body {"error": {...}} (the error of `broken_status`)',
    "error_list_body": 'Google\'s list form [{"error": {...}}]',
    "empty_choices": '"choices": []',
    "no_choices": "a completion without `choices`",
    "bad_media": "`audio.data` that is not base64",
    "stream_cut": "a stream that ends before its finish chunk, without [DONE]",
    "stream_error": 'a stream with a `data: {"error": {...}}` event after its first chunk',
    "stream_error_list": 'a stream with a `data: [{"error": {...}}]` event after its first chunk',
    "json_for_stream": "a plain JSON completion in reply to `stream: true` (a whole answer)",
}
STREAM_SHAPES = ("stream_cut", "stream_error", "stream_error_list", "json_for_stream")  # streams only
SSE_SHAPES = ("bad_media", "stream_cut", "stream_error", "stream_error_list")  # the rest answer a stream as JSON
CONVENIENCES = {"storm_for_s": "storm_until", "token_fail_for_s": "token_fail_until"}
STATUS = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request is missing required authentication credential."),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "Resource exhausted. Please try again later. Please refer to "
        "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
    ),
    500: ("INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
}


@dataclass
class SimulatorConfig:
    """Faults, quotas and auth rules; any field can change while the simulator runs."""

    latency_s: float = 0.0  # added to every answer; a stream's first chunk comes after half of it
    latency_jitter_s: float = 0.0  # up to this much more, drawn from the seeded generator
    rpm_quota: int | None = None  # requests per sliding minute; over it -> 429
    tpm_quota: int | None = None  # prompt + output tokens per sliding minute; over it -> 429
    rate_429: float = 0.0  # fractions of chat requests that get each random fault
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_reset: float = 0.0  # connection closed without an answer
    rate_hang: float = 0.0  # never answered: the client's timeout must fire
    rate_truncated: float = 0.0  # 200 with half a body
    rate_not_json: float = 0.0  # 200 with an HTML page for a body
    rate_invalid_json_answer: float = 0.0  # response_format answers whose content is not JSON
    broken_answer: str | None = None  # one of BROKEN_SHAPES, served on `rate_broken` of the answers
    rate_broken: float = 0.0
    broken_status: int = 500  # the status an error body or error event names
    retry_after_s: float | None = None  # 429s then carry Retry-After and a RetryInfo detail
    storm_until: float = 0.0  # monotonic deadline: every chat request gets 429 until then
    token_ttl_s: int = 3600  # expires_in of issued access tokens
    revoke_every_s: float | None = None  # all issued tokens are revoked this often
    token_fail_until: float = 0.0  # monotonic deadline: the token endpoint answers 503 until then
    require_auth: bool = True  # Vertex paths need a Bearer token this simulator issued
    api_key: str | None = None  # the key OpenAI-style paths accept (and Vertex paths refuse)
    traffic_type: str = "ON_DEMAND"  # usage.extra_properties.google.traffic_type of standard pay-as-you-go answers
    provisioned_rpm: int | None = None  # the project's Provisioned Throughput, requests per sliding minute (None: none)
    flex_latency_s: float = 0.05  # added to Flex PayGo answers, which are slow by design
    cache_min_chars: int = 4096  # a system prompt this long is served from the implicit cache when it repeats
    max_body_bytes: int = 20 * 1024 * 1024  # bigger bodies get Vertex's 400
    record: bool = False  # keep every chat body for /_sim/requests
    echo_headers: bool = False  # error bodies repeat the request's headers (token endpoint: its form)
    seed: int = 0  # of the generator that draws faults and jitter

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, now: float | None = None) -> SimulatorConfig:
        """Build from JSON data; `*_for_s` keys become deadlines from `now` (monotonic)."""
        types = {f.name: str(f.type) for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key in CONVENIENCES:
                start = time.monotonic() if now is None else now
                key, value = CONVENIENCES[key], start + _checked(key, value, "float")
            elif key not in types:
                close = difflib.get_close_matches(key, [*types, *CONVENIENCES], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(types)}"
                raise ValueError(f"unknown simulator setting {key!r}{hint}")
            values[key] = _checked(key, value, types[key])
        if values.get("broken_answer") not in (None, *BROKEN_SHAPES):
            raise ValueError(f"unknown broken_answer {values['broken_answer']!r}; valid: {', '.join(BROKEN_SHAPES)}")
        if values.get("broken_status", 500) not in STATUS:
            raise ValueError(f"broken_status must be one of {', '.join(map(str, STATUS))}")
        return cls(**values)


def _checked(name: str, value: Any, annotation: str) -> Any:
    """The value if its JSON type fits the field's annotation (ints widen to float), else ValueError."""
    accepted = {part.strip() for part in annotation.split("|")}
    if value is None:
        fits = "None" in accepted
    elif isinstance(value, bool):
        fits = "bool" in accepted
    elif isinstance(value, int | float):
        fits = "float" in accepted or (isinstance(value, int) and "int" in accepted)
    else:
        fits = isinstance(value, str) and "str" in accepted
    if not fits:
        raise ValueError(f"simulator setting {name!r} must be {annotation.replace(' | ', ' or ')}, not {value!r}")
    return float(value) if "float" in accepted and type(value) is int else value
