"""Full-text index over the memory notes directory, for the ``memory_search`` tool.

The MemoryStore owns the files; this index mirrors them in SQLite FTS5 so a
search is an index lookup (sub-millisecond to a few ms at 100k notes) rather
than a scan (~1 s). It is a cache: :meth:`NotesIndex.rebuild` at start-up
brings it in line with the files, and live writes arrive through the
thread-safe :meth:`NotesIndex.listener_for` hook.

Ranking is BM25, computed over a bounded candidate set: the
``candidate_cap`` most recently written notes that contain every query word.
For rare and mid-frequency words that is every match, so the ranking is
exact; for a word in nearly every note (e.g. "the") it keeps the search
bounded, where ``ORDER BY rank`` over all matches costs ~80 ms at 100k notes.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import aiosqlite
import structlog

from familiar_connect.storage._fts import fts5_terms
from familiar_connect.storage.db import Database, to_epoch_us

__all__ = [
    "MAX_NOTE_CHARS",
    "MAX_PATH_CHARS",
    "MAX_SEARCH_LIMIT",
    "NoteHit",
    "NotesIndex",
    "RebuildResult",
]

log = structlog.get_logger(__name__)

MAX_NOTE_CHARS: Final = 262_144
"""Longer notes are indexed truncated (the MemoryStore caps files at 256 KB)."""
MAX_PATH_CHARS: Final = 1_024
"""Relative paths are 1..this many characters."""
MAX_SEARCH_LIMIT: Final = 100
"""``search`` returns at most this many hits."""

_SNIPPET_TOKENS: Final = 16
_CHUNK: Final = 500  # notes per transaction in rebuild; other queries interleave

_SEARCH: Final = """
WITH candidates AS (
    SELECT rowid AS id, bm25(notes_fts) AS score FROM notes_fts
    WHERE notes_fts MATCH :match ORDER BY rowid DESC LIMIT :cap
), best AS (
    SELECT id, score FROM candidates ORDER BY score LIMIT :limit
)
SELECT notes.rel_path, snippet(notes_fts, 0, '**', '**', '…', :tokens), best.score
FROM best
JOIN notes_fts ON notes_fts.rowid = best.id
JOIN notes ON notes.id = best.id
WHERE notes_fts MATCH :match
ORDER BY best.score
"""
_DELETE_CHANGED: Final = "DELETE FROM notes WHERE rel_path = ? AND content_hash != ?"
_INSERT_NEW: Final = (
    "INSERT INTO notes (rel_path, content, content_hash, updated_at_us) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (rel_path) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class NoteHit:
    """One search result.

    Attributes:
        rel_path: the note's path relative to the memory root.
        snippet: matching excerpt, matched words wrapped in ``**``.
        score: relevance, higher is better (negated BM25).
    """

    rel_path: str
    snippet: str
    score: float


@dataclass(frozen=True, slots=True)
class RebuildResult:
    """What :meth:`NotesIndex.rebuild` changed."""

    written: int
    unchanged: int
    removed: int


def _content_hash(content: str) -> bytes:
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _check_path(rel_path: str) -> None:
    if not rel_path or len(rel_path) > MAX_PATH_CHARS or "\x00" in rel_path:
        raise ValueError(f"note paths must be 1..{MAX_PATH_CHARS} characters without NUL")


def _bounded(rel_path: str, content: str) -> str:
    if len(content) <= MAX_NOTE_CHARS:
        return content
    log.warning(
        "notes_index_note_truncated",
        rel_path=rel_path,
        original_chars=len(content),
        kept_chars=MAX_NOTE_CHARS,
    )
    return content[:MAX_NOTE_CHARS]


class NotesIndex:
    """FTS5 index of memory notes over a :class:`Database`.

    Reads are safe to cancel. Writes complete even if the caller is
    cancelled (see :meth:`Database.transaction`).
    """

    def __init__(
        self,
        db: Database,
        *,
        candidate_cap: int = 1_000,
        max_pending_updates: int = 1_024,
    ) -> None:
        """Create the index view.

        Args:
            db: the familiar's database.
            candidate_cap: how many newest matching notes are ranked per search.
            max_pending_updates: distinct paths the listener may queue before
                further updates are dropped (counted; the next rebuild repairs).
        """
        if candidate_cap < 1 or max_pending_updates < 1:
            raise ValueError("candidate_cap and max_pending_updates must be >= 1")
        self._db = db
        self._candidate_cap = candidate_cap
        self._max_pending = max_pending_updates
        self._pending: dict[str, str | None] = {}
        self._pending_lock = threading.Lock()
        self._drain_scheduled = False
        self._drain_task: asyncio.Task[None] | None = None
        self._dropped_updates = 0
        self._closed = False

    @property
    def dropped_updates(self) -> int:
        """Listener updates dropped because the queue was full or the loop gone."""
        return self._dropped_updates

    async def upsert(self, rel_path: str, content: str) -> None:
        """Index (or re-index) one note. A no-op if the content is unchanged.

        Raises:
            ValueError: bad path.
            StorageError: the write failed.
        """
        await self._apply({rel_path: content}, what="notes_index.upsert")

    async def remove(self, rel_path: str) -> None:
        """Drop a note from the index (no error if it was not indexed)."""
        await self._db.execute(
            "DELETE FROM notes WHERE rel_path = ?", (rel_path,), what="notes_index.remove"
        )

    async def search(self, query: str, *, limit: int = 20) -> list[NoteHit]:
        """Return the best-matching notes, best first.

        Every word of ``query`` must appear; punctuation and FTS5 operators
        are plain text, so untrusted queries cannot cause a syntax error. A
        query without word characters returns ``[]``. ``limit`` is clamped to
        1..:data:`MAX_SEARCH_LIMIT`.

        Raises:
            StorageError: the query failed.
        """
        terms = fts5_terms(query)
        if terms is None:
            return []
        limit = max(1, min(int(limit), MAX_SEARCH_LIMIT))
        rows = await self._db.fetchall(
            _SEARCH,
            {
                "match": terms,
                "cap": max(self._candidate_cap, limit),
                "limit": limit,
                "tokens": _SNIPPET_TOKENS,
            },
            what="notes_index.search",
        )
        return [NoteHit(rel_path=r[0], snippet=r[1], score=-float(r[2])) for r in rows]

    async def count(self) -> int:
        """Return the number of indexed notes."""
        rows = await self._db.fetchall("SELECT count(*) FROM notes", what="notes_index.count")
        return int(rows[0][0])

    async def rebuild(self, files: Iterable[tuple[str, str]]) -> RebuildResult:
        """Make the index hold exactly ``files`` (``(rel_path, content)`` pairs).

        Only notes whose content changed are rewritten, so a restart with
        an unchanged directory costs a hash per file. Work is done in
        transactions of a few hundred notes, yielding to the loop between
        them; searches meanwhile may see a mix of old and new. ``files`` is
        iterated on the event loop thread: pass data already read (read the
        files in a worker thread). Meant for start-up, before live updates
        begin; a live update racing with it may be overwritten by the older
        content until that note is written again.

        Cancellation: chunks already committed stay; call again to finish.

        Raises:
            ValueError: a bad path.
            StorageError: a write failed.
        """
        existing = {
            str(path): bytes(digest)
            for path, digest in await self._db.fetchall(
                "SELECT rel_path, content_hash FROM notes", what="notes_index.rebuild"
            )
        }
        seen: set[str] = set()
        chunk: dict[str, str | None] = {}
        written = unchanged = 0
        for position, (rel_path, content) in enumerate(files, start=1):
            if position % _CHUNK == 0:
                await asyncio.sleep(0)  # hashing unchanged files must not hog the loop
            _check_path(rel_path)
            seen.add(rel_path)
            bounded = _bounded(rel_path, content)
            if existing.get(rel_path) == _content_hash(bounded):
                unchanged += 1
                continue
            chunk[rel_path] = bounded
            if len(chunk) >= _CHUNK:
                written += len(chunk)
                await self._apply(chunk, what="notes_index.rebuild")
                chunk = {}
        if chunk:
            written += len(chunk)
            await self._apply(chunk, what="notes_index.rebuild")
        stale = sorted(existing.keys() - seen)
        for start in range(0, len(stale), _CHUNK):
            await self._apply(
                dict.fromkeys(stale[start : start + _CHUNK]), what="notes_index.rebuild"
            )
        log.info("notes_index_rebuilt", written=written, unchanged=unchanged, removed=len(stale))
        return RebuildResult(written=written, unchanged=unchanged, removed=len(stale))

    def listener_for(self, loop: asyncio.AbstractEventLoop) -> Callable[[str, str | None], None]:
        """Return a callback that the MemoryStore calls from any thread after a write.

        ``listener(rel_path, new_full_content)`` never blocks on the database:
        it records the latest content per path (coalescing repeated writes to
        the same note) and schedules one drain task on ``loop`` with
        ``call_soon_threadsafe``. Pass ``None`` as the content for a deleted
        note. At most ``max_pending_updates`` distinct paths wait at a time;
        beyond that, and once the loop is closed or :meth:`aclose` has run,
        updates are dropped, counted in :attr:`dropped_updates` and logged
        (the index is a cache: the next :meth:`rebuild` repairs it).
        """

        def listener(rel_path: str, content: str | None) -> None:
            with self._pending_lock:
                if self._closed or (
                    rel_path not in self._pending and len(self._pending) >= self._max_pending
                ):
                    self._dropped_updates += 1
                    dropped = self._dropped_updates
                    schedule = False
                else:
                    self._pending[rel_path] = content
                    dropped = 0
                    schedule = not self._drain_scheduled
                    self._drain_scheduled = True
            if dropped:
                log.warning("notes_index_update_dropped", rel_path=rel_path, dropped_total=dropped)
                return
            if not schedule:
                return
            try:
                loop.call_soon_threadsafe(self._start_drain)
            except RuntimeError:  # the loop is closed: nobody will drain
                with self._pending_lock:
                    self._dropped_updates += len(self._pending)
                    self._pending.clear()
                    self._drain_scheduled = False
                log.warning("notes_index_loop_closed", dropped_total=self._dropped_updates)

        return listener

    async def drain(self) -> None:
        """Wait until the listener updates queued so far are applied.

        Cancelling the wait does not cancel the drain. Bounded: if writers
        keep adding updates, it returns after ``max_pending_updates`` rounds.
        """
        for _ in range(self._max_pending + 1):
            task = self._drain_task
            if task is not None and not task.done():
                await asyncio.shield(task)
                continue
            with self._pending_lock:
                if not self._pending:
                    return
                self._drain_scheduled = True
            # The listener's call_soon_threadsafe may not have run yet; start
            # the drain here rather than wait for it (_start_drain is idempotent).
            self._start_drain()

    async def aclose(self) -> None:
        """Stop accepting listener updates and apply the ones already queued."""
        with self._pending_lock:
            self._closed = True
        await self.drain()

    def _start_drain(self) -> None:
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_loop())

    async def _drain_loop(self) -> None:
        while True:
            with self._pending_lock:
                updates = self._pending
                self._pending = {}
                if not updates:
                    self._drain_scheduled = False
                    return
            try:
                await self._apply(updates, what="notes_index.listener")
            except Exception as exc:
                # The files are the truth; a lost update is repaired by rebuild.
                self._dropped_updates += len(updates)
                log.error("notes_index_update_failed", notes=len(updates), error=str(exc))

    async def _apply(self, updates: Mapping[str, str | None], *, what: str) -> None:
        now_us = to_epoch_us(datetime.now(UTC))
        removals: list[tuple[str]] = []
        changes: list[tuple[str, bytes]] = []
        inserts: list[tuple[str, str, bytes, int]] = []
        for rel_path, content in updates.items():
            _check_path(rel_path)
            if content is None:
                removals.append((rel_path,))
                continue
            bounded = _bounded(rel_path, content)
            digest = _content_hash(bounded)
            changes.append((rel_path, digest))
            inserts.append((rel_path, bounded, digest, now_us))

        async def body(conn: aiosqlite.Connection) -> None:
            if removals:
                await conn.executemany("DELETE FROM notes WHERE rel_path = ?", removals)
            if inserts:
                # Delete-then-insert (not UPDATE) so a changed note gets a new,
                # highest id: the search's recency window is by id.
                await conn.executemany(_DELETE_CHANGED, changes)
                await conn.executemany(_INSERT_NEW, inserts)

        await self._db.transaction(body, what=what)
