"""Numbered schema migrations, recorded in ``PRAGMA user_version``.

Each :class:`Migration` is a tuple of SQL statements applied in one
transaction together with the ``user_version`` bump, so a migration is either
fully applied or not at all. Statements are executed one by one rather than
with ``executescript`` because Python's ``executescript`` commits any open
transaction first, which would break that atomicity.

Rules for adding a migration:

* append it with the next version number; never edit or reorder a released one;
* keep SQL portable where it is cheap (plain types, no ``CHECK`` on enumerations
  that will grow, timestamps as integer microseconds since the Unix epoch), so
  the stores can move to PostgreSQL behind the same API (DESIGN §7);
* full-text search is SQLite-specific (FTS5) and lives behind the store methods.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite
import structlog

from familiar_connect.errors import MigrationError

__all__ = ["MIGRATIONS", "Migration", "apply_migrations", "latest_version"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step.

    Attributes:
        version: the ``user_version`` the database has once this step is applied
            (1 for the first migration, contiguous after that).
        name: short label used in logs and error messages.
        statements: SQL statements executed in order inside one transaction.
    """

    version: int
    name: str
    statements: tuple[str, ...]


# The conversation scope is a generated column feeding the FTS index two
# single-token terms, one per platform and one per conversation, so a search
# filtered to a quiet channel is an FTS doclist intersection instead of a walk
# over every match of a common word (measured: 0.5 ms vs 10 ms+ at 1M turns,
# unbounded for a channel with few turns). hex() keeps any channel key a single
# alphanumeric token; history.py builds the same tokens in Python.
_HISTORY = Migration(
    version=1,
    name="history",
    statements=(
        """
        CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            platform TEXT NOT NULL,
            channel TEXT NOT NULL,
            author_id TEXT NOT NULL,
            author_name TEXT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            modality TEXT NOT NULL,
            created_at_us INTEGER NOT NULL,
            meta TEXT,
            scope TEXT GENERATED ALWAYS AS (
                'p' || hex(platform) || ' k' || hex(platform || char(31) || channel)
            ) VIRTUAL
        )
        """,
        "CREATE INDEX turns_conversation ON turns (platform, channel, id DESC)",
        "CREATE INDEX turns_author ON turns (platform, author_id, id)",
        """
        CREATE VIRTUAL TABLE turns_fts USING fts5 (
            content, scope,
            content = 'turns', content_rowid = 'id',
            tokenize = 'unicode61 remove_diacritics 2'
        )
        """,
        """
        CREATE TRIGGER turns_fts_insert AFTER INSERT ON turns BEGIN
            INSERT INTO turns_fts (rowid, content, scope)
            VALUES (new.id, new.content, new.scope);
        END
        """,
        """
        CREATE TRIGGER turns_fts_delete AFTER DELETE ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, content, scope)
            VALUES ('delete', old.id, old.content, old.scope);
        END
        """,
        """
        CREATE TRIGGER turns_fts_update AFTER UPDATE OF content, platform, channel ON turns BEGIN
            INSERT INTO turns_fts (turns_fts, rowid, content, scope)
            VALUES ('delete', old.id, old.content, old.scope);
            INSERT INTO turns_fts (rowid, content, scope)
            VALUES (new.id, new.content, new.scope);
        END
        """,
    ),
)

_USAGE = Migration(
    version=2,
    name="usage",
    statements=(
        """
        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            created_at_us INTEGER NOT NULL,
            call_site TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            platform TEXT NOT NULL,
            user_id TEXT NOT NULL,
            ttft_ms REAL,
            conversation TEXT
        )
        """,
        "CREATE INDEX usage_time ON usage (created_at_us)",
        "CREATE INDEX usage_user_time ON usage (platform, user_id, created_at_us)",
    ),
)

_SUBSCRIPTIONS_PRIVACY = Migration(
    version=3,
    name="subscriptions_privacy",
    statements=(
        """
        CREATE TABLE subscriptions (
            platform TEXT NOT NULL,
            channel_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            guild_id TEXT,
            created_at_us INTEGER NOT NULL,
            created_by TEXT NOT NULL,
            PRIMARY KEY (platform, channel_id, kind)
        )
        """,
        """
        CREATE TABLE privacy_opt_outs (
            platform TEXT NOT NULL,
            user_id TEXT NOT NULL,
            opted_out_at_us INTEGER NOT NULL,
            PRIMARY KEY (platform, user_id)
        )
        """,
    ),
)

_VAULT = Migration(
    version=4,
    name="vault",
    statements=(
        """
        CREATE TABLE vault_secrets (
            name TEXT PRIMARY KEY,
            key_version INTEGER NOT NULL,
            ciphertext BLOB NOT NULL,
            updated_at_us INTEGER NOT NULL
        )
        """,
    ),
)

# Notes keep their text (FTS5 snippets need it) and a content hash so a
# start-up rebuild only rewrites files that changed. AUTOINCREMENT ids make a
# re-written note the newest row, which the bounded ranking window relies on.
_NOTES = Migration(
    version=5,
    name="notes_index",
    statements=(
        """
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            rel_path TEXT NOT NULL UNIQUE,
            content TEXT NOT NULL,
            content_hash BLOB NOT NULL,
            updated_at_us INTEGER NOT NULL
        )
        """,
        """
        CREATE VIRTUAL TABLE notes_fts USING fts5 (
            content,
            content = 'notes', content_rowid = 'id',
            tokenize = 'unicode61 remove_diacritics 2'
        )
        """,
        """
        CREATE TRIGGER notes_fts_insert AFTER INSERT ON notes BEGIN
            INSERT INTO notes_fts (rowid, content) VALUES (new.id, new.content);
        END
        """,
        """
        CREATE TRIGGER notes_fts_delete AFTER DELETE ON notes BEGIN
            INSERT INTO notes_fts (notes_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        END
        """,
        """
        CREATE TRIGGER notes_fts_update AFTER UPDATE OF content ON notes BEGIN
            INSERT INTO notes_fts (notes_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
            INSERT INTO notes_fts (rowid, content) VALUES (new.id, new.content);
        END
        """,
    ),
)

_MEMORY_WATERMARKS = Migration(
    version=6,
    name="memory_watermarks",
    statements=(
        # IF NOT EXISTS: databases made before this migration may already have the table,
        # which WatermarkStore.create used to make on its own.
        """
        CREATE TABLE IF NOT EXISTS memory_watermarks (
            conversation TEXT PRIMARY KEY,
            last_turn_id INTEGER NOT NULL,
            updated_at_us INTEGER NOT NULL
        )
        """,
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    _HISTORY,
    _USAGE,
    _SUBSCRIPTIONS_PRIVACY,
    _VAULT,
    _NOTES,
    _MEMORY_WATERMARKS,
)
"""Every migration this program knows, in order."""


def latest_version(migrations: Sequence[Migration]) -> int:
    """Return the schema version reached by applying ``migrations``.

    Raises:
        ValueError: the versions are not exactly 1, 2, ..., N.
    """
    for index, migration in enumerate(migrations, start=1):
        if migration.version != index:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}, expected {index}"
            )
    return len(migrations)


async def apply_migrations(
    conn: aiosqlite.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> int:
    """Bring the database at ``conn`` up to the newest version in ``migrations``.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no
    transaction open. Each pending migration runs in its own
    ``BEGIN IMMEDIATE`` transaction that also sets ``user_version``; the
    version is re-read inside the transaction so two processes racing to open
    the same file do not apply a step twice.

    Cancelling leaves the database at a whole version: the step in flight is
    either committed or rolled back on the connection's worker thread.

    Args:
        conn: the open connection.
        migrations: the ordered migrations (1..N).

    Returns:
        The schema version the database is at afterwards.

    Raises:
        MigrationError: the database is newer than ``migrations`` know, or a
            step failed (it was rolled back; earlier steps stay applied).
    """
    target = latest_version(migrations)
    current = await _user_version(conn)
    if current > target:
        raise MigrationError(
            f"database schema version {current} is newer than this program supports "
            f"(up to {target}); upgrade Familiar-Connect or restore a backup made by this version"
        )
    for migration in migrations[current:]:
        await _apply_one(conn, migration)
    return target


async def _user_version(conn: aiosqlite.Connection) -> int:
    try:
        rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    except sqlite3.Error as exc:
        raise MigrationError(f"cannot read the schema version: {exc}") from exc
    return int(rows[0][0])


async def _apply_one(conn: aiosqlite.Connection, migration: Migration) -> None:
    try:
        await conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise MigrationError(
            f"migration {migration.version} ({migration.name}) could not start: {exc}"
        ) from exc
    try:
        found = await _user_version(conn)
        if found >= migration.version:
            await conn.execute("ROLLBACK")
            return
        for statement in migration.statements:
            await conn.execute(statement)
        # PRAGMA arguments cannot be bound; the version is an int we own.
        await conn.execute(f"PRAGMA user_version = {int(migration.version)}")
        await conn.execute("COMMIT")
    except BaseException as exc:
        try:
            await conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("migration_rollback_failed", version=migration.version)
        if isinstance(exc, sqlite3.Error):
            raise MigrationError(
                f"migration {migration.version} ({migration.name}) failed and was rolled back: {exc}"
            ) from exc
        raise
    log.info("migration_applied", version=migration.version, name=migration.name)
