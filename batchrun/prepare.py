"""A job checked before anything is sent: the spec, the input, the credentials, the first rows rendered, the prices.

`validate` and `estimate` stop here; `run` hands the result to the runner. Nothing is created or sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchrun.endpoints import check as check_endpoint
from batchrun.errors import SpecError
from batchrun.prices import PriceBook, may_serve, price_book, require_cap_prices
from batchrun.prompts import Renderer, RowInputError
from batchrun.shards import Shard
from batchrun.sources import InputSummary, Source
from batchrun.spec import JobSpec


@dataclass(frozen=True)
class Prepared:
    """A validated job: its input summary and the renderer, checked against the first rows."""

    spec: JobSpec
    source: Source
    summary: InputSummary
    renderer: Renderer
    first_request: dict[str, Any] | None
    prices: PriceBook  # report.prices, and genai-prices' when limits.max_cost needs them


def prepare(spec: JobSpec, shard: Shard | None = None) -> Prepared:
    """Validate the spec, the input and then the credentials, and render the first rows; creates and sends nothing."""
    source = Source(spec.input)
    summary = source.summarize(spec.output.keep_columns, shard.owns if shard else None)
    renderer = Renderer(spec, summary.format)
    renderer.check_columns(summary.columns, spec.input.path)
    first: dict[str, Any] | None = None
    checked = 0
    for batch in source.batches(size=64, columns=renderer.columns_needed()):
        for record in batch:
            if record.data is None:
                continue
            try:
                body = renderer.render(record)
            except RowInputError:
                continue
            first = first or body
            checked += 1
        if checked >= 5 or first is not None:
            break
    if first is None and summary.rows > summary.broken:
        raise SpecError(
            f"none of the first rows of {spec.input.path} renders into a request: "
            "check request.prompt placeholders against the input's columns"
        )
    check_endpoint(spec.endpoint)  # after the input: a user fixes the file before the credentials
    return Prepared(spec, source, summary, renderer, first, _run_prices(spec))


def _run_prices(spec: JobSpec) -> PriceBook:
    """The prices a run meters its cost with; with limits.max_cost every traffic type it may hit must have one."""
    if spec.limits.max_cost is None:
        return price_book(spec, library=False)  # genai-prices takes seconds to load: only a cap needs it
    book = price_book(spec, wanted=may_serve(spec))
    require_cap_prices(spec, book)
    return book
