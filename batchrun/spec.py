"""The job spec: pydantic models where user input enters, ${ENV} expansion, and load_spec(path)."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchrun import storage
from batchrun.errors import SpecError
from batchrun.spec_files import inline_files

DEFAULT_TIMEOUT_S = 120.0
FLEX_TIMEOUT_S = 1800.0  # Google's maximum for a Flex PayGo request (its default is 20 minutes)
_OWN_HEADERS = {
    "authorization": "from the credentials",
    "content-type": "application/json",
    "x-vertex-ai-llm-request-type": "by endpoint.provisioned",
    "x-vertex-ai-llm-shared-request-type": "by endpoint.consumption",
}
# `$${` is a literal `${` (as in Docker Compose): `Price: $${price}` keeps the `{price}` column placeholder.
_ENV_PATTERN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    """Base for every spec section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """Where the rows come from."""

    path: str
    id_column: str | None = None
    format: Literal["auto", "rows", "openai-batch"] = "auto"


class EndpointSpec(_Strict):
    """Which server answers, and how batchrun authenticates to it."""

    kind: Literal["vertex", "openai", "simulator"] = "vertex"
    project: str | None = None
    location: str = "us-central1"
    endpoint_id: str | None = None
    api_version: Literal["v1", "v1beta1"] = "v1"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    transport: Literal["direct", "openai"] = "direct"  # direct: aiohttp POSTs; openai: every request via the SDK
    consumption: Literal["standard", "flex", "priority"] = "standard"  # the pay-as-you-go tier (Vertex headers)
    provisioned: Literal["first", "only", "never"] = "first"  # Provisioned Throughput first, only, or never
    headers: dict[str, str] = Field(default_factory=dict)  # extra HTTP headers; values are secrets, never logged
    simulator: dict[str, Any] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        """Header names are HTTP tokens; the ones batchrun sets itself cannot be overridden here."""
        for name in value:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"{name} is set by batchrun itself ({_OWN_HEADERS[name.lower()]}); remove it")
        return value

    @model_validator(mode="after")
    def _check_consumption(self) -> EndpointSpec:
        """Vertex's consumption options, refused where Google's endpoint would not honour them."""
        chosen = [key for key in ("consumption", "provisioned") if key in self.model_fields_set]
        if self.kind == "openai" and chosen:
            raise ValueError(
                f"{chosen[0]} chooses a Vertex AI consumption option; kind: openai servers have none "
                "(remove it, or use kind: vertex)"
            )
        if self.consumption == "flex" and self.location != "global" and not self.base_url:
            raise ValueError(
                f"consumption: flex is served on the global endpoint only, not in {self.location} "
                "(set endpoint.location: global)"
            )
        if self.provisioned == "only" and self.consumption != "standard":
            raise ValueError(
                f"provisioned: only sends every request to Provisioned Throughput, which has no "
                f"{self.consumption} tier (set consumption: standard, or provisioned: first or never)"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        """A URL with a scheme and a host: without them every request fails to connect, not the spec."""
        if value is None:
            return value
        scheme, _, rest = value.partition("://")
        if scheme.lower() not in ("http", "https") or not rest.split("/", 1)[0]:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL with a host "
                "(e.g. https://generativelanguage.googleapis.com/v1beta/openai)"
            )
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> EndpointSpec:
        if self.kind == "vertex" and not self.base_url and not self.project:
            raise ValueError(
                "endpoint.project is required for kind: vertex "
                "(set it, e.g. project: ${GOOGLE_CLOUD_PROJECT}, or give endpoint.base_url)"
            )
        if self.kind == "openai" and not self.base_url:
            raise ValueError(
                "endpoint.base_url is required for kind: openai "
                "(e.g. https://generativelanguage.googleapis.com/v1beta/openai)"
            )
        return self


NO_N = (
    "batchrun saves one answer per row, so n must be 1 (several choices would all but the first be lost); "
    "to get several answers, repeat the row under other ids"
)


class MediaSpec(_Strict):
    """A column holding media to attach to the user message."""

    column: str
    type: Literal["image", "audio", "video", "file"] = "image"
    inline: bool = False  # read gs:// objects here and send their bytes, for servers that cannot read GCS


class RequestSpec(_Strict):
    """How a row becomes a Chat Completions request."""

    system: str | None = None
    prompt: str | None = None
    messages_column: str | None = None
    media: list[MediaSpec] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    google: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _read_files(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Schema and tool files are read now, so a run checks them before sending and the fingerprint sees them."""
        return inline_files(value)

    @model_validator(mode="after")
    def _check_prompt(self) -> RequestSpec:
        if self.prompt is not None and self.messages_column is not None:
            raise ValueError("set request.prompt or request.messages_column, not both")
        if "messages" in self.params or "model" in self.params:
            raise ValueError(
                "request.params may not set 'messages' or 'model': use request.prompt/messages_column and model"
            )
        if self.params.get("n", 1) != 1:
            raise ValueError(f"request.params.n: {NO_N}")
        extra = self.params.get("extra_body")
        if extra is not None and not (isinstance(extra, dict) and isinstance(extra.get("google", {}), dict)):
            raise ValueError("request.params.extra_body must be a mapping, and its 'google' one too")
        both = sorted(set((extra or {}).get("google", {})) & set(self.google))
        if both:
            raise ValueError(
                f"{', '.join(both)} set in both request.google and request.params.extra_body.google; "
                "keep one (request.google is the short form of the same thing)"
            )
        if "reasoning_effort" in self.params and "thinking_config" in self.google_options:
            raise ValueError(
                "set params.reasoning_effort or google.thinking_config, not both (Vertex accepts only one)"
            )
        return self

    @property
    def google_options(self) -> dict[str, Any]:
        """Google's extra_body.google options, from request.google and request.params.extra_body.google together."""
        extra = self.params.get("extra_body") or {}
        return {**extra.get("google", {}), **self.google}


class LimitsSpec(_Strict):
    """How hard batchrun may push the endpoint, and how much it may spend."""

    concurrency: int = Field(64, ge=1, le=10_000)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    max_cost: float | None = Field(None, gt=0)  # in report.currency, priced from report.prices


class RetrySpec(_Strict):
    """How failed attempts are retried."""

    max_attempts: int = Field(8, ge=1, le=100)
    timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    on_invalid_output: bool = True


class OutputSpec(_Strict):
    """Where results go."""

    path: str
    keep_columns: list[str] = Field(default_factory=list)
    flush_rows: int = Field(1000, ge=1)
    flush_seconds: float = Field(10.0, gt=0)


class PriceSpec(_Strict):
    """What a million tokens cost for one traffic type; thinking bills as output, cached tokens as input, unless set."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(None, ge=0)
    reasoning: float | None = Field(None, ge=0)


class ReportSpec(_Strict):
    """What `batchrun report` adds to the counts: prices per million tokens, keyed by traffic_type."""

    currency: str = "USD"
    prices: dict[str, PriceSpec] = Field(default_factory=dict)


class JobSpec(_Strict):
    """A whole job: the contract of docs/design.md §1."""

    name: str
    input: InputSpec
    endpoint: EndpointSpec = Field(default_factory=lambda: EndpointSpec())
    model: str | None = None
    request: RequestSpec = Field(default_factory=RequestSpec)
    limits: LimitsSpec = Field(default_factory=lambda: LimitsSpec())
    retry: RetrySpec = Field(default_factory=lambda: RetrySpec())
    output: OutputSpec
    report: ReportSpec = Field(default_factory=ReportSpec)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_.-]+", value):
            raise ValueError("name may use only lowercase letters, digits, '-', '_' and '.'")
        return value

    @model_validator(mode="after")
    def _check_flex_timeout(self) -> JobSpec:
        """Flex answers are slow by design: unless retry.timeout_s is set, an attempt may take 30 minutes."""
        if self.endpoint.consumption == "flex" and "timeout_s" not in self.retry.model_fields_set:
            return self.model_copy(update={"retry": self.retry.model_copy(update={"timeout_s": FLEX_TIMEOUT_S})})
        return self

    @model_validator(mode="after")
    def _check_model(self) -> JobSpec:
        if self.model is None and not self.endpoint.endpoint_id and self.input.format != "openai-batch":
            raise ValueError("model is required unless endpoint.endpoint_id names a self-deployed model")
        return self

    def fingerprint(self) -> str:
        """A hash of what decides each row's answer; the output directory is tied to it."""
        shaping = {
            "input": self.input.model_dump(),
            "model": self.model,
            "request": self.request.model_dump(),
        }
        return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:16]


Loc = tuple[int | str, ...]
LineOf = Callable[[Loc], int | None]


class _UnsetVariable(SpecError):
    """An unset ${VAR}: carries where it is, so the message can name the YAML line."""

    def __init__(self, message: str, loc: Loc) -> None:
        super().__init__(message)
        self.loc = loc


def expand_env(value: Any, loc: Loc = ()) -> Any:
    """Replace ${VAR} and ${VAR:-default} (and `$${` by `${`) in every string, naming the path of an unset one."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            raise _UnsetVariable(
                f"{_dotted(loc) or 'spec'}: environment variable {name} is not set "
                f"(export {name}=..., write ${{{name}:-default}}, or $${{{name}}} for a literal ${{{name}}}"
                + (f": a $ before the {{{name}}} column)" if loc[:1] == ("request",) else ")"),
                loc,
            )

        return _ENV_PATTERN.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, (*loc, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, (*loc, i)) for i, v in enumerate(value)]
    return value


def _dotted(loc: Loc) -> str:
    """A YAML path as users write it: `request.media[0].column`."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def yaml_lines(text: str) -> LineOf:
    """Where each YAML path is written (1-based line of its key or item), for messages that point at it."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None

    def line_of(loc: Loc) -> int | None:
        node, line = root, None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
                if found is None:
                    break
                line, node = found[0].start_mark.line + 1, found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    return line_of


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The spec section model that a validation error location points into (through dicts of models too)."""
    model: type[BaseModel] = JobSpec
    parts = iter(loc[:-1])
    for part in parts:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
            next(parts, None)  # the dict key the user chose, e.g. a traffic type
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _describe(error: Any, line_of: LineOf) -> str:
    """One line per pydantic error: the YAML line and path, what is wrong, and the nearest valid key."""
    loc = tuple(error["loc"])
    line = line_of(loc)
    path = (f"line {line}: " if line else "") + (_dotted(loc) or "(top level)")
    if error["type"] == "extra_forbidden":
        model = _model_at(loc)
        valid = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
        return f"{path}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{path}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}"


def parse_spec(raw: Any, source: str = "job spec", line_of: LineOf = lambda _: None) -> JobSpec:
    """Validate a parsed YAML mapping into a JobSpec, or raise one SpecError that lists every problem."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a YAML mapping at the top level (name:, input:, output:, ...)")
    try:
        expanded = expand_env(raw)
    except _UnsetVariable as exc:
        line = line_of(exc.loc)
        raise SpecError(f"{source}:{f' line {line}:' if line else ''} {exc.message}") from exc
    try:
        return JobSpec.model_validate(expanded)
    except ValidationError as exc:
        lines = "\n  ".join(_describe(e, line_of) for e in exc.errors())
        raise SpecError(f"{source} is invalid:\n  {lines}") from exc


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply --set key.path=value overrides; the value is parsed as YAML so numbers and lists work."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected key.path=value, e.g. --set limits.concurrency=8")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(text)
    return raw


_UNCLOSED = {"quoted scalar": "close the quote", "flow sequence": "close the [", "flow mapping": "close the {"}


def _yaml_problem(exc: yaml.YAMLError, text: str = "") -> str:
    """Where the YAML goes wrong and why; an unclosed quote or bracket is named where it opens, not at the end."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    while_doing = getattr(exc, "context", None) or ""
    opened = next((hint for what, hint in _UNCLOSED.items() if what in while_doing), None)
    if opened and context is not None and mark is not None and context.line != mark.line:
        return (
            f"line {context.line + 1}, column {context.column + 1}: not valid YAML ({while_doing} that "
            f"starts here, {problem} at line {mark.line + 1}); {opened}"
        )
    quote = _quote_run_on(text, mark.line) if mark is not None else None
    if quote is not None and mark is not None:
        # The quote closed at a later line's quote, and what follows that one no longer parses.
        return (
            f"line {quote.line + 1}, column {quote.column + 1}: not valid YAML (a quoted value starts here and "
            f"runs on to line {mark.line + 1}, where {problem}); close the quote on line {quote.line + 1}"
        )
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML ({problem})"


def _quote_run_on(text: str, error_line: int) -> yaml.Mark | None:
    """Where the last quoted value spanning several lines before `error_line` starts: a quote left open
    swallows the lines up to the next quote character, and the YAML breaks just after."""
    start = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if token.start_mark.line > error_line:
                break
            if isinstance(token, yaml.ScalarToken) and token.style in ('"', "'"):
                spans = token.end_mark.line > token.start_mark.line
                start = token.start_mark if spans and token.end_mark.line >= error_line else start
    except yaml.YAMLError:
        pass
    return start


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Read, expand and validate a YAML job spec; every relative path in it resolves against the CWD."""
    spec_path = str(path)
    try:
        text = storage.read_bytes(spec_path).decode("utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"{spec_path}: no such job spec file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{spec_path}: cannot read the job spec ({exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{spec_path}: {_yaml_problem(exc, text)}") from exc
    if isinstance(raw, dict) and overrides:
        raw = apply_overrides(raw, overrides)
    return parse_spec(raw, str(spec_path), yaml_lines(text))
