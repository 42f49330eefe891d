"""The full-text index over memory notes, and its thread-safe write listener."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from familiar_connect.memory.store import MemoryStore
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.notes_index import _CHUNK, NotesIndex, RebuildResult


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="index")
async def fixture_index(db: Database) -> AsyncIterator[NotesIndex]:
    index = NotesIndex(db)
    yield index
    await index.aclose()


async def _note_id(db: Database, rel_path: str) -> int:
    rows = await db.fetchall("SELECT id FROM notes WHERE rel_path = ?", (rel_path,))
    return int(rows[0][0])


class TestNotesIndex:
    async def test_search_ranks_and_snippets(self, index: NotesIndex) -> None:
        """search() returns matching notes best first, with a highlighted snippet."""
        await index.upsert("people/alice.md", "# Alice\nAlice loves sailing. Sailing, sailing!")
        await index.upsert("people/bob.md", "# Bob\nBob went sailing once, long ago, with friends.")
        await index.upsert("places/harbour.md", "The harbour is quiet in winter.")
        hits = await index.search("sailing")
        assert [h.rel_path for h in hits] == ["people/alice.md", "people/bob.md"]
        assert hits[0].score > hits[1].score
        assert "**sailing**" in hits[0].snippet.lower()
        assert await index.search("nothing-matches-this") == []

    async def test_every_word_must_match(self, index: NotesIndex) -> None:
        """A multi-word query only returns notes containing all words, accents ignored."""
        await index.upsert("a.md", "Zoë likes crème brûlée")
        await index.upsert("b.md", "Zoe likes tea")
        assert [h.rel_path for h in await index.search("zoe creme")] == ["a.md"]
        assert {h.rel_path for h in await index.search("likes")} == {"a.md", "b.md"}

    @pytest.mark.parametrize("query", ['"', "AND", "NEAR(", "*", "a OR", "x:y", "(", "---"])
    async def test_hostile_queries_do_not_raise(self, index: NotesIndex, query: str) -> None:
        """Queries made of FTS5 operators and punctuation run without errors."""
        await index.upsert("a.md", "AND OR NEAR x y")
        assert isinstance(await index.search(query), list)

    async def test_upsert_replaces_content(self, index: NotesIndex, db: Database) -> None:
        """Re-indexing a changed note replaces its words and gives it a newer id."""
        await index.upsert("n.md", "old words here")
        first_id = await _note_id(db, "n.md")
        await index.upsert("n.md", "old words here")  # unchanged: no rewrite
        assert await _note_id(db, "n.md") == first_id
        await index.upsert("n.md", "brand new text")
        assert await _note_id(db, "n.md") > first_id
        assert await index.search("old") == []
        assert [h.rel_path for h in await index.search("brand")] == ["n.md"]
        assert await index.count() == 1

    async def test_remove_drops_note(self, index: NotesIndex) -> None:
        """A removed note no longer matches, and removing it twice is harmless."""
        await index.upsert("n.md", "ephemeral idea")
        await index.remove("n.md")
        await index.remove("n.md")
        assert await index.search("ephemeral") == []
        assert await index.count() == 0

    async def test_limit_and_candidate_window(self, db: Database) -> None:
        """Results respect limit, and ranking only considers the newest candidate_cap matches."""
        index = NotesIndex(db, candidate_cap=3)
        await index.upsert("old-best.md", "kiwi kiwi kiwi kiwi kiwi")
        for i in range(5):
            await index.upsert(f"new{i}.md", f"kiwi and a lot of other filler words {i}")
        hits = await index.search("kiwi", limit=2)
        assert len(hits) == 2
        assert {h.rel_path for h in hits} <= {"new2.md", "new3.md", "new4.md"}
        widened = await index.search("kiwi", limit=10)  # the window is at least the limit
        assert widened[0].rel_path == "old-best.md"
        assert len(widened) == 6

    async def test_rebuild_mirrors_the_files(self, index: NotesIndex, db: Database) -> None:
        """rebuild() adds new, rewrites changed, keeps unchanged and drops missing notes."""
        await index.upsert("keep.md", "unchanged apple")
        await index.upsert("change.md", "old banana")
        await index.upsert("gone.md", "cherry")
        keep_id = await _note_id(db, "keep.md")
        result = await index.rebuild(
            [("keep.md", "unchanged apple"), ("change.md", "new banana"), ("add.md", "date")]
        )
        assert result == RebuildResult(written=2, unchanged=1, removed=1)
        assert await _note_id(db, "keep.md") == keep_id
        assert await index.search("cherry") == []
        assert [h.rel_path for h in await index.search("banana new")] == ["change.md"]
        assert [h.rel_path for h in await index.search("date")] == ["add.md"]
        assert await index.count() == 3

    async def test_rebuild_handles_many_files_in_chunks(self, index: NotesIndex) -> None:
        """A rebuild larger than one chunk indexes every file."""
        files = [(f"n/{i}.md", f"note number {i} about topic{i % 7}") for i in range(1_234)]
        result = await index.rebuild(files)
        assert result.written == 1_234
        assert await index.count() == 1_234
        assert len(await index.search("topic3", limit=100)) == 100
        again = await index.rebuild(files)
        assert again == RebuildResult(written=0, unchanged=1_234, removed=0)

    async def test_bad_paths_are_refused(self, index: NotesIndex) -> None:
        """Empty paths and paths with NUL raise ValueError."""
        with pytest.raises(ValueError, match="path"):
            await index.upsert("", "x")
        with pytest.raises(ValueError, match="path"):
            await index.upsert("a\x00b.md", "x")


class _Notes:
    """A lazy ``(rel_path, content)`` source that records how the rebuild consumes it."""

    def __init__(self, notes: list[tuple[str, str]], *, gate_after: int | None = None) -> None:
        self.notes = notes
        self.gate_after = gate_after  # pause before this many notes until `gate` is set
        self.gate = threading.Event()
        self.closed = threading.Event()
        self.threads: set[int] = set()
        self.before_yield: dict[str, object] = {}

    def __iter__(self) -> Iterator[tuple[str, str]]:
        try:
            for position, (rel_path, content) in enumerate(self.notes):
                if position == self.gate_after:
                    self.gate.wait(30)
                self.threads.add(threading.get_ident())
                hook = self.before_yield.get(rel_path)
                if callable(hook):
                    hook()
                yield rel_path, content
        finally:
            self.closed.set()


def _numbered(count: int, word: str = "note") -> list[tuple[str, str]]:
    return [(f"n/{i:05d}.md", f"{word} number {i}") for i in range(count)]


async def _wait_for_count(index: NotesIndex, count: int) -> None:
    """Wait until ``count`` notes are indexed (a hang guard, not a timing check)."""
    for _ in range(3_000):
        if await index.count() >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} notes were never indexed")


class TestNotesIndexRebuild:
    async def test_files_are_read_in_worker_threads(self, index: NotesIndex) -> None:
        """The rebuild never iterates the files on the event loop thread, and closes them."""
        notes = _Notes(_numbered(3 * _CHUNK + 7))
        result = await index.rebuild(iter(notes))
        assert result == RebuildResult(written=3 * _CHUNK + 7, unchanged=0, removed=0)
        assert notes.threads and threading.get_ident() not in notes.threads
        assert await asyncio.to_thread(notes.closed.wait, 30)
        assert await index.count() == 3 * _CHUNK + 7

    async def test_a_memory_store_is_streamed(self, index: NotesIndex, tmp_path: Path) -> None:
        """rebuild(store.iter_notes()) indexes every note of a real MemoryStore."""
        store = MemoryStore(tmp_path / "memory")
        for i in range(_CHUNK + 3):
            store.write_file(f"topics/t{i}.md", f"topic {i} about otters{i % 4}", source="test")
        store.write_file("people/skip.txt", "not a note", source="test")
        result = await index.rebuild(store.iter_notes())
        assert result.written == _CHUNK + 3
        assert len(await index.search("otters2", limit=100)) == (_CHUNK + 3 + 1) // 4
        again = await index.rebuild(store.iter_notes())
        assert again == RebuildResult(written=0, unchanged=_CHUNK + 3, removed=0)

    async def test_bad_path_keeps_the_chunks_before_it(self, index: NotesIndex) -> None:
        """A bad path raises ValueError; the whole chunks read before it stay indexed."""
        notes = _Notes([*_numbered(3 * _CHUNK + 5), ("", "no path")])
        with pytest.raises(ValueError, match="path"):
            await index.rebuild(iter(notes))
        assert await index.count() == 3 * _CHUNK
        assert await asyncio.to_thread(notes.closed.wait, 30)

    async def test_cancel_keeps_committed_chunks(self, index: NotesIndex) -> None:
        """Cancelling keeps what was committed, closes the files, and a new rebuild finishes."""
        files = _numbered(3 * _CHUNK + 10)
        notes = _Notes(files, gate_after=2 * _CHUNK)
        task = asyncio.get_running_loop().create_task(index.rebuild(iter(notes)))
        await _wait_for_count(index, 2 * _CHUNK)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notes.gate.set()  # let the worker thread finish the chunk it was reading
        assert await asyncio.to_thread(notes.closed.wait, 30)
        assert await index.count() == 2 * _CHUNK
        result = await index.rebuild(files)
        assert result == RebuildResult(written=_CHUNK + 10, unchanged=2 * _CHUNK, removed=0)

    async def test_live_writes_during_a_rebuild_win(self, index: NotesIndex) -> None:
        """A note written live after the rebuild read it keeps the live content, and a note
        created live is not removed as stale."""
        await index.upsert("x.md", "original words")
        await index.upsert("revived.md", "old revived text")
        listener = index.listener_for(asyncio.get_running_loop())
        notes = _Notes([("a.md", "alpha"), ("x.md", "stale words"), ("z.md", "zulu")])

        def file_changes() -> None:  # runs in the rebuild's worker thread, as a real write would
            listener("x.md", "fresh words")
            listener("revived.md", "revived again")

        notes.before_yield["x.md"] = file_changes
        result = await index.rebuild(iter(notes))
        await index.drain()
        assert result.removed == 0
        assert [h.rel_path for h in await index.search("fresh")] == ["x.md"]
        assert await index.search("stale") == []
        assert [h.rel_path for h in await index.search("revived again")] == ["revived.md"]
        assert await index.count() == 4

    async def test_changed_unchanged_new_and_stale_across_chunks(
        self, index: NotesIndex, db: Database
    ) -> None:
        """Hundreds of changed, unchanged, new and removed notes are each handled once."""
        before = _numbered(700, word="old")
        await index.rebuild(before)
        changed_id = await _note_id(db, "n/00000.md")
        files = [
            *[(path, f"new text {i}") for i, (path, _) in enumerate(before[:300])],
            *before[300:500],
            *[(f"fresh/{i}.md", f"added note {i}") for i in range(100)],
        ]
        result = await index.rebuild(files)
        assert result == RebuildResult(written=400, unchanged=200, removed=200)
        assert await index.count() == 600
        assert await _note_id(db, "n/00000.md") > changed_id
        assert len(await index.search("old", limit=100)) == 100
        assert len(await index.search("new text", limit=100)) == 100
        assert await index.search("old number 299") == []
        assert await index.search("old number 650") == []
        assert [h.rel_path for h in await index.search("old number 450")] == ["n/00450.md"]


class TestNotesIndexListener:
    async def test_updates_from_a_thread_are_applied(self, index: NotesIndex) -> None:
        """Writes reported from a worker thread reach the index, latest content winning."""
        listener = index.listener_for(asyncio.get_running_loop())

        def writer() -> None:
            for i in range(200):
                listener("journal.md", f"entry {i} version{i}")
                listener(f"other/{i % 5}.md", f"other note {i}")

        await asyncio.to_thread(writer)
        await index.drain()
        assert [h.rel_path for h in await index.search("version199")] == ["journal.md"]
        assert await index.search("version198") == []
        assert await index.count() == 6
        assert index.dropped_updates == 0

    async def test_none_content_removes(self, index: NotesIndex) -> None:
        """A listener call with None content removes the note from the index."""
        await index.upsert("n.md", "to be deleted")
        listener = index.listener_for(asyncio.get_running_loop())
        await asyncio.to_thread(listener, "n.md", None)
        await index.drain()
        assert await index.count() == 0

    async def test_pending_updates_are_bounded(self, db: Database) -> None:
        """Beyond max_pending_updates distinct paths, updates are dropped and counted."""
        index = NotesIndex(db, max_pending_updates=2)
        listener = index.listener_for(asyncio.get_running_loop())
        # Called on the loop thread without yielding, so nothing drains in between.
        listener("a.md", "alpha")
        listener("b.md", "beta")
        listener("a.md", "alpha two")  # coalesces: same path, no new slot
        listener("c.md", "gamma")
        assert index.dropped_updates == 1
        await index.drain()
        assert await index.count() == 2
        assert [h.rel_path for h in await index.search("two")] == ["a.md"]
        await index.aclose()

    async def test_after_close_updates_are_dropped(self, db: Database) -> None:
        """Once closed, the listener drops updates instead of scheduling work."""
        index = NotesIndex(db)
        listener = index.listener_for(asyncio.get_running_loop())
        await index.aclose()
        listener("a.md", "alpha")
        assert index.dropped_updates == 1
        await index.drain()
        assert await index.count() == 0

    async def test_closed_loop_does_not_raise_in_the_writer(self, db: Database) -> None:
        """A listener bound to a closed loop counts the update as dropped without raising."""
        index = NotesIndex(db)
        dead_loop = asyncio.new_event_loop()
        dead_loop.close()
        listener = index.listener_for(dead_loop)
        errors: list[BaseException] = []

        def call() -> None:
            try:
                listener("a.md", "alpha")
            except BaseException as exc:  # pragma: no cover - the failure we test against
                errors.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        thread.join()
        assert errors == []
        assert index.dropped_updates == 1
