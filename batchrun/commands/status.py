"""Done / changed / pending / gone counts of a job, per shard, from its output compared with its input."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from batchrun.commands import tables
from batchrun.comparison import DONE, GONE, STATES, Comparison, compare
from batchrun.rerun import job_record, kept_for
from batchrun.saved import SavedOutput
from batchrun.shards import Shard, owner, shard_of_part
from batchrun.sources import Source
from batchrun.spec import JobSpec

_COUNTS = ("rows", "ok", "error", "changed", "pending", "gone")
_NAMES = {code: name for name, code in STATES.items()}
_SLICE = 65_536  # ids made into Python str at once


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
    counts = _per_shard(comparison, count)
    part_counts: dict[int, int] = {}
    other_counts: dict[int, int] = {}
    for shard in (shard_of_part(os.path.basename(part)) for part in parts):
        if shard is not None and shard.count == count:
            part_counts[shard.index] = part_counts.get(shard.index, 0) + 1
        elif shard is not None:
            other_counts[shard.count] = other_counts.get(shard.count, 0) + 1
    shard_rows: list[dict[str, Any]] = []
    for index in range(count):
        figures = {name: counts[index][name] for name in _COUNTS}
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
    kept = bool(totals["changed"]) and kept_for(saved.meta(), job_record(spec, Source(spec.input).identity()))
    return {
        "job": spec.name,
        "output": spec.output.path,
        **totals,
        "done": totals["ok"] + totals["error"],
        "kept": kept,
        "unhashed": comparison.saved["request_hash"].null_count,
        "duplicates": comparison.index.repeated,
        "parts": len(parts),
        "parts_of_other_task_counts": {str(tasks): n for tasks, n in sorted(other_counts.items())},
        "shards": shard_rows,
    }


def _per_shard(comparison: Comparison, count: int) -> list[Counter[str]]:
    """Each shard's counts of input rows and of ok, error, changed, pending and gone ids, a slice of ids at a time."""
    counts = [Counter[str]() for _ in range(count)]
    saved = comparison.saved
    for start in range(0, saved.num_rows, _SLICE):
        rows = saved.slice(start, _SLICE)
        for rid, state, ok in zip(
            rows["id"].to_pylist(), rows["state"].to_pylist(), rows["ok"].to_pylist(), strict=True
        ):
            figures = counts[owner(rid, count)]
            figures["rows"] += state != GONE
            figures[("ok" if ok else "error") if state == DONE else _NAMES[state]] += 1
    for start in range(0, len(comparison.pending), _SLICE):
        for rid in comparison.pending.slice(start, _SLICE).to_pylist():
            figures = counts[owner(rid, count)]
            figures["rows"] += 1
            figures["pending"] += 1
    return counts


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
