"""Conversation history: the store, its full-text search and the batching writer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from familiar_connect.errors import StorageError
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.history import (
    MAX_CONTENT_CHARS,
    HistoryStore,
    HistoryWriter,
    Turn,
    _Row,
)

_T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _turn(
    content: str,
    *,
    channel: str = "c1",
    platform: str = "discord",
    author_id: str = "u1",
    role: str = "user",
    seconds: int = 0,
    meta: dict[str, object] | None = None,
) -> Turn:
    return Turn(
        platform=platform,
        channel=channel,
        author_id=author_id,
        author_name=author_id.upper(),
        role=role,  # type: ignore[arg-type]
        content=content,
        modality="text",
        created_at=_T0 + timedelta(seconds=seconds),
        meta=meta,
    )


@pytest.fixture(name="db")
async def fixture_db(tmp_path: Path) -> AsyncIterator[Database]:
    db = await open_database(tmp_path / "familiar.db")
    yield db
    await db.close()


@pytest.fixture(name="history")
def fixture_history(db: Database) -> HistoryStore:
    return HistoryStore(db)


class TestTurn:
    def test_rejects_unknown_role_and_modality(self) -> None:
        """Roles and modalities outside the documented sets raise ValueError."""
        with pytest.raises(ValueError, match="role"):
            _turn("x", role="narrator")
        with pytest.raises(ValueError, match="modality"):
            Turn(
                platform="discord",
                channel="c",
                author_id="u",
                author_name="U",
                role="user",
                content="x",
                modality="telepathy",  # type: ignore[arg-type]
                created_at=_T0,
            )

    def test_rejects_naive_time_and_empty_keys(self) -> None:
        """A naive created_at or an empty platform/channel raises ValueError."""
        with pytest.raises(ValueError, match="timezone-aware"):
            Turn(
                platform="discord",
                channel="c",
                author_id="u",
                author_name="U",
                role="user",
                content="x",
                modality="text",
                created_at=datetime(2030, 1, 1),
            )
        with pytest.raises(ValueError, match="channel"):
            _turn("x", channel="")


class TestHistoryStore:
    async def test_recent_returns_last_turns_oldest_first(self, history: HistoryStore) -> None:
        """recent() gives the newest ``limit`` turns of one conversation in chronological order."""
        await history.add_many([_turn(f"m{i}", seconds=i) for i in range(10)])
        await history.add_many([_turn("elsewhere", channel="c2")])
        recent = await history.recent("discord", "c1", limit=3)
        assert [t.content for t in recent] == ["m7", "m8", "m9"]
        assert [t.id for t in recent] == sorted(t.id for t in recent)  # type: ignore[type-var]
        assert recent[0].created_at == _T0 + timedelta(seconds=7)
        assert [t.content for t in await history.recent("discord", "c2")] == ["elsewhere"]

    async def test_since_returns_turns_after_a_watermark(self, history: HistoryStore) -> None:
        """since() returns the conversation's turns with larger ids, oldest first, bounded."""
        await history.add_many([_turn(f"m{i}") for i in range(5)])
        first = await history.recent("discord", "c1", limit=5)
        after = await history.since("discord", "c1", first[1].id or 0, limit=2)
        assert [t.content for t in after] == ["m2", "m3"]
        assert await history.since("discord", "c1", first[-1].id or 0) == []

    async def test_meta_round_trips(self, history: HistoryStore) -> None:
        """JSON-able meta (e.g. timings) comes back equal."""
        meta = {"timings": {"ttft_ms": 412.5, "stt_final_ms": 80}, "model": "m"}
        await history.add(_turn("hi", meta=meta))
        (turn,) = await history.recent("discord", "c1")
        assert turn.meta == meta

    async def test_bad_meta_inserts_nothing(self, history: HistoryStore) -> None:
        """A batch with one non-JSON meta raises ValueError and stores none of the batch."""
        with pytest.raises(ValueError, match="JSON-serialisable"):
            await history.add_many([_turn("ok"), _turn("bad", meta={"x": object()})])
        with pytest.raises(ValueError, match="meta is larger"):
            await history.add_many([_turn("big", meta={"x": "y" * 20_000})])
        assert await history.count() == 0

    async def test_long_content_is_truncated_with_a_log(self, history: HistoryStore) -> None:
        """Content over the cap is stored truncated and the truncation is logged."""
        with capture_logs() as logs:
            await history.add(_turn("a" * (MAX_CONTENT_CHARS + 10)))
        (turn,) = await history.recent("discord", "c1")
        assert len(turn.content) == MAX_CONTENT_CHARS
        assert any(entry["event"] == "history_turn_truncated" for entry in logs)

    async def test_search_finds_newest_first(self, history: HistoryStore) -> None:
        """search() requires every word, ignores case and accents, and returns newest first."""
        await history.add_many(
            [
                _turn("The Lighthouse keeper waved"),
                _turn("nothing to see"),
                _turn("a lighthouse in the fog"),
                _turn("Café au lait at the lighthouse"),
            ]
        )
        found = await history.search("LIGHTHOUSE")
        assert [t.content for t in found] == [
            "Café au lait at the lighthouse",
            "a lighthouse in the fog",
            "The Lighthouse keeper waved",
        ]
        assert [t.content for t in await history.search("cafe lighthouse")] == [
            "Café au lait at the lighthouse"
        ]
        assert len(await history.search("the", limit=2)) == 2
        assert await history.search("submarine") == []

    @pytest.mark.parametrize(
        "query",
        ["AND", "OR cats", "NEAR(", 'say "hi', "*", "cat*", "-x", "col:value", "^start", "(", ""],
    )
    async def test_search_treats_operators_as_text(self, history: HistoryStore, query: str) -> None:
        """Queries containing FTS5 syntax run without raising."""
        await history.add_many([_turn('say "hi" AND NEAR(cats OR dogs) col:value ^start cat*')])
        result = await history.search(query)
        assert isinstance(result, list)

    async def test_search_filters_by_platform_and_channel(self, history: HistoryStore) -> None:
        """Platform and channel filters restrict matches, including non-ASCII channel keys."""
        await history.add_many(
            [
                _turn("hello from one", channel="guild:1/chan:1"),
                _turn("hello from two", channel="guild:1/chan:2"),
                _turn("hello from ünïcode", channel="Gäste/ñ 🎉"),
                _turn("hello from twitch", platform="twitch", channel="guild:1/chan:1"),
            ]
        )
        in_chan = await history.search("hello", platform="discord", channel="guild:1/chan:1")
        assert [t.content for t in in_chan] == ["hello from one"]
        unicode_chan = await history.search("hello", platform="discord", channel="Gäste/ñ 🎉")
        assert [t.content for t in unicode_chan] == ["hello from ünïcode"]
        assert [t.content for t in await history.search("hello", platform="twitch")] == [
            "hello from twitch"
        ]
        assert await history.search("hello", platform="discord", channel="nope") == []
        with pytest.raises(ValueError, match="platform"):
            await history.search("hello", channel="guild:1/chan:1")

    async def test_delete_author_removes_turns_and_search_hits(self, history: HistoryStore) -> None:
        """Deleting a user's turns removes them from reads and from the full-text index."""
        await history.add_many(
            [
                _turn("secret plans by alice", author_id="alice"),
                _turn("reply mentioning plans", author_id="familiar", role="assistant"),
                _turn("bob also has plans", author_id="bob"),
                _turn("alice on twitch has plans", author_id="alice", platform="twitch"),
            ]
        )
        assert await history.delete_author("discord", "alice") == 1
        assert [t.content for t in await history.search("plans")] == [
            "alice on twitch has plans",
            "bob also has plans",
            "reply mentioning plans",
        ]
        assert await history.search("secret") == []
        assert await history.count() == 3
        rows = await history._db.fetchall(
            "SELECT count(*) FROM turns_fts WHERE turns_fts MATCH 'secret'"
        )
        assert rows == [(0,)]

    async def test_delete_and_export_span_pages(self, history: HistoryStore) -> None:
        """Export and delete cover a user with more turns than one page, in order."""
        await history.add_many([_turn(f"n{i}", author_id="chatty") for i in range(4_500)])
        await history.add_many([_turn("other", author_id="quiet")])
        exported = await history.export_author("discord", "chatty")
        assert [t.content for t in exported] == [f"n{i}" for i in range(4_500)]
        assert await history.delete_author("discord", "chatty") == 4_500
        assert await history.export_author("discord", "chatty") == []
        assert await history.count() == 1

    async def test_add_many_keeps_order_across_statements(self, history: HistoryStore) -> None:
        """A batch split into several multi-row statements gets ids in iteration order."""
        await history.add_many([_turn(f"word{i} filler", seconds=i) for i in range(203)])
        turns = await history.recent("discord", "c1", limit=500)
        assert [t.content for t in turns] == [f"word{i} filler" for i in range(203)]
        ids = [t.id or 0 for t in turns]
        assert ids == sorted(ids) and len(set(ids)) == 203
        for i in (0, 63, 64, 191, 192, 200, 202):  # first/last rows of each statement
            assert [t.content for t in await history.search(f"word{i}")] == [f"word{i} filler"]
        assert len(await history.search("filler", limit=200)) == 200

    async def test_a_batch_writes_few_index_segments(
        self, history: HistoryStore, db: Database
    ) -> None:
        """256 turns make a handful of FTS5 segments, not one per turn (as executemany did)."""
        executed: list[str] = []
        await db.conn.set_trace_callback(executed.append)
        try:
            await history.add_many([_turn(f"m{i} hello there") for i in range(256)])
        finally:
            await db.conn.set_trace_callback(None)
        # FTS5 records each new segment in its %_idx table (traced as a nested statement).
        segments = [
            sql for sql in executed if sql.startswith("-- INSERT INTO 'main'.'turns_fts_idx'")
        ]
        assert 1 <= len(segments) <= 16
        assert await history.count() == 256

    async def test_ids_are_never_reused(self, history: HistoryStore) -> None:
        """After deleting the newest turns, new turns still get larger ids."""
        await history.add_many([_turn("a", author_id="x"), _turn("b", author_id="x")])
        last_id = (await history.recent("discord", "c1"))[-1].id or 0
        await history.delete_author("discord", "x")
        await history.add(_turn("c"))
        (turn,) = await history.recent("discord", "c1")
        assert (turn.id or 0) > last_id


class TestHistoryQueryPlans:
    @pytest.fixture(name="filled")
    async def fixture_filled(self, history: HistoryStore) -> HistoryStore:
        words = ["the", "cat", "sat", "on", "mat", "with", "a", "hat"]
        turns = [
            _turn(
                f"the {words[i % 8]} {words[(i * 3) % 8]} message {i}",
                channel=f"c{i % 40}",
                author_id=f"u{i % 97}",
            )
            for i in range(20_000)
        ]
        await history.add_many(turns)
        await history._db.execute("ANALYZE")
        return history

    async def _plan(self, history: HistoryStore, sql: str, params: tuple[object, ...]) -> str:
        rows = await history._db.fetchall("EXPLAIN QUERY PLAN " + sql, params)
        return "\n".join(str(row[-1]) for row in rows)

    async def test_recent_uses_the_conversation_index(self, filled: HistoryStore) -> None:
        """recent() at 20k turns is an index search with no sort step."""
        from familiar_connect.storage.history import _SELECT_RECENT

        plan = await self._plan(filled, _SELECT_RECENT, ("discord", "c3", 50))
        assert "USING INDEX turns_conversation" in plan
        assert "TEMP B-TREE" not in plan
        assert len(await filled.recent("discord", "c3")) == 50

    async def test_search_has_no_sort_step(self, filled: HistoryStore) -> None:
        """search() lets FTS5 deliver rows newest first instead of sorting all matches."""
        from familiar_connect.storage.history import _SELECT_SEARCH

        for match in ('{content} : ("the")', '{content} : ("the") AND {scope} : "k00"'):
            plan = await self._plan(filled, _SELECT_SEARCH, (match, 20))
            assert "VIRTUAL TABLE" in plan
            assert "USE TEMP B-TREE FOR ORDER BY" not in plan
        found = await filled.search("the", platform="discord", channel="c5")
        assert len(found) == 20
        assert [t.id for t in found] == sorted((t.id for t in found), reverse=True)  # type: ignore[type-var]
        assert all(t.channel == "c5" and "the" in t.content.split() for t in found)


class _FlakyStore(HistoryStore):
    """Records batch sizes; fails the first ``failures`` batches."""

    def __init__(self, db: Database, *, failures: int = 0) -> None:
        super().__init__(db)
        self.batches: list[int] = []
        self.failures = failures
        self.wrote = asyncio.Event()

    async def _insert_rows(self, rows: list[_Row]) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageError("history.add_many failed: disk I/O error")
        self.batches.append(len(rows))
        await super()._insert_rows(rows)
        self.wrote.set()

    async def wait_written(self, writer: HistoryWriter, turns: int) -> None:
        """Wait until ``writer`` reports ``turns`` written (a hang guard, not a timing check)."""
        async with asyncio.timeout(30):
            while writer.written < turns:
                self.wrote.clear()
                await self.wrote.wait()


class TestHistoryWriter:
    async def test_flush_writes_in_batches_in_order(self, db: Database) -> None:
        """Queued turns are written max_batch at a time, preserving submission order."""
        store = _FlakyStore(db)
        writer = HistoryWriter(store, max_batch=256)
        for i in range(600):
            assert writer.submit(_turn(f"m{i}"))
        assert writer.pending == 600
        await writer.flush()
        assert store.batches == [256, 256, 88]
        assert writer.pending == 0 and writer.written == 600
        recent = await store.recent("discord", "c1", limit=600)
        assert [t.content for t in recent] == [f"m{i}" for i in range(600)]

    async def test_run_writes_submitted_turns(self, db: Database) -> None:
        """The background task writes turns without an explicit flush and stops on aclose."""
        store = _FlakyStore(db)
        writer = HistoryWriter(store)
        async with asyncio.TaskGroup() as tg:
            runner = tg.create_task(writer.run())
            for i in range(50):
                writer.submit(_turn(f"m{i}"))
            await store.wait_written(writer, 50)
            assert writer.written == 50
            await writer.aclose()
        assert runner.done()
        assert await store.count() == 50
        assert sum(store.batches) == 50 and len(store.batches) < 50

    async def test_aclose_flushes_pending_and_refuses_new(self, db: Database) -> None:
        """aclose() writes every queued turn; later submits return False and count as dropped."""
        store = HistoryStore(db)
        writer = HistoryWriter(store)
        for i in range(10):
            writer.submit(_turn(f"m{i}"))
        await writer.aclose()
        assert await store.count() == 10
        assert writer.submit(_turn("late")) is False
        assert writer.dropped == 1

    async def test_backpressure_refuses_and_counts(self, db: Database) -> None:
        """Over max_pending, submit returns False, counts the drop and warns once."""
        writer = HistoryWriter(HistoryStore(db), max_pending=3)
        with capture_logs() as logs:
            results = [writer.submit(_turn(f"m{i}")) for i in range(6)]
        assert results == [True, True, True, False, False, False]
        assert writer.dropped == 3 and writer.pending == 3
        warnings = [e for e in logs if e["event"] == "history_writer_backpressure"]
        assert len(warnings) == 1
        await writer.flush()
        assert writer.submit(_turn("after")) is True

    async def test_failed_batch_stays_queued(self, db: Database) -> None:
        """A batch that fails to write is put back in order and written by the next flush."""
        store = _FlakyStore(db, failures=1)
        writer = HistoryWriter(store, max_batch=4)
        for i in range(6):
            writer.submit(_turn(f"m{i}"))
        with pytest.raises(StorageError):
            await writer.flush()
        assert writer.pending == 6 and writer.failed_flushes == 1
        await writer.flush()
        assert [t.content for t in await store.recent("discord", "c1")] == [
            f"m{i}" for i in range(6)
        ]

    async def test_run_retries_after_a_failure(self, db: Database) -> None:
        """The background task backs off after a failed batch and retries until it is written."""
        store = _FlakyStore(db, failures=2)
        writer = HistoryWriter(store, min_retry_delay_s=0.0, max_retry_delay_s=0.0)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            writer.submit(_turn("persistent"))
            await store.wait_written(writer, 1)
            await writer.aclose()
        assert writer.failed_flushes == 2
        assert [t.content for t in await store.recent("discord", "c1")] == ["persistent"]

    async def test_bad_turn_fails_in_the_callers_frame(self, db: Database) -> None:
        """A turn whose meta cannot be serialised raises from submit, not in a later batch."""
        writer = HistoryWriter(HistoryStore(db))
        with pytest.raises(ValueError, match="JSON-serialisable"):
            writer.submit(_turn("x", meta={"bad": {1, 2}}))
        assert writer.pending == 0
