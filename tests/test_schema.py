"""The output row's type and the Arrow schema are one table: same columns, same types."""

from __future__ import annotations

import datetime
import typing

import pyarrow as pa

from batchrun.schema import RESULT_COLUMNS, RESULT_FIELDS, ResultRow

_PYTHON_TYPE = {pa.string(): str, pa.binary(): bytes, pa.int64(): int, pa.int32(): int, pa.float64(): float}


def test_the_row_type_names_every_column_and_no_other() -> None:
    """A column added to the schema but not the row type (or the reverse) fails here, not as a null column."""
    assert list(typing.get_type_hints(ResultRow)) == RESULT_COLUMNS


def test_each_column_has_the_python_type_of_its_arrow_type() -> None:
    """A nullable column may be None in a row; the two required columns may not."""
    hints = typing.get_type_hints(ResultRow)
    for field in RESULT_FIELDS:
        expected = datetime.datetime if pa.types.is_timestamp(field.type) else _PYTHON_TYPE[field.type]
        allowed = set(typing.get_args(hints[field.name])) or {hints[field.name]}
        assert expected in allowed, field.name
        if not field.nullable:
            assert type(None) not in allowed, field.name
