"""Plain-text tables for the analyst commands: aligned columns that read the same in a terminal and a log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    """How one value prints: thousands separators for counts, two decimals for fractions, '-' for none."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def render(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A titled table; text columns align left, numbers right."""
    texts = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows)
        for i in range(len(headers))
    ]
    widths = [max([len(h), *(len(t[i]) for t in texts)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(padded).rstrip()

    body = [line(list(headers)), line(["-" * w for w in widths]), *(line(t) for t in texts)]
    if not rows:
        body.append("(none)")
    return "\n".join([title, *body])
