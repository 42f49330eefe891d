"""Voice with the real provider clients: Deepgram and Cartesia SDKs against their loopback fakes.

The whole chain runs for real: a fake member's Opus audio through the fake voice server,
discord.py + voice-recv, the Deepgram SDK streaming to the fake Deepgram, turn detection, the
engine and the fake OpenRouter, the Cartesia SDK streaming from the fake Cartesia, playback
through discord.py's player, and the fake voice server decoding the familiar's RTP.
"""

from __future__ import annotations

import asyncio
import dataclasses

from familiar_connect.core.events import VoiceTurnTimings
from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.deepgram import BYTES_PER_SECOND, FakeDeepgram, Session, utterance
from tests.fakes.discord_world import GENERAL_ID
from tests.platforms.discord.test_voice_kit import tone
from tests.platforms.discord.test_voice_manager import (  # noqa: F401 - fixtures
    FAST,
    RigFactory,
    fixture_rig,
    fixture_voice,
)

DEEPGRAM_KEY = "dg-e2e-canary-0123456789abcdef"
CARTESIA_KEY = "sk_car_e2e-canary-0123456789"
SPOKEN = "hey Familiar, what's up"


def _spoken_bytes(audio: object) -> int:
    """Bytes of the member's audio the sentence spans: nearly all of it (Opus may drop a frame).

    Shorter would leave the member "still talking" after the final, which is a barge-in.
    """
    return int(audio.nbytes * 0.9)  # type: ignore[attr-defined]


def _providers(deepgram: FakeDeepgram, cartesia: FakeCartesia) -> tuple[object, object]:
    transcriber = DeepgramTranscriber(
        DEEPGRAM_KEY,
        ws_base=deepgram.ws_base_url,
        http_base=deepgram.base_url,
        finalize_after_idle_s=0.1,
        reconnect_backoff_base_s=0.01,
        reconnect_backoff_max_s=0.05,
    )
    synthesizer = CartesiaSynthesizer(
        CARTESIA_KEY,
        base_url=cartesia.base_url,
        ws_base_url=cartesia.ws_base_url,
        voice_id="voice-e2e",
    )
    return transcriber, synthesizer


class TestVoiceWithRealProviders:
    async def test_spoken_question_gets_a_spoken_answer(self, rig: RigFactory) -> None:
        """Deepgram hears the member, the engine answers, Cartesia speaks, the fake hears it."""
        async with (
            FakeDeepgram(api_key=DEEPGRAM_KEY) as deepgram,
            FakeCartesia(api_key=CARTESIA_KEY) as cartesia,
        ):
            audio = tone(0.8)
            deepgram.script(Session(steps=utterance(SPOKEN, audio_bytes=_spoken_bytes(audio))))
            stt, tts = _providers(deepgram, cartesia)
            r = await rig(stt=stt, tts=tts)
            try:
                await r.join()
                reply = "Not much. Just listening to the rain, and you?"
                r.harness.llm.reply_text(reply)
                await r.voice.user_speaks("alice", audio)
                await r.voice.wait_for(lambda: r.harness.llm.chat_requests, timeout_s=20)
                await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 20, timeout_s=20)
                await r.settle()
                assert await r.history() == [("user", SPOKEN), ("assistant", reply)]
                session = deepgram.sessions[0]
                assert session.authorization == f"Token {DEEPGRAM_KEY}"
                assert "Familiar" in session.query.getall("keyterm", [])
                assert len(session.audio) >= BYTES_PER_SECOND // 4
                assert cartesia.contexts and all(c.done for c in cartesia.contexts.values())
                timings = r.harness.familiar.orchestrator.recent_timings[-1]
                assert isinstance(timings, VoiceTurnTimings)
                stamps = [
                    timings.speech_end_ns,
                    timings.stt_final_ns,
                    timings.first_token_ns,
                    timings.first_clause_ns,
                    timings.first_audio_ns,
                    timings.first_frame_ns,
                ]
                assert None not in stamps
            finally:
                await r.manager.aclose()
                await stt.aclose()  # type: ignore[attr-defined]
                await tts.aclose()  # type: ignore[attr-defined]

    async def test_barge_in_cancels_the_cartesia_context(self, rig: RigFactory) -> None:
        """Bob talking over the reply cancels Cartesia's context and closes the LLM stream."""
        async with (
            FakeDeepgram(api_key=DEEPGRAM_KEY) as deepgram,
            FakeCartesia(api_key=CARTESIA_KEY) as cartesia,
        ):
            question, interruption = tone(0.6), tone(0.5, freq_hz=600)
            deepgram.script(
                Session(steps=utterance(SPOKEN, audio_bytes=_spoken_bytes(question))),
                Session(
                    steps=utterance("wait, stop please", audio_bytes=_spoken_bytes(interruption))
                ),
            )
            stt, tts = _providers(deepgram, cartesia)
            r = await rig(stt=stt, tts=tts)
            try:
                await r.join()
                story = "Once upon a time, a small fox lived by the sea. " + " ".join(
                    f"It walked on day {n} and saw the waves." for n in range(12)
                )
                r.harness.llm.reply_text(story, tokens_per_s=15)
                await r.voice.user_speaks("alice", question)
                await r.voice.wait_for(lambda: r.voice.nonsilent_bot_frames() >= 10, timeout_s=20)
                await r.voice.user_speaks("bob", interruption, trailing_silence_frames=5)
                await r.voice.wait_for(lambda: r.manager.stats.barge_ins >= 1, timeout_s=20)
                await asyncio.wait_for(r.harness.llm.disconnected.wait(), timeout=10)
                await cartesia.wait_until(
                    lambda: any(c.cancelled for c in cartesia.contexts.values()), timeout_s=10
                )
                await r.settle()
                spoken = [text for role, text in await r.history() if role == "assistant"]
                assert spoken and len(spoken[0]) < len(story) // 2
            finally:
                await r.manager.aclose()
                await stt.aclose()  # type: ignore[attr-defined]
                await tts.aclose()  # type: ignore[attr-defined]

    async def test_cartesia_failure_falls_back_to_text(self, rig: RigFactory) -> None:
        """When the TTS provider errors mid-reply, the reply is posted in the linked text channel."""
        async with (
            FakeDeepgram(api_key=DEEPGRAM_KEY) as deepgram,
            FakeCartesia(api_key=CARTESIA_KEY) as cartesia,
        ):
            audio = tone(0.8)
            deepgram.script(Session(steps=utterance(SPOKEN, audio_bytes=_spoken_bytes(audio))))
            cartesia.fail_next(500, message="synthesis backend down")
            stt, tts = _providers(deepgram, cartesia)
            r = await rig(stt=stt, tts=tts, config=dataclasses.replace(FAST))
            try:
                await r.join()
                r.harness.llm.reply_text("I can still tell you in writing.")
                await r.voice.user_speaks("alice", audio)
                await r.harness.discord.wait_for(
                    lambda: r.harness.discord.messages_sent(GENERAL_ID), timeout_s=20
                )
                posted = r.harness.discord.messages_sent(GENERAL_ID)[0].json["content"]
                assert "I can still tell you in writing." in posted
            finally:
                await r.manager.aclose()
                await stt.aclose()  # type: ignore[attr-defined]
                await tts.aclose()  # type: ignore[attr-defined]

    async def test_deepgram_drop_mid_utterance_loses_no_words(self, rig: RigFactory) -> None:
        """A Deepgram connection cut mid-sentence is reopened and the whole sentence is heard."""
        async with (
            FakeDeepgram(api_key=DEEPGRAM_KEY) as deepgram,
            FakeCartesia(api_key=CARTESIA_KEY) as cartesia,
        ):
            audio = tone(0.8)
            half = audio.nbytes // 4
            # The first connection dies mid-sentence; the second hears the replayed audio.
            deepgram.script(
                Session(drop_after_bytes=half),
                Session(steps=utterance(SPOKEN, audio_bytes=_spoken_bytes(audio))),
            )
            stt, tts = _providers(deepgram, cartesia)
            r = await rig(stt=stt, tts=tts)
            try:
                await r.join()
                r.harness.llm.reply_text("Still here.")
                await r.voice.user_speaks("alice", audio)
                await r.voice.wait_for(lambda: r.harness.llm.chat_requests, timeout_s=20)
                await r.settle()
                assert len(deepgram.sessions) >= 2
                assert (await r.history())[0] == ("user", SPOKEN)
            finally:
                await r.manager.aclose()
                await stt.aclose()  # type: ignore[attr-defined]
                await tts.aclose()  # type: ignore[attr-defined]
