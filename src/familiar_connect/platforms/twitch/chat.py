"""Twitch chat in, folded: a flood of messages becomes a few inputs per turn, never a queue of LLM calls.

A big channel can push hundreds of messages a second; the familiar answers a handful of turns a
minute. :class:`ChatFolder` sits between the two and never blocks:

- every message is classified once, in constant time: a repeat (same message id), the
  familiar's own echo, a command for another bot (``!...``), **addressed** (an @-mention of the
  bot, a reply to one of its messages, or its name or an alias as a word), or **ambient**;
- addressed messages wait in a bounded deque until the next turn (the oldest dropped past
  ``max_addressed``); each person's latest ``per_author_lines`` are taken, older ones from the
  same person are folded away;
- ambient messages go to a ring of the most recent ``context_lines``; at each flush the
  survivors (at most ``per_author_lines`` per person) are remembered, at most
  ``history_lines_per_s`` per second, so history gets a sample of a flood, in batches, and the
  next turn sees the latest chat as context;
- every drop is counted in :class:`ChatStats`.

Memory is bounded by the deques and the de-duplication window, whatever the rate. Sans-I/O:
time comes in as ``now_ns``; the twitchio message object is read through plain attributes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from familiar_connect.core.addressing import AddressDetector
from familiar_connect.core.events import Author, ConversationKey, Platform
from familiar_connect.core.policy import TokenBucket
from familiar_connect.platforms.twitch.inbox import RecentIds

__all__ = ["ChatFolder", "ChatLine", "ChatStats"]


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One chat message, classified.

    Attributes:
        message_id: Twitch's id of the message (replies point at it).
        author: the chatter.
        text: the message, with @-mentions of the bot written as ``@<familiar name>``.
        addressed: it speaks to the familiar.
        received_ns: when the adapter got it (monotonic).
    """

    message_id: str
    author: Author
    text: str
    addressed: bool
    received_ns: int


@dataclass(slots=True)
class ChatStats:
    """Counters since start (read by the status view and the tests)."""

    received: int = 0
    duplicates: int = 0
    own: int = 0
    commands: int = 0
    addressed: int = 0
    addressed_dropped: int = 0
    addressed_folded: int = 0
    ambient: int = 0
    ambient_overwritten: int = 0
    ambient_folded: int = 0
    ambient_sampled_out: int = 0
    remembered: int = 0


class ChatFolder:
    """Classifies chat and holds it, bounded, until the adapter takes it.

    Args:
        key: the Twitch conversation (the broadcaster's channel).
        bot_user_id: the bot account's user id (its own messages are echoed back by Twitch).
        familiar_name: the familiar's display name; mentions of the bot are rewritten to it.
        aliases: other names it answers to (its Twitch login is added).
        bot_login: the bot account's login.
        operator_ids: Twitch user ids of people who run the familiar.
        context_lines: ambient lines kept between two flushes (most recent kept).
        max_addressed: addressed lines held until the next turn (oldest dropped).
        per_author_lines: lines one person contributes per turn or flush.
        history_lines_per_s: ambient lines remembered per second, at most (0: none).
        ignore_prefixes: messages starting with one of these are commands for other bots.
        dedupe_window: message ids remembered to drop repeats.
    """

    def __init__(
        self,
        *,
        key: ConversationKey,
        bot_user_id: str,
        familiar_name: str,
        aliases: Iterable[str] = (),
        bot_login: str = "",
        operator_ids: Collection[str] = (),
        context_lines: int = 20,
        max_addressed: int = 50,
        per_author_lines: int = 2,
        history_lines_per_s: float = 20.0,
        ignore_prefixes: Iterable[str] = ("!",),
        dedupe_window: int = 8_192,
    ) -> None:
        if max_addressed < 1 or per_author_lines < 1 or context_lines < 0:
            raise ValueError("max_addressed and per_author_lines must be >= 1, context_lines >= 0")
        self.key = key
        self.bot_user_id = bot_user_id
        self.mention_text = f"@{familiar_name}"
        self.operator_ids = frozenset(operator_ids)
        self.per_author_lines = per_author_lines
        self.stats = ChatStats()
        names = [*aliases, bot_login] if bot_login else list(aliases)
        self._detector = AddressDetector(familiar_name, names)
        self._prefixes = tuple(ignore_prefixes)
        self._ids = RecentIds(dedupe_window)
        self._addressed: deque[ChatLine] = deque(maxlen=max_addressed)
        self._ambient: deque[ChatLine] = deque(maxlen=context_lines)
        self._history = (
            TokenBucket(history_lines_per_s, max(history_lines_per_s, 1.0))
            if history_lines_per_s > 0
            else None
        )

    @property
    def pending_addressed(self) -> int:
        """Addressed lines waiting for a turn."""
        return len(self._addressed)

    @property
    def pending_ambient(self) -> int:
        """Ambient lines waiting for the next flush."""
        return len(self._ambient)

    # --- intake (the per-message path: constant time, no I/O) ---------------------------

    def ingest(self, message: Any, received_ns: int) -> str:
        """Classify one twitchio ``ChatMessage`` and hold it; return what it was.

        Returns:
            ``"duplicate"``, ``"own"``, ``"command"``, ``"addressed"`` or ``"ambient"``.
        """
        message_id = str(message.id)
        if self._ids.seen(message_id):
            self.stats.received += 1
            self.stats.duplicates += 1
            return "duplicate"
        chatter = message.chatter
        user_id = str(chatter.id)
        if user_id == self.bot_user_id:
            self.stats.received += 1
            self.stats.own += 1
            return "own"
        mentioned = False
        text = message.text
        for fragment in message.fragments:
            mention = fragment.mention
            if mention is not None and str(mention.id) == self.bot_user_id:
                mentioned = True
                break
        if mentioned:
            text = "".join(
                self.mention_text
                if f.mention is not None and str(f.mention.id) == self.bot_user_id
                else f.text
                for f in message.fragments
            )
        reply = message.reply
        replied = reply is not None and str(reply.parent_user.id) == self.bot_user_id
        login = chatter.name or user_id
        display = chatter.display_name
        author = Author(
            Platform.TWITCH,
            user_id=user_id,
            name=login,
            display_name=display if display and display != login else None,
            is_operator=user_id in self.operator_ids,
        )
        line = ChatLine(
            message_id=message_id,
            author=author,
            text=text,
            addressed=self._detector.is_addressed(text, mentioned=mentioned, replied_to=replied),
            received_ns=received_ns,
        )
        return self.offer(line, deduplicated=True)

    def offer(self, line: ChatLine, *, deduplicated: bool = False) -> str:
        """Hold an already-built line (see :meth:`ingest` for the return values)."""
        self.stats.received += 1
        if not deduplicated and self._ids.seen(line.message_id):
            self.stats.duplicates += 1
            return "duplicate"
        if self._prefixes and line.text.lstrip().startswith(self._prefixes):
            self.stats.commands += 1
            return "command"
        if line.addressed:
            self.stats.addressed += 1
            if len(self._addressed) == self._addressed.maxlen:
                self.stats.addressed_dropped += 1
            self._addressed.append(line)
            return "addressed"
        self.stats.ambient += 1
        if len(self._ambient) == self._ambient.maxlen:
            self.stats.ambient_overwritten += 1
        self._ambient.append(line)
        return "ambient"

    # --- taking -------------------------------------------------------------------------

    def take_addressed(self) -> list[ChatLine]:
        """Every waiting addressed line, at most ``per_author_lines`` per person (the latest).

        Older lines of someone over the cap are folded away (counted), since the latest says
        what they want now.
        """
        lines = self._keep_latest_per_author(self._addressed)
        self.stats.addressed_folded += len(self._addressed) - len(lines)
        self._addressed.clear()
        return lines

    def take_ambient(self, now_ns: int) -> list[ChatLine]:
        """The ambient lines to remember now, oldest first; the ring is emptied.

        At most ``per_author_lines`` per person (their latest) and, with a history rate, at
        most what the rate allows since the last call; the rest is counted as sampled out.
        """
        if not self._ambient:
            return []
        lines = self._keep_latest_per_author(self._ambient)
        self.stats.ambient_folded += len(self._ambient) - len(lines)
        self._ambient.clear()
        if self._history is None:
            self.stats.ambient_sampled_out += len(lines)
            return []
        kept: list[ChatLine] = []
        # The newest lines matter most: admit from the end, then restore order.
        for line in reversed(lines):
            if self._history.try_take(now_ns):
                kept.append(line)
            else:
                self.stats.ambient_sampled_out += 1
        kept.reverse()
        self.stats.remembered += len(kept)
        return kept

    def _keep_latest_per_author(self, lines: Iterable[ChatLine]) -> list[ChatLine]:
        counts: dict[str, int] = {}
        kept: list[ChatLine] = []
        for line in reversed(list(lines)):
            seen = counts.get(line.author.user_id, 0)
            if seen < self.per_author_lines:
                counts[line.author.user_id] = seen + 1
                kept.append(line)
        kept.reverse()
        return kept
