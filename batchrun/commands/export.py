"""One compacted Parquet file from a job's many part files, optionally joined back to the input's columns.

Part files are what makes a run resumable; analysts and warehouses prefer one file. The export holds
one row per saved id still in the input, sorted by id, with the output table's columns (and with
`join_input`, every input column the output does not already carry; a name the output uses is prefixed `input_`).
"""

from __future__ import annotations

import io
from typing import Any

import polars as pl

from batchrun import storage
from batchrun.errors import OutputError
from batchrun.saved import SavedOutput, live
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
    frame = live(output.table(parts=parts), Source(spec.input).ids())
    duplicates = len(frame) - frame.get_column("id").n_unique()
    if duplicates:
        frame = frame.sort("finished_at", nulls_last=False).unique("id", keep="last")
    if join_input:
        frame = frame.join(input_frame(spec, frame.columns), on="id", how="left")
    frame = frame.sort("id")
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="zstd")
    try:
        storage.write_once(destination, buffer.getvalue())
    except OSError as exc:
        raise OutputError(f"{destination}: cannot write the export ({exc.strerror or exc})") from exc
    return {
        "path": destination,
        "rows": len(frame),
        "parts": len(parts),
        "duplicates_dropped": duplicates,
        "columns": frame.columns,
    }


def input_frame(spec: JobSpec, taken: list[str]) -> pl.DataFrame:
    """The input's columns keyed by the run's ids; Parquet keeps its types, JSONL values are inferred."""
    source = Source(spec.input)
    ids: list[str] = []
    rows: list[dict[str, Any]] = []
    for batch in source.batches():
        for record in batch:
            ids.append(record.id)
            rows.append(record.data or {})
    if source.kind == "parquet":
        data = pl.from_arrow(storage.read_parquet(source.path))
        assert isinstance(data, pl.DataFrame)
    else:
        data = pl.from_dicts(rows, infer_schema_length=None, strict=False) if any(rows) else pl.DataFrame()
    skip = {*spec.output.keep_columns, *(["id"] if spec.input.id_column == "id" else [])}
    columns: dict[str, pl.Series] = {}
    for name in data.columns:
        if name in skip:
            continue
        columns[f"input_{name}" if name in taken else name] = data.get_column(name)
    return pl.DataFrame({"id": pl.Series(ids, dtype=pl.String), **columns})
