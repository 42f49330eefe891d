"""Operator controls: pause/resume, mute a user, cancel the turn in flight, leave voice.

Each action is **audit-logged with source** ``operator`` in two places:

- a structured log event ``operator_action`` (``source="operator"``, the
  action, its target and result), like every other event of the process;
- one JSON line appended to ``operator_actions.jsonl`` in the familiar's
  directory, next to the memory ``audit.jsonl`` (written with ``O_APPEND``,
  mode 0600; at 1 MiB it is rotated once to ``operator_actions.jsonl.1``).

The memory audit log itself stays a record of memory writes only: its chain
is verified against the notes on disk, and operator actions are not writes.

Mutes and pauses live in the orchestrator's memory: a restart clears them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import structlog

from familiar_connect.conversation.orchestrator import Orchestrator
from familiar_connect.logs import log_redactor

__all__ = [
    "OPERATOR_LOG_NAME",
    "ControlError",
    "Controls",
    "OperatorLog",
    "VoiceControl",
]

log = structlog.get_logger(__name__)

OPERATOR_LOG_NAME = "operator_actions.jsonl"
"""File name of the operator action log, in the familiar's directory."""

_USER_KEY = re.compile(r"^(discord|twitch|terminal):[A-Za-z0-9_.\-]{1,64}$")
_MAX_CONVERSATION_CHARS = 200


@runtime_checkable
class VoiceControl(Protocol):
    """What the voice adapter offers the dashboard. The "Leave voice" control shows only with one.

    Implementations must be safe to call on the event loop and must not raise
    for "not connected" (return an empty list / False instead).
    """

    def voice_channels(self) -> list[str]:
        """Conversation keys (``"discord:<channel>"``) of the voice channels joined now."""
        ...

    async def leave_voice(self, conversation: str | None = None) -> bool:
        """Leave one voice channel (or every one, for None); return whether any was left."""
        ...


class ControlError(Exception):
    """A control request that cannot be carried out.

    Attributes:
        status: HTTP status to answer with.
        message: a short explanation for the page.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class OperatorLog:
    """Append-only JSON-lines record of operator actions, plus the recent ones in memory.

    Args:
        path: the log file.
        max_bytes: size at which the file is rotated once to ``<path>.1``.
        recent: actions kept in memory for the page.
    """

    def __init__(self, path: Path, *, max_bytes: int = 1 << 20, recent: int = 50) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(1, recent))
        self._lock = asyncio.Lock()

    def recent(self) -> list[dict[str, Any]]:
        """Recent actions, newest first."""
        return list(reversed(self._recent))

    async def record(self, action: str, target: str | None, result: str) -> dict[str, Any]:
        """Log one action and append it to the file. Never raises for I/O problems.

        Cancellation: the append runs in a worker thread and completes on its own.
        """
        entry: dict[str, Any] = {
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "source": "operator",
            "action": action,
            "target": target,
            "result": result,
        }
        # A target typed by the operator may hold a secret; the file must not.
        entry = log_redactor().redact_value(entry)
        self._recent.append(entry)
        log.info("operator_action", source="operator", action=action, target=target, result=result)
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":")) + "\n"
        async with self._lock:
            try:
                await asyncio.to_thread(self._append, line.encode("ascii"))
            except OSError as exc:
                log.warning("operator_log_write_failed", error=exc.strerror, path=str(self.path))
        return entry

    def _append(self, data: bytes) -> None:
        try:
            if self.path.stat().st_size + len(data) > self._max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class Controls:
    """Carries out operator actions on the running familiar and records each one.

    Args:
        orchestrator: the familiar's orchestrator.
        operator_log: where actions are recorded.
        voice: the voice adapter's controls, when a voice service runs.
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        operator_log: OperatorLog,
        *,
        voice: VoiceControl | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self.operator_log = operator_log
        self.voice = voice

    def state(self) -> dict[str, Any]:
        """What the controls panel shows: paused, mutes, voice channels."""
        voice_channels: list[str] = []
        if self.voice is not None:
            try:
                voice_channels = list(self.voice.voice_channels())[:50]
            except Exception:
                log.warning("voice_channels_failed", exc_info=True)
        return {
            "paused": self._orchestrator.paused,
            "muted": sorted(self._orchestrator.muted)[:200],
            "voice_available": self.voice is not None,
            "voice_channels": voice_channels,
            "recent_actions": self.operator_log.recent()[:20],
        }

    async def run(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Perform ``action`` with the POSTed JSON ``body``; return what happened.

        Raises:
            ControlError: unknown action (404), bad input (400), no voice service (404).
        """
        handler = {
            "pause": self._pause,
            "resume": self._resume,
            "mute": self._mute,
            "unmute": self._unmute,
            "cancel": self._cancel,
            "leave_voice": self._leave_voice,
        }.get(action)
        if handler is None:
            raise ControlError(404, "unknown control")
        target, result = await handler(body)
        entry = await self.operator_log.record(action, target, result)
        return {"ok": True, **entry}

    async def _pause(self, _body: dict[str, Any]) -> tuple[str | None, str]:
        self._orchestrator.pause()
        return None, "paused"

    async def _resume(self, _body: dict[str, Any]) -> tuple[str | None, str]:
        self._orchestrator.resume()
        return None, "resumed"

    @staticmethod
    def _user(body: dict[str, Any]) -> str:
        user = body.get("user")
        if not isinstance(user, str) or not _USER_KEY.match(user.strip()):
            raise ControlError(
                400, "user must look like discord:123456 or twitch:12345 (platform:user id)"
            )
        return user.strip()

    async def _mute(self, body: dict[str, Any]) -> tuple[str | None, str]:
        user = self._user(body)
        self._orchestrator.mute(user)
        return user, "muted"

    async def _unmute(self, body: dict[str, Any]) -> tuple[str | None, str]:
        user = self._user(body)
        self._orchestrator.unmute(user)
        return user, "unmuted"

    async def _cancel(self, body: dict[str, Any]) -> tuple[str | None, str]:
        conversation = body.get("conversation")
        if (
            not isinstance(conversation, str)
            or not 0 < len(conversation) <= _MAX_CONVERSATION_CHARS
        ):
            raise ControlError(400, "conversation must name an active conversation")
        # Keys carry the guild too; the page knows only "<platform>:<channel>".
        for key in self._orchestrator.active_conversations():
            if key.as_str() == conversation:
                cancelled = self._orchestrator.cancel(key)
                return conversation, "cancelled" if cancelled else "nothing in flight"
        return conversation, "not active"

    async def _leave_voice(self, body: dict[str, Any]) -> tuple[str | None, str]:
        if self.voice is None:
            raise ControlError(404, "no voice service is running")
        conversation = body.get("conversation")
        if conversation is not None and (
            not isinstance(conversation, str) or len(conversation) > _MAX_CONVERSATION_CHARS
        ):
            raise ControlError(400, "conversation must be a voice channel key or null")
        left = await self.voice.leave_voice(conversation)
        return conversation, "left" if left else "not in voice"
