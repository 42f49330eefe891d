"""Per-conversation watermarks of the memory writer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from familiar_connect.errors import StorageError
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.watermarks import MAX_CONVERSATION_CHARS, WatermarkStore


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="marks")
async def fixture_marks(db: Database) -> WatermarkStore:
    return await WatermarkStore.create(db)


class TestWatermarkStore:
    async def test_unknown_conversation_is_zero(self, marks: WatermarkStore) -> None:
        """A conversation never processed has watermark 0 (before every turn id)."""
        assert await marks.get("discord:1") == 0

    async def test_advance_only_moves_forward(self, marks: WatermarkStore) -> None:
        """advance() raises the watermark and ignores a lower value."""
        assert await marks.advance("discord:1", 10) == 10
        assert await marks.advance("discord:1", 4) == 10
        assert await marks.advance("discord:1", 12) == 12
        assert await marks.get("discord:1") == 12
        assert await marks.get("discord:2") == 0

    async def test_reset_and_all(self, marks: WatermarkStore) -> None:
        """reset() forgets one conversation; all() lists the rest."""
        await marks.advance("discord:1", 3)
        await marks.advance("twitch:x", 7)
        await marks.reset("discord:1")
        assert await marks.all() == {"twitch:x": 7}
        assert await marks.all(limit=0) == {"twitch:x": 7}

    async def test_create_is_idempotent_and_persistent(self, tmp_path: Path) -> None:
        """Creating the store twice keeps the table, and values survive a reopen."""
        db = await open_database(tmp_path / "again.db")
        try:
            await (await WatermarkStore.create(db)).advance("k", 5)
            assert await (await WatermarkStore.create(db)).get("k") == 5
        finally:
            await db.close()
        db = await open_database(tmp_path / "again.db")
        try:
            assert await (await WatermarkStore.create(db)).get("k") == 5
        finally:
            await db.close()

    @pytest.mark.parametrize("key", ["", "k" * (MAX_CONVERSATION_CHARS + 1)])
    async def test_bad_keys_refused(self, marks: WatermarkStore, key: str) -> None:
        """Empty and over-long conversation keys raise ValueError."""
        with pytest.raises(ValueError):
            await marks.get(key)
        with pytest.raises(ValueError):
            await marks.advance(key, 1)

    @pytest.mark.parametrize("turn_id", [0, -1, True])
    async def test_bad_turn_ids_refused(self, marks: WatermarkStore, turn_id: int) -> None:
        """Turn ids must be positive integers."""
        with pytest.raises(ValueError):
            await marks.advance("k", turn_id)

    async def test_closed_database_is_a_storage_error(self, tmp_path: Path) -> None:
        """Using the store after the database closed raises StorageError."""
        db = await open_database(tmp_path / "closed.db")
        marks = await WatermarkStore.create(db)
        await db.close()
        with pytest.raises(StorageError):
            await marks.get("k")
