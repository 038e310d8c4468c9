"""Done / error / pending counts of a job, read from its output and its input."""

from __future__ import annotations

from typing import Any

from batchrun.sink import Output
from batchrun.sources import Source
from batchrun.spec import JobSpec


def job_status(spec: JobSpec) -> dict[str, Any]:
    """Counts over every shard's parts: rows in the input, ok, error, done, pending."""
    rows = Source(spec.input).summarize([]).rows
    output = Output(spec.output.path, shard_tag="")
    table = output.table(["id", "status"])
    ok = int((table.get_column("status") == "ok").sum()) if len(table) else 0
    error = len(table) - ok
    return {
        "job": spec.name,
        "rows": rows,
        "done": len(table),
        "ok": ok,
        "error": error,
        "pending": max(rows - len(table), 0),
        "parts": len(output.parts()),
    }
