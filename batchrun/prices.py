"""What tokens cost: a price per traffic type, from report.prices or the genai-prices library, and who said so.

Vertex bills each answer at the rate of the consumption option that served it (`traffic_type`). A price
in `report.prices` wins; otherwise the standard rate, and the Flex and Priority rates where the
library publishes them for the model, come from `genai-prices` (imported only when a price is missing
from the spec: it takes a second or two to load). A tier the library does not know is left unpriced
rather than priced at the standard rate. Provisioned Throughput is a subscription, not a per-token
charge: it is priced only when the spec gives it a price. Rows without a traffic type (servers other
than Vertex) are priced as standard.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from batchrun.errors import SpecError
from batchrun.spec import JobSpec

STANDARD, FLEX, PRIORITY, PROVISIONED = "ON_DEMAND", "ON_DEMAND_FLEX", "ON_DEMAND_PRIORITY", "PROVISIONED_THROUGHPUT"
TIER_TRAFFIC = {"standard": STANDARD, "flex": FLEX, "priority": PRIORITY}
_PER_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """Dollars (report.currency) per million tokens of each kind, and where the figures came from."""

    input: float
    cached_input: float
    output: float
    reasoning: float
    source: str

    def cost(self, prompt: int, cached: int, output: int, reasoning: int) -> float:
        """The cost of these token counts (`cached` are the part of `prompt` served from the cache)."""
        return (
            (prompt - cached) * self.input
            + cached * self.cached_input
            + output * self.output
            + reasoning * self.reasoning
        ) / _PER_MILLION

    def worst(self, prompt: int, answer: int) -> float:
        """The most `prompt` tokens and `answer` answer-or-thinking tokens can cost."""
        return (prompt * max(self.input, self.cached_input) + answer * max(self.output, self.reasoning)) / _PER_MILLION


def may_serve(spec: JobSpec) -> list[str]:
    """The traffic types a run's answers may carry, as its consumption options allow."""
    endpoint = spec.endpoint
    if endpoint.kind == "openai":
        return [STANDARD]
    if endpoint.provisioned == "only":
        return [PROVISIONED]
    tier = TIER_TRAFFIC[endpoint.consumption]
    return [tier] if endpoint.provisioned == "never" else [tier, PROVISIONED]


def split_usage(usage: dict[str, Any]) -> tuple[int, int, int, int]:
    """(prompt, cached, answer, thinking) tokens of a `usage` object, thinking counted once.

    Vertex counts thinking beside `completion_tokens` (total = prompt + completion + reasoning), OpenAI
    inside it; a cut-off Vertex answer without `completion_tokens` is charged for what its total leaves.
    """
    prompt = int(usage.get("prompt_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    total = int(usage.get("total_tokens") or 0)
    cached = min(int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0), prompt)
    completion = usage.get("completion_tokens")
    answer = max(total - prompt - reasoning, 0) if completion is None else int(completion)
    if reasoning and total == prompt + answer:
        answer -= reasoning
    return prompt, cached, answer, reasoning


def traffic_of(usage: dict[str, Any]) -> str:
    """The traffic type an answer's usage names (standard when the server names none)."""
    google = (usage.get("extra_properties") or {}).get("google") or {}
    return str(google.get("traffic_type") or STANDARD)


def row_usage(row: dict[str, Any]) -> dict[str, Any]:
    """An output row's token columns as the `usage` object they came from, to price a saved row like an answer."""
    usage: dict[str, Any] = {name: row.get(name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}
    usage["completion_tokens_details"] = {"reasoning_tokens": row.get("reasoning_tokens")}
    usage["prompt_tokens_details"] = {"cached_tokens": row.get("cached_tokens")}
    usage["extra_properties"] = {"google": {"traffic_type": row.get("traffic_type")}}
    return usage


class PriceBook:
    """The price of each traffic type for one job's model."""

    def __init__(self, prices: dict[str, Price], currency: str) -> None:
        self.prices = prices
        self.currency = currency

    def get(self, traffic_type: str | None) -> Price | None:
        """The price of a traffic type (null: standard), or None when nobody knows it."""
        return self.prices.get(traffic_type or STANDARD)

    def cost(self, usage: dict[str, Any]) -> float | None:
        """What an answer cost, from its usage and traffic type; None when its traffic type has no price."""
        price = self.get(traffic_of(usage))
        return None if price is None else price.cost(*split_usage(usage))

    def missing(self, traffic_types: list[str]) -> list[str]:
        """The traffic types among these that have no price."""
        return [t for t in traffic_types if t not in self.prices]

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every price and its source, for reports."""
        return {
            name: {
                "input": p.input,
                "cached_input": p.cached_input,
                "output": p.output,
                "reasoning": p.reasoning,
                "source": p.source,
            }
            for name, p in sorted(self.prices.items())
        }


def price_book(spec: JobSpec, *, library: bool = True, wanted: list[str] | None = None) -> PriceBook:
    """The job's prices: report.prices first, then (with `library`) genai-prices for the wanted traffic types."""
    prices: dict[str, Price] = {}
    for name, given in spec.report.prices.items():
        reasoning = given.output if given.reasoning is None else given.reasoning
        cached = given.input if given.cached_input is None else given.cached_input
        prices[name] = Price(given.input, cached, given.output, reasoning, "report.prices")
    wanted = [t for t in (wanted or [STANDARD, FLEX, PRIORITY]) if t not in prices and t != PROVISIONED]
    if library and wanted and spec.model and spec.report.currency == "USD":
        prices.update(_library_prices(spec, wanted))
    return PriceBook(prices, spec.report.currency)


def require_cap_prices(spec: JobSpec, book: PriceBook) -> None:
    """limits.max_cost needs a price for every pay-as-you-go traffic type the run may hit (a SpecError if not)."""
    needed = [t for t in may_serve(spec) if t != PROVISIONED or spec.endpoint.provisioned == "only"]
    missing = book.missing(needed)
    if missing:
        example = f"{missing[0]}: {{input: ..., cached_input: ..., output: ...}}"
        raise SpecError(
            f"limits.max_cost needs a price for {', '.join(missing)}, which this run's answers may carry, and "
            f"neither report.prices nor the genai-prices library has one for model {spec.model}: "
            f"add report.prices.{example} (per million tokens, in {spec.report.currency})"
        )


def _library_prices(spec: JobSpec, wanted: list[str]) -> dict[str, Price]:
    """genai-prices' figures for the model (standard, and the Flex/Priority variants it publishes)."""
    try:
        from genai_prices import __version__, data_snapshot  # a second or two to import: only when needed
    except ImportError:  # an environment installed before the dependency was added: the spec's prices only
        return {}

    assert spec.model is not None
    model_ref = spec.model.split("/", 1)[1] if spec.model.startswith("google/") else spec.model
    openai = spec.endpoint.kind == "openai"
    try:
        provider, model = data_snapshot.get_snapshot().find_provider_model(
            model_ref, None, None if openai else "google", spec.endpoint.base_url if openai else None
        )
    except LookupError:
        return {}
    now = datetime.datetime.now(datetime.UTC)
    tiers = {STANDARD: None, FLEX: "flex", PRIORITY: "priority"}
    found: dict[str, Price] = {}
    for traffic in wanted:
        tier = tiers.get(traffic)
        if tier is not None and not any(
            v.when == {"service_tier": tier} and (v.constraint is None or v.constraint.active(now))
            for v in model.price_variants or ()
        ):
            continue  # the library would answer with the standard rate: better no price than a wrong one
        rates = model.get_prices(now, {"service_tier": tier} if tier else None)
        price = _from_rates(rates, f"genai-prices {__version__} ({provider.id} {model.id})")
        if price is not None:
            found[traffic] = price
    return found


def _from_rates(rates: Any, source: str) -> Price | None:
    """A Price from genai-prices' ModelPrice (a tiered rate at its base), or None without input and output rates."""

    def rate(name: str) -> float | None:
        value = getattr(rates, name, None)
        value = getattr(value, "base", value)
        return None if value is None else float(value)

    given, output = rate("input_mtok"), rate("output_mtok")
    if given is None or output is None:
        return None
    cached = rate("cache_read_mtok")
    return Price(given, given if cached is None else cached, output, output, source)
