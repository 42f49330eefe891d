"""Shared pieces of the voice tests: test audio, speech test doubles, a connected bare client.

Not a test module (it has no tests); it is named ``test_voice_*`` to live next to them.

The speech doubles implement the :mod:`familiar_connect.speech` protocols, the
seam where Deepgram/Cartesia (or Azure) plug in:

* :class:`ScriptedTranscriber` — a speaker's stream counts voiced 20 ms frames
  and, once enough arrived, answers ``speech_started``, an interim and, when
  asked to :meth:`~ScriptedStream.finalize` (the pipeline does that after
  Discord goes quiet), a ``final`` with ``speech_final`` carrying the next
  scripted line for that speaker;
* :class:`ToneSynthesizer` — each clause becomes one 0.1 s tone per word with
  matching :class:`~familiar_connect.speech.tts.base.WordTiming`, streamed in
  odd-sized chunks; it can fail after N clauses or hold audio back until
  released.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
import discord
import numpy as np

from familiar_connect.errors import ProviderConnectionError
from familiar_connect.platforms.discord import build_intents
from familiar_connect.speech.stt.base import TranscriptEvent
from familiar_connect.speech.tts.base import AudioChunk, WordTiming
from tests.fakes.certs import TlsCert
from tests.fakes.discord_fake import FakeDiscord, pointed_at

__all__ = [
    "RATE_HZ",
    "ScriptedStream",
    "ScriptedTranscriber",
    "ThreadPlayer",
    "ToneContext",
    "ToneSynthesizer",
    "noise",
    "running_client",
    "tone",
]

RATE_HZ = 48_000
_FRAME_SAMPLES = 960
_VOICED_RMS = 300.0


def tone(seconds: float, *, freq_hz: float = 440.0, amplitude: int = 8_000) -> np.ndarray:
    """A mono int16 sine at 48 kHz."""
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude).astype(np.int16)


def noise(seconds: float, *, amplitude: int = 4_000, seed: int = 7) -> np.ndarray:
    """Mono int16 white noise at 48 kHz (deterministic)."""
    rng = np.random.default_rng(seed)
    return rng.integers(-amplitude, amplitude, int(seconds * RATE_HZ), dtype=np.int16)


@contextlib.asynccontextmanager
async def running_client(fake: FakeDiscord, cert: TlsCert) -> AsyncIterator[discord.Client]:
    """A bare discord.Client (the familiar's intents) logged in to ``fake``, trusting ``cert``."""
    with pointed_at(fake):
        client = discord.Client(
            intents=build_intents(),
            connector=aiohttp.TCPConnector(ssl=cert.client_context()),
            guild_ready_timeout=0.05,
            chunk_guilds_at_startup=False,
        )
        await client.login(fake.bot_token)
        task = asyncio.create_task(client.connect(reconnect=True))
        try:
            async with asyncio.timeout(10):
                await client.wait_until_ready()
            yield client
        finally:
            for vc in list(client.voice_clients):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await vc.disconnect(force=True)
            await client.close()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=5)


class ThreadPlayer:
    """Stands in for discord.py's AudioPlayer: a thread that reads the source until ``b""``.

    ``gate`` (when given) must be released before each read, so a test decides when frames go out.
    """

    def __init__(self, *, gate: threading.Semaphore | None = None) -> None:
        self.gate = gate
        self.frames: list[bytes] = []
        self.events: list[str] = []
        self.changed = threading.Condition()
        self.threads: list[threading.Thread] = []

    def __call__(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], object]
    ) -> None:
        number = len(self.threads)

        def run() -> None:
            self.events.append(f"start{number}")
            try:
                while True:
                    if self.gate is not None:
                        self.gate.acquire()
                    data = source.read()
                    if not data:
                        break
                    with self.changed:
                        self.frames.append(data)
                        self.changed.notify_all()
            finally:
                source.cleanup()
                self.events.append(f"end{number}")
                after(None)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def count(self) -> int:
        with self.changed:
            return len(self.frames)

    async def wait_frames(self, count: int, *, timeout_s: float = 10.0) -> None:
        """Wait until at least ``count`` frames were read."""

        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: len(self.frames) >= count, timeout_s)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"only {self.count()} of {count} frames were read")


# --- speech-to-text double -------------------------------------------------------------


class ScriptedStream:
    """One speaker's stream of :class:`ScriptedTranscriber`."""

    def __init__(self, owner: ScriptedTranscriber, speaker_id: str, keyterms: Sequence[str]):
        self.owner = owner
        self.speaker_id = speaker_id
        self.keyterms = list(keyterms)
        self.bytes_in = 0
        self.voiced_frames = 0
        self.finalize_calls = 0
        self.closed = False
        self._pending = b""
        self._voiced_since_final = 0
        self._started = False
        self._events: asyncio.Queue[TranscriptEvent | None] = asyncio.Queue()

    def feed(self, pcm: bytes) -> None:
        """Count voiced frames; announce speech and an interim once enough arrived."""
        if self.closed:
            return
        self.bytes_in += len(pcm)
        data = self._pending + pcm
        frame_bytes = _FRAME_SAMPLES * 2
        cut = len(data) - len(data) % frame_bytes
        self._pending = data[cut:]
        for start in range(0, cut, frame_bytes):
            samples = np.frombuffer(data[start : start + frame_bytes], np.int16).astype(np.float64)
            if float(np.sqrt(np.mean(samples * samples))) > _VOICED_RMS:
                self.voiced_frames += 1
                self._voiced_since_final += 1
        if self._voiced_since_final >= self.owner.min_voiced_frames and not self._started:
            self._started = True
            now = time.monotonic_ns()
            self._events.put_nowait(TranscriptEvent("speech_started", now))
            self._events.put_nowait(TranscriptEvent("interim", now, text=self._peek()))

    def _peek(self) -> str:
        lines = self.owner.scripts.get(self.speaker_id)
        return lines[0] if lines else self.owner.default_text

    async def events(self) -> AsyncIterator[TranscriptEvent]:  # type: ignore[override]
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    async def finalize(self) -> None:
        """Release the next scripted line as a speech-final transcript if speech was heard."""
        self.finalize_calls += 1
        if self.owner.finalize_delay_s:
            await asyncio.sleep(self.owner.finalize_delay_s)
        if self._voiced_since_final < self.owner.min_voiced_frames:
            return
        lines = self.owner.scripts.get(self.speaker_id)
        text = lines.popleft() if lines else self.owner.default_text
        self._voiced_since_final = 0
        self._started = False
        self._events.put_nowait(
            TranscriptEvent(
                "final", time.monotonic_ns(), text=text, speech_final=True, confidence=0.9
            )
        )

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self._events.put_nowait(None)


@dataclass
class ScriptedTranscriber:
    """A :class:`~familiar_connect.speech.stt.base.Transcriber` with scripted lines per speaker.

    Attributes:
        scripts: speaker id -> lines released one per finalized turn.
        default_text: released when a speaker has no script left.
        min_voiced_frames: voiced 20 ms frames before speech counts.
        finalize_delay_s: how long "the provider" takes to answer a Finalize.
    """

    scripts: dict[str, deque[str]] = field(default_factory=dict)
    default_text: str = "hello there"
    min_voiced_frames: int = 5
    finalize_delay_s: float = 0.0
    name: str = "scripted"
    streams: list[ScriptedStream] = field(default_factory=list)
    closed: bool = False

    @classmethod
    def with_lines(
        cls, lines: Mapping[str, Sequence[str]], **options: object
    ) -> ScriptedTranscriber:
        """Script ``lines`` per speaker id."""
        return cls(scripts={k: deque(v) for k, v in lines.items()}, **options)  # type: ignore[arg-type]

    async def open_stream(self, *, speaker_id: str, keyterms: Sequence[str] = ()) -> ScriptedStream:
        stream = ScriptedStream(self, speaker_id, keyterms)
        self.streams.append(stream)
        return stream

    def streams_for(self, speaker_id: str) -> list[ScriptedStream]:
        return [s for s in self.streams if s.speaker_id == speaker_id]

    async def aclose(self) -> None:
        self.closed = True
        for stream in self.streams:
            await stream.aclose()


# --- text-to-speech double -------------------------------------------------------------


class ToneContext:
    """One reply of :class:`ToneSynthesizer`."""

    def __init__(self, owner: ToneSynthesizer) -> None:
        self.owner = owner
        self.clauses: list[str] = []
        self.finished = False
        self.cancelled = False
        self._queue: asyncio.Queue[AudioChunk | WordTiming | Exception | None] = asyncio.Queue()
        self._offset_s = 0.0

    async def say(self, text: str) -> None:
        if self.cancelled:
            return
        self.clauses.append(text)
        if (
            self.owner.fail_after_clauses is not None
            and len(self.clauses) > self.owner.fail_after_clauses
        ):
            self._queue.put_nowait(ProviderConnectionError("tone synth dropped", provider="tone"))
            return
        per_word = self.owner.seconds_per_word
        for word in text.split():
            if self.owner.word_timings:
                self._queue.put_nowait(WordTiming(word, self._offset_s, self._offset_s + per_word))
            audio = tone(per_word, freq_hz=self.owner.freq_hz).tobytes()
            chunk = self.owner.chunk_bytes
            for start in range(0, len(audio), chunk):
                self._queue.put_nowait(
                    AudioChunk(audio[start : start + chunk], time.monotonic_ns())
                )
            self._offset_s += per_word

    async def finish(self) -> None:
        self.finished = True
        self._queue.put_nowait(None)

    async def stream(self) -> AsyncIterator[AudioChunk | WordTiming]:  # type: ignore[override]
        while True:
            if self.owner.hold is not None:
                await self.owner.hold.wait()
            item = await self._queue.get()
            if item is None or self.cancelled:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def cancel(self) -> None:
        self.cancelled = True
        self._queue.put_nowait(None)


@dataclass
class ToneSynthesizer:
    """A :class:`~familiar_connect.speech.tts.base.Synthesizer` that speaks tones.

    Attributes:
        seconds_per_word: audio per word.
        chunk_bytes: size of the audio chunks streamed (deliberately not a frame multiple).
        fail_after_clauses: the context fails on the clause after this many.
        fail_on_open: ``new_context`` raises.
        hold: when set to an unset event, audio waits until it is set.
        word_timings: stream a WordTiming per word.
    """

    seconds_per_word: float = 0.1
    word_timings: bool = True
    freq_hz: float = 330.0
    chunk_bytes: int = 1_400
    fail_after_clauses: int | None = None
    fail_on_open: bool = False
    hold: asyncio.Event | None = None
    name: str = "tone"
    contexts: list[ToneContext] = field(default_factory=list)
    closed: bool = False

    async def new_context(self) -> ToneContext:
        if self.fail_on_open:
            raise ProviderConnectionError("tone synth unreachable", provider="tone")
        context = ToneContext(self)
        self.contexts.append(context)
        return context

    async def aclose(self) -> None:
        self.closed = True
