"""Tests for AsyncMemoryStore: the same store, driven from coroutines via worker threads."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from familiar_connect.memory import AsyncMemoryStore
from familiar_connect.memory.store import (
    GrepHit,
    MemoryStore,
    MemoryStoreError,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
)


@pytest.fixture(name="astore")
def fixture_astore(tmp_path: Path) -> AsyncMemoryStore:
    store = MemoryStore(tmp_path / "memory", audit_path=tmp_path / "audit.jsonl")
    return AsyncMemoryStore(store)


class TestAsyncMemoryStore:
    async def test_exposes_store(self, tmp_path: Path) -> None:
        """The wrapped synchronous store is available as .store."""
        store = MemoryStore(tmp_path / "m")
        assert AsyncMemoryStore(store).store is store

    async def test_round_trip(self, astore: AsyncMemoryStore) -> None:
        """Write, append, read, list, glob and grep behave as on the sync store."""
        await astore.write_file("people/alice.md", "Alice\n", source="tool:t", context={"a": "b"})
        await astore.append_file("people/alice.md", "likes tea\n", source="memory_writer")
        assert await astore.read_file("people/alice.md") == "Alice\nlikes tea\n"
        assert [e.name for e in await astore.list_dir("people")] == ["alice.md"]
        assert await astore.glob("**/*.md") == ["people/alice.md"]
        assert await astore.grep("TEA") == [GrepHit("people/alice.md", 2, "likes tea", 6, 9)]
        assert await astore.grep("TEA", case_insensitive=False) == []
        assert [e.operation for e in astore.audit_entries] == ["write", "append"]

    async def test_runs_off_the_event_loop_thread(self, astore: AsyncMemoryStore) -> None:
        """Writes run in a worker thread, so listeners see a thread other than the loop's."""
        seen: list[int] = []
        astore.add_write_listener(lambda _path, _text: seen.append(threading.get_ident()))
        await astore.write_file("a.md", "x")
        assert seen and seen[0] != threading.get_ident()

    async def test_errors_propagate(self, astore: AsyncMemoryStore) -> None:
        """Store errors reach the awaiting coroutine unchanged."""
        with pytest.raises(MemoryStorePathError):
            await astore.read_file("../x")
        with pytest.raises(MemoryStoreSizeLimitError):
            await astore.write_file("big.md", "x" * (256 * 1024 + 1))
        with pytest.raises(MemoryStoreError):
            await astore.grep("(")

    async def test_concurrent_tasks(self, astore: AsyncMemoryStore) -> None:
        """Many concurrent appends from tasks all land and are each audited once."""
        async with asyncio.TaskGroup() as group:
            for n in range(20):
                group.create_task(astore.append_file("log.md", f"{n}\n"))
        lines = (await astore.read_file("log.md")).splitlines()
        assert sorted(lines, key=int) == [str(n) for n in range(20)]
        assert len(astore.audit_entries) == 20
