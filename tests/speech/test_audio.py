"""Sans-I/O PCM utilities: channel mixing, framing, level, VAD and resampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.speech.audio import (
    MONO_FRAME_BYTES,
    SILENCE_DBFS,
    STEREO_FRAME_BYTES,
    EnergyVad,
    PcmFramer,
    ReplayBuffer,
    StreamResampler,
    downmix_stereo,
    duration_s,
    rms_dbfs,
    upmix_mono,
)

RATE = 48_000


def tone(
    seconds: float, *, freq_hz: float = 220.0, amplitude: float = 0.3, rate: int = RATE
) -> bytes:
    t = np.arange(int(round(seconds * rate))) / rate
    return (np.sin(2 * np.pi * freq_hz * t) * amplitude * 32767).astype("<i2").tobytes()


def noise(seconds: float, *, amplitude: float, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.0, amplitude * 32767, int(seconds * RATE)).clip(-32768, 32767)
    return samples.astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return b"\x00\x00" * int(seconds * RATE)


pcm_samples = st.lists(st.integers(-32768, 32767), max_size=400).map(
    lambda xs: np.array(xs, dtype="<i2").tobytes()
)


class TestDownmixStereo:
    @given(pcm_samples.filter(lambda b: len(b) % 4 == 0))
    def test_halves_the_length(self, stereo: bytes) -> None:
        """Mono output has exactly one sample per stereo pair."""
        assert len(downmix_stereo(stereo)) == len(stereo) // 2

    @given(pcm_samples)
    def test_identical_channels_round_trip(self, mono: bytes) -> None:
        """Downmixing an upmixed signal gives the original back exactly."""
        assert downmix_stereo(upmix_mono(mono)) == mono

    def test_averages_the_channels(self) -> None:
        """Each mono sample is the mean of left and right, without overflow at full scale."""
        stereo = np.array([32767, 32767, -32768, -32768, 1000, -1000, 3, 4], dtype="<i2").tobytes()
        mono = np.frombuffer(downmix_stereo(stereo), dtype="<i2").tolist()
        assert mono == [32767, -32768, 0, 3]

    def test_rejects_partial_samples(self) -> None:
        """A length that is not whole stereo samples is an error, not silent truncation."""
        with pytest.raises(ValueError, match="2-channel"):
            downmix_stereo(b"\x00" * 6)


class TestUpmixMono:
    @given(pcm_samples)
    def test_doubles_the_length_with_equal_channels(self, mono: bytes) -> None:
        """Each mono sample becomes an identical left/right pair."""
        stereo = np.frombuffer(upmix_mono(mono), dtype="<i2").reshape(-1, 2)
        assert stereo.shape[0] * 2 == len(mono)
        assert (stereo[:, 0] == stereo[:, 1]).all()

    def test_rejects_odd_length(self) -> None:
        """Half a sample is an error."""
        with pytest.raises(ValueError):
            upmix_mono(b"\x00")


class TestRmsDbfs:
    def test_silence_and_empty_are_the_floor(self) -> None:
        """Digital silence and empty input report SILENCE_DBFS."""
        assert rms_dbfs(b"") == SILENCE_DBFS
        assert rms_dbfs(silence(0.02)) == SILENCE_DBFS

    def test_sine_level(self) -> None:
        """A full-scale sine is about -3 dBFS; half amplitude is 6 dB lower."""
        assert rms_dbfs(tone(0.1, amplitude=1.0)) == pytest.approx(-3.01, abs=0.05)
        assert rms_dbfs(tone(0.1, amplitude=0.5)) == pytest.approx(-9.03, abs=0.05)

    def test_duration(self) -> None:
        """Byte counts convert to seconds for mono and stereo."""
        assert duration_s(MONO_FRAME_BYTES) == pytest.approx(0.02)
        assert duration_s(STEREO_FRAME_BYTES, channels=2) == pytest.approx(0.02)


class TestPcmFramer:
    @given(st.lists(st.binary(max_size=9000), max_size=20))
    def test_never_loses_or_reorders_bytes(self, pushes: list[bytes]) -> None:
        """Frames plus the held remainder are exactly the input, and every frame is full size."""
        framer = PcmFramer()
        frames: list[bytes] = []
        for chunk in pushes:
            frames += framer.push(chunk)
        assert all(len(f) == STEREO_FRAME_BYTES for f in frames)
        held = framer.pending_bytes
        assert held < STEREO_FRAME_BYTES
        tail = framer.flush(pad=False) or b""
        assert b"".join(frames) + tail == b"".join(pushes)
        assert len(tail) == held

    def test_flush_pads_with_silence(self) -> None:
        """The last partial frame is padded to a full frame of silence."""
        framer = PcmFramer(frame_bytes=8)
        assert framer.push(b"\x01\x02\x03") == []
        assert framer.flush() == b"\x01\x02\x03" + b"\x00" * 5
        assert framer.flush() is None

    def test_first_frame_as_soon_as_it_is_full(self) -> None:
        """A frame is released the moment 20 ms exist, not on a later push."""
        framer = PcmFramer()
        assert framer.push(b"\x00" * (STEREO_FRAME_BYTES - 2)) == []
        assert len(framer.push(b"\x00\x00")) == 1

    def test_clear_drops_the_remainder(self) -> None:
        """clear() (barge-in) drops held bytes and says how many."""
        framer = PcmFramer()
        framer.push(b"\x00" * 100)
        assert framer.clear() == 100
        assert framer.pending_bytes == 0

    def test_rejects_odd_frame_size(self) -> None:
        """Frames must be whole 16-bit samples."""
        with pytest.raises(ValueError):
            PcmFramer(frame_bytes=3)


replay_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 600)),
        st.tuples(st.just("take"), st.integers(1, 900)),
        st.tuples(st.just("ack"), st.integers(0, 5000)),
        st.tuples(st.just("rewind"), st.just(0)),
    ),
    max_size=60,
)


class TestReplayBuffer:
    @given(replay_ops)
    def test_takes_match_the_input_and_nothing_is_lost(self, ops: list[tuple[str, int]]) -> None:
        """Every take is the audio at its position; without overflow every byte goes out at least once."""
        buffer = ReplayBuffer(max_pending_bytes=1 << 20, replay_bytes=1000)
        history = bytearray()
        taken_upto = 0
        for op, n in ops:
            if op == "push":
                chunk = bytes((len(history) + i) % 251 for i in range(n * 2))
                history += chunk
                assert buffer.push(chunk) == 0
            elif op == "take":
                position = buffer.sent
                chunk = buffer.take(n * 2)
                assert chunk == history[position : position + len(chunk)]
                taken_upto = max(taken_upto, buffer.sent)
            elif op == "ack":
                buffer.acknowledge(n)
                assert buffer.covered <= buffer.sent
            else:
                before = buffer.sent
                replayed = buffer.rewind()
                assert buffer.sent == before - replayed
                assert buffer.sent >= min(before, buffer.fed - 1000)
                assert buffer.sent >= min(before, buffer.covered)
        rest = buffer.take(len(history))
        assert buffer.sent == len(history) and len(rest) % 2 == 0
        assert buffer.held_bytes <= 1000  # only the replay window is kept once all is sent

    def test_rewind_starts_after_the_last_final(self) -> None:
        """Audio a final covered is not replayed; the rest is."""
        buffer = ReplayBuffer(max_pending_bytes=10_000, replay_bytes=10_000)
        buffer.push(b"\x01\x00" * 500)
        buffer.take(1000)
        buffer.acknowledge(400)
        assert buffer.rewind() == 600
        assert buffer.take(10_000)[:2] == b"\x01\x00" and buffer.sent == 1000

    def test_rewind_is_bounded_by_replay_bytes(self) -> None:
        """At most replay_bytes are sent again, however much no final covered."""
        buffer = ReplayBuffer(max_pending_bytes=10_000, replay_bytes=100)
        buffer.push(b"\x00" * 1000)
        buffer.take(1000)
        assert buffer.rewind() == 100
        assert buffer.replayed_bytes == 100

    def test_overflow_drops_oldest_unsent_and_counts(self) -> None:
        """Unsent audio past max_pending_bytes is dropped oldest-first, counted, and memory stays bounded."""
        buffer = ReplayBuffer(max_pending_bytes=100, replay_bytes=50)
        assert buffer.push(bytes(range(200)) + bytes(range(100))) == 200
        assert buffer.overflow_bytes == 200
        assert buffer.take(1000) == bytes(range(100))
        assert buffer.held_bytes <= 100 + 50

    def test_rejects_partial_samples(self) -> None:
        """Half a sample is an error."""
        with pytest.raises(ValueError):
            ReplayBuffer(max_pending_bytes=10, replay_bytes=10).push(b"\x00")


class TestEnergyVad:
    def test_speech_between_silences(self) -> None:
        """A tone between silences gives one start at its onset and one end at its offset."""
        vad = EnergyVad()
        events = vad.feed(silence(0.2) + tone(0.5) + silence(0.5))
        assert [e.kind for e in events] == ["start", "end"]
        assert events[0].offset_s == pytest.approx(0.2)
        assert events[1].offset_s == pytest.approx(0.7)

    def test_quiet_noise_is_not_speech(self) -> None:
        """Background noise below the start threshold never starts voice."""
        assert EnergyVad().feed(noise(1.0, amplitude=0.002)) == []

    def test_short_blip_is_ignored(self) -> None:
        """A click shorter than start_ms is not voice."""
        assert EnergyVad(start_ms=60).feed(silence(0.1) + tone(0.04) + silence(0.1)) == []

    def test_short_pause_does_not_end_speech(self) -> None:
        """A pause shorter than stop_ms inside speech keeps it one stretch (time hysteresis)."""
        vad = EnergyVad(stop_ms=300)
        events = vad.feed(tone(0.3) + silence(0.1) + tone(0.3) + silence(0.4))
        assert [e.kind for e in events] == ["start", "end"]

    def test_level_between_thresholds_keeps_state(self) -> None:
        """A level between stop_dbfs and start_dbfs neither starts nor ends voice (level hysteresis)."""
        between = tone(0.5, amplitude=10 ** (-48 / 20) * 1.414)  # about -48 dBFS
        idle = EnergyVad(start_dbfs=-45, stop_dbfs=-52)
        assert idle.feed(between) == []
        speaking = EnergyVad(start_dbfs=-45, stop_dbfs=-52)
        assert [e.kind for e in speaking.feed(tone(0.1) + between)] == ["start"]
        assert speaking.voiced

    @given(st.lists(st.integers(1, 5000), min_size=1, max_size=30))
    def test_chunking_does_not_change_decisions(self, cuts: list[int]) -> None:
        """Feeding the same audio in arbitrary pieces gives the same events."""
        audio = silence(0.1) + tone(0.3) + silence(0.4) + tone(0.2)
        whole = EnergyVad().feed(audio)
        pieced = EnergyVad()
        events = []
        position = 0
        for cut in cuts:
            size = cut * 2
            events += pieced.feed(audio[position : position + size])
            position += size
        events += pieced.feed(audio[position:])
        assert events == whole

    def test_end_of_input_closes_open_speech(self) -> None:
        """When packets stop mid-speech (Discord in silence), end_of_input reports the end."""
        vad = EnergyVad()
        vad.feed(tone(0.3))
        assert [e.kind for e in vad.end_of_input()] == ["end"]
        assert vad.end_of_input() == []

    def test_rejects_inverted_thresholds(self) -> None:
        """stop_dbfs above start_dbfs would flap, so it is refused."""
        with pytest.raises(ValueError):
            EnergyVad(start_dbfs=-50, stop_dbfs=-40)


class TestStreamResampler:
    def test_48k_to_16k_keeps_duration_and_signal(self) -> None:
        """One second in gives one second out (with the flushed tail), still audible."""
        resampler = StreamResampler(48_000, 16_000)
        source = tone(1.0, freq_hz=440)
        out = b"".join(resampler.process(chunk) for chunk in _chunks(source, MONO_FRAME_BYTES))
        out += resampler.flush()
        assert len(out) // 2 == pytest.approx(16_000, abs=2)
        assert rms_dbfs(out) == pytest.approx(rms_dbfs(source), abs=0.5)

    def test_odd_byte_is_carried_over(self) -> None:
        """A chunk ending mid-sample keeps its half sample for the next chunk."""
        resampler = StreamResampler(48_000, 16_000, quality="QQ")
        source = tone(0.06)
        out = resampler.process(source[:961]) + resampler.process(source[961:]) + resampler.flush()
        assert len(out) // 2 == pytest.approx(960, abs=2)

    def test_reusable_after_flush(self) -> None:
        """After flush the resampler starts a fresh utterance."""
        resampler = StreamResampler(48_000, 16_000)
        for _ in range(2):
            out = resampler.process(tone(0.1)) + resampler.flush()
            assert len(out) // 2 == pytest.approx(1600, abs=2)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
