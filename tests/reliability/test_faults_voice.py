"""Voice faults through the fakes: the familiar keeps running, degrades visibly, loses nothing.

The same four promises as ``test_faults.py``, for Discord voice: the real familiar runs
with Discord, the dashboard and a voice presence built as ``familiar run`` builds it
(:mod:`tests.reliability.rig_voice`: Deepgram and Cartesia SDKs against their fakes,
discord.py + voice-recv against the fake voice server, real Opus both ways). Each test
first makes a text turn that writes a memory note and joins voice through ``/join-voice``,
then injects one fault and checks:

1. **keeps running**: no service failed, a later text mention is answered, and (where
   the fault leaves listening on) a later spoken turn is answered out loud;
2. **recovers or degrades visibly**: the sentence is heard and answered, or the reply
   arrives as text in the linked channel, or a notice says what is off;
3. **nothing accepted is lost**: earlier history, notes and audit records are unchanged,
   the chain verifies, and what was said and played is in history;
4. **a counter or status shows it**: the voice counters and the structured log event
   (``deepgram_reconnecting``, ``voice_stt_auth_failed``, ``voice_tts_failed``,
   ``voice_connection_lost``/``voice_rejoined``), and the dashboard's ``stt``, ``tts`` and
   ``discord_voice`` rows (reconnects, last error, state).

The adapter-level tests in ``tests/platforms/discord`` check each mechanism alone; these
check it inside the whole familiar.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from familiar_connect.platforms.discord.voice import STT_REFUSED_NOTICE, VOICE_LOST_NOTICE
from tests.fakes.deepgram import Session
from tests.reliability.figures import record, timeout_s
from tests.reliability.rig import Rig, Snapshot
from tests.reliability.rig_voice import VoiceRig, voice_rig
from tests.reliability.test_faults import still_answers, warm_up

SENTENCE = "hey Familiar, what should we cook tonight"
REPLY = "How about a vegetable curry with rice and a little yoghurt on the side?"
STORY = "Once upon a time a small fox lived by the sea, and every morning " + " ".join(
    f"it walked the beach on day {n} to count the waves." for n in range(6)
)
# discord.py logs its own reconnect attempt at ERROR with a traceback (library, not ours).
DISCORD_VOICE_RECONNECT = "Disconnected from voice... Reconnecting in"


async def prepare(v: VoiceRig) -> Snapshot:
    """A text turn that writes a note (history, a note, an audit record to lose), then join voice."""
    before = await warm_up(v.rig)
    await v.join()
    return before


async def keeps_talking(v: VoiceRig) -> None:
    """Promise 1: a text mention and a spoken question are both answered (out loud)."""
    await still_answers(v.rig)
    await v.spoken_turn("Familiar, are you still there?", "Yes, I am still here with you all.")


def no_unexpected_errors(r: Rig, *allowed: str, prefixes: tuple[str, ...] = ()) -> None:
    """No error-level log line besides the ones the fault is expected to cause."""
    errors = [
        e
        for e in r.log.errors(allowed=allowed)
        if not (prefixes and str(e.get("event", "")).startswith(prefixes))
    ]
    assert errors == [], errors[:3]


class TestDeepgramFaults:
    async def test_drop_mid_utterance_loses_no_words(self, tmp_path: Path) -> None:
        """Deepgram's connection cut mid-sentence is reopened with the audio replayed: heard once, answered."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            before = await prepare(v)
            utterances = v.manager.stats.utterances
            packets = v.voice.bot_packet_count()
            r.llm.reply_text(REPLY)
            await v.say(SENTENCE, sessions=[Session(drop_after_bytes=12_000)])
            await v.wait_utterances(utterances + 1)
            await v.wait_audible(5, since=packets)
            await v.settle()
            rows = await v.voice_rows()
            assert rows.count(("user", SENTENCE)) == 1 and ("assistant", REPLY) in rows
            dropped, heard = v.deepgram.sessions[-2:]
            assert dropped.ended == "dropped" and len(heard.audio) >= len(dropped.audio)
            reconnects = r.log.named("deepgram_reconnecting")
            assert len(reconnects) == 1 and reconnects[0]["reason"] == "closed (1006)"
            replayed = r.log.named("deepgram_reconnected")[0]["replay_bytes"]
            assert replayed >= 12_000
            await r.assert_nothing_lost(before)
            await keeps_talking(v)
            no_unexpected_errors(r)
        record(
            "faults",
            "deepgram drop mid-utterance",
            injected=1,
            survived=1,
            outcome="recovered",
            replayed_bytes=replayed,
        )

    async def test_stall_is_detected_and_reconnected(self, tmp_path: Path) -> None:
        """Deepgram reading audio but answering nothing is taken for a stall: reconnect, replay, answer."""
        async with voice_rig(tmp_path, stt_options={"stall_timeout_s": 0.8}) as v:
            r = v.rig
            before = await prepare(v)
            utterances = v.manager.stats.utterances
            packets = v.voice.bot_packet_count()
            r.llm.reply_text(REPLY)
            await v.say(SENTENCE, sessions=[Session(stall=True)])
            await v.wait_utterances(utterances + 1)
            await v.wait_audible(5, since=packets)
            await v.settle()
            rows = await v.voice_rows()
            assert rows.count(("user", SENTENCE)) == 1 and ("assistant", REPLY) in rows
            stalled = v.deepgram.sessions[-2]
            assert stalled.audio and stalled.sent == []
            reconnects = r.log.named("deepgram_reconnecting")
            assert len(reconnects) == 1 and reconnects[0]["reason"] == "stalled"
            await r.assert_nothing_lost(before)
            await keeps_talking(v)
            no_unexpected_errors(r)
        record("faults", "deepgram stall", injected=1, survived=1, outcome="recovered")

    async def test_auth_error_turns_listening_off_with_a_notice(self, tmp_path: Path) -> None:
        """A 401 at connect is never retried; the channel is told listening is off; text still works."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            before = await prepare(v)
            posted = len(v.posted())
            connections = len(v.deepgram.sessions)
            await v.say(SENTENCE, sessions=[Session(reject_status=401)])
            notices = await r.wait_posted(posted + 1)
            assert notices[-1] == STT_REFUSED_NOTICE
            assert v.manager.stats.stt_refused == 1
            assert v.manager.listener is not None and v.manager.listener.stt_disabled
            # More speech from someone else: no new connection, no second notice.
            await v.say("Familiar, is anyone listening?")
            await asyncio.sleep(0.2)  # a (wrong) reopen would start on the first voiced frame
            assert len(v.deepgram.sessions) == connections + 1
            assert len(v.posted()) == posted + 1
            refused = r.log.named("voice_stt_auth_failed")
            assert len(refused) == 1 and refused[0]["provider"] == "deepgram"
            assert "DEEPGRAM_API_KEY" in refused[0]["error"]
            assert all(text != SENTENCE for _, text in await v.voice_rows())
            await r.assert_nothing_lost(before)
            await still_answers(r)
            assert v.manager.connected  # still in the channel: it can still speak there
            no_unexpected_errors(r, "voice_stt_auth_failed", "deepgram_stream_failed")
        record("faults", "deepgram 401 at connect", injected=1, survived=1, outcome="notice")


class TestCartesiaFaults:
    async def test_error_falls_back_to_text(self, tmp_path: Path) -> None:
        """A Cartesia error event: the reply is posted in the linked text channel and kept in history."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            before = await prepare(v)
            posted = len(v.posted())
            utterances = v.manager.stats.utterances
            v.cartesia.fail_next(500, message="synthesis backend down")
            r.llm.reply_text(REPLY)
            await v.say(SENTENCE)
            await v.wait_utterances(utterances + 1)
            texts = await r.wait_posted(posted + 1)
            await v.settle()
            assert texts[-1] == REPLY
            rows = await v.voice_rows()
            assert ("user", SENTENCE) in rows and ("assistant", REPLY) in rows
            failed = r.log.named("voice_tts_failed")
            assert len(failed) == 1 and failed[0]["provider"] == "cartesia"
            assert v.manager.sink is not None and v.manager.sink.stats.text_fallbacks == 1
            await r.assert_nothing_lost(before)
            await keeps_talking(v)
            no_unexpected_errors(r)
        record("faults", "cartesia error", injected=1, survived=1, outcome="text fallback")

    async def test_drop_mid_reply_posts_the_rest(self, tmp_path: Path) -> None:
        """Cartesia's connection cut mid-reply: what was played stays spoken, the rest is posted."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            before = await prepare(v)
            posted = len(v.posted())
            utterances = v.manager.stats.utterances
            sent = sum(c.chunks_sent for c in v.cartesia.contexts.values())
            v.cartesia.drop_after_chunks = sent + 4  # counted per connection; one so far
            r.llm.reply_text(STORY)
            await v.say("Familiar, tell me a story")
            await v.wait_utterances(utterances + 1)
            texts = await r.wait_posted(posted + 1)
            await v.settle()
            rest = texts[-1]
            assert STORY.endswith(rest) and len(rest) < len(STORY)
            rows = await v.voice_rows()
            assert ("user", "Familiar, tell me a story") in rows and ("assistant", STORY) in rows
            failed = r.log.named("voice_tts_failed")
            assert len(failed) == 1 and failed[0]["error"] == "ProviderConnectionError"
            assert failed[0]["audio_s"] > 0
            await r.assert_nothing_lost(before)
            await keeps_talking(v)
            assert v.cartesia.connections == 2  # the next reply opened a new connection
            no_unexpected_errors(r)
        record(
            "faults",
            "cartesia drop mid-reply",
            injected=1,
            survived=1,
            outcome="spoken part kept, rest posted",
        )


class TestVoiceConnectionFaults:
    @pytest.mark.parametrize("code", [4015, 4006, 1006])
    async def test_voice_websocket_closed_mid_reply(self, tmp_path: Path, code: int) -> None:
        """The voice websocket closed (4015, 4006) or dropped (1006) while speaking: rejoined, answering."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            before = await prepare(v)
            utterances = v.manager.stats.utterances
            connections = v.voice.connection_count
            packets = v.voice.bot_packet_count()
            r.llm.reply_text(STORY)
            await v.say("Familiar, tell me a story")
            await v.wait_utterances(utterances + 1)
            await v.wait_audible(5, since=packets)
            if code == 1006:
                await v.voice.drop_voice()
            else:
                await v.voice.close_voice(code, "voice server went away")
            await v.voice.wait_for(
                lambda: v.manager.stats.rejoins == 1 and v.voice.connected,
                timeout_s=timeout_s(30),
            )
            await v.settle()
            assert v.voice.connection_count > connections and v.manager.connected
            assert v.manager.stats.connections_lost == 1
            lost = r.log.named("voice_connection_lost")
            assert len(lost) == 1 and r.log.named("voice_rejoined")
            # What was said is kept; of the story, what was played before the teardown (all of
            # it when discord.py's own retry waited long enough for the player to finish).
            rows = await v.voice_rows()
            assert ("user", "Familiar, tell me a story") in rows
            told = [text for role, text in rows if role == "assistant" and text[:4] == STORY[:4]]
            assert len(told) <= 1 and all(STORY.startswith(text) for text in told), told
            await r.assert_nothing_lost(before)
            await keeps_talking(v)
            no_unexpected_errors(r, prefixes=(DISCORD_VOICE_RECONNECT,))
        record(
            "faults",
            f"discord voice websocket {code}",
            injected=1,
            survived=1,
            outcome="rejoined",
            down_s=lost[0]["down_s"],
        )

    async def test_rejoin_refused_gives_a_notice(self, tmp_path: Path) -> None:
        """A voice connection that cannot be made again: the linked channel is told; text answers."""
        async with voice_rig(tmp_path, voice_config={"connect_timeout_s": 1.5}) as v:
            r = v.rig
            before = await prepare(v)
            posted = len(v.posted())
            v.voice.answer_voice_state = False  # Discord hands out no voice server any more
            await v.voice.close_voice(4015, "voice server went away")
            texts = await r.wait_posted(posted + 1)
            assert texts[-1] == VOICE_LOST_NOTICE
            assert v.manager.stats.rejoin_failures == 1 and not v.manager.connected
            assert r.log.named("voice_rejoin_failed")[0]["error"] == "ProviderConnectionError"
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "discord voice rejoin refused", injected=1, survived=1, outcome="notice")


class TestVoiceStatus:
    async def test_voice_faults_are_shown_on_the_dashboard(self, tmp_path: Path) -> None:
        """A Deepgram drop, a Cartesia error and a voice reconnect show on the dashboard's voice rows."""
        async with voice_rig(tmp_path) as v:
            r = v.rig
            await v.join()
            v.cartesia.fail_next(500, message="synthesis backend down")
            r.llm.reply_text(REPLY)
            await v.say(SENTENCE, sessions=[Session(drop_after_bytes=12_000)])
            await v.wait_utterances(1)
            await v.settle()
            await v.voice.close_voice(4015)
            await v.voice.wait_for(lambda: v.manager.stats.rejoins == 1, timeout_s=timeout_s(30))
            rows: dict[str, Any] = {
                name: await r.provider(name) for name in ("stt", "tts", "discord_voice")
            }
        assert all(row["configured"] for row in rows.values()), rows
        assert rows["stt"]["reconnects"] >= 1, rows
        assert rows["tts"]["last_error"], rows
        assert rows["discord_voice"]["reconnects"] >= 1, rows
