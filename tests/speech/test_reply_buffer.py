"""ReplyBuffer: a TTS context's audio and word timings, in order and bounded."""

from __future__ import annotations

from familiar_connect.speech.tts.base import AudioChunk, ReplyBuffer, WordTiming


class TestReplyBuffer:
    def test_items_come_out_in_order_and_free_their_bytes(self) -> None:
        """Audio and timings are taken oldest first; taken audio no longer counts."""
        buffer = ReplyBuffer(max_bytes=100)
        word = WordTiming("hi", 0.0, 0.2)
        assert buffer.add_audio(AudioChunk(b"\x00" * 40, 1))
        buffer.add_timing(word)
        assert buffer.add_audio(AudioChunk(b"\x01" * 40, 2))
        assert buffer.buffered_bytes == 80
        taken = list(buffer.take())
        assert [type(item) for item in taken] == [AudioChunk, WordTiming, AudioChunk]
        assert taken[1] == word and buffer.buffered_bytes == 0

    def test_a_consumer_too_far_behind_loses_the_reply(self) -> None:
        """Going over max_bytes drops everything queued and says so."""
        buffer = ReplyBuffer(max_bytes=50)
        assert buffer.add_audio(AudioChunk(b"\x00" * 40, 1))
        assert not buffer.add_audio(AudioChunk(b"\x00" * 40, 2))
        assert list(buffer.take()) == [] and buffer.buffered_bytes == 0
