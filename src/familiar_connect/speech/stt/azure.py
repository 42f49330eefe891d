"""Azure Speech streaming speech-to-text behind the :class:`Transcriber` protocol.

One continuous recognition per speaker, driven through ``azure-cognitiveservices-speech``
(a native library behind ctypes): a ``PushAudioInputStream`` of 16 kHz mono s16le (the 48 kHz
audio handed to :meth:`AzureSpeechStream.feed` is resampled with soxr), a ``SpeechRecognizer``
for the familiar's locale, and a phrase list seeded with the keyterms (the familiar's names,
the voice members' names). The SDK owns the websocket and reconnects it by itself.

Threading contract (library-facts §5):

* the SDK's event callbacks (``recognizing``, ``recognized``, ``canceled``, …) fire on its own
  native threads. Each callback copies plain values out of the SDK objects there
  (:func:`snapshot`) and hops to the event loop with ``loop.call_soon_threadsafe``; nothing
  else happens on the SDK's threads, and no SDK object crosses to the loop;
* every call that can block (building the recogniser, ``start_…_async().get()``,
  ``stop_…_async().get()``, releasing native handles) runs in a short-lived daemon thread
  (:func:`call_blocking`), never on the loop. Daemon threads, not a thread pool, because an
  SDK call stuck in native code must not hold the interpreter open at exit;
* ``feed`` writes to the push stream from the loop: a copy into the SDK's memory buffer.

Disposal contract: the SDK aborts the whole process at interpreter exit ("FATAL: exception not
rethrown") when recognisers are left to finalisation. :meth:`AzureSpeechStream.aclose` stops
recognition, disconnects every callback and drops every SDK reference inside the disposal
thread (so native destructors never run on the loop), and :meth:`AzureTranscriber.aclose` then
runs ``gc.collect()``. Call ``aclose`` before the loop ends.

Discord sends no packets while someone is silent, so Azure's endpointing (its segmentation
silence timeout, ``segmentation_silence_ms``) never hears the pause it waits for:
:meth:`AzureSpeechStream.finalize` writes that much digital silence (plus a margin) so the
service closes the phrase. The inserted silence is removed again from the reported times
(:class:`SilenceTimeline`), so transcript times are seconds of the speaker's own audio.

Errors are translated at this boundary (:func:`cancellation_error`): a refused key is
:class:`~familiar_connect.errors.ProviderAuthError` (never retried), an exhausted free tier
:class:`~familiar_connect.errors.ProviderQuotaError`, a lost connection the SDK could not
re-establish :class:`~familiar_connect.errors.ProviderConnectionError`, and so on. The helpers
shared with :mod:`familiar_connect.speech.tts.azure` (configuration, error mapping, blocking
calls) live here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import azure.cognitiveservices.speech as speechsdk
import structlog

from familiar_connect.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
)
from familiar_connect.speech.audio import StreamResampler
from familiar_connect.speech.azure_sdk import (
    PROVIDER,
    azure_locale,
    call_blocking,
    cancellation_error,
    check_endpoint,
    make_speech_config,
    validate_host,
)
from familiar_connect.speech.stt.base import SAMPLE_RATE_HZ, TranscriptEvent, normalise_terms
from familiar_connect.speech.stt.queue import TranscriptQueue

__all__ = [
    "AZURE_SAMPLE_RATE_HZ",
    "PROVIDER",
    "AzureSpeechStream",
    "AzureTranscriber",
    "SilenceTimeline",
    "Snapshot",
    "azure_locale",
    "call_blocking",
    "cancellation_error",
    "check_endpoint",
    "make_speech_config",
    "normalise_phrases",
    "snapshot",
    "to_transcript_event",
    "validate_host",
]

log = structlog.get_logger(__name__)

AZURE_SAMPLE_RATE_HZ = 16_000
"""What the push stream carries: 16 kHz mono s16le."""

_AZURE_BYTES_PER_S = AZURE_SAMPLE_RATE_HZ * 2
_TICKS_PER_S = 10_000_000
_MAX_PHRASES = 100
_MAX_PHRASE_CHARS = 100
_MAX_DETAILS_CHARS = 300
_NUDGE_BYTES = _AZURE_BYTES_PER_S // 10  # 100 ms: the SDK reads the push stream in 100 ms blocks


# -- sans-I/O mapping ---------------------------------------------------------------------------

SignalKind = Literal[
    "connected",
    "disconnected",
    "speech_start",
    "speech_end",
    "recognizing",
    "recognized",
    "canceled",
    "session_stopped",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Plain values copied from one SDK event on the SDK's thread.

    Attributes:
        kind: which signal fired.
        reason: ``ResultReason`` name of the event's result (``"RecognizedSpeech"``, …).
        text: the result's text.
        offset_ticks: the result's (or the event's) offset, in 100 ns ticks of provider audio.
        duration_ticks: the result's duration in ticks.
        json: the service's JSON for the result, when any.
        cancel_reason: ``CancellationReason`` name on a ``canceled`` event.
        error_code: ``CancellationErrorCode`` name on a ``canceled`` event.
        error_details: the SDK's details text on a ``canceled`` event.
    """

    kind: SignalKind
    reason: str = ""
    text: str = ""
    offset_ticks: int = 0
    duration_ticks: int = 0
    json: str = ""
    cancel_reason: str = ""
    error_code: str = ""
    error_details: str = ""


def _name(value: Any) -> str:
    return str(getattr(value, "name", value or ""))


def snapshot(kind: SignalKind, event: Any) -> Snapshot:
    """Copy what we need out of an SDK event (runs on the SDK's callback thread).

    Works on anything shaped like the SDK's event args: ``event.result`` with ``reason``,
    ``text``, ``offset``, ``duration`` and ``json``; ``event.offset`` for speech start/end;
    ``event.cancellation_details`` with ``reason``, ``code`` and ``error_details``.
    """
    if kind in ("recognizing", "recognized", "canceled"):
        result = event.result
        snap = Snapshot(
            kind=kind,
            reason=_name(result.reason),
            text=result.text or "",
            offset_ticks=int(result.offset or 0),
            duration_ticks=int(result.duration or 0),
            json=result.json or "",
        )
        if kind == "canceled":
            details = event.cancellation_details
            return Snapshot(
                kind=kind,
                reason=snap.reason,
                cancel_reason=_name(details.reason),
                error_code=_name(details.code),
                error_details=details.error_details or "",
            )
        return snap
    if kind in ("speech_start", "speech_end"):
        return Snapshot(kind=kind, offset_ticks=int(getattr(event, "offset", 0) or 0))
    return Snapshot(kind=kind)


def _confidence(raw: str) -> float | None:
    """``NBest[0].Confidence`` of a detailed result, when present."""
    if not raw:
        return None
    try:
        best = json.loads(raw)["NBest"][0]["Confidence"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return float(best) if isinstance(best, int | float) else None


class SilenceTimeline:
    """Maps times of the audio Azure heard to times of the speaker's audio (sans-I/O).

    :meth:`AzureSpeechStream.finalize` inserts digital silence Azure hears but the speaker
    never produced; :meth:`insert` records each stretch and :meth:`to_stream_s` removes them,
    so reported times line up with the audio that was fed. One entry per finalize.
    """

    __slots__ = ("_inserts", "inserted_s")

    def __init__(self) -> None:
        self._inserts: list[tuple[float, float]] = []
        self.inserted_s = 0.0

    def insert(self, at_s: float, seconds: float) -> None:
        """Silence of ``seconds`` was inserted at provider time ``at_s``."""
        if seconds > 0:
            self._inserts.append((at_s, seconds))
            self.inserted_s += seconds

    def to_stream_s(self, provider_s: float) -> float:
        """The speaker-audio time of provider time ``provider_s``."""
        removed = 0.0
        for at_s, seconds in self._inserts:
            if provider_s <= at_s:
                break
            removed += min(seconds, provider_s - at_s)
        return round(max(0.0, provider_s - removed), 3)


def to_transcript_event(
    snap: Snapshot, *, received_ns: int, timeline: SilenceTimeline | None = None
) -> TranscriptEvent | None:
    """The :class:`TranscriptEvent` for a recognition snapshot, or ``None`` when it carries none.

    ``recognizing`` → ``interim`` (skipped when empty); ``recognized`` → ``final`` with
    ``speech_final`` (Azure closes a phrase on its segmentation silence, i.e. a pause; a
    ``NoMatch`` becomes an empty final so a pending turn can end); ``speech_start`` →
    ``speech_started``; ``speech_end`` → ``utterance_end``.
    """
    line = timeline or SilenceTimeline()
    start_s = line.to_stream_s(snap.offset_ticks / _TICKS_PER_S)
    end_s = line.to_stream_s((snap.offset_ticks + snap.duration_ticks) / _TICKS_PER_S)
    if snap.kind == "recognizing":
        if not snap.text:
            return None
        return TranscriptEvent(
            kind="interim",
            received_ns=received_ns,
            text=snap.text,
            audio_start_s=start_s,
            audio_end_s=end_s,
        )
    if snap.kind == "recognized":
        matched = snap.reason == "RecognizedSpeech"
        return TranscriptEvent(
            kind="final",
            received_ns=received_ns,
            text=snap.text if matched else "",
            confidence=_confidence(snap.json) if matched else None,
            speech_final=True,
            audio_start_s=start_s,
            audio_end_s=end_s,
        )
    if snap.kind == "speech_start":
        return TranscriptEvent(
            kind="speech_started", received_ns=received_ns, audio_start_s=start_s
        )
    if snap.kind == "speech_end":
        return TranscriptEvent(kind="utterance_end", received_ns=received_ns, audio_end_s=start_s)
    return None


def normalise_phrases(terms: Sequence[str]) -> list[str]:
    """Strip, de-duplicate (case-insensitively, first spelling wins) and cap phrase-list terms."""
    return normalise_terms(terms, max_terms=_MAX_PHRASES, max_chars=_MAX_PHRASE_CHARS)


# -- the SDK objects of one recognition ---------------------------------------------------------

_SIGNALS: tuple[tuple[str, SignalKind], ...] = (
    ("recognizing", "recognizing"),
    ("recognized", "recognized"),
    ("canceled", "canceled"),
    ("speech_start_detected", "speech_start"),
    ("speech_end_detected", "speech_end"),
    ("session_stopped", "session_stopped"),
)


class _Recognition:
    """The native objects of one continuous recognition; built and disposed off the loop."""

    def __init__(
        self,
        owner: AzureTranscriber,
        keyterms: list[str],
        deliver: Callable[[SignalKind], Callable[[Any], None]],
    ) -> None:
        self.config: Any = make_speech_config(owner.key, region=owner.region, host=owner.host)
        self.config.output_format = speechsdk.OutputFormat.Detailed
        self.config.set_property(
            speechsdk.PropertyId.Speech_SegmentationSilenceTimeoutMs,
            str(owner.segmentation_silence_ms),
        )
        audio_format = speechsdk.audio.AudioStreamFormat(
            samples_per_second=AZURE_SAMPLE_RATE_HZ, bits_per_sample=16, channels=1
        )
        self.push: Any = speechsdk.audio.PushAudioInputStream(audio_format)
        self.audio_config: Any = speechsdk.audio.AudioConfig(stream=self.push)
        self.recognizer: Any = speechsdk.SpeechRecognizer(
            speech_config=self.config, audio_config=self.audio_config, language=owner.locale
        )
        self.phrases: Any = None
        if keyterms:
            self.phrases = speechsdk.PhraseListGrammar.from_recognizer(self.recognizer)
            for term in keyterms:
                self.phrases.addPhrase(term)
        self.connection: Any = speechsdk.Connection.from_recognizer(self.recognizer)
        self.connection.connected.connect(deliver("connected"))
        self.connection.disconnected.connect(deliver("disconnected"))
        for attribute, kind in _SIGNALS:
            getattr(self.recognizer, attribute).connect(deliver(kind))
        self.started = False

    def start(self) -> None:
        self.recognizer.start_continuous_recognition_async().get()
        self.started = True

    def dispose(self) -> None:
        """Stop recognition, disconnect every callback and drop every native handle (blocking)."""
        recognizer = self.recognizer
        if recognizer is None:
            return
        try:
            if self.started:
                recognizer.stop_continuous_recognition_async().get()
        except RuntimeError as exc:
            log.debug("azure_stop_failed", error=str(exc)[:200])
        finally:
            for attribute, _ in _SIGNALS:
                getattr(recognizer, attribute).disconnect_all()
            self.connection.connected.disconnect_all()
            self.connection.disconnected.disconnect_all()
            # Release in dependency order, here on the disposal thread.
            self.connection = None
            self.phrases = None
            self.recognizer = None
            del recognizer
            self.audio_config = None
            self.push = None
            self.config = None


def _deliverer(
    stream: AzureSpeechStream, loop: asyncio.AbstractEventLoop
) -> Callable[[SignalKind], Callable[[Any], None]]:
    """SDK callbacks that copy values on the SDK thread and hop to the loop.

    They hold the stream weakly, so the SDK's signal lists never keep it alive.
    """
    ref = weakref.ref(stream)

    def on_loop(snap: Snapshot, received_ns: int) -> None:
        target = ref()
        if target is not None:
            target._on_snapshot(snap, received_ns)

    def make(kind: SignalKind) -> Callable[[Any], None]:
        def callback(event: Any) -> None:
            received_ns = time.monotonic_ns()
            try:
                snap = snapshot(kind, event)
            except Exception as exc:  # the SDK swallows callback errors; say something
                log.warning("azure_event_unreadable", kind=kind, error=type(exc).__name__)
                return
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(on_loop, snap, received_ns)

        return callback

    return make


# -- the stream ---------------------------------------------------------------------------------


class AzureSpeechStream:
    """One speaker's continuous recognition.

    Created by :meth:`AzureTranscriber.open_stream`. :meth:`feed` must be called from the event
    loop's thread (the voice receiver hops there first).

    Counters: :attr:`fed_bytes` (48 kHz input), :attr:`written_bytes` (16 kHz to the SDK),
    :attr:`overflow_bytes` (dropped while the SDK was disconnected beyond ``max_pending_s``),
    :attr:`events_dropped`, :attr:`finalizes`, :attr:`disconnects`, :attr:`reconnects`.
    """

    def __init__(self, owner: AzureTranscriber, *, speaker_id: str, keyterms: list[str]) -> None:
        self.speaker_id = speaker_id
        self.keyterms = keyterms
        self._owner = owner
        self._log = log.bind(speaker_id=speaker_id)
        self._loop = asyncio.get_running_loop()
        self._resampler = StreamResampler(SAMPLE_RATE_HZ, AZURE_SAMPLE_RATE_HZ)
        self.timeline = SilenceTimeline()
        self._sdk: _Recognition | None = None
        self._sdk_lock = threading.Lock()
        self._disposed = False
        self._queue = TranscriptQueue(max_events=owner.event_queue_size)
        self._connected_once = asyncio.Event()
        # Set once the first connection opened or recognition failed.
        self._settled = asyncio.Event()
        self._stopped = asyncio.Event()
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._connected = False
        self._offline_bytes = 0
        self._overflowing = False
        self._audio_since_finalize = False
        self._last_kind: str | None = None
        self.fed_bytes = 0
        self.written_bytes = 0
        self.overflow_bytes = 0
        self.finalizes = 0
        self.disconnects = 0
        self.reconnects = 0

    # -- SpeechStream -----------------------------------------------------------------

    def feed(self, pcm: bytes) -> None:
        """Resample 48 kHz mono s16le to 16 kHz and write it to the push stream; never blocks.

        While the SDK is disconnected (it reconnects by itself), at most ``max_pending_s`` of
        audio is written for it to hold; beyond that audio is dropped and counted in
        :attr:`overflow_bytes`. Audio fed after :meth:`aclose` or a failure is ignored.

        Raises:
            ValueError: ``pcm`` has an odd length (not whole samples).
        """
        if len(pcm) % 2:
            raise ValueError("PCM must be whole 16-bit samples")
        if self._closing or self._queue.ended or not pcm:
            return
        self.fed_bytes += len(pcm)
        self._write(self._resampler.process(pcm))

    def _write(self, pcm16: bytes) -> None:
        sdk = self._sdk
        if not pcm16 or sdk is None or sdk.push is None:
            return
        if not self._connected:
            if self._offline_bytes + len(pcm16) > self._owner.max_pending_bytes:
                self.overflow_bytes += len(pcm16)
                if not self._overflowing:
                    self._overflowing = True
                    self._log.warning(
                        "azure_audio_overflow", max_pending_bytes=self._owner.max_pending_bytes
                    )
                return
            self._offline_bytes += len(pcm16)
        try:
            sdk.push.write(pcm16)
        except RuntimeError as exc:
            self._fail(
                ProviderConnectionError(
                    f"the push stream refused audio ({exc})"[:200], provider=PROVIDER
                )
            )
            return
        self.written_bytes += len(pcm16)
        self._audio_since_finalize = True

    async def events(self) -> AsyncIterator[TranscriptEvent]:
        """Transcript events in arrival order until the stream is closed.

        Raises:
            ProviderError: recognition failed for good (key revoked, the SDK gave up
                reconnecting); events before the failure are delivered first.

        Cancellation: cancelling the iterating task only stops the iteration.
        """
        async for event in self._queue.drain():
            yield event

    async def finalize(self) -> None:
        """The speaker went quiet: write enough silence for Azure's endpointing to close the phrase.

        Writes the resampler's tail and ``segmentation_silence_ms + finalize_margin_ms`` of
        zeros (removed again from reported times). A no-op when no audio arrived since the
        last finalize.
        """
        if self._closing or self._queue.ended or not self._audio_since_finalize:
            return
        self._write(self._resampler.flush())
        self._write_silence(self._owner.finalize_silence_bytes)
        self._audio_since_finalize = False
        self.finalizes += 1

    def _write_silence(self, n_bytes: int) -> None:
        """Write digital silence the speaker never produced, and take it out of the times."""
        at_s = self.written_bytes / _AZURE_BYTES_PER_S
        before = self.written_bytes
        self._write(bytes(n_bytes))
        self.timeline.insert(at_s, (self.written_bytes - before) / _AZURE_BYTES_PER_S)

    async def aclose(self) -> None:
        """End the audio, wait briefly for the last results, stop and dispose. Idempotent.

        Cancellation: safe; disposal finishes on its own thread and the stream is ended
        either way.
        """
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(), name=f"azure-stt-close-{self.speaker_id}"
            )
        await asyncio.shield(self._close_task)

    @property
    def connected(self) -> bool:
        """Whether the SDK's websocket is open right now."""
        return self._connected

    @property
    def pending_events(self) -> int:
        """Transcript events waiting for the consumer."""
        return len(self._queue)

    # -- plumbing ---------------------------------------------------------------------

    async def _open(self) -> None:
        owner = self._owner
        deliver = _deliverer(self, self._loop)

        def build() -> None:
            sdk = _Recognition(owner, self.keyterms, deliver)
            with self._sdk_lock:
                abandoned = self._disposed
                if not abandoned:
                    self._sdk = sdk
            if abandoned:
                sdk.dispose()
                return
            sdk.start()

        try:
            await call_blocking(
                build, timeout_s=owner.connect_timeout_s, what="starting recognition"
            )
        except RuntimeError as exc:  # the SDK's native calls raise RuntimeError
            raise ProviderConnectionError(
                f"could not start recognition ({str(exc)[:200]})", provider=PROVIDER
            ) from exc
        try:
            async with asyncio.timeout(owner.connect_timeout_s):
                await self._settled.wait()
        except TimeoutError:
            raise ProviderTimeout(
                "the recognition websocket did not open", provider=PROVIDER
            ) from None
        if self._queue.failure is not None:
            raise self._queue.failure
        self._log.info("azure_stream_opened", locale=owner.locale, phrases=len(self.keyterms))

    def _on_snapshot(self, snap: Snapshot, received_ns: int) -> None:
        kind = snap.kind
        if kind == "connected":
            offline_bytes = self._offline_bytes
            self._connected = True
            self._offline_bytes = 0
            self._overflowing = False
            if self._connected_once.is_set():
                self.reconnects += 1
                self._log.info("azure_reconnected", offline_bytes=offline_bytes)
                if not self._closing:
                    # The SDK replays the unacknowledged audio on its next write; without one,
                    # the end of an utterance would wait for the speaker's next word.
                    self._write_silence(_NUDGE_BYTES)
            self._connected_once.set()
            self._settled.set()
        elif kind == "disconnected":
            self._connected = False
            if not self._closing:
                self.disconnects += 1
                self._log.info("azure_disconnected")
        elif kind == "canceled":
            if snap.cancel_reason == "Error":
                error = cancellation_error(snap.error_code, snap.error_details)
                self._log.error(
                    "azure_stream_failed", error=type(error).__name__, code=snap.error_code
                )
                self._fail(error)
            else:
                # EndOfStream (our close) or CancelledByUser (our stop).
                self._stopped.set()
        elif kind == "session_stopped":
            self._stopped.set()
            if not self._closing:
                self._fail(
                    ProviderConnectionError("recognition stopped unexpectedly", provider=PROVIDER)
                )
        else:
            event = to_transcript_event(snap, received_ns=received_ns, timeline=self.timeline)
            if event is not None:
                self._push(event)

    @property
    def events_dropped(self) -> int:
        """Events dropped because the consumer fell behind (interims first)."""
        return self._queue.dropped

    def _push(self, event: TranscriptEvent) -> None:
        if self._queue.ended:
            return
        if event.kind == "utterance_end" and self._last_kind == "utterance_end":
            # The SDK opens a continuation turn after each turn end; an empty one repeats it.
            return
        self._last_kind = event.kind
        self._queue.push(event)

    def _fail(self, error: ProviderError) -> None:
        if not self._queue.end(error):
            return
        self._stopped.set()
        self._settled.set()

    async def _close(self) -> None:
        owner = self._owner
        self._closing = True
        try:
            sdk = self._sdk
            if sdk is not None and not self._queue.ended and sdk.push is not None:
                # End of audio: the service answers what it still holds, then the turn ends.
                self._write(self._resampler.flush())
                with contextlib.suppress(RuntimeError):
                    sdk.push.close()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(owner.close_timeout_s):
                        await self._stopped.wait()
        finally:
            self._queue.end()
            await self._dispose()
            owner._forget(self)

    async def _dispose(self) -> None:
        def dispose() -> None:
            with self._sdk_lock:
                self._disposed = True
                sdk, self._sdk = self._sdk, None
            if sdk is not None:
                sdk.dispose()

        try:
            await call_blocking(dispose, timeout_s=self._owner.close_timeout_s, what="disposing")
        except ProviderTimeout:
            self._log.warning("azure_dispose_slow")


class AzureTranscriber:
    """Azure Speech continuous recognition: one :class:`AzureSpeechStream` per speaker.

    No SDK object exists until :meth:`open_stream`; constructing this is free.

    Args:
        key: the Speech resource key (never logged).
        region: the resource's region, e.g. ``"westeurope"`` (``AZURE_SPEECH_REGION``).
        host: ``wss://host[:port]`` instead of a region (``AZURE_SPEECH_HOST``: a container,
            or ``ws://127.0.0.1:P`` for a fake).
        language: the familiar's language (``"en"``, ``"en-GB"``, …); a bare code gets a
            default region (``en`` → ``en-US``).
        segmentation_silence_ms: the pause that closes a phrase (100–5000; the character's
            ``endpointing_ms``).
        finalize_margin_ms: silence written by :meth:`AzureSpeechStream.finalize` beyond
            ``segmentation_silence_ms``.
        connect_timeout_s: bound on starting recognition and opening the websocket.
        close_timeout_s: how long :meth:`AzureSpeechStream.aclose` waits for the last results,
            and then for disposal.
        max_pending_s: audio written while the SDK is disconnected, at most.
        event_queue_size: transcript events held for a slow consumer.

    Raises:
        ValueError: no usable region or host, or an inconsistent setting.
    """

    name = "azure"

    def __init__(
        self,
        key: str,
        *,
        region: str | None = None,
        host: str | None = None,
        language: str = "en",
        segmentation_silence_ms: int = 500,
        finalize_margin_ms: int = 300,
        connect_timeout_s: float = 10.0,
        close_timeout_s: float = 3.0,
        max_pending_s: float = 10.0,
        event_queue_size: int = 256,
    ) -> None:
        if not key:
            raise ValueError("key is required")
        check_endpoint(region=region, host=host)
        if not 100 <= segmentation_silence_ms <= 5000:
            raise ValueError("segmentation_silence_ms must be between 100 and 5000")
        if finalize_margin_ms < 0 or max_pending_s <= 0 or event_queue_size <= 0:
            raise ValueError("finalize_margin_ms, max_pending_s, event_queue_size must be positive")
        self.key = key
        self.region = region
        self.host = validate_host(host) if host else None
        self.locale = azure_locale(language)
        self.segmentation_silence_ms = segmentation_silence_ms
        silence_ms = segmentation_silence_ms + finalize_margin_ms
        self.finalize_silence_bytes = silence_ms * _AZURE_BYTES_PER_S // 1000
        self.connect_timeout_s = connect_timeout_s
        self.close_timeout_s = close_timeout_s
        self.max_pending_bytes = int(max_pending_s * _AZURE_BYTES_PER_S) & ~1
        self.event_queue_size = event_queue_size
        self._streams: set[AzureSpeechStream] = set()

    def __repr__(self) -> str:
        return (
            f"AzureTranscriber(locale={self.locale!r}, region={self.region!r}, host={self.host!r})"
        )

    async def open_stream(
        self, *, speaker_id: str, keyterms: Sequence[str] = ()
    ) -> AzureSpeechStream:
        """Start continuous recognition for one speaker and wait until its websocket is up.

        Raises:
            ProviderAuthError: the key was refused (never retried).
            ProviderQuotaError: the subscription is out of quota.
            ProviderConnectionError: Azure could not be reached.
            ProviderTimeout: recognition did not start within ``connect_timeout_s``.

        Cancellation: safe; a half-opened stream is closed and disposed.
        """
        stream = AzureSpeechStream(
            self, speaker_id=speaker_id, keyterms=normalise_phrases(keyterms)
        )
        self._streams.add(stream)
        try:
            await stream._open()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    def _forget(self, stream: AzureSpeechStream) -> None:
        self._streams.discard(stream)

    async def aclose(self) -> None:
        """Close and dispose every stream, then collect garbage (no native finalisation at exit).

        Idempotent. Cancellation: safe; streams finish closing on their own.
        """
        streams = list(self._streams)
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
        gc.collect()
