"""Azure Speech streaming text-to-speech behind the :class:`Synthesizer` protocol.

One ``SpeechSynthesizer`` (``azure-cognitiveservices-speech``, output
``Raw48Khz16BitMonoPcm``, no audio device) per process; the SDK keeps its websocket open
between requests and reopens it by itself, and :meth:`AzureSynthesizer.warm` opens it ahead of
a reply. Each reply is an :class:`AzureContext`. Azure has no continuation of one utterance
across requests, so a context batches: the first clause is sent as soon as it arrives (first
audio as early as possible), and the clauses that arrive while a request is being synthesised
are joined into the next request. Audio arrives as it is synthesised (the SDK's
``synthesizing`` events) and word timings come from ``synthesis_word_boundary``, shifted so they
count from the reply's first sample across requests.

Threading contract (shared with :mod:`familiar_connect.speech.stt.azure`): SDK callbacks run on
the SDK's native threads, copy plain values there and hop to the loop with
``loop.call_soon_threadsafe``; blocking SDK calls (``speak_ssml_async(...).get()``,
``stop_speaking_async().get()``, opening the connection, disposal) run in daemon threads
(:func:`~familiar_connect.speech.stt.azure.call_blocking`). One request is in flight at a time
(a lock), so every event belongs to the context that holds it; the SDK's own retries change
result ids, so events are not routed by id.

Cancellation: :meth:`AzureContext.cancel` (barge-in) ends :meth:`AzureContext.stream` at once
and asks the SDK to stop the request in flight (``stop_speaking``) in the background; the next
reply waits for that stop before its own request goes out.

Disposal: :meth:`AzureSynthesizer.aclose` disconnects every callback and drops the native
objects on a disposal thread, then runs ``gc.collect()``, so nothing is left to the SDK's
finalisers at interpreter exit (which can abort the process, library-facts §5).

Errors: the SDK reports failures as a ``Canceled`` result whose error code is translated by
:func:`~familiar_connect.speech.stt.azure.cancellation_error` (a refused key is
:class:`~familiar_connect.errors.ProviderAuthError`, invalid SSML
:class:`~familiar_connect.errors.ProviderBadRequest`, …); a request with no audio or event for
``stall_timeout_s`` fails with :class:`~familiar_connect.errors.ProviderTimeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal
from xml.sax.saxutils import escape, quoteattr

import azure.cognitiveservices.speech as speechsdk
import structlog

from familiar_connect.errors import ProviderConnectionError, ProviderError, ProviderTimeout
from familiar_connect.speech.azure_sdk import (
    PROVIDER,
    azure_locale,
    call_blocking,
    cancellation_error,
    check_endpoint,
    make_speech_config,
    validate_host,
)
from familiar_connect.speech.tts.base import SAMPLE_RATE_HZ, AudioChunk, ReplyBuffer, WordTiming

__all__ = [
    "DEFAULT_VOICE",
    "AzureContext",
    "AzureSynthesizer",
    "SynthesisEvent",
    "build_ssml",
    "synthesis_event",
]

log = structlog.get_logger(__name__)

DEFAULT_VOICE = "en-US-AvaMultilingualNeural"
"""Used when the character names no voice: multilingual, so it reads any language."""

_BYTES_PER_S = SAMPLE_RATE_HZ * 2
_TICKS_PER_S = 10_000_000
_MAX_TEXT_CHARS = 2000


def build_ssml(text: str, *, voice: str, locale: str) -> str:
    """The SSML document for ``text`` (escaped) in ``voice``."""
    return (
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' "
        f"xml:lang={quoteattr(locale)}><voice name={quoteattr(voice)}>"
        f"{escape(text)}</voice></speak>"
    )


EventKind = Literal["audio", "word", "completed", "canceled", "connected", "disconnected"]
_SIGNALS: tuple[tuple[str, EventKind], ...] = (
    ("synthesizing", "audio"),
    ("synthesis_word_boundary", "word"),
    ("synthesis_completed", "completed"),
    ("synthesis_canceled", "canceled"),
)


@dataclass(frozen=True, slots=True)
class SynthesisEvent:
    """Plain values copied from one SDK synthesis event on the SDK's thread.

    Attributes:
        kind: ``audio`` (a chunk), ``word`` (a word boundary), ``completed`` or ``canceled``
            (a request ended), ``connected`` or ``disconnected`` (the websocket).
        audio: the chunk's PCM (``audio`` only).
        word: the word (``word`` only).
        start_s / end_s: the word's place in the request's audio, seconds.
        cancel_reason / error_code / error_details: why a request was ``canceled``.
    """

    kind: EventKind
    audio: bytes = b""
    word: str = ""
    start_s: float = 0.0
    end_s: float = 0.0
    cancel_reason: str = ""
    error_code: str = ""
    error_details: str = ""


def _name(value: Any) -> str:
    return str(getattr(value, "name", value or ""))


def synthesis_event(kind: EventKind, event: Any) -> SynthesisEvent | None:
    """Copy what we need out of an SDK synthesis event; ``None`` for boundaries that are not words.

    Works on anything shaped like the SDK's event args: ``event.result.audio_data`` /
    ``.cancellation_details`` for synthesis events; ``text``, ``audio_offset`` (ticks),
    ``duration`` (a ``timedelta``) and ``boundary_type`` for word boundaries.
    """
    if kind == "audio":
        return SynthesisEvent(kind="audio", audio=bytes(event.result.audio_data or b""))
    if kind == "word":
        if _name(event.boundary_type) != "Word":
            return None
        start_s = int(event.audio_offset) / _TICKS_PER_S
        return SynthesisEvent(
            kind="word",
            word=str(event.text),
            start_s=start_s,
            end_s=start_s + event.duration.total_seconds(),
        )
    if kind == "canceled":
        details = event.result.cancellation_details
        return SynthesisEvent(
            kind="canceled",
            cancel_reason=_name(details.reason),
            error_code=_name(details.error_code),
            error_details=details.error_details or "",
        )
    if kind in ("connected", "disconnected"):
        return SynthesisEvent(kind=kind)
    return SynthesisEvent(kind="completed")


@dataclass(frozen=True, slots=True)
class _ResultEvent:
    """Adapts a request's final result to the shape :func:`synthesis_event` reads."""

    result: Any


class _Synthesis:
    """The native objects: config, synthesizer, connection; built and disposed off the loop."""

    def __init__(self, owner: AzureSynthesizer, deliver: Callable[[EventKind], Any]) -> None:
        self.config: Any = make_speech_config(owner.key, region=owner.region, host=owner.host)
        self.config.set_speech_synthesis_output_format(
            speechsdk.SpeechSynthesisOutputFormat.Raw48Khz16BitMonoPcm
        )
        self.synthesizer: Any = speechsdk.SpeechSynthesizer(
            speech_config=self.config, audio_config=None
        )
        for attribute, kind in _SIGNALS:
            getattr(self.synthesizer, attribute).connect(deliver(kind))
        self.connection: Any = speechsdk.Connection.from_speech_synthesizer(self.synthesizer)
        self.connection.connected.connect(deliver("connected"))
        self.connection.disconnected.connect(deliver("disconnected"))

    def dispose(self) -> None:
        """Disconnect every callback and drop every native handle (blocking)."""
        synthesizer = self.synthesizer
        if synthesizer is None:
            return
        for attribute, _ in _SIGNALS:
            getattr(synthesizer, attribute).disconnect_all()
        self.connection.connected.disconnect_all()
        self.connection.disconnected.disconnect_all()
        with contextlib.suppress(RuntimeError):
            self.connection.close()
        self.connection = None
        self.synthesizer = None
        del synthesizer
        self.config = None


class AzureContext:
    """One reply being spoken.

    Created by :meth:`AzureSynthesizer.new_context`. :meth:`say` and :meth:`finish` may run while
    another task iterates :meth:`stream`.

    Cancellation: :meth:`cancel` ends :meth:`stream` quietly and stops the request in flight;
    cancelling a task blocked in :meth:`stream` leaves the context open (call :meth:`cancel`).
    """

    def __init__(self, owner: AzureSynthesizer) -> None:
        self._owner = owner
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._buffer = ReplyBuffer(owner.max_buffered_bytes)
        self._ready = asyncio.Event()
        self._finished = False
        self._done = False
        self._cancelled = False
        self._failure: ProviderError | None = None
        self._in_flight = False
        self._terminal: asyncio.Future[SynthesisEvent] | None = None
        self._request_base_s = 0.0
        self._last_activity_ns = time.monotonic_ns()
        self.requests = 0
        self.first_audio_ns: int | None = None
        self.audio_bytes = 0
        self._pump = asyncio.get_running_loop().create_task(self._run(), name="azure-tts-context")
        owner._contexts.add(self)

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` ran."""
        return self._cancelled

    async def say(self, text: str) -> None:
        """Queue the next clause; ignored after :meth:`cancel`. Text beyond 2000 characters is cut.

        Raises:
            ProviderError: the context already failed.
            RuntimeError: :meth:`finish` was already called.
        """
        if self._cancelled:
            return
        if self._failure is not None:
            raise self._failure
        if self._finished:
            raise RuntimeError("say() after finish()")
        text = " ".join(text.split())[:_MAX_TEXT_CHARS]
        if text:
            self._pending.append(text)
            self._wake.set()

    async def finish(self) -> None:
        """No more text: :meth:`stream` ends once everything queued was synthesised.

        Raises:
            ProviderError: the context already failed.
        """
        if self._cancelled or self._finished:
            return
        if self._failure is not None:
            raise self._failure
        self._finished = True
        self._wake.set()

    async def stream(self) -> AsyncIterator[AudioChunk | WordTiming]:
        """Audio (48 kHz mono s16le) and word timings as they arrive, until the reply is done.

        Ends quietly after :meth:`cancel`.

        Raises:
            ProviderError: Azure refused or failed a request, or it stalled
                (:class:`ProviderTimeout`, see ``stall_timeout_s``).
        """
        while True:
            for item in self._buffer.take():
                yield item
            if self._cancelled or self._done:
                return
            if self._failure is not None:
                raise self._failure
            # The pump enforces the stall deadline while a request is in flight; waiting
            # for the LLM's next clause has no deadline of ours.
            self._ready.clear()
            await self._ready.wait()

    async def cancel(self) -> None:
        """Stop now (barge-in): drop buffered audio, stop the request in flight. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._buffer.clear()
        self._pending.clear()
        self._ready.set()
        self._wake.set()
        if self._in_flight:
            self._owner.cancels += 1
            self._owner._stop_in_background()

    # -- plumbing ---------------------------------------------------------------------

    async def _run(self) -> None:
        owner = self._owner
        try:
            while True:
                while not (self._pending or self._finished or self._cancelled):
                    self._wake.clear()
                    await self._wake.wait()
                if self._cancelled or self._failure is not None:
                    return
                if not self._pending:
                    self._done = True
                    self._ready.set()
                    return
                async with owner._lock:
                    if self._cancelled or self._failure is not None:
                        return
                    text = " ".join(self._pending)
                    self._pending.clear()
                    await self._speak(text)
        except ProviderError as exc:
            self._fail(exc)
        except Exception as exc:
            log.exception("azure_tts_pump_failed")
            self._fail(ProviderError(f"synthesis failed ({type(exc).__name__})", provider=PROVIDER))

    async def _speak(self, text: str) -> None:
        """Synthesise one request while holding the synthesizer's lock."""
        owner = self._owner
        sdk = await owner._ensure_sdk()
        loop = asyncio.get_running_loop()
        self._terminal = loop.create_future()
        self._request_base_s = self.audio_bytes / _BYTES_PER_S
        self._last_activity_ns = time.monotonic_ns()
        self._in_flight = True
        owner._current = self
        self.requests += 1
        owner.requests += 1
        ssml = build_ssml(text, voice=owner.voice, locale=owner.locale)

        def speak() -> SynthesisEvent:
            # Resolves when the service finished (or failed). Audio arrives through the
            # events; the status is kept in case its event is late. .get() frees the handle.
            result = sdk.synthesizer.speak_ssml_async(ssml).get()
            if result.reason == speechsdk.ResultReason.Canceled:
                return synthesis_event("canceled", _ResultEvent(result)) or SynthesisEvent(
                    kind="canceled"
                )
            return SynthesisEvent(kind="completed")

        waiter = loop.create_task(
            call_blocking(speak, timeout_s=owner.request_timeout_s, what="synthesising")
        )
        try:
            # The terminal event arrives after every audio event of the request (same SDK
            # thread); the blocking call may return before them.
            while not self._terminal.done():
                remaining_s = (
                    self._last_activity_ns + owner.stall_timeout_ns - time.monotonic_ns()
                ) / 1e9
                done, _ = await asyncio.wait(
                    {self._terminal, waiter},
                    timeout=max(0.0, remaining_s),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiter in done and not self._terminal.done():
                    exc = waiter.exception()
                    if exc is not None:
                        raise exc
                    # Returned before its terminal event was delivered: wait briefly for it.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(owner.close_timeout_s):
                            await asyncio.shield(self._terminal)
                    break
                if not done and (
                    time.monotonic_ns() - self._last_activity_ns >= owner.stall_timeout_ns
                ):
                    self._fail(ProviderTimeout("no audio arrived in time", provider=PROVIDER))
                    await owner._stop()
                    await self._settle(waiter)
                    return
            if self._terminal.done():
                terminal = self._terminal.result()
            elif waiter.done() and waiter.exception() is None:
                terminal = waiter.result()
            else:
                terminal = SynthesisEvent(kind="completed")
            if (
                terminal.kind == "canceled"
                and terminal.cancel_reason == "Error"
                and not self._cancelled
            ):
                raise cancellation_error(terminal.error_code, terminal.error_details)
            if self._cancelled:
                await self._settle(waiter)
        finally:
            self._in_flight = False
            owner._current = None
            if not waiter.done():
                waiter.add_done_callback(_consume)
            self._ready.set()

    async def _settle(self, waiter: asyncio.Task[SynthesisEvent]) -> None:
        """After a stop: let the request end (bounded) before the lock goes to the next reply.

        Otherwise its late events would be taken for the next request's.
        """
        pending = [t for t in (waiter, self._terminal) if t is not None and not t.done()]
        if pending:
            await asyncio.wait(
                [asyncio.shield(t) for t in pending], timeout=self._owner.close_timeout_s
            )

    def _deliver(self, event: SynthesisEvent) -> None:
        now = time.monotonic_ns()
        self._last_activity_ns = now
        if event.kind in ("completed", "canceled"):
            if self._terminal is not None and not self._terminal.done():
                self._terminal.set_result(event)
            self._ready.set()
            return
        if self._cancelled or self._failure is not None:
            return
        if event.kind == "audio":
            pcm = event.audio
            if not pcm:
                return
            if self.first_audio_ns is None:
                self.first_audio_ns = now
            self.audio_bytes += len(pcm)
            if not self._buffer.add_audio(AudioChunk(pcm=pcm, received_ns=now)):
                self._owner.overflows += 1
                log.warning("azure_tts_context_overflow")
                self._fail(
                    ProviderError("audio was not consumed; reply dropped", provider=PROVIDER)
                )
                self._owner._stop_in_background()
        elif event.kind == "word":
            base = self._request_base_s
            self._buffer.add_timing(
                WordTiming(
                    word=event.word,
                    start_s=round(base + event.start_s, 4),
                    end_s=round(base + event.end_s, 4),
                )
            )
        self._ready.set()

    def _fail(self, error: ProviderError) -> None:
        if self._failure is None and not self._done and not self._cancelled:
            self._failure = error
        self._ready.set()
        self._wake.set()


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class AzureSynthesizer:
    """Azure TTS through one SDK synthesizer (a warm websocket), one context per reply.

    No SDK object exists until the first reply or :meth:`warm`; constructing this is free.

    Args:
        key: the Speech resource key (never logged).
        region: the resource's region (``AZURE_SPEECH_REGION``).
        host: ``wss://host[:port]`` instead of a region (``AZURE_SPEECH_HOST``; a fake uses
            ``ws://127.0.0.1:P``).
        voice: an Azure voice name such as ``"en-GB-SoniaNeural"`` (the character's
            ``tts_voice``); empty means :data:`DEFAULT_VOICE`.
        language: the familiar's language, for the SSML's ``xml:lang``.
        connect_timeout_s: bound on building the SDK objects and on :meth:`warm`.
        stall_timeout_s: a request fails with :class:`ProviderTimeout` when no audio or event
            arrived for this long (the SDK's own frame timeout is about 3 s).
        request_timeout_s: the longest one request may take in total.
        max_buffered_s: audio a context may hold unread before it is failed.
        close_timeout_s: bound on stopping a request and on disposal.

    Raises:
        ValueError: no usable region or host.
    """

    name = "azure"

    def __init__(
        self,
        key: str,
        *,
        region: str | None = None,
        host: str | None = None,
        voice: str = "",
        language: str = "en",
        connect_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
        request_timeout_s: float = 120.0,
        max_buffered_s: float = 120.0,
        close_timeout_s: float = 3.0,
    ) -> None:
        if not key:
            raise ValueError("key is required")
        check_endpoint(region=region, host=host)
        self.key = key
        self.region = region
        self.host = validate_host(host) if host else None
        self.voice = voice or DEFAULT_VOICE
        self.locale = azure_locale(language)
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_ns = int(stall_timeout_s * 1e9)
        self.request_timeout_s = request_timeout_s
        self.max_buffered_bytes = int(max_buffered_s * _BYTES_PER_S)
        self.close_timeout_s = close_timeout_s
        self._sdk: _Synthesis | None = None
        self._sdk_lock = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._current: AzureContext | None = None
        self._contexts: weakref.WeakSet[AzureContext] = weakref.WeakSet()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self.connects = 0
        self.requests = 0
        self.cancels = 0
        self.overflows = 0
        self.stray_events = 0

    def __repr__(self) -> str:
        return f"AzureSynthesizer(voice={self.voice!r}, region={self.region!r}, host={self.host!r})"

    async def _ensure_sdk(self) -> _Synthesis:
        async with self._sdk_lock:
            if self._closing:
                raise ProviderConnectionError("the synthesizer is closed", provider=PROVIDER)
            if self._sdk is None:
                deliver = _deliverer(self, asyncio.get_running_loop())
                self._sdk = await call_blocking(
                    lambda: _Synthesis(self, deliver),
                    timeout_s=self.connect_timeout_s,
                    what="building the synthesizer",
                )
            return self._sdk

    @property
    def connected(self) -> bool:
        """Whether the SDK's websocket is open."""
        return self._connected.is_set()

    async def warm(self) -> None:
        """Open the websocket now and wait until it is up (e.g. when someone starts speaking).

        Failures are not raised here (the SDK reports them on the next request, translated);
        a failed warm-up only moves the handshake onto the next reply.
        """
        sdk = await self._ensure_sdk()
        if self.connected:
            return
        try:
            await call_blocking(
                lambda: sdk.connection.open(True),
                timeout_s=self.connect_timeout_s,
                what="opening the connection",
            )
            # open() returns before the handshake; a request sent meanwhile would make
            # the SDK abandon this connection and open another.
            async with asyncio.timeout(self.connect_timeout_s):
                await self._connected.wait()
        except (ProviderError, RuntimeError, TimeoutError) as exc:
            log.info("azure_tts_warm_failed", error=type(exc).__name__)

    async def new_context(self) -> AzureContext:
        """Start a reply (the SDK objects are built on the first one).

        Raises:
            ProviderConnectionError: the synthesizer is closed.
            ProviderTimeout: the SDK objects could not be built in time.
        """
        await self._ensure_sdk()
        return AzureContext(self)

    async def synthesize(self, text: str) -> bytes:
        """Synthesise ``text`` in one request, e.g. for a cached greeting.

        Returns:
            48 kHz mono s16le PCM.

        Raises:
            ProviderError: the request failed (translated from the SDK's cancellation).
        """
        context = await self.new_context()
        await context.say(text)
        await context.finish()
        chunks = [item.pcm async for item in context.stream() if isinstance(item, AudioChunk)]
        return b"".join(chunks)

    def _route(self, event: SynthesisEvent) -> None:
        if event.kind == "connected":
            self.connects += 1
            self._connected.set()
            return
        if event.kind == "disconnected":
            self._connected.clear()
            return
        current = self._current
        if current is None:
            self.stray_events += 1
            return
        current._deliver(event)

    async def _stop(self) -> None:
        """Ask the SDK to stop the request in flight (bounded; failures only logged)."""
        sdk = self._sdk
        if sdk is None:
            return
        try:
            await call_blocking(
                lambda: sdk.synthesizer.stop_speaking_async().get(),
                timeout_s=self.close_timeout_s,
                what="stopping",
            )
        except (ProviderError, RuntimeError) as exc:
            log.info("azure_tts_stop_failed", error=type(exc).__name__)

    def _stop_in_background(self) -> None:
        task = asyncio.get_running_loop().create_task(self._stop(), name="azure-tts-stop")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop what is in flight, dispose the SDK objects, collect garbage. Idempotent.

        Cancellation: safe; disposal finishes on its own thread.
        """
        self._closing = True
        contexts = list(self._contexts)
        for context in contexts:
            await context.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        pumps = [c._pump for c in contexts if not c._pump.done()]
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        async with self._sdk_lock:
            sdk, self._sdk = self._sdk, None
        if sdk is not None:
            try:
                await call_blocking(sdk.dispose, timeout_s=self.close_timeout_s, what="disposing")
            except ProviderTimeout:
                log.warning("azure_tts_dispose_slow")
            del sdk
        gc.collect()


def _deliverer(
    owner: AzureSynthesizer, loop: asyncio.AbstractEventLoop
) -> Callable[[EventKind], Callable[[Any], None]]:
    """SDK callbacks that copy values on the SDK thread and hop to the loop (weakly held)."""
    ref = weakref.ref(owner)

    def on_loop(event: SynthesisEvent) -> None:
        target = ref()
        if target is not None:
            target._route(event)

    def make(kind: EventKind) -> Callable[[Any], None]:
        def callback(sdk_event: Any) -> None:
            try:
                event = synthesis_event(kind, sdk_event)
            except Exception as exc:  # the SDK swallows callback errors; say something
                log.warning("azure_tts_event_unreadable", kind=kind, error=type(exc).__name__)
                return
            if event is None:
                return
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
                loop.call_soon_threadsafe(on_loop, event)

        return callback

    return make
