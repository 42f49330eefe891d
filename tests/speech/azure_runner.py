"""Child-process driver for the Azure adapter tests: the real SDK, away from pytest's process.

The Azure SDK can abort the interpreter at exit (library-facts §5), so tests run the SDK here,
in a child (``python -m tests.speech.azure_runner SCENARIO WS_URL KEY [OPTIONS_JSON]``), while
the loopback fake runs in the test's own event loop. The child prints one JSON object as the
last line of stdout (logs go to stderr) and must exit 0: a clean exit is part of what the tests
check, because it shows the adapter disposed every SDK object.

Scenarios take their knobs from ``OPTIONS_JSON``; every wait is bounded by ``GUARD_S``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import structlog

from familiar_connect.errors import ProviderError
from familiar_connect.speech.stt.azure import AzureSpeechStream, AzureTranscriber
from familiar_connect.speech.stt.base import TranscriptEvent
from familiar_connect.speech.tts.azure import AzureContext, AzureSynthesizer
from familiar_connect.speech.tts.base import AudioChunk, WordTiming

GUARD_S = 10.0
_FRAME_BYTES = 1920  # 20 ms of 48 kHz mono s16le

Scenario = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


def tone(seconds: float, *, rate_hz: int = 48_000, freq_hz: float = 220.0) -> bytes:
    """A sine tone as mono s16le (stands in for speech)."""
    n = int(round(seconds * rate_hz))
    wave = np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz) * 0.3
    return (wave * 32767).astype("<i2").tobytes()


def _event(event: TranscriptEvent) -> dict[str, Any]:
    return {
        "kind": event.kind,
        "text": event.text,
        "confidence": event.confidence,
        "speech_final": event.speech_final,
        "start": event.audio_start_s,
        "end": event.audio_end_s,
    }


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "status": getattr(exc, "status", None),
        "provider": getattr(exc, "provider", None),
        "message": str(exc),
    }


class _Collector:
    """Reads a stream's events in a task; lets the scenario wait for one kind."""

    def __init__(self, stream: AzureSpeechStream) -> None:
        self.events: list[TranscriptEvent] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Condition()
        self.task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: AzureSpeechStream) -> None:
        try:
            async for event in stream.events():
                self.events.append(event)
                async with self._changed:
                    self._changed.notify_all()
        except ProviderError as exc:
            self.error = exc
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, kind: str) -> None:
        async with asyncio.timeout(GUARD_S), self._changed:
            await self._changed.wait_for(
                lambda: (
                    self.error is not None
                    or self.task.done()
                    or any(e.kind == kind for e in self.events)
                )
            )


def _feed(stream: AzureSpeechStream, pcm: bytes) -> None:
    for offset in range(0, len(pcm), _FRAME_BYTES):
        stream.feed(pcm[offset : offset + _FRAME_BYTES])


def _transcriber(url: str, key: str, options: dict[str, Any]) -> AzureTranscriber:
    return AzureTranscriber(
        key,
        host=url,
        language=options.get("language", "en"),
        segmentation_silence_ms=options.get("segmentation_silence_ms", 300),
        finalize_margin_ms=options.get("finalize_margin_ms", 200),
        connect_timeout_s=GUARD_S,
        close_timeout_s=options.get("close_timeout_s", 3.0),
    )


# -- speech-to-text -----------------------------------------------------------------------------


async def stt_transcribe(url: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """Speak ``seconds`` of tone, finalize, and report every event until the stream closed."""
    transcriber = _transcriber(url, key, options)
    out: dict[str, Any] = {}
    try:
        stream = await transcriber.open_stream(
            speaker_id="42", keyterms=options.get("keyterms", ())
        )
        collector = _Collector(stream)
        _feed(stream, tone(options.get("seconds", 1.0)))
        if options.get("wait_interim", True):
            await collector.wait_for("interim")
        await stream.finalize()
        await collector.wait_for("final")
        await stream.aclose()
        await asyncio.wait_for(collector.task, GUARD_S)
        out.update(
            events=[_event(e) for e in collector.events],
            error=_error(collector.error) if collector.error else None,
            fed_bytes=stream.fed_bytes,
            written_bytes=stream.written_bytes,
            finalizes=stream.finalizes,
            inserted_s=stream.timeline.inserted_s,
            disconnects=stream.disconnects,
            reconnects=stream.reconnects,
            overflow_bytes=stream.overflow_bytes,
            open_streams=len(transcriber._streams),
        )
    finally:
        await transcriber.aclose()
    return out


async def stt_open_fails(url: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """Open a stream that the service refuses; report the error."""
    transcriber = _transcriber(url, key, options)
    try:
        await transcriber.open_stream(speaker_id="42")
    except ProviderError as exc:
        return {"error": _error(exc), "open_streams": len(transcriber._streams)}
    finally:
        await transcriber.aclose()
    return {"error": None}


async def stt_fails_later(url: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """Open a stream, keep feeding until it fails (the fake refuses its reconnect)."""
    transcriber = _transcriber(url, key, options)
    try:
        stream = await transcriber.open_stream(speaker_id="42")
        collector = _Collector(stream)
        pcm = tone(options.get("seconds", 1.0))
        _feed(stream, pcm)
        async with asyncio.timeout(GUARD_S):
            while not collector.task.done():
                await asyncio.sleep(0.02)
                _feed(stream, pcm[:_FRAME_BYTES])
        ignored_before = stream.fed_bytes
        stream.feed(pcm[:_FRAME_BYTES])  # after the failure: ignored
        await stream.aclose()
        return {
            "error": _error(collector.error) if collector.error else None,
            "events": [_event(e) for e in collector.events],
            "disconnects": stream.disconnects,
            "fed_after_failure_ignored": stream.fed_bytes == ignored_before,
        }
    finally:
        await transcriber.aclose()


# -- text-to-speech -----------------------------------------------------------------------------


def _synthesizer(url: str, key: str, options: dict[str, Any]) -> AzureSynthesizer:
    return AzureSynthesizer(
        key,
        host=url,
        voice=options.get("voice", "en-GB-SoniaNeural"),
        language=options.get("language", "en-GB"),
        connect_timeout_s=GUARD_S,
        stall_timeout_s=options.get("stall_timeout_s", GUARD_S),
        close_timeout_s=options.get("close_timeout_s", 3.0),
    )


async def _collect(
    context: AzureContext, *, cancel_after_bytes: int | None = None
) -> dict[str, Any]:
    pcm = bytearray()
    words: list[list[Any]] = []
    error: dict[str, Any] | None = None
    try:
        async for item in context.stream():
            if isinstance(item, AudioChunk):
                pcm += item.pcm
                if cancel_after_bytes is not None and len(pcm) >= cancel_after_bytes:
                    await context.cancel()
            elif isinstance(item, WordTiming):
                words.append([item.word, item.start_s, item.end_s])
    except ProviderError as exc:
        error = _error(exc)
    samples = np.frombuffer(bytes(pcm[: len(pcm) - len(pcm) % 2]), dtype="<i2")
    return {
        "bytes": len(pcm),
        "peak": int(np.abs(samples.astype(np.int32)).max()) if samples.size else 0,
        "words": words,
        "requests": context.requests,
        "cancelled": context.cancelled,
        "error": error,
    }


async def _reply(
    synthesizer: AzureSynthesizer, clauses: list[str], **kwargs: Any
) -> dict[str, Any]:
    context = await synthesizer.new_context()
    reader = asyncio.create_task(_collect(context, **kwargs))
    for clause in clauses:
        await context.say(clause)
        await asyncio.sleep(0)
    await context.finish()
    return await asyncio.wait_for(reader, GUARD_S)


async def tts_speak(url: str, key: str, options: dict[str, Any]) -> dict[str, Any]:
    """Warm up, speak one reply per entry of ``replies`` (a list of clause lists), report each."""
    synthesizer = _synthesizer(url, key, options)
    try:
        if options.get("warm", True):
            await synthesizer.warm()
        replies = []
        for clauses in options.get("replies", [["Hello there."]]):
            replies.append(
                await _reply(
                    synthesizer, clauses, cancel_after_bytes=options.get("cancel_after_bytes")
                )
            )
            options.pop("cancel_after_bytes", None)  # only the first reply is cancelled
        return {
            "replies": replies,
            "connected": synthesizer.connected,
            "connects": synthesizer.connects,
            "requests": synthesizer.requests,
            "cancels": synthesizer.cancels,
        }
    finally:
        await synthesizer.aclose()


SCENARIOS: dict[str, Scenario] = {
    "stt_transcribe": stt_transcribe,
    "stt_open_fails": stt_open_fails,
    "stt_fails_later": stt_fails_later,
    "tts_speak": tts_speak,
}


def main(argv: list[str]) -> int:
    """Run one scenario and print its JSON result as the last line of stdout."""
    scenario, url, key = argv[0], argv[1], argv[2]
    options = json.loads(argv[3]) if len(argv) > 3 else {}
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    result = asyncio.run(SCENARIOS[scenario](url, key, options))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
