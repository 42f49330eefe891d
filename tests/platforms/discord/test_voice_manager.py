"""The voice manager end to end: the real familiar, discord.py + voice-recv, fake Discord voice and LLM."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import discord
import pytest

from familiar_connect.core.events import ConversationKey, Platform, VoiceTurnTimings
from familiar_connect.core.turns import TurnConfig
from familiar_connect.errors import ProviderAuthError
from familiar_connect.platforms.discord.voice import VoiceConfig, VoiceManager
from familiar_connect.platforms.discord.voice_receive import ListenConfig
from tests.fakes.certs import TlsCert
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.fakes.discord_world import (
    ALICE_ID,
    BOB_ID,
    BOT_USER_ID,
    GENERAL_ID,
    GUILD_ID,
    VOICE_ID,
)
from tests.platforms.discord.conftest import DiscordHarness, HarnessFactory
from tests.platforms.discord.test_voice_kit import ScriptedTranscriber, ToneSynthesizer, tone

OTHER_VOICE_ID = 701
KEY = ConversationKey(Platform.DISCORD, str(VOICE_ID), guild_id=str(GUILD_ID))
FAST = VoiceConfig(
    auto_leave_after_s=0.3,
    monitor_interval_s=0.05,
    listen=ListenConfig(
        finalize_after_idle_ms=150,
        turns=TurnConfig(idle_end_ms=800, barge_in_min_voiced_ms=200),
    ),
)


@dataclass
class VoiceRig:
    harness: DiscordHarness
    voice: FakeDiscordVoice
    manager: VoiceManager
    stt: ScriptedTranscriber
    tts: ToneSynthesizer

    @property
    def client(self) -> discord.Client:
        assert self.harness.service.client is not None
        return self.harness.service.client

    async def join(self, channel_id: int = VOICE_ID) -> str:
        channel = self.client.get_channel(channel_id)
        assert isinstance(channel, discord.VoiceChannel)
        return await self.manager.join(channel, text_channel=self.client.get_channel(GENERAL_ID))

    async def history(self) -> list[tuple[str, str]]:
        await self.harness.familiar.history_writer.flush()
        turns = await self.harness.familiar.history.recent("discord", KEY.as_str(), limit=50)
        return [(turn.role, turn.content) for turn in turns]

    async def settle(self) -> None:
        await asyncio.wait_for(self.harness.familiar.orchestrator.wait_idle(KEY), timeout=15)
        await self.harness.familiar.history_writer.flush()


RigFactory = Callable[..., Awaitable[VoiceRig]]


@pytest.fixture(name="voice")
async def fixture_voice(
    fake_discord: FakeDiscord, cert: TlsCert
) -> AsyncIterator[FakeDiscordVoice]:
    fake_discord.world.add_voice_channel(GUILD_ID, OTHER_VOICE_ID, "Stage", position=1)
    async with FakeDiscordVoice(fake_discord, cert) as voice:
        yield voice


@pytest.fixture(name="rig")
async def fixture_rig(
    start_familiar: HarnessFactory, voice: FakeDiscordVoice, cert: TlsCert, tmp_path: Path
) -> AsyncIterator[RigFactory]:
    """Start the familiar (trusting the fake's CA) with a voice manager; leave voice at teardown."""
    managers: list[VoiceManager] = []

    async def make(
        *,
        stt: ScriptedTranscriber | None = None,
        tts: ToneSynthesizer | None = None,
        config: VoiceConfig = FAST,
        in_voice: tuple[str, ...] = ("alice", "bob"),
    ) -> VoiceRig:
        harness = await start_familiar(familiar_extra_ca_file=cert.ca_path)
        familiar = harness.familiar
        stt = stt or ScriptedTranscriber()
        tts = tts or ToneSynthesizer()
        manager = VoiceManager(
            orchestrator=familiar.orchestrator,
            transcriber=stt,
            synthesizer=tts,
            is_opted_out=familiar.privacy_service.is_opted_out,
            familiar_name=familiar.character.display_name,
            aliases=familiar.character.aliases,
            config=dataclasses.replace(config, greeting_cache_dir=tmp_path / "cache"),
            outbound=harness.service.outbound,
            sink_stats=harness.service.sink_stats,
        )
        familiar.subscription_checks.append(manager.is_subscribed)
        managers.append(manager)
        for user in in_voice:
            await harness.discord.voice_state(user, VOICE_ID)
        return VoiceRig(harness, voice, manager, stt, tts)

    yield make
    for manager in managers:
        await manager.aclose()


def posted(rig: VoiceRig, channel_id: int = GENERAL_ID) -> list[str]:
    return [call.json["content"] for call in rig.harness.discord.messages_sent(channel_id)]


class TestJoinAndLeave:
    async def test_join_then_leave(self, rig: RigFactory) -> None:
        """Joining connects voice and subscribes the channel; leaving disconnects."""
        r = await rig()
        assert await r.join() == "joined"
        assert r.voice.connected and r.voice.bot_channel_id == VOICE_ID
        assert r.manager.is_subscribed(KEY) and r.harness.familiar.is_subscribed(KEY)
        assert r.manager.dave is not None
        assert await r.manager.leave() is True
        await r.voice.wait_for(lambda: r.voice.bot_channel_id is None and not r.voice.connected)
        assert not r.manager.connected and not r.manager.is_subscribed(KEY)
        assert await r.manager.leave() is False

    async def test_one_connection_per_process(self, rig: RigFactory) -> None:
        """A second join elsewhere is refused; the same channel again is a no-op."""
        r = await rig()
        assert await r.join() == "joined"
        assert await r.join() == "already_here"
        assert await r.join(OTHER_VOICE_ID) == "busy"
        assert r.voice.connection_count == 1

    async def test_auto_leave_when_alone(self, rig: RigFactory) -> None:
        """Once the last human leaves, the familiar leaves after the configured grace."""
        r = await rig(in_voice=("alice",))
        await r.join()
        await r.harness.discord.voice_state("alice", None)
        await r.voice.wait_for(lambda: r.manager.stats.leaves == 1)
        assert r.voice.bot_channel_id is None and not r.manager.connected

    async def test_kicked_is_cleaned_up(self, rig: RigFactory) -> None:
        """Discord removing the bot from voice ends the manager's connection too."""
        r = await rig()
        await r.join()
        await r.harness.discord.voice_state(BOT_USER_ID, None)
        await r.voice.wait_for(lambda: r.manager.stats.leaves == 1)
        assert r.client.voice_clients == [] and not r.manager.connected

    async def test_greeting_is_spoken_and_cached(self, rig: RigFactory) -> None:
        """The greeting plays on join; the second join reuses the synthesised audio from disk."""
        tts = ToneSynthesizer()
        r = await rig(tts=tts, config=dataclasses.replace(FAST, greeting="Hello everyone"))
        await r.join()
        await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 8)
        await r.manager.leave()
        await r.join()
        await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 18)
        assert len(tts.contexts) == 1


class TestListening:
    async def test_turn_end_to_end(self, rig: RigFactory) -> None:
        """A member speaks, the familiar answers out loud, history and timings are complete."""
        stt = ScriptedTranscriber.with_lines({str(ALICE_ID): ["hey Familiar, what's up"]})
        r = await rig(stt=stt)
        await r.join()
        reply = "Not much, just listening. How are you doing today?"
        r.harness.llm.reply_text(reply)
        await r.voice.user_speaks("alice", tone(0.8))
        await r.voice.wait_for(lambda: r.harness.llm.chat_requests, timeout_s=15)
        await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 40, timeout_s=15)
        await r.settle()
        assert await r.history() == [
            ("user", "hey Familiar, what's up"),
            ("assistant", reply),
        ]
        (stream,) = stt.streams_for(str(ALICE_ID))
        assert "Familiar" in stream.keyterms and "alice" in stream.keyterms
        assert stream.finalize_calls >= 1
        prompt = r.harness.llm.chat_requests[0].json["messages"][-1]["content"]
        assert "what's up" in prompt
        timings = r.harness.familiar.orchestrator.recent_timings[-1]
        assert isinstance(timings, VoiceTurnTimings)
        assert r.manager.sink is not None
        merged = dataclasses.replace(timings)
        for stage, value in r.manager.sink.reply_stamps().items():
            merged.stamp(stage, value)  # until the orchestrator reads the sink's stamps itself
        stamps = [
            merged.speech_end_ns,
            merged.stt_final_ns,
            merged.first_token_ns,
            merged.first_clause_ns,
            merged.first_audio_ns,
            merged.first_frame_ns,
        ]
        assert None not in stamps
        assert stamps == sorted(stamps)  # type: ignore[type-var]

    async def test_two_people_at_once(self, rig: RigFactory) -> None:
        """Two members talking at the same time get separate streams and separate turns."""
        stt = ScriptedTranscriber.with_lines(
            {str(ALICE_ID): ["Familiar, I like tea"], str(BOB_ID): ["Familiar, I prefer coffee"]}
        )
        r = await rig(stt=stt)
        await r.join()
        await asyncio.gather(
            r.voice.user_speaks("alice", tone(0.6, freq_hz=300)),
            r.voice.user_speaks("bob", tone(0.6, freq_hz=700)),
        )
        await r.voice.wait_for(lambda: r.manager.stats.utterances >= 2, timeout_s=15)
        await r.settle()
        users = [text for role, text in await r.history() if role == "user"]
        assert sorted(users) == ["Familiar, I like tea", "Familiar, I prefer coffee"]
        assert {s.speaker_id for s in stt.streams} == {str(ALICE_ID), str(BOB_ID)}

    async def test_opted_out_member_is_never_transcribed(self, rig: RigFactory) -> None:
        """Audio of someone who opted out is dropped before any STT stream exists."""
        r = await rig()
        await r.harness.familiar.privacy_service.opt_out("discord", str(ALICE_ID))
        await r.join()
        await r.voice.user_speaks("alice", tone(0.5))
        await r.voice.wait_for(lambda: r.manager.stats.receive.frames_dropped_opted_out >= 15)
        assert r.stt.streams == [] and r.harness.llm.chat_requests == []

    async def test_opt_out_mid_utterance(self, rig: RigFactory) -> None:
        """Opting out while speaking closes the stream and the words are never submitted."""
        stt = ScriptedTranscriber(finalize_delay_s=0.3)
        r = await rig(stt=stt)
        await r.join()
        await r.voice.user_speaks("alice", tone(0.5))
        await r.voice.wait_for(lambda: stt.streams and stt.streams[0].voiced_frames >= 10)
        await r.harness.familiar.privacy_service.opt_out("discord", str(ALICE_ID))
        r.manager.forget("discord", str(ALICE_ID))
        await r.voice.wait_for(lambda: stt.streams[0].closed)
        await asyncio.sleep(1.0)  # past the finalize answer and the idle timer
        assert r.manager.stats.utterances == 0 and r.harness.llm.chat_requests == []

    async def test_stt_auth_failure_is_not_retried(self, rig: RigFactory) -> None:
        """A refused STT key is logged once and never retried for later speech."""

        class Refusing(ScriptedTranscriber):
            async def open_stream(self, *, speaker_id: str, keyterms: object = ()) -> object:  # type: ignore[override]
                self.streams.append(None)  # type: ignore[arg-type]
                raise ProviderAuthError("401 from the fake", provider="scripted", status=401)

        stt = Refusing()
        r = await rig(stt=stt)
        await r.join()
        await r.voice.user_speaks("alice", tone(0.3))
        await r.voice.wait_for(lambda: r.manager.stats.receive.stream_failures >= 1)
        await r.voice.user_speaks("alice", tone(0.3))
        assert len(stt.streams) == 1
        assert r.manager.listener is not None and r.manager.listener.stt_disabled


class TestSpeaking:
    async def test_barge_in(self, rig: RigFactory) -> None:
        """Talking over the familiar stops its audio, closes the LLM stream, cancels TTS; history keeps only played words."""
        stt = ScriptedTranscriber.with_lines(
            {str(ALICE_ID): ["Familiar, tell me a story"], str(BOB_ID): ["wait, stop please"]}
        )
        tts = ToneSynthesizer(seconds_per_word=0.15)
        r = await rig(stt=stt, tts=tts)
        await r.join()
        story = "Once upon a time, a small fox lived by the sea. " + " ".join(
            f"It walked on day {n} and saw the waves." for n in range(12)
        )
        r.harness.llm.reply_text(story, tokens_per_s=15)
        await r.voice.user_speaks("alice", tone(0.6))
        await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 10, timeout_s=15)
        await r.voice.user_speaks("bob", tone(0.5, freq_hz=600), trailing_silence_frames=5)
        await r.voice.wait_for(lambda: r.manager.stats.barge_ins >= 1)
        heard_at_barge_in = r.voice.nonsilent_bot_frames()
        await asyncio.wait_for(r.harness.llm.disconnected.wait(), timeout=10)
        assert tts.contexts[0].cancelled
        lane = r.manager.sink
        assert lane is not None
        await r.voice.wait_for(lambda: not lane.speaking)
        await asyncio.sleep(0.1)  # let in-flight datagrams land
        assert r.voice.nonsilent_bot_frames() - heard_at_barge_in <= 3
        await r.voice.wait_for(lambda: r.manager.stats.utterances >= 2, timeout_s=15)
        await r.settle()
        history = await r.history()
        spoken = [text for role, text in history if role == "assistant"][0]
        assert spoken and story.startswith(spoken.rstrip(".,")) and len(spoken) < len(story) // 2
        assert ("user", "wait, stop please") in history

    async def test_backchannel_does_not_interrupt(self, rig: RigFactory) -> None:
        """A short "mhm" while the familiar talks neither stops it nor becomes a turn."""
        stt = ScriptedTranscriber.with_lines(
            {str(ALICE_ID): ["Familiar, say something"], str(BOB_ID): ["mhm"]},
            min_voiced_frames=2,
        )
        r = await rig(stt=stt)
        await r.join()
        reply = "Sure, here is a sentence for you to hear in full."
        r.harness.llm.reply_text(reply)
        await r.voice.user_speaks("alice", tone(0.6))
        await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 5, timeout_s=15)
        await r.voice.user_speaks("bob", tone(0.1, freq_hz=600))
        await r.settle()
        await r.voice.wait_for(
            lambda: stt.streams_for(str(BOB_ID)) and stt.streams_for(str(BOB_ID))[0].finalize_calls
        )
        await asyncio.sleep(0.3)  # the "mhm" final has been handled
        assert r.manager.stats.barge_ins == 0
        assert ("assistant", reply) in await r.history()
        assert all(text != "mhm" for _, text in await r.history())

    async def test_tts_failure_falls_back_to_text(self, rig: RigFactory) -> None:
        """When TTS fails mid-reply, the unspoken rest is posted in the linked text channel."""
        stt = ScriptedTranscriber.with_lines({str(ALICE_ID): ["Familiar, what is new"]})
        r = await rig(stt=stt, tts=ToneSynthesizer(fail_after_clauses=1))
        await r.join()
        r.harness.llm.reply_text("Well, plenty. The garden is in bloom and the bees are busy.")
        await r.voice.user_speaks("alice", tone(0.6))
        await r.harness.discord.wait_for(lambda: posted(r), timeout_s=15)
        assert posted(r) == ["The garden is in bloom and the bees are busy."]
        await r.settle()
        assert (
            "assistant",
            "Well, plenty. The garden is in bloom and the bees are busy.",
        ) in await r.history()


class TestConnectionFaults:
    async def test_voice_websocket_closed_by_server(self, rig: RigFactory) -> None:
        """When Discord closes the voice websocket for good, the familiar cleans up and can rejoin."""
        r = await rig()
        await r.join()
        await r.voice.close_voice(1000, "call ended")
        await r.voice.wait_for(lambda: r.manager.stats.leaves == 1)
        assert not r.manager.connected and r.client.voice_clients == []
        assert await r.join() == "joined"
        assert r.voice.connection_count == 2

    async def test_moved_to_another_channel(self, rig: RigFactory) -> None:
        """Moved by a moderator, the familiar follows: the conversation is the new channel."""
        r = await rig()
        await r.join()
        await r.harness.discord.voice_state("alice", OTHER_VOICE_ID)
        await r.harness.discord.voice_state(BOT_USER_ID, OTHER_VOICE_ID)
        await r.voice.wait_for(
            lambda: r.manager.key is not None and r.manager.key.channel_id == str(OTHER_VOICE_ID)
        )
        moved = ConversationKey(Platform.DISCORD, str(OTHER_VOICE_ID), guild_id=str(GUILD_ID))
        assert r.manager.is_subscribed(moved) and not r.manager.is_subscribed(KEY)
