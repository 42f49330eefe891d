"""Per-conversation watermarks: the last history turn the memory writer has turned into notes.

The memory writer reads ``HistoryStore.since(..., after_id=watermark)`` and,
once every note of a pass is written, moves the watermark to the last turn id
it processed. Turn ids are never reused, so a watermark never skips a turn.

The table is created by :meth:`WatermarkStore.create` with ``CREATE TABLE IF
NOT EXISTS`` rather than by a numbered migration (``storage/migrations.py``
belongs to the schema owner); moving it into a migration later is a no-op for
existing databases because the statement is idempotent. The SQL is portable
(``ON CONFLICT ... DO UPDATE`` works in SQLite and PostgreSQL).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from familiar_connect.storage.db import Database, to_epoch_us

__all__ = ["MAX_CONVERSATION_CHARS", "WatermarkStore"]

MAX_CONVERSATION_CHARS: Final = 512
"""Longest conversation key accepted."""

_CREATE: Final = """
CREATE TABLE IF NOT EXISTS memory_watermarks (
    conversation TEXT PRIMARY KEY,
    last_turn_id INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL
)
"""
# Forward only: a late or repeated advance can never move a watermark back.
_ADVANCE: Final = (
    "INSERT INTO memory_watermarks (conversation, last_turn_id, updated_at_us) VALUES (?, ?, ?) "
    "ON CONFLICT (conversation) DO UPDATE SET "
    "last_turn_id = excluded.last_turn_id, updated_at_us = excluded.updated_at_us "
    "WHERE excluded.last_turn_id > memory_watermarks.last_turn_id"
)
_MAX_ALL: Final = 10_000


def _check_key(conversation: str) -> None:
    if not isinstance(conversation, str) or not 1 <= len(conversation) <= MAX_CONVERSATION_CHARS:
        raise ValueError(f"conversation keys must be 1..{MAX_CONVERSATION_CHARS} characters")


class WatermarkStore:
    """Watermarks over a :class:`Database`; build it with :meth:`create`.

    Reads are safe to cancel; writes complete even if the caller is
    cancelled (see :meth:`Database.execute`).

    Args:
        db: the familiar's database; the table must exist (see :meth:`create`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @classmethod
    async def create(cls, db: Database) -> WatermarkStore:
        """Create the table if it is missing and return the store.

        Raises:
            StorageError: the statement failed or the database is closed.
        """
        await db.execute(_CREATE, what="watermarks.create")
        return cls(db)

    async def get(self, conversation: str) -> int:
        """Return the last processed turn id of ``conversation``, or 0 if none.

        Raises:
            ValueError: the key is empty or too long.
            StorageError: the read failed.
        """
        _check_key(conversation)
        rows = await self._db.fetchall(
            "SELECT last_turn_id FROM memory_watermarks WHERE conversation = ?",
            (conversation,),
            what="watermarks.get",
        )
        return int(rows[0][0]) if rows else 0

    async def advance(self, conversation: str, last_turn_id: int) -> int:
        """Move the watermark forward to ``last_turn_id`` (never back); return the new value.

        Raises:
            ValueError: the key is bad, or ``last_turn_id`` is not a positive int.
            StorageError: the write failed.
        """
        _check_key(conversation)
        if isinstance(last_turn_id, bool) or not isinstance(last_turn_id, int) or last_turn_id < 1:
            raise ValueError("last_turn_id must be a positive integer")
        now_us = to_epoch_us(datetime.now(UTC))
        await self._db.execute(
            _ADVANCE, (conversation, last_turn_id, now_us), what="watermarks.advance"
        )
        return await self.get(conversation)

    async def reset(self, conversation: str) -> None:
        """Forget a conversation's watermark, so its whole history is processed again.

        Raises:
            ValueError: the key is bad.
            StorageError: the write failed.
        """
        _check_key(conversation)
        await self._db.execute(
            "DELETE FROM memory_watermarks WHERE conversation = ?",
            (conversation,),
            what="watermarks.reset",
        )

    async def all(self, *, limit: int = 1_000) -> dict[str, int]:
        """Return up to ``limit`` watermarks (clamped to 1..10,000), by conversation key.

        Raises:
            StorageError: the read failed.
        """
        limit = max(1, min(int(limit), _MAX_ALL))
        rows = await self._db.fetchall(
            "SELECT conversation, last_turn_id FROM memory_watermarks "
            "ORDER BY conversation LIMIT ?",
            (limit,),
            what="watermarks.all",
        )
        return {str(conversation): int(turn_id) for conversation, turn_id in rows}
