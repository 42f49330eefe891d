"""Loopback fake of Deepgram's streaming speech-to-text websocket, ``/v1/listen``.

It speaks the wire format of ``reference/library-facts.md`` §3 so the real ``deepgram-sdk``
client can talk to it (point the SDK at it with
``DeepgramClientEnvironment(production=fake.ws_base_url, ...)``):

* the upgrade must carry ``Authorization: Token <api_key>``; anything else is refused with
  HTTP 401 before the upgrade (the SDK raises ``ApiError(status_code=401)``);
* binary frames are audio; text frames are the control messages ``KeepAlive``, ``Finalize``
  and ``CloseStream``;
* server messages are JSON text frames: ``Results``, ``SpeechStarted``, ``UtteranceEnd``,
  ``Metadata`` (builders below).

Each connection follows a :class:`Session` script, first in first out (:meth:`FakeDeepgram.script`);
with no script left a connection gets the default session (no transcripts). A script is a list of
:class:`Step`: a message released once the connection has received ``after_bytes`` of audio, or,
for ``on_finalize`` steps, when a ``Finalize`` arrives after that much audio. A Finalize that
releases nothing is answered with an empty ``from_finalize`` final, like the real service.

Faults: ``reject_status`` (refuse the upgrade), ``drop_after_bytes`` (cut the TCP connection
mid-utterance), ``close_after_bytes`` (a clean close with a chosen code, e.g. 1008 ``DATA-0000``),
``stall`` (read audio, answer nothing), ``latency_s`` (delay every message), and
``idle_timeout_s`` (close with 1011 ``NET-0001`` after that long without audio or KeepAlive, as
Deepgram does after 10 s).

Everything a connection received is recorded in :attr:`FakeDeepgram.sessions`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from multidict import MultiDict

from tests.fakes._server import FakeServer

__all__ = [
    "BYTES_PER_SECOND",
    "LISTEN_PATH",
    "DeepgramSession",
    "FakeDeepgram",
    "Session",
    "Step",
    "frames_of",
    "metadata",
    "pcm_tone",
    "results",
    "speech_started",
    "utterance",
    "utterance_end",
]

LISTEN_PATH = "/v1/listen"
BYTES_PER_SECOND = 48_000 * 2
"""48 kHz mono s16le, what the client is expected to send."""

_MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}


def results(
    text: str,
    *,
    is_final: bool,
    speech_final: bool = False,
    start: float = 0.0,
    duration: float = 1.0,
    from_finalize: bool = False,
    confidence: float = 0.98,
) -> dict[str, Any]:
    """A ``Results`` message; words are spread evenly over ``[start, start + duration]``."""
    tokens = text.split()
    step = duration / max(1, len(tokens))
    words = [
        {
            "word": token.strip(".,!?").lower(),
            "start": round(start + i * step, 3),
            "end": round(start + (i + 1) * step, 3),
            "confidence": confidence,
            "punctuated_word": token,
        }
        for i, token in enumerate(tokens)
    ]
    return {
        "type": "Results",
        "channel_index": [0, 1],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [{"transcript": text, "confidence": confidence, "words": words}]
        },
        "metadata": {
            "request_id": str(uuid.uuid4()),
            "model_info": _MODEL_INFO,
            "model_uuid": "00000000-0000-0000-0000-000000000003",
        },
    }


def speech_started(timestamp: float = 0.0) -> dict[str, Any]:
    """A ``SpeechStarted`` message (needs ``vad_events=true``)."""
    return {"type": "SpeechStarted", "channel": [0, 1], "timestamp": timestamp}


def utterance_end(last_word_end: float) -> dict[str, Any]:
    """An ``UtteranceEnd`` message (needs ``utterance_end_ms``)."""
    return {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": last_word_end}


def metadata(duration: float) -> dict[str, Any]:
    """The ``Metadata`` message sent before the server closes after ``CloseStream``."""
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": str(uuid.uuid4()),
        "sha256": "0" * 64,
        "created": "2026-01-01T00:00:00.000Z",
        "duration": duration,
        "channels": 1,
    }


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted server message.

    Attributes:
        after_bytes: audio the connection must have received before it is released.
        message: the JSON message.
        on_finalize: also wait for a ``Finalize`` (after ``after_bytes``).
    """

    after_bytes: int
    message: dict[str, Any]
    on_finalize: bool = False


@dataclass(slots=True)
class Session:
    """The script of one connection.

    Attributes:
        steps: messages released as audio arrives, in order.
        reject_status: refuse the upgrade with this HTTP status.
        drop_after_bytes: cut the TCP connection once this much audio arrived.
        stall: read everything, answer nothing (not even Finalize or CloseStream).
        latency_s: delay before each message goes out.
        idle_timeout_s: close with 1011 NET-0001 after this long without audio or KeepAlive.
        close_after_bytes: close the websocket cleanly with ``close_code``/``close_reason``
            once this much audio arrived (1008 ``DATA-0000`` is Deepgram's "cannot decode").
    """

    steps: list[Step] = field(default_factory=list)
    reject_status: int | None = None
    drop_after_bytes: int | None = None
    stall: bool = False
    latency_s: float = 0.0
    idle_timeout_s: float = 10.0
    close_after_bytes: int | None = None
    close_code: int = 1011
    close_reason: str = "NET-0000"


def utterance(
    text: str,
    *,
    audio_bytes: int,
    offset_bytes: int = 0,
    interim: bool = True,
    final_on_finalize: bool = False,
    utterance_end_after: bool = True,
) -> list[Step]:
    """Steps for one spoken sentence occupying ``audio_bytes`` of the connection's audio.

    ``SpeechStarted`` after the first 20 ms, an interim with the first half of the words at half
    the audio, the final with ``speech_final`` at the end (or held for a ``Finalize``), then
    ``UtteranceEnd``.
    """
    start = offset_bytes / BYTES_PER_SECOND
    duration = audio_bytes / BYTES_PER_SECOND
    end_bytes = offset_bytes + audio_bytes
    words = text.split()
    steps = [Step(offset_bytes + min(audio_bytes, 3840), speech_started(start))]
    if interim and len(words) > 1:
        half = " ".join(words[: len(words) // 2])
        steps.append(
            Step(
                offset_bytes + audio_bytes // 2,
                results(half, is_final=False, start=start, duration=duration / 2),
            )
        )
    steps.append(
        Step(
            end_bytes,
            results(
                text,
                is_final=True,
                speech_final=not final_on_finalize,
                from_finalize=final_on_finalize,
                start=start,
                duration=duration,
            ),
            on_finalize=final_on_finalize,
        )
    )
    if utterance_end_after:
        steps.append(
            Step(end_bytes, utterance_end(start + duration), on_finalize=final_on_finalize)
        )
    return steps


@dataclass(slots=True)
class DeepgramSession:
    """What one connection received and how it ended.

    Attributes:
        index: 0 for the first connection.
        query: the upgrade's query parameters (repeated ``keyterm`` kept).
        authorization: the ``Authorization`` header as sent.
        audio: every audio byte received.
        controls: control messages received, in order (decoded JSON).
        sent: messages the fake sent.
        ended: how it ended: ``"client_closed"``, ``"close_stream"``, ``"dropped"``,
            ``"idle_timeout"``, ``"closed_<code>"``, ``"rejected"``, or ``None`` while open.
    """

    index: int
    query: MultiDict[str]
    authorization: str | None
    audio: bytearray = field(default_factory=bytearray)
    controls: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    ended: str | None = None

    def count(self, kind: str) -> int:
        """How many control messages of ``kind`` (``"KeepAlive"``, ``"Finalize"``, ...)."""
        return sum(1 for c in self.controls if c.get("type") == kind)


class FakeDeepgram(FakeServer):
    """Deepgram ``/v1/listen`` on loopback.

    Args:
        api_key: the only key accepted.
    """

    def __init__(self, *, api_key: str = "dg-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.sessions: list[DeepgramSession] = []
        self._scripts: list[Session] = []
        self._changed = asyncio.Condition()
        self.app.router.add_get(LISTEN_PATH, self._listen)

    def script(self, *sessions: Session) -> None:
        """Queue scripts for the next connections, in order."""
        self._scripts.extend(sessions)

    async def wait_until(self, predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever traffic arrives.

        Raises:
            TimeoutError: it did not hold within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        record = DeepgramSession(
            index=len(self.sessions),
            query=MultiDict(request.query),
            authorization=request.headers.get("Authorization"),
        )
        self.sessions.append(record)
        await self._notify()
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            record.ended = "rejected"
            return self.http_error(
                401, body={"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}
            )
        # A connection refused for its key does not use up a script.
        script = self._scripts.pop(0) if self._scripts else Session()
        if script.reject_status is not None:
            record.ended = "rejected"
            return self.http_error(script.reject_status, body={"err_msg": "scripted rejection"})
        ws = await self.prepare_websocket(request)
        outbox: asyncio.Queue[tuple[float, dict[str, Any] | None]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_loop(ws, record, outbox))
        try:
            await self._receive_loop(request, ws, script, record, outbox)
            if record.ended == "close_stream":
                # Let the sender finish: Metadata, then the close handshake.
                await asyncio.wait({sender}, timeout=1.0)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await self._notify()
        return ws

    async def _send_loop(
        self,
        ws: web.WebSocketResponse,
        record: DeepgramSession,
        outbox: asyncio.Queue[tuple[float, dict[str, Any] | None]],
    ) -> None:
        while True:
            due, message = await outbox.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if message is None:
                await self.close_websocket(ws, code=1000)
                return
            await ws.send_str(json.dumps(message))
            record.sent.append(message)
            await self._notify()

    async def _receive_loop(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        script: Session,
        record: DeepgramSession,
        outbox: asyncio.Queue[tuple[float, dict[str, Any] | None]],
    ) -> None:
        pending = list(script.steps)

        def release(*, finalize: bool) -> int:
            released = 0
            received = len(record.audio)
            while pending and pending[0].after_bytes <= received:
                if pending[0].on_finalize and not finalize:
                    break
                outbox.put_nowait((time.monotonic() + script.latency_s, pending.pop(0).message))
                released += 1
            return released

        while True:
            try:
                async with asyncio.timeout(script.idle_timeout_s):
                    msg = await ws.receive()
            except TimeoutError:
                record.ended = "idle_timeout"
                await self.close_websocket(ws, code=1011, message=b"NET-0001")
                return
            if msg.type == WSMsgType.BINARY:
                record.audio += msg.data
                await self._notify()
                if (
                    script.drop_after_bytes is not None
                    and len(record.audio) >= script.drop_after_bytes
                ):
                    record.ended = "dropped"
                    await self.drop_connection(request)
                    return
                if (
                    script.close_after_bytes is not None
                    and len(record.audio) >= script.close_after_bytes
                ):
                    record.ended = f"closed_{script.close_code}"
                    await self.close_websocket(
                        ws, code=script.close_code, message=script.close_reason.encode()
                    )
                    return
                if not script.stall:
                    release(finalize=False)
            elif msg.type == WSMsgType.TEXT:
                control = json.loads(msg.data)
                record.controls.append(control)
                await self._notify()
                if script.stall:
                    continue
                kind = control.get("type")
                if kind == "Finalize" and not release(finalize=True):
                    end = len(record.audio) / BYTES_PER_SECOND
                    empty = results("", is_final=True, start=end, duration=0.0, from_finalize=True)
                    outbox.put_nowait((time.monotonic() + script.latency_s, empty))
                elif kind == "CloseStream":
                    release(finalize=True)
                    duration = len(record.audio) / BYTES_PER_SECOND
                    outbox.put_nowait((time.monotonic() + script.latency_s, metadata(duration)))
                    outbox.put_nowait((time.monotonic() + script.latency_s, None))
                    record.ended = "close_stream"
            else:
                # CLOSE / CLOSING / CLOSED / ERROR: the client went away.
                if record.ended is None:
                    record.ended = "client_closed"
                return


def pcm_tone(
    seconds: float, *, freq_hz: float = 220.0, amplitude: float = 0.3, rate_hz: int = 48_000
) -> bytes:
    """A sine tone as 48 kHz mono s16le: stands in for speech in tests."""
    n = int(round(seconds * rate_hz))
    t = np.arange(n) / rate_hz
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude * 32767).astype("<i2").tobytes()


def frames_of(pcm: bytes, frame_bytes: int = 1920) -> Sequence[bytes]:
    """``pcm`` cut into 20 ms mono frames, the way the voice receiver hands audio over."""
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
