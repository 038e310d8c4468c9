"""Row by row, what a run must send: each saved row's request_hash against the request its input row makes now.

A saved row whose hash matches is done; one with another hash has *changed* (an `ok` row waits for
`--refresh` or `--keep`; an `error` row said nothing about the new request, so it is pending again);
an input id with no saved row is pending; a saved id no longer in the input is *gone*. A row saved
before request_hash existed cannot be compared and counts as done.

The hash covers the request body as sent (model, messages, params, extra_body) and the endpoint's
identity (kind, project, location, endpoint id, API version, base URL): never a token, key or header.
Media parts are hashed as their column value (the path or URI), so comparing never reads a file.

The job record (job.json) is compared here too, and only here: whether it says this spec over this input,
which request-shaping keys changed since, and whether `--keep` holds for them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchrun.collector import release_memory
from batchrun.errors import OutputError, RowInputError
from batchrun.prompts import Renderer
from batchrun.saved import SavedIds, SavedOutput
from batchrun.shards import Shard
from batchrun.sources import Record, Source
from batchrun.spec import JobSpec

if TYPE_CHECKING:
    import polars as pl  # 0.25 s and 26 MB to import: loaded only where a frame is built

    from batchrun.schema import ResultRow

_HASH_CHARS = 32
_ENDPOINT_KEYS = ("kind", "project", "location", "endpoint_id", "api_version", "base_url")
# What reruns read of each saved row to compare it; the token columns are read only to refuse (what re-sending costs).
SAVED_COLUMNS = ["id", "status", "attempts", "request_hash"]
COST_COLUMNS = ["id", "prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens", "traffic_type"]


class RequestHasher:
    """The request_hash of a row under one spec: the same function for the row a run saves and for a rerun."""

    def __init__(self, spec: JobSpec, renderer: Renderer) -> None:
        endpoint = {key: getattr(spec.endpoint, key) for key in _ENDPOINT_KEYS}
        self._prefix = hashlib.sha256(json.dumps(endpoint, sort_keys=True).encode() + b"\n")  # hashed once
        self._renderer = renderer
        self._media = bool(spec.request.media)

    def of_body(self, body: dict[str, Any]) -> str:
        """The hash of a rendered body with this endpoint."""
        digest = self._prefix.copy()
        digest.update(json.dumps(body, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:_HASH_CHARS]

    def of_error(self, reason: str) -> str:
        """The hash of a row that makes no request: its reason, so fixing the row makes it pending again."""
        return self.of_body({"input_error": reason})

    def of_sent(self, record: Record, body: dict[str, Any]) -> str:
        """The hash of a row sent with `body` (media rows: rendered again without reading their files)."""
        return self.of_record(record) if self._media else self.of_body(body)

    def of_record(self, record: Record) -> str:
        """The hash of the request an input row makes under this spec now, or of the reason it makes none."""
        if record.data is None:
            return self.of_error(record.error or "unreadable row")
        try:
            return self.of_body(self._renderer.render(record, read_media=False))
        except RowInputError as exc:
            return self.of_error(str(exc))


def job_record(spec: JobSpec, identity: dict[str, Any]) -> dict[str, Any]:
    """What job.json says about the job that last ran: its fingerprint, its input and each key that shapes a request."""
    return {"fingerprint": spec.fingerprint(), "input": identity, "request": request_keys(spec)}


def request_keys(spec: JobSpec) -> dict[str, Any]:
    """Every spec key that shapes a request, dotted (`request.params.max_tokens`), as JSON values."""
    keys: dict[str, Any] = {"model": spec.model}
    keys |= {f"endpoint.{key}": getattr(spec.endpoint, key) for key in _ENDPOINT_KEYS}
    for key, value in spec.request.model_dump().items():
        if key in ("params", "google"):
            keys |= {f"request.{key}.{name}": item for name, item in value.items()}
        else:
            keys[f"request.{key}"] = value
    return json.loads(json.dumps(keys, default=str))  # type: ignore[no-any-return]


def changed_keys(recorded: dict[str, Any] | None, spec: JobSpec) -> list[str]:
    """The request-shaping keys in which the spec differs from the recorded one (none known: empty)."""
    old = (recorded or {}).get("request")
    if not isinstance(old, dict):
        return []
    new = request_keys(spec)
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def keep_key(record: dict[str, Any]) -> str:
    """What job.json's `kept` holds after --keep: this spec over this input, so the same run asks no more."""
    text = json.dumps({key: record[key] for key in ("fingerprint", "input", "request")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_job(recorded: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether job.json was written for this spec over this input (so it need not be written again)."""
    return recorded is not None and all(recorded.get(key) == value for key, value in record.items())


def kept_for(recorded: dict[str, Any] | None, record: dict[str, Any]) -> bool:
    """Whether `run --keep` was given for this spec over this input, so its changed rows stay as they are."""
    return recorded is not None and recorded.get("kept") == keep_key(record)


@dataclass(frozen=True)
class Comparison:
    """Every input id and every saved id of a shard, each with its state: done, changed, pending or gone."""

    rows: pl.DataFrame  # id, state, status, part (index into parts), and the saved token counts
    parts: list[str]

    def count(self, state: str) -> int:
        """How many ids are in `state`."""
        return int((self.rows.get_column("state") == state).sum())

    def ids(self, expression: pl.Expr) -> pl.DataFrame:
        """The rows an expression over the columns selects."""
        return self.rows.filter(expression)


def compare(spec: JobSpec, saved: SavedOutput, shard: Shard) -> Comparison:
    """Read the saved rows' hashes and render the input rows that have one: the states of a shard's ids."""
    import polars as pl

    parts = saved.parts()
    stored = saved.rows(SAVED_COLUMNS, parts)
    if shard.count > 1:
        stored = stored.filter(pl.col("id").is_in(shard.owned(stored.get_column("id")).implode()))
    if stored.get_column("id").n_unique() < stored.height:  # never, unless an older version left two rows
        stored = stored.unique("id", keep="last", maintain_order=True)
    release_memory()  # reading a thousand parts leaves freed pages behind: a million rows, 60 MB
    source = Source(spec.input)
    renderer = Renderer(spec, source.format)
    hasher = RequestHasher(spec, renderer)
    # Saved rows sorted by id, so each input id finds its saved row by binary search and its current hash is
    # written in place: joining a million ids (a hash table each) held 300 MB more.
    stored = stored.sort("id")
    has_row = SavedIds(stored.get_column("id"))
    pending: list[pl.Series] = []  # per batch, Arrow columns: a million ids as str objects cost about 70 MB
    places: list[pl.Series] = []
    hashes: list[pl.Series] = []
    for batch in _owned_batches(source, shard, renderer):
        found = has_row.positions([record.id for record in batch])
        unsaved = [record.id for record, at in zip(batch, found, strict=True) if at is None]
        if unsaved:
            pending.append(pl.Series(unsaved, dtype=pl.String))
        saved_here = [(at, record) for record, at in zip(batch, found, strict=True) if at is not None]
        if saved_here:
            places.append(pl.Series([at for at, _ in saved_here], dtype=pl.Int64))
            hashes.append(pl.Series([hasher.of_record(record) for _, record in saved_here], dtype=pl.String))
    release_memory()
    current = pl.Series("current", [None] * stored.height, dtype=pl.String)
    if places:
        current = current.scatter(pl.concat(places), pl.concat(hashes))
    # Every saved id still in the input got its current hash: a saved row without one is gone.
    saved_rows = stored.with_columns(current).with_columns(
        pl.col("current").is_not_null().alias("in_input"),
        pl.when(pl.col("current").is_null())
        .then(pl.lit("gone"))
        .when(pl.col("request_hash").is_null() | (pl.col("request_hash") == pl.col("current")))
        .then(pl.lit("done"))
        .when(pl.col("status") == "ok")
        .then(pl.lit("changed"))
        .otherwise(pl.lit("pending"))
        .alias("state"),
    )
    new = pl.DataFrame({"id": pl.concat(pending) if pending else pl.Series([], dtype=pl.String)}).with_columns(
        pl.lit(True).alias("in_input"), pl.lit("pending").alias("state")
    )
    frame = pl.concat([saved_rows, new], how="diagonal_relaxed")
    return Comparison(frame, parts)


def _owned_batches(source: Source, shard: Shard, renderer: Renderer) -> Iterator[list[Record]]:
    """The input's records this shard owns, a batch at a time, decoding only the columns a request needs."""
    for batch in source.batches(columns=renderer.columns_needed()):
        yield [record for record in batch if shard.owns(record.id)]


@dataclass(frozen=True)
class Plan:
    """What this run does to the saved rows: which it skips, which it sends again and replaces, which leave."""

    skip: SavedIds  # saved ids of input rows not sent this run (gone ids are no input row's)
    replace: pl.DataFrame  # id, part: saved rows sent again, each replaced in its part when its new row is written
    gone: pl.DataFrame  # id, part: saved rows of ids no longer in the input, dropped before sending
    left: int  # rows to send again that sit in parts written under another task count: not sent
    notes: list[str]


def decide(
    comparison: Comparison,
    spec: JobSpec,
    *,
    refresh: bool,
    keep: bool,
    retry_errors: bool,
    recorded: dict[str, Any] | None,
    kept_before: bool,
    rewritable: Callable[[str], bool],
) -> Plan:
    """Decide the run from the comparison, or refuse (exit 2) when rows changed and neither flag says what to do."""
    import polars as pl

    rows = comparison.rows
    changed = comparison.count("changed")
    saved = rows.filter(pl.col("status").is_not_null())
    if changed and not (refresh or keep or kept_before):
        raise OutputError(_refusal(comparison, spec, recorded))
    gone = comparison.count("gone")
    if gone and gone == len(saved) and not refresh:
        raise OutputError(
            f"{spec.output.path}: none of its {gone} saved rows has an id in {spec.input.path}: is it another "
            "job's output? Use another output.path, or pass --refresh to remove them and answer this input"
        )
    again = (pl.col("state") == "pending") | ((pl.col("state") == "changed") & refresh)
    if retry_errors:
        again = again | ((pl.col("status") == "error") & (pl.col("state") != "gone"))
    may_write = pl.col("part").map_elements(lambda index: rewritable(comparison.parts[index]), return_dtype=pl.Boolean)
    placed = saved.with_columns(may_write.alias("rewritable"))
    replace = placed.filter(again & pl.col("rewritable"))
    left = placed.filter(again & ~pl.col("rewritable"))
    skip = placed.filter((~again | ~pl.col("rewritable")) & (pl.col("state") != "gone")).get_column("id")
    notes = []
    if changed:
        how = (
            "--refresh: sending them again"
            if refresh
            else "--keep: their old answers stay"
            if keep
            else "kept, as --keep asked for this spec before"
        )
        notes.append(f"{changed} saved rows changed since they were answered; {how}")
    if gone:
        notes.append(f"{gone} saved rows have ids no longer in the input; they leave the output")
    return Plan(
        SavedIds(skip),
        replace.select("id", "part"),
        placed.filter((pl.col("state") == "gone") & pl.col("rewritable")).select("id", "part"),
        len(left),
        notes,
    )


def answered(held: list[ResultRow], plan: Plan, comparison: Comparison) -> list[ResultRow]:
    """Of the journaled rows a killed run answered but never saved, those that answer a row this run sends again.

    Each is saved in place of the old row instead of being sent once more, so a kill during --refresh or
    --retry-errors re-sends only what was in flight. A row answers when its request_hash is the input row's
    hash now and it is not the saved row itself (or another error for the same request, which is retried).
    """
    if not held or not plan.replace.height:
        return []
    wanted = plan.replace.select("id").join(comparison.rows.select("id", "current", "request_hash", "status"), on="id")
    saved = {rid: (now, old, status) for rid, now, old, status in wanted.iter_rows()}
    rows = []
    for row in held:
        if (found := saved.get(row["id"])) is None:
            continue
        now, old_hash, old_status = found
        if row.get("request_hash") != now or (old_hash == now and (old_status == "ok" or row["status"] != "ok")):
            continue
        rows.append(row)
    return rows


def _refusal(comparison: Comparison, spec: JobSpec, recorded: dict[str, Any] | None) -> str:
    """Exit 2's message: how many rows changed, why, what sending them again costs, and the two ways on."""
    import polars as pl

    from batchrun.commands.report import cost_of  # the readers' pricing, loaded only to refuse

    rows = comparison.rows
    changed = rows.filter(pl.col("state") == "changed").select("id")
    saved = SavedOutput(spec.output.path).rows(COST_COLUMNS, comparison.parts).drop("part")
    changed = changed.join(saved.unique("id", keep="last"), on="id", how="left")
    keys = changed_keys(recorded, spec)
    verb = "differs" if len(keys) == 1 else "differ"
    why = f"the spec's {', '.join(keys)} {verb} from the run that wrote them" if keys else "their input text changed"
    tokens = int(changed.get_column("total_tokens").fill_null(0).sum())
    cost = cost_of(changed, spec)
    price = f" (about {cost['total']:,.4f} {cost['currency']} at report.prices)" if cost else ""
    pending = comparison.count("pending")
    return (
        f"{spec.output.path}: {len(changed)} saved rows changed since they were answered ({why}). Sending them "
        f"again would use about {tokens:,} tokens{price}, as their saved answers did. Pass --refresh to send them "
        f"again and replace their answers, or --keep to keep the old answers and send only the {pending} pending rows"
    )
