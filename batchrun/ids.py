"""Finding input ids among a million saved ones in a few bytes an id, with no polars and no Python set of str.

Each id's key is its `hash()` (salted per process, which is all a lookup inside one run needs). The keys are
sorted once in Arrow and searched with a C bisect; a hit is confirmed against the id itself, so two ids that
share a key are told apart and a lookup is exact. A million ids cost their Arrow text plus 16 bytes each, where
a Python set of str costs about 100 bytes each.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import pyarrow as pa

_SLICE = 8_192  # ids made into Python str at once while hashing
_key = hash  # an id's lookup key (tests put a colliding one here)


def one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A column as one array, copied only when it is in several chunks (none: an empty array)."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            return column.chunk(0)
        return pa.concat_arrays([pa.array([], column.type), *column.chunks])
    return column


def id_array(ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> pa.Array:
    """Ids as one Arrow string array (what every index and filter here takes)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = one_array(ids)
    if not isinstance(ids, pa.Array):
        ids = pa.array(list(ids), pa.string())
    return ids.cast(pa.string()) if ids.type != pa.string() else ids


def keys_of(ids: pa.Array) -> array[int]:
    """Each id's lookup key, a slice of ids at a time."""
    keys = array("q")
    for start in range(0, len(ids), _SLICE):
        keys.extend(map(_key, ids.slice(start, _SLICE).to_pylist()))
    return keys


class SavedIds:
    """Ids with a saved row, each found as its row number in `ids` (the order they were read in)."""

    def __init__(self, ids: Iterable[str] | pa.Array | pa.ChunkedArray | None = None) -> None:
        self.ids = id_array(ids if ids is not None else [])
        self._keys: array[int] = array("q")  # the ids' keys, sorted
        self._rows: Sequence[int] = array("q")  # the row number of each
        self._hidden: bytes | bytearray | None = None
        self._extra: frozenset[str] = frozenset()
        self.repeated = self._sort() if len(self.ids) else 0  # earlier copies of ids saved twice, left out

    def _sort(self) -> int:
        """Sort the ids' keys, keeping the last row of an id saved more than once: returns how many were left out."""
        import pyarrow.compute as pc  # 90 ms to import: a run with nothing saved never loads it

        keys = keys_of(self.ids)
        unsorted = pa.Array.from_buffers(pa.int64(), len(keys), [None, pa.py_buffer(keys)])
        order = pc.sort_indices(unsorted)  # stable: an id saved twice keeps its copies in order
        ordered = pc.take(unsorted, order)
        del unsorted, keys
        self._keys = _int_array("q", ordered)  # a Python array: bisect reads it in C, a third faster than a view
        del ordered
        self._rows = _view(order).cast("Q")
        return self._drop_earlier_copies()

    def __len__(self) -> int:
        hidden = 0 if self._hidden is None else len(self._hidden) - self._hidden.count(0)
        return len(self._keys) - hidden + len(self._extra)

    def hiding(self, hidden: bytes | bytearray) -> SavedIds:
        """The same ids without those whose row's flag is set (rows to send again): shares every array."""
        view = self._copy()
        view._hidden = hidden
        return view

    def adding(self, ids: Iterable[str]) -> SavedIds:
        """These ids and `ids` (a few rows saved since they were read)."""
        more = frozenset(ids)
        if not more:
            return self
        view = self._copy()
        view._extra = self._extra | more
        return view

    def contains(self, ids: list[str]) -> list[bool]:
        """For each id, whether it is saved."""
        if not self._keys and not self._extra:  # a first run: nothing saved, nothing to look up
            return [False] * len(ids)
        rows = self.rows_of(ids)
        return [row is not None or rid in self._extra for rid, row in zip(ids, rows, strict=True)]

    def rows_of(self, ids: list[str]) -> list[int | None]:
        """For each id, the row number of its saved id, or None when it is not among them (or is hidden)."""
        keys, rows, size = self._keys, self._rows, len(self._keys)
        found: list[int | None] = [None] * len(ids)
        candidates: list[tuple[int, int]] = []  # (index in ids, place among the sorted keys) of each key found
        for at, rid in enumerate(ids):
            key = _key(rid)
            place = bisect_left(keys, key)
            if place < size and keys[place] == key:
                candidates.append((at, place))
        if candidates:
            import pyarrow.compute as pc

            saved = pc.take(self.ids, pa.array([rows[place] for _, place in candidates], pa.int64()))
            same = pc.equal(saved, pa.array([ids[at] for at, _ in candidates], pa.string())).to_pylist()
            for (at, place), match in zip(candidates, same, strict=True):
                found[at] = rows[place] if match else self._beside(ids[at], place)
        if self._hidden is not None:
            hidden = self._hidden
            found = [None if row is None or hidden[row] else row for row in found]
        return found

    def _drop_earlier_copies(self) -> int:
        """Leave out all but the last row of an id saved more than once (never, unless an older version left two)."""
        import pyarrow.compute as pc

        keys, rows = self._keys, self._rows
        if len(keys) < 2:
            return 0
        sorted_keys = pa.Array.from_buffers(pa.int64(), len(keys), [None, pa.py_buffer(keys)])
        ties = pc.indices_nonzero(pc.equal(sorted_keys.slice(1), sorted_keys.slice(0, len(keys) - 1))).to_pylist()
        if not ties:
            return 0
        last: dict[str, int] = {}  # id -> its place with the highest row
        tied = sorted({place for tie in ties for place in (tie, tie + 1)})
        for place in tied:
            rid = self.ids[rows[place]].as_py()
            if rid not in last or rows[place] > rows[last[rid]]:
                last[rid] = place
        drop = set(tied) - set(last.values())
        self._keys = array("q", (key for place, key in enumerate(keys) if place not in drop))
        self._rows = array("Q", (row for place, row in enumerate(rows) if place not in drop))
        return len(drop)

    def _beside(self, rid: str, place: int) -> int | None:
        """The row of `rid` among the ids that share its key (a hash collision: an id saved twice has one place)."""
        key, keys = self._keys[place], self._keys
        place = bisect_left(keys, key)
        while place < len(keys) and keys[place] == key:
            if self.ids[self._rows[place]].as_py() == rid:
                return self._rows[place]
            place += 1
        return None

    def _copy(self) -> SavedIds:
        """A view sharing this index's arrays."""
        view = object.__new__(SavedIds)
        view.__dict__.update(self.__dict__)
        return view


def _int_array(code: str, values: pa.Array) -> array[int]:
    """An Arrow integer array copied into a Python array."""
    copy = array(code)
    copy.frombytes(_view(values))
    return copy


def _view(values: pa.Array) -> memoryview:
    """An Arrow integer array's bytes, read in place (the view keeps its buffer alive)."""
    width = values.type.bit_width // 8
    return memoryview(values.buffers()[1])[values.offset * width : (values.offset + len(values)) * width]
