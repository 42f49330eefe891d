"""Channel subscriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.subscriptions import Subscription, SubscriptionStore

_T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _sub(
    channel_id: str, *, kind: str = "text", platform: str = "discord", minutes: int = 0
) -> Subscription:
    return Subscription(
        platform=platform,
        channel_id=channel_id,
        kind=kind,
        guild_id="g1" if platform == "discord" else None,
        created_at=_T0 + timedelta(minutes=minutes),
        created_by="admin",
    )


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="subs")
def fixture_subs(db: Database) -> SubscriptionStore:
    return SubscriptionStore(db)


class TestSubscription:
    def test_rejects_empty_ids_and_naive_time(self) -> None:
        """Empty channel ids and naive timestamps raise ValueError."""
        with pytest.raises(ValueError, match="channel_id"):
            _sub("")
        with pytest.raises(ValueError, match="timezone"):
            Subscription(
                platform="discord",
                channel_id="c",
                kind="text",
                guild_id=None,
                created_at=datetime(2030, 1, 1),
                created_by="a",
            )


class TestSubscriptionStore:
    async def test_add_is_idempotent(self, subs: SubscriptionStore) -> None:
        """Adding returns True the first time and False for a duplicate, keeping the original."""
        assert await subs.add(_sub("c1", minutes=0)) is True
        assert await subs.add(_sub("c1", minutes=5)) is False
        (stored,) = await subs.list()
        assert stored == _sub("c1", minutes=0)

    async def test_same_channel_can_have_several_kinds(self, subs: SubscriptionStore) -> None:
        """A channel subscribed for text and voice has two independent subscriptions."""
        await subs.add(_sub("c1", kind="text"))
        await subs.add(_sub("c1", kind="voice"))
        assert await subs.is_subscribed("discord", "c1", "text")
        assert await subs.is_subscribed("discord", "c1", "voice")
        assert await subs.remove("discord", "c1", "voice") is True
        assert not await subs.is_subscribed("discord", "c1", "voice")
        assert await subs.is_subscribed("discord", "c1", "text")

    async def test_remove_reports_whether_anything_was_removed(
        self, subs: SubscriptionStore
    ) -> None:
        """Removing a missing subscription returns False."""
        assert await subs.remove("discord", "nope", "text") is False

    async def test_list_filters_by_platform_and_kind(self, subs: SubscriptionStore) -> None:
        """list() filters on platform and kind and returns oldest first."""
        await subs.add(_sub("c2", minutes=2))
        await subs.add(_sub("c1", minutes=1))
        await subs.add(_sub("v1", kind="voice", minutes=3))
        await subs.add(_sub("streamer", platform="twitch", kind="chat", minutes=4))
        assert [s.channel_id for s in await subs.list()] == ["c1", "c2", "v1", "streamer"]
        assert [s.channel_id for s in await subs.list(platform="discord", kind="text")] == [
            "c1",
            "c2",
        ]
        assert [s.channel_id for s in await subs.list(kind="voice")] == ["v1"]
        twitch = await subs.list(platform="twitch")
        assert [(s.channel_id, s.guild_id) for s in twitch] == [("streamer", None)]
