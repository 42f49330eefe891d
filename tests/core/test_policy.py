"""Access lists, rate limits, budgets, input caps and the turn facade."""

from __future__ import annotations

import math
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.core.events import Author, Platform
from familiar_connect.core.policy import (
    AccessPolicy,
    BudgetLedger,
    InputLimiter,
    RateLimiter,
    TokenBucket,
    TurnPolicy,
)

S = 1_000_000_000  # one second in nanoseconds
DAY1 = date(2026, 3, 1)
DAY2 = date(2026, 3, 2)


def _author(user_id: str = "1", **kwargs: object) -> Author:
    return Author(Platform.DISCORD, user_id, f"user{user_id}", **kwargs)  # type: ignore[arg-type]


class TestAccessPolicy:
    def test_no_lists_allows_everyone(self) -> None:
        """Without allow lists any human is allowed."""
        assert AccessPolicy().decide(_author()).allowed

    def test_allow_list_restricts_its_platform(self) -> None:
        """A platform's allow list admits only its members."""
        policy = AccessPolicy(allow={"discord": frozenset({"1"})})
        assert policy.decide(_author("1")).allowed
        assert policy.decide(_author("2")).reason == "not_allowed"

    def test_allow_list_leaves_other_platforms_open(self) -> None:
        """A Discord allow list does not restrict Twitch."""
        policy = AccessPolicy(allow={"discord": frozenset({"1"}), "twitch": None})
        twitch_user = Author(Platform.TWITCH, "99", "viewer")
        assert policy.decide(twitch_user).allowed

    def test_deny_wins_over_allow(self) -> None:
        """A user on both lists is refused."""
        policy = AccessPolicy(
            allow={"discord": frozenset({"1"})}, deny={"discord": frozenset({"1"})}
        )
        assert policy.decide(_author("1")).reason == "denied"

    def test_deny_wins_over_operator(self) -> None:
        """Even the operator account can be denied explicitly."""
        policy = AccessPolicy(deny={"discord": frozenset({"1"})})
        assert not policy.decide(_author("1", is_operator=True)).allowed

    def test_operator_bypasses_allow_list(self) -> None:
        """The operator is allowed without being on the allow list."""
        policy = AccessPolicy(allow={"discord": frozenset()})
        assert policy.decide(_author("1", is_operator=True)).reason == "operator"

    def test_bots_are_never_answered(self) -> None:
        """Bot accounts are refused to avoid reply loops."""
        assert AccessPolicy().decide(_author(is_bot=True)).reason == "bot"

    def test_opted_out_user_is_never_processed(self) -> None:
        """Opt-out beats everything, including operator status, and can be undone."""
        policy = AccessPolicy(opted_out={"discord:1"})
        assert policy.decide(_author("1", is_operator=True)).reason == "opted_out"
        policy.opt_in("discord:1")
        assert policy.decide(_author("1")).allowed
        policy.opt_out("discord:1")
        assert policy.is_opted_out("discord:1")

    def test_ids_are_per_platform(self) -> None:
        """Denying Discord user 1 does not deny Twitch user 1."""
        policy = AccessPolicy(deny={"discord": frozenset({"1"})})
        assert policy.decide(Author(Platform.TWITCH, "1", "x")).allowed


class TestTokenBucket:
    def test_starts_full_then_empties(self) -> None:
        """A new bucket allows a burst, then refuses."""
        bucket = TokenBucket(rate_per_s=1.0, burst=3)
        assert [bucket.try_take(0) for _ in range(4)] == [True, True, True, False]

    def test_refills_with_time(self) -> None:
        """Tokens come back at the configured rate."""
        bucket = TokenBucket(rate_per_s=2.0, burst=1)
        assert bucket.try_take(0)
        assert not bucket.try_take(S // 4)
        assert bucket.try_take(S // 2)

    def test_retry_after_reports_wait(self) -> None:
        """retry_after_s says how long until the next token."""
        bucket = TokenBucket(rate_per_s=0.5, burst=1)
        bucket.try_take(0)
        assert bucket.retry_after_s(0) == pytest.approx(2.0)
        assert bucket.retry_after_s(2 * S) == 0.0

    def test_cost_above_burst_never_succeeds(self) -> None:
        """A cost larger than the burst can never be paid."""
        bucket = TokenBucket(rate_per_s=1, burst=2)
        assert not bucket.try_take(10 * S, cost=3)
        assert bucket.retry_after_s(10 * S, cost=3) == math.inf

    def test_clock_going_backwards_refills_nothing(self) -> None:
        """A monotonic-clock step back gives no free tokens."""
        bucket = TokenBucket(rate_per_s=1, burst=1)
        assert bucket.try_take(10 * S)
        assert not bucket.try_take(5 * S)
        assert not bucket.try_take(10 * S)
        assert bucket.try_take(11 * S)

    @pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 1)])
    def test_rejects_non_positive(self, rate: float, burst: float) -> None:
        """Rates and bursts must be positive."""
        with pytest.raises(ValueError, match="positive"):
            TokenBucket(rate, burst)

    @given(st.lists(st.integers(min_value=0, max_value=10 * S), max_size=60))
    def test_never_exceeds_rate(self, times: list[int]) -> None:
        """Over any span, accepted takes never exceed burst + rate * elapsed."""
        bucket = TokenBucket(rate_per_s=2.0, burst=3)
        times = sorted(times)
        taken = sum(bucket.try_take(t) for t in times)
        if times:
            assert taken <= 3 + 2.0 * (times[-1] - times[0]) / S + 1e-9


class TestRateLimiter:
    def test_keys_are_independent(self) -> None:
        """One user's burst does not limit another."""
        limiter = RateLimiter(rate_per_s=1, burst=1)
        assert limiter.try_take("a", 0)
        assert not limiter.try_take("a", 0)
        assert limiter.try_take("b", 0)

    def test_unknown_key_has_no_wait(self) -> None:
        """A key never seen may go at once."""
        assert RateLimiter(rate_per_s=1, burst=1).retry_after_s("new", 0) == 0.0

    def test_table_is_bounded_lru(self) -> None:
        """Past max_keys the least recently used bucket is evicted and counted."""
        limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=2)
        limiter.try_take("a", 0)
        limiter.try_take("b", 0)
        limiter.try_take("a", 0)  # touch a, so b is the LRU
        limiter.try_take("c", 0)
        assert len(limiter) == 2
        assert limiter.evictions == 1
        assert limiter.retry_after_s("b", 0) == 0.0  # forgotten
        assert limiter.retry_after_s("a", 0) > 0.0  # remembered

    def test_rejects_zero_keys(self) -> None:
        """A table with no room is a configuration error."""
        with pytest.raises(ValueError, match="max_keys"):
            RateLimiter(1, 1, max_keys=0)


class TestBudgetLedger:
    def test_allows_under_limit(self) -> None:
        """A user under every limit may go ahead."""
        ledger = BudgetLedger(per_user_daily_tokens=100)
        ledger.charge("u", DAY1, 99, 0.0)
        assert ledger.check("u", DAY1).allowed

    def test_refuses_at_limit_and_notifies_once(self) -> None:
        """The first refusal in a day notifies; later ones are silent."""
        ledger = BudgetLedger(per_user_daily_tokens=100)
        ledger.charge("u", DAY1, 100, 0.0)
        first = ledger.check("u", DAY1)
        second = ledger.check("u", DAY1)
        assert (first.allowed, first.reason, first.notify) == (False, "user_daily_tokens", True)
        assert (second.allowed, second.notify) == (False, False)

    def test_cost_limit(self) -> None:
        """The per-user dollar limit refuses too."""
        ledger = BudgetLedger(per_user_daily_cost_usd=0.10)
        ledger.charge("u", DAY1, 1, 0.10)
        assert ledger.check("u", DAY1).reason == "user_daily_cost"

    def test_familiar_limit_refuses_everyone(self) -> None:
        """When the familiar's daily budget is spent, every user is refused, each told once."""
        ledger = BudgetLedger(familiar_daily_tokens=100, familiar_daily_cost_usd=5.0)
        ledger.charge("a", DAY1, 60, 0.0)
        ledger.charge("b", DAY1, 40, 0.0)
        decision = ledger.check("c", DAY1)
        assert (decision.reason, decision.notify) == ("familiar_daily_tokens", True)
        assert ledger.check("a", DAY1).notify
        assert not ledger.check("a", DAY1).notify

    def test_familiar_cost_limit_counts_background_usage(self) -> None:
        """Usage no user caused still counts against the familiar."""
        ledger = BudgetLedger(familiar_daily_cost_usd=1.0)
        ledger.charge_familiar(DAY1, 10, 1.0)
        assert ledger.check("u", DAY1).reason == "familiar_daily_cost"

    def test_window_resets_on_new_day(self) -> None:
        """A new day clears usage and the notified flag."""
        ledger = BudgetLedger(per_user_daily_tokens=10)
        ledger.charge("u", DAY1, 10, 0.0)
        assert ledger.check("u", DAY1).notify
        decision = ledger.check("u", DAY2)
        assert decision.allowed
        ledger.charge("u", DAY2, 10, 0.0)
        assert ledger.check("u", DAY2).notify

    def test_earlier_day_does_not_reset(self) -> None:
        """A clock step back keeps the current window rather than granting a new budget."""
        ledger = BudgetLedger(per_user_daily_tokens=10)
        ledger.charge("u", DAY2, 10, 0.0)
        assert not ledger.check("u", DAY1).allowed

    def test_load_sets_rather_than_adds(self) -> None:
        """Loading a user's stored usage twice does not double count."""
        ledger = BudgetLedger(per_user_daily_tokens=100)
        ledger.load("u", DAY1, 60, 0.5)
        ledger.load("u", DAY1, 60, 0.5)
        assert ledger.user_usage("u", DAY1) == (60, 0.5)
        assert ledger.familiar_usage(DAY1) == (60, 0.5)

    def test_load_of_stale_day_is_ignored(self) -> None:
        """Usage from a day before the current window does not count."""
        ledger = BudgetLedger()
        ledger.charge("v", DAY2, 1, 0.0)
        ledger.load("u", DAY1, 60, 0.5)
        assert ledger.user_usage("u", DAY2) == (0, 0.0)

    def test_negative_usage_is_rejected(self) -> None:
        """Charges cannot refund."""
        ledger = BudgetLedger()
        for call in (ledger.charge, ledger.load):
            with pytest.raises(ValueError, match="negative"):
                call("u", DAY1, -1, 0.0)
        with pytest.raises(ValueError, match="negative"):
            ledger.charge_familiar(DAY1, 0, -0.1)

    def test_users_are_bounded_but_familiar_total_is_kept(self) -> None:
        """Evicting a user keeps their usage in the familiar's total."""
        ledger = BudgetLedger(max_users=2)
        for user in "abc":
            ledger.charge(user, DAY1, 10, 0.0)
        assert ledger.evictions == 1
        assert ledger.user_usage("a", DAY1) == (0, 0.0)
        assert ledger.familiar_usage(DAY1) == (30, 0.0)

    def test_no_limits_allows_everything(self) -> None:
        """With every limit disabled nothing is refused."""
        ledger = BudgetLedger()
        ledger.charge("u", DAY1, 10**9, 10**6)
        assert ledger.check("u", DAY1).allowed


class TestInputLimiter:
    def test_strips_control_then_caps(self) -> None:
        """Control characters are removed before the length is counted."""
        limiter = InputLimiter(max_chars=100)
        assert limiter.limit("hi\x00\u200b there") == ("hi there", False)

    def test_caps_long_input_visibly(self) -> None:
        """Long input is cut with the marker."""
        text, truncated = InputLimiter(max_chars=50).limit("word " * 100)
        assert truncated
        assert len(text) <= 50
        assert "…[truncated" in text

    def test_rejects_zero(self) -> None:
        """A zero cap is a configuration error."""
        with pytest.raises(ValueError, match="max_chars"):
            InputLimiter(0)


@pytest.fixture(name="policy")
def _policy() -> TurnPolicy:
    return TurnPolicy(
        access=AccessPolicy(deny={"discord": frozenset({"666"})}),
        rate_limiter=RateLimiter(rate_per_s=0.5, burst=2),
        budget=BudgetLedger(per_user_daily_tokens=1000),
        input_limiter=InputLimiter(max_chars=100),
    )


class TestTurnPolicy:
    def test_answers_ordinary_turn(self, policy: TurnPolicy) -> None:
        """A normal message is answered with its cleaned text."""
        verdict = policy.evaluate(_author(), "hello\x07", 0, DAY1)
        assert (verdict.action, verdict.text, verdict.notice) == ("answer", "hello", None)

    def test_denied_user_is_ignored_silently(self, policy: TurnPolicy) -> None:
        """Access refusals never produce a notice."""
        verdict = policy.evaluate(_author("666"), "hi", 0, DAY1)
        assert (verdict.action, verdict.notice, verdict.reason) == ("ignore", None, "denied")

    def test_rate_limit_notices_once_per_episode(self, policy: TurnPolicy) -> None:
        """Past the burst the user is told once, then ignored, until a turn is accepted again."""
        user = _author()
        actions = [policy.evaluate(user, "hi", 0, DAY1).action for _ in range(4)]
        assert actions == ["answer", "answer", "refuse_notice", "ignore"]
        assert policy.evaluate(user, "hi", 2 * S, DAY1).action == "answer"
        assert policy.evaluate(user, "hi", 2 * S, DAY1).action == "refuse_notice"

    def test_rate_notice_says_when_to_retry(self, policy: TurnPolicy) -> None:
        """The rate-limit notice names a wait of whole seconds."""
        user = _author()
        policy.evaluate(user, "hi", 0, DAY1)
        policy.evaluate(user, "hi", 0, DAY1)
        verdict = policy.evaluate(user, "hi", 0, DAY1)
        assert verdict.notice is not None
        assert "2 s" in verdict.notice

    def test_operator_skips_rate_limit(self, policy: TurnPolicy) -> None:
        """The operator is never rate limited."""
        operator = _author("7", is_operator=True)
        assert all(policy.evaluate(operator, "hi", 0, DAY1).action == "answer" for _ in range(10))

    def test_budget_refusal_notifies_once_per_day(self, policy: TurnPolicy) -> None:
        """An exhausted user gets one notice, then silence, then a fresh day."""
        user = _author()
        policy.charge(user, DAY1, 1000, 0.0)
        first = policy.evaluate(user, "hi", 0, DAY1)
        assert first.action == "refuse_notice"
        assert first.notice is not None
        assert policy.evaluate(user, "hi", 0, DAY1).action == "ignore"
        assert policy.evaluate(user, "hi", 0, DAY2).action == "answer"

    def test_budget_refusal_spends_no_rate_token(self, policy: TurnPolicy) -> None:
        """Refused turns do not use up the user's rate allowance."""
        user = _author()
        policy.charge(user, DAY1, 1000, 0.0)
        for _ in range(5):
            policy.evaluate(user, "hi", 0, DAY1)
        assert policy.evaluate(user, "hi", 0, DAY2).action == "answer"
        assert policy.evaluate(user, "hi", 0, DAY2).action == "answer"

    def test_long_input_is_answered_truncated_with_notice(self, policy: TurnPolicy) -> None:
        """Oversized input is cut, answered, and the user is told."""
        verdict = policy.evaluate(_author(), "word " * 100, 0, DAY1)
        assert (verdict.action, verdict.truncated, verdict.reason) == (
            "answer",
            True,
            "input_truncated",
        )
        assert len(verdict.text) <= 100
        assert verdict.notice is not None
        assert "100" in verdict.notice
