"""One compacted Parquet file from a job's many part files, optionally joined back to the input's columns.

Part files are what makes a run resumable; analysts and warehouses prefer one file. The export holds
one row per saved id still in the input, sorted by id, with the output table's columns (and with
`join_input`, every input column the output does not already carry; a name the output uses is prefixed `input_`).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun import storage
from batchrun.errors import OutputError
from batchrun.saved import SavedOutput, encode, live
from batchrun.sources import Source
from batchrun.spec import JobSpec


def export_job(spec: JobSpec, destination: str, *, join_input: bool = False) -> dict[str, Any]:
    """Write the compacted file to `destination` (a local path or gs:// URI) and say what it holds."""
    if not destination.lower().endswith(".parquet"):
        raise OutputError(f"{destination}: the export is a Parquet file; give a name ending in .parquet")
    output = SavedOutput(spec.output.path)
    parts = output.parts()
    if not parts:
        raise OutputError(f"{spec.output.path}: no saved rows yet; run the job first (batchrun run)")
    table = live(output.table(parts=parts), Source(spec.input).ids())
    duplicates = table.num_rows - len(pc.unique(table["id"]))
    if duplicates:
        table = _latest(table)
    if join_input:
        table = _joined(table, input_table(spec, table.column_names))
    table = table.sort_by("id")
    try:
        storage.write_once(destination, encode(table))
    except OSError as exc:
        raise OutputError(f"{destination}: cannot write the export ({exc.strerror or exc})") from exc
    return {
        "path": destination,
        "rows": table.num_rows,
        "parts": len(parts),
        "duplicates_dropped": duplicates,
        "columns": table.column_names,
    }


def _latest(table: pa.Table) -> pa.Table:
    """One row per id: the one finished last (a row with no finished_at counts as the oldest)."""
    finished = pa.table({"timed": pc.is_valid(table["finished_at"]), "at": table["finished_at"]})
    ordered = table.take(pc.sort_indices(finished, sort_keys=[("timed", "ascending"), ("at", "ascending")]))
    places = pa.table({"id": ordered["id"], "at": pa.array(range(ordered.num_rows), pa.int64())})
    last = places.group_by("id", use_threads=False).aggregate([("at", "max")])["at_max"]
    return ordered.take(last)


def _joined(table: pa.Table, inputs: pa.Table) -> pa.Table:
    """`table` with each row's input columns beside it (null for an id the input lacks)."""
    at = pc.index_in(table["id"], value_set=inputs["id"])
    rows = inputs.take(at)
    for name in rows.column_names[1:]:
        table = table.append_column(name, rows[name])
    return table


def input_table(spec: JobSpec, taken: list[str]) -> pa.Table:
    """The input's columns keyed by the run's ids; Parquet keeps its types, JSONL values are inferred (a
    column whose values Arrow cannot hold as one type keeps each value's JSON text)."""
    source = Source(spec.input)
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    for batch in source.batches():
        for record in batch:
            ids.append(record.id)
            rows.append(record.data or {})
    if source.kind == "parquet":
        data = storage.read_parquet(source.path)
        columns = {name: data[name] for name in data.column_names}
    else:
        names = list(dict.fromkeys(name for row in rows for name in row))
        columns = {name: _inferred([row.get(name) for row in rows]) for name in names}
    skip = {*spec.output.keep_columns, *(["id"] if spec.input.id_column == "id" else [])}
    renamed = {
        f"input_{name}" if name in taken else name: column for name, column in columns.items() if name not in skip
    }
    return pa.table({"id": pa.array(ids, pa.string()), **renamed})


def _inferred(values: list[Any]) -> pa.Array:
    """JSON values as one Arrow column of their common type, else as their JSON text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if value is None else json.dumps(value) for value in values], pa.string())
