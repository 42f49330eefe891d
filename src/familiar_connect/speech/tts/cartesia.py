"""Cartesia streaming text-to-speech behind the :class:`Synthesizer` protocol.

One websocket (``cartesia`` SDK, ``AsyncCartesia.tts.websocket_connect()``) is kept open between
replies so a reply does not pay for a TLS and websocket handshake; it is opened lazily by the
first reply (or by :meth:`CartesiaSynthesizer.warm`, e.g. when a person starts talking) and
reopened lazily after it drops. Each reply is one Cartesia **context**: every clause is sent as
a continuation (``continue: true``) so prosody flows across clauses, and :meth:`finish` sends
the closing empty transcript (``continue: false``). Output is ``pcm_s16le`` at 48 kHz with word
timestamps, and :meth:`CartesiaContext.cancel` sends ``{"cancel": true}`` on barge-in.

The SDK's own per-context router (``context().receive()``) waits forever when the socket drops,
so this module drives the SDK connection's public ``send``/``recv`` and routes events itself:
one reader task per connection hands each event to its context, and a drop fails every open
context with :class:`~familiar_connect.errors.ProviderConnectionError` (the caller falls back to
text). A context's buffered audio is bounded (``max_buffered_s``): a consumer that stops reading
gets its context failed and cancelled rather than holding memory forever.

Errors are translated at this boundary: a refused key (401/403) is
:class:`~familiar_connect.errors.ProviderAuthError` and is never retried; an ``error`` event maps
its ``status_code`` to the most specific :class:`~familiar_connect.errors.ProviderError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
import websockets.exceptions
from cartesia import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncCartesia,
)
from cartesia.types.websocket_response import Chunk, Done, Error, FlushDone, Timestamps

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderTimeout,
)
from familiar_connect.llm.sse import error_for_status
from familiar_connect.speech.tts.base import SAMPLE_RATE_HZ, AudioChunk, ReplyBuffer, WordTiming

if TYPE_CHECKING:
    from cartesia.lib._tts import AsyncTTSResourceConnection

__all__ = [
    "CARTESIA_BASE_URL",
    "CARTESIA_WS_BASE_URL",
    "CartesiaContext",
    "CartesiaSynthesizer",
]

log = structlog.get_logger(__name__)

CARTESIA_BASE_URL = "https://api.cartesia.ai"
CARTESIA_WS_BASE_URL = "wss://api.cartesia.ai"
PROVIDER = "cartesia"

OUTPUT_FORMAT: dict[str, Any] = {
    "container": "raw",
    "encoding": "pcm_s16le",
    "sample_rate": SAMPLE_RATE_HZ,
}
_BYTES_PER_SECOND = SAMPLE_RATE_HZ * 2
_MAX_TEXT_CHARS = 2000


def _status_error(status: int | None, message: str) -> ProviderError:
    if status in (401, 403):
        return ProviderAuthError(
            "the API key was refused; check CARTESIA_API_KEY", provider=PROVIDER, status=status
        )
    return error_for_status(status, message, provider=PROVIDER)


def _connect_error(exc: BaseException) -> ProviderError:
    """Translate a failure to open the websocket (the exception text is never echoed)."""
    if isinstance(exc, websockets.exceptions.InvalidStatus):
        return _status_error(exc.response.status_code, "the websocket upgrade was refused")
    if isinstance(exc, TimeoutError):
        return ProviderTimeout("timed out opening the websocket", provider=PROVIDER)
    return ProviderConnectionError(
        f"could not open the websocket ({type(exc).__name__})", provider=PROVIDER
    )


class _Connection:
    """One SDK websocket and the task that routes its events to contexts."""

    def __init__(self, owner: CartesiaSynthesizer, conn: AsyncTTSResourceConnection) -> None:
        self.owner = owner
        self.conn = conn
        self.contexts: dict[str, CartesiaContext] = {}
        self.closed = False
        self.reader = asyncio.create_task(self._read(), name="cartesia-reader")

    async def _read(self) -> None:
        failure: ProviderError
        try:
            while True:
                event = await self.conn.recv()
                context_id = getattr(event, "context_id", None)
                ctx = self.contexts.get(context_id) if context_id is not None else None
                if ctx is not None:
                    ctx._deliver(event)
                elif isinstance(event, Error):
                    # An error for no known context concerns the whole connection.
                    error = _status_error(
                        event.status_code, event.message or "error without a context"
                    )
                    for open_ctx in list(self.contexts.values()):
                        open_ctx._fail(error)
                else:
                    self.owner.stray_events += 1
        except websockets.exceptions.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            failure = ProviderConnectionError(
                "the websocket closed mid-reply", provider=PROVIDER, status=code
            )
        except OSError as exc:
            failure = ProviderConnectionError(
                f"the websocket failed ({type(exc).__name__})", provider=PROVIDER
            )
        except ValueError:
            failure = ProviderProtocolError("an event did not parse", provider=PROVIDER)
            with contextlib.suppress(OSError, websockets.exceptions.WebSocketException):
                await self.conn.close(code=1002)
        self.closed = True
        open_contexts = list(self.contexts.values())
        self.contexts.clear()
        for ctx in open_contexts:
            ctx._fail(failure)
        if self.owner._closing:
            return
        if open_contexts:
            log.warning(
                "cartesia_connection_lost",
                error=type(failure).__name__,
                status=failure.status,
                replies_failed=len(open_contexts),
            )
        else:
            # Cartesia closes idle sockets; the next reply reopens it.
            log.info("cartesia_connection_closed_idle", status=failure.status)

    async def close(self) -> None:
        self.closed = True
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        with contextlib.suppress(OSError, websockets.exceptions.WebSocketException):
            await self.conn.close()


class CartesiaContext:
    """One reply being spoken over the shared websocket.

    Created by :meth:`CartesiaSynthesizer.new_context`. :meth:`say` and :meth:`finish` may run
    while another task iterates :meth:`stream`.

    Cancellation: :meth:`cancel` stops generation at Cartesia and ends :meth:`stream` quietly;
    cancelling a task blocked in :meth:`stream` leaves the context open (call :meth:`cancel`).
    """

    def __init__(self, owner: CartesiaSynthesizer, connection: _Connection) -> None:
        self.context_id = str(uuid.uuid4())
        self._owner = owner
        self._connection = connection
        self._buffer = ReplyBuffer(owner.max_buffered_bytes)
        self._ready = asyncio.Event()
        self._done = False
        self._cancelled = False
        self._finished = False
        self._failure: ProviderError | None = None
        self._last_activity_ns = time.monotonic_ns()
        self._unanswered = False
        self.first_audio_ns: int | None = None
        self.audio_bytes = 0
        connection.contexts[self.context_id] = self

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` ran."""
        return self._cancelled

    def _request(self, transcript: str, *, more: bool) -> dict[str, Any]:
        owner = self._owner
        body: dict[str, Any] = {
            "context_id": self.context_id,
            "model_id": owner.model_id,
            "transcript": transcript,
            "voice": {"id": owner.voice_id},
            "output_format": OUTPUT_FORMAT,
            "continue": more,
            "add_timestamps": True,
        }
        if owner.language:
            body["language"] = owner.language
        if owner.max_buffer_delay_ms is not None:
            body["max_buffer_delay_ms"] = owner.max_buffer_delay_ms
        return body

    async def _send(self, body: dict[str, Any]) -> None:
        if self._connection.closed:
            raise self._failure or ProviderConnectionError(
                "the websocket is closed", provider=PROVIDER
            )
        try:
            await self._connection.conn.send(body)
        except (OSError, websockets.exceptions.WebSocketException) as exc:
            error = ProviderConnectionError(
                f"could not send to the websocket ({type(exc).__name__})", provider=PROVIDER
            )
            self._fail(error)
            raise error from exc
        if not self._unanswered:
            self._unanswered = True
            self._last_activity_ns = time.monotonic_ns()

    async def say(self, text: str) -> None:
        """Send the next clause as a continuation; ignored after :meth:`cancel`.

        A space is appended when ``text`` does not end in whitespace, because Cartesia joins
        continuations as they are. Text longer than 2000 characters is cut.

        Raises:
            ProviderError: the context already failed, or the send failed (the context fails).
            RuntimeError: :meth:`finish` was already called.
        """
        if self._cancelled:
            return
        if self._failure is not None:
            raise self._failure
        if self._finished:
            raise RuntimeError("say() after finish()")
        text = text[:_MAX_TEXT_CHARS]
        if not text.strip():
            return
        if not text[-1].isspace():
            text += " "
        await self._send(self._request(text, more=True))

    async def finish(self) -> None:
        """No more text: Cartesia finishes the audio and :meth:`stream` ends after ``done``.

        Raises:
            ProviderError: the context already failed, or the send failed.
        """
        if self._cancelled or self._finished:
            return
        if self._failure is not None:
            raise self._failure
        self._finished = True
        await self._send(self._request("", more=False))

    async def stream(self) -> AsyncIterator[AudioChunk | WordTiming]:
        """Audio (48 kHz mono s16le) and word timings as they arrive, until ``done``.

        Ends quietly after :meth:`cancel`.

        Raises:
            ProviderError: Cartesia answered an error, the websocket dropped, or it stalled
                (:class:`ProviderTimeout`, see ``stall_timeout_s``).
        """
        stall_ns = self._owner.stall_timeout_ns
        while True:
            for item in self._buffer.take():
                yield item
            if self._cancelled or self._done:
                return
            if self._failure is not None:
                raise self._failure
            self._ready.clear()
            if not (self._finished or self._unanswered):
                # Waiting for the next clause from the LLM: no deadline of ours.
                await self._ready.wait()
                continue
            remaining_s = (self._last_activity_ns + stall_ns - time.monotonic_ns()) / 1e9
            try:
                async with asyncio.timeout(max(0.0, remaining_s)):
                    await self._ready.wait()
            except TimeoutError:
                error = ProviderTimeout("no audio arrived in time", provider=PROVIDER)
                self._fail(error)
                await self._cancel_remote()

    async def cancel(self) -> None:
        """Stop now (barge-in): tell Cartesia to stop, drop buffered audio. Idempotent."""
        if self._cancelled:
            return
        self._cancelled = True
        self._buffer.clear()
        self._ready.set()
        if not self._done and self._failure is None:
            await self._cancel_remote()
        self._connection.contexts.pop(self.context_id, None)

    async def _cancel_remote(self) -> None:
        self._connection.contexts.pop(self.context_id, None)
        if self._connection.closed:
            return
        try:
            await self._connection.conn.send({"context_id": self.context_id, "cancel": True})
        except (OSError, websockets.exceptions.WebSocketException):
            log.debug("cartesia_cancel_not_sent", context_id=self.context_id)

    def _deliver(self, event: Any) -> None:
        now = time.monotonic_ns()
        self._last_activity_ns = now
        self._unanswered = False
        if self._cancelled:
            return
        if isinstance(event, Chunk):
            pcm = event.audio or b""
            if pcm:
                if self.first_audio_ns is None:
                    self.first_audio_ns = now
                self.audio_bytes += len(pcm)
                if not self._buffer.add_audio(AudioChunk(pcm=pcm, received_ns=now)):
                    self._owner.overflows += 1
                    log.warning("cartesia_context_overflow", context_id=self.context_id)
                    self._fail(
                        ProviderError("audio was not consumed; reply dropped", provider=PROVIDER)
                    )
                    self._connection.contexts.pop(self.context_id, None)
                    task = asyncio.get_running_loop().create_task(self._cancel_remote())
                    self._owner._background.add(task)
                    task.add_done_callback(self._owner._background.discard)
        elif isinstance(event, Timestamps):
            stamps = event.word_timestamps
            if stamps is not None:
                for word, start, end in zip(stamps.words, stamps.start, stamps.end, strict=False):
                    self._buffer.add_timing(
                        WordTiming(word=word, start_s=float(start), end_s=float(end))
                    )
        elif isinstance(event, Done):
            self._done = True
            self._connection.contexts.pop(self.context_id, None)
        elif isinstance(event, Error):
            self._fail(_status_error(event.status_code, event.message or event.title or "error"))
            self._connection.contexts.pop(self.context_id, None)
        elif isinstance(event, FlushDone):
            pass
        self._ready.set()

    def _fail(self, error: ProviderError) -> None:
        if self._failure is None and not self._done and not self._cancelled:
            self._failure = error
        self._ready.set()


class CartesiaSynthesizer:
    """Cartesia TTS over one warm websocket, one context per reply.

    Args:
        api_key: the Cartesia key (never logged).
        base_url: REST base (``CARTESIA_BASE_URL``), used by :meth:`synthesize`.
        ws_base_url: websocket base (``CARTESIA_WS_BASE_URL``); ``ws://127.0.0.1:P`` for a fake.
        voice_id: the voice, from the character's ``[voice]`` table.
        model_id: the Cartesia model, e.g. ``"sonic-3"``.
        language: language code, e.g. ``"en"``; a BCP-47 tag such as ``"en-GB"`` is cut to
            its primary language, which is what Cartesia accepts.
        max_buffer_delay_ms: Cartesia's server-side text buffering; 0 (default) speaks each
            clause as soon as it arrives, because our clause chunker already buffers.
        connect_timeout_s: bound on opening the websocket.
        stall_timeout_s: a reply fails with :class:`ProviderTimeout` when text was sent and
            nothing came back for this long, or, after :meth:`CartesiaContext.finish`, when
            events stop for this long before ``done``.
        max_buffered_s: audio a context may hold unread before it is failed.
        request_timeout_s: bound on :meth:`synthesize`.
    """

    name = "cartesia"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = CARTESIA_BASE_URL,
        ws_base_url: str = CARTESIA_WS_BASE_URL,
        voice_id: str,
        model_id: str = "sonic-3",
        language: str | None = "en",
        max_buffer_delay_ms: int | None = 0,
        connect_timeout_s: float = 5.0,
        stall_timeout_s: float = 10.0,
        max_buffered_s: float = 120.0,
        request_timeout_s: float = 30.0,
    ) -> None:
        if not voice_id:
            raise ValueError("voice_id is required")
        self.voice_id = voice_id
        self.model_id = model_id
        # Cartesia takes a bare language code ("en"), not a BCP-47 tag ("en-GB").
        self.language = language.split("-")[0].lower() if language else None
        self.max_buffer_delay_ms = max_buffer_delay_ms
        self.connect_timeout_s = connect_timeout_s
        self.stall_timeout_ns = int(stall_timeout_s * 1e9)
        self.max_buffered_bytes = int(max_buffered_s * _BYTES_PER_SECOND)
        self._client = AsyncCartesia(
            api_key=api_key,
            base_url=base_url.rstrip("/"),
            websocket_base_url=ws_base_url.rstrip("/"),
            timeout=request_timeout_s,
            max_retries=0,
        )
        self._connection: _Connection | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self.connects = 0
        self.overflows = 0
        self.stray_events = 0

    @property
    def connected(self) -> bool:
        """Whether the websocket is open."""
        return self._connection is not None and not self._connection.closed

    async def warm(self) -> None:
        """Open the websocket now if it is not open (e.g. when someone starts speaking).

        Raises:
            ProviderAuthError: the key was refused.
            ProviderConnectionError: Cartesia could not be reached.
            ProviderTimeout: the websocket did not open in time.
        """
        await self._ensure_connection()

    async def _ensure_connection(self) -> _Connection:
        async with self._lock:
            current = self._connection
            if current is not None and not current.closed:
                return current
            if current is not None:
                await current.close()
                self._connection = None
            if self._closing:
                raise ProviderConnectionError("the synthesizer is closed", provider=PROVIDER)
            manager = self._client.tts.websocket_connect()
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    conn = await manager.enter()
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                error = _connect_error(exc)
                log.warning(
                    "cartesia_connect_failed", error=type(error).__name__, status=error.status
                )
                raise error from exc
            self.connects += 1
            self._connection = _Connection(self, conn)
            log.info("cartesia_connected", reconnect=self.connects > 1)
            return self._connection

    async def new_context(self) -> CartesiaContext:
        """Start a reply on the warm websocket (opening it first if needed).

        Raises:
            ProviderAuthError: the key was refused (never retried).
            ProviderConnectionError: Cartesia could not be reached.
            ProviderTimeout: the websocket did not open in time.

        Cancellation: safe; a half-open connection is discarded by the next call.
        """
        return CartesiaContext(self, await self._ensure_connection())

    async def synthesize(self, text: str) -> bytes:
        """Synthesise ``text`` in one request (``POST /tts/bytes``), e.g. for a cached greeting.

        Returns:
            48 kHz mono s16le PCM.

        Raises:
            ProviderError: mapped from the HTTP status or the transport failure.
        """
        try:
            response = await self._client.tts.generate(
                model_id=self.model_id,
                transcript=text[:_MAX_TEXT_CHARS],
                voice={"id": self.voice_id},
                output_format=OUTPUT_FORMAT,  # type: ignore[arg-type]
                **({"language": self.language} if self.language else {}),  # type: ignore[arg-type]
            )
            return await response.read()
        except APIStatusError as exc:
            raise _status_error(exc.status_code, "the request was refused") from exc
        except APITimeoutError as exc:
            raise ProviderTimeout("the request timed out", provider=PROVIDER) from exc
        except APIConnectionError as exc:
            raise ProviderConnectionError("could not reach the API", provider=PROVIDER) from exc

    async def aclose(self) -> None:
        """Close the websocket and the HTTP client. Idempotent."""
        self._closing = True
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        async with self._lock:
            if self._connection is not None:
                await self._connection.close()
                self._connection = None
        await self._client.close()
