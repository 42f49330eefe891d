"""Channel events: twitchio models in, neutral descriptions and policy decisions out."""

from __future__ import annotations

import pytest

from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.platforms.twitch.config import KindSection, TwitchSection
from familiar_connect.platforms.twitch.events import (
    ANONYMOUS_ID,
    ChannelInput,
    EventPolicy,
    channel_input,
    describe,
)
from tests.fakes.twitch_payloads import (
    ALICE,
    RAIDER,
    STREAMER,
    ad_break_event,
    cheer_event,
    follow_event,
    gift_event,
    raid_event,
    redemption_event,
    resub_event,
    sub_event,
)
from tests.platforms.twitch._models import model

KEY = ConversationKey(Platform.TWITCH, STREAMER.user_id)
S = 1_000_000_000


def inp(kind: str, **fields: object) -> ChannelInput:
    base: dict[str, object] = {
        "kind": kind,
        "message_id": "",
        "user_id": ALICE.user_id,
        "login": ALICE.login,
        "display_name": ALICE.display_name,
    }
    base.update(fields)
    return ChannelInput(**base)  # type: ignore[arg-type]


class TestChannelInput:
    def test_every_kind_is_read_from_its_model(self) -> None:
        """Each twitchio model yields who, how much and the viewer's words."""
        b = STREAMER
        cases = {
            "follow": (follow_event(broadcaster=b, user=ALICE), {}),
            "sub": (sub_event(broadcaster=b, user=ALICE, tier="3000"), {"tier": "3000"}),
            "resub": (
                resub_event(broadcaster=b, user=ALICE, text="hi", cumulative_months=9),
                {"amount": 9, "text": "hi", "streak": 1},
            ),
            "gift": (gift_event(broadcaster=b, user=ALICE, total=3), {"amount": 3}),
            "cheer": (
                cheer_event(broadcaster=b, user=ALICE, bits=250, text="yay"),
                {"amount": 250},
            ),
            "redemption": (
                redemption_event(broadcaster=b, user=ALICE, title="Hydrate", user_input="pls"),
                {"title": "Hydrate", "text": "pls"},
            ),
        }
        for kind, (event, expected) in cases.items():
            read = channel_input(kind, model(kind, event, message_id=f"id-{kind}"))
            assert (read.kind, read.user_id, read.display_name) == (kind, ALICE.user_id, "Alice")
            assert read.message_id == f"id-{kind}"
            for field_name, value in expected.items():
                assert getattr(read, field_name) == value

    def test_raid_ad_break_and_anonymous(self) -> None:
        """Raids name the raider, ad breaks the requester, anonymous gifts a placeholder viewer."""
        raid = channel_input(
            "raid", model("raid", raid_event(broadcaster=STREAMER, raider=RAIDER, viewers=5))
        )
        assert (raid.user_id, raid.amount) == (RAIDER.user_id, 5)
        ad = channel_input(
            "ad_break", model("ad_break", ad_break_event(broadcaster=STREAMER, automatic=True))
        )
        assert ad.automatic and ad.amount == 60
        gift = channel_input(
            "gift", model("gift", gift_event(broadcaster=STREAMER, user=None, total=2))
        )
        assert gift.user_id == ANONYMOUS_ID and gift.display_name == "An anonymous viewer"

    def test_unknown_kind_is_refused(self) -> None:
        """A kind that is not a channel event is a ValueError."""
        with pytest.raises(ValueError):
            channel_input("chat", object())


class TestDescribe:
    def test_descriptions_are_neutral_sentences(self) -> None:
        """Each kind reads as one factual sentence with its amounts."""
        assert describe(inp("follow")) == "Alice followed the channel."
        assert describe(inp("sub", tier="2000")) == "Alice subscribed at Tier 2."
        assert (
            describe(inp("resub", tier="1000", amount=1, streak=None))
            == "Alice resubscribed at Tier 1: 1 month in total."
        )
        assert describe(inp("gift", amount=1, tier="1000")) == (
            "Alice gifted a subscription at Tier 1 to the community."
        )
        assert describe(inp("cheer", amount=1)) == "Alice cheered 1 bit."
        assert describe(inp("raid", amount=1)) == "Alice raided the channel with 1 viewer."
        assert describe(inp("ad_break", amount=30, automatic=True)) == (
            "An ad break of 30 seconds began (scheduled automatically)."
        )

    def test_viewer_words_are_cleaned_and_cut(self) -> None:
        """Control and invisible characters go, lines join, and long words are cut with a marker."""
        text = "line one\nline\u200b two\x07 " + "y" * 400
        out = describe(inp("redemption", title="Ask\u202e", text=text), max_viewer_text_chars=60)
        assert "\n" not in out and "\u200b" not in out and "\x07" not in out and "\u202e" not in out
        assert out.startswith(
            'Alice redeemed the channel-point reward "Ask". Their input: "line one line two'
        )
        assert "…[truncated" in out
        assert len(out) < 200

    def test_hostile_display_name_is_sanitised(self) -> None:
        """A display name cannot smuggle fence or quote characters into the sentence."""
        out = describe(inp("follow", display_name='<data source="x">"Evil"'))
        assert "<" not in out and '"' not in out


@pytest.fixture(name="policy")
def fixture_policy() -> EventPolicy:
    config = TwitchSection(
        min_bits=100,
        redemptions=["Ask Familiar"],
        follow=KindSection(priority=20, cooldown_s=60, per_minute=3),
        ad_break=KindSection(enabled=False),
        chat=KindSection(priority=10, cooldown_s=5, per_minute=600),
    )
    return EventPolicy(config, key=KEY, operator_ids={STREAMER.user_id})


class TestEventPolicy:
    def test_accepted_event_carries_priority_and_route(self, policy: EventPolicy) -> None:
        """A reaction gets the kind's priority, the viewer as author and the kind's answer route."""
        decision = policy.decide(inp("raid", amount=10), S)
        assert decision.action == "react" and decision.route == "chat"
        assert decision.event is not None
        assert decision.event.priority == 80 and decision.event.amount == 10
        assert decision.event.author.user_id == ALICE.user_id

    def test_thresholds_and_allow_list_remember(self, policy: EventPolicy) -> None:
        """Small cheers and rewards not on the list are remembered; titles match case-insensitively."""
        assert policy.decide(inp("cheer", amount=99), S).reason == "below_min_bits"
        assert policy.decide(inp("cheer", amount=100), S).action == "react"
        assert policy.decide(inp("redemption", title="Other"), S).reason == "reward_not_allowed"
        assert policy.decide(inp("redemption", title=" ask familiar "), S).action == "react"

    def test_drops_disabled_duplicate_and_gift_recipients(self, policy: EventPolicy) -> None:
        """Disabled kinds, repeated notifications and gifted recipients are dropped."""
        assert policy.decide(inp("ad_break", amount=30), S).reason == "disabled"
        assert policy.decide(inp("sub", message_id="n1"), S).action == "react"
        assert policy.decide(inp("sub", message_id="n1"), S).reason == "duplicate"
        assert policy.decide(inp("sub", gifted=True), S).reason == "gift_recipient"
        policy.disable("cheer", "revoked:authorization_revoked")
        assert policy.decide(inp("cheer", amount=500), S).reason == "revoked:authorization_revoked"
        assert not policy.enabled("cheer")

    def test_per_viewer_cooldown(self, policy: EventPolicy) -> None:
        """Inside its cooldown the same viewer's follow is remembered; another viewer's is not affected."""
        assert policy.decide(inp("follow"), S).action == "react"
        assert policy.decide(inp("follow"), 30 * S).reason == "cooldown"
        assert policy.decide(inp("follow", user_id="9"), 30 * S).action == "react"
        assert policy.decide(inp("follow"), 62 * S).action == "react"

    def test_per_minute_cap_drops_a_wave(self, policy: EventPolicy) -> None:
        """A follow wave past the per-minute cap is dropped and counted."""
        actions = [policy.decide(inp("follow", user_id=str(n)), S).action for n in range(5)]
        assert actions == ["react", "react", "react", "drop", "drop"]
        assert policy.counts["follow:kind_rate"] == 2

    def test_chat_cooldown(self, policy: EventPolicy) -> None:
        """Addressed chat from one person is answered at most once per chat cooldown."""
        assert policy.allow_chat("1", S)
        assert not policy.allow_chat("1", 2 * S)
        assert policy.allow_chat("2", 2 * S)
        assert policy.allow_chat("1", 7 * S)

    def test_operator_flag(self, policy: EventPolicy) -> None:
        """Events from an operator id carry is_operator."""
        decision = policy.decide(inp("raid", user_id=STREAMER.user_id, amount=1), S)
        assert decision.event is not None and decision.event.author.is_operator
