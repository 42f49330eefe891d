"""Opening, configuring and migrating the database; the write primitives."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import pytest

from familiar_connect.errors import MigrationError, StorageError
from familiar_connect.storage.db import (
    Database,
    from_epoch_us,
    open_database,
    to_epoch_us,
)
from familiar_connect.storage.history import HistoryStore, Turn
from familiar_connect.storage.migrations import MIGRATIONS, Migration, latest_version

_EXPECTED_TABLES = {
    "turns",
    "turns_fts",
    "usage",
    "subscriptions",
    "privacy_opt_outs",
    "vault_secrets",
    "notes",
    "notes_fts",
    "memory_watermarks",
}


def _turn(content: str) -> Turn:
    return Turn(
        platform="discord",
        channel="c1",
        author_id="u1",
        author_name="Alice",
        role="user",
        content=content,
        modality="text",
        created_at=datetime.now(UTC),
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    conn.close()
    return {row[0] for row in rows}


def _user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture(name="db_path")
def fixture_db_path(tmp_path: Path) -> Path:
    return tmp_path / "familiar.db"


@pytest.fixture(name="db")
async def fixture_db(db_path: Path) -> AsyncIterator[Database]:
    db = await open_database(db_path)
    yield db
    await db.close()


class TestOpenDatabase:
    async def test_fresh_database_is_migrated_to_latest(self, db: Database, db_path: Path) -> None:
        """A new file gets every table and the newest user_version."""
        assert db.schema_version == latest_version(MIGRATIONS)
        rows = await db.fetchall("PRAGMA user_version")
        assert rows[0][0] == len(MIGRATIONS)
        assert _tables(db_path) >= _EXPECTED_TABLES

    async def test_wal_and_pragmas_are_on(self, db: Database) -> None:
        """The connection runs WAL, synchronous=NORMAL, foreign keys, secure delete, a 16 MiB cache."""
        assert (await db.fetchall("PRAGMA journal_mode"))[0][0] == "wal"
        assert (await db.fetchall("PRAGMA synchronous"))[0][0] == 1  # NORMAL
        assert (await db.fetchall("PRAGMA foreign_keys"))[0][0] == 1
        assert (await db.fetchall("PRAGMA secure_delete"))[0][0] == 1
        assert (await db.fetchall("PRAGMA busy_timeout"))[0][0] == 5_000
        assert (await db.fetchall("PRAGMA cache_size"))[0][0] == -16_384

    async def test_files_are_owner_only(self, db: Database, db_path: Path) -> None:
        """The database file and its -wal/-shm files are created with mode 0600."""
        await HistoryStore(db).add(_turn("hello"))
        wal = db_path.with_name(db_path.name + "-wal")
        shm = db_path.with_name(db_path.name + "-shm")
        assert wal.exists() and shm.exists()
        for path in (db_path, wal, shm):
            assert _mode(path) == 0o600, path

    async def test_existing_files_are_tightened(self, db_path: Path) -> None:
        """An existing world-readable database and -wal file are chmod-ed to 0600 on open."""
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE scratch (x)")
        conn.commit()
        conn.close()
        wal = db_path.with_name(db_path.name + "-wal")
        wal.write_bytes(b"")
        os.chmod(db_path, 0o644)
        os.chmod(wal, 0o644)
        db = await open_database(db_path)
        try:
            assert _mode(db_path) == 0o600
            assert _mode(wal) == 0o600
        finally:
            await db.close()

    async def test_newer_schema_is_refused(self, db_path: Path) -> None:
        """A database whose user_version is beyond the known migrations raises MigrationError."""
        conn = sqlite3.connect(db_path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(MigrationError, match=rf"version 99 is newer.*up to {len(MIGRATIONS)}"):
            await open_database(db_path)
        assert _user_version(db_path) == 99

    async def test_not_a_database_raises_storage_error(self, db_path: Path) -> None:
        """A file that is not SQLite raises StorageError instead of a sqlite3 error."""
        await asyncio.to_thread(db_path.write_bytes, b"this is not a database, just text " * 100)
        with pytest.raises(StorageError):
            await open_database(db_path)

    async def test_missing_directory_raises_storage_error(self, tmp_path: Path) -> None:
        """A path whose directory does not exist raises StorageError naming the file."""
        with pytest.raises(StorageError, match="cannot create the database file"):
            await open_database(tmp_path / "missing" / "familiar.db")


class TestMigrations:
    async def test_older_database_is_upgraded_and_keeps_data(self, db_path: Path) -> None:
        """A database at version 1 with data reopens at the newest version with its data."""
        old = await open_database(db_path, migrations=MIGRATIONS[:1])
        assert old.schema_version == 1
        await HistoryStore(old).add_many([_turn("remember the lighthouse"), _turn("second")])
        await old.close()
        assert _user_version(db_path) == 1
        assert "vault_secrets" not in _tables(db_path)

        db = await open_database(db_path)
        try:
            assert db.schema_version == len(MIGRATIONS)
            history = HistoryStore(db)
            assert [t.content for t in await history.recent("discord", "c1")] == [
                "remember the lighthouse",
                "second",
            ]
            assert [t.content for t in await history.search("lighthouse")] == [
                "remember the lighthouse"
            ]
        finally:
            await db.close()
        assert _tables(db_path) >= _EXPECTED_TABLES

    async def test_failing_migration_rolls_back(self, db_path: Path) -> None:
        """A migration that fails half-way leaves no trace and the previous version intact."""
        broken = Migration(
            version=len(MIGRATIONS) + 1,
            name="broken",
            statements=(
                "CREATE TABLE half_done (x INTEGER)",
                "INSERT INTO no_such_table VALUES (1)",
            ),
        )
        with pytest.raises(MigrationError, match=rf"migration {broken.version} \(broken\) failed"):
            await open_database(db_path, migrations=(*MIGRATIONS, broken))
        assert _user_version(db_path) == len(MIGRATIONS)
        assert "half_done" not in _tables(db_path)
        db = await open_database(db_path)
        await db.close()

    def test_versions_must_be_contiguous(self) -> None:
        """Migrations numbered with a gap are rejected before touching any database."""
        with pytest.raises(ValueError, match="expected 2"):
            latest_version((MIGRATIONS[0], Migration(version=3, name="gap", statements=())))


class TestDatabase:
    async def test_transaction_commits(self, db: Database) -> None:
        """A transaction body's writes are visible after it returns, with its result."""

        async def body(conn: aiosqlite.Connection) -> str:
            await conn.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'u1', 0)")
            return "done"

        assert await db.transaction(body, what="test") == "done"
        assert await db.fetchall("SELECT user_id FROM privacy_opt_outs") == [("u1",)]

    async def test_transaction_rolls_back_on_error(self, db: Database) -> None:
        """If the body raises, its writes are rolled back and the exception propagates unchanged."""

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'u1', 0)")
            raise KeyError("boom")

        with pytest.raises(KeyError):
            await db.transaction(body, what="test")
        assert await db.fetchall("SELECT * FROM privacy_opt_outs") == []

    async def test_sqlite_errors_become_storage_errors(self, db: Database) -> None:
        """Failing statements raise StorageError labelled with the operation."""
        with pytest.raises(StorageError, match="probe failed"):
            await db.fetchall("SELECT * FROM no_such_table", what="probe")
        with pytest.raises(StorageError, match="probe failed"):
            await db.execute("INSERT INTO no_such_table VALUES (1)", what="probe")

    async def test_writes_do_not_interleave_with_a_transaction(self, db: Database) -> None:
        """A single write issued during another transaction is not rolled back with it."""
        started = asyncio.Event()

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'doomed', 0)")
            started.set()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            raise RuntimeError("abort")

        failing = asyncio.create_task(db.transaction(body, what="test"))
        await started.wait()
        await db.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'kept', 0)")
        with pytest.raises(RuntimeError):
            await failing
        assert await db.fetchall("SELECT user_id FROM privacy_opt_outs") == [("kept",)]

    async def test_cancelled_caller_does_not_abort_the_write(self, db_path: Path) -> None:
        """Cancelling the awaiting task lets the transaction commit; close waits for it."""
        db = await open_database(db_path)
        inside = asyncio.Event()

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'u1', 0)")
            inside.set()
            await asyncio.sleep(0)
            await conn.execute("INSERT INTO privacy_opt_outs VALUES ('discord', 'u2', 0)")

        caller = asyncio.create_task(db.transaction(body, what="test"))
        await inside.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await db.close()
        conn = sqlite3.connect(db_path)
        try:
            rows = conn.execute("SELECT user_id FROM privacy_opt_outs ORDER BY 1").fetchall()
        finally:
            conn.close()
        assert rows == [("u1",), ("u2",)]

    async def test_closed_database_refuses_work(self, db_path: Path) -> None:
        """After close, reads and writes raise StorageError and close is idempotent."""
        db = await open_database(db_path)
        await db.close()
        await db.close()
        assert db.closed
        with pytest.raises(StorageError, match="closed"):
            await db.fetchall("SELECT 1")
        with pytest.raises(StorageError, match="closed"):
            await db.execute("DELETE FROM usage")

    async def test_async_context_manager_closes(self, db_path: Path) -> None:
        """Leaving an ``async with`` block closes the database."""
        async with await open_database(db_path) as db:
            assert (await db.fetchall("SELECT 1")) == [(1,)]
        assert db.closed


class TestEpochMicroseconds:
    def test_round_trip_is_exact(self) -> None:
        """Aware datetimes survive the integer-microsecond encoding exactly, as UTC."""
        moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
        back = from_epoch_us(to_epoch_us(moment))
        assert back == moment
        assert back.tzinfo == UTC

    def test_naive_datetimes_are_rejected(self) -> None:
        """A naive datetime raises ValueError rather than being stored in local time."""
        with pytest.raises(ValueError, match="timezone-aware"):
            to_epoch_us(datetime(2030, 1, 1))
