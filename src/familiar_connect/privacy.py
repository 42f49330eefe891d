"""People's control over their own data: opt out, export, delete.

Platform-neutral: the Discord commands (``/privacy``, ``/my-data``) call this,
and so can any other adapter. Every action applies only to the caller's own
``(platform, user id)``.

- **Opt out**: the person is never answered again, nothing they say is stored,
  their past turns leave every conversation's context and every memory-writer
  pass. Opting back in restores answering (past data is as it was).
- **Export**: their history rows and their people note, as one JSON document.
- **Delete**: their history rows and their people note are deleted; the note's
  deletion is recorded in the memory audit log with source ``user-request``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from familiar_connect.conversation.orchestrator import Orchestrator
from familiar_connect.errors import MemoryStoreError
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.layout import people_note_path
from familiar_connect.storage.history import HistoryStore, HistoryWriter
from familiar_connect.storage.privacy import PrivacyStore

__all__ = ["DeletionReport", "PrivacyService"]

log = structlog.get_logger(__name__)

USER_REQUEST_SOURCE = "user-request"


@dataclass(frozen=True, slots=True)
class DeletionReport:
    """What :meth:`PrivacyService.delete` removed."""

    turns_deleted: int
    note_deleted: bool


class PrivacyService:
    """Opt-out, export and deletion for one familiar."""

    def __init__(
        self,
        *,
        store: PrivacyStore,
        history: HistoryStore,
        history_writer: HistoryWriter,
        memory: AsyncMemoryStore,
        orchestrator: Orchestrator,
    ) -> None:
        self._store = store
        self._history = history
        self._writer = history_writer
        self._memory = memory
        self._orchestrator = orchestrator

    def is_opted_out(self, platform: str, user_id: str) -> bool:
        """Synchronous check (the orchestrator's access policy holds the set)."""
        return self._orchestrator.policy.access.is_opted_out(f"{platform}:{user_id}")

    async def opt_out(self, platform: str, user_id: str) -> None:
        """Stop answering and storing this person, and drop their words from context."""
        await self._store.set_opt_out(platform, user_id, True)
        self._orchestrator.policy.access.opt_out(f"{platform}:{user_id}")
        self._orchestrator.forget_windows()
        log.info("privacy_opted_out", platform=platform, user_id=user_id)

    async def opt_in(self, platform: str, user_id: str) -> None:
        """Undo :meth:`opt_out`."""
        await self._store.set_opt_out(platform, user_id, False)
        self._orchestrator.policy.access.opt_in(f"{platform}:{user_id}")
        self._orchestrator.forget_windows()
        log.info("privacy_opted_in", platform=platform, user_id=user_id)

    async def export(self, platform: str, user_id: str) -> bytes:
        """Everything stored about this person, as UTF-8 JSON."""
        await self._writer.flush()
        turns = await self._history.export_author(platform, user_id)
        note_path = people_note_path(platform, user_id)
        try:
            note: str | None = await self._memory.read_file(note_path)
        except MemoryStoreError:
            note = None
        document: dict[str, Any] = {
            "platform": platform,
            "user_id": user_id,
            "exported_at": datetime.now(UTC).isoformat(),
            "opted_out": self.is_opted_out(platform, user_id),
            "history": [
                {
                    "id": turn.id,
                    "conversation": turn.channel,
                    "time": turn.created_at.isoformat(),
                    "role": turn.role,
                    "modality": turn.modality,
                    "name": turn.author_name,
                    "content": turn.content,
                }
                for turn in turns
            ],
            "people_note": {"path": note_path, "content": note} if note is not None else None,
        }
        log.info("privacy_exported", platform=platform, user_id=user_id, turns=len(turns))
        return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")

    async def delete(self, platform: str, user_id: str) -> DeletionReport:
        """Delete this person's history rows and people note (audited as ``user-request``)."""
        await self._writer.flush()
        turns_deleted = await self._history.delete_author(platform, user_id)
        note_deleted = await self._memory.delete_file(
            people_note_path(platform, user_id),
            source=USER_REQUEST_SOURCE,
            context={"author": f"{platform}:{user_id}", "request": "delete my data"},
        )
        self._orchestrator.forget_windows()
        log.info(
            "privacy_deleted",
            platform=platform,
            user_id=user_id,
            turns=turns_deleted,
            note=note_deleted,
        )
        return DeletionReport(turns_deleted=turns_deleted, note_deleted=note_deleted)
