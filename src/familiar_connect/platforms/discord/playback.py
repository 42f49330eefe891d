"""Playback of synthesised speech into a Discord voice connection, frame by frame.

Text-to-speech produces 48 kHz mono s16le in chunks of any size, faster or
slower than real time; discord.py's ``AudioPlayer`` thread pulls one 20 ms
frame of 48 kHz *stereo* (3,840 bytes) every 20 ms and Opus-encodes it. The
two meet in :class:`PcmStreamSource`, a ``discord.AudioSource`` over a
thread-safe, bounded buffer:

- **first frame early**: :class:`ReplyPlayback` starts the player as soon as
  20 ms of audio exist, not after a sentence or on a global tick;
- **mono → stereo** per frame with numpy, on the player thread;
- **underruns** (the provider is slower than real time) become one frame of
  silence after waiting ``underrun_wait_s``, so the player keeps its clock;
- **no silence at the end**: once input is closed and drained, ``read()``
  returns ``b""`` and the player stops (a last partial frame is zero-padded
  to a full frame, which Opus needs);
- **barge-in**: :meth:`PcmStreamSource.stop` makes the next ``read()`` return
  ``b""`` at once, so at most the frame already handed to the encoder still
  goes out (≤ 20 ms), followed by discord.py's standard five Opus silence
  frames;
- **bounded**: at most ``max_buffer_s`` of audio is buffered; a writer that
  finds the buffer full waits (:meth:`ReplyPlayback.feed`) until the player
  has drained it below the low-water mark — nothing is dropped.

:class:`PlaybackLane` makes sure replies on one connection never overlap: a
reply's player starts only after the previous one's thread has finished.

Threading: :class:`PcmStreamSource` is shared by the event loop (writer) and
the player thread (reader) under one ``threading.Condition``; its callbacks
(``on_space``) run on the player thread and must only hop to the loop.
:class:`ReplyPlayback` and :class:`PlaybackLane` are loop-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import discord
import numpy as np
import structlog

__all__ = [
    "FRAME_MS",
    "MONO_FRAME_BYTES",
    "SAMPLE_RATE_HZ",
    "STEREO_FRAME_BYTES",
    "PcmStreamSource",
    "PlaybackLane",
    "PlaybackStats",
    "PlayerStarter",
    "ReplyPlayback",
]

log = structlog.get_logger(__name__)

SAMPLE_RATE_HZ = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
MONO_FRAME_BYTES = FRAME_SAMPLES * 2
STEREO_FRAME_BYTES = MONO_FRAME_BYTES * 2
_SILENT_FRAME = bytes(STEREO_FRAME_BYTES)
_COMPACT_AT_BYTES = 64 * 1024


class PlayerStarter(Protocol):
    """Starts discord.py's player on a source: ``vc.play`` (``after`` runs on the player thread)."""

    def __call__(
        self, source: discord.AudioSource, *, after: Callable[[Exception | None], Any]
    ) -> None: ...


@dataclass(slots=True)
class PlaybackStats:
    """Counters of one source (written by both threads under the source's lock).

    Attributes:
        bytes_in: mono PCM bytes accepted from the writer.
        frames_out: frames handed to the player (audio and underrun silence).
        audio_samples_out: samples of real audio handed to the player (no padding, no underruns).
        underrun_frames: silent frames inserted because the writer was late.
        writer_waits: times the writer found the buffer full and had to wait.
    """

    bytes_in: int = 0
    frames_out: int = 0
    audio_samples_out: int = 0
    underrun_frames: int = 0
    writer_waits: int = 0


class PcmStreamSource(discord.AudioSource):
    """A ``discord.AudioSource`` reading 20 ms stereo frames from a bounded mono buffer.

    Args:
        max_buffer_s: audio the buffer holds at most; :meth:`write` accepts no more.
        low_water_s: once a full buffer drains below this, ``on_space`` is called.
        underrun_wait_s: how long ``read()`` waits for a late writer before
            returning a silent frame.
        on_space: called (on the player thread) when a writer that hit the limit
            may write again; it must only hop to the event loop.
        clock_ns: monotonic clock for :attr:`first_frame_ns`.

    Threading: every method is thread-safe. ``read`` is discord.py's (player
    thread); the others are the writer's (event loop).
    """

    def __init__(
        self,
        *,
        max_buffer_s: float = 10.0,
        low_water_s: float = 2.0,
        underrun_wait_s: float = 0.015,
        on_space: Callable[[], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._max_bytes = max(int(max_buffer_s * SAMPLE_RATE_HZ) * 2, MONO_FRAME_BYTES)
        self._low_bytes = min(int(low_water_s * SAMPLE_RATE_HZ) * 2, self._max_bytes // 2)
        self._underrun_wait_s = underrun_wait_s
        self._on_space = on_space
        self._clock_ns = clock_ns
        self._cond = threading.Condition()
        self._buf = bytearray()
        self._pos = 0
        self._closed = False
        self._stopped = False
        self._space_wanted = False
        self.stats = PlaybackStats()
        self.first_frame_ns: int | None = None
        """``time.monotonic_ns()`` when the first real audio frame was handed to the player."""

    # --- writer side ----------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Mono bytes waiting to be played."""
        with self._cond:
            return len(self._buf) - self._pos

    @property
    def free_bytes(self) -> int:
        """Mono bytes :meth:`write` would accept now."""
        with self._cond:
            return max(self._max_bytes - (len(self._buf) - self._pos), 0)

    @property
    def stopped(self) -> bool:
        """:meth:`stop` was called."""
        return self._stopped

    @property
    def played_s(self) -> float:
        """Seconds of real audio handed to the player so far."""
        return self.stats.audio_samples_out / SAMPLE_RATE_HZ

    def write(self, pcm: bytes | memoryview) -> int:
        """Append mono s16le audio; return how many bytes were accepted (never blocks).

        Fewer than ``len(pcm)`` bytes are accepted when the buffer is full (then
        ``on_space`` will be called once it drains) and none after :meth:`stop`
        or :meth:`end_of_input`. Only whole samples are accepted.
        """
        with self._cond:
            if self._stopped or self._closed:
                return 0
            room = self._max_bytes - (len(self._buf) - self._pos)
            take = min(len(pcm), room) // 2 * 2
            if take:
                self._buf += pcm[:take]
                self.stats.bytes_in += take
                self._cond.notify_all()
            if take < len(pcm) // 2 * 2:
                self._space_wanted = True
                self.stats.writer_waits += 1
            return take

    def end_of_input(self) -> None:
        """No more audio: play what is buffered, then end (``read`` returns ``b""``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop now (barge-in): ``read`` returns ``b""`` from its next call; buffer dropped."""
        with self._cond:
            self._stopped = True
            self._buf.clear()
            self._pos = 0
            self._cond.notify_all()

    # --- player side ------------------------------------------------------------------

    def is_opus(self) -> bool:
        return False

    def read(self) -> bytes:
        """One 20 ms stereo frame, a silent frame on underrun, or ``b""`` at the end (player thread)."""
        notify = False
        with self._cond:
            deadline: float | None = None
            while True:
                if self._stopped:
                    return b""
                available = len(self._buf) - self._pos
                if available >= MONO_FRAME_BYTES or (self._closed and available):
                    size = min(available, MONO_FRAME_BYTES)
                    chunk = bytes(self._buf[self._pos : self._pos + size])
                    self._pos += size
                    if self._pos >= _COMPACT_AT_BYTES:
                        del self._buf[: self._pos]
                        self._pos = 0
                    break
                if self._closed:
                    return b""
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._underrun_wait_s
                if now >= deadline:
                    self.stats.underrun_frames += 1
                    self.stats.frames_out += 1
                    return _SILENT_FRAME
                self._cond.wait(deadline - now)
            self.stats.frames_out += 1
            self.stats.audio_samples_out += len(chunk) // 2
            if self.first_frame_ns is None:
                self.first_frame_ns = self._clock_ns()
            if self._space_wanted and len(self._buf) - self._pos <= self._low_bytes:
                self._space_wanted = False
                notify = True
        if notify and self._on_space is not None:
            self._on_space()
        mono = np.frombuffer(chunk, dtype="<i2")
        stereo = np.repeat(mono, 2).tobytes()
        if len(stereo) < STEREO_FRAME_BYTES:
            stereo += bytes(STEREO_FRAME_BYTES - len(stereo))
        return stereo

    def cleanup(self) -> None:
        """Called by discord.py when the player ends; drops whatever is left."""
        with self._cond:
            self._stopped = True
            self._buf.clear()
            self._pos = 0
            self._cond.notify_all()


class ReplyPlayback:
    """The audio of one reply: fed by the TTS stream, played as soon as a frame exists.

    Create it with :meth:`PlaybackLane.new_reply`.

    Cancellation: every ``async`` method may be cancelled; the audio keeps
    playing until :meth:`stop` (cancelling :meth:`finish` does not stop it).
    """

    def __init__(
        self,
        lane: PlaybackLane,
        previous: ReplyPlayback | None,
        *,
        max_buffer_s: float,
        low_water_s: float,
        underrun_wait_s: float,
    ) -> None:
        self._lane = lane
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        self._space = asyncio.Event()
        self._closed = asyncio.Event()
        self.source = PcmStreamSource(
            max_buffer_s=max_buffer_s,
            low_water_s=low_water_s,
            underrun_wait_s=underrun_wait_s,
            on_space=self._space_from_thread,
        )
        self.started = False
        self.error: BaseException | None = None

    # --- state --------------------------------------------------------------------------

    @property
    def played_s(self) -> float:
        """Seconds of this reply's audio handed to the player (what people heard, ±1 frame)."""
        return self.source.played_s

    @property
    def first_frame_ns(self) -> int | None:
        """When the first audio frame was handed to the player."""
        return self.source.first_frame_ns

    @property
    def active(self) -> bool:
        """Started or about to start, and not finished or stopped."""
        return not self._closed.is_set() and not self.source.stopped

    # --- feeding --------------------------------------------------------------------------

    async def feed(self, pcm: bytes) -> None:
        """Queue mono s16le audio; start the player once a frame exists; wait while full.

        Audio fed after :meth:`stop` is discarded.
        """
        view = memoryview(pcm)
        while view.nbytes >= 2:
            if self.source.stopped:
                return
            self._space.clear()
            taken = self.source.write(view)
            view = view[taken:]
            if not self.started and self.source.buffered_bytes >= MONO_FRAME_BYTES:
                await self._start()
            if view.nbytes >= 2 and not taken:
                await self._space.wait()

    async def finish(self) -> None:
        """No more audio: wait until it has all been played (or playback was stopped)."""
        self.source.end_of_input()
        if not self.started and self.source.buffered_bytes and not self.source.stopped:
            await self._start()
        if not self.started:
            self._closed.set()
            return
        await self._closed.wait()

    def stop(self) -> None:
        """Barge-in: stop within one frame. Safe to call at any time, repeatedly."""
        self.source.stop()
        self._space.set()
        if not self.started:
            self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until this reply's player thread has ended; return at once if it never started."""
        if self.started:
            await self._closed.wait()

    # --- internals --------------------------------------------------------------------------

    async def _start(self) -> None:
        if self._previous is not None:
            previous, self._previous = self._previous, None
            await previous.wait_closed()
        if self.source.stopped or self.started:
            return
        self.started = True
        try:
            self._lane.play(self.source, after=self._after_from_thread)
        except (discord.ClientException, OSError) as exc:
            self.error = exc
            self.source.stop()
            self._closed.set()
            log.warning("voice_playback_not_started", error=type(exc).__name__)

    def _space_from_thread(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._space.set)

    def _after_from_thread(self, error: Exception | None) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._on_player_done, error)

    def _on_player_done(self, error: Exception | None) -> None:
        if error is not None:
            self.error = error
            log.warning("voice_playback_failed", error=type(error).__name__)
        self.source.stop()
        self._space.set()
        self._closed.set()


class PlaybackLane:
    """Replies on one voice connection, played one after another, never overlapping.

    Args:
        play: starts discord.py's player (``vc.play``); called on the loop.
        max_buffer_s: audio buffered per reply at most (see :class:`PcmStreamSource`).
        low_water_s: a waiting writer resumes below this.
        underrun_wait_s: how long the player waits for late audio before a silent frame.

    Threading: loop only.
    """

    def __init__(
        self,
        play: PlayerStarter,
        *,
        max_buffer_s: float = 10.0,
        low_water_s: float = 2.0,
        underrun_wait_s: float = 0.015,
    ) -> None:
        self.play = play
        self._max_buffer_s = max_buffer_s
        self._low_water_s = low_water_s
        self._underrun_wait_s = underrun_wait_s
        self._current: ReplyPlayback | None = None

    @property
    def current(self) -> ReplyPlayback | None:
        """The latest reply's playback, if any."""
        return self._current

    @property
    def speaking(self) -> bool:
        """A reply is playing or about to."""
        return self._current is not None and self._current.active

    def new_reply(self) -> ReplyPlayback:
        """A playback for the next reply; it starts playing after the previous one ended."""
        playback = ReplyPlayback(
            self,
            self._current,
            max_buffer_s=self._max_buffer_s,
            low_water_s=self._low_water_s,
            underrun_wait_s=self._underrun_wait_s,
        )
        self._current = playback
        return playback

    def stop(self) -> None:
        """Stop whatever is playing (barge-in, leaving)."""
        if self._current is not None:
            self._current.stop()
