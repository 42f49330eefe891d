"""Whether to answer a turn: access lists, rate limits, daily budgets and input caps.

All of it is sans-I/O. Time comes in as arguments (``now_ns`` from :func:`time.monotonic_ns` for
rate limits, ``today`` for daily budget windows), so every decision is reproducible in a test.
Every per-user table is bounded: the least recently used entry is evicted past ``max_keys`` /
``max_users``, and the eviction is counted.

:class:`TurnPolicy` is the facade the orchestrator calls once per inbound turn.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from familiar_connect.core.events import Author
from familiar_connect.core.sanitize import cap_text, strip_control

__all__ = [
    "AccessDecision",
    "AccessPolicy",
    "BudgetDecision",
    "BudgetLedger",
    "InputLimiter",
    "PolicyVerdict",
    "RateLimiter",
    "TokenBucket",
    "TurnPolicy",
]

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """The outcome of :meth:`AccessPolicy.decide`; ``reason`` is a short snake_case code."""

    allowed: bool
    reason: str


class AccessPolicy:
    """Allow lists, deny lists and opt-outs, keyed by platform and user id.

    Rules, in order: opted-out users are never processed; bots are never answered (reply loops);
    a deny entry always wins; operators are allowed; then a platform's allow list, when it has one,
    must contain the user. A platform with no allow list (missing, or mapped to ``None``) lets
    everyone in.

    Args:
        allow: per platform (``"discord"``, ``"twitch"``...), the user ids allowed, or ``None``
            for everyone. ``None`` for the whole mapping means no allow lists at all.
        deny: per platform, the user ids never answered.
        opted_out: author keys (``"discord:123"``, see :attr:`Author.key`) of users who opted out.
    """

    __slots__ = ("_allow", "_deny", "_opted_out")

    def __init__(
        self,
        allow: Mapping[str, frozenset[str] | None] | None = None,
        deny: Mapping[str, frozenset[str]] | None = None,
        opted_out: Iterable[str] = (),
    ) -> None:
        self._allow = dict(allow or {})
        self._deny = dict(deny or {})
        self._opted_out = set(opted_out)

    def decide(self, author: Author) -> AccessDecision:
        """Return whether ``author`` may be answered, and why."""
        if author.key in self._opted_out:
            return AccessDecision(False, "opted_out")
        if author.is_bot:
            return AccessDecision(False, "bot")
        platform = author.platform.value
        if author.user_id in self._deny.get(platform, frozenset()):
            return AccessDecision(False, "denied")
        if author.is_operator:
            return AccessDecision(True, "operator")
        allowed = self._allow.get(platform)
        if allowed is not None and author.user_id not in allowed:
            return AccessDecision(False, "not_allowed")
        return AccessDecision(True, "allowed")

    def opt_out(self, author_key: str) -> None:
        """Stop processing the user with ``author_key`` (e.g. ``"discord:123"``)."""
        self._opted_out.add(author_key)

    def opt_in(self, author_key: str) -> None:
        """Undo :meth:`opt_out`; a no-op for users who never opted out."""
        self._opted_out.discard(author_key)

    def is_opted_out(self, author_key: str) -> bool:
        """Return whether ``author_key`` has opted out."""
        return author_key in self._opted_out


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate_per_s`` tokens per second.

    The bucket starts full. A clock that goes backwards refills nothing (and is not an error).

    Raises:
        ValueError: if ``rate_per_s`` or ``burst`` is not positive.
    """

    __slots__ = ("_last_ns", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if not rate_per_s > 0 or not burst > 0:
            raise ValueError("rate_per_s and burst must be positive")
        self.rate_per_s = float(rate_per_s)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last_ns: int | None = None

    def _refill(self, now_ns: int) -> None:
        if self._last_ns is not None and now_ns > self._last_ns:
            elapsed_s = (now_ns - self._last_ns) / _NS_PER_S
            self._tokens = min(self.burst, self._tokens + elapsed_s * self.rate_per_s)
        if self._last_ns is None or now_ns > self._last_ns:
            self._last_ns = now_ns

    def try_take(self, now_ns: int, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available at ``now_ns``; return whether they were taken."""
        self._refill(now_ns)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after_s(self, now_ns: int, cost: float = 1.0) -> float:
        """Seconds from ``now_ns`` until ``cost`` tokens are available; ``inf`` if never.

        ``0.0`` means a :meth:`try_take` of ``cost`` at ``now_ns`` would succeed.
        """
        if cost > self.burst:
            return math.inf
        self._refill(now_ns)
        missing = cost - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate_per_s

    def is_full(self, now_ns: int) -> bool:
        """Return whether the bucket has refilled to ``burst`` (nothing to remember)."""
        self._refill(now_ns)
        return self._tokens >= self.burst


class RateLimiter:
    """One :class:`TokenBucket` per key (usually :attr:`Author.key`), in a bounded LRU table.

    Past ``max_keys`` keys the least recently used bucket is forgotten (``evictions`` counts
    them); a forgotten user starts again with a full bucket, which errs on the side of answering.
    """

    __slots__ = ("_buckets", "burst", "evictions", "max_keys", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, *, max_keys: int = 10_000) -> None:
        TokenBucket(rate_per_s, burst)  # validate once, up front
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.evictions = 0
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
                self.evictions += 1
        else:
            self._buckets.move_to_end(key)
        return bucket

    def try_take(self, key: str, now_ns: int, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens from ``key``'s bucket; return whether they were taken."""
        return self._bucket(key).try_take(now_ns, cost)

    def retry_after_s(self, key: str, now_ns: int, cost: float = 1.0) -> float:
        """Seconds until ``key`` may take ``cost`` tokens (``0.0`` for an unknown key)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after_s(now_ns, cost)

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True, slots=True)
class BudgetDecision:
    """The outcome of :meth:`BudgetLedger.check`.

    Attributes:
        allowed: the user may start another turn today.
        reason: ``"ok"``, ``"user_daily_tokens"``, ``"user_daily_cost"``,
            ``"familiar_daily_tokens"`` or ``"familiar_daily_cost"``.
        notify: this is the first refusal of this user in the current day window, so tell them
            once; later refusals the same day are silent.
    """

    allowed: bool
    reason: str
    notify: bool = False


@dataclass(slots=True)
class _Usage:
    tokens: int = 0
    cost_usd: float = 0.0
    notified: bool = False


class BudgetLedger:
    """Daily token and cost budgets, per user and for the whole familiar.

    A limit of ``None`` disables it. A budget is exhausted once usage reaches the limit: a turn
    that starts under the limit is allowed to finish, because its cost is only known afterwards.

    The window is the calendar day passed as ``today``. When ``today`` moves forward every total
    resets; an earlier ``today`` (a clock or time-zone step back) is treated as the current
    window, so a step back never grants a fresh budget.

    Args:
        per_user_daily_tokens: tokens one user may spend per day.
        per_user_daily_cost_usd: dollars one user may spend per day.
        familiar_daily_tokens: tokens the familiar may spend per day, all users together.
        familiar_daily_cost_usd: dollars the familiar may spend per day, all users together.
        max_users: users remembered per day; past it the least recently seen is forgotten
            (counted in ``evictions``). The familiar-wide totals are never forgotten.
    """

    __slots__ = (
        "_cost_usd",
        "_day",
        "_tokens",
        "_users",
        "evictions",
        "familiar_daily_cost_usd",
        "familiar_daily_tokens",
        "max_users",
        "per_user_daily_cost_usd",
        "per_user_daily_tokens",
    )

    def __init__(
        self,
        per_user_daily_tokens: int | None = None,
        per_user_daily_cost_usd: float | None = None,
        familiar_daily_tokens: int | None = None,
        familiar_daily_cost_usd: float | None = None,
        *,
        max_users: int = 100_000,
    ) -> None:
        if max_users < 1:
            raise ValueError("max_users must be at least 1")
        self.per_user_daily_tokens = per_user_daily_tokens
        self.per_user_daily_cost_usd = per_user_daily_cost_usd
        self.familiar_daily_tokens = familiar_daily_tokens
        self.familiar_daily_cost_usd = familiar_daily_cost_usd
        self.max_users = max_users
        self.evictions = 0
        self._day: date | None = None
        self._users: OrderedDict[str, _Usage] = OrderedDict()
        self._tokens = 0
        self._cost_usd = 0.0

    def _roll(self, today: date) -> None:
        if self._day is None or today > self._day:
            self._day = today
            self._users.clear()
            self._tokens = 0
            self._cost_usd = 0.0

    def _usage(self, user_key: str) -> _Usage:
        usage = self._users.get(user_key)
        if usage is None:
            usage = self._users[user_key] = _Usage()
            if len(self._users) > self.max_users:
                self._users.popitem(last=False)
                self.evictions += 1
        else:
            self._users.move_to_end(user_key)
        return usage

    def _refusal(self, usage: _Usage) -> str | None:
        if self.familiar_daily_tokens is not None and self._tokens >= self.familiar_daily_tokens:
            return "familiar_daily_tokens"
        if (
            self.familiar_daily_cost_usd is not None
            and self._cost_usd >= self.familiar_daily_cost_usd
        ):
            return "familiar_daily_cost"
        if self.per_user_daily_tokens is not None and usage.tokens >= self.per_user_daily_tokens:
            return "user_daily_tokens"
        if (
            self.per_user_daily_cost_usd is not None
            and usage.cost_usd >= self.per_user_daily_cost_usd
        ):
            return "user_daily_cost"
        return None

    def check(self, user_key: str, today: date) -> BudgetDecision:
        """Return whether ``user_key`` may start a turn on ``today``.

        ``notify`` is True only on the first refusal of this user in the day window.
        """
        self._roll(today)
        usage = self._usage(user_key)
        reason = self._refusal(usage)
        if reason is None:
            return BudgetDecision(True, "ok")
        notify = not usage.notified
        usage.notified = True
        return BudgetDecision(False, reason, notify)

    def charge(self, user_key: str, today: date, tokens: int, cost_usd: float) -> None:
        """Add one turn's usage to ``user_key`` and to the familiar's totals.

        Raises:
            ValueError: on negative ``tokens`` or ``cost_usd``.
        """
        if tokens < 0 or cost_usd < 0:
            raise ValueError("usage must not be negative")
        self._roll(today)
        usage = self._usage(user_key)
        usage.tokens += tokens
        usage.cost_usd += cost_usd
        self._tokens += tokens
        self._cost_usd += cost_usd

    def charge_familiar(self, today: date, tokens: int, cost_usd: float) -> None:
        """Add usage no user caused (e.g. post-session notes) to the familiar's totals only."""
        if tokens < 0 or cost_usd < 0:
            raise ValueError("usage must not be negative")
        self._roll(today)
        self._tokens += tokens
        self._cost_usd += cost_usd

    def load(self, user_key: str, today: date, tokens: int, cost_usd: float) -> None:
        """Seed ``user_key``'s usage for ``today`` from the usage store (at start-up).

        Sets (not adds to) the user's totals and adjusts the familiar's totals by the
        difference, so loading the same user twice does not double count. Usage for a day other
        than the current window's is ignored when the window is already newer.
        """
        if tokens < 0 or cost_usd < 0:
            raise ValueError("usage must not be negative")
        self._roll(today)
        if today != self._day:
            return
        usage = self._usage(user_key)
        self._tokens += tokens - usage.tokens
        self._cost_usd += cost_usd - usage.cost_usd
        usage.tokens = tokens
        usage.cost_usd = cost_usd

    def user_usage(self, user_key: str, today: date) -> tuple[int, float]:
        """Return ``(tokens, cost_usd)`` used by ``user_key`` in the window of ``today``."""
        self._roll(today)
        usage = self._users.get(user_key)
        return (0, 0.0) if usage is None else (usage.tokens, usage.cost_usd)

    def familiar_usage(self, today: date) -> tuple[int, float]:
        """Return ``(tokens, cost_usd)`` used by the whole familiar in the window of ``today``."""
        self._roll(today)
        return self._tokens, self._cost_usd


class InputLimiter:
    """Strips control characters from user input and caps its length with a visible marker.

    Raises:
        ValueError: if ``max_chars`` is less than 1.
    """

    __slots__ = ("max_chars",)

    def __init__(self, max_chars: int) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.max_chars = max_chars

    def limit(self, text: str) -> tuple[str, bool]:
        """Return ``(clean_capped_text, truncated)``; see :func:`~.sanitize.cap_text`."""
        return cap_text(strip_control(text), max_chars=self.max_chars)


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """What to do with one inbound turn.

    Attributes:
        action: ``"answer"`` (go ahead with ``text``), ``"refuse_notice"`` (do not answer; post
            ``notice`` to the user) or ``"ignore"`` (do nothing visible).
        text: the cleaned, capped input to answer; empty unless ``action == "answer"``.
        notice: a short message for the user, or None. With ``"answer"`` it reports truncation.
        reason: a snake_case code for the log.
        truncated: the input was cut to the input limit.
    """

    action: Literal["answer", "refuse_notice", "ignore"]
    text: str
    notice: str | None
    reason: str
    truncated: bool = False


class TurnPolicy:
    """Access, budget, rate limit and input cap, decided in that order for each turn.

    Refusals for budget and rate limits notify a user once per episode (budget: once per day
    window; rate: once until a turn of theirs is accepted again) and then stay silent, so a
    spammer cannot make the familiar spam back. Access refusals are always silent. Operators skip
    the rate limit but not the budgets, which protect the operator's bill.

    Args:
        access: who may be answered.
        rate_limiter: per-user turn rate.
        budget: daily token and cost budgets.
        input_limiter: the input length cap.
        max_notice_keys: bound on users remembered as already told about their rate limit.
    """

    __slots__ = ("_rate_noticed", "access", "budget", "input_limiter", "max_notice_keys", "rate")

    def __init__(
        self,
        *,
        access: AccessPolicy,
        rate_limiter: RateLimiter,
        budget: BudgetLedger,
        input_limiter: InputLimiter,
        max_notice_keys: int = 10_000,
    ) -> None:
        self.access = access
        self.rate = rate_limiter
        self.budget = budget
        self.input_limiter = input_limiter
        self.max_notice_keys = max_notice_keys
        self._rate_noticed: OrderedDict[str, None] = OrderedDict()

    def evaluate(self, author: Author, text: str, now_ns: int, today: date) -> PolicyVerdict:
        """Decide whether to answer ``text`` from ``author``.

        Budget and rate checks do not spend anything on refusal; an accepted turn takes one rate
        token. Charge the turn's usage afterwards with :meth:`charge`.
        """
        access = self.access.decide(author)
        if not access.allowed:
            return PolicyVerdict("ignore", "", None, access.reason)
        budget = self.budget.check(author.key, today)
        if not budget.allowed:
            if budget.notify:
                notice = "I've reached my daily limit for now; I can talk again tomorrow."
                if budget.reason.startswith("user_"):
                    notice = "You've reached your daily limit with me; let's talk again tomorrow."
                return PolicyVerdict("refuse_notice", "", notice, budget.reason)
            return PolicyVerdict("ignore", "", None, budget.reason)
        if not author.is_operator and not self.rate.try_take(author.key, now_ns):
            if author.key in self._rate_noticed:
                return PolicyVerdict("ignore", "", None, "rate_limited")
            self._remember_notice(author.key)
            wait_s = max(1, math.ceil(self.rate.retry_after_s(author.key, now_ns)))
            notice = f"You're sending messages faster than I can answer; try again in {wait_s} s."
            return PolicyVerdict("refuse_notice", "", notice, "rate_limited")
        self._rate_noticed.pop(author.key, None)
        capped, truncated = self.input_limiter.limit(text)
        if truncated:
            notice = (
                f"Your message was long, so I only read the first "
                f"{self.input_limiter.max_chars} characters."
            )
            return PolicyVerdict("answer", capped, notice, "input_truncated", truncated=True)
        return PolicyVerdict("answer", capped, None, access.reason)

    def charge(self, author: Author, today: date, tokens: int, cost_usd: float) -> None:
        """Record a finished turn's usage against ``author`` and the familiar."""
        self.budget.charge(author.key, today, tokens, cost_usd)

    def _remember_notice(self, key: str) -> None:
        self._rate_noticed[key] = None
        if len(self._rate_noticed) > self.max_notice_keys:
            self._rate_noticed.popitem(last=False)
