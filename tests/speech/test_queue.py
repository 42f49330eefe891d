"""The transcript queue every speech-to-text provider shares."""

from __future__ import annotations

import pytest

from familiar_connect.errors import ProviderAuthError
from familiar_connect.speech.stt.base import TranscriptEvent
from familiar_connect.speech.stt.queue import TranscriptQueue


def _event(kind: str, text: str = "") -> TranscriptEvent:
    return TranscriptEvent(kind=kind, received_ns=0, text=text)  # type: ignore[arg-type]


class TestTranscriptQueue:
    async def test_drops_interims_first_when_full(self) -> None:
        """A full queue gives up its oldest interim before any final, and counts the drop."""
        queue = TranscriptQueue(max_events=2)
        queue.push(_event("final", "a"))
        queue.push(_event("interim", "b"))
        queue.push(_event("final", "c"))
        queue.end()
        assert [e.text async for e in queue.drain()] == ["a", "c"]
        assert queue.dropped == 1

    async def test_failure_raised_after_queued_events(self) -> None:
        """Events before a failure are delivered, then the failure is raised; later pushes are ignored."""
        queue = TranscriptQueue(max_events=8)
        queue.push(_event("final", "kept"))
        assert queue.end(ProviderAuthError("refused", provider="deepgram")) is True
        assert queue.end() is False
        queue.push(_event("final", "ignored"))
        seen = []
        with pytest.raises(ProviderAuthError):
            async for event in queue.drain():
                seen.append(event.text)
        assert seen == ["kept"]
