"""Done / error / pending counts of a job, per shard, read from its output and its input."""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from batchrun import tables
from batchrun.saved import SavedOutput
from batchrun.shards import owner, shard_of_part
from batchrun.sources import Source
from batchrun.spec import JobSpec


def input_ids(spec: JobSpec) -> pl.Series:
    """Every id of the input, in file order, as a run assigns them (unreadable lines included)."""
    ids: list[str] = []
    for batch in Source(spec.input).batches():
        ids.extend(record.id for record in batch)
    return pl.Series("id", ids, dtype=pl.String)


def shard_count(parts: list[str], requested: int | None) -> int:
    """How many tasks to split the counts into: --shards, else the part names, else CLOUD_RUN_TASK_COUNT."""
    if requested is not None:
        return requested
    counts = {shard.count for shard in map(shard_of_part, parts) if shard is not None}
    if len(counts) == 1:
        return counts.pop()
    env = os.environ.get("CLOUD_RUN_TASK_COUNT", "")
    return int(env) if env.isdigit() and int(env) > 0 else 1


def job_status(spec: JobSpec, shards: int | None = None) -> dict[str, Any]:
    """Counts over every shard's parts: rows in the input, ok, error, done, pending, and the same per shard."""
    output = SavedOutput(spec.output.path)
    parts = output.parts()
    saved = output.table(["id", "status"], parts)
    count = shard_count(parts, shards)
    ids = input_ids(spec)
    frame = (
        pl.DataFrame({"id": ids})
        .join(saved.unique("id", keep="last"), on="id", how="left")
        .with_columns(pl.col("id").map_elements(lambda rid: owner(rid, count), return_dtype=pl.Int64).alias("shard"))
    )
    per_shard = (
        frame.group_by("shard")
        .agg(
            pl.len().alias("rows"),
            (pl.col("status") == "ok").sum().alias("ok"),
            (pl.col("status") == "error").sum().alias("error"),
            pl.col("status").is_null().sum().alias("pending"),
        )
        .sort("shard")
    )
    part_counts: dict[int, int] = {}
    for shard in map(shard_of_part, parts):
        if shard is not None and shard.count == count:
            part_counts[shard.index] = part_counts.get(shard.index, 0) + 1
    by_shard = {row["shard"]: row for row in per_shard.iter_rows(named=True)}
    shard_rows: list[dict[str, Any]] = []
    for index in range(count):
        row = by_shard.get(index, {"rows": 0, "ok": 0, "error": 0, "pending": 0})
        shard_rows.append(
            {
                "shard": f"{index}/{count}",
                "rows": int(row["rows"]),
                "done": int(row["ok"]) + int(row["error"]),
                "ok": int(row["ok"]),
                "error": int(row["error"]),
                "pending": int(row["pending"]),
                "parts": part_counts.get(index, 0),
            }
        )
    ok = sum(r["ok"] for r in shard_rows)
    error = sum(r["error"] for r in shard_rows)
    return {
        "job": spec.name,
        "output": spec.output.path,
        "rows": len(ids),
        "done": ok + error,
        "ok": ok,
        "error": error,
        "pending": sum(r["pending"] for r in shard_rows),
        "duplicates": len(saved) - saved.get_column("id").n_unique(),
        "not_in_input": int((~saved.get_column("id").is_in(ids.implode())).sum()),
        "parts": len(parts),
        "shards": shard_rows,
    }


def format_status(figures: dict[str, Any]) -> str:
    """The status as a line of totals and a table per shard."""
    head = (
        f"{figures['job']}: {figures['done']:,} done ({figures['ok']:,} ok, {figures['error']:,} error), "
        f"{figures['pending']:,} pending of {figures['rows']:,} rows in {figures['parts']:,} part files"
    )
    warnings = []
    if figures["duplicates"]:
        warnings.append(f"warning: {figures['duplicates']} ids appear more than once in the output")
    if figures["not_in_input"]:
        warnings.append(f"warning: {figures['not_in_input']} saved rows have ids that are not in the input")
    headers = ["shard", "rows", "done", "ok", "error", "pending", "parts"]
    table = tables.render("per shard:", headers, [[row[h] for h in headers] for row in figures["shards"]])
    return "\n".join([head, *warnings, "", table])
