"""Usage and cost for the dashboard: today, the last 30 days, per user and per call site, vs budgets.

Reads the ``usage`` table (one row per model call, see
:mod:`familiar_connect.storage.usage`). Daily totals come from
:meth:`UsageStore.daily_summary`; the per-user and per-call-site breakdowns
are two grouped, indexed, bounded (``LIMIT``) read-only queries kept here
because only the dashboard needs them. Budgets are the character's
``[policy]`` values; 0 means "no limit".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from familiar_connect.character import PolicySection
from familiar_connect.dashboard.svg import DayBar
from familiar_connect.storage.db import Database, to_epoch_us
from familiar_connect.storage.usage import UsageStore

__all__ = ["UsageReport", "usage_report"]

_DAY_US = 86_400_000_000
_MAX_ROWS = 50

_BY_USER = (
    "SELECT platform, user_id, "
    "coalesce(sum(CASE WHEN created_at_us >= ? THEN prompt_tokens + completion_tokens END), 0), "
    "coalesce(sum(CASE WHEN created_at_us >= ? THEN cost_usd END), 0.0), "
    "sum(prompt_tokens + completion_tokens), sum(cost_usd), count(*) "
    "FROM usage WHERE created_at_us >= ? AND created_at_us < ? "
    "GROUP BY platform, user_id ORDER BY 6 DESC, 5 DESC LIMIT ?"
)
_BY_SITE = (
    "SELECT call_site, "
    "coalesce(sum(CASE WHEN created_at_us >= ? THEN prompt_tokens + completion_tokens END), 0), "
    "coalesce(sum(CASE WHEN created_at_us >= ? THEN cost_usd END), 0.0), "
    "sum(prompt_tokens + completion_tokens), sum(cost_usd), count(*) "
    "FROM usage WHERE created_at_us >= ? AND created_at_us < ? "
    "GROUP BY call_site ORDER BY 5 DESC, 4 DESC LIMIT ?"
)


def _share(used: float, budget: float | None) -> float | None:
    """Fraction of a budget used, or None when there is no budget."""
    if not budget:
        return None
    return round(used / budget, 4)


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What the usage page shows.

    Attributes:
        data: JSON-ready totals, budgets and breakdowns.
        days: one bar per day for the chart, oldest first.
        budget_usd: the familiar's daily cost budget, or None.
    """

    data: dict[str, Any]
    days: list[DayBar]
    budget_usd: float | None


async def usage_report(
    db: Database,
    usage: UsageStore,
    policy: PolicySection,
    *,
    today: date | None = None,
    days: int = 30,
) -> UsageReport:
    """Build the usage page's data.

    Args:
        db: the familiar's database (read-only queries).
        usage: the usage store (daily totals).
        policy: the character's budgets.
        today: the last UTC day (default: now).
        days: how many days the history covers, ending today.

    Raises:
        StorageError: a query failed.
    """
    day = today if today is not None else datetime.now(UTC).date()
    daily = await usage.daily_summary(days, today=day)
    today_start = to_epoch_us(datetime.combine(day, time(0), tzinfo=UTC))
    first_start = to_epoch_us(datetime.combine(daily[0].day, time(0), tzinfo=UTC))
    end = today_start + _DAY_US
    window = (today_start, today_start, first_start, end, _MAX_ROWS)
    user_rows = await db.fetchall(_BY_USER, window, what="dashboard.usage_by_user")
    site_rows = await db.fetchall(_BY_SITE, window, what="dashboard.usage_by_site")

    user_tokens_budget = policy.user_daily_tokens or None
    user_cost_budget = policy.user_daily_cost_usd or None
    users = [
        {
            "user": f"{platform}:{user_id}" if user_id else f"{platform}",
            "mutable": bool(user_id) and platform != "system",
            "today_tokens": int(t_tokens),
            "today_cost_usd": float(t_cost),
            "period_tokens": int(p_tokens),
            "period_cost_usd": float(p_cost),
            "calls": int(calls),
            "tokens_budget_share": _share(int(t_tokens), user_tokens_budget),
            "cost_budget_share": _share(float(t_cost), user_cost_budget),
        }
        for platform, user_id, t_tokens, t_cost, p_tokens, p_cost, calls in user_rows
    ]
    sites = [
        {
            "call_site": call_site,
            "today_tokens": int(t_tokens),
            "today_cost_usd": float(t_cost),
            "period_tokens": int(p_tokens),
            "period_cost_usd": float(p_cost),
            "calls": int(calls),
        }
        for call_site, t_tokens, t_cost, p_tokens, p_cost, calls in site_rows
    ]
    today_totals = daily[-1]
    tokens_budget = policy.familiar_daily_tokens or None
    cost_budget = policy.familiar_daily_cost_usd or None
    data = {
        "today": {
            "day": day.isoformat(),
            "tokens": today_totals.tokens,
            "cost_usd": today_totals.cost_usd,
            "calls": today_totals.calls,
            "tokens_budget": tokens_budget,
            "cost_budget_usd": cost_budget,
            "tokens_budget_share": _share(today_totals.tokens, tokens_budget),
            "cost_budget_share": _share(today_totals.cost_usd, cost_budget),
        },
        "period": {
            "days": len(daily),
            "first_day": daily[0].day.isoformat(),
            "tokens": sum(d.tokens for d in daily),
            "cost_usd": sum(d.cost_usd for d in daily),
            "calls": sum(d.calls for d in daily),
        },
        "daily": [
            {"day": d.day.isoformat(), "tokens": d.tokens, "cost_usd": d.cost_usd, "calls": d.calls}
            for d in daily
        ],
        "user_budget": {"tokens": user_tokens_budget, "cost_usd": user_cost_budget},
        "users": users,
        "call_sites": sites,
        "rows_capped_at": _MAX_ROWS,
    }
    bars = [DayBar(d.day.isoformat(), d.cost_usd, d.tokens, d.calls) for d in daily[-days:]]
    return UsageReport(data=data, days=bars, budget_usd=cost_budget)
