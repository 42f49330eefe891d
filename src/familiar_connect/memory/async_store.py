"""AsyncMemoryStore: the MemoryStore for coroutines, each call run in a worker thread.

The store does blocking file I/O (and fsyncs on writes), which must never run
on the event loop: every conversation shares it. This facade runs each call in
:func:`asyncio.to_thread` and otherwise behaves exactly like the synchronous
store it wraps (same arguments, results and exceptions).

Cancellation: cancelling an awaiting coroutine stops the wait, not the
worker thread. A write already handed to its thread completes (or fails)
on its own, atomically, with its audit record; the caller just does not
learn the outcome. Reads cancelled this way have no effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from familiar_connect.memory.audit import AuditEntry
from familiar_connect.memory.store import GrepHit, MemoryEntry, MemoryStore, WriteListener

__all__ = ["AsyncMemoryStore"]


class AsyncMemoryStore:
    """Coroutine facade over a :class:`MemoryStore`.

    Thread-safety: safe to share across tasks and event loops, since the
    wrapped store is thread-safe.

    Args:
        store: the synchronous store to drive; exposed as :attr:`store`.
    """

    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    @property
    def audit_entries(self) -> list[AuditEntry]:
        """A copy of the audit records (in memory already; does not block)."""
        return self.store.audit_entries

    def add_write_listener(self, callback: WriteListener) -> None:
        """Register a write listener on the store; it runs on the writing worker thread."""
        self.store.add_write_listener(callback)

    async def list_dir(self, rel_path: str = "") -> list[MemoryEntry]:
        """See :meth:`MemoryStore.list_dir`."""
        return await asyncio.to_thread(self.store.list_dir, rel_path)

    async def read_file(self, rel_path: str) -> str:
        """See :meth:`MemoryStore.read_file`."""
        return await asyncio.to_thread(self.store.read_file, rel_path)

    async def delete_file(
        self, rel_path: str, *, source: str = "unknown", context: Mapping[str, str] | None = None
    ) -> bool:
        """See :meth:`MemoryStore.delete_file`."""
        return await asyncio.to_thread(
            self.store.delete_file, rel_path, source=source, context=context
        )

    async def glob(self, pattern: str) -> list[str]:
        """See :meth:`MemoryStore.glob`."""
        return await asyncio.to_thread(self.store.glob, pattern)

    async def grep(
        self, pattern: str, rel_path: str = "", *, case_insensitive: bool = True
    ) -> list[GrepHit]:
        """See :meth:`MemoryStore.grep`."""
        return await asyncio.to_thread(
            self.store.grep, pattern, rel_path, case_insensitive=case_insensitive
        )

    async def write_file(
        self,
        rel_path: str,
        content: str,
        *,
        source: str = "unknown",
        context: Mapping[str, str] | None = None,
    ) -> None:
        """See :meth:`MemoryStore.write_file`; cancellation does not undo a started write."""
        await asyncio.to_thread(
            self.store.write_file, rel_path, content, source=source, context=context
        )

    async def append_file(
        self,
        rel_path: str,
        content: str,
        *,
        source: str = "unknown",
        context: Mapping[str, str] | None = None,
    ) -> None:
        """See :meth:`MemoryStore.append_file`; cancellation does not undo a started append."""
        await asyncio.to_thread(
            self.store.append_file, rel_path, content, source=source, context=context
        )
