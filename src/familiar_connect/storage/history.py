"""Conversation history: every turn the familiar heard or said, with full-text search.

:class:`HistoryStore` is the domain API over the ``turns`` table;
:class:`HistoryWriter` batches turns from the hot path into few transactions.

Performance shape (DESIGN §6, history at 1M turns):

* ``recent`` walks the ``(platform, channel, id DESC)`` index backwards.
* ``search`` asks FTS5 for the newest matches (``ORDER BY rowid DESC LIMIT``),
  which FTS5 answers by walking its doclists from the end, so even a word
  present in every turn ("the") stops after ``limit`` hits. Ranking by
  relevance (``ORDER BY rank``) would sort every match: 1.4 s at 1M turns.
* A platform/channel filter is part of the FTS query (a per-conversation
  token, see ``migrations.py``), so a quiet channel does not force a walk
  over all matches in busy ones.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

import aiosqlite
import structlog

from familiar_connect.errors import StorageError
from familiar_connect.storage import _multirow
from familiar_connect.storage._fts import fts5_terms
from familiar_connect.storage.db import Database, from_epoch_us

__all__ = [
    "MAX_CONTENT_CHARS",
    "MAX_META_BYTES",
    "MAX_RECENT_LIMIT",
    "MAX_SEARCH_LIMIT",
    "HistoryStore",
    "HistoryWriter",
    "Modality",
    "Role",
    "Turn",
]

log = structlog.get_logger(__name__)

Role = Literal["user", "assistant", "system", "event"]
Modality = Literal["text", "voice", "twitch", "terminal"]
_ROLES: Final = frozenset(get_args(Role))
_MODALITIES: Final = frozenset(get_args(Modality))

MAX_CONTENT_CHARS: Final = 32_768
"""Longer turn text is stored truncated (with a warning in the log)."""
MAX_META_BYTES: Final = 16_384
"""Serialised ``meta`` larger than this is rejected."""
MAX_KEY_CHARS: Final = 256
"""Upper bound for platform, channel, author id and author name."""
MAX_RECENT_LIMIT: Final = 1_000
"""``recent`` and ``since`` return at most this many turns."""
MAX_SEARCH_LIMIT: Final = 200
"""``search`` returns at most this many turns."""

_PAGE: Final = 2_000  # rows per hop for exports/deletes, so other queries interleave

# Statements are whole literals (no string building) so nothing but bound
# parameters ever varies.
_SELECT_RECENT: Final = (
    "SELECT id, platform, channel, author_id, author_name, role, content, modality, "
    "created_at_us, meta FROM turns WHERE platform = ? AND channel = ? ORDER BY id DESC LIMIT ?"
)
_SELECT_SINCE: Final = (
    "SELECT id, platform, channel, author_id, author_name, role, content, modality, "
    "created_at_us, meta FROM turns WHERE platform = ? AND channel = ? AND id > ? "
    "ORDER BY id LIMIT ?"
)
_SELECT_AUTHOR_PAGE: Final = (
    "SELECT id, platform, channel, author_id, author_name, role, content, modality, "
    "created_at_us, meta FROM turns WHERE platform = ? AND author_id = ? AND id > ? "
    "ORDER BY id LIMIT ?"
)
_SELECT_SEARCH: Final = (
    "SELECT t.id, t.platform, t.channel, t.author_id, t.author_name, t.role, t.content, "
    "t.modality, t.created_at_us, t.meta FROM turns_fts JOIN turns AS t ON t.id = turns_fts.rowid "
    "WHERE turns_fts MATCH ? ORDER BY turns_fts.rowid DESC LIMIT ?"
)
_INSERT: Final = (
    "INSERT INTO turns (platform, channel, author_id, author_name, role, content, modality, "
    "created_at_us, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
"""One row. The store writes through :data:`_INSERT_ROWS` instead (see ``_multirow``)."""
_INSERT_ROWS: Final = (
    "INSERT INTO turns (platform, channel, author_id, author_name, role, content, modality, "
    "created_at_us, meta) VALUES {rows}"
)
_COLUMNS: Final = 9

_Row = tuple[str, str, str, str, str, str, str, int, str | None]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
# One encoder for every turn: json.dumps with non-default options builds a new
# JSONEncoder per call, which was a visible share of the per-turn cost.
_encode_meta: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


@dataclass(frozen=True, slots=True, kw_only=True)
class Turn:
    """One message in a conversation.

    Attributes:
        id: assigned by the store (monotonic, never reused); None before insert.
        platform: e.g. ``"discord"``, ``"twitch"``, ``"terminal"``.
        channel: the conversation key within the platform.
        author_id: platform user id (the familiar's own id for its replies).
        author_name: display name at the time of the turn.
        role: ``"user"``, ``"assistant"``, ``"system"`` or ``"event"``.
        content: the text (for voice: the transcript, or what was spoken).
        modality: ``"text"``, ``"voice"``, ``"twitch"`` or ``"terminal"``.
        created_at: timezone-aware wall-clock time (stored in UTC).
        meta: optional JSON-serialisable details, e.g. timings.
    """

    id: int | None = None
    platform: str
    channel: str
    author_id: str
    author_name: str
    role: Role
    content: str
    modality: Modality
    created_at: datetime
    meta: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"role must be one of {sorted(_ROLES)}, got {self.role!r}")
        if self.modality not in _MODALITIES:
            raise ValueError(
                f"modality must be one of {sorted(_MODALITIES)}, got {self.modality!r}"
            )
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError("created_at must be timezone-aware")
        # One combined check on the hot path (a turn per message); names only on failure.
        if not (
            0 < len(self.platform) <= MAX_KEY_CHARS
            and 0 < len(self.channel) <= MAX_KEY_CHARS
            and 0 < len(self.author_id) <= MAX_KEY_CHARS
        ):
            for name in ("platform", "channel", "author_id"):
                value = getattr(self, name)
                if not value or len(value) > MAX_KEY_CHARS:
                    raise ValueError(f"{name} must be 1..{MAX_KEY_CHARS} characters")
        if len(self.author_name) > MAX_KEY_CHARS:
            raise ValueError(f"author_name must be at most {MAX_KEY_CHARS} characters")


def _encodable(text: str) -> str:
    """``text`` as SQLite can store it: lone surrogates (from JSON escapes) become U+FFFD."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _to_row(turn: Turn) -> _Row:
    content = _encodable(turn.content)
    if len(content) > MAX_CONTENT_CHARS:
        log.warning(
            "history_turn_truncated",
            platform=turn.platform,
            channel=turn.channel,
            original_chars=len(content),
            kept_chars=MAX_CONTENT_CHARS,
        )
        content = content[:MAX_CONTENT_CHARS]
    meta: str | None = None
    if turn.meta is not None:
        try:
            meta = _encodable(_encode_meta(turn.meta))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"turn meta must be JSON-serialisable: {exc}") from exc
        # At most 4 UTF-8 bytes per character: short text needs no encoding to check.
        if len(meta) * 4 > MAX_META_BYTES and len(meta.encode()) > MAX_META_BYTES:
            raise ValueError(f"turn meta is larger than {MAX_META_BYTES} bytes")
    return (
        _encodable(turn.platform),
        _encodable(turn.channel),
        _encodable(turn.author_id),
        _encodable(turn.author_name),
        turn.role,
        content,
        turn.modality,
        # Turn checked that created_at is aware; this is db.to_epoch_us without the check.
        (turn.created_at - _EPOCH) // _ONE_US,
        meta,
    )


def _insert_statements(rows: Sequence[_Row]) -> list[tuple[str, list[list[Any]]]]:
    """``(sql, parameter sets)`` pairs that insert ``rows`` in order, for ``executemany``.

    Multi-row statements (see ``_multirow``): one FTS5 flush per statement rather
    than per turn. Also used by the history benchmark's plain-sqlite3 side.
    """
    return [
        (_multirow.statement(_INSERT_ROWS, _COLUMNS, size), executions)
        for size, executions in _multirow.groups(rows, columns=_COLUMNS)
    ]


def _from_row(row: Sequence[Any]) -> Turn:
    return Turn(
        id=row[0],
        platform=row[1],
        channel=row[2],
        author_id=row[3],
        author_name=row[4],
        role=row[5],
        content=row[6],
        modality=row[7],
        created_at=from_epoch_us(row[8]),
        meta=json.loads(row[9]) if row[9] is not None else None,
    )


def _platform_token(platform: str) -> str:
    # Must equal the generated column in migrations.py: 'p' || hex(platform).
    return "p" + platform.encode().hex()


def _conversation_token(platform: str, channel: str) -> str:
    # Must equal 'k' || hex(platform || char(31) || channel).
    return "k" + (platform + "\x1f" + channel).encode().hex()


def _clamp(limit: int, upper: int) -> int:
    return max(1, min(int(limit), upper))


class HistoryStore:
    """Conversation history over a :class:`Database`.

    All methods are coroutines that make one or a few hops to the database
    thread; cancelling a read is safe (nothing changes), cancelling a write
    lets it finish in the background (see :meth:`Database.transaction`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_many(self, turns: Iterable[Turn]) -> None:
        """Insert ``turns`` in one transaction (all or none).

        Ids on the given turns are ignored; the store assigns new ones in
        iteration order. Over-long content is truncated (logged).

        Raises:
            ValueError: a turn's ``meta`` is not JSON-serialisable or too large.
            StorageError: the write failed; nothing was inserted.
        """
        rows = [_to_row(turn) for turn in turns]
        if rows:
            await self._insert_rows(rows)

    async def add(self, turn: Turn) -> None:
        """Insert one turn (prefer :class:`HistoryWriter` on hot paths)."""
        await self.add_many((turn,))

    async def recent(self, platform: str, channel: str, *, limit: int = 50) -> list[Turn]:
        """Return the last ``limit`` turns of a conversation, oldest first.

        ``limit`` is clamped to 1..:data:`MAX_RECENT_LIMIT`.
        """
        rows = await self._db.fetchall(
            _SELECT_RECENT,
            (platform, channel, _clamp(limit, MAX_RECENT_LIMIT)),
            what="history.recent",
        )
        return [_from_row(row) for row in reversed(rows)]

    async def since(
        self, platform: str, channel: str, after_id: int, *, limit: int = 200
    ) -> list[Turn]:
        """Return turns of a conversation with ``id > after_id``, oldest first.

        For watermark readers (the memory writer): pass the last id you
        processed; an empty list means you are caught up. Ids are never
        reused, so deleting turns cannot make a watermark skip new ones.
        ``limit`` is clamped to 1..:data:`MAX_RECENT_LIMIT`.
        """
        rows = await self._db.fetchall(
            _SELECT_SINCE,
            (platform, channel, after_id, _clamp(limit, MAX_RECENT_LIMIT)),
            what="history.since",
        )
        return [_from_row(row) for row in rows]

    async def search(
        self,
        query: str,
        *,
        platform: str | None = None,
        channel: str | None = None,
        limit: int = 20,
    ) -> list[Turn]:
        """Full-text search, newest match first.

        Every word of ``query`` must appear (case- and accent-insensitive);
        punctuation and FTS5 operators in ``query`` are treated as plain
        text, so user input cannot cause a syntax error. A query without
        any word characters returns ``[]``. ``limit`` is clamped to
        1..:data:`MAX_SEARCH_LIMIT`.

        Args:
            query: untrusted search text.
            platform: only turns from this platform.
            channel: only this conversation (requires ``platform``).
            limit: maximum number of turns returned.

        Raises:
            ValueError: ``channel`` given without ``platform``.
            StorageError: the query failed.
        """
        if channel is not None and platform is None:
            raise ValueError("search by channel needs the platform too")
        terms = fts5_terms(query)
        if terms is None:
            return []
        match = "{content} : (" + terms + ")"
        if channel is not None and platform is not None:
            match += ' AND {scope} : "' + _conversation_token(platform, channel) + '"'
        elif platform is not None:
            match += ' AND {scope} : "' + _platform_token(platform) + '"'
        rows = await self._db.fetchall(
            _SELECT_SEARCH,
            (match, _clamp(limit, MAX_SEARCH_LIMIT)),
            what="history.search",
        )
        return [_from_row(row) for row in rows]

    async def count(self) -> int:
        """Return the number of stored turns (a full index scan; not for hot paths)."""
        rows = await self._db.fetchall("SELECT count(*) FROM turns", what="history.count")
        return int(rows[0][0])

    async def delete_author(self, platform: str, author_id: str) -> int:
        """Delete every turn written by one user; return how many were deleted.

        Deletes in pages of a few thousand turns, one transaction each, so
        other conversations keep being served; the full-text index and the
        deleted pages are cleared too. If interrupted, calling again finishes
        the job. Turns by others (e.g. the familiar's replies) are kept.
        """
        deleted = 0
        remaining = await self._author_count(platform, author_id)
        # +1 page covers turns the user wrote while we were deleting.
        for _ in range(math.ceil(remaining / _PAGE) + 1):
            changed = await self._db.execute(
                "DELETE FROM turns WHERE id IN (SELECT id FROM turns "
                "WHERE platform = ? AND author_id = ? ORDER BY id LIMIT ?)",
                (platform, author_id, _PAGE),
                what="history.delete_author",
            )
            deleted += changed
            if changed < _PAGE:
                break
        log.info("history_author_deleted", platform=platform, turns=deleted)
        return deleted

    async def export_author(self, platform: str, author_id: str) -> list[Turn]:
        """Return every turn written by one user, oldest first (a data export).

        Read in pages so other queries interleave; the whole result is held
        in memory (a user's turns, bounded by what they wrote).
        """
        turns: list[Turn] = []
        after = 0
        pages = math.ceil(await self._author_count(platform, author_id) / _PAGE) + 1
        for _ in range(pages):
            rows = await self._db.fetchall(
                _SELECT_AUTHOR_PAGE,
                (platform, author_id, after, _PAGE),
                what="history.export_author",
            )
            turns.extend(_from_row(row) for row in rows)
            if len(rows) < _PAGE:
                break
            after = rows[-1][0]
        return turns

    async def _author_count(self, platform: str, author_id: str) -> int:
        rows = await self._db.fetchall(
            "SELECT count(*) FROM turns WHERE platform = ? AND author_id = ?",
            (platform, author_id),
            what="history.author_count",
        )
        return int(rows[0][0])

    async def _insert_rows(self, rows: list[_Row]) -> None:
        statements = _insert_statements(rows)

        async def body(conn: aiosqlite.Connection) -> None:
            for sql, executions in statements:
                # One call per statement of up to 256 turns (~6 ms): reads queued on the
                # database thread run between calls, not after a whole large batch.
                for execution in executions:
                    await conn.execute(sql, execution)

        await self._db.transaction(body, what="history.add_many")


class HistoryWriter:
    """Batches turns from the hot path into few transactions.

    :meth:`submit` is synchronous and never waits: it validates and
    serialises the turn in the caller's frame (so a bad turn fails there, not
    in a later batch), queues it and wakes the flusher. Run :meth:`run` as a
    task in the owner's ``TaskGroup``; it writes whatever is queued in batches
    of up to ``max_batch`` turns, so a burst costs one transaction per batch
    rather than one per turn. Turns submitted while a batch is being written
    form the next batch (group commit without a timer), so batches are only
    large under a backlog: there a batch of 1,024 measured ~35% more turns per
    second than 256 (fewer commits and FTS5 merges, fewer thread hops), and
    reads still interleave every 256 turns.

    Overload policy: history must not be lost silently, so when
    ``max_pending`` turns are already queued :meth:`submit` refuses the turn,
    returns False, counts it in :attr:`dropped` and logs a warning (once per
    overload episode). The caller decides what to do with a refused turn.

    Failure policy: if a batch fails to write, its turns go back to the front
    of the queue and :meth:`run` retries with exponential backoff (up to
    ``max_retry_delay_s``); meanwhile the queue bound applies.

    All methods must be called on the event loop thread.
    """

    def __init__(
        self,
        store: HistoryStore,
        *,
        max_batch: int = 1_024,
        max_pending: int = 10_000,
        min_retry_delay_s: float = 0.05,
        max_retry_delay_s: float = 5.0,
    ) -> None:
        if max_batch < 1 or max_pending < 1:
            raise ValueError("max_batch and max_pending must be >= 1")
        self._store = store
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._min_retry_delay_s = min_retry_delay_s
        self._max_retry_delay_s = max_retry_delay_s
        self._pending: collections.deque[_Row] = collections.deque()
        self._wakeup = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._overloaded = False
        self._dropped = 0
        self._written = 0
        self._failed_flushes = 0

    @property
    def max_batch(self) -> int:
        """Most turns written per transaction."""
        return self._max_batch

    @property
    def pending(self) -> int:
        """Turns queued and not yet handed to the database."""
        return len(self._pending)

    @property
    def dropped(self) -> int:
        """Turns refused by :meth:`submit` (queue full or writer closed)."""
        return self._dropped

    @property
    def written(self) -> int:
        """Turns committed by this writer."""
        return self._written

    @property
    def failed_flushes(self) -> int:
        """Batches that failed to write (and were re-queued)."""
        return self._failed_flushes

    def submit(self, turn: Turn) -> bool:
        """Queue ``turn`` for writing without waiting.

        Returns:
            True if queued; False if refused because ``max_pending`` turns are
            already queued or the writer is closed (counted in :attr:`dropped`).

        Raises:
            ValueError: the turn's ``meta`` is not JSON-serialisable or too large.
        """
        row = _to_row(turn)
        if self._closed:
            self._dropped += 1
            log.warning("history_writer_closed_refused", platform=turn.platform)
            return False
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            if not self._overloaded:
                self._overloaded = True
                log.warning(
                    "history_writer_backpressure",
                    max_pending=self._max_pending,
                    dropped_total=self._dropped,
                )
            return False
        self._pending.append(row)
        self._wakeup.set()
        return True

    async def run(self) -> None:
        """Write queued turns until :meth:`aclose` is called.

        Cancelling stops the loop; queued turns stay queued (call
        :meth:`aclose` or :meth:`flush` to write them) and a batch already
        handed to the database still commits.
        """
        delay_s = self._min_retry_delay_s
        while not self._closed:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._closed:
                break
            try:
                await self.flush()
            except StorageError as exc:
                log.error("history_writer_flush_failed", error=str(exc), pending=self.pending)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, self._max_retry_delay_s)
                self._wakeup.set()
            else:
                delay_s = self._min_retry_delay_s

    async def flush(self) -> None:
        """Write every turn queued when the call started, in batches.

        Cancellation: a batch already handed to the database commits anyway;
        turns not yet taken stay queued.

        Raises:
            StorageError: a batch failed; it and everything after it stay queued.
        """
        async with self._flush_lock:
            remaining = len(self._pending)
            while remaining > 0 and self._pending:
                size = min(self._max_batch, remaining, len(self._pending))
                batch = [self._pending.popleft() for _ in range(size)]
                try:
                    await self._store._insert_rows(batch)
                except StorageError:
                    self._pending.extendleft(reversed(batch))
                    self._failed_flushes += 1
                    raise
                remaining -= size
                self._written += size
            if self._overloaded and len(self._pending) < self._max_pending // 2:
                self._overloaded = False
                log.info("history_writer_backpressure_cleared", dropped_total=self._dropped)

    async def aclose(self) -> None:
        """Refuse new turns, write everything queued, and stop :meth:`run`.

        Idempotent. Cancellation as for :meth:`flush`.

        Raises:
            StorageError: the final flush failed; :attr:`pending` turns were
                not written (the error says how many).
        """
        self._closed = True
        self._wakeup.set()
        try:
            # No turn can be queued after _closed is set, so one flush drains all.
            await self.flush()
        except StorageError as exc:
            log.error("history_writer_unwritten_on_close", pending=self.pending)
            raise StorageError(
                f"history writer closed with {self.pending} turns unwritten: {exc}"
            ) from exc
