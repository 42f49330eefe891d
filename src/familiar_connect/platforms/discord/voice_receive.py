"""Hearing a voice channel: each member's audio, off the receive thread, into STT and turns.

Two pieces, one on each side of the thread boundary::

    voice-recv router thread                     event loop
    ────────────────────────                     ──────────
    SpeakerSink.write(user, 20 ms stereo PCM)
      drop bots, unknown and opted-out users
      downmix to mono (numpy), RMS
      bounded hop ── call_soon_threadsafe ──▶  deliver(...)  →  VoiceListener.audio(user, mono)
                                                 one STT stream per speaker, opened on voiced
                                                 audio (with a short pre-roll), Finalize after an
                                                 idle gap, closed after a long silence
                                                 TurnDetector (core/turns.py) → signals:
                                                   SpeechOnset → on_onset (barge-in)
                                                   TurnDetected → on_turn (an utterance)

Discord sends no packets while someone is silent, so the provider's own
endpointing never hears the silence it waits for: after
``finalize_after_idle_ms`` without packets the listener asks the stream to
``finalize``, and the :class:`~familiar_connect.core.turns.TurnDetector`'s
idle timer ends a turn even if the provider stays quiet.

Bounds: ``max_pending_frames`` frames in flight across the thread hop (more
are dropped and counted), ``max_backlog_ms`` of audio per speaker while its
stream is opening, ``preroll_ms`` kept before speech starts, ``max_speakers``
speakers at once.

Threading: :class:`SpeakerSink` runs on voice-recv's router thread and touches
only its own locked counter, the (thread-safe) opted-out check and
``loop.call_soon_threadsafe``. :class:`VoiceListener` is loop-only.

Cancellation: :meth:`VoiceListener.aclose` cancels every task it owns and
closes every stream; run it to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import discord
import numpy as np
import structlog
from discord.ext import voice_recv

from familiar_connect.core.events import Platform
from familiar_connect.core.turns import (
    SpeechOnset,
    TurnConfig,
    TurnDetected,
    TurnDetector,
    TurnDiscarded,
    TurnSignal,
)
from familiar_connect.errors import ProviderAuthError
from familiar_connect.speech.stt.base import SpeechStream, Transcriber

__all__ = ["ListenConfig", "ReceiveStats", "SpeakerSink", "VoiceListener", "downmix"]

log = structlog.get_logger(__name__)

_FRAME_MS = 20
_FRAME_NS = _FRAME_MS * 1_000_000
_MAX_TASKS = 256

Deliver = Callable[[int, str, str, bytes, float, int], None]
"""``(user_id, name, display_name, mono_pcm, rms, t_ns)``, called on the loop."""


@dataclass(frozen=True, slots=True)
class ListenConfig:
    """Knobs of the receive side (see ``docs/voice.md`` for their latency effect).

    Attributes:
        voiced_rms: a 20 ms mono frame with at least this RMS counts as voiced.
        finalize_after_idle_ms: no packets this long → ask the stream to finalize.
        close_stream_after_idle_s: close a speaker's stream after this much silence
            (it reopens on the next voiced frame).
        preroll_ms: audio kept before the first voiced frame, sent when a stream opens.
        max_backlog_ms: audio held per speaker while its stream opens (overflow counted).
        max_pending_frames: frames in flight from the receive thread to the loop.
        max_speakers: speakers with open streams at once (more are not transcribed).
        stream_open_timeout_s: give up opening a stream after this long.
        reopen_backoff_s / max_reopen_backoff_s: wait before retrying a failed open (doubling).
        turns: the turn detector's thresholds (back-channels, barge-in, idle end, caps).
    """

    voiced_rms: float = 400.0
    finalize_after_idle_ms: int = 500
    close_stream_after_idle_s: float = 30.0
    preroll_ms: int = 300
    max_backlog_ms: int = 5_000
    max_pending_frames: int = 500
    max_speakers: int = 32
    stream_open_timeout_s: float = 10.0
    reopen_backoff_s: float = 1.0
    max_reopen_backoff_s: float = 30.0
    turns: TurnConfig = field(default_factory=TurnConfig)


@dataclass(slots=True)
class ReceiveStats:
    """Counters of the receive side (monotonic since start).

    The ``frames_dropped_*`` counters written on the receive thread have that
    thread as their only writer.
    """

    frames_in: int = 0
    frames_dropped_overflow: int = 0
    frames_dropped_opted_out: int = 0
    frames_dropped_unknown: int = 0
    frames_dropped_speakers: int = 0
    backlog_dropped: int = 0
    streams_opened: int = 0
    stream_failures: int = 0
    finalizes: int = 0
    turns: int = 0
    turns_discarded: int = 0


def downmix(pcm: bytes) -> tuple[bytes, float]:
    """48 kHz stereo s16le → (mono s16le, RMS of the mono samples)."""
    usable = len(pcm) // 4 * 4
    samples = np.frombuffer(pcm[:usable], dtype="<i2").reshape(-1, 2).astype(np.int32)
    if not samples.size:
        return b"", 0.0
    mono = ((samples[:, 0] + samples[:, 1]) >> 1).astype("<i2")
    level = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    return mono.tobytes(), level


class SpeakerSink(voice_recv.AudioSink):
    """voice-recv sink: decoded audio per member, downmixed, handed to the loop.

    Args:
        deliver: called on the loop for every accepted frame.
        loop: the event loop to hop to.
        is_opted_out: ``(platform, user_id) -> bool``; must be thread-safe (a set lookup).
        stats: counters to update.
        max_pending_frames: frames in flight to the loop; more are dropped and counted.

    Threading: ``write`` runs on voice-recv's router thread.
    """

    def __init__(
        self,
        deliver: Deliver,
        *,
        loop: asyncio.AbstractEventLoop,
        is_opted_out: Callable[[str, str], bool],
        stats: ReceiveStats,
        max_pending_frames: int,
    ) -> None:
        super().__init__()
        self._deliver = deliver
        self._loop = loop
        self._is_opted_out = is_opted_out
        self._stats = stats
        self._max_pending = max_pending_frames
        self._pending = 0
        self._lock = threading.Lock()

    def wants_opus(self) -> bool:
        return False

    def write(self, user: discord.abc.User | None, data: voice_recv.VoiceData) -> None:
        if user is None or user.bot:
            self._stats.frames_dropped_unknown += 1
            return
        if self._is_opted_out(Platform.DISCORD.value, str(user.id)):
            self._stats.frames_dropped_opted_out += 1
            return
        if not data.pcm:
            return
        with self._lock:
            if self._pending >= self._max_pending:
                self._stats.frames_dropped_overflow += 1
                return
            self._pending += 1
        mono, level = downmix(data.pcm)
        display = getattr(user, "display_name", user.name)
        try:
            self._loop.call_soon_threadsafe(
                self._arrive, user.id, user.name, display, mono, level, time.monotonic_ns()
            )
        except RuntimeError:  # the loop is closed: shutting down
            with self._lock:
                self._pending -= 1

    def _arrive(
        self, user_id: int, name: str, display: str, mono: bytes, level: float, t_ns: int
    ) -> None:
        with self._lock:
            self._pending -= 1
        self._stats.frames_in += 1
        self._deliver(user_id, name, display, mono, level, t_ns)

    def cleanup(self) -> None:
        pass


class _Speaker:
    """One member's STT stream: opened on speech, finalized when Discord goes quiet."""

    def __init__(self, listener: VoiceListener, user_id: int) -> None:
        config = listener.config
        self.listener = listener
        self.user_id = user_id
        self.speaker_id = str(user_id)
        self.stream: SpeechStream | None = None
        self.opening = False
        self.reader: asyncio.Task[None] | None = None
        self.preroll: deque[bytes] = deque(maxlen=max(config.preroll_ms // _FRAME_MS, 1))
        self.backlog: list[bytes] = []
        self.max_backlog = max(config.max_backlog_ms // _FRAME_MS, 1)
        self.last_audio_ns = 0
        self.unfinalized_voice = False
        self.finalize_wanted = False
        self.next_open_ns = 0
        self.backoff_s = config.reopen_backoff_s
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due_ns = 0
        self.closed = False

    def feed(self, mono: bytes, voiced: bool, t_ns: int) -> None:
        listener = self.listener
        self.last_audio_ns = t_ns
        if voiced:
            self.unfinalized_voice = True
        if self.stream is not None:
            self.stream.feed(mono)
        elif self.opening:
            if len(self.backlog) < self.max_backlog:
                self.backlog.append(mono)
            else:
                listener.stats.backlog_dropped += 1
        elif voiced and t_ns >= self.next_open_ns and not listener.stt_disabled:
            self.backlog = [*self.preroll, mono]
            self.preroll.clear()
            self.opening = True
            listener.spawn(self._open(), name=f"voice:stt-open:{self.user_id}")
        else:
            self.preroll.append(mono)
        if not self.closed:
            delay_ns = listener.config.finalize_after_idle_ms * 1_000_000
            if self.timer is None:
                self._arm(delay_ns)
            elif voiced and self.timer_due_ns > time.monotonic_ns() + delay_ns:
                # The pending tick is the stream-close one (long): the finalize comes first.
                self.timer.cancel()
                self._arm(delay_ns)

    def _arm(self, delay_ns: int) -> None:
        self.timer_due_ns = time.monotonic_ns() + delay_ns
        self.timer = asyncio.get_running_loop().call_later(delay_ns / 1e9, self._tick)

    async def _open(self) -> None:
        listener = self.listener
        config = listener.config
        try:
            async with asyncio.timeout(config.stream_open_timeout_s):
                stream = await listener.transcriber.open_stream(
                    speaker_id=self.speaker_id, keyterms=listener.keyterms()
                )
        except ProviderAuthError as exc:
            # Never retried: the operator has to fix the key.
            first = not listener.stt_disabled
            listener.stt_disabled = True
            listener.stats.stream_failures += 1
            log.error(
                "voice_stt_auth_failed", provider=listener.transcriber.name, error=str(exc)[:300]
            )
            self.opening = False
            self.backlog.clear()
            if first and listener.on_stt_disabled is not None:
                # Once per connection: the people talking get told, not just the log.
                listener.on_stt_disabled(listener.transcriber.name)
            return
        except Exception as exc:
            listener.stats.stream_failures += 1
            self.next_open_ns = time.monotonic_ns() + int(self.backoff_s * 1e9)
            log.warning(
                "voice_stt_open_failed",
                user_id=self.user_id,
                error=type(exc).__name__,
                retry_in_s=round(self.backoff_s, 2),
            )
            self.backoff_s = min(self.backoff_s * 2, config.max_reopen_backoff_s)
            self.opening = False
            self.backlog.clear()
            return
        self.opening = False
        if self.closed:
            with contextlib.suppress(Exception):
                await stream.aclose()
            return
        listener.stats.streams_opened += 1
        self.backoff_s = config.reopen_backoff_s
        self.stream = stream
        for chunk in self.backlog:
            stream.feed(chunk)
        self.backlog.clear()
        self.reader = asyncio.get_running_loop().create_task(
            self._read(stream), name=f"voice:stt-read:{self.user_id}"
        )
        if self.finalize_wanted:
            self._finalize()  # the speaker went quiet before the stream was ready

    async def _read(self, stream: SpeechStream) -> None:
        listener = self.listener
        try:
            async for event in stream.events():
                listener.signals(listener.detector.on_transcript(self.speaker_id, event))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            listener.stats.stream_failures += 1
            log.warning("voice_stt_stream_failed", user_id=self.user_id, error=type(exc).__name__)
        if self.stream is stream:
            # The provider gave up on this stream: keep what it heard, reopen on speech.
            self.stream = None
            with contextlib.suppress(Exception):
                await stream.aclose()

    def _finalize(self) -> None:
        self.unfinalized_voice = False
        stream = self.stream
        if stream is None:
            self.finalize_wanted = self.opening
            return
        self.finalize_wanted = False
        self.listener.stats.finalizes += 1
        self.listener.spawn(self._call_finalize(stream), name=f"voice:stt-finalize:{self.user_id}")

    async def _call_finalize(self, stream: SpeechStream) -> None:
        try:
            await stream.finalize()
        except Exception as exc:
            log.warning("voice_stt_finalize_failed", user_id=self.user_id, error=type(exc).__name__)

    def _tick(self) -> None:
        """Idle timer: Finalize once Discord went quiet; close the stream after a long silence."""
        self.timer = None
        if self.closed:
            return
        config = self.listener.config
        idle_ns = time.monotonic_ns() - self.last_audio_ns
        deadlines: list[int] = []
        finalize_ns = config.finalize_after_idle_ms * 1_000_000
        if self.unfinalized_voice:
            if idle_ns >= finalize_ns:
                self._finalize()
            else:
                deadlines.append(finalize_ns - idle_ns)
        if self.stream is not None:
            close_ns = int(config.close_stream_after_idle_s * 1e9)
            if idle_ns >= close_ns:
                self.listener.spawn(self.close_stream(), name=f"voice:stt-close:{self.user_id}")
            else:
                deadlines.append(close_ns - idle_ns)
        if deadlines:
            self._arm(min(deadlines))

    async def close_stream(self) -> None:
        """Close the STT stream (long silence, leaving); it reopens on the next speech."""
        stream, self.stream = self.stream, None
        reader, self.reader = self.reader, None
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.aclose()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(reader)
            reader.cancel()

    async def aclose(self) -> None:
        """Stop for good: timers off, buffers dropped, stream closed."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.backlog.clear()
        self.preroll.clear()
        await self.close_stream()


class VoiceListener:
    """Every speaker of one voice connection: STT streams and turn detection.

    Args:
        transcriber: opens one stream per speaker.
        keyterms: the words to bias recognition towards (called when a stream opens).
        on_onset: a speaker started saying something substantive (``speaker_id``).
        on_turn: a speaker's turn is complete.
        config: thresholds and bounds.
        stats: counters to update (shared with the :class:`SpeakerSink`).
        on_stt_disabled: the provider refused its credentials and speech-to-text is off for
            this connection (called once, with the provider's name).

    Threading: loop only.
    """

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        keyterms: Callable[[], Sequence[str]],
        on_onset: Callable[[SpeechOnset], None],
        on_turn: Callable[[TurnDetected], None],
        config: ListenConfig,
        stats: ReceiveStats,
        on_stt_disabled: Callable[[str], None] | None = None,
    ) -> None:
        self.transcriber = transcriber
        self.keyterms = keyterms
        self.on_onset = on_onset
        self.on_turn = on_turn
        self.on_stt_disabled = on_stt_disabled
        self.config = config
        self.stats = stats
        self.detector = TurnDetector(config.turns)
        self.stt_disabled = False
        self._speakers: dict[int, _Speaker] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._poll: asyncio.TimerHandle | None = None
        self._poll_at_ns: int | None = None
        self._closed = False

    @property
    def speakers(self) -> list[int]:
        """User ids with a stream open or opening."""
        return list(self._speakers)

    def audio(self, user_id: int, mono: bytes, level: float, t_ns: int) -> None:
        """One 20 ms mono frame of ``user_id`` (loop thread)."""
        if self._closed:
            return
        speaker = self._speakers.get(user_id)
        if speaker is None:
            if len(self._speakers) >= self.config.max_speakers:
                self.stats.frames_dropped_speakers += 1
                return
            speaker = self._speakers[user_id] = _Speaker(self, user_id)
        voiced = level >= self.config.voiced_rms
        speaker.feed(mono, voiced, t_ns)
        self.signals(
            self.detector.on_audio(
                speaker.speaker_id, now_ns=t_ns, duration_ns=_FRAME_NS, voiced=voiced
            )
        )

    def signals(self, signals: list[TurnSignal]) -> None:
        """Act on the turn detector's signals, then re-arm its idle timer."""
        for signal in signals:
            if isinstance(signal, SpeechOnset):
                self.on_onset(signal)
            elif isinstance(signal, TurnDetected):
                self.stats.turns += 1
                self.on_turn(signal)
            elif isinstance(signal, TurnDiscarded):
                self.stats.turns_discarded += 1
                log.debug("voice_backchannel_discarded", speaker_id=signal.speaker_id)
        self._arm_poll()

    async def drop_speaker(self, user_id: int, *, keep_words: bool) -> None:
        """Stop hearing ``user_id`` (left the channel, opted out).

        Args:
            keep_words: end their open turn now (``True``) or forget it (opt-out).
        """
        speaker = self._speakers.pop(user_id, None)
        if keep_words:
            self.signals(self.detector.end_speaker(str(user_id), time.monotonic_ns()))
        else:
            self.detector.forget(str(user_id))
        if speaker is not None:
            await speaker.aclose()

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run a small task owned by the listener (bounded; cancelled by :meth:`aclose`)."""
        if self._closed or len(self._tasks) >= _MAX_TASKS:
            coro.close()
            log.warning("voice_task_refused", name=name, closed=self._closed)
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Close every stream and task; pending words are dropped."""
        self._closed = True
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        speakers = list(self._speakers.values())
        self._speakers.clear()
        for task in list(self._tasks):
            task.cancel()
        for speaker in speakers:
            with contextlib.suppress(Exception):
                await speaker.aclose()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)

    def _arm_poll(self) -> None:
        deadline = self.detector.next_deadline_ns()
        if deadline is None or self._closed:
            return
        if self._poll is not None and self._poll_at_ns is not None and self._poll_at_ns <= deadline:
            return
        if self._poll is not None:
            self._poll.cancel()
        delay_s = max(deadline - time.monotonic_ns(), 0) / 1e9
        self._poll_at_ns = deadline
        self._poll = asyncio.get_running_loop().call_later(delay_s, self._on_poll)

    def _on_poll(self) -> None:
        self._poll = None
        self._poll_at_ns = None
        if not self._closed:
            self.signals(self.detector.poll(time.monotonic_ns()))
