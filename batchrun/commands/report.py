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

import pyarrow as pa
import pyarrow.compute as pc

from batchrun.commands import tables
from batchrun.prices import Price, PriceBook, price_book
from batchrun.saved import SavedOutput, live
from batchrun.sources import Source
from batchrun.spec import JobSpec

_TOKENS = ["prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens"]
_BILLED = ["_input", "_cached", "_output", "_reasoning"]
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
_SUM = pc.ScalarAggregateOptions(min_count=0)  # a sum over no values (or only nulls) is 0, as in SQL's coalesce


def build_report(spec: JobSpec, table: pa.Table | None = None) -> dict[str, Any]:
    """The whole report as plain data (what `--json` prints), over the live rows (ids in the input now)."""
    if table is None:
        table = live(SavedOutput(spec.output.path).table(), Source(spec.input).ids())
    table = _billable(table)
    book = price_book(spec, wanted=_traffic_types(table))
    status = table["status"]
    report: dict[str, Any] = {
        "job": spec.name,
        "output": spec.output.path,
        "rows": {
            "total": table.num_rows,
            "ok": _sum(pc.equal(status, "ok")),
            "error": _sum(pc.equal(status, "error")),
        },
        "requests": _sum(table["attempts"]),
        "tokens": {name: _sum(table[name]) for name in _TOKENS},
        "by_traffic_type": _by_traffic_type(table, book),
        "errors": _errors(table),
        "latency_ms": _latency(table),
        "per_minute": _per_minute(table),
    }
    if book.prices:
        report["cost"] = _cost(table, book)
    return report


def _traffic_types(table: pa.Table) -> list[str]:
    """The traffic types the saved rows carry (null: standard)."""
    return sorted({t or "ON_DEMAND" for t in pc.unique(table["traffic_type"]).to_pylist()})


def cost_of(table: pa.Table, spec: JobSpec) -> dict[str, Any] | None:
    """What the saved rows in `table` cost at the spec's prices (a rerun's estimate), or None without prices."""
    if "traffic_type" not in table.column_names:
        return None
    book = price_book(spec, wanted=_traffic_types(table))
    return _cost(_billable(table), book) if book.prices else None


def _sum(column: pa.ChunkedArray | pa.Array) -> int:
    """A column's sum as an int (a sum over no rows is 0, not null; a boolean's: how many rows it holds for)."""
    return int(pc.sum(column, options=_SUM).as_py() or 0)


def _int(value: Any) -> int:
    """A summed value as an int (null is 0)."""
    return int(value or 0)


def _billable(table: pa.Table) -> pa.Table:
    """Add the token counts each price applies to.

    A cut-off answer may lack `completion_tokens` (Vertex omits it); its answer tokens are then what
    the total leaves over. Other null counts are zero.
    """
    if "cached_tokens" not in table.column_names:  # parts written before the column existed
        table = table.append_column("cached_tokens", pa.nulls(table.num_rows, pa.int64()))

    def tokens(name: str) -> pa.ChunkedArray:
        return pc.fill_null(table[name].cast(pa.int64()), 0)

    prompt, reasoning, total = tokens("prompt_tokens"), tokens("reasoning_tokens"), tokens("total_tokens")
    cached = pc.min_element_wise(tokens("cached_tokens"), prompt)
    left_over = pc.max_element_wise(pc.subtract(pc.subtract(total, prompt), reasoning), 0)
    completion = pc.coalesce(table["completion_tokens"].cast(pa.int64()), left_over)
    reasoning_inside = pc.and_(pc.greater(reasoning, 0), pc.equal(total, pc.add(prompt, completion)))
    output = pc.if_else(reasoning_inside, pc.subtract(completion, reasoning), completion)
    for name, column in zip(_BILLED, [pc.subtract(prompt, cached), cached, output, reasoning], strict=True):
        table = table.append_column(name, column)
    return table


def _group_cost(row: dict[str, Any], price: Price | None) -> float | None:
    """A traffic type's cost from its summed billable tokens, or None when it has no price."""
    if price is None:
        return None
    prompt = row["_input"] + row["_cached"]
    return round(price.cost(prompt, row["_cached"], row["_output"], row["_reasoning"]), 6)


def _grouped(table: pa.Table, keys: list[str], sums: list[str], **more: tuple[str, str]) -> list[dict[str, Any]]:
    """Rows per group of `keys` (nulls a group of their own), with `rows`, each of `sums` summed, and `more`
    (name: (column, aggregation))."""
    aggregations: list[tuple[Any, ...]] = [([], "count_all"), *((name, "sum", _SUM) for name in sums)]
    aggregations += more.values()
    grouped = table.group_by(keys, use_threads=False).aggregate(aggregations)
    names = {"count_all": "rows", **{f"{name}_sum": name for name in sums}}
    names |= {f"{column}_{how}": name for name, (column, how) in more.items()}
    rows: list[dict[str, Any]] = grouped.rename_columns([names.get(n, n) for n in grouped.column_names]).to_pylist()
    return rows


def _by_traffic_type(table: pa.Table, book: PriceBook) -> list[dict[str, Any]]:
    """Rows and tokens per traffic_type (null for rows without usage), with their cost when priced."""
    groups = _grouped(table, ["traffic_type"], [*_TOKENS, "cached_tokens", *_BILLED])
    groups.sort(key=lambda g: (-_int(g["total_tokens"]), g["traffic_type"] is None, g["traffic_type"] or ""))
    result = []
    for row in groups:
        entry: dict[str, Any] = {"traffic_type": row["traffic_type"], "rows": int(row["rows"])}
        entry.update({name: _int(row[name]) for name in [*_TOKENS, "cached_tokens"]})
        if book.prices:
            entry["cost"] = _group_cost({name: _int(row[name]) for name in _BILLED}, book.get(row["traffic_type"]))
        result.append(entry)
    return result


def _cost(table: pa.Table, book: PriceBook) -> dict[str, Any]:
    """Total cost, the prices used and where each came from, and the rows that used tokens but have no price."""
    groups = _by_traffic_type(table, book)
    unpriced = [g for g in groups if g["cost"] is None and g["total_tokens"] > 0]
    return {
        "currency": book.currency,
        "total": round(float(sum(g["cost"] or 0.0 for g in groups)), 6),
        "prices": book.describe(),
        "unpriced_traffic_types": [g["traffic_type"] for g in unpriced],
        "unpriced_rows": sum(g["rows"] for g in unpriced),
    }


def _errors(table: pa.Table) -> list[dict[str, Any]]:
    """Error rows counted by error_type and HTTP status, most frequent first."""
    errors = table.filter(pc.equal(table["status"], "error"))
    groups = _grouped(errors, ["error_type", "http_status"], [], example=("error_message", "first"))
    groups.sort(
        key=lambda g: (
            -g["rows"],
            g["error_type"] is None,
            g["error_type"] or "",
            g["http_status"] is None,
            g["http_status"] or 0,
        )
    )
    return [
        {
            "error_type": g["error_type"],
            "http_status": g["http_status"],
            "rows": int(g["rows"]),
            "example": g["example"],
        }
        for g in groups
    ]


def _latency(table: pa.Table) -> dict[str, Any]:
    """Latency of ok rows' successful attempts: linear-interpolated percentiles, as DuckDB's quantile_cont."""
    ok = table.filter(pc.equal(table["status"], "ok"))
    latency = pc.drop_null(ok["latency_ms"]).cast(pa.float64())
    if not len(latency):
        return {"rows": 0, **dict.fromkeys([*_QUANTILES, "mean", "max"])}
    quantiles = pc.quantile(latency, q=list(_QUANTILES.values()), interpolation="linear").to_pylist()
    stats = dict(zip(_QUANTILES, quantiles, strict=True))
    stats |= {"mean": pc.mean(latency).as_py(), "max": pc.max(latency).as_py()}
    return {"rows": len(latency), **{k: None if v is None else round(float(v), 3) for k, v in stats.items()}}


def _per_minute(table: pa.Table) -> list[dict[str, Any]]:
    """Rows, requests (attempts) and tokens per minute of finished_at, UTC, oldest first."""
    timed = table.filter(pc.is_valid(table["finished_at"]))
    minutes = pa.table(
        {
            "minute": pc.floor_temporal(timed["finished_at"], unit="minute"),
            "requests": timed["attempts"],
            "tokens": timed["total_tokens"],
        }
    )
    groups = sorted(_grouped(minutes, ["minute"], ["requests", "tokens"]), key=lambda g: g["minute"])
    return [
        {
            "minute": g["minute"].isoformat(),
            "rows": int(g["rows"]),
            "requests": _int(g["requests"]),
            "tokens": _int(g["tokens"]),
        }
        for g in groups
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
