"""Replies into a Discord text channel: typing while generating, split, polite mentions.

:class:`DiscordTextSink` is the orchestrator's ``ReplySink`` for one message's
channel. It shows the typing indicator from ``begin()`` until the reply is
posted (refreshed, since Discord's lasts about 10 s), ignores the streamed
deltas, and in ``end()`` posts the reply split at Discord's 2,000-character
limit without breaking code blocks, the first part as a reply to the message
that triggered it.

Mentions never ping ``@everyone``, ``@here`` or roles; a user is pinged only
when the familiar wrote an explicit mention of the person it is answering.
Sends pass a per-channel token bucket so a chatty familiar never hammers
Discord (discord.py still handles Discord's own 429 buckets); a send that
still fails is logged and counted, never retried forever.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import discord
import structlog

from familiar_connect.core.policy import TokenBucket
from familiar_connect.core.splitting import split_message
from familiar_connect.logs import log_redactor

__all__ = ["DiscordTextSink", "OutboundLimiter", "SinkStats"]

log = structlog.get_logger(__name__)

_USER_MENTION = re.compile(r"<@!?(\d{1,20})>")
_TYPING_REFRESH_S = 8.0
_MAX_TYPING_S = 300.0  # a stuck generation must not type forever
_MAX_NOTICE_CHARS = 500


@dataclass(slots=True)
class SinkStats:
    """Counters shared by every Discord sink (read by the dashboard)."""

    messages_posted: int = 0
    send_failures: int = 0
    typing_failures: int = 0


class OutboundLimiter:
    """Per-channel token buckets bounding how fast the familiar posts.

    Args:
        rate_per_s: sustained messages per second per channel.
        burst: messages that may go back to back.
        max_channels: buckets kept (least recently used forgotten).
    """

    def __init__(self, *, rate_per_s: float = 1.0, burst: int = 5, max_channels: int = 5_000):
        self._rate = rate_per_s
        self._burst = burst
        self._max = max_channels
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()

    async def wait(self, channel_id: int) -> None:
        """Wait until ``channel_id`` may receive one more message. Safe to cancel."""
        bucket = self._buckets.get(channel_id)
        if bucket is None:
            bucket = self._buckets[channel_id] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(channel_id)
        for _ in range(100):
            now_ns = time.monotonic_ns()
            if bucket.try_take(now_ns):
                return
            await asyncio.sleep(bucket.retry_after_s(now_ns))
        raise RuntimeError("outbound limiter never admitted the message")  # pragma: no cover


def allowed_mentions_for(text: str, *, author_id: int | None) -> discord.AllowedMentions:
    """Ping nobody, except the person answered when the familiar wrote their mention."""
    wanted = {int(match) for match in _USER_MENTION.findall(text)}
    users: list[discord.abc.Snowflake] | bool = (
        [discord.Object(author_id)] if author_id is not None and author_id in wanted else False
    )
    return discord.AllowedMentions(everyone=False, roles=False, users=users, replied_user=False)


class DiscordTextSink:
    """``ReplySink`` (mode ``"text"``) for one Discord channel, replying to one message."""

    mode = "text"

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reply_to: discord.Message | None,
        limiter: OutboundLimiter,
        stats: SinkStats,
        max_message_chars: int = 2_000,
    ) -> None:
        self._channel = channel
        self._reply_to = reply_to
        self._limiter = limiter
        self._stats = stats
        self._max_chars = max_message_chars
        self._typing: asyncio.Task[None] | None = None
        self._posted: list[str] = []
        self.posted_ns: int | None = None

    @property
    def channel_id(self) -> int:
        return int(getattr(self._channel, "id", 0))

    async def begin(self) -> None:
        self._posted = []
        self._stop_typing()
        self._typing = asyncio.get_running_loop().create_task(
            self._keep_typing(), name=f"discord:typing:{self.channel_id}"
        )
        # The first indicator goes out before generation starts, not "soon".
        await asyncio.sleep(0)

    async def send(self, piece: str) -> None:
        """Streamed deltas: Discord gets the whole reply at the end, so nothing to do."""

    async def end(self, text: str) -> str:
        # A model can be talked into repeating a secret it saw; it is never posted.
        text = log_redactor().redact(text)
        try:
            for index, part in enumerate(split_message(text, limit=self._max_chars)):
                reference = self._reply_to if index == 0 else None
                if not await self._post(part, reference=reference, mentions_text=text):
                    break
        finally:
            self._stop_typing()
        return "".join(self._posted)

    async def cancel(self) -> str | None:
        self._stop_typing()
        return "".join(self._posted)

    async def notice(self, text: str) -> None:
        await self._post(text[:_MAX_NOTICE_CHARS], reference=self._reply_to, mentions_text="")

    async def _post(
        self, part: str, *, reference: discord.Message | None, mentions_text: str
    ) -> bool:
        author_id = self._reply_to.author.id if self._reply_to is not None else None
        await self._limiter.wait(self.channel_id)
        try:
            await self._channel.send(
                part,
                reference=reference,
                allowed_mentions=allowed_mentions_for(mentions_text, author_id=author_id),
                mention_author=False,
            )
        except discord.HTTPException as exc:
            if reference is not None and exc.status in (400, 404):
                # The message replied to was deleted meanwhile: post without the reference.
                return await self._post(part, reference=None, mentions_text=mentions_text)
            self._stats.send_failures += 1
            log.error(
                "discord_send_failed",
                channel_id=self.channel_id,
                status=exc.status,
                code=exc.code,
                error=exc.text[:200],
            )
            return False
        self._posted.append(part)
        self._stats.messages_posted += 1
        self.posted_ns = time.monotonic_ns()
        self._stop_typing()
        return True

    async def _keep_typing(self) -> None:
        deadline = time.monotonic() + _MAX_TYPING_S
        while time.monotonic() < deadline:
            try:
                await self._channel.typing()
            except discord.HTTPException as exc:
                self._stats.typing_failures += 1
                log.warning("discord_typing_failed", channel_id=self.channel_id, status=exc.status)
                return
            await asyncio.sleep(_TYPING_REFRESH_S)

    def _stop_typing(self) -> None:
        if self._typing is not None and not self._typing.done():
            self._typing.cancel()
        self._typing = None
