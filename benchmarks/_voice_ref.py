"""Child process: the reference voice client, the machine's floor for a Discord voice turn.

Straight-line code on the same wire protocols and the same unavoidable libraries (discord.py
and voice-recv for the voice connection, libopus both ways), no app logic:

* **in**: voice-recv decodes each member's Opus; the sink downmixes to mono (numpy) and hops
  to the loop, which forwards the frame on that member's raw Deepgram websocket
  (``websockets``) and re-arms one idle timer; when it fires (the same endpointing wait as the
  familiar's) a ``Finalize`` goes out;
* **turn**: a final with text starts the reply: one streamed OpenRouter request (httpx, SSE
  split by hand, ``json.loads`` per event); text pieces go through the same
  :class:`~familiar_connect.core.chunking.ClauseChunker` the familiar uses (the first-clause
  *policy* must be the same for the comparison), each clause as a continuation on one raw
  Cartesia websocket;
* **out**: each audio chunk (base64 in JSON) is decoded into a bounded-by-nothing buffer read
  by a minimal ``discord.AudioSource`` (20 ms mono → stereo, a silent frame on underrun);
  the player starts as soon as one frame exists;
* **barge-in**: while a reply is playing or streaming, a member's N-th voiced frame (N =
  the same detection window) stops the source (the next ``read`` ends the player), cancels
  the reply task (which closes the HTTP stream) and sends Cartesia a cancel.

No policy, no history, no prompt, no memory, no DAVE, no logging. Whatever the familiar takes
beyond this is what its own code costs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import ssl
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp
import discord
import discord.gateway
import discord.http
import httpx
import numpy as np
import websockets.asyncio.client
import yarl
from discord.ext import voice_recv

from benchmarks._child import ChildControl, child_main
from benchmarks._harness import cpu_seconds, rss_kib
from benchmarks._voice_stalls import StallSentinel
from familiar_connect.core.chunking import ClauseChunker

_FRAME_MONO_BYTES = 1_920
_STEREO_FRAME_BYTES = 3_840
_SILENT_FRAME = bytes(_STEREO_FRAME_BYTES)
_VOICED_RMS = 400.0
_UNDERRUN_WAIT_S = 0.015


def _downmix(pcm: bytes) -> tuple[bytes, float]:
    samples = np.frombuffer(pcm[: len(pcm) // 4 * 4], dtype="<i2").reshape(-1, 2).astype(np.int32)
    mono = ((samples[:, 0] + samples[:, 1]) >> 1).astype("<i2")
    return mono.tobytes(), float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))


class PcmSource(discord.AudioSource):
    """A minimal 20 ms stereo source over a mono buffer (player thread reads, loop writes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._pos = 0
        self.closed = False
        self.stopped = False
        self.started = False

    def write(self, pcm: bytes) -> None:
        with self._cond:
            if not self.stopped:
                self._buf += pcm
                self._cond.notify_all()

    @property
    def buffered(self) -> int:
        with self._cond:
            return len(self._buf) - self._pos

    def end_of_input(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self.stopped = True
            self._buf.clear()
            self._pos = 0
            self._cond.notify_all()

    def is_opus(self) -> bool:
        return False

    def read(self) -> bytes:
        with self._cond:
            deadline = time.monotonic() + _UNDERRUN_WAIT_S
            while True:
                if self.stopped:
                    return b""
                available = len(self._buf) - self._pos
                if available >= _FRAME_MONO_BYTES or (self.closed and available):
                    size = min(available, _FRAME_MONO_BYTES)
                    chunk = bytes(self._buf[self._pos : self._pos + size])
                    self._pos += size
                    break
                if self.closed:
                    return b""
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return _SILENT_FRAME
                self._cond.wait(remaining)
        stereo = np.repeat(np.frombuffer(chunk, dtype="<i2"), 2).tobytes()
        return stereo + bytes(_STEREO_FRAME_BYTES - len(stereo))

    def cleanup(self) -> None:
        self.stop()


class RefSink(voice_recv.AudioSink):
    """Decoded PCM per member → mono + level → the loop."""

    def __init__(self, ref: Reference) -> None:
        super().__init__()
        self.ref = ref

    def wants_opus(self) -> bool:
        return False

    def write(self, user: discord.abc.User | None, data: voice_recv.VoiceData) -> None:
        if user is None or user.bot or not data.pcm:
            return
        mono, level = _downmix(data.pcm)
        with contextlib.suppress(RuntimeError):
            self.ref.aloop.call_soon_threadsafe(self.ref.frame, user.id, mono, level)

    def cleanup(self) -> None:
        pass


class Speaker:
    """One member's Deepgram websocket: frames out, Finalize after the idle wait, finals in."""

    def __init__(self, ref: Reference, user_id: int) -> None:
        self.ref = ref
        self.outbox: asyncio.Queue[bytes | str] = asyncio.Queue()
        self.timer: asyncio.TimerHandle | None = None
        self.task = ref.aloop.create_task(self.run(), name=f"ref-dg-{user_id}")

    async def run(self) -> None:
        ref = self.ref
        query = urlencode(
            {
                "model": "nova-3",
                "language": "en",
                "encoding": "linear16",
                "sample_rate": 48_000,
                "channels": 1,
                "interim_results": "true",
                "endpointing": 300,
                "vad_events": "true",
            }
        )
        async with websockets.asyncio.client.connect(
            f"{ref.config['deepgram_ws']}/v1/listen?{query}",
            additional_headers={"Authorization": f"Token {ref.config['deepgram_key']}"},
            max_size=None,
        ) as ws:
            reader = asyncio.get_running_loop().create_task(self.read(ws))
            try:
                while True:
                    await ws.send(await self.outbox.get())
            finally:
                reader.cancel()

    async def read(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") != "Results" or not message.get("is_final"):
                continue
            if not (message.get("speech_final") or message.get("from_finalize")):
                continue
            text = message["channel"]["alternatives"][0]["transcript"]
            if text:
                self.ref.reply(text)

    def frame(self, mono: bytes) -> None:
        self.outbox.put_nowait(mono)
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.ref.aloop.call_later(self.ref.idle_s, self.finalize)

    def finalize(self) -> None:
        self.timer = None
        self.outbox.put_nowait('{"type": "Finalize"}')


class Reference(discord.Client):
    """Decode, forward, encode."""

    def __init__(self, config: dict[str, Any], **options: Any) -> None:
        super().__init__(**options)
        self.config = config
        self.aloop = asyncio.get_running_loop()
        self._background: set[asyncio.Task[Any]] = set()
        self.idle_s = config["listen"]["finalize_after_idle_ms"] / 1000
        self.window_frames = max(1, config["listen"]["barge_in_min_voiced_ms"] // 20)
        self.http_llm = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {config['llm_key']}"},
            timeout=httpx.Timeout(60.0),
        )
        self.vc: voice_recv.VoiceRecvClient | None = None
        self.speakers: dict[int, Speaker] = {}
        self.cartesia: Any = None
        self.cartesia_reader: asyncio.Task[None] | None = None
        self.sources: dict[str, PcmSource] = {}
        self.reply_task: asyncio.Task[None] | None = None
        self.context_id: str | None = None
        self.source: PcmSource | None = None
        self.voiced_while_busy = 0
        self.replies = 0
        self.barge_ins = 0
        self.failures = 0

    # --- in -----------------------------------------------------------------------------

    def frame(self, user_id: int, mono: bytes, level: float) -> None:
        speaker = self.speakers.get(user_id)
        if speaker is None:
            speaker = self.speakers[user_id] = Speaker(self, user_id)
        speaker.frame(mono)
        if level >= _VOICED_RMS and self.busy:
            self.voiced_while_busy += 1
            if self.voiced_while_busy >= self.window_frames:
                self.barge_in()

    @property
    def busy(self) -> bool:
        source = self.source
        playing = source is not None and source.started and not source.stopped
        return playing or (self.reply_task is not None and not self.reply_task.done())

    def barge_in(self) -> None:
        self.barge_ins += 1
        self.voiced_while_busy = 0
        if self.source is not None:
            self.source.stop()
        if self.reply_task is not None:
            self.reply_task.cancel()
        if self.context_id is not None:
            context_id, self.context_id = self.context_id, None
            self.sources.pop(context_id, None)
            task = self.aloop.create_task(
                self.cartesia.send(json.dumps({"context_id": context_id, "cancel": True}))
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- turn -----------------------------------------------------------------------------

    def reply(self, text: str) -> None:
        if self.reply_task is not None and not self.reply_task.done():
            self.reply_task.cancel()
        self.voiced_while_busy = 0
        self.reply_task = self.aloop.create_task(self._reply(text), name="ref-reply")

    async def _reply(self, text: str) -> None:
        context_id = uuid.uuid4().hex
        self.context_id = context_id
        self.sources[context_id] = PcmSource()
        body = {
            "model": "openrouter/auto",
            "stream": True,
            "messages": [{"role": "user", "content": text}],
        }
        chunker = ClauseChunker()
        buffer = b""
        try:
            async with self.http_llm.stream(
                "POST", self.config["llm_base"] + "/chat/completions", json=body
            ) as response:
                async for data in response.aiter_raw():
                    buffer += data
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        if not event.startswith(b"data: {"):
                            continue
                        for choice in json.loads(event[6:]).get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                for clause in chunker.feed(piece):
                                    await self._say(context_id, clause, more=True)
            for clause in chunker.flush():
                await self._say(context_id, clause, more=True)
            await self._say(context_id, "", more=False)
            self.replies += 1
        except httpx.HTTPError:
            self.failures += 1

    async def _say(self, context_id: str, text: str, *, more: bool) -> None:
        await self.cartesia.send(
            json.dumps(
                {
                    "context_id": context_id,
                    "model_id": "sonic-3",
                    "transcript": text + " " if text else "",
                    "voice": {"id": "voice-bench"},
                    "output_format": {
                        "container": "raw",
                        "encoding": "pcm_s16le",
                        "sample_rate": 48_000,
                    },
                    "continue": more,
                    "language": "en",
                    "max_buffer_delay_ms": 0,
                }
            )
        )

    # --- out -----------------------------------------------------------------------------

    async def read_cartesia(self) -> None:
        async for raw in self.cartesia:
            message = json.loads(raw)
            source = self.sources.get(message.get("context_id"))
            if source is None:
                continue
            kind = message.get("type")
            if kind == "chunk":
                source.write(base64.b64decode(message["data"]))
                if not source.started and source.buffered >= _FRAME_MONO_BYTES:
                    self.play(source)
            elif kind in ("done", "error"):
                source.end_of_input()
                self.sources.pop(message["context_id"], None)
                if not source.started and source.buffered:
                    self.play(source)

    def play(self, source: PcmSource) -> None:
        vc = self.vc
        if vc is None:
            return
        if vc.is_playing():
            vc.stop()
        source.started = True
        self.source = source
        vc.play(source)

    async def join(self) -> None:
        channel = self.get_channel(int(self.config["voice_channel_id"]))
        assert isinstance(channel, discord.VoiceChannel)
        self.vc = await channel.connect(cls=voice_recv.VoiceRecvClient, timeout=20)
        self.vc.listen(RefSink(self))
        self.cartesia = await websockets.asyncio.client.connect(
            f"{self.config['cartesia_ws']}/tts/websocket",
            additional_headers={"Authorization": f"Bearer {self.config['cartesia_key']}"},
            max_size=None,
        )
        self.cartesia_reader = self.aloop.create_task(self.read_cartesia())

    async def aclose_all(self) -> None:
        if self.reply_task is not None:
            self.reply_task.cancel()
        for speaker in self.speakers.values():
            speaker.task.cancel()
        if self.cartesia_reader is not None:
            self.cartesia_reader.cancel()
        if self.cartesia is not None:
            with contextlib.suppress(Exception):
                await self.cartesia.close()
        if self.vc is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.vc.disconnect(force=True)
        await self.http_llm.aclose()


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    discord.http.Route.BASE = config["discord_api"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config["discord_gateway"])
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.members = True
    intents.voice_states = True
    tls = ssl.create_default_context()
    tls.load_verify_locations(cafile=config["ca_file"])
    client = Reference(
        config,
        intents=intents,
        connector=aiohttp.TCPConnector(ssl=tls),
        guild_ready_timeout=0.05,
        chunk_guilds_at_startup=False,
    )
    await client.login(config["bot_token"])
    connection = asyncio.get_running_loop().create_task(client.connect(reconnect=True))
    cpu: dict[str, float] = {}
    phase, cpu_start = "startup", cpu_seconds()
    try:
        async with asyncio.timeout(60):
            await client.wait_until_ready()
        async with StallSentinel() as lag:
            lag.phase("idle")
            phase, cpu_start = "idle", cpu_seconds()
            control.ready({"pid": os.getpid()})
            while (command := await control.command()) != "stop":
                verb, _, rest = command.partition(" ")
                if verb == "join":
                    await client.join()
                    control.ack({"joined": True})
                    continue
                if verb == "listen":
                    options = json.loads(rest)
                    if "finalize_after_idle_ms" in options:
                        client.idle_s = options["finalize_after_idle_ms"] / 1000
                    if "barge_in_min_voiced_ms" in options:
                        client.window_frames = max(1, options["barge_in_min_voiced_ms"] // 20)
                    control.ack({"listen": options})
                    continue
                name = rest.strip() or verb
                now = cpu_seconds()
                cpu[phase] = cpu.get(phase, 0.0) + now - cpu_start
                phase, cpu_start = name, now
                lag.phase(name)
                control.ack({"phase": name})
            now = cpu_seconds()
            cpu[phase] = cpu.get(phase, 0.0) + now - cpu_start
            lag_report = lag.summaries()
            stalls = lag.stalls
    finally:
        await client.aclose_all()
        await client.close()
        connection.cancel()
        await asyncio.gather(connection, return_exceptions=True)
    return {
        "loop_lag_ms": lag_report,
        "stalls": stalls,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "replies": client.replies,
        "barge_ins": client.barge_ins,
        "failures": client.failures,
        "rss": rss_kib(os.getpid()),
    }


if __name__ == "__main__":
    child_main(main)
