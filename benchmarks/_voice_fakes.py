"""The voice benchmarks' fakes: the test suite's voice, Deepgram, OpenRouter and Cartesia fakes, stamped.

Each subclasses a loopback fake from ``tests/fakes/`` and adds only the stamps a voice turn
needs (``time.monotonic_ns()``, the one clock of every process) and, for Deepgram, a per-turn
script:

* :class:`BenchVoice` (:class:`~tests.fakes.discord_voice.FakeDiscordVoice`): when each of a
  member's RTP packets left the fake (:meth:`BenchVoice.speak`), and when each *audible* packet
  of the bot arrived (stamped as the datagram is handed to the fake, before it decrypts and
  decodes it);
* :class:`BenchDeepgram` (:class:`~tests.fakes.deepgram.FakeDeepgram`): answers the next
  ``Finalize`` that follows enough audio with the turn's text as a ``from_finalize`` final,
  after the turn's injected latency; any other ``Finalize`` gets the empty final the real
  service sends. It records when that ``Finalize`` arrived and when the final went out;
* :class:`BenchVoiceLLM` (:class:`~tests.fakes.openrouter.FakeOpenRouter`): reads the turn tag
  (``[bt<n>]``) of the newest user input, streams that turn's scripted reply (first token
  after ``ttft_s``, then ``tokens_per_s`` on absolute deadlines, so pacing does not drift) and
  records when the request arrived, when each text token went out, when the stream finished,
  and when the client closed it early (barge-in);
* :class:`BenchCartesia` (:class:`~tests.fakes.cartesia.FakeCartesia`): per context, when its
  first transcript arrived, when its first audio chunk went out, every transcript's arrival,
  and the cancel. Between chunks it yields to the loop, so the fake's own burst of audio never
  delays the datagram stamps of the voice fake in the same process.

:class:`SubjectFakes` starts the five fakes of one subject (a familiar or the reference
client) together.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes.cartesia import CartesiaContext, FakeCartesia
from tests.fakes.certs import TlsCert
from tests.fakes.deepgram import BYTES_PER_SECOND, FakeDeepgram, metadata, results
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.fakes.discord_world import GUILD_ID, VOICE_ID, World
from tests.fakes.openrouter import CHAT_PATH, FakeOpenRouter, split_tokens

__all__ = [
    "INTERRUPTERS",
    "BenchCartesia",
    "BenchDeepgram",
    "BenchVoice",
    "BenchVoiceLLM",
    "LLMTurn",
    "SttTurn",
    "SubjectFakes",
    "TtsStamps",
    "VoiceLLMPlan",
    "tone",
    "voice_world",
]

_TAG = re.compile(rb"\[bt(\d+)\]")
_SAMPLE_RATE_HZ = 48_000

INTERRUPTERS = (("bob", 1002), ("carol", 1003), ("dave", 1004))
"""Members who talk over the familiar in the barge-in benchmark, in rotation (name, id)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def tone(seconds: float, *, freq_hz: float = 440.0, amplitude: int = 8_000) -> np.ndarray:
    """A mono int16 sine at 48 kHz (clearly voiced: RMS ≈ 5,700)."""
    t = np.arange(int(round(seconds * _SAMPLE_RATE_HZ))) / _SAMPLE_RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude).astype(np.int16)


def voice_world() -> World:
    """The default world (alice, bob, #general, the Lounge voice channel) plus more members."""
    world = World.default()
    for name, user_id in INTERRUPTERS:
        if name != "bob":
            world.add_member(GUILD_ID, user_id, name)
    return world


# --- Discord voice ----------------------------------------------------------------------


class BenchVoice(FakeDiscordVoice):
    """The fake voice server with per-packet send stamps and audible-arrival stamps.

    Attributes:
        audible_rx: arrival (``monotonic_ns``) of each audible bot packet, newest last (bounded).
        last_rx_ns: arrival of the latest bot packet of any kind.
    """

    def __init__(self, discord: FakeDiscord, cert: TlsCert) -> None:
        super().__init__(discord, cert, max_recorded_packets=256, max_recorded_frames=2_000)
        self._tx: list[int] | None = None
        # Only the current turn's frames matter; a short deque keeps the driver's scans cheap.
        self.audible_rx: collections.deque[int] = collections.deque(maxlen=512)
        self.last_rx_ns = 0

    def _sendto(self, packet: bytes) -> None:
        super()._sendto(packet)
        if self._tx is not None:
            self._tx.append(time.monotonic_ns())

    def _bot_rtp(self, data: bytes) -> None:
        arrived = time.monotonic_ns()
        self.last_rx_ns = arrived
        before = self._packets[-1] if self._packets else None
        super()._bot_rtp(data)
        if self._packets:
            last = self._packets[-1]
            if last is not before and not last.silent:
                self.audible_rx.append(arrived)

    async def speak(
        self, user: str | int, pcm: np.ndarray, *, trailing_silence: int = 5
    ) -> list[int]:
        """A member speaks ``pcm`` in real time; return when each packet left (voiced, then silence)."""
        self._tx = []
        try:
            await self.user_speaks(user, pcm, trailing_silence_frames=trailing_silence)
        finally:
            sent, self._tx = self._tx, None
        return sent

    def audible_since(self, t_ns: int) -> list[int]:
        """Arrivals of audible bot packets at or after ``t_ns`` (newest last)."""
        found: list[int] = []
        for t in reversed(self.audible_rx):
            if t < t_ns:
                break
            found.append(t)
        found.reverse()
        return found

    def first_audible_since(self, t_ns: int) -> int | None:
        """The first audible arrival at or after ``t_ns`` (scans back from the newest)."""
        first = None
        for t in reversed(self.audible_rx):
            if t < t_ns:
                break
            first = t
        return first


# --- Deepgram ---------------------------------------------------------------------------


@dataclass
class SttTurn:
    """One scripted transcript: released on a ``Finalize``, ``latency_s`` later.

    Attributes:
        finalize_rx_ns: when the ``Finalize`` that released it arrived.
        final_tx_ns: when the final went out.
    """

    text: str
    latency_s: float
    finalize_rx_ns: int | None = None
    final_tx_ns: int | None = None


class BenchDeepgram(FakeDeepgram):
    """Deepgram answering each turn's ``Finalize`` with that turn's text.

    Attributes:
        pending: the transcript the next qualifying ``Finalize`` releases.
        min_turn_bytes: audio since the last final a ``Finalize`` needs to release ``pending``.
        finalizes / empty_finals / connections: counters.
    """

    def __init__(self, *, api_key: str, min_turn_bytes: int = BYTES_PER_SECOND // 10) -> None:
        super().__init__(api_key=api_key)
        self.pending: SttTurn | None = None
        self.min_turn_bytes = min_turn_bytes
        self.finalizes = 0
        self.empty_finals = 0
        self.connections = 0

    def expect(self, text: str, *, latency_s: float = 0.0) -> SttTurn:
        """Script the next turn's transcript."""
        self.pending = SttTurn(text, latency_s)
        return self.pending

    async def _send_loop(
        self, ws: web.WebSocketResponse, record: Any, outbox: asyncio.Queue[Any]
    ) -> None:
        while True:
            due, message, turn = await outbox.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if message is None:
                await self.close_websocket(ws, code=1000)
                return
            await ws.send_str(json.dumps(message))
            if turn is not None:
                turn.final_tx_ns = time.monotonic_ns()

    async def _receive_loop(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        script: Any,
        record: Any,
        outbox: asyncio.Queue[Any],
    ) -> None:
        self.connections += 1
        total = 0
        since_final = 0
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.BINARY:
                total += len(msg.data)
                since_final += len(msg.data)
            elif msg.type == WSMsgType.TEXT:
                arrived = time.monotonic_ns()
                try:
                    kind = json.loads(msg.data).get("type")
                except (ValueError, AttributeError):
                    continue
                if kind == "Finalize":
                    self.finalizes += 1
                    turn = self.pending
                    start_s = (total - since_final) / BYTES_PER_SECOND
                    if turn is not None and since_final >= self.min_turn_bytes:
                        self.pending = None
                        turn.finalize_rx_ns = arrived
                        final = results(
                            turn.text,
                            is_final=True,
                            from_finalize=True,
                            start=start_s,
                            duration=since_final / BYTES_PER_SECOND,
                        )
                        outbox.put_nowait((time.monotonic() + turn.latency_s, final, turn))
                    else:
                        self.empty_finals += 1
                        empty = results(
                            "",
                            is_final=True,
                            from_finalize=True,
                            start=total / BYTES_PER_SECOND,
                            duration=0.0,
                        )
                        outbox.put_nowait((time.monotonic(), empty, None))
                    since_final = 0
                elif kind == "CloseStream":
                    outbox.put_nowait((time.monotonic(), metadata(total / BYTES_PER_SECOND), None))
                    outbox.put_nowait((time.monotonic(), None, None))
                    record.ended = "close_stream"
            else:
                if record.ended is None:
                    record.ended = "client_closed"
                return


# --- OpenRouter ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoiceLLMPlan:
    """How the fake LLM answers one turn: ``text`` in whitespace pieces, one per SSE event."""

    text: str
    ttft_s: float = 0.0
    tokens_per_s: float | None = None


@dataclass
class LLMTurn:
    """What the fake LLM saw of one tagged request.

    Attributes:
        arrived_ns: the request had fully arrived.
        token_ns: when each text piece went out (after its write).
        finished_ns: the stream was finished (``write_eof`` done).
        closed_ns: the client closed the stream before it finished.
    """

    plan: VoiceLLMPlan
    arrived_ns: int
    token_ns: list[int] = field(default_factory=list)
    finished_ns: int | None = None
    closed_ns: int | None = None

    @property
    def ended_ns(self) -> int | None:
        return self.finished_ns if self.finished_ns is not None else self.closed_ns


_CURRENT: contextvars.ContextVar[LLMTurn | None] = contextvars.ContextVar(
    "bench_llm_turn", default=None
)


class BenchVoiceLLM(FakeOpenRouter):
    """:class:`FakeOpenRouter` answering each tagged turn with its plan, stamping every token.

    Attributes:
        plans: the plan of each turn tag not yet requested.
        turns: what the fake measured, per turn tag.
        untagged_requests: chat requests without a known tag (answered with the echo).
    """

    def __init__(self, *, expected_api_key: str) -> None:
        super().__init__(expected_api_key=expected_api_key, max_queued_replies=10)
        self.plans: dict[int, VoiceLLMPlan] = {}
        self.turns: dict[int, LLMTurn] = {}
        self.untagged_requests = 0
        self.app.middlewares.append(self._script_turn)

    @web.middleware
    async def _script_turn(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != CHAT_PATH:
            return await handler(request)
        arrived = time.monotonic_ns()
        tags = _TAG.findall(await request.read())  # cached by the recording middleware
        tag = int(tags[-1]) if tags else None
        plan = self.plans.pop(tag, None) if tag is not None else None
        if plan is None:
            self.untagged_requests += 1
            return await handler(request)
        record = LLMTurn(plan, arrived)
        self.turns[tag] = record  # type: ignore[index]  # tag is set when plan is
        self.reply_text(plan.text, ttft_s=plan.ttft_s)
        token = _CURRENT.set(record)
        try:
            # No await between queueing the reply and the handler popping it.
            response = await handler(request)
        except (asyncio.CancelledError, ConnectionResetError):
            record.closed_ns = time.monotonic_ns()
            raise
        finally:
            _CURRENT.reset(token)
        record.finished_ns = time.monotonic_ns()
        return response

    async def _stream_text(self, reply: Any, text: str, send: Any) -> int:
        record = _CURRENT.get()
        if record is None:
            return await super()._stream_text(reply, text, send)
        pieces = split_tokens(text)
        rate = record.plan.tokens_per_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, piece in enumerate(pieces):
            if index:
                # Absolute deadlines: sleep lateness does not accumulate over the reply.
                await asyncio.sleep(max(0.0, start + index / rate - loop.time()) if rate else 0)
            await send({"content": piece})
            record.token_ns.append(time.monotonic_ns())
        return len(pieces)


# --- Cartesia ---------------------------------------------------------------------------


@dataclass
class TtsStamps:
    """What the fake TTS saw of one context.

    Attributes:
        first_text: the first non-empty transcript (the reply's first clause).
        text_rx_ns: arrival of every non-empty transcript.
    """

    context_id: str
    first_text: str = ""
    first_text_rx_ns: int | None = None
    first_chunk_tx_ns: int | None = None
    text_rx_ns: list[int] = field(default_factory=list)
    cancel_rx_ns: int | None = None
    final_rx_ns: int | None = None


class _StampedMessages(list):  # type: ignore[type-arg]
    """Stands in for :attr:`FakeCartesia.messages`: stamps each message as it is appended."""

    def __init__(self, owner: BenchCartesia) -> None:
        super().__init__()
        self._owner = owner

    def append(self, body: Any) -> None:  # type: ignore[override]
        self._owner._on_message(body)  # bodies are not kept: a long run sends thousands


class BenchCartesia(FakeCartesia):
    """:class:`FakeCartesia` that stamps transcripts, the first chunk and cancels per context."""

    def __init__(self, *, api_key: str, seconds_per_char: float) -> None:
        super().__init__(api_key=api_key, seconds_per_char=seconds_per_char, chunk_ms=40)
        self.messages = _StampedMessages(self)
        self.stamps: dict[str, TtsStamps] = {}

    def _on_message(self, body: Any) -> None:
        arrived = time.monotonic_ns()
        if not isinstance(body, dict) or not isinstance(body.get("context_id"), str):
            return
        stamps = self.stamps.get(body["context_id"])
        if stamps is None:
            stamps = self.stamps[body["context_id"]] = TtsStamps(body["context_id"])
        if body.get("cancel"):
            stamps.cancel_rx_ns = stamps.cancel_rx_ns or arrived
            return
        transcript = body.get("transcript")
        if isinstance(transcript, str) and transcript.strip():
            if stamps.first_text_rx_ns is None:
                stamps.first_text_rx_ns = arrived
                stamps.first_text = transcript
            stamps.text_rx_ns.append(arrived)
        if body.get("continue") is False:
            stamps.final_rx_ns = arrived

    async def _generate(
        self,
        ctx: CartesiaContext,
        body: dict[str, Any],
        send: Callable[[dict[str, Any]], Any],
        request: web.Request,
        chunks_on_connection: list[int],
    ) -> None:
        stamps = self.stamps.get(ctx.context_id)

        async def stamped(message: dict[str, Any]) -> None:
            await send(message)
            if message.get("type") == "chunk":
                if stamps is not None and stamps.first_chunk_tx_ns is None:
                    stamps.first_chunk_tx_ns = time.monotonic_ns()
                await asyncio.sleep(0)  # let datagrams in between chunks

        await super()._generate(ctx, body, stamped, request, chunks_on_connection)


# --- one subject's fakes -------------------------------------------------------------------


@dataclass
class SubjectFakes:
    """The five fakes one subject talks to; all on this process's loop.

    Use :meth:`start` as an async context manager.
    """

    name: str
    discord: FakeDiscord
    voice: BenchVoice
    deepgram: BenchDeepgram
    cartesia: BenchCartesia
    llm: BenchVoiceLLM

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        name: str,
        *,
        cert: TlsCert,
        bot_token: str,
        deepgram_key: str,
        cartesia_key: str,
        llm_key: str,
        seconds_per_char: float,
    ) -> AsyncIterator[SubjectFakes]:
        async with contextlib.AsyncExitStack() as stack:
            discord = await stack.enter_async_context(
                FakeDiscord(bot_token=bot_token, world=voice_world())
            )
            voice = BenchVoice(discord, cert)
            await stack.enter_async_context(voice)
            deepgram = BenchDeepgram(api_key=deepgram_key)
            await stack.enter_async_context(deepgram)
            cartesia = BenchCartesia(api_key=cartesia_key, seconds_per_char=seconds_per_char)
            await stack.enter_async_context(cartesia)
            llm = BenchVoiceLLM(expected_api_key=llm_key)
            await stack.enter_async_context(llm)
            yield cls(name, discord, voice, deepgram, cartesia, llm)

    async def members_in_voice(self, names: tuple[str, ...]) -> None:
        for user in names:
            await self.discord.voice_state(user, VOICE_ID)

    def endpoints(self) -> dict[str, Any]:
        """What a child process needs to reach these fakes."""
        return {
            "discord_api": self.discord.api_base,
            "discord_gateway": self.discord.gateway_url,
            "deepgram_ws": self.deepgram.ws_base_url,
            "deepgram_http": self.deepgram.base_url,
            "cartesia_base": self.cartesia.base_url,
            "cartesia_ws": self.cartesia.ws_base_url,
            "llm_base": self.llm.api_base,
        }

    def connections(self) -> dict[str, int]:
        """Provider connections opened so far (a warm client opens each once)."""
        ports = {r.peer_port for r in self.llm.chat_requests if r.peer_port is not None}
        return {
            "deepgram_websockets": self.deepgram.connections,
            "cartesia_websockets": self.cartesia.connections,
            "llm_tcp_connections": len(ports),
            "voice_websockets": self.voice.connection_count,
        }
