"""Deepgram streaming speech-to-text (listen v1) behind the :class:`Transcriber` protocol.

One websocket per speaker, driven through ``deepgram-sdk``'s
``AsyncDeepgramClient.listen.v1.connect``: ``linear16`` 48 kHz mono, interim results,
endpointing, ``utterance_end_ms``, ``smart_format``, VAD events, and keyterms (the familiar's
name and aliases, the voice members' names). Each :class:`DeepgramSpeechStream` owns one task
that moves bytes and keeps the connection honest:

* **KeepAlive** every ``keepalive_s`` while no audio flows (Deepgram closes a socket after 10 s
  without audio or KeepAlive);
* **Finalize** once no audio has arrived for ``finalize_after_idle_s``: Discord stops sending
  packets in silence, so Deepgram never hears the silence its endpointing waits for. The
  answer (``from_finalize``) is reported as a ``final`` with ``speech_final`` set;
* **reconnect** after a drop or a stall (audio sent, nothing heard back for
  ``stall_timeout_s``), with capped exponential backoff and jitter, **replaying** the audio that
  no final transcript covered yet (at most ``replay_s``), so a drop mid-utterance loses no words;
* **dormancy**: after ``close_after_idle_s`` without audio the stream sends ``CloseStream`` and
  lets the socket go; the next :meth:`~DeepgramSpeechStream.feed` reconnects;
* an **authentication failure** (401/403), an exhausted account (402) or a rejected request
  (400) is never retried: it is raised from :meth:`DeepgramTranscriber.open_stream`, or ends
  :meth:`~DeepgramSpeechStream.events` with that error.

Audio waits in one bounded buffer (``max_pending_s``; the oldest unsent audio is dropped and
counted on overflow) that doubles as the replay history. Transcript events wait in a bounded
queue (the oldest interim is dropped first, and counted). Transcript times are seconds of the
stream's own audio, continuous across reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import structlog
import websockets.exceptions

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderQuotaError,
    ProviderTimeout,
)
from familiar_connect.llm.sse import error_for_status
from familiar_connect.speech.audio import ReplayBuffer
from familiar_connect.speech.stt.base import SAMPLE_RATE_HZ, TranscriptEvent, normalise_terms
from familiar_connect.speech.stt.queue import TranscriptQueue
from familiar_connect.status import StatusReporter, report_status

# deepgram-sdk 7.16 is built on websockets.legacy and imports a deprecated exception name; both
# warn once at import. Pinned websockets==17.4 still ships both (library-facts §3).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    warnings.filterwarnings("ignore", ".*InvalidStatusCode is deprecated", DeprecationWarning)
    from deepgram import AsyncDeepgramClient
    from deepgram.core.api_error import ApiError
    from deepgram.environment import DeepgramClientEnvironment
    from deepgram.listen.v1.raw_client import AsyncRawV1Client  # noqa: F401 - import under the filter
    from deepgram.listen.v1.socket_client import AsyncV1SocketClient
    from deepgram.listen.v1.types import (
        ListenV1Error,
        ListenV1Metadata,
        ListenV1Results,
        ListenV1SpeechStarted,
        ListenV1UtteranceEnd,
    )

__all__ = [
    "DEEPGRAM_HTTP_BASE",
    "DEEPGRAM_WS_BASE",
    "DeepgramSpeechStream",
    "DeepgramTranscriber",
    "normalise_keyterms",
]

log = structlog.get_logger(__name__)

DEEPGRAM_WS_BASE = "wss://api.deepgram.com"
DEEPGRAM_HTTP_BASE = "https://api.deepgram.com"
PROVIDER = "deepgram"

_BYTES_PER_SECOND = SAMPLE_RATE_HZ * 2
_MAX_SEND_BYTES = 32_000
_MAX_KEYTERMS = 100
_MAX_KEYTERM_CHARS = 100
_FATAL = (ProviderAuthError, ProviderQuotaError, ProviderBadRequest)


def normalise_keyterms(terms: Sequence[str]) -> list[str]:
    """Strip, de-duplicate (case-insensitively, first spelling wins) and cap keyterms."""
    return normalise_terms(terms, max_terms=_MAX_KEYTERMS, max_chars=_MAX_KEYTERM_CHARS)


def _status_error(status: int | None) -> ProviderError:
    if status == 403:
        # Deepgram answers 403 to a key without the listen scope: a credentials problem.
        return ProviderAuthError(
            "the API key may not use streaming speech-to-text", provider=PROVIDER, status=403
        )
    if status == 401:
        return ProviderAuthError(
            "the API key was refused; check DEEPGRAM_API_KEY", provider=PROVIDER, status=401
        )
    return error_for_status(status, "the websocket upgrade was refused", provider=PROVIDER)


def _connect_error(exc: BaseException) -> ProviderError:
    """Translate a failure to open the websocket; never includes the exception text (headers)."""
    if isinstance(exc, ApiError):
        return _status_error(exc.status_code)
    if isinstance(exc, TimeoutError):
        return ProviderTimeout("timed out opening the websocket", provider=PROVIDER)
    return ProviderConnectionError(
        f"could not open the websocket ({type(exc).__name__})", provider=PROVIDER
    )


class _Dropped(Exception):
    """The connection ended without our asking (or stalled); reconnect with replay."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeepgramSpeechStream:
    """One speaker's streaming recognition over a self-healing Deepgram websocket.

    Created by :meth:`DeepgramTranscriber.open_stream`. :meth:`feed` must be called from the
    event loop's thread (the voice receiver hops there first).

    Counters: :attr:`overflow_bytes` (audio dropped because the connection could not keep up),
    :attr:`events_dropped`, :attr:`reconnects`, :attr:`keepalives_sent`,
    :attr:`finalizes_sent`, :attr:`replayed_bytes`.
    """

    def __init__(self, owner: DeepgramTranscriber, *, speaker_id: str, keyterms: list[str]) -> None:
        self.speaker_id = speaker_id
        self.keyterms = keyterms
        self._owner = owner
        self._log = log.bind(speaker_id=speaker_id)
        self._audio = ReplayBuffer(
            max_pending_bytes=owner.max_pending_bytes, replay_bytes=owner.replay_bytes
        )
        # Where the current connection's audio starts, as a byte offset of the stream.
        self._conn_start = 0
        self._last_feed_ns = time.monotonic_ns()
        self._audio_since_finalize = False
        self._finalize_requested = False
        self._wake = asyncio.Event()
        # Transcript events out.
        self._queue = TranscriptQueue(max_events=owner.event_queue_size)
        # Lifecycle.
        self._closing = False
        self._close_requested = asyncio.Event()
        self._close_stream_sent = False
        self._heard = False
        self._connected = False
        self._awaiting_since_ns: int | None = None
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[None] | None = None
        self._overflowing = False
        self.reconnects = 0
        self.keepalives_sent = 0
        self.finalizes_sent = 0

    # -- SpeechStream -------------------------------------------------------------

    def feed(self, pcm: bytes) -> None:
        """Queue 48 kHz mono s16le audio; never blocks.

        Audio beyond ``max_pending_s`` not yet sent is dropped oldest-first and counted in
        :attr:`overflow_bytes`. Audio fed after :meth:`aclose` is ignored.

        Raises:
            ValueError: ``pcm`` has an odd length (not whole samples).
        """
        if len(pcm) % 2:
            raise ValueError("PCM must be whole 16-bit samples")
        if self._closing or self._queue.ended or not pcm:
            return
        audio = self._audio
        dropped = audio.push(pcm)
        self._last_feed_ns = time.monotonic_ns()
        if dropped and not self._overflowing:
            # Once per episode, not once per 20 ms packet.
            self._overflowing = True
            self._log.warning("deepgram_audio_overflow", max_pending_bytes=audio.max_pending_bytes)
        elif self._overflowing and audio.pending < audio.max_pending_bytes // 2:
            self._overflowing = False
        self._wake.set()

    async def events(self) -> AsyncIterator[TranscriptEvent]:
        """Transcript events in arrival order until the stream is closed.

        Raises:
            ProviderError: the stream failed for good (credentials refused on a reconnect,
                or reconnect attempts exhausted); events before the failure are delivered first.

        Cancellation: cancelling the iterating task only stops the iteration.
        """
        async for event in self._queue.drain():
            yield event

    async def finalize(self) -> None:
        """Ask Deepgram to flush what it heard now (the stream also does this on its own idle timer).

        A no-op when no audio was sent since the last Finalize or the socket is dormant.
        """
        self._finalize_requested = True
        self._wake.set()

    async def aclose(self) -> None:
        """Flush (``CloseStream``), wait briefly for the last results, and close. Idempotent.

        Cancellation: safe; the connection task is cancelled and the stream is ended either way.
        """
        if self._closing:
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            return
        self._closing = True
        self._close_requested.set()
        self._wake.set()
        task = self._task
        try:
            if task is not None and not task.done():
                done, _ = await asyncio.wait({task}, timeout=self._owner.close_timeout_s)
                if not done:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
        finally:
            if task is not None and not task.done():
                task.cancel()
            self._end(None)
            self._owner._forget(self)

    @property
    def overflow_bytes(self) -> int:
        """Audio dropped because it could not be sent in time."""
        return self._audio.overflow_bytes

    @property
    def replayed_bytes(self) -> int:
        """Audio sent a second time after reconnects."""
        return self._audio.replayed_bytes

    @property
    def pending_events(self) -> int:
        """Transcript events waiting for the consumer."""
        return len(self._queue)

    @property
    def connected(self) -> bool:
        """Whether a websocket is open right now (false while dormant or reconnecting)."""
        return self._connected

    # -- plumbing -----------------------------------------------------------------

    def _start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"deepgram-{self.speaker_id}")

    @property
    def events_dropped(self) -> int:
        """Events dropped because the consumer fell behind (interims first)."""
        return self._queue.dropped

    def _push(self, event: TranscriptEvent) -> None:
        self._queue.push(event)

    def _end(self, failure: ProviderError | None) -> None:
        if not self._queue.end(failure):
            return
        if not self._ready.done():
            if failure is not None:
                self._ready.set_exception(failure)
                # Retrieved by open_stream; mark it so an unawaited failure does not warn.
                self._ready.exception()
            else:
                self._ready.set_result(None)

    async def _run(self) -> None:
        owner = self._owner
        attempt = 0
        replay = False
        try:
            while not self._closing:
                if not replay and self._ready.done() and not self._audio.pending:
                    # Dormant: wait for speech (or close) before paying for a connection.
                    self._wake.clear()
                    if not self._audio.pending and not self._closing:
                        await self._wake.wait()
                    continue
                if replay:
                    self._audio.rewind()
                failure: ProviderError | None = None
                try:
                    await self._session()
                except ProviderError as exc:
                    if isinstance(exc, _FATAL) or not self._ready.done():
                        # Never retried; the first connection's failure goes to open_stream.
                        self._log.error(
                            "deepgram_stream_failed", error=type(exc).__name__, status=exc.status
                        )
                        report_status(owner.report, error=f"{type(exc).__name__}: {exc}")
                        self._end(exc)
                        return
                    failure, reason = exc, type(exc).__name__
                except _Dropped as exc:
                    reason = exc.reason
                    if self._heard:
                        attempt = 0
                else:
                    attempt = 0
                    replay = False
                    continue
                attempt += 1
                if attempt > owner.max_reconnect_attempts:
                    failure = failure or ProviderConnectionError(
                        f"connection lost; {owner.max_reconnect_attempts} reconnects failed",
                        provider=PROVIDER,
                    )
                    self._log.error(
                        "deepgram_stream_failed", error=type(failure).__name__, reason=reason
                    )
                    report_status(owner.report, state="failing", error=str(failure))
                    self._end(failure)
                    return
                delay = owner.backoff_s(attempt)
                self._log.warning(
                    "deepgram_reconnecting", reason=reason, attempt=attempt, delay_s=round(delay, 3)
                )
                replay = True
                self.reconnects += 1
                report_status(owner.report, state="reconnecting", reconnected=True)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._close_requested.wait()
        except Exception:
            self._log.exception("deepgram_stream_crashed")
            self._end(ProviderProtocolError("the stream failed unexpectedly", provider=PROVIDER))
        finally:
            self._connected = False
            self._end(None)

    async def _session(self) -> None:
        """Run one connection until it closes; return after a clean close we asked for.

        Raises:
            ProviderError: the connection could not be opened (mapped), or Deepgram closed it
                because it cannot decode our audio (1008, :class:`ProviderBadRequest`).
            _Dropped: it ended without our asking.
        """
        owner = self._owner
        stack = contextlib.AsyncExitStack()
        try:
            async with asyncio.timeout(owner.connect_timeout_s):
                conn = await stack.enter_async_context(owner._connect(self.keyterms))
        except ProviderError:
            await stack.aclose()
            raise
        except (ApiError, OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            await stack.aclose()
            raise _connect_error(exc) from exc
        async with stack:
            self._connected = True
            self._close_stream_sent = False
            self._conn_start = self._audio.sent
            self._audio.acknowledge_sent()
            self._awaiting_since_ns = None
            self._heard = False
            if not self._ready.done():
                self._ready.set_result(None)
                self._log.info("deepgram_stream_opened")
            else:
                self._log.info("deepgram_reconnected", replay_bytes=self._audio.pending)
                report_status(self._owner.report, state="connected")
            try:
                async with asyncio.TaskGroup() as group:
                    receiver = group.create_task(self._receive(conn))
                    group.create_task(self._send(conn, receiver))
            except* (_Dropped, ProviderError) as group:
                raise group.exceptions[0] from None
            finally:
                self._connected = False
            if self._close_stream_sent and not self._closing:
                # Dormant: everything sent was flushed by CloseStream.
                self._audio.acknowledge_sent()
                self._log.info("deepgram_stream_dormant")

    async def _receive(self, conn: AsyncV1SocketClient) -> None:
        try:
            async for message in conn:
                self._awaiting_since_ns = None
                self._heard = True
                self._handle(message)
        except websockets.exceptions.ConnectionClosedOK:
            pass
        except websockets.exceptions.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            if code == 1008:
                # DATA-0000: Deepgram cannot decode what we send; a reconnect would not help.
                reason = exc.rcvd.reason[:120] if exc.rcvd else ""
                raise ProviderBadRequest(
                    f"the audio was rejected ({reason or 'policy violation'})",
                    provider=PROVIDER,
                    status=code,
                ) from None
            raise _Dropped(f"closed ({code})") from None
        except (OSError, ValueError) as exc:
            raise _Dropped(type(exc).__name__) from None
        if not self._close_stream_sent:
            raise _Dropped("closed by the server")

    async def _send(self, conn: AsyncV1SocketClient, receiver: asyncio.Task[None]) -> None:
        owner = self._owner
        last_out_ns = time.monotonic_ns()
        try:
            while not receiver.done():
                now = time.monotonic_ns()
                if self._audio.pending and not self._close_stream_sent:
                    await conn.send_media(self._audio.take(_MAX_SEND_BYTES))
                    last_out_ns = now
                    self._audio_since_finalize = True
                    if self._awaiting_since_ns is None:
                        self._awaiting_since_ns = now
                    continue
                if self._closing and not self._close_stream_sent:
                    await conn.send_close_stream()
                    self._close_stream_sent = True
                    continue
                if self._close_stream_sent:
                    # The server sends its last results and Metadata, then closes.
                    await asyncio.wait({receiver}, timeout=owner.close_timeout_s)
                    receiver.cancel()
                    return
                idle_ns = now - self._last_feed_ns
                if self._audio.covered >= self._audio.sent:
                    # Every byte sent is already covered by a final: nothing to flush.
                    self._audio_since_finalize = False
                if self._audio_since_finalize and (
                    self._finalize_requested or idle_ns >= owner.finalize_after_idle_ns
                ):
                    await conn.send_finalize()
                    self.finalizes_sent += 1
                    self._audio_since_finalize = False
                    self._finalize_requested = False
                    last_out_ns = now
                    if self._awaiting_since_ns is None:
                        self._awaiting_since_ns = now
                    continue
                self._finalize_requested = False
                if idle_ns >= owner.close_after_idle_ns and self._awaiting_since_ns is None:
                    await conn.send_close_stream()
                    self._close_stream_sent = True
                    continue
                if self._awaiting_since_ns is not None and (
                    now - self._awaiting_since_ns >= owner.stall_timeout_ns
                ):
                    raise _Dropped("stalled")
                if now - last_out_ns >= owner.keepalive_ns:
                    await conn.send_keep_alive()
                    self.keepalives_sent += 1
                    last_out_ns = now
                    continue
                deadlines = [
                    last_out_ns + owner.keepalive_ns,
                    self._last_feed_ns + owner.close_after_idle_ns,
                ]
                if self._audio_since_finalize:
                    deadlines.append(self._last_feed_ns + owner.finalize_after_idle_ns)
                if self._awaiting_since_ns is not None:
                    deadlines.append(self._awaiting_since_ns + owner.stall_timeout_ns)
                timeout_s = max(0.0, (min(deadlines) - now) / 1e9)
                self._wake.clear()
                wake = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait(
                        {wake, receiver}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    wake.cancel()
        except websockets.exceptions.ConnectionClosed:
            # The receiver sees the same close and reports it.
            await asyncio.wait({receiver})
        except OSError as exc:
            raise _Dropped(type(exc).__name__) from None

    def _seconds(self, t: float) -> float:
        return round(self._conn_start / _BYTES_PER_SECOND + t, 3)

    def _handle(self, message: Any) -> None:
        now = time.monotonic_ns()
        if isinstance(message, ListenV1Results):
            alternatives = message.channel.alternatives
            alt = alternatives[0] if alternatives else None
            text = alt.transcript if alt is not None else ""
            end_t = message.start + message.duration
            if message.is_final:
                self._audio.acknowledge(self._conn_start + int(end_t * _BYTES_PER_SECOND))
            elif not text:
                return
            words = alt.words if alt is not None else []
            self._push(
                TranscriptEvent(
                    kind="final" if message.is_final else "interim",
                    received_ns=now,
                    text=text,
                    confidence=alt.confidence if alt is not None else None,
                    # A Finalize answer means we saw the speaker go quiet.
                    speech_final=bool(message.speech_final or message.from_finalize),
                    audio_start_s=self._seconds(message.start),
                    audio_end_s=self._seconds(words[-1].end if words else end_t),
                )
            )
        elif isinstance(message, ListenV1SpeechStarted):
            self._push(
                TranscriptEvent(
                    kind="speech_started",
                    received_ns=now,
                    audio_start_s=self._seconds(message.timestamp),
                )
            )
        elif isinstance(message, ListenV1UtteranceEnd):
            self._push(
                TranscriptEvent(
                    kind="utterance_end",
                    received_ns=now,
                    audio_end_s=self._seconds(message.last_word_end),
                )
            )
        elif isinstance(message, ListenV1Metadata):
            self._log.debug("deepgram_metadata", duration_s=message.duration)
        elif isinstance(message, ListenV1Error):
            self._log.warning(
                "deepgram_error_message",
                variant=message.variant,
                code=message.code,
                description=message.description,
            )
        else:
            self._log.debug("deepgram_message_skipped", kind=type(message).__name__)


class DeepgramTranscriber:
    """Deepgram listen v1: one :class:`DeepgramSpeechStream` per speaker, one shared client.

    Args:
        api_key: the Deepgram key (never logged).
        ws_base: websocket base URL (``DEEPGRAM_WS_BASE``); ``ws://127.0.0.1:P`` for a fake.
        http_base: REST base URL (``DEEPGRAM_HTTP_BASE``); unused by streaming but configured.
        model: Deepgram model; keyterms need ``nova-3``.
        language: BCP-47 language, e.g. ``"en"`` or ``"multi"``.
        endpointing_ms: silence Deepgram waits for before ``speech_final``.
        utterance_end_ms: word gap before ``UtteranceEnd`` (Deepgram's minimum is 1000);
            ``None`` turns it off.
        smart_format: punctuation and formatting of numbers, dates and the like.
        keepalive_s: KeepAlive interval while no audio flows.
        finalize_after_idle_s: send Finalize after this long without audio.
        close_after_idle_s: close the socket (dormant) after this long without audio.
        connect_timeout_s: bound on opening the websocket.
        stall_timeout_s: audio or Finalize sent and no message back for this long: reconnect.
        reconnect_backoff_base_s: first reconnect delay; doubles per failed attempt.
        reconnect_backoff_max_s: cap on the reconnect delay.
        max_reconnect_attempts: consecutive failed reconnects before the stream fails.
        replay_s: most audio replayed after a drop.
        max_pending_s: most unsent audio held (older audio is dropped and counted).
        event_queue_size: transcript events held for a slow consumer.
        close_timeout_s: how long :meth:`DeepgramSpeechStream.aclose` waits for final results.

    Raises:
        ValueError: on an inconsistent setting.
    """

    name = "deepgram"

    def __init__(
        self,
        api_key: str,
        *,
        ws_base: str = DEEPGRAM_WS_BASE,
        http_base: str = DEEPGRAM_HTTP_BASE,
        model: str = "nova-3",
        language: str = "en",
        endpointing_ms: int = 300,
        utterance_end_ms: int | None = 1000,
        smart_format: bool = True,
        keepalive_s: float = 3.0,
        finalize_after_idle_s: float = 0.5,
        close_after_idle_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        stall_timeout_s: float = 5.0,
        reconnect_backoff_base_s: float = 0.2,
        reconnect_backoff_max_s: float = 5.0,
        max_reconnect_attempts: int = 6,
        replay_s: float = 5.0,
        max_pending_s: float = 10.0,
        event_queue_size: int = 256,
        close_timeout_s: float = 2.0,
    ) -> None:
        if utterance_end_ms is not None and utterance_end_ms < 1000:
            raise ValueError("utterance_end_ms must be at least 1000 (Deepgram's minimum) or None")
        if not 0 < keepalive_s < 10:
            raise ValueError("keepalive_s must be between 0 and 10 (Deepgram closes after 10 s)")
        if finalize_after_idle_s <= 0 or close_after_idle_s <= finalize_after_idle_s:
            raise ValueError("need 0 < finalize_after_idle_s < close_after_idle_s")
        if replay_s < 0 or max_pending_s <= 0 or event_queue_size <= 0:
            raise ValueError("replay_s, max_pending_s and event_queue_size must be positive")
        self.model = model
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.smart_format = smart_format
        self.keepalive_ns = int(keepalive_s * 1e9)
        self.finalize_after_idle_ns = int(finalize_after_idle_s * 1e9)
        self.close_after_idle_ns = int(close_after_idle_s * 1e9)
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_ns = int(stall_timeout_s * 1e9)
        self.reconnect_backoff_base_s = reconnect_backoff_base_s
        self.reconnect_backoff_max_s = reconnect_backoff_max_s
        self.max_reconnect_attempts = max_reconnect_attempts
        self.replay_bytes = int(replay_s * _BYTES_PER_SECOND) & ~1
        self.max_pending_bytes = int(max_pending_s * _BYTES_PER_SECOND) & ~1
        self.event_queue_size = event_queue_size
        self.close_timeout_s = close_timeout_s
        # The dashboard's speech-to-text row (bound by the voice presence); None: no dashboard.
        self.report: StatusReporter | None = None
        self._http = httpx.AsyncClient(timeout=connect_timeout_s)
        self._client = AsyncDeepgramClient(
            api_key=api_key,
            environment=DeepgramClientEnvironment(
                base=http_base.rstrip("/"),
                production=ws_base.rstrip("/"),
                agent=ws_base.rstrip("/"),
                agent_rest=http_base.rstrip("/"),
            ),
            httpx_client=self._http,
        )
        self._streams: set[DeepgramSpeechStream] = set()

    def backoff_s(self, attempt: int) -> float:
        """Delay before reconnect ``attempt`` (1-based): capped exponential with jitter."""
        ceiling = min(
            self.reconnect_backoff_max_s, self.reconnect_backoff_base_s * 2 ** (attempt - 1)
        )
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not security

    def _connect(
        self, keyterms: list[str]
    ) -> contextlib.AbstractAsyncContextManager[AsyncV1SocketClient]:
        options: dict[str, Any] = {
            "model": self.model,
            "language": self.language,
            "encoding": "linear16",
            "sample_rate": SAMPLE_RATE_HZ,
            "channels": 1,
            "interim_results": True,
            "endpointing": self.endpointing_ms,
            "smart_format": self.smart_format,
            "vad_events": True,
        }
        if self.utterance_end_ms is not None:
            options["utterance_end_ms"] = self.utterance_end_ms
        if keyterms and self.model.startswith("nova-3"):
            options["keyterm"] = keyterms
        return self._client.listen.v1.connect(**options)

    async def open_stream(
        self, *, speaker_id: str, keyterms: Sequence[str] = ()
    ) -> DeepgramSpeechStream:
        """Open a stream for one speaker and wait until its websocket is up.

        Raises:
            ProviderAuthError: the key was refused (never retried).
            ProviderQuotaError: the account is out of credit.
            ProviderConnectionError: Deepgram could not be reached.
            ProviderTimeout: the websocket did not open within ``connect_timeout_s``.

        Cancellation: safe; a half-opened stream is closed.
        """
        stream = DeepgramSpeechStream(
            self, speaker_id=speaker_id, keyterms=normalise_keyterms(keyterms)
        )
        self._streams.add(stream)
        stream._start()
        try:
            await asyncio.shield(stream._ready)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    def _forget(self, stream: DeepgramSpeechStream) -> None:
        self._streams.discard(stream)

    async def aclose(self) -> None:
        """Close every stream (flushing each) and the HTTP client. Idempotent."""
        streams = list(self._streams)
        await asyncio.gather(*(s.aclose() for s in streams), return_exceptions=True)
        await self._http.aclose()
