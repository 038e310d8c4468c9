"""Row by row, what a rerun must send: each saved row's request_hash against the one its input row has now.

rerun.py says what the hash covers and how job.json is compared; this module does the comparing (only a run
with saved rows, `status` and refusals need it). States: a saved row whose hash matches is *done*; one with
another hash has *changed* (an `ok` row waits for `--refresh` or `--keep`; an `error` row said nothing about the
new request, so it is *pending* again); an input id with no saved row is pending; a saved id no longer in the
input is *gone*. A row saved before request_hash existed cannot be compared and counts as done.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from batchrun.collector import release_memory
from batchrun.errors import OutputError
from batchrun.ids import SavedIds, one_array
from batchrun.prompts import Renderer
from batchrun.rerun import HASH_CHARS, RequestHasher, changed_keys
from batchrun.saved import SavedOutput, read_parts
from batchrun.shards import Shard
from batchrun.sources import Record, Source
from batchrun.spec import JobSpec

if TYPE_CHECKING:
    from batchrun.schema import ResultRow

# What reruns read of each saved row to compare it; the token columns are read only to refuse (what re-sending costs).
SAVED_COLUMNS = ["id", "status", "attempts", "request_hash"]
COST_COLUMNS = ["id", "prompt_tokens", "completion_tokens", "reasoning_tokens", "total_tokens", "traffic_type"]
# A saved row's state, as `Comparison.saved["state"]` holds it.
GONE, DONE, CHANGED, PENDING = 0, 1, 2, 3
STATES = {"gone": GONE, "done": DONE, "changed": CHANGED, "pending": PENDING}
_HASH_BYTES = HASH_CHARS // 2
_NO_HASH = bytes(_HASH_BYTES)
_MAX_TEXT = 2**31 - 1  # what an Arrow string array's 32-bit offsets reach
_SAVED = pa.schema(
    [
        ("id", pa.string()),
        ("ok", pa.bool_()),
        ("attempts", pa.int32()),
        ("request_hash", pa.binary(_HASH_BYTES)),
        ("part", pa.int32()),
    ]
)


@dataclass(frozen=True)
class Comparison:
    """Every saved row of a shard with its state, and the input ids with no saved row (pending).

    A saved row is known by its row number: its place in `saved` and in `index` (its id's lookup).
    """

    saved: pa.Table  # id, ok (its status), attempts, request_hash (16 bytes), part (index into parts), state
    pending: pa.Array  # ids of input rows that have no saved row
    index: SavedIds
    # The request_hash an input row has now (16 bytes a row), where its saved row's differs or lacks one.
    current: bytearray
    parts: list[str]

    def count(self, state: str) -> int:
        """How many ids are in `state`."""
        saved = pc.sum(pc.equal(self.saved["state"], STATES[state])).as_py() or 0
        return int(saved) + (len(self.pending) if state == "pending" else 0)

    def now(self, row: int) -> str | None:
        """The request_hash saved row `row`'s input row has now (None for a gone row)."""
        state = self.saved["state"][row].as_py()
        if state == GONE:
            return None
        kept = self.saved["request_hash"][row].as_py()
        if state == DONE and kept is not None:
            return str(kept.hex())
        return self.current[row * _HASH_BYTES : (row + 1) * _HASH_BYTES].hex()


def compare(spec: JobSpec, saved: SavedOutput, shard: Shard) -> Comparison:
    """Read the saved rows' hashes and render the input rows that have one: the states of a shard's ids.

    Held at once: each saved row's id, status, attempts, part and 16-byte hash, plus its lookup key and row
    number (about 65 bytes a row with ids of 15 characters); the input is read a batch at a time, and only the
    ids of unsaved rows and the new hashes of changed ones are kept.
    """
    parts = saved.parts()
    stored = _saved_rows(parts, shard)
    index = SavedIds(stored["id"])
    release_memory()  # sorting the keys frees a few copies of them: 15 MB at a million rows
    source = Source(spec.input)
    renderer = Renderer(spec, source.format)
    hasher = RequestHasher(spec, renderer)
    hashes = one_array(stored["request_hash"])
    same = bytearray(stored.num_rows)  # per saved row: 0 not in the input, 1 the same request, 2 another request
    current = bytearray()  # filled only when some row's request differs from (or lacks) its saved hash
    pending: list[pa.Array] = []
    for batch in _owned_batches(source, shard, renderer):
        rows = index.rows_of([record.id for record in batch])
        unsaved = [record.id for record, row in zip(batch, rows, strict=True) if row is None]
        if unsaved:
            pending.append(pa.array(unsaved, pa.string()))
        hits = [(row, record) for record, row in zip(batch, rows, strict=True) if row is not None]
        if not hits:
            continue
        now = [_digest(hasher.of_record(record)) for _, record in hits]
        kept = pc.take(hashes, pa.array([row for row, _ in hits], pa.int64()))
        for (row, _), equal, digest in zip(
            hits, pc.equal(kept, pa.array(now, pa.binary(_HASH_BYTES))).to_pylist(), now, strict=True
        ):
            same[row] = 2 if equal is False else 1
            if not equal:  # another request, or a row saved before request_hash existed (counts as done)
                if not current:
                    current = bytearray(_HASH_BYTES * stored.num_rows)
                current[row * _HASH_BYTES : (row + 1) * _HASH_BYTES] = digest
    release_memory()
    matched = pa.Array.from_buffers(pa.uint8(), len(same), [None, pa.py_buffer(same)])
    changed_state = pc.if_else(stored["ok"], pa.scalar(CHANGED, pa.uint8()), pa.scalar(PENDING, pa.uint8()))
    state = pc.if_else(pc.equal(matched, 2), changed_state, matched)
    return Comparison(
        stored.append_column("state", state),
        pa.concat_arrays(pending) if pending else pa.array([], pa.string()),
        index,
        current,
        parts,
    )


class _SavedColumns:
    """The saved rows' columns as they are read, in growing buffers that become Arrow arrays without a copy.

    A million rows read from a thousand parts as Arrow pieces, then joined, held twice the data and left the
    heap in fragments; these buffers grow in place (large ones are remapped, not copied) and nothing is left.
    """

    def __init__(self) -> None:
        self.ids, self.offsets = bytearray(), array("i", [0])
        self.ok, self.hashed, self.hashes = bytearray(), bytearray(), bytearray()
        self.attempts, self.parts = array("i"), array("i")

    def add(self, table: pa.Table, part: int) -> None:
        """Append one part's rows (id, status, and attempts and request_hash when the part has them)."""
        ids = one_array(table["id"]).cast(pa.string())
        start, data = self.offsets[-1], len(self.ids)
        offsets = memoryview(ids.buffers()[1]).cast("i")[ids.offset : ids.offset + len(ids) + 1]
        if data + offsets[-1] - offsets[0] > _MAX_TEXT:
            raise OutputError("one shard's saved ids exceed 2 GB: run the job as more tasks (--shard I/N)")
        self.ids += memoryview(ids.buffers()[2])[offsets[0] : offsets[-1]]
        self.offsets.extend(at - offsets[0] + start for at in offsets[1:])
        self.ok.extend(status == "ok" for status in table["status"].to_pylist())
        names = table.column_names
        attempts = table["attempts"].to_pylist() if "attempts" in names else [0] * table.num_rows
        self.attempts.extend(count or 0 for count in attempts)
        for text in table["request_hash"].to_pylist() if "request_hash" in names else [None] * table.num_rows:
            self.hashed.append(text is not None)
            self.hashes += _NO_HASH if text is None else _digest(text)
        self.parts.extend([part] * table.num_rows)

    def table(self) -> pa.Table:
        """The columns as one table, sharing these buffers."""
        rows = len(self.ok)
        hashed = pc.not_equal(_bytes_array(self.hashed), 0).buffers()[1]  # one bit a row, as Arrow's validity
        columns = [
            pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(self.offsets), pa.py_buffer(self.ids)]),
            pc.not_equal(_bytes_array(self.ok), 0),
            pa.Array.from_buffers(pa.int32(), rows, [None, pa.py_buffer(self.attempts)]),
            pa.Array.from_buffers(pa.binary(_HASH_BYTES), rows, [hashed, pa.py_buffer(self.hashes)]),
            pa.Array.from_buffers(pa.int32(), rows, [None, pa.py_buffer(self.parts)]),
        ]
        return pa.Table.from_arrays(columns, schema=_SAVED)


def _bytes_array(flags: bytearray) -> pa.Array:
    """A bytearray as an Arrow uint8 array, sharing it."""
    return pa.Array.from_buffers(pa.uint8(), len(flags), [None, pa.py_buffer(flags)])


def _saved_rows(parts: list[str], shard: Shard) -> pa.Table:
    """The saved rows this shard owns, as `Comparison.saved` holds them (without state), a part at a time."""
    columns = _SavedColumns()
    for index, table in enumerate(read_parts(parts, SAVED_COLUMNS)):
        if shard.count > 1:
            table = table.filter(pa.array([shard.owns(rid) for rid in table["id"].to_pylist()], pa.bool_()))
        columns.add(table, index)
    return columns.table()


def _digest(request_hash: str) -> bytes:
    """A request_hash as 16 bytes; text that is not one (never written by batchrun) as bytes no request hashes to."""
    try:
        digest = bytes.fromhex(request_hash)
    except ValueError:
        digest = b""
    return (
        digest
        if len(digest) == _HASH_BYTES
        else hashlib.sha256(b"not a hash:" + request_hash.encode()).digest()[:_HASH_BYTES]
    )


def _owned_batches(source: Source, shard: Shard, renderer: Renderer) -> Iterator[list[Record]]:
    """The input's records this shard owns, a batch at a time, decoding only the columns a request needs."""
    for batch in source.batches(columns=renderer.columns_needed()):
        yield [record for record in batch if shard.owns(record.id)]


@dataclass(frozen=True)
class Plan:
    """What this run does to the saved rows: which it skips, which it sends again and replaces, which leave."""

    skip: SavedIds  # saved ids of input rows not sent this run (gone ids are no input row's)
    again: bytes  # per saved row, 1 when it is sent again and replaced in its part
    replace: pa.Table  # id, part, ok, attempts: the rows sent again, each replaced in its part when written
    gone: pa.Table  # id, part: saved rows of ids no longer in the input, dropped before sending
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
    saved = comparison.saved
    state = saved["state"]
    changed = comparison.count("changed")
    if changed and not (refresh or keep or kept_before):
        raise OutputError(_refusal(comparison, spec, recorded))
    gone = comparison.count("gone")
    if gone and gone == saved.num_rows and not refresh:
        raise OutputError(
            f"{spec.output.path}: none of its {gone} saved rows has an id in {spec.input.path}: is it another "
            "job's output? Use another output.path, or pass --refresh to remove them and answer this input"
        )
    is_gone = pc.equal(state, GONE)
    again = pc.or_(pc.equal(state, PENDING), pc.and_(pc.equal(state, CHANGED), refresh))
    if retry_errors:
        again = pc.or_(again, pc.and_(pc.invert(saved["ok"]), pc.invert(is_gone)))
    may_write = pc.take(pa.array([rewritable(part) for part in comparison.parts], pa.bool_()), saved["part"])
    replace = pc.and_(again, may_write)
    left = pc.sum(pc.and_(again, pc.invert(may_write))).as_py() or 0
    hide = pc.or_(replace, is_gone)  # a gone id is no input row's: hidden only so the run never counts it done
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
        comparison.index.hiding(_flags(hide)),
        _flags(replace),
        saved.filter(replace).select(["id", "part", "ok", "attempts"]),
        saved.filter(pc.and_(is_gone, may_write)).select(["id", "part"]),
        int(left),
        notes,
    )


def _flags(mask: pa.Array | pa.ChunkedArray) -> bytes:
    """A boolean column as one byte a row (1 set), for lookups row by row."""
    flags = one_array(pc.cast(pc.fill_null(mask, False), pa.uint8()))
    return bytes(memoryview(flags.buffers()[1])[flags.offset : flags.offset + len(flags)])


def answered(held: list[ResultRow], plan: Plan, comparison: Comparison) -> list[ResultRow]:
    """Of the journaled rows a killed run answered but never saved, those that answer a row this run sends again.

    Each is saved in place of the old row instead of being sent once more, so a kill during --refresh or
    --retry-errors re-sends only what was in flight. A row answers when its request_hash is the input row's
    hash now and it is not the saved row itself (or another error for the same request, which is retried).
    """
    if not held or not plan.replace.num_rows:
        return []
    saved = comparison.saved
    rows = []
    for row, place in zip(held, comparison.index.rows_of([row["id"] for row in held]), strict=True):
        if place is None or not plan.again[place]:
            continue
        now = comparison.now(place)
        kept = saved["request_hash"][place].as_py()
        old_hash = None if kept is None else kept.hex()
        was_ok = saved["ok"][place].as_py()
        if row.get("request_hash") != now or (old_hash == now and (was_ok or row["status"] != "ok")):
            continue
        rows.append(row)
    return rows


def _refusal(comparison: Comparison, spec: JobSpec, recorded: dict[str, Any] | None) -> str:
    """Exit 2's message: how many rows changed, why, what sending them again costs, and the two ways on."""
    from batchrun.commands.report import cost_of  # the readers' pricing, loaded only to refuse

    saved = comparison.saved
    changed_ids = saved.filter(pc.equal(saved["state"], CHANGED))["id"]
    costs = SavedOutput(spec.output.path).table(COST_COLUMNS, comparison.parts)
    changed = costs.filter(pc.is_in(costs["id"], value_set=one_array(changed_ids)))
    keys = changed_keys(recorded, spec)
    verb = "differs" if len(keys) == 1 else "differ"
    why = f"the spec's {', '.join(keys)} {verb} from the run that wrote them" if keys else "their input text changed"
    tokens = int(pc.sum(changed["total_tokens"]).as_py() or 0)
    cost = cost_of(changed, spec)
    price = f" (about {cost['total']:,.4f} {cost['currency']} at report.prices)" if cost else ""
    pending = comparison.count("pending")
    return (
        f"{spec.output.path}: {len(changed_ids)} saved rows changed since they were answered ({why}). Sending them "
        f"again would use about {tokens:,} tokens{price}, as their saved answers did. Pass --refresh to send them "
        f"again and replace their answers, or --keep to keep the old answers and send only the {pending} pending rows"
    )
