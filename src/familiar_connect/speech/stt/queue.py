"""The bounded queue between a speech-to-text provider's receive side and its consumer.

Every provider delivers :class:`~familiar_connect.speech.stt.base.TranscriptEvent`
the same way: appended as they arrive, read by one ``async for``, ended once
(with a failure that is raised after the events before it were delivered).
When the consumer falls behind, interim results go first (a later interim or
final supersedes them), and every drop is counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from familiar_connect.errors import ProviderError
from familiar_connect.speech.stt.base import TranscriptEvent

__all__ = ["TranscriptQueue"]


class TranscriptQueue:
    """Transcript events of one stream, at most ``max_events`` waiting. Loop thread only."""

    def __init__(self, *, max_events: int) -> None:
        self._events: deque[TranscriptEvent] = deque()
        self._ready = asyncio.Event()
        self._max = max_events
        self.ended = False
        self.failure: ProviderError | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._events)

    def push(self, event: TranscriptEvent) -> None:
        """Queue an event (ignored once ended); when full, drop the oldest interim, else the oldest."""
        if self.ended:
            return
        if len(self._events) >= self._max:
            victim = next((e for e in self._events if e.kind == "interim"), None)
            if victim is not None:
                self._events.remove(victim)
            else:
                self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def end(self, failure: ProviderError | None = None) -> bool:
        """End the stream; ``failure`` is raised after the queued events. False if already ended."""
        if self.ended:
            return False
        self.ended = True
        self.failure = failure
        self._ready.set()
        return True

    async def drain(self) -> AsyncIterator[TranscriptEvent]:
        """Events in arrival order until the stream ends; then raise its failure, if any.

        Cancellation: cancelling the iterating task only stops the iteration.
        """
        while True:
            while self._events:
                yield self._events.popleft()
            if self.ended:
                if self.failure is not None:
                    raise self.failure
                return
            self._ready.clear()
            await self._ready.wait()
