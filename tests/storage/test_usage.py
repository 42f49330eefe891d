"""LLM usage records and their per-day sums."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.usage import DailyUsage, UsageRecord, UsageStore, UsageTotals

_DAY = date(2030, 3, 10)
_MIDNIGHT = datetime(2030, 3, 10, tzinfo=UTC)


def _rec(
    at: datetime,
    *,
    prompt: int = 100,
    completion: int = 20,
    cost: float = 0.01,
    platform: str = "discord",
    user_id: str = "u1",
) -> UsageRecord:
    return UsageRecord(
        created_at=at,
        call_site="reply",
        model="vendor/model",
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=cost,
        platform=platform,
        user_id=user_id,
        ttft_ms=321.0,
        conversation="discord:c1",
    )


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="usage")
def fixture_usage(db: Database) -> UsageStore:
    return UsageStore(db)


class TestUsageRecord:
    def test_rejects_negative_and_non_finite_values(self) -> None:
        """Negative token counts, negative or NaN costs and naive times raise ValueError."""
        with pytest.raises(ValueError, match="token"):
            _rec(_MIDNIGHT, prompt=-1)
        with pytest.raises(ValueError, match="cost"):
            _rec(_MIDNIGHT, cost=float("nan"))
        with pytest.raises(ValueError, match="timezone"):
            _rec(datetime(2030, 1, 1))

    def test_total_tokens_adds_prompt_and_completion(self) -> None:
        """total_tokens is prompt plus completion tokens."""
        assert _rec(_MIDNIGHT, prompt=7, completion=5).total_tokens == 12


class TestUsageStore:
    async def test_totals_cover_exactly_one_utc_day(self, usage: UsageStore) -> None:
        """Calls at 00:00:00 and 23:59:59.999999 UTC count; neighbours' calls do not."""
        await usage.record_many(
            [
                _rec(_MIDNIGHT - timedelta(microseconds=1), cost=5.0),
                _rec(_MIDNIGHT, cost=0.25),
                _rec(_MIDNIGHT + timedelta(days=1, microseconds=-1), cost=0.5),
                _rec(_MIDNIGHT + timedelta(days=1), cost=7.0),
            ]
        )
        totals = await usage.totals_for_day(_DAY)
        assert totals == UsageTotals(tokens=240, cost_usd=0.75, calls=2)

    async def test_totals_per_platform_and_user(self, usage: UsageStore) -> None:
        """Filtering by platform, and by platform plus user, sums only their calls."""
        await usage.record(_rec(_MIDNIGHT, user_id="u1", prompt=10, completion=0, cost=0.1))
        await usage.record(_rec(_MIDNIGHT, user_id="u2", prompt=20, completion=0, cost=0.2))
        await usage.record(
            _rec(_MIDNIGHT, platform="twitch", user_id="u1", prompt=40, completion=0, cost=0.4)
        )
        u1 = await usage.totals_for_day(_DAY, platform="discord", user_id="u1")
        assert u1 == UsageTotals(tokens=10, cost_usd=0.1, calls=1)
        discord = await usage.totals_for_day(_DAY, platform="discord")
        assert discord.tokens == 30 and discord.calls == 2
        assert (await usage.totals_for_day(_DAY)).calls == 3
        with pytest.raises(ValueError, match="platform"):
            await usage.totals_for_day(_DAY, user_id="u1")

    async def test_empty_day_is_zero(self, usage: UsageStore) -> None:
        """A day without calls sums to zero rather than None."""
        assert await usage.totals_for_day(_DAY) == UsageTotals(tokens=0, cost_usd=0.0, calls=0)

    async def test_daily_summary_fills_missing_days(self, usage: UsageStore) -> None:
        """daily_summary lists every day oldest first, with zeros for quiet days."""
        await usage.record_many(
            [
                _rec(_MIDNIGHT + timedelta(hours=3), cost=1.0),
                _rec(_MIDNIGHT + timedelta(hours=4), cost=2.0),
                _rec(_MIDNIGHT - timedelta(days=2), cost=4.0),
                _rec(_MIDNIGHT - timedelta(days=30), cost=100.0),
            ]
        )
        summary = await usage.daily_summary(3, today=_DAY)
        assert summary == [
            DailyUsage(day=date(2030, 3, 8), tokens=120, cost_usd=4.0, calls=1),
            DailyUsage(day=date(2030, 3, 9), tokens=0, cost_usd=0.0, calls=0),
            DailyUsage(day=_DAY, tokens=240, cost_usd=3.0, calls=2),
        ]

    async def test_daily_summary_defaults_to_a_week_ending_today(self, usage: UsageStore) -> None:
        """Without arguments the summary covers seven days ending with today's UTC date."""
        before = datetime.now(UTC).date()
        await usage.record(_rec(datetime.now(UTC)))
        summary = await usage.daily_summary()
        after = datetime.now(UTC).date()
        assert len(summary) == 7
        assert summary[-1].day in (before, after)
        assert sum(day.calls for day in summary) == 1
