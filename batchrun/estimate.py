"""`batchrun estimate`: what a job will use and cost before anything is sent.

One streamed pass over the input (or its first `--sample N` rows, scaled to the whole) renders every
request as a run would and sizes it (`batchrun.tokens`): the expected prompt tokens, and the bound
on answer and thinking tokens that `max_tokens` and the thinking budget set. The cost is a range per
consumption option the model has a price for: the prompts alone at the low end, every answer at its
bound at the high end. The time is what the configured requests/min or tokens/min allow.
"""

from __future__ import annotations

import math
from typing import Any

from batchrun import tokens
from batchrun.commands import tables
from batchrun.prepare import Prepared
from batchrun.prices import FLEX, PRIORITY, STANDARD, price_book
from batchrun.prompts import RowInputError
from batchrun.sources import BATCH_ROWS

_OPTIONS = {"standard": STANDARD, "flex": FLEX, "priority": PRIORITY}


def estimate_job(prepared: Prepared, sample: int | None = None) -> dict[str, Any]:
    """The estimate as plain data (what `--json` prints); reads the input, sends nothing."""
    spec, summary = prepared.spec, prepared.summary
    read = rendered = unrenderable = prompt = budget = answers = 0
    for batch in prepared.source.batches(size=BATCH_ROWS, columns=prepared.renderer.columns_needed()):
        for record in batch:
            if sample is not None and read >= sample:
                break
            read += 1
            if record.data is None:
                unrenderable += 1
                continue
            try:
                body = prepared.renderer.render(record)
            except RowInputError:
                unrenderable += 1
                continue
            rendered += 1
            prompt += tokens.expected_prompt_tokens(body)
            answers += tokens.answer_bound(body)
            budget += tokens.budget_estimate(body)
        if sample is not None and read >= sample:
            break
    scale = summary.rows / read if read else 0.0
    figures = {"prompt_tokens": round(prompt * scale), "answer_tokens_bound": round(answers * scale)}
    book = price_book(spec)
    options = []
    for option, traffic in _OPTIONS.items():
        price = book.get(traffic)
        entry: dict[str, Any] = {"consumption": option, "traffic_type": traffic, "currency": book.currency}
        if price is None:
            entry.update(low=None, high=None, source=None)
        else:
            low = price.cost(figures["prompt_tokens"], 0, 0, 0)
            entry.update(
                low=round(low, 6),
                high=round(low + price.worst(0, figures["answer_tokens_bound"]), 6),
                source=price.source,
            )
        options.append(entry)
    return {
        "job": spec.name,
        "input": spec.input.path,
        "rows": summary.rows,
        "rows_read": read,
        "sampled": sample is not None and read < summary.rows,
        "unrenderable_rows": round(unrenderable * scale),
        "tokens": {**figures, "per_row_prompt": round(prompt / rendered, 1) if rendered else None},
        "cost": options,
        "time": _time(
            spec.limits.requests_per_minute, spec.limits.tokens_per_minute, round(rendered * scale), budget * scale
        ),
    }


def _time(rpm: float | None, tpm: float | None, requests: int, budget: float) -> dict[str, Any]:
    """Minutes the configured budgets need for these requests (each reserves its tokens/min estimate)."""
    minutes = [m for m in (requests / rpm if rpm else None, budget / tpm if tpm else None) if m is not None]
    if not minutes:
        return {"minutes": None, "limited_by": None}
    limited_by = "requests_per_minute" if rpm and requests / rpm == max(minutes) else "tokens_per_minute"
    return {"minutes": round(max(minutes), 1), "limited_by": limited_by}


def format_estimate(estimate: dict[str, Any]) -> str:
    """The estimate for a terminal."""
    figures = estimate["tokens"]
    how = f"estimated from the first {estimate['rows_read']:,} rows" if estimate["sampled"] else "every row read"
    lines = [
        f"{estimate['job']}: {estimate['rows']:,} rows in {estimate['input']} ({how}; nothing sent)",
        f"prompt tokens: ~{figures['prompt_tokens']:,} (~{figures['per_row_prompt']} a row, 4 characters a token)",
        f"answer and thinking tokens: at most {figures['answer_tokens_bound']:,} (max_tokens and the thinking budget)",
    ]
    if estimate["unrenderable_rows"]:
        lines.append(f"rows that render into no request (input error rows): {estimate['unrenderable_rows']:,}")
    rows = [
        [
            o["consumption"],
            o["traffic_type"],
            _money(o["low"]),
            _money(o["high"]),
            o["source"] or "no price: set report.prices." + o["traffic_type"],
        ]
        for o in estimate["cost"]
    ]
    currency = estimate["cost"][0]["currency"]
    lines.append(
        tables.render(
            f"cost ({currency}): prompts only .. every answer at its bound",
            ["consumption", "traffic_type", "low", "high", "price from"],
            rows,
        )
    )
    time = estimate["time"]
    if time["minutes"] is None:
        lines.append("time: no requests_per_minute or tokens_per_minute set; the pace follows the endpoint's 429s")
    else:
        hours = time["minutes"] / 60
        lines.append(f"time: at least {time['minutes']:,} minutes ({hours:.1f} h) at limits.{time['limited_by']}")
    return "\n".join(lines)


def _money(value: float | None) -> str | None:
    """A cost to four decimals, or nothing."""
    return None if value is None else f"{value:,.4f}" if value < 1000 else f"{math.ceil(value):,}"
