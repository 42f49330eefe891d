"""Inbound events, keys and timing records."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.core.events import (
    TWITCH_EVENT_KINDS,
    Author,
    ConversationKey,
    Modality,
    Platform,
    TextMessage,
    TextTurnTimings,
    TwitchEvent,
    Utterance,
    VoiceTurnTimings,
    modality_of,
)


@pytest.fixture(name="alice")
def _alice() -> Author:
    return Author(Platform.DISCORD, "42", "alice", display_name="Alice")


@pytest.fixture(name="channel")
def _channel() -> ConversationKey:
    return ConversationKey(Platform.DISCORD, "123", guild_id="9")


class TestAuthor:
    def test_key_combines_platform_and_id(self, alice: Author) -> None:
        """The policy key is platform and user id, never the name."""
        assert alice.key == "discord:42"

    def test_shown_name_prefers_display_name(self, alice: Author) -> None:
        """The display name is shown when there is one, else the account name."""
        assert alice.shown_name == "Alice"
        assert dataclasses.replace(alice, display_name=None).shown_name == "alice"

    def test_is_frozen(self, alice: Author) -> None:
        """Authors are immutable values."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            alice.name = "mallory"  # type: ignore[misc]


class TestConversationKey:
    def test_as_str(self, channel: ConversationKey) -> None:
        """The string form is platform and channel id."""
        assert channel.as_str() == "discord:123"

    def test_parse_with_colon_in_channel(self) -> None:
        """Only the first colon separates the platform."""
        key = ConversationKey.parse("twitch:chan:extra")
        assert key == ConversationKey(Platform.TWITCH, "chan:extra")

    @pytest.mark.parametrize("value", ["discord", "discord:", "irc:1", ":1", ""])
    def test_parse_rejects_malformed(self, value: str) -> None:
        """Missing separators, empty ids and unknown platforms are rejected."""
        with pytest.raises(ValueError, match="conversation key"):
            ConversationKey.parse(value)

    @given(st.sampled_from(list(Platform)), st.text(min_size=1), st.none() | st.text())
    def test_round_trip(self, platform: Platform, channel_id: str, guild: str | None) -> None:
        """Parsing as_str() gives back the key (guild passed separately)."""
        key = ConversationKey(platform, channel_id, guild)
        assert ConversationKey.parse(key.as_str(), guild_id=guild) == key


class TestTwitchEvent:
    def test_accepts_every_known_kind(self, channel: ConversationKey, alice: Author) -> None:
        """All documented kinds construct."""
        for kind in sorted(TWITCH_EVENT_KINDS):
            event = TwitchEvent(channel, alice, kind, "d", 1)  # type: ignore[arg-type]
            assert event.kind == kind

    def test_rejects_unknown_kind(self, channel: ConversationKey, alice: Author) -> None:
        """An unknown kind is refused at construction."""
        with pytest.raises(ValueError, match="twitch event kind"):
            TwitchEvent(channel, alice, "hype_train", "d", 1)  # type: ignore[arg-type]


class TestModalityOf:
    def test_each_event_maps_to_its_modality(self, channel: ConversationKey, alice: Author) -> None:
        """Text, terminal, voice and Twitch events report where replies go."""
        terminal = ConversationKey(Platform.TERMINAL, "tty")
        twitch = ConversationKey(Platform.TWITCH, "c")
        assert modality_of(TextMessage(channel, alice, "hi", "m1", 1)) is Modality.TEXT
        assert modality_of(TextMessage(terminal, alice, "hi", "m1", 1)) is Modality.TERMINAL
        assert modality_of(Utterance(channel, alice, "hi", 1, 2, 3, 0.9)) is Modality.VOICE
        assert modality_of(TwitchEvent(twitch, alice, "chat", "hi", 1)) is Modality.TWITCH


class TestTextTurnTimings:
    def test_durations_from_received(self) -> None:
        """Durations are milliseconds since the message was received."""
        timings = TextTurnTimings("t", received_ns=1_000_000)
        timings.stamp("typing_sent", 2_000_000)
        timings.stamp("posted", 501_000_000)
        assert timings.durations_ms() == {"typing_sent": 1.0, "posted": 500.0}

    def test_first_stamp_wins(self) -> None:
        """Stamping a stage twice keeps the first reading."""
        timings = TextTurnTimings("t", received_ns=0)
        assert timings.stamp("first_token", 5) is True
        assert timings.stamp("first_token", 9) is False
        assert timings.first_token_ns == 5

    def test_unknown_stage_is_rejected(self) -> None:
        """A voice-only stage is not a text stage."""
        with pytest.raises(ValueError, match="timing stage"):
            TextTurnTimings("t", received_ns=0).stamp("first_audio", 1)


class TestVoiceTurnTimings:
    def test_no_origin_no_durations(self) -> None:
        """Without an end-of-speech stamp there is nothing to measure from."""
        timings = VoiceTurnTimings("v")
        timings.stamp("first_frame", 10)
        assert timings.durations_ms() == {}

    def test_durations_in_stage_order(self) -> None:
        """Every stamped stage is reported relative to end of speech, in pipeline order."""
        timings = VoiceTurnTimings("v", speech_end_ns=0)
        for i, stage in enumerate(
            ["first_frame", "stt_final", "first_audio", "first_token", "first_clause"], start=1
        ):
            timings.stamp(stage, i * 1_000_000)
        assert list(timings.durations_ms()) == [
            "stt_final",
            "first_token",
            "first_clause",
            "first_audio",
            "first_frame",
        ]
        assert timings.durations_ms()["first_frame"] == 1.0
