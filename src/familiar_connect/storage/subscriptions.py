"""Channels the familiar is subscribed to (where it listens and answers).

Admin commands add and remove subscriptions; adapters ask
:meth:`SubscriptionStore.is_subscribed` (or load :meth:`SubscriptionStore.list`
once and keep a set). ``kind`` says what the subscription covers, e.g.
``"text"`` for a Discord text channel or ``"voice"`` for a voice channel.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from familiar_connect.storage.db import Database, from_epoch_us, to_epoch_us

__all__ = ["MAX_FIELD_CHARS", "Subscription", "SubscriptionStore"]

MAX_FIELD_CHARS: Final = 256
"""Upper bound for every text field of a subscription."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """One subscribed channel.

    Attributes:
        platform: e.g. ``"discord"`` or ``"twitch"``.
        channel_id: platform channel id.
        kind: what is subscribed, e.g. ``"text"`` or ``"voice"``.
        guild_id: the Discord guild, when there is one.
        created_at: timezone-aware time the subscription was made.
        created_by: user id of the admin who made it.
    """

    platform: str
    channel_id: str
    kind: str
    guild_id: str | None
    created_at: datetime
    created_by: str

    def __post_init__(self) -> None:
        for name in ("platform", "channel_id", "kind", "created_by"):
            value = getattr(self, name)
            if not value or len(value) > MAX_FIELD_CHARS:
                raise ValueError(f"{name} must be 1..{MAX_FIELD_CHARS} characters")
        if self.guild_id is not None and len(self.guild_id) > MAX_FIELD_CHARS:
            raise ValueError(f"guild_id must be at most {MAX_FIELD_CHARS} characters")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")


def _from_row(row: Any) -> Subscription:
    return Subscription(
        platform=row[0],
        channel_id=row[1],
        kind=row[2],
        guild_id=row[3],
        created_at=from_epoch_us(row[4]),
        created_by=row[5],
    )


class SubscriptionStore:
    """Subscriptions over a :class:`Database`.

    Reads are safe to cancel; writes complete even if the caller is
    cancelled (see :meth:`Database.execute`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, subscription: Subscription) -> bool:
        """Store a subscription.

        Returns:
            True if it is new; False if the channel was already subscribed
            for that kind (the existing record is kept unchanged).
        """
        changed = await self._db.execute(
            "INSERT INTO subscriptions (platform, channel_id, kind, guild_id, created_at_us, "
            "created_by) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (platform, channel_id, kind) DO NOTHING",
            (
                subscription.platform,
                subscription.channel_id,
                subscription.kind,
                subscription.guild_id,
                to_epoch_us(subscription.created_at),
                subscription.created_by,
            ),
            what="subscriptions.add",
        )
        return changed > 0

    async def remove(self, platform: str, channel_id: str, kind: str) -> bool:
        """Delete a subscription; return True if there was one."""
        changed = await self._db.execute(
            "DELETE FROM subscriptions WHERE platform = ? AND channel_id = ? AND kind = ?",
            (platform, channel_id, kind),
            what="subscriptions.remove",
        )
        return changed > 0

    async def list(
        self, platform: str | None = None, kind: str | None = None
    ) -> builtins.list[Subscription]:
        """Return subscriptions, optionally filtered, oldest first.

        The table holds one row per admin action, so it stays small and is
        returned whole.
        """
        sql = (
            "SELECT platform, channel_id, kind, guild_id, created_at_us, created_by "
            "FROM subscriptions WHERE (? IS NULL OR platform = ?) AND (? IS NULL OR kind = ?) "
            "ORDER BY created_at_us, platform, channel_id, kind"
        )
        rows = await self._db.fetchall(
            sql, (platform, platform, kind, kind), what="subscriptions.list"
        )
        return [_from_row(row) for row in rows]

    async def is_subscribed(self, platform: str, channel_id: str, kind: str) -> bool:
        """Return True if the channel is subscribed for ``kind`` (primary-key lookup)."""
        rows = await self._db.fetchall(
            "SELECT 1 FROM subscriptions WHERE platform = ? AND channel_id = ? AND kind = ?",
            (platform, channel_id, kind),
            what="subscriptions.is_subscribed",
        )
        return bool(rows)
