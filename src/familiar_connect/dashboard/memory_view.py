"""The memory browser: read-only views of the memory directory and its audit trail.

Every path goes through the :class:`~familiar_connect.memory.store.MemoryStore`
(via its async facade), which refuses ``..``, absolute paths, NUL bytes and
symlinks out of the root — the dashboard adds no file access of its own. A
note longer than :data:`MAX_VIEW_CHARS` is shown truncated, with a marker; a
file over the store's size cap is refused by the store and shown as such.

Chain verification (:func:`~familiar_connect.memory.audit.verify_audit`) hashes
every note, so :class:`AuditStatus` runs it in a worker thread, one run at a
time, and reuses the result for ``ttl_s`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from familiar_connect.errors import (
    AuditLogError,
    MemoryStoreError,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
)
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.audit import AuditEntry, verify_audit
from familiar_connect.memory.store import MemoryStore

__all__ = [
    "MAX_AUDIT_ROWS",
    "MAX_PATH_CHARS",
    "MAX_VIEW_CHARS",
    "AuditStatus",
    "MemoryViewError",
    "audit_rows",
    "list_directory",
    "read_note",
]

MAX_VIEW_CHARS = 64 * 1024
"""Characters of a note shown; the rest is cut with a visible marker."""

MAX_AUDIT_ROWS = 200
"""Audit records listed per request."""

MAX_PATH_CHARS = 1024
"""Longest path accepted from the browser."""

_MAX_PROBLEMS_SHOWN = 20


class MemoryViewError(Exception):
    """A memory request the dashboard answers with an error status.

    Attributes:
        status: the HTTP status to answer with.
        message: a short, safe explanation.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _check_path(path: str) -> str:
    if len(path) > MAX_PATH_CHARS:
        raise MemoryViewError(400, f"path is longer than {MAX_PATH_CHARS} characters")
    return path


def _translate(exc: MemoryStoreError, path: str) -> MemoryViewError:
    shown = path[:120]
    if isinstance(exc, MemoryStorePathError):
        return MemoryViewError(400, f"refused: {shown!r} is outside the memory directory")
    if isinstance(exc, MemoryStoreSizeLimitError):
        return MemoryViewError(413, f"too large to show: {exc}")
    return MemoryViewError(404, f"cannot open {shown!r}: {exc}")


def _entry_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "timestamp": entry.timestamp.isoformat(timespec="seconds"),
        "path": entry.rel_path,
        "operation": entry.operation,
        "bytes_written": entry.bytes_written,
        "source": entry.source,
        "context": dict(entry.context),
        "hash": entry.hash[:12],
    }


def audit_rows(
    entries: Sequence[AuditEntry], *, path: str | None = None, limit: int = MAX_AUDIT_ROWS
) -> list[dict[str, Any]]:
    """Audit records, newest first: all of them, or only those of one file."""
    rows: list[dict[str, Any]] = []
    for entry in reversed(entries):
        if path is not None and entry.rel_path != path:
            continue
        rows.append(_entry_row(entry))
        if len(rows) >= limit:
            break
    return rows


async def list_directory(memory: AsyncMemoryStore, path: str = "") -> dict[str, Any]:
    """One directory's entries with each file's last recorded write.

    Raises:
        MemoryViewError: refused path (400), not a directory or missing (404), too many entries (413).
    """
    # Only a trailing slash is tidied: a leading one must reach the store, which refuses it.
    path = _check_path(path.strip().rstrip("/"))
    try:
        entries = await memory.list_dir(path)
    except MemoryStoreError as exc:
        raise _translate(exc, path) from None
    last_write: dict[str, AuditEntry] = {}
    for entry in memory.audit_entries:
        last_write[entry.rel_path] = entry
    prefix = f"{path}/" if path else ""
    rows = []
    for entry in entries:
        rel = prefix + entry.name
        record = last_write.get(rel)
        rows.append(
            {
                "name": entry.name,
                "path": rel,
                "is_dir": entry.is_dir,
                "size_bytes": entry.size_bytes,
                "modified": entry.modified.isoformat(timespec="seconds"),
                "last_source": record.source if record else None,
            }
        )
    parent = path.rpartition("/")[0] if path else None
    return {"path": path, "parent": parent, "entries": rows}


async def read_note(memory: AsyncMemoryStore, path: str) -> dict[str, Any]:
    """A note's text (cut at :data:`MAX_VIEW_CHARS`) and its audit trail.

    Raises:
        MemoryViewError: refused path (400), missing or not a file (404), over the store's cap (413).
    """
    path = _check_path(path.strip())
    if not path:
        raise MemoryViewError(400, "no note named")
    try:
        text = await memory.read_file(path)
    except MemoryStoreError as exc:
        raise _translate(exc, path) from None
    truncated = len(text) > MAX_VIEW_CHARS
    return {
        "path": path,
        "chars": len(text),
        "truncated": truncated,
        "shown_chars": min(len(text), MAX_VIEW_CHARS),
        "text": text[:MAX_VIEW_CHARS],
        "audit": audit_rows(memory.audit_entries, path=path),
    }


class AuditStatus:
    """Cached result of verifying the audit chain and every note's hash.

    Args:
        store: the memory store whose log and root are checked.
        ttl_s: how long a result is reused before the next request re-verifies.
    """

    def __init__(self, store: MemoryStore, *, ttl_s: float = 30.0) -> None:
        self._store = store
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._result: dict[str, Any] | None = None
        self._checked_monotonic: float | None = None

    @property
    def last(self) -> dict[str, Any] | None:
        """The last result, without verifying (None before the first run)."""
        return self._result

    async def get(self, *, refresh: bool = False) -> dict[str, Any]:
        """The verification result, re-verifying if stale or asked to.

        Cancellation: safe; a verification already running finishes in its thread.
        """
        async with self._lock:
            fresh = (
                self._checked_monotonic is not None
                and time.monotonic() - self._checked_monotonic < self._ttl_s
            )
            if self._result is not None and fresh and not refresh:
                return self._result
            self._result = await asyncio.to_thread(self._verify)
            self._checked_monotonic = time.monotonic()
            return self._result

    def _verify(self) -> dict[str, Any]:
        checked_at = datetime.now(UTC).isoformat(timespec="seconds")
        try:
            result = verify_audit(self._store.audit_path, self._store.root)
        except AuditLogError as exc:
            return {
                "ok": False,
                "records_checked": 0,
                "problems": [str(exc)],
                "problem_count": 1,
                "checked_at": checked_at,
            }
        return {
            "ok": result.ok,
            "records_checked": result.records_checked,
            "problems": result.problems[:_MAX_PROBLEMS_SHOWN],
            "problem_count": len(result.issues),
            "checked_at": checked_at,
        }
