"""Playback: the bounded PCM source discord.py reads, one reply's playback, and the lane."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import discord
import numpy as np
import pytest
from discord.ext import voice_recv

from familiar_connect.platforms.discord.playback import (
    STEREO_FRAME_BYTES,
    PcmStreamSource,
    PlaybackLane,
)
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.platforms.discord.test_voice_kit import ThreadPlayer, tone


def frames_of(seconds: float) -> bytes:
    return tone(seconds).tobytes()


class TestPcmStreamSource:
    def test_frames_are_stereo_copies_of_mono(self) -> None:
        """Each read is 20 ms of 48 kHz stereo whose two channels equal the mono input."""
        source = PcmStreamSource()
        mono = tone(0.04)
        source.write(mono.tobytes())
        frame = source.read()
        assert len(frame) == STEREO_FRAME_BYTES
        stereo = np.frombuffer(frame, np.int16).reshape(-1, 2)
        assert np.array_equal(stereo[:, 0], mono[:960]) and np.array_equal(stereo[:, 1], mono[:960])

    def test_end_has_no_trailing_silence(self) -> None:
        """After the input ends, a partial frame is padded once and then reading ends."""
        source = PcmStreamSource()
        source.write(frames_of(0.03))
        source.end_of_input()
        assert len(source.read()) == STEREO_FRAME_BYTES
        last = source.read()
        assert len(last) == STEREO_FRAME_BYTES and not any(last[-STEREO_FRAME_BYTES // 2 :])
        assert source.read() == b""
        assert source.stats.underrun_frames == 0
        assert source.played_s == pytest.approx(0.03)

    def test_underrun_gives_one_silent_frame(self) -> None:
        """A writer that is late gets a counted silent frame, not a stalled player."""
        source = PcmStreamSource(underrun_wait_s=0.001)
        assert source.read() == bytes(STEREO_FRAME_BYTES)
        assert source.stats.underrun_frames == 1
        assert source.first_frame_ns is None

    def test_stop_ends_reading_at_once(self) -> None:
        """After stop, read returns b"" even with audio buffered, and writes are refused."""
        source = PcmStreamSource()
        source.write(frames_of(1.0))
        source.stop()
        assert source.read() == b""
        assert source.write(frames_of(0.1)) == 0

    def test_bounded_with_space_callback(self) -> None:
        """A full buffer accepts no more; draining below low water calls on_space once."""
        calls: list[int] = []
        source = PcmStreamSource(
            max_buffer_s=0.1, low_water_s=0.04, on_space=lambda: calls.append(1)
        )
        accepted = source.write(frames_of(0.5))
        assert accepted == int(0.1 * 48_000) * 2
        assert source.free_bytes == 0 and source.stats.writer_waits == 1
        for _ in range(2):
            source.read()
        assert calls == []
        source.read()
        source.read()
        assert calls == [1]

    def test_only_whole_samples_accepted(self) -> None:
        """An odd byte count is cut to whole 16-bit samples."""
        source = PcmStreamSource()
        assert source.write(b"\x01\x02\x03") == 2

    def test_blocked_read_wakes_on_write(self) -> None:
        """A read waiting for audio returns the frame as soon as the writer supplies it."""
        source = PcmStreamSource(underrun_wait_s=30.0)
        result: list[bytes] = []
        reader = threading.Thread(target=lambda: result.append(source.read()))
        reader.start()
        source.write(frames_of(0.02))
        reader.join(timeout=10)
        assert len(result[0]) == STEREO_FRAME_BYTES and any(result[0])
        assert source.first_frame_ns is not None


class TestReplyPlayback:
    async def test_first_frame_starts_the_player(self) -> None:
        """The player starts once 20 ms of audio exist, before the reply is complete."""
        player = ThreadPlayer()
        lane = PlaybackLane(player)
        playback = lane.new_reply()
        await playback.feed(frames_of(0.01))
        assert player.threads == []
        await playback.feed(frames_of(0.01))
        assert len(player.threads) == 1
        await playback.finish()
        assert player.count() == 1
        assert playback.first_frame_ns is not None

    async def test_finish_waits_until_played(self) -> None:
        """finish returns once every frame was read, with no silence added."""
        player = ThreadPlayer()
        playback = PlaybackLane(player).new_reply()
        await playback.feed(frames_of(0.5))
        await asyncio.wait_for(playback.finish(), timeout=10)
        assert player.count() == 25
        assert all(any(f) for f in player.frames)
        assert playback.played_s == pytest.approx(0.5)

    async def test_full_buffer_makes_the_writer_wait(self) -> None:
        """Feeding more than the buffer holds waits for the player instead of dropping audio."""
        player = ThreadPlayer()
        lane = PlaybackLane(player, max_buffer_s=0.1, low_water_s=0.04)
        playback = lane.new_reply()
        await asyncio.wait_for(playback.feed(frames_of(1.0)), timeout=10)
        await asyncio.wait_for(playback.finish(), timeout=10)
        assert player.count() == 50
        assert playback.source.stats.writer_waits >= 1

    async def test_stop_within_a_frame(self) -> None:
        """After stop, at most the frame already being read goes out."""
        gate = threading.Semaphore(0)
        player = ThreadPlayer(gate=gate)
        playback = PlaybackLane(player).new_reply()
        await playback.feed(frames_of(1.0))
        for _ in range(5):
            gate.release()
        await player.wait_frames(5)
        playback.stop()
        for _ in range(10):
            gate.release()
        await asyncio.wait_for(playback.wait_closed(), timeout=10)
        assert player.count() == 5
        assert playback.played_s == pytest.approx(0.1)

    async def test_replies_never_overlap(self) -> None:
        """The second reply's player starts only after the first one's thread ended."""
        player = ThreadPlayer()
        lane = PlaybackLane(player)
        first = lane.new_reply()
        await first.feed(frames_of(0.2))
        second = lane.new_reply()
        feeding = asyncio.create_task(second.feed(frames_of(0.2)))
        await first.finish()
        await feeding
        await second.finish()
        assert player.events == ["start0", "end0", "start1", "end1"]

    async def test_player_refusing_to_start(self) -> None:
        """A voice client that cannot play (disconnected) ends the playback with its error."""

        def refuse(
            source: discord.AudioSource, *, after: Callable[[Exception | None], object]
        ) -> None:
            raise discord.ClientException("Not connected to voice.")

        playback = PlaybackLane(refuse).new_reply()
        await playback.feed(frames_of(0.1))
        await asyncio.wait_for(playback.finish(), timeout=5)
        assert isinstance(playback.error, discord.ClientException)
        assert not playback.active


class TestPlaybackThroughDiscordPy:
    async def test_reply_reaches_the_voice_server(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """Fed audio is played by discord.py's player and decoded by the fake as non-silent."""
        voice, vc = stack
        playback = PlaybackLane(vc.play).new_reply()
        for start in range(0, 24_000 * 2, 1_400):
            await playback.feed(tone(0.5).tobytes()[start : start + 1_400])
        await asyncio.wait_for(playback.finish(), timeout=10)
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= 24)
        assert playback.source.stats.underrun_frames <= 2
        assert voice.bot_packet_errors == 0

    async def test_barge_in_stops_within_a_frame(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """Stopping mid-reply lets at most one more frame out; the rest is never sent."""
        voice, vc = stack
        playback = PlaybackLane(vc.play).new_reply()
        await playback.feed(tone(3.0).tobytes())
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= 10)
        frames_at_stop = playback.source.stats.frames_out
        playback.stop()
        await asyncio.wait_for(playback.wait_closed(), timeout=10)
        assert playback.source.stats.frames_out - frames_at_stop <= 1
        await asyncio.sleep(0.1)  # let in-flight datagrams land before counting
        assert voice.nonsilent_bot_frames() <= playback.source.stats.frames_out
        assert voice.nonsilent_bot_frames() < 100
        assert not vc.is_playing()
