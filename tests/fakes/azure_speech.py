"""Minimal loopback fake of Azure Speech: the SDK's websocket protocol ("USP"), STT and TTS.

The real ``azure-cognitiveservices-speech`` SDK talks to it when pointed at it with
``SpeechConfig(host=fake.ws_base_url, subscription=key)`` (``reference/library-facts.md`` §5).
The protocol is undocumented, so this fake implements only what SDK 1.53.0 was seen to send
and accept; real behaviour is covered by the manual smoke check.

Wire format (both directions):

* text frames are ``Header:Value\\r\\n...\\r\\n\\r\\n<body>`` (:func:`usp_text`, :func:`parse_usp`);
* binary frames are ``uint16be header_len + ASCII headers + payload`` (:func:`usp_binary`).

The upgrade must carry ``Ocp-Apim-Subscription-Key: <key>`` (anything else: HTTP 401, which the
SDK reports as ``CancellationErrorCode.AuthenticationFailure``) and the ``USP`` subprotocol.

**Speech-to-text**, ``GET /speech/recognition/conversation/cognitiveservices/v1?language=…``:
the client sends ``speech.config``, ``speech.context`` and binary ``audio`` (the first chunk is a
44-byte WAV header, an empty one ends the stream), plus ``telemetry``. The fake answers from an
:class:`SttScript` (first in, first out; default: no transcripts): ``turn.start`` on the first
audio, then each :class:`SttStep` once enough audio has arrived (and, for ``on_silence`` steps,
once the audio ends in ``silence_ms`` of digital silence, standing in for the service's
endpointing), and at the end of the stream the remaining steps, ``speech.endDetected`` and
``turn.end``. Message builders: :func:`speech_start`, :func:`hypothesis`, :func:`phrase`,
:func:`end_detected`, and :func:`utterance` for the usual sequence.

**Text-to-speech**, ``GET /cognitiveservices/websocket/v1``: per request the client sends
``synthesis.context`` (output format, metadata options) and ``ssml``; the fake answers
``turn.start``, ``response``, binary ``audio`` chunks of a sine tone (``seconds_per_char`` per
character of the SSML's text, in ``chunk_ms`` pieces, paced by ``chunk_interval_s``), an
``audio.metadata`` word boundary per word when the client asked for them, and ``turn.end``.
Only ``raw-48khz-16bit-mono-pcm`` and ``raw-16khz-16bit-mono-pcm`` are produced.

Faults: ``reject_status`` (refuse every upgrade with an HTTP status), ``SttScript.reject_status``
(refuse one recognition connection), ``SttScript.drop_after_ms`` (cut the TCP connection),
``SttScript.close_code`` (close with a code and reason after ``close_after_ms``), and per TTS
request, first in first out: :meth:`FakeAzureSpeech.fail_next_synthesis` (close the websocket
with a code and reason instead of answering), :meth:`~FakeAzureSpeech.stall_next_synthesis`
(accept it and send nothing), :meth:`~FakeAzureSpeech.answer_next_synthesis`.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes._server import FakeServer

__all__ = [
    "STT_PATH",
    "TTS_PATH",
    "FakeAzureSpeech",
    "SttScript",
    "SttSession",
    "SttStep",
    "TtsRequest",
    "UspMessage",
    "end_detected",
    "hypothesis",
    "parse_usp",
    "phrase",
    "speech_start",
    "usp_binary",
    "usp_text",
    "utterance",
]

STT_PATH = "/speech/recognition/conversation/cognitiveservices/v1"
TTS_PATH = "/cognitiveservices/websocket/v1"
TICKS_PER_S = 10_000_000
_STT_BYTES_PER_MS = 32  # 16 kHz mono s16le
_WAV_HEADER_BYTES = 44
_TTS_RATES = {"raw-48khz-16bit-mono-pcm": 48_000, "raw-16khz-16bit-mono-pcm": 16_000}
_TAG = re.compile(r"<[^>]+>")


# -- wire format ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UspMessage:
    """One USP message: its ``Path``, all headers, and the body (str for text, bytes for binary)."""

    path: str
    headers: Mapping[str, str]
    body: str | bytes

    def json(self) -> Any:
        """The body decoded as JSON (``None`` when it is not JSON)."""
        try:
            return json.loads(self.body)
        except (TypeError, ValueError):
            return None


def _headers(block: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in block.split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


def parse_usp(data: str | bytes) -> UspMessage:
    """Parse a text or binary USP frame."""
    if isinstance(data, str):
        head, _, body = data.partition("\r\n\r\n")
        headers = _headers(head)
        return UspMessage(headers.get("Path", ""), headers, body)
    (size,) = struct.unpack(">H", data[:2])
    headers = _headers(data[2 : 2 + size].decode("ascii", "replace"))
    return UspMessage(headers.get("Path", ""), headers, bytes(data[2 + size :]))


def usp_text(
    path: str,
    request_id: str,
    body: Mapping[str, Any] | str,
    *,
    content_type: str = "application/json; charset=utf-8",
) -> str:
    """Build a text frame as the service sends it."""
    text = body if isinstance(body, str) else json.dumps(body)
    return f"Path:{path}\r\nX-RequestId:{request_id}\r\nContent-Type:{content_type}\r\n\r\n{text}"


def usp_binary(headers: Mapping[str, str], payload: bytes) -> bytes:
    """Build a binary frame: ``uint16be`` header length, ASCII headers, payload."""
    block = "\r\n".join(f"{k}:{v}" for k, v in headers.items()).encode("ascii")
    return struct.pack(">H", len(block)) + block + payload


# -- speech-to-text script --------------------------------------------------------------------


def _ticks(seconds: float) -> int:
    return int(round(seconds * TICKS_PER_S))


def speech_start(offset_s: float) -> tuple[str, dict[str, Any]]:
    """``speech.startDetected``: voice began at ``offset_s`` of the stream's audio."""
    return "speech.startDetected", {"Offset": _ticks(offset_s)}


def hypothesis(text: str, *, offset_s: float, duration_s: float) -> tuple[str, dict[str, Any]]:
    """``speech.hypothesis``: an interim result (the SDK's ``recognizing``)."""
    return "speech.hypothesis", {
        "Text": text,
        "Offset": _ticks(offset_s),
        "Duration": _ticks(duration_s),
    }


def phrase(
    text: str,
    *,
    offset_s: float,
    duration_s: float,
    status: str = "Success",
    confidence: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """``speech.phrase``: a final result (the SDK's ``recognized``); ``NoMatch`` for silence.

    With ``confidence``, the detailed shape (``NBest``) is sent as well.
    """
    body: dict[str, Any] = {
        "RecognitionStatus": status,
        "Offset": _ticks(offset_s),
        "Duration": _ticks(duration_s),
    }
    if status == "Success":
        body["DisplayText"] = text
        if confidence is not None:
            body["NBest"] = [
                {
                    "Confidence": confidence,
                    "Lexical": text.lower(),
                    "ITN": text.lower(),
                    "MaskedITN": text.lower(),
                    "Display": text,
                }
            ]
    return "speech.phrase", body


def end_detected(offset_s: float) -> tuple[str, dict[str, Any]]:
    """``speech.endDetected``: the service saw the end of speech at ``offset_s``."""
    return "speech.endDetected", {"Offset": _ticks(offset_s)}


@dataclass(frozen=True, slots=True)
class SttStep:
    """A message released once ``after_ms`` of audio has arrived (and silence, if ``on_silence``).

    Attributes:
        after_ms: position in the client's 16 kHz audio stream, in milliseconds (the WAV
            header not counted; see :attr:`SttSession.position_ms`).
        message: ``(path, body)`` from a builder.
        on_silence: also wait until the audio ends in the script's ``silence_ms`` of zeros.
    """

    after_ms: int
    message: tuple[str, dict[str, Any]]
    on_silence: bool = False


def utterance(
    text: str,
    *,
    start_s: float = 0.1,
    duration_s: float = 0.8,
    confidence: float | None = 0.93,
    on_silence: bool = True,
) -> list[SttStep]:
    """The usual sequence for one phrase: start detected, a hypothesis, the phrase.

    The hypothesis (first half of the words) is released halfway through the speech; the phrase
    after the speech has arrived and, with ``on_silence``, been followed by silence.
    """
    start_ms = int(start_s * 1000)
    end_ms = int((start_s + duration_s) * 1000)
    words = text.split()
    steps = [SttStep(start_ms + 20, speech_start(start_s))]
    if len(words) > 1:
        half = " ".join(words[: len(words) // 2]).lower().strip(",.?!")
        steps.append(
            SttStep(
                (start_ms + end_ms) // 2,
                hypothesis(half, offset_s=start_s, duration_s=duration_s / 2),
            )
        )
    steps.append(
        SttStep(
            end_ms,
            phrase(text, offset_s=start_s, duration_s=duration_s, confidence=confidence),
            on_silence=on_silence,
        )
    )
    return steps


@dataclass(slots=True)
class SttScript:
    """How one recognition connection behaves.

    Attributes:
        steps: messages to release, in order.
        silence_ms: trailing digital silence that counts as the end of a phrase.
        reject_status: refuse the upgrade with this HTTP status.
        drop_after_ms: cut the TCP connection once this much audio arrived.
        close_code / close_reason / close_after_ms: close the websocket with a code instead.
    """

    steps: list[SttStep] = field(default_factory=list)
    silence_ms: int = 300
    reject_status: int | None = None
    drop_after_ms: int | None = None
    close_code: int | None = None
    close_reason: str = ""
    close_after_ms: int = 0


@dataclass(slots=True)
class SttSession:
    """What one recognition connection received and how it ended.

    Attributes:
        index: 0 for the first connection.
        query: the upgrade's query parameters.
        key: the ``Ocp-Apim-Subscription-Key`` header as sent.
        protocol: the websocket subprotocol the client asked for.
        paths: every client message's ``Path``, in order (audio chunks included).
        speech_config: the decoded ``speech.config`` body.
        speech_context: the decoded ``speech.context`` body.
        wav_header: the first audio chunk (a WAV header).
        audio: every audio byte after the header.
        sent: the paths the fake sent.
        turns: turns started (the SDK starts a continuation turn after each ``turn.end``).
        ended: ``"end_of_stream"``, ``"client_closed"``, ``"dropped"``, ``"closed_<code>"``,
            ``"rejected"``, or ``None`` while open.
    """

    index: int
    query: dict[str, str]
    key: str | None
    protocol: str | None
    paths: list[str] = field(default_factory=list)
    speech_config: Any = None
    speech_context: Any = None
    wav_header: bytes = b""
    audio: bytearray = field(default_factory=bytearray)
    sent: list[str] = field(default_factory=list)
    ended: str | None = None
    turns: int = 0
    turn_base_ms: int = 0
    turn_audio_bytes: int = 0

    @property
    def audio_ms(self) -> int:
        """Milliseconds of audio received (replayed audio counted again)."""
        return len(self.audio) // _STT_BYTES_PER_MS

    @property
    def position_ms(self) -> int:
        """Where the current turn's audio has reached, in ms of the client's stream.

        A continuation turn starts where the client says (``speech.context``
        ``continuation.audio.streams.1.offset``), because the SDK replays the audio after the
        last phrase it was given.
        """
        return self.turn_base_ms + self.turn_audio_bytes // _STT_BYTES_PER_MS

    def trailing_silence_ms(self) -> int:
        """How much digital silence the audio ends in."""
        samples = np.frombuffer(bytes(self.audio[len(self.audio) % 2 :]), dtype="<i2")
        nonzero = np.flatnonzero(samples)
        quiet = samples.size if nonzero.size == 0 else samples.size - 1 - int(nonzero[-1])
        return quiet * 2 // _STT_BYTES_PER_MS


# -- text-to-speech records -------------------------------------------------------------------


@dataclass(slots=True)
class TtsRequest:
    """One synthesis request as the fake saw it.

    Attributes:
        request_id: the client's ``X-RequestId``.
        context: the decoded ``synthesis.context`` body.
        ssml: the SSML as sent.
        text: the SSML's text content (tags removed, entities decoded).
        audio_bytes: PCM sent for it.
        words_sent: word boundaries sent.
        completed: ``turn.end`` was sent.
        abandoned: the client closed the connection before the request completed.
    """

    request_id: str
    context: Any
    ssml: str
    text: str
    audio_bytes: int = 0
    words_sent: int = 0
    completed: bool = False
    abandoned: bool = False


@dataclass(frozen=True, slots=True)
class _TtsFault:
    close_code: int | None = None
    reason: str = ""
    stall: bool = False


class FakeAzureSpeech(FakeServer):
    """Azure Speech STT and TTS websockets on loopback.

    Args:
        key: the only subscription key accepted.
        seconds_per_char: synthesised audio per character of text.
        chunk_ms: audio per binary ``audio`` message.
    """

    def __init__(
        self, *, key: str = "az-test-key", seconds_per_char: float = 0.02, chunk_ms: int = 100
    ) -> None:
        super().__init__()
        self.key = key
        self.seconds_per_char = seconds_per_char
        self.chunk_ms = chunk_ms
        self.chunk_interval_s = 0.0
        self.reject_status: int | None = None
        self.stt_sessions: list[SttSession] = []
        self.tts_requests: list[TtsRequest] = []
        self.tts_connections = 0
        self.tts_paths: list[str] = []
        self._scripts: list[SttScript] = []
        self._tts_faults: list[_TtsFault] = []
        self._changed = asyncio.Condition()
        self.app.router.add_get(STT_PATH, self._stt)
        self.app.router.add_get(TTS_PATH, self._tts)

    def script_stt(self, *scripts: SttScript) -> None:
        """Queue scripts for the next recognition connections, in order."""
        self._scripts.extend(scripts)

    def fail_next_synthesis(self, code: int = 1007, reason: str = "Invalid SSML") -> None:
        """Close the TTS websocket with ``code`` when the next ``ssml`` arrives."""
        self._tts_faults.append(_TtsFault(close_code=code, reason=reason))

    def stall_next_synthesis(self) -> None:
        """Accept the next ``ssml`` and never answer it."""
        self._tts_faults.append(_TtsFault(stall=True))

    def answer_next_synthesis(self) -> None:
        """Answer the next ``ssml`` normally (to queue faults behind a good request)."""
        self._tts_faults.append(_TtsFault())

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

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Ocp-Apim-Subscription-Key") != self.key:
            return self.http_error(401, text="Unauthorized")
        if self.reject_status is not None:
            return self.http_error(self.reject_status, text="scripted rejection")
        return None

    async def _send(self, ws: web.WebSocketResponse, frame: str | bytes, sent: list[str]) -> None:
        if isinstance(frame, str):
            await ws.send_str(frame)
        else:
            await ws.send_bytes(frame)
        sent.append(parse_usp(frame).path)
        await self._notify()

    # -- speech-to-text ---------------------------------------------------------------------

    async def _stt(self, request: web.Request) -> web.StreamResponse:
        record = SttSession(
            index=len(self.stt_sessions),
            query=dict(request.query),
            key=request.headers.get("Ocp-Apim-Subscription-Key"),
            protocol=request.headers.get("Sec-WebSocket-Protocol"),
        )
        self.stt_sessions.append(record)
        await self._notify()
        refusal = self._refusal(request)
        if refusal is not None:
            record.ended = "rejected"
            return refusal
        # A connection refused for its key does not use up a script.
        script = self._scripts.pop(0) if self._scripts else SttScript()
        if script.reject_status is not None:
            record.ended = "rejected"
            return self.http_error(script.reject_status, text="scripted rejection")
        ws = await self.prepare_websocket(request, protocols=("USP",))
        try:
            await self._stt_loop(request, ws, script, record)
        finally:
            await self._notify()
        return ws

    async def _stt_loop(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        script: SttScript,
        record: SttSession,
    ) -> None:
        pending = list(script.steps)
        request_id = ""
        turn_started = False

        async def send(path: str, body: Mapping[str, Any]) -> None:
            await self._send(ws, usp_text(path, request_id, body), record.sent)

        async def send_step(path: str, body: Mapping[str, Any]) -> None:
            # Scripts give offsets in the client's stream; the service counts from the turn.
            base = _ticks(record.turn_base_ms / 1000)
            if "Offset" in body:
                body = {**body, "Offset": max(0, body["Offset"] - base)}
            await send(path, body)

        async def release(*, end: bool) -> None:
            while pending:
                step = pending[0]
                if not end and step.after_ms > record.position_ms:
                    return
                if not end and step.on_silence and record.trailing_silence_ms() < script.silence_ms:
                    return
                pending.pop(0)
                await send_step(*step.message)

        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                message = parse_usp(msg.data)
                record.paths.append(message.path)
                request_id = message.headers.get("X-RequestId", request_id)
                if message.path == "speech.config":
                    record.speech_config = message.json()
                elif message.path == "speech.context":
                    record.speech_context = message.json()
                    record.turn_base_ms = _continuation_ms(record.speech_context)
                    record.turn_audio_bytes = 0
                await self._notify()
            elif msg.type == WSMsgType.BINARY:
                message = parse_usp(msg.data)
                record.paths.append(message.path)
                request_id = message.headers.get("X-RequestId", request_id)
                payload = message.body
                assert isinstance(payload, bytes)
                if not record.wav_header and payload.startswith(b"RIFF"):
                    record.wav_header = payload[:_WAV_HEADER_BYTES]
                    payload = payload[_WAV_HEADER_BYTES:]
                record.audio += payload
                record.turn_audio_bytes += len(payload)
                await self._notify()
                if not turn_started:
                    turn_started = True
                    record.turns += 1
                    await send("turn.start", {"context": {"serviceTag": "fake"}})
                if script.drop_after_ms is not None and record.audio_ms >= script.drop_after_ms:
                    record.ended = "dropped"
                    await self.drop_connection(request)
                    return
                if script.close_code is not None and record.audio_ms >= script.close_after_ms:
                    record.ended = f"closed_{script.close_code}"
                    await self.close_websocket(
                        ws, code=script.close_code, message=script.close_reason.encode()
                    )
                    return
                if not message.body:
                    # An empty audio message ends the stream: flush, end the turn.
                    await release(end=True)
                    end_s = record.turn_audio_bytes / _STT_BYTES_PER_MS / 1000
                    await send("speech.endDetected", {"Offset": _ticks(end_s)})
                    await send("turn.end", {})
                    record.ended = "end_of_stream"
                    turn_started = False
                else:
                    await release(end=False)
            else:
                break
        if record.ended is None:
            record.ended = "client_closed"

    # -- text-to-speech ---------------------------------------------------------------------

    async def _tts(self, request: web.Request) -> web.StreamResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        self.tts_connections += 1
        ws = await self.prepare_websocket(request, protocols=("USP",))
        context: Any = None
        # Synthesis runs beside the reader, so a client close is seen at once.
        task: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                message = parse_usp(msg.data)
                self.tts_paths.append(message.path)
                await self._notify()
                if message.path == "synthesis.context":
                    context = message.json()
                elif message.path == "ssml":
                    assert isinstance(message.body, str)
                    if task is not None:
                        await task
                    fault = self._tts_faults.pop(0) if self._tts_faults else _TtsFault()
                    if fault.close_code is not None:
                        await self.close_websocket(
                            ws, code=fault.close_code, message=fault.reason.encode()
                        )
                        break
                    record = TtsRequest(
                        request_id=message.headers.get("X-RequestId", ""),
                        context=context,
                        ssml=message.body,
                        text=html.unescape(_TAG.sub("", message.body)).strip(),
                    )
                    self.tts_requests.append(record)
                    await self._notify()
                    if not fault.stall:
                        task = asyncio.create_task(self._synthesize(ws, record))
        finally:
            if task is not None and not task.done():
                task.cancel()
                self.tts_requests[-1].abandoned = True
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await self._notify()
        return ws

    async def _synthesize(self, ws: web.WebSocketResponse, record: TtsRequest) -> None:
        rid = record.request_id
        sent: list[str] = []
        audio_options = ((record.context or {}).get("synthesis") or {}).get("audio") or {}
        rate = _TTS_RATES.get(audio_options.get("outputFormat", ""), 48_000)
        metadata = audio_options.get("metadataOptions") or {}
        await self._send(ws, usp_text("turn.start", rid, {"context": {"serviceTag": "x"}}), sent)
        await self._send(
            ws, usp_text("response", rid, {"audio": {"type": "inline", "streamId": "s1"}}), sent
        )
        seconds = max(len(record.text), 1) * self.seconds_per_char
        if metadata.get("wordBoundaryEnabled"):
            words = re.findall(r"[\w'-]+", record.text)
            span = seconds / max(len(words), 1)
            cursor = 0
            for i, word in enumerate(words):
                at = record.text.find(word, cursor)
                cursor = at + len(word)
                boundary = {
                    "Metadata": [
                        {
                            "Type": "WordBoundary",
                            "Data": {
                                "Offset": _ticks(i * span),
                                "Duration": _ticks(span * 0.9),
                                "text": {
                                    "Text": word,
                                    "Length": len(word),
                                    "BoundaryType": "WordBoundary",
                                },
                            },
                        }
                    ]
                }
                await self._send(ws, usp_text("audio.metadata", rid, boundary), sent)
                record.words_sent += 1
        pcm = _tone(seconds, rate_hz=rate)
        step = rate * 2 * self.chunk_ms // 1000
        for offset in range(0, len(pcm), step):
            chunk = pcm[offset : offset + step]
            headers = {"Path": "audio", "X-RequestId": rid, "X-StreamId": "s1"}
            await self._send(ws, usp_binary(headers, chunk), sent)
            record.audio_bytes += len(chunk)
            if self.chunk_interval_s > 0:
                await asyncio.sleep(self.chunk_interval_s)
        await self._send(ws, usp_text("turn.end", rid, {}), sent)
        record.completed = True
        await self._notify()


def _continuation_ms(context: Any) -> int:
    try:
        ticks = context["continuation"]["audio"]["streams"]["1"]["offset"]
        return int(ticks) // 10_000
    except (KeyError, TypeError, ValueError):
        return 0


def _tone(seconds: float, *, rate_hz: int, freq_hz: float = 330.0) -> bytes:
    n = max(1, int(round(seconds * rate_hz)))
    wave = np.sin(2 * np.pi * freq_hz * np.arange(n) / rate_hz) * 0.4
    return (wave * 32767).astype("<i2").tobytes()
