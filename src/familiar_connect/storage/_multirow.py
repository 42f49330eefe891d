"""Multi-row statements: one statement execution per group of rows instead of one per row.

Why: the ``turns`` and ``notes`` tables keep their FTS5 index in step through
triggers. A statement whose trigger writes to a virtual table runs under a
statement savepoint, and FTS5 (SQLite 3.40) writes its in-memory pending terms
out as a new on-disk segment at every savepoint. ``executemany`` executes the
statement once per row, so every row became a tiny segment that FTS5 then kept
merging. Measured on the project machine (CPU time, plain ``sqlite3``):

* notes (about 100 words each), 100k into an empty index: 78 µs per note via
  ``executemany``, 42 µs via statements of 500 rows, 51 µs via statements of 50;
* history turns (5–25 words), batches of 256: 36 µs per turn via ``executemany``,
  24–26 µs via statements of 64 or 256 rows; at 1,024-turn batches, statements of
  256 rows wrote ~25% more turns per second than statements of 64.

Statement texts are built from a constant template and a row count, never from
data, and the counts are the group size and the powers of two below it, so a
template adds at most nine texts to the connection's statement cache.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["GROUP", "ROWS", "group_size", "groups", "statement"]

GROUP: Final = 256
"""Most rows per statement."""
# Bound parameters per statement: SQLite's default limit since 3.32, 999 before.
_MAX_VARIABLES: Final = 32_766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999

ROWS: Final = "{rows}"
"""Placeholder in a template for the ``(?, …), (?, …)`` list of row tuples."""


@functools.cache
def statement(template: str, columns: int, rows: int) -> str:
    """``template`` with :data:`ROWS` replaced by ``rows`` tuples of ``columns`` placeholders."""
    if columns < 1 or rows < 1:
        raise ValueError("a multi-row statement needs at least one column and one row")
    one = "(" + ", ".join("?" * columns) + ")"
    return template.replace(ROWS, ", ".join([one] * rows))


def group_size(columns: int, most: int = GROUP) -> int:
    """The largest power of two ≤ ``most`` rows whose parameters fit in one statement."""
    size = 1
    while size * 2 <= most and size * 2 * columns <= _MAX_VARIABLES:
        size *= 2
    return size


def groups(
    rows: Sequence[Sequence[Any]], *, columns: int, most: int = GROUP
) -> list[tuple[int, list[list[Any]]]]:
    """Split ``rows`` (of ``columns`` values each) into statement executions, in order.

    Returns ``(rows_per_statement, executions)`` pairs, where each execution is
    the flattened parameters of that many consecutive rows: first every full
    group of :func:`group_size` rows (for one ``executemany``), then the
    remainder in descending powers of two. Executed in the returned order, the
    rows are inserted in their original order (so AUTOINCREMENT ids follow it).
    """
    group = group_size(columns, most)
    out: list[tuple[int, list[list[Any]]]] = []
    full, rest = divmod(len(rows), group)
    if full:
        out.append(
            (
                group,
                [
                    list(itertools.chain.from_iterable(rows[start : start + group]))
                    for start in range(0, full * group, group)
                ],
            )
        )
    start = full * group
    size = group // 2
    while rest:
        if rest >= size:
            out.append((size, [list(itertools.chain.from_iterable(rows[start : start + size]))]))
            start += size
            rest -= size
        size //= 2
    return out
