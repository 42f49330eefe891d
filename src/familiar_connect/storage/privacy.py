"""Per-user privacy choices: who opted out of being remembered.

An opted-out user's messages are not written to history or memory (the
orchestrator checks :meth:`PrivacyStore.is_opted_out`, or keeps the set from
:meth:`PrivacyStore.opted_out_users` in memory). Deleting and exporting what
is already stored is :meth:`HistoryStore.delete_author` /
:meth:`HistoryStore.export_author`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from familiar_connect.storage.db import Database, to_epoch_us

__all__ = ["PrivacyStore"]


class PrivacyStore:
    """Opt-out flags over a :class:`Database`.

    Reads are safe to cancel; writes complete even if the caller is
    cancelled (see :meth:`Database.execute`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def set_opt_out(self, platform: str, user_id: str, opted_out: bool) -> None:
        """Record that a user opted out (True) or back in (False). Idempotent.

        Opting out again keeps the time of the first opt-out.
        """
        if opted_out:
            await self._db.execute(
                "INSERT INTO privacy_opt_outs (platform, user_id, opted_out_at_us) "
                "VALUES (?, ?, ?) ON CONFLICT (platform, user_id) DO NOTHING",
                (platform, user_id, to_epoch_us(datetime.now(UTC))),
                what="privacy.set_opt_out",
            )
        else:
            await self._db.execute(
                "DELETE FROM privacy_opt_outs WHERE platform = ? AND user_id = ?",
                (platform, user_id),
                what="privacy.set_opt_out",
            )

    async def is_opted_out(self, platform: str, user_id: str) -> bool:
        """Return True if the user has opted out (primary-key lookup)."""
        rows = await self._db.fetchall(
            "SELECT 1 FROM privacy_opt_outs WHERE platform = ? AND user_id = ?",
            (platform, user_id),
            what="privacy.is_opted_out",
        )
        return bool(rows)

    async def opted_out_users(self) -> set[tuple[str, str]]:
        """Return every opted-out user as ``(platform, user_id)``."""
        rows = await self._db.fetchall(
            "SELECT platform, user_id FROM privacy_opt_outs", what="privacy.opted_out_users"
        )
        return {(str(platform), str(user_id)) for platform, user_id in rows}
