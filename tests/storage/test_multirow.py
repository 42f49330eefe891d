"""Multi-row statements: how rows are split into statement executions."""

from __future__ import annotations

import sqlite3

import pytest

from familiar_connect.storage._multirow import GROUP, ROWS, group_size, groups, statement


class TestGroups:
    @pytest.mark.parametrize("count", [0, 1, 2, 3, 63, 64, 65, 127, 128, 200, 255, 256, 1_000])
    def test_executions_reproduce_the_rows_in_order(self, count: int) -> None:
        """Concatenating every execution's parameters gives back the rows, in order."""
        rows = [(f"p{i}", i) for i in range(count)]
        flattened: list[object] = []
        for size, executions in groups(rows, columns=2):
            for params in executions:
                assert len(params) == size * 2
                flattened.extend(params)
        assert flattened == [value for row in rows for value in row]

    def test_sizes_are_the_group_and_powers_of_two_below_it(self) -> None:
        """Full groups come first as one executemany; the rest uses fewer, smaller statements."""
        rows = [(i,) for i in range(203)]
        plan = [(size, len(executions)) for size, executions in groups(rows, columns=1, most=64)]
        assert plan == [(64, 3), (8, 1), (2, 1), (1, 1)]
        sizes = {size for n in range(600) for size, _ in groups([(0,)] * n, columns=1)}
        assert sizes == {GROUP, *(2**k for k in range(GROUP.bit_length() - 1))}

    def test_group_size_respects_the_parameter_limit(self) -> None:
        """A statement never binds more parameters than SQLite's limit (999 before 3.32)."""
        assert group_size(9) == GROUP
        assert group_size(4, most=128) == 128
        assert group_size(5_000) == 4 if sqlite3.sqlite_version_info >= (3, 32, 0) else 1


class TestStatement:
    def test_placeholders_per_row_and_column(self) -> None:
        """The template gets one ``(?, …)`` tuple per row with one ``?`` per column."""
        assert ROWS == "{rows}"
        sql = statement("INSERT INTO t (a, b) VALUES {rows}", 2, 3)
        assert sql == "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a, b)")
        conn.execute(sql, [1, "x", 2, "y", 3, "z"])
        assert conn.execute("SELECT a, b FROM t ORDER BY id").fetchall() == [
            (1, "x"),
            (2, "y"),
            (3, "z"),
        ]

    def test_refuses_empty_shapes(self) -> None:
        """Zero rows or columns is a programming error, not an empty statement."""
        with pytest.raises(ValueError, match="at least one"):
            statement("VALUES {rows}", 1, 0)
