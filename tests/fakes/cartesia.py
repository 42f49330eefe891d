"""Loopback fake of Cartesia text-to-speech: websocket ``/tts/websocket`` and ``POST /tts/bytes``.

It speaks the wire format of ``reference/library-facts.md`` §4 so the real ``cartesia`` SDK can
talk to it (``AsyncCartesia(base_url=fake.base_url, websocket_base_url=fake.ws_base_url)``):

* requests must carry ``Authorization: Bearer <api_key>``; otherwise HTTP 401 (before the
  websocket upgrade, or as the ``/tts/bytes`` answer);
* a generation request is ``{"context_id", "model_id", "transcript", "voice", "output_format",
  "continue", ...}``; ``voice`` may be a bare id, ``{"id": ...}`` or the older
  ``{"mode": "id", "id": ...}``; ``{"context_id", "cancel": true}`` cancels a context;
* answers are ``chunk`` (base64 PCM), ``timestamps`` (when ``add_timestamps``), ``flush_done``
  (when ``flush``), ``done`` (after a request with ``continue: false``) and ``error``.

The audio for a transcript is a sine tone (never silent) lasting ``seconds_per_char`` per
character, in the requested ``pcm_s16le``/``pcm_f32le`` rate, sent in ``chunk_ms`` pieces.
Word timestamps are spread evenly over each transcript's audio and are cumulative per context,
so a continuation's words start where the previous transcript's audio ended.

Faults: ``latency_to_first_audio_s`` (before a context's first chunk), ``chunk_interval_s``
(pacing), :meth:`FakeCartesia.fail_next` (an ``error`` event for the next request),
``drop_after_chunks`` (cut the TCP connection mid-reply), ``reject_status`` (refuse the upgrade).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from multidict import CIMultiDict

from tests.fakes._server import FakeServer

__all__ = [
    "BYTES_PATH",
    "WEBSOCKET_PATH",
    "CartesiaContext",
    "FakeCartesia",
    "tone",
]

WEBSOCKET_PATH = "/tts/websocket"
BYTES_PATH = "/tts/bytes"
_RATES = {8000, 16000, 22050, 24000, 44100, 48000}


def tone(
    seconds: float, *, rate_hz: int = 48_000, encoding: str = "pcm_s16le", freq_hz: float = 330.0
) -> bytes:
    """A sine tone of ``seconds`` in ``encoding`` at ``rate_hz``."""
    n = max(1, int(round(seconds * rate_hz)))
    wave = np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz) * 0.4
    if encoding == "pcm_f32le":
        return wave.astype("<f4").tobytes()
    return (wave * 32767).astype("<i2").tobytes()


def _wav(pcm: bytes, *, rate_hz: int, bits: int = 16) -> bytes:
    header = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVE"
    header += b"fmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate_hz, rate_hz * bits // 8, bits // 8, bits
    )
    return header + b"data" + struct.pack("<I", len(pcm)) + pcm


@dataclass(slots=True)
class CartesiaContext:
    """What the fake saw of one context.

    Attributes:
        context_id: the client's id.
        transcripts: every transcript received, in order (the final ``""`` included).
        requests: the raw generation requests.
        cancelled: a cancel request arrived.
        done: the fake sent ``done``.
        audio_bytes: audio sent for it.
        elapsed_s: where its audio clock stands (continuations start here).
    """

    context_id: str
    transcripts: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False
    audio_bytes: int = 0
    elapsed_s: float = 0.0
    chunks_sent: int = 0
    flushes: int = 0


@dataclass(frozen=True, slots=True)
class _Failure:
    status_code: int
    error_code: str
    message: str


class FakeCartesia(FakeServer):
    """Cartesia TTS on loopback.

    Args:
        api_key: the only key accepted.
        seconds_per_char: audio length per transcript character.
        chunk_ms: audio per ``chunk`` message.
    """

    def __init__(
        self, *, api_key: str = "ct-test-key", seconds_per_char: float = 0.01, chunk_ms: int = 40
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.seconds_per_char = seconds_per_char
        self.chunk_ms = chunk_ms
        self.latency_to_first_audio_s = 0.0
        self.chunk_interval_s = 0.0
        self.drop_after_chunks: int | None = None
        self.reject_status: int | None = None
        self.contexts: dict[str, CartesiaContext] = {}
        self.connections = 0
        self.messages: list[dict[str, Any]] = []
        self.handshake_headers: list[CIMultiDict[str]] = []
        self._failures: list[_Failure] = []
        self._changed = asyncio.Condition()
        self.app.router.add_get(WEBSOCKET_PATH, self._websocket)
        self.app.router.add_post(BYTES_PATH, self._bytes)

    def fail_next(
        self,
        status_code: int = 500,
        *,
        error_code: str = "internal_error",
        message: str = "scripted failure",
    ) -> None:
        """Answer the next generation request with an ``error`` event."""
        self._failures.append(_Failure(status_code, error_code, message))

    async def wait_until(self, predicate: Callable[[], bool], *, timeout_s: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; re-checked whenever traffic moves.

        Raises:
            TimeoutError: it did not hold within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    # -- POST /tts/bytes ---------------------------------------------------------

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return self.http_error(401, body={"error": "Invalid API key"})
        try:
            body = await request.json()
        except ValueError:
            return self.http_error(400, body={"error": "invalid JSON"})
        problem = self._invalid(body, websocket=False)
        if problem:
            return self.http_error(400, body={"error": problem})
        fmt = body["output_format"]
        await self.delay(self.latency_to_first_audio_s)
        rate = int(fmt.get("sample_rate", 44100))
        pcm = tone(
            len(body["transcript"]) * self.seconds_per_char,
            rate_hz=rate,
            encoding=fmt.get("encoding", "pcm_s16le"),
        )
        if fmt.get("container") == "wav":
            return web.Response(body=_wav(pcm, rate_hz=rate), content_type="audio/wav")
        return web.Response(body=pcm, content_type="application/octet-stream")

    def _invalid(self, body: Any, *, websocket: bool) -> str | None:
        if not isinstance(body, dict):
            return "request must be a JSON object"
        required = ("model_id", "transcript", "voice", "output_format") + (
            ("context_id",) if websocket else ()
        )
        for key in required:
            if key not in body:
                return f"missing field: {key}"
        voice = body["voice"]
        if isinstance(voice, dict):
            if not isinstance(voice.get("id"), str) or voice.get("mode", "id") != "id":
                return "voice must be {'id': ...}"
        elif not isinstance(voice, str):
            return "voice must be an id"
        fmt = body["output_format"]
        if not isinstance(fmt, dict) or fmt.get("container") not in {"raw", "wav"}:
            return "output_format.container must be raw or wav"
        if fmt.get("encoding") not in {"pcm_s16le", "pcm_f32le"}:
            return "unsupported encoding"
        if int(fmt.get("sample_rate", 0)) not in _RATES:
            return "unsupported sample_rate"
        return None

    # -- /tts/websocket -----------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        self.handshake_headers.append(CIMultiDict(request.headers))
        if not self._authorised(request):
            return self.http_error(401, body={"error": "Invalid API key"})
        if self.reject_status is not None:
            return self.http_error(self.reject_status, body={"error": "scripted rejection"})
        ws = await self.prepare_websocket(request)
        self.connections += 1
        await self._notify()
        send_lock = asyncio.Lock()
        chunks_on_connection = [0]
        workers: dict[str, asyncio.Task[None]] = {}
        queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}

        async def send(message: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_str(json.dumps(message))

        async def worker(ctx: CartesiaContext, queue: asyncio.Queue[dict[str, Any]]) -> None:
            while True:
                body = await queue.get()
                if ctx.cancelled:
                    return
                if self._failures:
                    failure = self._failures.pop(0)
                    await send(
                        {
                            "type": "error",
                            "context_id": ctx.context_id,
                            "done": True,
                            "status_code": failure.status_code,
                            "error_code": failure.error_code,
                            "title": "Scripted error",
                            "message": failure.message,
                        }
                    )
                    ctx.done = True
                    await self._notify()
                    return
                await self._generate(ctx, body, send, request, chunks_on_connection)
                if not body.get("continue", False):
                    await send(
                        {
                            "type": "done",
                            "context_id": ctx.context_id,
                            "done": True,
                            "status_code": 206,
                        }
                    )
                    ctx.done = True
                    await self._notify()
                    return

        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    await send(
                        {
                            "type": "error",
                            "done": True,
                            "status_code": 400,
                            "message": "invalid JSON",
                        }
                    )
                    continue
                self.messages.append(body)
                context_id = body.get("context_id") if isinstance(body, dict) else None
                if not isinstance(context_id, str):
                    await send(
                        {
                            "type": "error",
                            "done": True,
                            "status_code": 400,
                            "message": "missing context_id",
                        }
                    )
                    continue
                ctx = self.contexts.setdefault(context_id, CartesiaContext(context_id))
                if body.get("cancel"):
                    ctx.cancelled = True
                    task = workers.get(context_id)
                    if task is not None:
                        task.cancel()
                    await self._notify()
                    continue
                problem = self._invalid(body, websocket=True)
                if problem:
                    await send(
                        {
                            "type": "error",
                            "context_id": context_id,
                            "done": True,
                            "status_code": 400,
                            "message": problem,
                        }
                    )
                    continue
                ctx.requests.append(body)
                ctx.transcripts.append(body["transcript"])
                await self._notify()
                if ctx.cancelled or ctx.done:
                    continue
                if context_id not in workers:
                    queues[context_id] = asyncio.Queue()
                    workers[context_id] = asyncio.create_task(worker(ctx, queues[context_id]))
                queues[context_id].put_nowait(body)
        finally:
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)
            await self._notify()
        return ws

    async def _generate(
        self,
        ctx: CartesiaContext,
        body: dict[str, Any],
        send: Callable[[dict[str, Any]], Any],
        request: web.Request,
        chunks_on_connection: list[int],
    ) -> None:
        transcript: str = body["transcript"]
        fmt = body["output_format"]
        rate = int(fmt["sample_rate"])
        encoding = fmt["encoding"]
        seconds = len(transcript) * self.seconds_per_char
        if body.get("add_timestamps") and transcript.split():
            words = transcript.split()
            step = seconds / len(words)
            start = ctx.elapsed_s
            await send(
                {
                    "type": "timestamps",
                    "context_id": ctx.context_id,
                    "done": False,
                    "status_code": 206,
                    "word_timestamps": {
                        "words": words,
                        "start": [round(start + i * step, 4) for i in range(len(words))],
                        "end": [round(start + (i + 1) * step, 4) for i in range(len(words))],
                    },
                }
            )
        if seconds > 0:
            if ctx.chunks_sent == 0:
                await self.delay(self.latency_to_first_audio_s)
            pcm = tone(seconds, rate_hz=rate, encoding=encoding)
            sample_bytes = 4 if encoding == "pcm_f32le" else 2
            chunk_bytes = rate * self.chunk_ms // 1000 * sample_bytes
            for i in range(0, len(pcm), chunk_bytes):
                piece = pcm[i : i + chunk_bytes]
                await send(
                    {
                        "type": "chunk",
                        "context_id": ctx.context_id,
                        "data": base64.b64encode(piece).decode(),
                        "done": False,
                        "status_code": 206,
                        "step_time": 1.0,
                    }
                )
                ctx.chunks_sent += 1
                ctx.audio_bytes += len(piece)
                chunks_on_connection[0] += 1
                if (
                    self.drop_after_chunks is not None
                    and chunks_on_connection[0] >= self.drop_after_chunks
                ):
                    self.drop_after_chunks = None
                    await self.drop_connection(request)
                    return
                await self.delay(self.chunk_interval_s)
            ctx.elapsed_s += seconds
        if body.get("flush"):
            ctx.flushes += 1
            await send(
                {
                    "type": "flush_done",
                    "context_id": ctx.context_id,
                    "flush_id": ctx.flushes,
                    "flush_done": True,
                    "done": False,
                    "status_code": 206,
                }
            )
        await self._notify()
