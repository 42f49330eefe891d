"""LLM usage and cost, per call, summed per UTC day.

One :class:`UsageRecord` per model call (chat turn, memory writer, tool
round). The dashboard reads :meth:`UsageStore.daily_summary`; quota checks
read :meth:`UsageStore.totals_for_day` (indexed by user and time).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

import aiosqlite

from familiar_connect.storage.db import Database, to_epoch_us

__all__ = ["MAX_SUMMARY_DAYS", "DailyUsage", "UsageRecord", "UsageStore", "UsageTotals"]

MAX_SUMMARY_DAYS: Final = 366
"""``daily_summary`` covers at most this many days."""

_DAY_US: Final = 86_400_000_000
_INSERT: Final = (
    "INSERT INTO usage (created_at_us, call_site, model, prompt_tokens, completion_tokens, "
    "cost_usd, platform, user_id, ttft_ms, conversation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One model call.

    Attributes:
        created_at: timezone-aware time of the call.
        call_site: what made the call, e.g. ``"reply"``, ``"memory_writer"``.
        model: the model id as sent to the provider.
        prompt_tokens: input tokens billed (>= 0).
        completion_tokens: output tokens billed (>= 0).
        cost_usd: cost in US dollars (finite, >= 0).
        platform: platform the call served (``"system"`` for background work).
        user_id: the user the call served (empty string when none).
        ttft_ms: time to first token in milliseconds, when streamed.
        conversation: conversation key, when there was one.
    """

    created_at: datetime
    call_site: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    platform: str
    user_id: str
    ttft_ms: float | None = None
    conversation: str | None = None

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.completion_tokens < 0:
            raise ValueError("token counts must be >= 0")
        if not math.isfinite(self.cost_usd) or self.cost_usd < 0:
            raise ValueError("cost_usd must be a finite number >= 0")
        if self.ttft_ms is not None and (not math.isfinite(self.ttft_ms) or self.ttft_ms < 0):
            raise ValueError("ttft_ms must be a finite number >= 0")
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Sums over a set of calls."""

    tokens: int
    cost_usd: float
    calls: int


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """Sums over one UTC day."""

    day: date
    tokens: int
    cost_usd: float
    calls: int


def _to_row(rec: UsageRecord) -> tuple[Any, ...]:
    return (
        to_epoch_us(rec.created_at),
        rec.call_site,
        rec.model,
        rec.prompt_tokens,
        rec.completion_tokens,
        float(rec.cost_usd),
        rec.platform,
        rec.user_id,
        rec.ttft_ms,
        rec.conversation,
    )


def _day_start_us(day: date) -> int:
    return to_epoch_us(datetime.combine(day, time(0), tzinfo=UTC))


class UsageStore:
    """Usage records over a :class:`Database`.

    Reads are safe to cancel; writes complete even if the caller is
    cancelled (see :meth:`Database.transaction`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, rec: UsageRecord) -> None:
        """Store one usage record.

        Raises:
            StorageError: the write failed.
        """
        await self._db.execute(_INSERT, _to_row(rec), what="usage.record")

    async def record_many(self, recs: Iterable[UsageRecord]) -> None:
        """Store several usage records in one transaction (all or none).

        Raises:
            StorageError: the write failed; nothing was stored.
        """
        rows = [_to_row(rec) for rec in recs]
        if not rows:
            return

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.executemany(_INSERT, rows)

        await self._db.transaction(body, what="usage.record_many")

    async def totals_for_day(
        self, day: date, *, platform: str | None = None, user_id: str | None = None
    ) -> UsageTotals:
        """Sum the calls made during one UTC day.

        Args:
            day: the UTC calendar day.
            platform: only calls for this platform.
            user_id: only calls for this user (requires ``platform``: user
                ids are only unique within a platform).

        Raises:
            ValueError: ``user_id`` given without ``platform``.
            StorageError: the query failed.
        """
        if user_id is not None and platform is None:
            raise ValueError("totals for a user need the platform too")
        start = _day_start_us(day)
        sql = (
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), "
            "coalesce(sum(cost_usd), 0.0), count(*) FROM usage "
        )
        params: list[Any]
        if user_id is not None:
            sql += "WHERE platform = ? AND user_id = ? AND created_at_us >= ? AND created_at_us < ?"
            params = [platform, user_id, start, start + _DAY_US]
        elif platform is not None:
            sql += "WHERE created_at_us >= ? AND created_at_us < ? AND platform = ?"
            params = [start, start + _DAY_US, platform]
        else:
            sql += "WHERE created_at_us >= ? AND created_at_us < ?"
            params = [start, start + _DAY_US]
        rows = await self._db.fetchall(sql, params, what="usage.totals_for_day")
        tokens, cost, calls = rows[0]
        return UsageTotals(tokens=int(tokens), cost_usd=float(cost), calls=int(calls))

    async def daily_summary(self, days: int = 7, *, today: date | None = None) -> list[DailyUsage]:
        """Return one entry per UTC day for the last ``days`` days, oldest first.

        Days without calls are included with zeros, so the list always has
        ``days`` entries (clamped to 1..:data:`MAX_SUMMARY_DAYS`).

        Args:
            days: how many days, ending with ``today``.
            today: the last day (defaults to the current UTC date).
        """
        days = max(1, min(int(days), MAX_SUMMARY_DAYS))
        last = today if today is not None else datetime.now(UTC).date()
        first = last - timedelta(days=days - 1)
        start = _day_start_us(first)
        rows = await self._db.fetchall(
            "SELECT created_at_us / ? AS day_number, "
            "sum(prompt_tokens + completion_tokens), sum(cost_usd), count(*) FROM usage "
            "WHERE created_at_us >= ? AND created_at_us < ? GROUP BY day_number",
            (_DAY_US, start, start + days * _DAY_US),
            what="usage.daily_summary",
        )
        by_day = {
            int(number): (int(tokens), float(cost), int(calls))
            for number, tokens, cost, calls in rows
        }
        epoch = date(1970, 1, 1)
        summary: list[DailyUsage] = []
        for offset in range(days):
            day = first + timedelta(days=offset)
            tokens, cost, calls = by_day.get((day - epoch).days, (0, 0.0, 0))
            summary.append(DailyUsage(day=day, tokens=tokens, cost_usd=cost, calls=calls))
        return summary
