"""ContextBuilder's people-note cache: fast on the hot path, never stale after a write."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar_connect.character import load_character
from familiar_connect.conversation.context import ContextBuilder, HistoryWindow
from familiar_connect.core.events import Author, ConversationKey, Platform
from familiar_connect.core.prompt import PromptBudget
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.store import MemoryStore

ALICE = Author(Platform.DISCORD, "1001", "alice")
KEY = ConversationKey(Platform.DISCORD, "500", guild_id="900")
NOTE = "people/discord-1001.md"


@pytest.fixture(name="store")
def _store(tmp_path: Path) -> MemoryStore:
    return MemoryStore(tmp_path / "memory")


def make_builder(store: MemoryStore, *, people_notes_ttl_s: float = 60.0) -> ContextBuilder:
    return ContextBuilder(
        character=load_character("ctx", None),
        memory=AsyncMemoryStore(store),
        notes_index=None,
        history=None,
        budget=PromptBudget(),
        people_notes_ttl_s=people_notes_ttl_s,
    )


async def system_prompt(builder: ContextBuilder) -> str:
    prompt = await builder.build(
        key=KEY,
        window=HistoryWindow(max_lines=10),
        inputs=[(ALICE, "hello", "discord message")],
        platform_hint="Discord",
    )
    return prompt.messages[0]["content"]


class TestPeopleNoteCache:
    async def test_a_note_written_through_the_store_is_seen_next_turn(
        self, store: MemoryStore
    ) -> None:
        """A cached 'no note' and a cached note are both forgotten when the store writes it."""
        builder = make_builder(store)
        assert NOTE not in await system_prompt(builder)
        store.write_file(NOTE, "Alice likes green tea.", source="test")
        assert "Alice likes green tea." in await system_prompt(builder)
        store.write_file(NOTE, "Alice now prefers coffee.", source="test")
        system = await system_prompt(builder)
        assert "Alice now prefers coffee." in system
        assert "green tea" not in system

    async def test_a_deleted_note_is_gone_next_turn(self, store: MemoryStore) -> None:
        """A note deleted through the store (a privacy request) leaves the next prompt at once."""
        builder = make_builder(store)
        store.write_file(NOTE, "Alice likes green tea.", source="test")
        assert "green tea" in await system_prompt(builder)
        store.delete_file(NOTE, source="user-request")
        assert "green tea" not in await system_prompt(builder)

    async def test_an_edit_by_hand_is_seen_after_the_ttl(self, store: MemoryStore) -> None:
        """An edit made outside the store is picked up once the cached copy expires."""
        builder = make_builder(store, people_notes_ttl_s=0.0)
        store.write_file(NOTE, "Alice likes green tea.", source="test")
        assert "green tea" in await system_prompt(builder)
        (store.root / NOTE).write_text("Alice likes oolong.")
        assert "oolong" in await system_prompt(builder)

    async def test_an_edit_by_hand_is_not_read_within_the_ttl(self, store: MemoryStore) -> None:
        """Within the TTL the note is served from memory, without reading the disk."""
        builder = make_builder(store)
        store.write_file(NOTE, "Alice likes green tea.", source="test")
        assert "green tea" in await system_prompt(builder)
        (store.root / NOTE).write_text("Alice likes oolong.")
        assert "green tea" in await system_prompt(builder)
