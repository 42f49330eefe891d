"""Sending to Twitch chat: splitting, limits, drops, 429s, auth failures, and the fan-out sink."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from familiar_connect.platforms.twitch.sink import (
    ChatSendLimiter,
    ChatSinkStats,
    FanOutSink,
    PostResult,
    TwitchChatSink,
    chat_parts,
)
from tests.conversation.conftest import RecordingSink


@dataclass
class ScriptedPoster:
    """A ChatPoster that answers from a script (default: sent) and records what it was given."""

    script: list[object] = field(default_factory=list)
    calls: list[tuple[str, str | None]] = field(default_factory=list)

    async def post(self, text: str, *, reply_to: str | None) -> PostResult:
        self.calls.append((text, reply_to))
        outcome = self.script.pop(0) if self.script else PostResult(True, message_id="x")
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, PostResult)
        return outcome


@pytest.fixture(name="stats")
def fixture_stats() -> ChatSinkStats:
    return ChatSinkStats()


@pytest.fixture(name="limiter")
def fixture_limiter() -> ChatSendLimiter:
    return ChatSendLimiter(messages_per_30s=100, default_pause_s=0.01)


class TestChatParts:
    def test_one_line_and_at_most_500(self) -> None:
        """Newlines become spaces and every part fits Twitch's 500 characters."""
        parts, truncated = chat_parts("a\nb\n\n" + "word " * 300, max_messages=5)
        assert not truncated
        assert parts[0].startswith("a b word")
        assert all(len(part) <= 500 and "\n" not in part for part in parts)

    def test_too_long_is_cut_with_a_marker(self) -> None:
        """Past max_messages the last kept part ends with a visible cut marker."""
        parts, truncated = chat_parts("word " * 500, max_messages=2)
        assert truncated and len(parts) == 2
        assert parts[-1].endswith("chars]") and "…[truncated" in parts[-1]
        assert len(parts[-1]) <= 500

    def test_leading_slash_commands_are_defused(self) -> None:
        """A reply cannot start with a chat command."""
        assert chat_parts("/ban streamer", max_messages=1)[0] == ["ban streamer"]

    def test_blank_reply_has_no_parts(self) -> None:
        """Whitespace only gives nothing to send."""
        assert chat_parts("  \n ", max_messages=3) == ([], False)


class TestTwitchChatSink:
    async def test_reply_posts_parts_in_order_replying_once(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """The first part replies to the triggering message; the rest follow in order."""
        poster = ScriptedPoster()
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats, reply_to="m1", max_messages=3)
        await sink.begin()
        await sink.send("ignored delta")
        delivered = await sink.end("x " * 400)
        assert [reply for _, reply in poster.calls] == ["m1", None]
        assert delivered == " ".join(text for text, _ in poster.calls)
        assert stats.posted == 2

    async def test_dropped_message_stops_and_is_not_retried(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A drop_reason is counted, not retried, and the parts after it are not sent."""
        poster = ScriptedPoster([PostResult(False, drop_code="automod", drop_message="held")])
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats, max_messages=3)
        assert await sink.end("y " * 400) == ""
        assert len(poster.calls) == 1
        assert stats.dropped == 1

    async def test_rate_limit_is_retried_then_given_up(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A 429 is retried after a pause; three in a row give up on the message."""
        limited = ProviderRateLimited("slow", provider="twitch", status=429, retry_after_s=0.01)
        poster = ScriptedPoster([limited, PostResult(True)])
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats)
        assert await sink.end("hello") == "hello"
        assert stats.rate_limited == 1
        poster.script = [limited, limited, limited]
        assert await sink.end("again") == ""
        assert stats.failures == 1

    async def test_auth_failure_is_reported(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A token rejected for good reaches on_auth_failure and stops the reply."""
        seen: list[ProviderAuthError] = []
        error = ProviderAuthError("rejected", provider="twitch", status=401)
        sink = TwitchChatSink(
            ScriptedPoster([error]), limiter=limiter, stats=stats, on_auth_failure=seen.append
        )
        assert await sink.end("hi") == ""
        assert seen == [error]

    async def test_other_failures_are_counted(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A 5xx is logged and counted; nothing is retried forever."""
        poster = ScriptedPoster([ProviderUnavailable("down", provider="twitch", status=503)])
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats)
        assert await sink.end("hi") == ""
        assert stats.failures == 1 and len(poster.calls) == 1

    async def test_failures_reach_on_send_failure(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A 5xx, and a 429 that outlasts the retries, are each reported once to on_send_failure."""
        seen: list[BaseException] = []
        limited = ProviderRateLimited("slow", provider="twitch", status=429, retry_after_s=0.01)
        poster = ScriptedPoster([ProviderUnavailable("down", provider="twitch", status=502)])
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats, on_send_failure=seen.append)
        assert await sink.end("hi") == ""
        poster.script = [limited, limited, limited]
        assert await sink.end("again") == ""
        assert [getattr(error, "status", None) for error in seen] == [502, 429]

    async def test_a_failing_failure_listener_does_not_break_the_sink(
        self, stats: ChatSinkStats, limiter: ChatSendLimiter
    ) -> None:
        """A listener that raises is logged; the sink still answers and counts the failure."""

        def broken(_error: BaseException) -> None:
            raise RuntimeError("listener gone")

        poster = ScriptedPoster([ProviderUnavailable("down", provider="twitch", status=503)])
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats, on_send_failure=broken)
        assert await sink.end("hi") == ""
        assert stats.failures == 1

    async def test_notice_and_cancel(self, stats: ChatSinkStats, limiter: ChatSendLimiter) -> None:
        """A notice is one short message; cancel returns what was posted so far."""
        poster = ScriptedPoster()
        sink = TwitchChatSink(poster, limiter=limiter, stats=stats, reply_to="m9")
        await sink.notice("You're sending messages faster than I can answer" + "!" * 600)
        assert len(poster.calls) == 1 and len(poster.calls[0][0]) <= 300
        assert await sink.cancel() == ""


class TestChatSendLimiter:
    async def test_never_more_than_the_limit_in_any_window(self) -> None:
        """However the sends are timed, no window holds more than the limit (Twitch's rule)."""
        limiter = ChatSendLimiter(messages_per_30s=3, window_s=0.1)
        sent_ns = []
        for _ in range(8):
            await asyncio.wait_for(limiter.wait(), timeout=5)
            sent_ns.append(time.monotonic_ns())
        assert all(sent_ns[i + 3] - sent_ns[i] >= 100_000_000 for i in range(len(sent_ns) - 3))

    async def test_burst_then_waits(self) -> None:
        """The window lets its size through at once; a pause holds every sender."""
        limiter = ChatSendLimiter(messages_per_30s=3)
        for _ in range(3):
            await asyncio.wait_for(limiter.wait(), timeout=1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(limiter.wait(), timeout=0.05)
        paused = ChatSendLimiter(messages_per_30s=100)
        paused.pause(30)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(paused.wait(), timeout=0.05)


class TestFanOutSink:
    async def test_chat_and_voice_get_one_generation(self) -> None:
        """Both sinks get the reply; the voice sink gets the clauses; chat's delivery is returned."""
        chat, voice = RecordingSink(mode="text"), RecordingSink(mode="clauses")
        fan = FanOutSink([chat, voice])
        assert fan.mode == "clauses"
        await fan.begin()
        await fan.send("Hello there.")
        assert await fan.end("Hello there.") == "Hello there."
        assert voice.sent == ["Hello there."] and chat.posted == ["Hello there."]

    async def test_a_failing_sink_does_not_stop_the_other(self) -> None:
        """One sink raising leaves the others working; notices go to text sinks only."""

        class Broken(RecordingSink):
            async def end(self, text: str) -> str:
                raise RuntimeError("speaker unplugged")

        chat, voice = RecordingSink(mode="text"), Broken(mode="clauses")
        fan = FanOutSink([chat, voice])
        assert await fan.end("Hi") == "Hi"
        await fan.notice("limits")
        assert chat.notices == ["limits"] and voice.notices == []
        assert await fan.cancel() in ("", None)

    def test_needs_a_sink(self) -> None:
        """An empty fan-out is refused."""
        with pytest.raises(ValueError):
            FanOutSink([])
