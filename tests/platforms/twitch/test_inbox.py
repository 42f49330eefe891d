"""The priority inbox and de-duplication window."""

from __future__ import annotations

import pytest

from familiar_connect.core.events import Author, ConversationKey, Platform, TwitchEvent
from familiar_connect.platforms.twitch.inbox import Pending, PriorityInbox, RecentIds

KEY = ConversationKey(Platform.TWITCH, "1000")
S = 1_000_000_000


def pending(name: str, priority: int, at_ns: int = 0) -> Pending:
    event = TwitchEvent(
        key=KEY,
        author=Author(Platform.TWITCH, user_id=name, name=name),
        kind="chat",
        description=name,
        received_ns=at_ns,
        priority=priority,
    )
    return Pending(event, "chat", None, at_ns)


class TestRecentIds:
    def test_repeats_are_seen_within_the_window(self) -> None:
        """An id is new once, a repeat while it is remembered, and new again after eviction."""
        ids = RecentIds(max_ids=2)
        assert not ids.seen("a") and ids.seen("a")
        assert not ids.seen("b") and not ids.seen("c")
        assert not ids.seen("a")
        assert len(ids) == 2

    def test_window_must_be_positive(self) -> None:
        """A zero-sized window is refused."""
        with pytest.raises(ValueError):
            RecentIds(0)


class TestPriorityInbox:
    def test_highest_priority_first_then_oldest(self) -> None:
        """Taking returns the highest priority first, first-in-first-out within a priority."""
        inbox = PriorityInbox(max_items=10)
        for name, priority in (("chat1", 10), ("raid", 80), ("chat2", 10), ("gift", 60)):
            inbox.push(pending(name, priority))
        names = [p.event.description for p in inbox.take(3, 0)]
        assert names == ["raid", "gift", "chat1"]
        assert [p.event.description for p in inbox.take(3, 0)] == ["chat2"]

    def test_overflow_sheds_the_lowest_priority_oldest(self) -> None:
        """Past max_items the oldest input of the lowest priority is shed and counted."""
        inbox = PriorityInbox(max_items=2)
        inbox.push(pending("chat-old", 10))
        inbox.push(pending("raid", 80))
        shed = inbox.push(pending("chat-new", 10))
        assert shed is not None and shed.event.description == "chat-old"
        assert inbox.stats.shed == 1 and len(inbox) == 2

    def test_stale_inputs_are_dropped(self) -> None:
        """Inputs older than max_wait_s are dropped when taking, and counted."""
        inbox = PriorityInbox(max_items=5, max_wait_s=10)
        inbox.push(pending("old", 50, at_ns=0))
        inbox.push(pending("new", 10, at_ns=15 * S))
        assert [p.event.description for p in inbox.take(5, 20 * S)] == ["new"]
        assert inbox.stats.stale == 1

    def test_bounds_must_be_positive(self) -> None:
        """Zero capacity or wait is refused."""
        with pytest.raises(ValueError):
            PriorityInbox(max_items=0)
