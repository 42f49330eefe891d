"""Sans-I/O PCM utilities for the voice pipeline: channel mixing, 20 ms framing, VAD, resampling.

Every function here takes bytes and returns bytes or small values; nothing awaits, nothing holds
a socket, and nothing reads a clock. Audio is signed 16-bit little-endian PCM throughout:

* Discord hands us 48 kHz **stereo** (3840 bytes per 20 ms frame) and wants the same back;
* speech-to-text providers get 48 kHz **mono** (:func:`downmix_stereo`), Azure 16 kHz mono
  (:class:`StreamResampler`);
* text-to-speech providers give 48 kHz mono, which :func:`upmix_mono` and :class:`PcmFramer`
  turn into Discord frames.

:class:`ReplayBuffer` is the send side of a streaming recogniser: audio waiting to go out, plus
the recent audio no final transcript has covered yet, to send again after a reconnect.

:class:`EnergyVad` is a cheap voice-activity detector (RMS level with hysteresis in level and in
time) for barge-in and for stamping the end of voiced audio; it is not a speech recogniser, so a
loud cough counts as voice until its duration says otherwise (callers gate on duration or words).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import soxr

__all__ = [
    "BYTES_PER_SAMPLE",
    "FRAME_MS",
    "FRAME_SAMPLES",
    "MONO_FRAME_BYTES",
    "SAMPLE_RATE_HZ",
    "SILENCE_DBFS",
    "STEREO_FRAME_BYTES",
    "EnergyVad",
    "PcmFramer",
    "ReplayBuffer",
    "StreamResampler",
    "VadEvent",
    "downmix_stereo",
    "duration_s",
    "rms_dbfs",
    "upmix_mono",
]

SAMPLE_RATE_HZ = 48_000
"""Discord's rate, and the rate every provider is asked for."""
FRAME_MS = 20
"""One Opus frame."""
FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000
"""960 samples per channel in one 20 ms frame."""
BYTES_PER_SAMPLE = 2
MONO_FRAME_BYTES = FRAME_SAMPLES * BYTES_PER_SAMPLE
"""1920 bytes: 20 ms of 48 kHz mono s16le."""
STEREO_FRAME_BYTES = MONO_FRAME_BYTES * 2
"""3840 bytes: 20 ms of 48 kHz stereo s16le, what ``discord.AudioSource.read()`` returns."""
SILENCE_DBFS = -120.0
"""The level reported for digital silence (and for empty input)."""

_FULL_SCALE = 32768.0


def _samples(pcm: bytes | bytearray | memoryview, *, channels: int) -> np.ndarray:
    if len(pcm) % (BYTES_PER_SAMPLE * channels):
        raise ValueError(
            f"PCM length {len(pcm)} is not a whole number of {channels}-channel s16le samples"
        )
    return np.frombuffer(pcm, dtype="<i2")


def downmix_stereo(pcm: bytes | bytearray | memoryview) -> bytes:
    """Average interleaved stereo s16le into mono s16le (half the bytes).

    Raises:
        ValueError: the length is not a multiple of 4 (one stereo sample).
    """
    samples = _samples(pcm, channels=2).reshape(-1, 2).astype(np.int32)
    # Sum then shift: exact, no float rounding, and never overflows int16.
    return ((samples[:, 0] + samples[:, 1]) >> 1).astype("<i2").tobytes()


def upmix_mono(pcm: bytes | bytearray | memoryview) -> bytes:
    """Duplicate mono s16le into interleaved stereo s16le (twice the bytes).

    Raises:
        ValueError: the length is odd.
    """
    return np.repeat(_samples(pcm, channels=1), 2).astype("<i2").tobytes()


def rms_dbfs(pcm: bytes | bytearray | memoryview) -> float:
    """Root-mean-square level of s16le PCM in dBFS (0 is a full-scale square wave).

    Returns :data:`SILENCE_DBFS` for empty input or digital silence.

    Raises:
        ValueError: the length is odd.
    """
    samples = _samples(pcm, channels=1)
    if samples.size == 0:
        return SILENCE_DBFS
    mean_square = float(np.mean(np.square(samples, dtype=np.float64)))
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / (_FULL_SCALE * _FULL_SCALE)))


def duration_s(n_bytes: int, *, sample_rate_hz: int = SAMPLE_RATE_HZ, channels: int = 1) -> float:
    """Seconds of audio in ``n_bytes`` of s16le PCM."""
    return n_bytes / (sample_rate_hz * channels * BYTES_PER_SAMPLE)


class PcmFramer:
    """Cut a byte stream into fixed-size frames, holding the remainder for the next push.

    The framer never loses or reorders a byte: the concatenation of every frame returned, plus
    :attr:`pending_bytes` still held, is exactly the concatenation of every push. It holds less
    than one frame between calls.

    Args:
        frame_bytes: frame size; :data:`STEREO_FRAME_BYTES` (Discord playback) by default.

    Raises:
        ValueError: ``frame_bytes`` is not a positive even number.
    """

    __slots__ = ("_buf", "frame_bytes")

    def __init__(self, frame_bytes: int = STEREO_FRAME_BYTES) -> None:
        if frame_bytes <= 0 or frame_bytes % BYTES_PER_SAMPLE:
            raise ValueError("frame_bytes must be a positive even number")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not yet fill a frame."""
        return len(self._buf)

    def push(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` and return every frame that is now complete (often none)."""
        self._buf += data
        usable = len(self._buf) - len(self._buf) % self.frame_bytes
        if not usable:
            return []
        size = self.frame_bytes
        frames = [bytes(self._buf[i : i + size]) for i in range(0, usable, size)]
        del self._buf[:usable]
        return frames

    def flush(self, *, pad: bool = True) -> bytes | None:
        """Return the held remainder as a last frame, padded with silence when ``pad``.

        Returns ``None`` when nothing is held.
        """
        if not self._buf:
            return None
        tail = bytes(self._buf)
        self._buf.clear()
        if pad:
            tail += b"\x00" * (self.frame_bytes - len(tail))
        return tail

    def clear(self) -> int:
        """Drop the held remainder (barge-in); return how many bytes were dropped."""
        dropped = len(self._buf)
        self._buf.clear()
        return dropped


class ReplayBuffer:
    """Audio waiting to be sent to a streaming recogniser, with history for replay (sans-I/O).

    Positions are absolute byte offsets since the buffer was created: ``fed`` (everything pushed),
    ``sent`` (everything taken for sending), and ``covered`` (everything a final transcript has
    acknowledged). After a dropped connection, :meth:`rewind` moves ``sent`` back to the first
    byte no final covered, but never more than ``replay_bytes`` behind ``fed``, so that audio is
    sent again and no word is lost or transcribed twice.

    Memory is bounded: unsent audio beyond ``max_pending_bytes`` is dropped oldest-first and
    counted in :attr:`overflow_bytes`; history older than both ``sent`` and the replay window is
    released.

    Args:
        max_pending_bytes: the most unsent audio held.
        replay_bytes: the most audio sent again after a drop.

    Raises:
        ValueError: a negative size, or ``max_pending_bytes`` of zero.
    """

    __slots__ = (
        "_buf",
        "_start",
        "covered",
        "fed",
        "max_pending_bytes",
        "overflow_bytes",
        "replay_bytes",
        "replayed_bytes",
        "sent",
    )

    def __init__(self, *, max_pending_bytes: int, replay_bytes: int) -> None:
        if max_pending_bytes <= 0 or replay_bytes < 0:
            raise ValueError("max_pending_bytes must be positive and replay_bytes non-negative")
        self.max_pending_bytes = max_pending_bytes - max_pending_bytes % BYTES_PER_SAMPLE
        self.replay_bytes = replay_bytes - replay_bytes % BYTES_PER_SAMPLE
        self._buf = bytearray()
        self._start = 0
        self.fed = 0
        self.sent = 0
        self.covered = 0
        self.overflow_bytes = 0
        self.replayed_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes pushed but not yet taken."""
        return self.fed - self.sent

    @property
    def held_bytes(self) -> int:
        """Bytes of audio in memory: the unsent audio plus the replay window."""
        return len(self._buf)

    def push(self, pcm: bytes | bytearray | memoryview) -> int:
        """Append audio; return how many unsent bytes overflow dropped just now (usually 0).

        Raises:
            ValueError: ``pcm`` is not whole 16-bit samples.
        """
        if len(pcm) % BYTES_PER_SAMPLE:
            raise ValueError("PCM must be whole 16-bit samples")
        self._buf += pcm
        self.fed += len(pcm)
        dropped = 0
        if self.pending > self.max_pending_bytes:
            dropped = self.pending - self.max_pending_bytes
            self.sent += dropped
            self.overflow_bytes += dropped
        self._trim()
        return dropped

    def take(self, max_bytes: int) -> bytes:
        """Take up to ``max_bytes`` of pending audio for sending (oldest first)."""
        begin = self.sent - self._start
        chunk = bytes(self._buf[begin : begin + max_bytes])
        self.sent += len(chunk)
        self._trim()
        return chunk

    def acknowledge(self, upto: int) -> None:
        """A final transcript covers the audio before ``upto`` (clamped to what was sent)."""
        upto = min(upto - upto % BYTES_PER_SAMPLE, self.sent)
        self.covered = max(self.covered, upto)

    def acknowledge_sent(self) -> None:
        """Everything sent is settled (a clean close flushed it, or a new connection starts)."""
        self.covered = self.sent

    def rewind(self) -> int:
        """After a drop: send again what no final covered (at most ``replay_bytes``).

        Returns:
            How many bytes will be sent again.
        """
        start = max(self.covered, self.fed - self.replay_bytes, self._start)
        start = min(start, self.sent)
        start -= start % BYTES_PER_SAMPLE
        replayed = self.sent - start
        self.sent = start
        self.replayed_bytes += replayed
        return replayed

    def _trim(self) -> None:
        keep_from = min(self.sent, self.fed - self.replay_bytes)
        if keep_from > self._start:
            del self._buf[: keep_from - self._start]
            self._start = keep_from


@dataclass(frozen=True, slots=True)
class VadEvent:
    """A change of voice activity.

    Attributes:
        kind: ``"start"`` when voice began, ``"end"`` when it stopped.
        offset_s: where in the detector's input it happened, in seconds of audio since the
            detector was created or last reset. For ``"start"`` this is the first voiced frame
            (not the frame that confirmed it); for ``"end"`` the end of the last voiced frame.
    """

    kind: Literal["start", "end"]
    offset_s: float


class EnergyVad:
    """Voice-activity detection from frame energy, with hysteresis in level and in time.

    Audio is judged in 20 ms frames of 48 kHz mono. Voice **starts** after ``start_ms`` of frames
    at or above ``start_dbfs`` in a row, and **ends** after ``stop_ms`` of frames below
    ``stop_dbfs`` in a row. Because ``stop_dbfs`` is below ``start_dbfs``, a level that hovers
    around one threshold does not flap. Partial frames are held until complete.

    Args:
        start_dbfs: level a frame must reach to count towards a start.
        stop_dbfs: level below which a frame counts towards an end.
        start_ms: voiced audio needed to declare a start (rounded up to whole frames).
        stop_ms: quiet audio needed to declare an end (rounded up to whole frames).
        sample_rate_hz: input rate.

    Raises:
        ValueError: ``stop_dbfs > start_dbfs`` or a non-positive duration.
    """

    __slots__ = (
        "_frame_bytes",
        "_frames_seen",
        "_framer",
        "_last_voiced_frame",
        "_quiet_run",
        "_sample_rate_hz",
        "_start_frames",
        "_stop_frames",
        "_voiced_run",
        "start_dbfs",
        "stop_dbfs",
        "voiced",
    )

    def __init__(
        self,
        *,
        start_dbfs: float = -45.0,
        stop_dbfs: float = -52.0,
        start_ms: int = 60,
        stop_ms: int = 300,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
    ) -> None:
        if stop_dbfs > start_dbfs:
            raise ValueError("stop_dbfs must not be above start_dbfs (that is the hysteresis)")
        if start_ms <= 0 or stop_ms <= 0:
            raise ValueError("start_ms and stop_ms must be positive")
        self.start_dbfs = start_dbfs
        self.stop_dbfs = stop_dbfs
        self._sample_rate_hz = sample_rate_hz
        samples = sample_rate_hz * FRAME_MS // 1000
        self._frame_bytes = samples * BYTES_PER_SAMPLE
        self._start_frames = math.ceil(start_ms / FRAME_MS)
        self._stop_frames = math.ceil(stop_ms / FRAME_MS)
        self._framer = PcmFramer(self._frame_bytes)
        self.voiced = False
        self._frames_seen = 0
        self._voiced_run = 0
        self._quiet_run = 0
        self._last_voiced_frame = -1

    def _offset(self, frame_index: int) -> float:
        return frame_index * FRAME_MS / 1000

    def feed(self, pcm: bytes | bytearray | memoryview) -> list[VadEvent]:
        """Judge ``pcm`` (mono s16le, any length) and return the changes it caused, in order."""
        events: list[VadEvent] = []
        for frame in self._framer.push(pcm):
            level = rms_dbfs(frame)
            index = self._frames_seen
            self._frames_seen += 1
            if not self.voiced:
                self._voiced_run = self._voiced_run + 1 if level >= self.start_dbfs else 0
                if self._voiced_run >= self._start_frames:
                    self.voiced = True
                    self._quiet_run = 0
                    self._last_voiced_frame = index
                    first = index - self._voiced_run + 1
                    events.append(VadEvent("start", self._offset(first)))
            else:
                if level < self.stop_dbfs:
                    self._quiet_run += 1
                else:
                    self._quiet_run = 0
                    self._last_voiced_frame = index
                if self._quiet_run >= self._stop_frames:
                    self.voiced = False
                    self._voiced_run = 0
                    events.append(VadEvent("end", self._offset(self._last_voiced_frame + 1)))
        return events

    def end_of_input(self) -> list[VadEvent]:
        """The input stopped (Discord sends no packets in silence): close an open voiced stretch."""
        self._framer.clear()
        if not self.voiced:
            self._voiced_run = 0
            return []
        self.voiced = False
        self._voiced_run = 0
        self._quiet_run = 0
        return [VadEvent("end", self._offset(self._last_voiced_frame + 1))]

    def reset(self) -> None:
        """Forget everything, including the offset clock."""
        self._framer.clear()
        self.voiced = False
        self._frames_seen = 0
        self._voiced_run = 0
        self._quiet_run = 0
        self._last_voiced_frame = -1


class StreamResampler:
    """Streaming sample-rate conversion of mono s16le (soxr), e.g. 48 kHz → 16 kHz for Azure.

    soxr's filters have delay, so output lags input and may arrive in bursts (with ``"HQ"``,
    nothing for the first 20 ms frame, then about 490 samples every other frame); call
    :meth:`flush` at the end of an utterance to get the tail. Quality ``"QQ"`` gives a steady
    output with no delay at lower fidelity.

    Args:
        in_rate_hz: input rate.
        out_rate_hz: output rate.
        quality: soxr quality, one of ``"QQ" "LQ" "MQ" "HQ" "VHQ"``.
    """

    __slots__ = ("_odd", "_stream", "in_rate_hz", "out_rate_hz", "quality")

    def __init__(
        self, in_rate_hz: int = SAMPLE_RATE_HZ, out_rate_hz: int = 16_000, *, quality: str = "HQ"
    ) -> None:
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self.quality = quality
        self._stream = soxr.ResampleStream(
            in_rate_hz, out_rate_hz, 1, dtype="int16", quality=quality
        )
        self._odd = b""

    def process(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Resample the next piece of input; may return fewer (or zero) bytes than expected."""
        data = self._odd + bytes(pcm)
        cut = len(data) - len(data) % BYTES_PER_SAMPLE
        self._odd = data[cut:]
        if not cut:
            return b""
        samples = np.frombuffer(data[:cut], dtype="<i2")
        return self._stream.resample_chunk(samples, last=False).astype("<i2").tobytes()

    def flush(self) -> bytes:
        """Return the filter's tail and reset, ready for the next utterance."""
        self._odd = b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        self._stream.clear()
        return tail.astype("<i2").tobytes()
