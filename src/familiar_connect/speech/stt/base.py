"""What every speech-to-text provider offers the voice pipeline.

One :class:`SpeechStream` per active speaker. Audio goes in as 48 kHz mono
signed 16-bit little-endian PCM (Discord's rate, downmixed), without blocking
the caller; transcript events come out as an async iterator. Providers
(Deepgram, Azure) translate their SDK's messages into :class:`TranscriptEvent`
and their exceptions into :mod:`familiar_connect.errors` at this boundary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "SAMPLE_RATE_HZ",
    "SpeechStream",
    "TranscriptEvent",
    "TranscriptKind",
    "Transcriber",
    "normalise_terms",
]

SAMPLE_RATE_HZ = 48_000


def normalise_terms(terms: Sequence[str], *, max_terms: int, max_chars: int) -> list[str]:
    """Vocabulary hints (names, aliases) for a provider: whitespace collapsed, capped, de-duplicated.

    De-duplication is case-insensitive and the first spelling wins.
    """
    seen: set[str] = set()
    out: list[str] = []
    for raw in terms:
        term = " ".join(raw.split())[:max_chars]
        if term and term.lower() not in seen:
            seen.add(term.lower())
            out.append(term)
        if len(out) >= max_terms:
            break
    return out


"""Audio handed to providers: 48 kHz mono s16le (providers resample if they need to)."""

TranscriptKind = Literal["speech_started", "interim", "final", "utterance_end"]


@dataclass(frozen=True, slots=True)
class TranscriptEvent:
    """One thing a provider said about a speaker's audio.

    Attributes:
        kind: ``speech_started`` (voice detected), ``interim`` (may change),
            ``final`` (this stretch of audio will not change), ``utterance_end``
            (the provider saw a gap after the last word).
        text: the transcript for ``interim``/``final``.
        confidence: 0..1 when the provider gives one.
        speech_final: on a ``final``, the provider believes the speaker paused (endpointing).
        audio_start_s: where the text starts in the stream's audio, seconds.
        audio_end_s: where it ends (the end of the last voiced audio for a final).
        received_ns: ``time.monotonic_ns()`` when the event arrived.
    """

    kind: TranscriptKind
    received_ns: int
    text: str = ""
    confidence: float | None = None
    speech_final: bool = False
    audio_start_s: float | None = None
    audio_end_s: float | None = None


@runtime_checkable
class SpeechStream(Protocol):
    """Streaming recognition of one speaker.

    Cancellation: cancelling a task iterating :meth:`events` stops the iteration only;
    call :meth:`aclose` to end the stream.
    """

    def feed(self, pcm: bytes) -> None:
        """Queue 48 kHz mono s16le audio; never blocks (bounded; overflow is counted)."""

    def events(self) -> AsyncIterator[TranscriptEvent]:
        """Transcript events in arrival order, until the stream is closed."""
        ...

    async def finalize(self) -> None:
        """Ask the provider to flush what it heard (the speaker went quiet)."""

    async def aclose(self) -> None:
        """End the stream and release the connection. Idempotent."""


@runtime_checkable
class Transcriber(Protocol):
    """A speech-to-text provider."""

    name: str

    async def open_stream(self, *, speaker_id: str, keyterms: Sequence[str] = ()) -> SpeechStream:
        """Open a stream for one speaker, biased towards ``keyterms`` (names).

        Raises:
            ProviderAuthError: the credentials were refused (never retried).
            ProviderConnectionError: the provider could not be reached.
        """
        ...

    async def aclose(self) -> None:
        """Close every stream and shared resource."""
