"""Full-text index over the memory notes directory, for the ``memory_search`` tool.

The MemoryStore owns the files; this index mirrors them in SQLite FTS5 so a
search is an index lookup (sub-millisecond to a few ms at 100k notes) rather
than a scan (~1 s). It is a cache: :meth:`NotesIndex.rebuild` at start-up
brings it in line with the files, and live writes arrive through the
thread-safe :meth:`NotesIndex.listener_for` hook.

Writes use multi-row statements (see ``_multirow``): with ``executemany`` the
FTS5 trigger wrote one index segment per note, which made a cold build of 100k
notes cost ~80 µs per note of SQLite time instead of ~40.

Ranking is BM25, computed over a bounded candidate set: the
``candidate_cap`` most recently written notes that contain every query word.
For rare and mid-frequency words that is every match, so the ranking is
exact; for a word in nearly every note (e.g. "the") it keeps the search
bounded, where ``ORDER BY rank`` over all matches costs ~80 ms at 100k notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import aiosqlite
import structlog

from familiar_connect.storage import _multirow
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

T = TypeVar("T")

MAX_NOTE_CHARS: Final = 262_144
"""Longer notes are indexed truncated (the MemoryStore caps files at 256 KB)."""
MAX_PATH_CHARS: Final = 1_024
"""Relative paths are 1..this many characters."""
MAX_SEARCH_LIMIT: Final = 100
"""``search`` returns at most this many hits."""

_SNIPPET_TOKENS: Final = 16
_CHUNK: Final = 256
"""Notes per worker-thread hop and per transaction in :meth:`NotesIndex.rebuild` (~10 ms
of FTS5 work; larger transactions measured a few % less CPU per note)."""
_ROWS_PER_STATEMENT: Final = 128
"""Most notes per multi-row statement, each sent to the database thread on its own (~5 ms):
reads queued there run between statements instead of after a whole chunk."""
_HASH_PAGE: Final = 2_000
"""Indexed ``(rel_path, hash)`` pairs fetched per query when a rebuild starts."""

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
# Multi-row templates: {rows} becomes "(?, ?), (?, ?), …" (_multirow.statement). SQLite
# names the columns of a VALUES list column1, column2, ….
_DELETE_CHANGED: Final = (
    "DELETE FROM notes WHERE id IN (SELECT notes.id FROM (VALUES {rows}) AS v "
    "JOIN notes ON notes.rel_path = v.column1 WHERE notes.content_hash != v.column2)"
)
_INSERT_NEW: Final = (
    "INSERT INTO notes (rel_path, content, content_hash, updated_at_us) VALUES {rows} "
    "ON CONFLICT (rel_path) DO NOTHING"
)
_DELETE_PATHS: Final = "DELETE FROM notes WHERE rel_path IN (VALUES {rows})"
_SELECT_HASH_PAGE: Final = (
    "SELECT rel_path, content_hash FROM notes WHERE rel_path > ? ORDER BY rel_path LIMIT ?"
)

_Insert = tuple[str, str, bytes, int]


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


def _now_us() -> int:
    return to_epoch_us(datetime.now(UTC))


@dataclass(slots=True)
class _Chunk:
    """One chunk of a rebuild, prepared in a worker thread."""

    inserts: list[_Insert] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)  # paths indexed with other content
    unchanged: int = 0
    last: bool = False


class _RebuildFeed:
    """Reads a rebuild's ``(rel_path, content)`` pairs a chunk at a time, off the loop.

    :meth:`next_chunk` runs in a worker thread: it pulls up to ``size`` notes from
    the caller's iterable (for ``MemoryStore.iter_notes`` that is where the files
    are read), checks and bounds them, hashes them and compares the hash with
    ``existing`` (the index's hashes when the rebuild began). It pops every path
    it sees from ``existing``, so what is left at the end is the stale paths.
    Calls are serialised by a lock, so :meth:`close` from another thread waits
    for a chunk in progress instead of closing a running generator.
    """

    def __init__(self, files: Iterable[tuple[str, str]], existing: dict[str, bytes], size: int):
        self._files = files
        self._iterator: Iterator[tuple[str, str]] | None = None
        self._existing = existing
        self._size = size
        self._lock = threading.Lock()
        self._finished = False

    def next_chunk(self) -> _Chunk:
        with self._lock:
            chunk = _Chunk()
            if self._finished:
                chunk.last = True
                return chunk
            if self._iterator is None:
                self._iterator = iter(self._files)
            now_us = _now_us()
            existing = self._existing
            for pulled, (rel_path, content) in enumerate(self._iterator, start=1):
                _check_path(rel_path)
                bounded = _bounded(rel_path, content)
                digest = _content_hash(bounded)
                old = existing.pop(rel_path, None)
                if old == digest:
                    chunk.unchanged += 1
                else:
                    if old is not None:
                        chunk.changed.add(rel_path)
                    chunk.inserts.append((rel_path, bounded, digest, now_us))
                if pulled >= self._size:
                    break
            else:
                self._finished = chunk.last = True
            return chunk

    def close(self) -> None:
        """Close the caller's iterator (e.g. a generator holding directory handles)."""
        with self._lock:
            self._finished = True
            iterator, self._iterator = self._iterator, None
            if iterator is not None:
                close = getattr(iterator, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()


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
        # Paths written live (listener, upsert, remove) while a rebuild runs: the
        # rebuild leaves them alone, as its copy of the file may be older.
        self._rebuilds = 0
        self._touched: set[str] = set()

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
        self._mark_touched((rel_path,))
        await self._apply({rel_path: content}, what="notes_index.upsert")

    async def remove(self, rel_path: str) -> None:
        """Drop a note from the index (no error if it was not indexed)."""
        self._mark_touched((rel_path,))
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

        ``files`` may be lazy, e.g. ``MemoryStore.iter_notes()``: it is iterated
        only in worker threads, :data:`_CHUNK` notes at a time (reading, hashing
        and comparing happen there, not on the event loop), and at most two
        chunks are held at once. It is closed when the rebuild ends. Only notes
        whose content changed are rewritten, so a restart with an unchanged
        directory costs a read and a hash per file. Each chunk is one
        transaction; searches meanwhile may see a mix of old and new. Notes
        written live while the rebuild runs (through the listener,
        :meth:`upsert` or :meth:`remove`) are left as the live write made them.

        Cancellation: chunks already committed stay; call again to finish.

        Raises:
            ValueError: a bad path (chunks before it are committed).
            StorageError: a write failed.
        """
        loop = asyncio.get_running_loop()
        existing: dict[str, bytes] = {}
        feed = _RebuildFeed(files, existing, _CHUNK)
        prefetch: asyncio.Future[_Chunk] | None = None
        with self._pending_lock:
            self._rebuilds += 1
        try:
            await self._load_indexed_hashes(existing)
            written = unchanged = 0
            prefetch = _in_thread(loop, feed.next_chunk)
            while True:
                chunk = await prefetch
                prefetch = None
                if not chunk.last:
                    # Read and hash the next chunk while this one is written.
                    prefetch = _in_thread(loop, feed.next_chunk)
                unchanged += chunk.unchanged
                inserts = self._untouched(chunk.inserts)
                if inserts:
                    changed = [(row[0], row[2]) for row in inserts if row[0] in chunk.changed]
                    await self._write((), changed, inserts, what="notes_index.rebuild")
                    written += len(inserts)
                if chunk.last:
                    break
            # Every path the files named was popped from `existing`: the rest are stale.
            stale = self._untouched_paths(existing)
            for start in range(0, len(stale), _CHUNK):
                await self._write(stale[start : start + _CHUNK], (), (), what="notes_index.rebuild")
            log.info(
                "notes_index_rebuilt", written=written, unchanged=unchanged, removed=len(stale)
            )
            return RebuildResult(written=written, unchanged=unchanged, removed=len(stale))
        finally:
            if prefetch is not None:
                # Abandoned (error or cancellation): retrieve its outcome so it is not logged
                # as never retrieved. The feed's lock makes close() wait for it.
                prefetch.add_done_callback(_discard_outcome)
            try:
                _in_thread(loop, feed.close).add_done_callback(_discard_outcome)
            except RuntimeError:  # the executor is shut down: garbage collection closes it
                log.debug("notes_index_rebuild_feed_not_closed")
            with self._pending_lock:
                self._rebuilds -= 1
                if self._rebuilds == 0:
                    self._touched.clear()

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
                    if self._rebuilds:
                        self._touched.add(rel_path)
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
        now_us = _now_us()
        removals: list[str] = []
        changes: list[tuple[str, bytes]] = []
        inserts: list[_Insert] = []
        for rel_path, content in updates.items():
            _check_path(rel_path)
            if content is None:
                removals.append(rel_path)
                continue
            bounded = _bounded(rel_path, content)
            digest = _content_hash(bounded)
            changes.append((rel_path, digest))
            inserts.append((rel_path, bounded, digest, now_us))
        await self._write(removals, changes, inserts, what=what)

    async def _write(
        self,
        removals: Sequence[str],
        changes: Sequence[tuple[str, bytes]],
        inserts: Sequence[_Insert],
        *,
        what: str,
    ) -> None:
        """In one transaction: drop ``removals``, drop ``changes`` whose indexed hash differs
        from the given one, then insert ``inserts`` that are not indexed (any more)."""
        statements = [
            *_statements(_DELETE_PATHS, 1, [(path,) for path in removals]),
            # Delete-then-insert (not UPDATE) so a changed note gets a new, highest id:
            # the search's recency window is by id.
            *_statements(_DELETE_CHANGED, 2, changes),
            *_statements(_INSERT_NEW, 4, inserts),
        ]
        if not statements:
            return

        async def body(conn: aiosqlite.Connection) -> None:
            for sql, executions in statements:
                for execution in executions:
                    await conn.execute(sql, execution)

        await self._db.transaction(body, what=what)

    async def _load_indexed_hashes(self, hashes: dict[str, bytes]) -> None:
        """Put every indexed ``rel_path → content hash`` in ``hashes``, a page per query."""
        after = ""
        while True:
            rows = await self._db.fetchall(
                _SELECT_HASH_PAGE, (after, _HASH_PAGE), what="notes_index.rebuild"
            )
            hashes.update((str(path), bytes(digest)) for path, digest in rows)
            if len(rows) < _HASH_PAGE:
                return
            after = str(rows[-1][0])

    def _mark_touched(self, paths: Iterable[str]) -> None:
        with self._pending_lock:
            if self._rebuilds:
                self._touched.update(paths)

    def _untouched(self, inserts: list[_Insert]) -> list[_Insert]:
        with self._pending_lock:
            if not self._touched:
                return inserts
            return [row for row in inserts if row[0] not in self._touched]

    def _untouched_paths(self, paths: Iterable[str]) -> list[str]:
        with self._pending_lock:
            return [path for path in paths if path not in self._touched]


def _statements(
    template: str, columns: int, rows: Sequence[Sequence[object]]
) -> list[tuple[str, list[list[object]]]]:
    return [
        (_multirow.statement(template, columns, size), executions)
        for size, executions in _multirow.groups(rows, columns=columns, most=_ROWS_PER_STATEMENT)
    ]


def _in_thread(loop: asyncio.AbstractEventLoop, func: Callable[[], T]) -> asyncio.Future[T]:
    """``func()`` in the default executor with the caller's context (as ``asyncio.to_thread``),
    as a future that can be awaited later."""
    return loop.run_in_executor(None, functools.partial(contextvars.copy_context().run, func))


def _discard_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
