"""What a job's output says for analysts: tokens and cost by traffic type, errors, latency, throughput.

Every figure is computed from the saved rows alone, so `report --json` totals are exactly the sums a
query over the Parquet files gives. Cost is priced per million tokens (`batchrun.prices`: the spec's
`report.prices`, else genai-prices' published rates, each named with its source): input tokens at
`input`, cached prompt tokens at `cached_input`, answer tokens at `output`, thinking tokens at
`reasoning` (default: `output`, as Vertex bills them). Vertex counts thinking apart from `completion_tokens`
(total = prompt + completion + reasoning); OpenAI counts it inside, and such rows are recognised by
their total and not charged twice. A row without `completion_tokens` (a cut-off Vertex answer) is
charged for what its total leaves over.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from batchrun.commands import tables
from batchrun.prices import Price, PriceBook, price_book
from batchrun.saved import SavedOutput, live
from batchrun.sources import Source
from batchrun.spec import JobSpec

_TOKENS = ["prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"]
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def build_report(spec: JobSpec, frame: pl.DataFrame | None = None) -> dict[str, Any]:
    """The whole report as plain data (what `--json` prints), over the live rows (ids in the input now)."""
    if frame is None:
        frame = live(SavedOutput(spec.output.path).table(), Source(spec.input).ids())
    frame = _billable(frame)
    book = price_book(spec, wanted=_traffic_types(frame))
    report: dict[str, Any] = {
        "job": spec.name,
        "output": spec.output.path,
        "rows": {
            "total": len(frame),
            "ok": int((frame.get_column("status") == "ok").sum()),
            "error": int((frame.get_column("status") == "error").sum()),
        },
        "requests": _int(frame.get_column("attempts").sum()),
        "tokens": {name: _int(frame.get_column(name).sum()) for name in _TOKENS},
        "by_traffic_type": _by_traffic_type(frame, book),
        "errors": _errors(frame),
        "latency_ms": _latency(frame),
        "per_minute": _per_minute(frame),
    }
    if book.prices:
        report["cost"] = _cost(frame, book)
    return report


def _traffic_types(frame: pl.DataFrame) -> list[str]:
    """The traffic types the saved rows carry (null: standard)."""
    return sorted({t or "ON_DEMAND" for t in frame.get_column("traffic_type").unique().to_list()})


def cost_of(frame: pl.DataFrame, spec: JobSpec) -> dict[str, Any] | None:
    """What the saved rows in `frame` cost at the spec's prices (a rerun's estimate), or None without prices."""
    if "traffic_type" not in frame.columns:
        return None
    book = price_book(spec, wanted=_traffic_types(frame))
    return _cost(_billable(frame), book) if book.prices else None


def _int(value: Any) -> int:
    """A sum as an int (a sum over no rows is 0, not null)."""
    return int(value or 0)


def _billable(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the token counts each price applies to.

    A cut-off answer may lack `completion_tokens` (Vertex omits it); its answer tokens are then what
    the total leaves over. Other null counts are zero.
    """
    if "cached_tokens" not in frame.columns:  # parts written before the column existed
        frame = frame.with_columns(pl.lit(None, dtype=pl.Int64).alias("cached_tokens"))
    prompt, reasoning, total = (
        pl.col(name).fill_null(0) for name in ("prompt_tokens", "reasoning_tokens", "total_tokens")
    )
    cached = pl.min_horizontal(pl.col("cached_tokens").fill_null(0), prompt)
    completion = pl.col("completion_tokens").fill_null(pl.max_horizontal(total - prompt - reasoning, 0))
    reasoning_inside = (reasoning > 0) & (total == prompt + completion)
    return frame.with_columns(
        (prompt - cached).alias("_input"),
        cached.alias("_cached"),
        pl.when(reasoning_inside).then(completion - reasoning).otherwise(completion).alias("_output"),
        reasoning.alias("_reasoning"),
    )


def _group_cost(row: dict[str, Any], price: Price | None) -> float | None:
    """A traffic type's cost from its summed billable tokens, or None when it has no price."""
    if price is None:
        return None
    prompt = row["_input"] + row["_cached"]
    return round(price.cost(prompt, row["_cached"], row["_output"], row["_reasoning"]), 6)


def _by_traffic_type(frame: pl.DataFrame, book: PriceBook) -> list[dict[str, Any]]:
    """Rows and tokens per traffic_type (null for rows without usage), with their cost when priced."""
    grouped = (
        frame.group_by("traffic_type")
        .agg(
            pl.len().alias("rows"),
            *(pl.col(name).sum().alias(name) for name in _TOKENS),
            pl.col("cached_tokens").sum(),
            pl.col("_input").sum(),
            pl.col("_cached").sum(),
            pl.col("_output").sum(),
            pl.col("_reasoning").sum(),
        )
        .sort("total_tokens", "traffic_type", descending=[True, False], nulls_last=True)
    )
    result = []
    for row in grouped.iter_rows(named=True):
        entry: dict[str, Any] = {"traffic_type": row["traffic_type"], "rows": int(row["rows"])}
        entry.update({name: _int(row[name]) for name in [*_TOKENS, "cached_tokens"]})
        if book.prices:
            entry["cost"] = _group_cost(row, book.get(row["traffic_type"]))
        result.append(entry)
    return result


def _cost(frame: pl.DataFrame, book: PriceBook) -> dict[str, Any]:
    """Total cost, the prices used and where each came from, and the rows that used tokens but have no price."""
    groups = _by_traffic_type(frame, book)
    unpriced = [g for g in groups if g["cost"] is None and g["total_tokens"] > 0]
    return {
        "currency": book.currency,
        "total": round(float(sum(g["cost"] or 0.0 for g in groups)), 6),
        "prices": book.describe(),
        "unpriced_traffic_types": [g["traffic_type"] for g in unpriced],
        "unpriced_rows": sum(g["rows"] for g in unpriced),
    }


def _errors(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Error rows counted by error_type and HTTP status, most frequent first."""
    errors = frame.filter(pl.col("status") == "error")
    grouped = (
        errors.group_by("error_type", "http_status")
        .agg(pl.len().alias("rows"), pl.col("error_message").first().alias("example"))
        .sort(["rows", "error_type", "http_status"], descending=[True, False, False], nulls_last=True)
    )
    return [
        {
            "error_type": row["error_type"],
            "http_status": row["http_status"],
            "rows": int(row["rows"]),
            "example": row["example"],
        }
        for row in grouped.iter_rows(named=True)
    ]


def _latency(frame: pl.DataFrame) -> dict[str, Any]:
    """Latency of ok rows' successful attempts: linear-interpolated percentiles, as DuckDB's quantile_cont."""
    latency = frame.filter(pl.col("status") == "ok").select(pl.col("latency_ms").drop_nulls().cast(pl.Float64))
    column = pl.col("latency_ms")
    stats = latency.select(
        *(column.quantile(q, interpolation="linear").alias(name) for name, q in _QUANTILES.items()),
        column.mean().alias("mean"),
        column.max().alias("max"),
    ).row(0, named=True)
    return {"rows": len(latency), **{k: None if v is None else round(float(v), 3) for k, v in stats.items()}}


def _per_minute(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows, requests (attempts) and tokens per minute of finished_at, UTC, oldest first."""
    timed = frame.filter(pl.col("finished_at").is_not_null())
    grouped = (
        timed.group_by(pl.col("finished_at").dt.truncate("1m").alias("minute"))
        .agg(
            pl.len().alias("rows"),
            pl.col("attempts").sum().alias("requests"),
            pl.col("total_tokens").sum().alias("tokens"),
        )
        .sort("minute")
    )
    return [
        {
            "minute": row["minute"].isoformat(),
            "rows": int(row["rows"]),
            "requests": _int(row["requests"]),
            "tokens": _int(row["tokens"]),
        }
        for row in grouped.iter_rows(named=True)
    ]


def _money(value: float | None) -> str | None:
    """A cost to four decimals: a batch of short prompts costs fractions of a cent."""
    return None if value is None else f"{value:,.4f}"


def _clip(text: str | None, width: int = 70) -> str | None:
    """A long error message cut to fit a table row."""
    if text is None or len(text) <= width:
        return text
    return text[: width - 3] + "..."


def format_report(report: dict[str, Any]) -> str:
    """The report as terminal tables."""
    rows, tokens = report["rows"], report["tokens"]
    sections = [
        f"{report['job']}: {rows['total']:,} rows saved ({rows['ok']:,} ok, {rows['error']:,} error), "
        f"{report['requests']:,} requests, {tokens['total_tokens']:,} tokens"
    ]
    priced = "cost" in report
    headers = ["traffic_type", "rows", *_TOKENS, "cached_tokens", *(["cost"] if priced else [])]
    groups = [[_money(g[h]) if h == "cost" else g[h] for h in headers] for g in report["by_traffic_type"]]
    sections.append(tables.render("tokens by traffic_type:", headers, groups))
    if priced:
        cost = report["cost"]
        line = f"total cost: {cost['total']:,.4f} {cost['currency']}"
        if cost["unpriced_traffic_types"]:
            missing = ", ".join(str(t) for t in cost["unpriced_traffic_types"])
            line += f" (no price for: {missing}, {cost['unpriced_rows']:,} rows; set report.prices.<TRAFFIC_TYPE>)"
        sections.append(line)
        headers = ["traffic_type", "input", "cached_input", "output", "reasoning", "source"]
        prices = [[name, *(p[h] for h in headers[1:])] for name, p in cost["prices"].items()]
        sections.append(tables.render(f"prices ({cost['currency']} per million tokens):", headers, prices))
    headers = ["error_type", "http_status", "rows", "example"]
    errors = [[e["error_type"], e["http_status"], e["rows"], _clip(e["example"])] for e in report["errors"]]
    sections.append(tables.render("errors:", headers, errors))
    latency = report["latency_ms"]
    headers = ["rows", "p50", "p90", "p99", "mean", "max"]
    sections.append(tables.render("latency (ms, ok rows):", headers, [[latency[h] for h in headers]]))
    headers = ["minute", "rows", "requests", "tokens"]
    sections.append(
        tables.render("per minute (UTC):", headers, [[m[h] for h in headers] for m in report["per_minute"]])
    )
    return "\n\n".join(sections)
