"""What waits for the familiar's next Twitch turn: a bounded priority inbox, and de-duplication.

Twitch delivers EventSub notifications at least once (a reconnect may replay some), so every
notification's id passes :class:`RecentIds` first. Inputs that want an answer wait in the
:class:`PriorityInbox` until the conversation is idle; then the highest-priority ones (a raid
before chit-chat) are taken together for one turn, the rest wait for the next. Overload is
explicit: past ``max_items`` the lowest priority (the oldest of it) is shed, inputs older than
``max_wait_s`` are dropped as stale, and both are counted.

Sans-I/O: time comes in as ``now_ns`` (:func:`time.monotonic_ns`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from familiar_connect.core.events import TwitchEvent

__all__ = ["InboxStats", "Pending", "PriorityInbox", "RecentIds"]

_NS_PER_S = 1_000_000_000


class RecentIds:
    """The last ``max_ids`` message ids seen, to drop repeats.

    Raises:
        ValueError: ``max_ids`` is less than 1.
    """

    __slots__ = ("_ids", "max_ids")

    def __init__(self, max_ids: int = 8_192) -> None:
        if max_ids < 1:
            raise ValueError("max_ids must be at least 1")
        self.max_ids = max_ids
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, message_id: str) -> bool:
        """Record ``message_id``; return True if it was already among the recent ones."""
        if message_id in self._ids:
            return True
        self._ids[message_id] = None
        if len(self._ids) > self.max_ids:
            self._ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class Pending:
    """One input waiting for a turn.

    Attributes:
        event: what the orchestrator will get.
        route: where its answer goes: ``"chat"``, ``"voice"`` or ``"both"``.
        reply_to: the chat message id to reply to, for chat input.
        enqueued_ns: when it arrived (monotonic).
        seq: arrival order, for first-in-first-out within one priority.
    """

    event: TwitchEvent
    route: str
    reply_to: str | None
    enqueued_ns: int
    seq: int = 0

    @property
    def priority(self) -> int:
        return self.event.priority


@dataclass(slots=True)
class InboxStats:
    """Counters since start."""

    pushed: int = 0
    taken: int = 0
    shed: int = 0
    stale: int = 0


class PriorityInbox:
    """A bounded set of pending inputs, taken highest priority first.

    Args:
        max_items: inputs held at most; past it the lowest priority is shed (the oldest first
            among equals, so the most recent chat is kept).
        max_wait_s: inputs older than this are dropped as stale when taking.

    Raises:
        ValueError: a bound is not positive.
    """

    __slots__ = ("_items", "_seq", "max_items", "max_wait_ns", "stats")

    def __init__(self, *, max_items: int = 100, max_wait_s: float = 120.0) -> None:
        if max_items < 1 or max_wait_s <= 0:
            raise ValueError("max_items and max_wait_s must be positive")
        self.max_items = max_items
        self.max_wait_ns = int(max_wait_s * _NS_PER_S)
        self.stats = InboxStats()
        self._items: list[Pending] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: Pending) -> Pending | None:
        """Add ``item``; return the input shed to make room (possibly ``item`` itself), or None."""
        self._seq += 1
        item.seq = self._seq
        self._items.append(item)
        self.stats.pushed += 1
        if len(self._items) <= self.max_items:
            return None
        victim = min(self._items, key=lambda p: (p.priority, p.seq))
        self._items.remove(victim)
        self.stats.shed += 1
        return victim

    def take(self, max_items: int, now_ns: int) -> list[Pending]:
        """Remove and return up to ``max_items`` inputs, highest priority first (then oldest).

        Inputs older than ``max_wait_s`` are dropped first and counted as stale.
        """
        fresh = [p for p in self._items if now_ns - p.enqueued_ns <= self.max_wait_ns]
        self.stats.stale += len(self._items) - len(fresh)
        fresh.sort(key=lambda p: (-p.priority, p.seq))
        taken, self._items = fresh[:max_items], fresh[max_items:]
        self.stats.taken += len(taken)
        return taken
