"""What every text-to-speech provider offers the voice pipeline.

One long-lived :class:`Synthesizer` per process (a warm connection), one
:class:`SynthesisContext` per reply: clauses go in as they are generated
(continuations of one utterance, so prosody flows across them) and audio comes
out as 48 kHz mono s16le PCM chunks as soon as the provider produces them,
interleaved with word timings so a barge-in can record only what was played.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "SAMPLE_RATE_HZ",
    "AudioChunk",
    "ReplyBuffer",
    "SynthesisContext",
    "Synthesizer",
    "WordTiming",
]

SAMPLE_RATE_HZ = 48_000


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Synthesised audio: 48 kHz mono s16le, any length (the player frames it)."""

    pcm: bytes
    received_ns: int


@dataclass(frozen=True, slots=True)
class WordTiming:
    """A word and where it is in the reply's audio, seconds from the reply's first sample."""

    word: str
    start_s: float
    end_s: float


class ReplyBuffer:
    """A context's received audio and word timings, in order, until the consumer takes them.

    Bounded by the bytes of audio not yet taken: a consumer that stops reading must not
    let a provider fill the memory, so the reply is dropped instead (the caller decides
    how to fail it).
    """

    __slots__ = ("_items", "buffered_bytes", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self._items: deque[AudioChunk | WordTiming] = deque()
        self.buffered_bytes = 0
        self.max_bytes = max_bytes

    def add_audio(self, chunk: AudioChunk) -> bool:
        """Queue audio; False (and everything dropped) when the consumer is ``max_bytes`` behind."""
        self.buffered_bytes += len(chunk.pcm)
        self._items.append(chunk)
        if self.buffered_bytes > self.max_bytes:
            self.clear()
            return False
        return True

    def add_timing(self, timing: WordTiming) -> None:
        self._items.append(timing)

    def clear(self) -> None:
        self._items.clear()
        self.buffered_bytes = 0

    def take(self) -> Iterator[AudioChunk | WordTiming]:
        """Everything queued so far, oldest first, each removed as it is handed out."""
        while self._items:
            item = self._items.popleft()
            if isinstance(item, AudioChunk):
                self.buffered_bytes -= len(item.pcm)
            yield item


@runtime_checkable
class SynthesisContext(Protocol):
    """One reply being spoken.

    Cancellation: :meth:`cancel` stops generation at the provider; a task iterating
    :meth:`stream` may be cancelled at any time.
    """

    async def say(self, text: str) -> None:
        """Add the next clause (a continuation of the same utterance)."""

    async def finish(self) -> None:
        """No more text: let the provider finish and end :meth:`stream`."""

    def stream(self) -> AsyncIterator[AudioChunk | WordTiming]:
        """Audio and word timings as they arrive, until the reply is done."""
        ...

    async def cancel(self) -> None:
        """Stop now (barge-in). Idempotent."""


@runtime_checkable
class Synthesizer(Protocol):
    """A text-to-speech provider."""

    name: str

    async def new_context(self) -> SynthesisContext:
        """Start a reply (reusing the warm connection).

        Raises:
            ProviderAuthError: the credentials were refused.
            ProviderConnectionError: the provider could not be reached.
        """
        ...

    async def aclose(self) -> None:
        """Close the connection."""
