"""Replies into Twitch chat through Helix, within Twitch's limits; and a sink that fans out.

:class:`TwitchChatSink` is the orchestrator's ``ReplySink`` (mode ``"text"``) for the channel.
Twitch has no typing indicator and shows messages whole, so it ignores the streamed deltas and
in ``end()`` posts the reply through ``POST /helix/chat/messages``:

- on one line (chat shows no newlines), split at Twitch's 500-character limit and capped at
  ``max_messages`` parts, the last one ending with a visible cut marker;
- the first part as a reply to the chat message that triggered it, when there is one;
- each part through the shared :class:`ChatSendLimiter` (20 messages per 30 s by default,
  Twitch's limit for a normal account; up to 100 for a moderator bot);
- a message Twitch rejects (``is_sent: false`` with a ``drop_reason``) is logged with its reason
  and never retried; the parts after it are not sent either;
- a 429 pauses every sender for the time Twitch asked (or a second) and retries the part, at
  most twice; a 401 that survived twitchio's one refresh is reported through
  ``on_auth_failure`` (the adapter stops with a clear error) and nothing more is sent;
- any other failure (a 5xx, a timeout, a 429 that outlasts the retries) is not retried (the
  message may have been posted) and is reported through ``on_send_failure``, so the operator
  sees it: a reply that cannot be posted cannot carry its own notice.

:class:`FanOutSink` drives several sinks as one (Twitch chat and the voice channel), so a raid
can be answered in chat and out loud with one generation.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from familiar_connect.conversation.sinks import ReplySink, SinkMode
from familiar_connect.core.sanitize import truncation_marker
from familiar_connect.core.splitting import split_message
from familiar_connect.errors import ProviderAuthError, ProviderError, ProviderRateLimited

__all__ = [
    "TWITCH_MESSAGE_LIMIT",
    "ChatPoster",
    "ChatSendLimiter",
    "ChatSinkStats",
    "FanOutSink",
    "PostResult",
    "TwitchChatSink",
    "chat_parts",
]

log = structlog.get_logger(__name__)

TWITCH_MESSAGE_LIMIT = 500
"""Characters in one Twitch chat message."""
_MAX_NOTICE_CHARS = 300
_MAX_RATE_RETRIES = 2
_MAX_PAUSE_S = 30.0


@dataclass(frozen=True, slots=True)
class PostResult:
    """What Helix said about one message.

    Attributes:
        sent: ``is_sent``.
        message_id: the new message's id when sent.
        drop_code: ``drop_reason.code`` when not sent.
        drop_message: ``drop_reason.message`` when not sent.
    """

    sent: bool
    message_id: str = ""
    drop_code: str = ""
    drop_message: str = ""


class ChatPoster(Protocol):
    """Posts one chat message as the bot (``POST /helix/chat/messages``)."""

    async def post(self, text: str, *, reply_to: str | None) -> PostResult:
        """Send ``text`` (at most 500 characters).

        Raises:
            ProviderRateLimited: 429 (``retry_after_s`` when Twitch said).
            ProviderAuthError: the token was rejected even after a refresh.
            ProviderError: any other failure.
        """
        ...


@dataclass(slots=True)
class ChatSinkStats:
    """Counters shared by the channel's sinks (read by the status view and the tests)."""

    posted: int = 0
    dropped: int = 0
    rate_limited: int = 0
    failures: int = 0
    truncated: int = 0


class ChatSendLimiter:
    """Twitch's chat send limit for the bot, as a sliding window, plus pauses a 429 asks for.

    Twitch counts messages in any 30-second window; a token bucket of the same size would
    let a full burst and then its refill through in one window (up to twice the limit),
    which Twitch answers with 429s and, repeated, a temporary send ban.

    Args:
        messages_per_30s: most messages in any window.
        default_pause_s: the pause after a 429 that did not say how long to wait.
        window_s: the window's length (30 s on Twitch; shorter in tests).
    """

    def __init__(
        self, *, messages_per_30s: int = 20, default_pause_s: float = 1.0, window_s: float = 30.0
    ) -> None:
        if messages_per_30s < 1 or window_s <= 0:
            raise ValueError("messages_per_30s must be >= 1 and window_s positive")
        self._window_ns = int(window_s * 1e9)
        self._sent_ns: deque[int] = deque(maxlen=messages_per_30s)
        self._paused_until_ns = 0
        self.default_pause_s = default_pause_s

    def pause(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (after a 429)."""
        until = time.monotonic_ns() + int(min(max(seconds, 0.0), _MAX_PAUSE_S) * 1e9)
        self._paused_until_ns = max(self._paused_until_ns, until)

    async def wait(self) -> None:
        """Wait until one more message may go. Safe to cancel: nothing is taken then."""
        while True:
            now_ns = time.monotonic_ns()
            if now_ns < self._paused_until_ns:
                await asyncio.sleep((self._paused_until_ns - now_ns) / 1e9)
                continue
            sent = self._sent_ns
            if len(sent) < (sent.maxlen or 0) or now_ns - sent[0] >= self._window_ns:
                sent.append(now_ns)  # full: the oldest send leaves the window
                return
            await asyncio.sleep((sent[0] + self._window_ns - now_ns) / 1e9)


def chat_parts(
    text: str, *, max_messages: int, limit: int = TWITCH_MESSAGE_LIMIT
) -> tuple[list[str], bool]:
    """The chat messages for a reply: one line, split at ``limit``, at most ``max_messages``.

    A message may not start with ``/`` (Twitch chat commands), so leading slashes are removed.

    Returns:
        ``(parts, truncated)``; the last part carries a visible marker when truncated.
    """
    flat = " ".join(text.split())
    parts = [part.lstrip("/").strip() for part in split_message(flat, limit=limit)]
    parts = [part for part in parts if part]
    if len(parts) <= max_messages:
        return parts, False
    kept = parts[:max_messages]
    marker = " " + truncation_marker(sum(len(part) for part in parts[max_messages:]))
    kept[-1] = kept[-1][: limit - len(marker)].rstrip() + marker
    return kept, True


class TwitchChatSink:
    """``ReplySink`` (mode ``"text"``) that posts the reply to the channel's chat.

    Args:
        poster: sends one message through Helix.
        limiter: the channel's shared send limiter.
        stats: the channel's shared counters.
        reply_to: the chat message id the first part replies to.
        max_messages: parts one reply may take.
        on_auth_failure: told when Twitch rejects the bot's token for good.
        on_send_failure: told when a message could not be posted for another reason.
    """

    mode: SinkMode = "text"

    def __init__(
        self,
        poster: ChatPoster,
        *,
        limiter: ChatSendLimiter,
        stats: ChatSinkStats,
        reply_to: str | None = None,
        max_messages: int = 3,
        on_auth_failure: Callable[[ProviderAuthError], None] | None = None,
        on_send_failure: Callable[[ProviderError], None] | None = None,
    ) -> None:
        self._poster = poster
        self._limiter = limiter
        self._stats = stats
        self._reply_to = reply_to
        self._max_messages = max_messages
        self._on_auth_failure = on_auth_failure
        self._on_send_failure = on_send_failure
        self._posted: list[str] = []
        self.posted_ns: int | None = None

    async def begin(self) -> None:
        self._posted = []

    async def send(self, piece: str) -> None:
        """Streamed deltas: chat gets the whole reply at the end, so nothing to do."""

    async def end(self, text: str) -> str:
        """Post the reply; return what was posted. Cancellation stops before the next part."""
        self._posted = []
        parts, truncated = chat_parts(text, max_messages=self._max_messages)
        if truncated:
            self._stats.truncated += 1
        for index, part in enumerate(parts):
            if not await self._post(part, reply_to=self._reply_to if index == 0 else None):
                break
        return " ".join(self._posted)

    async def cancel(self) -> str | None:
        return " ".join(self._posted)

    async def notice(self, text: str) -> None:
        parts, _ = chat_parts(text[:_MAX_NOTICE_CHARS], max_messages=1)
        if parts:
            await self._post(parts[0], reply_to=self._reply_to, record=False)

    async def _post(self, part: str, *, reply_to: str | None, record: bool = True) -> bool:
        for _attempt in range(_MAX_RATE_RETRIES + 1):
            await self._limiter.wait()
            try:
                result = await self._poster.post(part, reply_to=reply_to)
            except ProviderRateLimited as exc:
                self._stats.rate_limited += 1
                pause_s = (
                    exc.retry_after_s
                    if exc.retry_after_s is not None
                    else self._limiter.default_pause_s
                )
                log.warning("twitch_chat_rate_limited", retry_in_s=round(pause_s, 2))
                self._limiter.pause(pause_s)
                continue
            except ProviderAuthError as exc:
                self._stats.failures += 1
                log.error("twitch_chat_send_unauthorised", error=str(exc))
                if self._on_auth_failure is not None:
                    self._on_auth_failure(exc)
                return False
            except ProviderError as exc:
                self._stats.failures += 1
                log.error(
                    "twitch_chat_send_failed",
                    status=exc.status,
                    kind=type(exc).__name__,
                    error=str(exc),
                )
                self._send_failed(exc)
                return False
            if not result.sent:
                self._stats.dropped += 1
                log.warning(
                    "twitch_chat_message_dropped",
                    code=result.drop_code[:64],
                    reason=result.drop_message[:200],
                    chars=len(part),
                )
                return False
            if record:
                self._posted.append(part)
            self._stats.posted += 1
            self.posted_ns = time.monotonic_ns()
            return True
        self._stats.failures += 1
        log.error("twitch_chat_send_gave_up", reason="rate_limited", attempts=_MAX_RATE_RETRIES + 1)
        self._send_failed(
            ProviderRateLimited(
                f"sending a chat message: still rate limited after {_MAX_RATE_RETRIES + 1} tries",
                provider="twitch",
                status=429,
            )
        )
        return False

    def _send_failed(self, error: ProviderError) -> None:
        if self._on_send_failure is None:
            return
        try:
            self._on_send_failure(error)
        except Exception:
            log.warning("twitch_send_failure_listener_failed", exc_info=True)


class FanOutSink:
    """One ``ReplySink`` over several: every sink gets the reply, a failing one never stops the others.

    The mode is ``"clauses"`` when any sink speaks (text sinks ignore what ``send`` gives them
    and post the whole reply in ``end``). ``end`` and ``cancel`` return what the first sink
    delivered (the chat sink goes first), or the next one's when it delivered nothing.
    Notices go to text sinks only.

    Raises:
        ValueError: no sinks.
    """

    def __init__(self, sinks: Sequence[ReplySink]) -> None:
        if not sinks:
            raise ValueError("a fan-out needs at least one sink")
        self.sinks = list(sinks)
        self.mode: SinkMode = (
            "clauses" if any(sink.mode == "clauses" for sink in self.sinks) else "text"
        )

    async def begin(self) -> None:
        await self._each("begin", lambda sink: sink.begin())

    async def send(self, piece: str) -> None:
        await self._each("send", lambda sink: sink.send(piece))

    async def end(self, text: str) -> str:
        results = await self._each("end", lambda sink: sink.end(text))
        return next((r for r in results if isinstance(r, str) and r), "")

    async def cancel(self) -> str | None:
        results = await self._each("cancel", lambda sink: sink.cancel())
        return next((r for r in results if isinstance(r, str) and r), None)

    async def notice(self, text: str) -> None:
        texts = [sink for sink in self.sinks if sink.mode == "text"] or self.sinks[:1]
        for sink in texts:
            try:
                await sink.notice(text)
            except Exception:
                log.warning("fan_out_notice_failed", exc_info=True)

    async def _each(self, what: str, call: Callable[[ReplySink], object]) -> list[object]:
        async def one(sink: ReplySink) -> object:
            try:
                return await call(sink)  # type: ignore[misc]
            except Exception:
                log.warning(
                    "fan_out_sink_failed", step=what, sink=type(sink).__name__, exc_info=True
                )
                return None

        return list(await asyncio.gather(*(one(sink) for sink in self.sinks)))
