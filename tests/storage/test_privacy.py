"""Per-user opt-out flags."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.privacy import PrivacyStore


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="privacy")
def fixture_privacy(db: Database) -> PrivacyStore:
    return PrivacyStore(db)


class TestPrivacyStore:
    async def test_opt_out_and_back_in(self, privacy: PrivacyStore) -> None:
        """A user who opts out is reported as such until they opt back in."""
        assert not await privacy.is_opted_out("discord", "u1")
        await privacy.set_opt_out("discord", "u1", True)
        assert await privacy.is_opted_out("discord", "u1")
        await privacy.set_opt_out("discord", "u1", False)
        assert not await privacy.is_opted_out("discord", "u1")

    async def test_opt_out_is_idempotent(self, privacy: PrivacyStore) -> None:
        """Opting out twice or opting in when not opted out does not fail."""
        await privacy.set_opt_out("discord", "u1", True)
        await privacy.set_opt_out("discord", "u1", True)
        await privacy.set_opt_out("discord", "u2", False)
        assert await privacy.opted_out_users() == {("discord", "u1")}

    async def test_users_are_scoped_by_platform(self, privacy: PrivacyStore) -> None:
        """The same user id on another platform is a different user."""
        await privacy.set_opt_out("twitch", "u1", True)
        await privacy.set_opt_out("discord", "u2", True)
        assert not await privacy.is_opted_out("discord", "u1")
        assert await privacy.opted_out_users() == {("twitch", "u1"), ("discord", "u2")}
