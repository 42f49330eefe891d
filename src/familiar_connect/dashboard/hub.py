"""The live hub: what is happening now, fed by the orchestrator, fanned out over SSE.

The orchestrator calls :meth:`LiveHub.observe` (its ``observer``) on the
event-loop thread for every event it accepts and every turn it starts and
finishes — thousands of times a second under Twitch chat load. So observing
does O(1) work and never blocks or raises: it updates a small bounded state
(conversations, recent turns, counters) and marks the hub dirty.

A single broadcaster task (:meth:`LiveHub.run`) turns that state into
server-sent events at most every ``flush_interval_s``: one ``turn`` event per
finished turn and one ``live`` snapshot. Each message is redacted and encoded
once and handed to every client. Clients are bounded twice:

- at most ``max_clients`` streams at once; more are refused (counted);
- each client has a queue of ``client_queue_size`` messages; a client that
  reads too slowly loses its *oldest* messages (counted), never blocks the
  broadcaster, and catches up with the next ``live`` snapshot.

:meth:`LiveHub.close` ends every stream, so the web server can shut down
without waiting for browsers to hang up.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from familiar_connect.dashboard._safe import dumps

__all__ = ["ADAPTER_COUNTERS", "ConversationView", "LiveHub", "SseClient", "sse_message"]

log = structlog.get_logger(__name__)

ADAPTER_COUNTERS: tuple[str, ...] = (
    "twitch_chat_dropped",
    "twitch_chat_sampled",
    "stt_reconnects",
    "dave_decrypt_failures",
)
"""Counters adapters report through :meth:`LiveHub.incr`; shown (as 0) even before any arrive."""

ACTIVITIES = frozenset({"idle", "listening", "thinking", "speaking"})
_MAX_COUNTERS = 64
_MAX_NAME_CHARS = 80
_MAX_TEXT_CHARS = 500


def sse_message(event: str, payload: Any) -> bytes:
    """One server-sent event, redacted: ``event: <name>`` and a one-line JSON ``data:``."""
    return f"event: {event}\ndata: {dumps(payload)}\n\n".encode()


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _short(value: Any, limit: int = _MAX_NAME_CHARS) -> str:
    text = value if isinstance(value, str) else str(value)
    return text[:limit]


@dataclass(slots=True)
class ConversationView:
    """What the dashboard knows about one conversation.

    Attributes:
        conversation: ``"<platform>:<channel>"``.
        modality: how the last input arrived (``text``, ``voice``, ``twitch``, ``terminal``).
        speaker: who spoke last.
        activity: what the familiar is doing there: ``idle``, ``listening``
            (voice, waiting for speech), ``thinking`` (a turn is running) or
            ``speaking`` (reported by the voice adapter).
        turns: turns finished since start.
        last_outcome: ``replied``, ``silent``, ``cancelled`` or ``failed``.
        updated_at: wall-clock time of the last change (display only).
    """

    conversation: str
    modality: str = ""
    speaker: str = ""
    activity: str = "idle"
    turns: int = 0
    last_outcome: str = ""
    updated_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "conversation": self.conversation,
            "platform": self.conversation.partition(":")[0],
            "modality": self.modality,
            "speaker": self.speaker,
            "activity": self.activity,
            "turns": self.turns,
            "last_outcome": self.last_outcome,
            "updated_at": self.updated_at,
        }


class SseClient:
    """One connected event stream: a bounded drop-oldest queue of encoded messages."""

    __slots__ = ("_closed", "_queue", "_wake", "dropped")

    def __init__(self, queue_size: int) -> None:
        self._queue: deque[bytes] = deque(maxlen=max(1, queue_size))
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, message: bytes) -> bool:
        """Queue a message; returns False if the oldest queued one had to be dropped."""
        full = len(self._queue) == self._queue.maxlen
        self._queue.append(message)
        self._wake.set()
        if full:
            self.dropped += 1
        return not full

    def close(self) -> None:
        """End the stream: the reader returns None after what is queued."""
        self._closed = True
        self._wake.set()

    async def next_batch(self, *, timeout_s: float) -> list[bytes] | None:
        """Wait for messages; ``[]`` on timeout (send a heartbeat), None once closed.

        Cancellation: safe; nothing is lost that was not already taken.
        """
        if not self._queue and not self._closed:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._wake.wait()
            except TimeoutError:
                return []
        self._wake.clear()
        if self._closed and not self._queue:
            return None
        batch = list(self._queue)
        self._queue.clear()
        return batch


class LiveHub:
    """Bounded live state plus SSE fan-out.

    Args:
        snapshot: builds the ``live`` snapshot (cheap, synchronous); called by
            the broadcaster after changes, never by :meth:`observe`.
        max_clients: most SSE streams at once.
        client_queue_size: messages buffered per stream before the oldest is dropped.
        max_conversations: conversations remembered (least recently active forgotten).
        max_recent_turns: finished turns kept for the live view.
        flush_interval_s: the broadcaster sends at most one batch per interval.
    """

    def __init__(
        self,
        *,
        snapshot: Callable[[], dict[str, Any]] | None = None,
        max_clients: int = 32,
        client_queue_size: int = 64,
        max_conversations: int = 200,
        max_recent_turns: int = 50,
        flush_interval_s: float = 0.25,
    ) -> None:
        self.snapshot = snapshot
        self.max_clients = max(1, max_clients)
        self._client_queue_size = client_queue_size
        self._max_conversations = max(1, max_conversations)
        self._flush_interval_s = flush_interval_s
        self._conversations: OrderedDict[str, ConversationView] = OrderedDict()
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(1, max_recent_turns))
        self._pending: deque[dict[str, Any]] = deque(maxlen=max(1, max_recent_turns))
        self._counters: dict[str, int] = dict.fromkeys(ADAPTER_COUNTERS, 0)
        self._clients: set[SseClient] = set()
        self._dirty = asyncio.Event()
        self._closed = False
        self.refused_clients = 0
        self.dropped_messages = 0
        self.published = 0
        self.observed = 0

    # --- inputs (event-loop thread, O(1), never raise) ----------------------------------

    def observe(self, kind: str, data: dict[str, Any]) -> None:
        """The orchestrator's observer: record one event. O(1); never raises."""
        try:
            self._observe(kind, data)
        except Exception:
            log.exception("dashboard_observe_failed", kind=kind)

    def _observe(self, kind: str, data: dict[str, Any]) -> None:
        self.observed += 1
        conversation = data.get("conversation")
        if kind == "event_received" and isinstance(conversation, str):
            view = self._view(conversation)
            view.speaker = _short(data.get("author", ""))
            view.modality = _short(data.get("modality", ""), 16)
            if view.activity == "idle" and view.modality == "voice":
                view.activity = "listening"
        elif kind == "turn_started" and isinstance(conversation, str):
            view = self._view(conversation)
            view.activity = "thinking"
            view.modality = _short(data.get("modality", view.modality), 16)
        elif kind == "turn_finished" and isinstance(conversation, str):
            view = self._view(conversation)
            view.turns += 1
            view.last_outcome = _short(data.get("outcome", ""), 16)
            view.activity = "listening" if view.modality == "voice" else "idle"
            turn = self._turn_record(data)
            self._recent.append(turn)
            self._pending.append(turn)
        self._dirty.set()

    def _turn_record(self, data: dict[str, Any]) -> dict[str, Any]:
        timings = data.get("timings_ms") or {}
        total = max((v for v in timings.values() if isinstance(v, int | float)), default=None)
        error = data.get("error")
        return {
            "turn_id": _short(data.get("turn_id", ""), 40),
            "conversation": _short(data.get("conversation", "")),
            "modality": _short(data.get("modality", ""), 16),
            "outcome": _short(data.get("outcome", ""), 16),
            "text": _short(data.get("text") or "", _MAX_TEXT_CHARS),
            "model": _short(data.get("model") or "", 200),
            "total_ms": round(total, 1) if total is not None else None,
            "error": _short(error, 300) if error else None,
            "at": _now_iso(),
        }

    def _view(self, conversation: str) -> ConversationView:
        name = _short(conversation)
        view = self._conversations.get(name)
        if view is None:
            view = ConversationView(name)
            self._conversations[name] = view
            while len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(name)
        view.updated_at = _now_iso()
        return view

    def set_activity(self, conversation: str, activity: str, *, speaker: str | None = None) -> None:
        """Adapters report what the familiar is doing (e.g. voice: ``"speaking"``).

        Raises:
            ValueError: ``activity`` is not one of idle, listening, thinking, speaking.
        """
        if activity not in ACTIVITIES:
            raise ValueError(f"unknown activity {activity[:20]!r}")
        view = self._view(conversation)
        view.activity = activity
        if speaker is not None:
            view.speaker = _short(speaker)
        self._dirty.set()

    def incr(self, counter: str, by: int = 1) -> None:
        """Add to an adapter counter (see :data:`ADAPTER_COUNTERS`); at most 64 names."""
        name = _short(counter, 64)
        if name not in self._counters and len(self._counters) >= _MAX_COUNTERS:
            return
        self._counters[name] = self._counters.get(name, 0) + by
        self._dirty.set()

    def mark_dirty(self) -> None:
        """Ask the broadcaster to send a fresh snapshot (after a control action, say)."""
        self._dirty.set()

    # --- reads ---------------------------------------------------------------------------

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def conversations(self) -> list[dict[str, Any]]:
        """Known conversations, most recently active first."""
        return [view.as_dict() for view in reversed(self._conversations.values())]

    def recent_turns(self) -> list[dict[str, Any]]:
        """Finished turns, newest first."""
        return list(reversed(self._recent))

    @property
    def client_count(self) -> int:
        return len(self._clients)

    # --- streams -------------------------------------------------------------------------

    def subscribe(self) -> SseClient | None:
        """A new stream, or None when ``max_clients`` are connected or the hub is closed."""
        if self._closed or len(self._clients) >= self.max_clients:
            self.refused_clients += 1
            return None
        client = SseClient(self._client_queue_size)
        self._clients.add(client)
        return client

    def unsubscribe(self, client: SseClient) -> None:
        """Forget a stream (its handler ended)."""
        self._clients.discard(client)

    def publish(self, event: str, payload: Any) -> None:
        """Encode (redacted) once and queue for every stream."""
        if not self._clients:
            return
        message = sse_message(event, payload)
        self.published += 1
        for client in self._clients:
            if not client.push(message):
                self.dropped_messages += 1

    def flush(self) -> None:
        """Send pending turns and a snapshot now (the broadcaster calls this)."""
        while self._pending:
            self.publish("turn", self._pending.popleft())
        if self.snapshot is not None and self._clients:
            self.publish("live", self.snapshot())

    async def run(self) -> None:
        """The broadcaster: flush after changes, at most once per interval, until cancelled.

        Cancellation: the normal way to stop it; every stream is closed on the way out.
        """
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                try:
                    self.flush()
                except Exception:
                    log.exception("dashboard_flush_failed")
                await asyncio.sleep(self._flush_interval_s)
        finally:
            self.close_streams()

    def close_streams(self) -> None:
        """End every open stream (shutdown); new ones may connect again later."""
        for client in list(self._clients):
            client.close()

    def close(self) -> None:
        """End every stream and refuse new ones."""
        self._closed = True
        self.close_streams()

    def reopen(self) -> None:
        """Accept streams again (the service restarted)."""
        self._closed = False

    @property
    def stats(self) -> dict[str, int]:
        """Numbers about the streams themselves, for the page and ``/metrics``."""
        return {
            "sse_clients": len(self._clients),
            "sse_max_clients": self.max_clients,
            "sse_refused_clients": self.refused_clients,
            "sse_dropped_messages": self.dropped_messages,
            "sse_published": self.published,
            "observed_events": self.observed,
        }
