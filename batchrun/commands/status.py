"""Done / changed / pending / gone counts of a job, per shard, from its output compared with its input."""

from __future__ import annotations

import os
from typing import Any

import polars as pl

from batchrun.commands import tables
from batchrun.rerun import compare, job_record, kept_for
from batchrun.saved import SavedOutput
from batchrun.shards import Shard, owner, shard_of_part
from batchrun.sources import Source
from batchrun.spec import JobSpec

_COUNTS = ("rows", "ok", "error", "changed", "pending", "gone")


def shard_count(parts: list[str], requested: int | None) -> int:
    """How many tasks to split the counts into: --shards, else the latest execution's task count (from the
    part names, whose run stamps sort by time), else CLOUD_RUN_TASK_COUNT, else 1."""
    if requested is not None:
        return requested
    named = [
        (os.path.basename(part).split("-", 2)[-1], shard.count)
        for part, shard in ((part, shard_of_part(os.path.basename(part))) for part in parts)
        if shard is not None
    ]
    if named:
        return max(named)[1]
    env = os.environ.get("CLOUD_RUN_TASK_COUNT", "")
    return int(env) if env.isdigit() and int(env) > 0 else 1


def job_status(spec: JobSpec, shards: int | None = None) -> dict[str, Any]:
    """Counts over every shard's parts and the input: done (ok, error), changed, pending and gone rows, per shard."""
    saved = SavedOutput(spec.output.path)
    comparison = compare(spec, saved, Shard())
    parts = comparison.parts
    count = shard_count(parts, shards)
    frame = comparison.rows.with_columns(
        pl.col("id").map_elements(lambda rid: owner(rid, count), return_dtype=pl.Int64).alias("shard")
    )
    state, status = pl.col("state"), pl.col("status")
    per_shard = (
        frame.group_by("shard")
        .agg(
            pl.col("in_input").sum().alias("rows"),
            ((state == "done") & (status == "ok")).sum().alias("ok"),
            ((state == "done") & (status == "error")).sum().alias("error"),
            (state == "changed").sum().alias("changed"),
            (state == "pending").sum().alias("pending"),
            (state == "gone").sum().alias("gone"),
        )
        .sort("shard")
    )
    part_counts: dict[int, int] = {}
    other_counts: dict[int, int] = {}
    for shard in (shard_of_part(os.path.basename(part)) for part in parts):
        if shard is not None and shard.count == count:
            part_counts[shard.index] = part_counts.get(shard.index, 0) + 1
        elif shard is not None:
            other_counts[shard.count] = other_counts.get(shard.count, 0) + 1
    by_shard = {row["shard"]: row for row in per_shard.iter_rows(named=True)}
    shard_rows: list[dict[str, Any]] = []
    for index in range(count):
        row = by_shard.get(index, dict.fromkeys(_COUNTS, 0))
        figures = {name: int(row[name]) for name in _COUNTS}
        shard_rows.append(
            {
                "shard": f"{index}/{count}",
                "rows": figures["rows"],
                "done": figures["ok"] + figures["error"],
                **figures,
                "parts": part_counts.get(index, 0),
            }
        )
    totals = {name: sum(r[name] for r in shard_rows) for name in _COUNTS}
    stored = saved.table(["id"], parts)
    kept = bool(totals["changed"]) and kept_for(saved.meta(), job_record(spec, Source(spec.input).identity()))
    return {
        "job": spec.name,
        "output": spec.output.path,
        **totals,
        "done": totals["ok"] + totals["error"],
        "kept": kept,
        "unhashed": int((frame.get_column("status").is_not_null() & frame.get_column("request_hash").is_null()).sum()),
        "duplicates": len(stored) - stored.get_column("id").n_unique(),
        "parts": len(parts),
        "parts_of_other_task_counts": {str(tasks): n for tasks, n in sorted(other_counts.items())},
        "shards": shard_rows,
    }


def format_status(figures: dict[str, Any]) -> str:
    """The status as a line of totals and a table per shard."""
    head = (
        f"{figures['job']}: {figures['done']:,} done ({figures['ok']:,} ok, {figures['error']:,} error), "
        f"{figures['changed']:,} changed, {figures['pending']:,} pending of {figures['rows']:,} rows, "
        f"{figures['gone']:,} gone, in {figures['parts']:,} part files"
    )
    warnings = []
    if figures["changed"] and figures["kept"]:
        warnings.append(
            f"{figures['changed']} saved rows answer a request that changed since, kept as `run --keep` asked for "
            "this spec: `run --refresh` sends them again"
        )
    elif figures["changed"]:
        warnings.append(
            f"{figures['changed']} saved rows answer a request that changed since: "
            "`run --refresh` sends them again, `run --keep` keeps them"
        )
    if figures["gone"]:
        warnings.append(f"{figures['gone']} saved rows have ids no longer in the input: the next run removes them")
    if figures["unhashed"]:
        warnings.append(f"{figures['unhashed']} saved rows predate request_hash: they count as done, unchecked")
    if figures["duplicates"]:
        warnings.append(f"warning: {figures['duplicates']} ids appear more than once in the output")
    others = figures["parts_of_other_task_counts"]
    if others:
        written = ", ".join(f"{n} by {tasks} tasks" for tasks, n in others.items())
        warnings.append(
            f"note: the rows are split as {len(figures['shards'])} tasks own them (the latest execution); "
            f"part files written under other task counts ({written}) hold rows of several of these shards and "
            "are counted in each row's shard but not in the parts column; --shards N splits another way"
        )
    headers = ["shard", "rows", "done", "ok", "error", "changed", "pending", "gone", "parts"]
    table = tables.render("per shard:", headers, [[row[h] for h in headers] for row in figures["shards"]])
    return "\n".join([head, *warnings, "", table])
