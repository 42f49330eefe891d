"""The voice ReplySink: clauses to speech, barge-in keeps only played words, TTS failure falls back to text."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from discord.ext import voice_recv
from structlog.testing import capture_logs

from familiar_connect.conversation.sinks import ReplySink
from familiar_connect.platforms.discord.playback import PlaybackLane
from familiar_connect.platforms.discord.voice_sink import VoiceReplySink, spoken_prefix
from familiar_connect.speech.tts.base import WordTiming
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.platforms.discord.test_voice_kit import ThreadPlayer, ToneSynthesizer

CLAUSES = ("Hello there,", "how are you today?", "I missed you.")
WORDS = " ".join(CLAUSES).split()


class Posted:
    """Collects what the sink posts in the linked text channel."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def __call__(self, text: str) -> None:
        self.texts.append(text)


async def speak(sink: VoiceReplySink, clauses: Sequence[str] = CLAUSES) -> str:
    """Drive the sink the way the orchestrator does for one complete reply."""
    await sink.begin()
    for clause in clauses:
        await sink.send(clause)
    return await sink.end(" ".join(clauses))


class TestSpokenPrefix:
    def test_counts_words_that_ended(self) -> None:
        """With timings, a word counts once its audio ended before playback stopped."""
        timings = [WordTiming("a", 0.0, 0.1), WordTiming("b", 0.1, 0.2), WordTiming("c", 0.2, 0.3)]
        assert spoken_prefix(["a", "b,", "c."], timings, played_s=0.25, audio_s=0.3) == 2
        assert spoken_prefix(["a", "b,", "c."], timings, played_s=0.05, audio_s=0.3) == 0

    def test_without_timings_uses_the_played_fraction(self) -> None:
        """Without timings, the played share of the audio is rounded down to whole words."""
        words = ["one", "two", "three", "four"]
        assert spoken_prefix(words, [], played_s=0.5, audio_s=1.0) == 2
        assert spoken_prefix(words, [], played_s=0.0, audio_s=0.0) == 0


class TestVoiceReplySink:
    async def test_is_a_clause_sink(self) -> None:
        """It satisfies the ReplySink protocol in clause mode."""
        sink = VoiceReplySink(ToneSynthesizer(), PlaybackLane(ThreadPlayer()))
        assert isinstance(sink, ReplySink) and sink.mode == "clauses"

    async def test_whole_reply_is_spoken_and_returned(self) -> None:
        """Every clause is synthesised, played in full, and returned as delivered."""
        player = ThreadPlayer()
        synth = ToneSynthesizer()
        sink = VoiceReplySink(synth, PlaybackLane(player))
        delivered = await asyncio.wait_for(speak(sink), timeout=10)
        assert delivered == " ".join(WORDS)
        assert synth.contexts[0].clauses == list(CLAUSES) and synth.contexts[0].finished
        assert player.count() == len(WORDS) * 5
        stamps = sink.reply_stamps()
        assert stamps["first_audio"] <= stamps["first_frame"]

    async def test_first_clause_plays_before_the_reply_ends(self) -> None:
        """Audio of the first clause is playing while the model is still producing the next."""
        player = ThreadPlayer()
        sink = VoiceReplySink(ToneSynthesizer(), PlaybackLane(player))
        await sink.begin()
        await sink.send(CLAUSES[0])
        await player.wait_frames(1)
        await sink.send(CLAUSES[1])
        assert await asyncio.wait_for(sink.end(""), timeout=10) == " ".join(
            " ".join(CLAUSES[:2]).split()
        )

    async def test_barge_in_returns_only_played_words(self) -> None:
        """Interrupted after 12 frames (0.24 s), only the two words that ended are delivered."""
        gate = threading.Semaphore(0)
        player = ThreadPlayer(gate=gate)
        synth = ToneSynthesizer()
        sink = VoiceReplySink(synth, PlaybackLane(player))
        turn = asyncio.create_task(speak(sink))
        for _ in range(12):
            gate.release()
        await player.wait_frames(12)
        assert sink.speaking
        assert sink.interrupt()
        turn.cancel()
        for _ in range(20):
            gate.release()
        delivered = await sink.cancel()
        assert delivered == "Hello there,"
        assert synth.contexts[0].cancelled
        assert player.count() <= 13
        assert not sink.speaking
        assert await sink.cancel() == delivered

    async def test_barge_in_without_word_timings(self) -> None:
        """Without timings the played fraction decides, rounded down to whole words."""
        gate = threading.Semaphore(0)
        player = ThreadPlayer(gate=gate)
        sink = VoiceReplySink(ToneSynthesizer(word_timings=False), PlaybackLane(player))
        turn = asyncio.create_task(speak(sink))
        for _ in range(20):
            gate.release()
        await player.wait_frames(20)
        # All audio has been synthesised and fed (the estimate needs the total).
        assert sink._reply is not None and sink._reply.pump is not None
        await asyncio.wait_for(asyncio.shield(sink._reply.pump), timeout=10)
        sink.interrupt()
        turn.cancel()
        gate.release()
        delivered = await sink.cancel()
        assert delivered is not None and 0 < len(delivered.split()) <= 4

    async def test_tts_failure_mid_reply_posts_the_rest(self) -> None:
        """When the provider fails after the first clause, the rest is posted as text."""
        posted = Posted()
        player = ThreadPlayer()
        sink = VoiceReplySink(
            ToneSynthesizer(fail_after_clauses=1), PlaybackLane(player), post_text=posted
        )
        with capture_logs() as logs:
            delivered = await asyncio.wait_for(speak(sink), timeout=10)
        assert posted.texts == ["how are you today? I missed you."]
        assert delivered == " ".join(WORDS)
        assert player.count() == 2 * 5
        assert sink.stats.text_fallbacks == 1 and sink.stats.tts_failures == 1
        assert any(line["event"] == "voice_tts_failed" for line in logs)

    async def test_tts_unreachable_posts_everything(self) -> None:
        """A provider that cannot open a context leaves the whole reply to the text channel."""
        posted = Posted()
        player = ThreadPlayer()
        sink = VoiceReplySink(
            ToneSynthesizer(fail_on_open=True), PlaybackLane(player), post_text=posted
        )
        delivered = await asyncio.wait_for(speak(sink), timeout=10)
        assert posted.texts == [" ".join(WORDS)] and delivered == " ".join(WORDS)
        assert player.count() == 0

    async def test_fallback_without_text_channel_is_logged(self) -> None:
        """With no linked text channel, the unspoken rest is logged instead of lost silently."""
        sink = VoiceReplySink(ToneSynthesizer(fail_on_open=True), PlaybackLane(ThreadPlayer()))
        with capture_logs() as logs:
            await asyncio.wait_for(speak(sink), timeout=10)
        (line,) = [entry for entry in logs if entry["event"] == "voice_reply_fallback_logged"]
        assert line["text"] == " ".join(WORDS)

    async def test_silent_reply_and_early_cancel(self) -> None:
        """Cancelling before begin or right after it delivers nothing and leaves the sink usable."""
        player = ThreadPlayer()
        sink = VoiceReplySink(ToneSynthesizer(), PlaybackLane(player))
        assert await sink.cancel() == ""
        await sink.begin()
        assert await sink.cancel() == ""
        assert await asyncio.wait_for(speak(sink, ["Again."]), timeout=10) == "Again."

    async def test_notice_goes_to_the_text_channel(self) -> None:
        """Notices (limits, errors) are posted in the linked text channel."""
        posted = Posted()
        sink = VoiceReplySink(ToneSynthesizer(), PlaybackLane(ThreadPlayer()), post_text=posted)
        await sink.notice("I can't think right now.")
        assert posted.texts == ["I can't think right now."]


class TestVoiceReplySinkThroughDiscordPy:
    async def test_reply_is_heard_by_the_voice_server(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """The tone synthesiser's clauses reach the fake voice server as non-silent Opus."""
        voice, vc = stack
        sink = VoiceReplySink(ToneSynthesizer(), PlaybackLane(vc.play))
        delivered = await asyncio.wait_for(speak(sink), timeout=15)
        assert delivered == " ".join(WORDS)
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= len(WORDS) * 5 - 2)

    async def test_barge_in_silences_the_bot(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """After an interruption the fake hears no more of the reply than the words returned."""
        voice, vc = stack
        synth = ToneSynthesizer(seconds_per_word=0.2)
        sink = VoiceReplySink(synth, PlaybackLane(vc.play))
        turn = asyncio.create_task(speak(sink))
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= 15)
        sink.interrupt()
        turn.cancel()
        delivered = await sink.cancel()
        assert delivered is not None and 0 < len(delivered.split()) < len(WORDS)
        await asyncio.sleep(0.1)  # let in-flight datagrams land before counting
        heard = voice.nonsilent_bot_frames()
        assert heard <= len(WORDS) * 10 // 2
        spoken_frames = len(delivered.split()) * 10
        assert spoken_frames <= heard <= spoken_frames + 10 + 2
