"""Chat folding: classification, bounded buffers, per-person folding, sampled history."""

from __future__ import annotations

import pytest

from familiar_connect.core.events import Author, ConversationKey, Platform
from familiar_connect.platforms.twitch.chat import ChatFolder, ChatLine
from tests.fakes.twitch_payloads import ALICE, BOT, STREAMER, chat_message_event
from tests.platforms.twitch._models import model

KEY = ConversationKey(Platform.TWITCH, STREAMER.user_id)
S = 1_000_000_000


def line(n: int, *, user: str = "1", addressed: bool = False, text: str | None = None) -> ChatLine:
    return ChatLine(
        message_id=f"m{n}",
        author=Author(Platform.TWITCH, user_id=user, name=f"user{user}"),
        text=text if text is not None else f"line {n}",
        addressed=addressed,
        received_ns=n,
    )


@pytest.fixture(name="folder")
def fixture_folder() -> ChatFolder:
    return ChatFolder(
        key=KEY,
        bot_user_id=BOT.user_id,
        familiar_name="Familiar",
        aliases=["fam"],
        bot_login=BOT.login,
        operator_ids={STREAMER.user_id},
        context_lines=5,
        max_addressed=3,
        per_author_lines=2,
        history_lines_per_s=4,
    )


def chat(text: str, *, user=ALICE, mention: bool = False, reply_to_bot: bool = False, mid=None):
    reply = None
    if reply_to_bot:
        reply = {
            "parent_message_id": "p1",
            "parent_message_body": "earlier",
            "parent_user_id": BOT.user_id,
            "parent_user_login": BOT.login,
            "parent_user_name": BOT.display_name,
            "thread_message_id": "p1",
            "thread_user_id": BOT.user_id,
            "thread_user_login": BOT.login,
            "thread_user_name": BOT.display_name,
        }
    event = chat_message_event(
        broadcaster=STREAMER,
        chatter=user,
        text=text,
        message_id=mid,
        mentions=(BOT,) if mention else (),
        reply_to=reply,
    )
    return model("chat", event)


class TestChatFolderIngest:
    def test_mention_is_addressed_and_rewritten(self, folder: ChatFolder) -> None:
        """An @-mention of the bot is addressed, and reads as @<familiar name> to the model."""
        assert folder.ingest(chat("hello", mention=True), 1) == "addressed"
        (taken,) = folder.take_addressed()
        assert taken.text == "@Familiar hello"
        assert taken.author.name == ALICE.login and taken.author.display_name == "Alice"

    def test_name_alias_and_bot_login_address_it(self, folder: ChatFolder) -> None:
        """The familiar's name, an alias or the bot's login as a word address it; a longer word does not."""
        assert folder.ingest(chat("hi Familiar!"), 1) == "addressed"
        assert folder.ingest(chat("yo fam"), 2) == "addressed"
        assert folder.ingest(chat("familiarbot are you there"), 3) == "addressed"
        assert folder.ingest(chat("so familiarity breeds"), 4) == "ambient"

    def test_reply_to_the_bot_is_addressed(self, folder: ChatFolder) -> None:
        """A reply to one of the bot's messages is addressed even without its name."""
        assert folder.ingest(chat("agreed", reply_to_bot=True), 1) == "addressed"

    def test_repeats_own_messages_and_commands(self, folder: ChatFolder) -> None:
        """A repeated id, the bot's own echo and a !command are classified and counted, not held."""
        assert folder.ingest(chat("hi", mid="same"), 1) == "ambient"
        assert folder.ingest(chat("hi", mid="same"), 2) == "duplicate"
        assert folder.ingest(chat("my own words", user=BOT), 3) == "own"
        assert folder.ingest(chat("!uptime"), 4) == "command"
        stats = folder.stats
        assert (stats.received, stats.duplicates, stats.own, stats.commands) == (4, 1, 1, 1)
        assert folder.pending_ambient == 1

    def test_broadcaster_is_an_operator(self, folder: ChatFolder) -> None:
        """Messages from the configured operator ids carry is_operator."""
        folder.ingest(chat("hey familiar", user=STREAMER), 1)
        (taken,) = folder.take_addressed()
        assert taken.author.is_operator


class TestChatFolderBounds:
    def test_ambient_ring_keeps_the_most_recent(self, folder: ChatFolder) -> None:
        """Past context_lines, the oldest ambient lines are overwritten and counted."""
        for n in range(12):
            folder.offer(line(n, user=str(n)))
        assert folder.pending_ambient == 5
        assert folder.stats.ambient_overwritten == 7

    def test_addressed_queue_drops_the_oldest(self, folder: ChatFolder) -> None:
        """Past max_addressed, the oldest addressed lines are dropped and counted."""
        for n in range(5):
            folder.offer(line(n, user=str(n), addressed=True))
        assert folder.stats.addressed_dropped == 2
        assert [taken.message_id for taken in folder.take_addressed()] == ["m2", "m3", "m4"]

    def test_one_person_is_folded_to_their_latest(self, folder: ChatFolder) -> None:
        """A person's older addressed lines are folded away; their latest two are kept in order."""
        for n in range(3):
            folder.offer(line(n, user="7", addressed=True))
        taken = folder.take_addressed()
        assert [t.message_id for t in taken] == ["m1", "m2"]
        assert folder.stats.addressed_folded == 1
        assert folder.take_addressed() == []

    def test_history_is_sampled_at_the_configured_rate(self, folder: ChatFolder) -> None:
        """A flush remembers at most history_lines_per_s worth, newest first, and counts the rest."""
        for n in range(5):
            folder.offer(line(n, user=str(n)))
        kept = folder.take_ambient(10 * S)
        assert [k.message_id for k in kept] == ["m1", "m2", "m3", "m4"]
        assert folder.stats.ambient_sampled_out == 1
        for n in range(5, 7):
            folder.offer(line(n, user=str(n)))
        assert folder.take_ambient(10 * S) == []  # the bucket is empty at the same instant
        assert len(folder.take_ambient(11 * S)) == 0  # and the ring was emptied by the flush
        stats = folder.stats
        assert stats.remembered + stats.ambient_sampled_out == stats.ambient

    def test_zero_history_rate_remembers_nothing(self) -> None:
        """history_lines_per_s = 0 samples every ambient line out."""
        folder = ChatFolder(
            key=KEY, bot_user_id="2", familiar_name="F", history_lines_per_s=0, context_lines=3
        )
        folder.offer(line(1))
        assert folder.take_ambient(S) == []
        assert folder.stats.ambient_sampled_out == 1

    def test_invalid_bounds_are_refused(self) -> None:
        """Zero-sized addressed queues or per-person caps are configuration errors."""
        with pytest.raises(ValueError):
            ChatFolder(key=KEY, bot_user_id="2", familiar_name="F", max_addressed=0)

    def test_flood_keeps_memory_flat(self, folder: ChatFolder) -> None:
        """A hundred thousand messages leave the buffers at their bounds."""
        for n in range(100_000):
            folder.offer(line(n, user=str(n % 97), addressed=n % 1000 == 0))
        assert folder.pending_ambient == 5
        assert folder.pending_addressed == 3
        assert folder.stats.received == 100_000
