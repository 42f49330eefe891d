"""The Deepgram transcriber (real deepgram-sdk) against the fake Deepgram on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderQuotaError,
    ProviderUnavailable,
)
from familiar_connect.speech.stt.base import SpeechStream, Transcriber, TranscriptEvent
from familiar_connect.speech.stt.deepgram import (
    DeepgramSpeechStream,
    DeepgramTranscriber,
    normalise_keyterms,
)
from tests.fakes.deepgram import (
    BYTES_PER_SECOND,
    FakeDeepgram,
    Session,
    Step,
    frames_of,
    pcm_tone,
    results,
    utterance,
)
from tests.speech.conftest import DEEPGRAM_KEY, GUARD_S, TranscriberFactory

TEXT = "hey Nova, what's up?"


def feed_all(stream: DeepgramSpeechStream, pcm: bytes) -> None:
    for frame in frames_of(pcm):
        stream.feed(frame)


async def collect_until(
    stream: DeepgramSpeechStream,
    done: Callable[[list[TranscriptEvent]], bool],
    *,
    timeout_s: float = GUARD_S,
) -> list[TranscriptEvent]:
    seen: list[TranscriptEvent] = []
    async with asyncio.timeout(timeout_s):
        async for event in stream.events():
            seen.append(event)
            if done(seen):
                break
    return seen


def has_final(text: str) -> Callable[[list[TranscriptEvent]], bool]:
    return lambda seen: any(e.kind == "final" and e.text == text for e in seen)


def finals(seen: list[TranscriptEvent]) -> list[str]:
    return [e.text for e in seen if e.kind == "final" and e.text]


class TestNormaliseKeyterms:
    def test_strips_dedupes_and_caps(self) -> None:
        """Terms are trimmed, whitespace-collapsed, de-duplicated ignoring case, and capped."""
        terms = [" Nova ", "nova", "Alice  Smith", "", *[f"t{i}" for i in range(200)]]
        out = normalise_keyterms(terms)
        assert out[:2] == ["Nova", "Alice Smith"]
        assert len(out) == 100


class TestDeepgramTranscriber:
    async def test_satisfies_the_protocols(self, make_transcriber: TranscriberFactory) -> None:
        """The transcriber and its streams satisfy the speech-to-text protocols."""
        transcriber = make_transcriber()
        stream = await transcriber.open_stream(speaker_id="u1")
        assert isinstance(transcriber, Transcriber)
        assert isinstance(stream, SpeechStream)

    async def test_connects_with_the_configured_query_and_key(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """The websocket asks for linear16 48 kHz mono, interims, endpointing, VAD and keyterms."""
        transcriber = make_transcriber(endpointing_ms=250, utterance_end_ms=1200, language="en-GB")
        await transcriber.open_stream(speaker_id="u1", keyterms=["Nova", "nova", "Alice"])
        session = fake_deepgram.sessions[0]
        assert session.authorization == f"Token {DEEPGRAM_KEY}"
        query = session.query
        assert query["model"] == "nova-3"
        assert query["encoding"] == "linear16"
        assert query["sample_rate"] == "48000"
        assert query["channels"] == "1"
        assert query["interim_results"] == "true"
        assert query["endpointing"] == "250"
        assert query["utterance_end_ms"] == "1200"
        assert query["smart_format"] == "true"
        assert query["vad_events"] == "true"
        assert query["language"] == "en-GB"
        assert query.getall("keyterm") == ["Nova", "Alice"]

    async def test_keyterms_are_left_out_for_models_without_them(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Keyterm prompting is Nova-3 only, so other models get no keyterm parameter."""
        transcriber = make_transcriber(model="nova-2")
        await transcriber.open_stream(speaker_id="u1", keyterms=["Nova"])
        assert "keyterm" not in fake_deepgram.sessions[0].query

    async def test_refused_key_raises_auth_error_without_retry(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A 401 on the upgrade is a ProviderAuthError, tried once, and the key is never logged."""
        transcriber = make_transcriber(api_key="dg-wrong-key-canary")
        with capture_logs() as logs, pytest.raises(ProviderAuthError) as info:
            await transcriber.open_stream(speaker_id="u1")
        assert info.value.status == 401
        assert len(fake_deepgram.sessions) == 1
        assert "dg-wrong-key-canary" not in repr(logs) + str(info.value)

    async def test_quota_refusal_is_not_retried(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A 402 on the upgrade is a ProviderQuotaError."""
        fake_deepgram.script(Session(reject_status=402))
        with pytest.raises(ProviderQuotaError):
            await make_transcriber().open_stream(speaker_id="u1")
        assert len(fake_deepgram.sessions) == 1

    async def test_unreachable_service_is_a_connection_error(self) -> None:
        """Nothing listening on the port is a ProviderConnectionError from open_stream."""
        transcriber = DeepgramTranscriber(
            DEEPGRAM_KEY, ws_base="ws://127.0.0.1:9", http_base="http://127.0.0.1:9"
        )
        try:
            with pytest.raises(ProviderConnectionError):
                await transcriber.open_stream(speaker_id="u1")
        finally:
            await transcriber.aclose()

    async def test_aclose_closes_every_stream(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Closing the transcriber sends CloseStream on every open stream."""
        transcriber = make_transcriber()
        await transcriber.open_stream(speaker_id="u1")
        await transcriber.open_stream(speaker_id="u2")
        await transcriber.aclose()
        assert [s.ended for s in fake_deepgram.sessions] == ["close_stream", "close_stream"]

    def test_rejects_utterance_end_below_deepgram_minimum(self) -> None:
        """utterance_end_ms below 1000 is refused at construction, not by the service later."""
        with pytest.raises(ValueError, match="utterance_end_ms"):
            DeepgramTranscriber(DEEPGRAM_KEY, utterance_end_ms=500)


class TestDeepgramSpeechStream:
    async def test_transcript_events_are_translated(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """SpeechStarted, interim, final with speech_final and UtteranceEnd arrive as TranscriptEvents."""
        audio = pcm_tone(1.2)
        fake_deepgram.script(Session(steps=utterance(TEXT, audio_bytes=len(audio))))
        stream = await make_transcriber().open_stream(speaker_id="u1")
        feed_all(stream, audio)
        seen = await collect_until(stream, lambda s: s[-1].kind == "utterance_end")
        assert [e.kind for e in seen] == ["speech_started", "interim", "final", "utterance_end"]
        final = seen[2]
        assert final.text == TEXT and final.speech_final
        assert final.audio_end_s == pytest.approx(1.2)
        assert final.confidence == pytest.approx(0.98)
        assert seen[1].text == "hey Nova,"
        assert all(e.received_ns > 0 for e in seen)

    async def test_finalize_after_idle_gap(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """When audio stops (Discord sends nothing in silence) the stream sends Finalize and gets the final."""
        audio = pcm_tone(0.8)
        steps = utterance(TEXT, audio_bytes=len(audio), final_on_finalize=True)
        fake_deepgram.script(Session(steps=steps))
        stream = await make_transcriber(finalize_after_idle_s=0.05).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        seen = await collect_until(stream, has_final(TEXT))
        assert seen[-1].speech_final  # from_finalize counts as the end of speech
        assert fake_deepgram.sessions[0].count("Finalize") == 1
        assert stream.finalizes_sent == 1

    async def test_explicit_finalize_is_sent_once_per_stretch_of_audio(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """finalize() flushes at once; with no new audio a second call sends nothing."""
        audio = pcm_tone(0.4)
        fake_deepgram.script(
            Session(steps=utterance(TEXT, audio_bytes=len(audio), final_on_finalize=True))
        )
        stream = await make_transcriber(finalize_after_idle_s=GUARD_S).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions[0].audio) == len(audio))
        await stream.finalize()
        await collect_until(stream, has_final(TEXT))
        await stream.finalize()
        await stream.aclose()
        assert fake_deepgram.sessions[0].count("Finalize") == 1

    async def test_keepalive_holds_an_idle_connection_open(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """KeepAlive goes out while nobody talks, so Deepgram's idle timeout never fires."""
        fake_deepgram.script(Session(idle_timeout_s=0.3))
        stream = await make_transcriber(keepalive_s=0.05).open_stream(speaker_id="u1")
        session = fake_deepgram.sessions[0]
        await fake_deepgram.wait_until(lambda: session.count("KeepAlive") >= 10)
        assert session.ended is None
        assert stream.connected

    async def test_drop_mid_utterance_loses_no_words(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A connection cut mid-utterance reconnects and replays, so the final has every word."""
        audio = pcm_tone(1.2)
        fake_deepgram.script(
            Session(
                steps=[Step(len(audio) // 4, results("hey", is_final=False, duration=0.3))],
                drop_after_bytes=len(audio) // 2,
            ),
            Session(steps=utterance(TEXT, audio_bytes=len(audio), final_on_finalize=True)),
        )
        stream = await make_transcriber().open_stream(speaker_id="u1")
        feed_all(stream, audio)
        seen = await collect_until(stream, has_final(TEXT))
        assert finals(seen) == [TEXT]
        assert fake_deepgram.sessions[0].ended == "dropped"
        # Nothing was final on the first connection, so all of it was sent again.
        assert bytes(fake_deepgram.sessions[1].audio) == audio
        assert stream.reconnects == 1

    async def test_replay_starts_after_the_last_final(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Audio a final already covered is not replayed, so no word is transcribed twice."""
        audio = pcm_tone(1.0)
        half = len(audio) // 2
        fake_deepgram.script(
            Session(
                steps=[
                    Step(
                        half, results("hey Nova,", is_final=True, duration=half / BYTES_PER_SECOND)
                    )
                ],
                drop_after_bytes=half + 9600,
            ),
            Session(
                steps=utterance("what's up?", audio_bytes=len(audio) - half, final_on_finalize=True)
            ),
        )
        stream = await make_transcriber().open_stream(speaker_id="u1")
        feed_all(stream, audio[:half])
        await collect_until(stream, has_final("hey Nova,"))
        feed_all(stream, audio[half:])
        seen = await collect_until(stream, has_final("what's up?"))
        assert bytes(fake_deepgram.sessions[1].audio) == audio[half:]
        assert seen[-1].audio_start_s == pytest.approx(
            0.5
        )  # stream time continues across connections

    async def test_replay_is_bounded(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """At most replay_s of audio is sent again after a drop."""
        audio = pcm_tone(1.0)
        fake_deepgram.script(Session(drop_after_bytes=len(audio)), Session())
        stream = await make_transcriber(replay_s=0.2).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        await fake_deepgram.wait_until(
            lambda: len(fake_deepgram.sessions) == 2 and len(fake_deepgram.sessions[1].audio) > 0
        )
        await stream.aclose()
        assert bytes(fake_deepgram.sessions[1].audio) == audio[-int(0.2 * BYTES_PER_SECOND) :]
        assert stream.replayed_bytes == int(0.2 * BYTES_PER_SECOND)

    async def test_stall_reconnects_and_replays(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A connection that takes audio but answers nothing is replaced, and the words survive."""
        audio = pcm_tone(0.6)
        fake_deepgram.script(
            Session(stall=True),
            Session(steps=utterance(TEXT, audio_bytes=len(audio), final_on_finalize=True)),
        )
        with capture_logs() as logs:
            stream = await make_transcriber(stall_timeout_s=0.2).open_stream(speaker_id="u1")
            feed_all(stream, audio)
            seen = await collect_until(stream, has_final(TEXT))
        assert finals(seen) == [TEXT]
        assert bytes(fake_deepgram.sessions[1].audio) == audio
        assert any(e["event"] == "deepgram_reconnecting" and e["reason"] == "stalled" for e in logs)

    async def test_server_side_close_reconnects(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Deepgram's NET-0001 idle close is followed by a fresh connection that carries on."""
        fake_deepgram.script(Session(idle_timeout_s=0.05), Session())
        stream = await make_transcriber(keepalive_s=5.0).open_stream(speaker_id="u1")
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions) == 2)
        assert fake_deepgram.sessions[0].ended == "idle_timeout"
        stream.feed(pcm_tone(0.1))
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions[1].audio) == 9600)

    async def test_auth_failure_on_reconnect_ends_the_stream(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A key revoked mid-session ends events() with ProviderAuthError after one attempt."""
        audio = pcm_tone(0.4)
        fake_deepgram.script(Session(drop_after_bytes=len(audio)))
        stream = await make_transcriber().open_stream(speaker_id="u1")
        fake_deepgram.api_key = "rotated"
        feed_all(stream, audio)
        with pytest.raises(ProviderAuthError):
            await collect_until(stream, lambda _: False)
        assert [s.ended for s in fake_deepgram.sessions] == ["dropped", "rejected"]

    async def test_undecodable_audio_close_is_not_retried(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Deepgram's 1008 DATA-0000 close (it cannot decode our audio) is a ProviderBadRequest, no retry."""
        audio = pcm_tone(0.2)
        fake_deepgram.script(
            Session(close_after_bytes=len(audio), close_code=1008, close_reason="DATA-0000")
        )
        stream = await make_transcriber().open_stream(speaker_id="u1")
        feed_all(stream, audio)
        with pytest.raises(ProviderBadRequest, match="DATA-0000"):
            await collect_until(stream, lambda _: False)
        assert len(fake_deepgram.sessions) == 1

    async def test_reconnects_are_capped(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """After max_reconnect_attempts failed reconnects the stream fails with the last error."""
        audio = pcm_tone(0.2)
        fake_deepgram.script(
            Session(drop_after_bytes=len(audio)), *[Session(reject_status=503)] * 3
        )
        stream = await make_transcriber(max_reconnect_attempts=3).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        with pytest.raises(ProviderUnavailable):
            await collect_until(stream, lambda _: False)
        assert len(fake_deepgram.sessions) == 4

    async def test_dormant_after_long_silence_and_reopens_on_speech(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """After close_after_idle_s the socket is closed cleanly; new audio opens a new one without replay."""
        first, second = pcm_tone(0.2), pcm_tone(0.3, freq_hz=440)
        stream = await make_transcriber(close_after_idle_s=0.2).open_stream(speaker_id="u1")
        feed_all(stream, first)
        await fake_deepgram.wait_until(lambda: fake_deepgram.sessions[0].ended == "close_stream")
        feed_all(stream, second)
        await fake_deepgram.wait_until(
            lambda: (
                len(fake_deepgram.sessions) == 2
                and len(fake_deepgram.sessions[1].audio) == len(second)
            )
        )
        assert bytes(fake_deepgram.sessions[0].audio) == first
        assert bytes(fake_deepgram.sessions[1].audio) == second
        assert stream.reconnects == 0

    async def test_aclose_flushes_the_last_words(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """aclose sends CloseStream and still delivers the final it flushes, then events() ends."""
        audio = pcm_tone(0.4)
        fake_deepgram.script(
            Session(steps=utterance(TEXT, audio_bytes=len(audio), final_on_finalize=True))
        )
        stream = await make_transcriber(finalize_after_idle_s=GUARD_S).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions[0].audio) == len(audio))
        await stream.aclose()
        seen = await collect_until(stream, lambda _: False)
        assert finals(seen) == [TEXT]
        assert fake_deepgram.sessions[0].ended == "close_stream"
        await stream.aclose()  # idempotent

    async def test_unsent_audio_overflow_is_bounded_and_counted(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Audio beyond max_pending_s that could not be sent yet is dropped oldest-first and counted."""
        audio = pcm_tone(0.5)
        stream = await make_transcriber(max_pending_s=0.1).open_stream(speaker_id="u1")
        with capture_logs():
            feed_all(stream, audio)  # synchronous: the sender has had no chance to run
        limit = int(0.1 * BYTES_PER_SECOND)
        assert stream.overflow_bytes == len(audio) - limit
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions[0].audio) == limit)
        assert bytes(fake_deepgram.sessions[0].audio) == audio[-limit:]

    async def test_event_queue_drops_oldest_interims_first(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """A consumer that falls behind loses old interims, never the final."""
        audio = pcm_tone(0.5)
        steps = [Step(1920 * (i + 1), results(f"word{i}", is_final=False)) for i in range(5)]
        steps.append(Step(len(audio), results(TEXT, is_final=True, speech_final=True)))
        fake_deepgram.script(Session(steps=steps))
        stream = await make_transcriber(event_queue_size=2).open_stream(speaker_id="u1")
        feed_all(stream, audio)
        await fake_deepgram.wait_until(lambda: len(fake_deepgram.sessions[0].sent) == 6)
        for _ in range(500):  # bounded wait for the client to read all six messages
            if stream.events_dropped == 4:
                break
            await asyncio.sleep(0.01)
        assert stream.pending_events == 2
        seen = await collect_until(stream, has_final(TEXT))
        assert [e.text for e in seen] == ["word4", TEXT]
        assert stream.events_dropped == 4

    async def test_odd_length_audio_is_rejected(self, make_transcriber: TranscriberFactory) -> None:
        """PCM that is not whole 16-bit samples is a programming error."""
        stream = await make_transcriber().open_stream(speaker_id="u1")
        with pytest.raises(ValueError, match="16-bit"):
            stream.feed(b"\x00\x01\x02")

    async def test_latency_delays_but_keeps_order(
        self, make_transcriber: TranscriberFactory, fake_deepgram: FakeDeepgram
    ) -> None:
        """Injected service latency changes when results arrive, not what or in which order."""
        audio = pcm_tone(0.6)
        fake_deepgram.script(Session(steps=utterance(TEXT, audio_bytes=len(audio)), latency_s=0.05))
        stream = await make_transcriber().open_stream(speaker_id="u1")
        feed_all(stream, audio)
        seen = await collect_until(stream, lambda s: s[-1].kind == "utterance_end")
        assert [e.kind for e in seen] == ["speech_started", "interim", "final", "utterance_end"]
