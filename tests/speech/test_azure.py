"""Azure adapters, pure layer: SDK-shaped values → our events and errors, in this process.

No SDK object is created here (constructing the providers creates none), so nothing native can
outlive the test; the real SDK runs against the fake in ``test_azure_sdk.py``, in a child process.
"""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import azure.cognitiveservices.speech as speechsdk
import pytest

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.speech.stt.azure import (
    AzureSpeechStream,
    AzureTranscriber,
    SilenceTimeline,
    Snapshot,
    azure_locale,
    cancellation_error,
    normalise_phrases,
    snapshot,
    to_transcript_event,
    validate_host,
)
from familiar_connect.speech.tts.azure import (
    DEFAULT_VOICE,
    AzureContext,
    AzureSynthesizer,
    SynthesisEvent,
    build_ssml,
    synthesis_event,
)
from familiar_connect.speech.tts.base import AudioChunk, WordTiming

HOST = "ws://127.0.0.1:9"
TICKS = 10_000_000


def _result(
    reason: speechsdk.ResultReason,
    text: str = "",
    *,
    offset_s: float = 0.0,
    duration_s: float = 0.0,
    raw: Any = None,
) -> SimpleNamespace:
    return SimpleNamespace(
        reason=reason,
        text=text,
        offset=int(offset_s * TICKS),
        duration=int(duration_s * TICKS),
        json=json.dumps(raw) if raw is not None else "",
    )


class TestSnapshot:
    def test_recognized_result_is_copied(self) -> None:
        """A recognized event's reason, text, offset, duration and JSON are copied as plain values."""
        raw = {"NBest": [{"Confidence": 0.8}]}
        event = SimpleNamespace(
            result=_result(
                speechsdk.ResultReason.RecognizedSpeech,
                "Hello.",
                offset_s=0.5,
                duration_s=1.0,
                raw=raw,
            )
        )
        snap = snapshot("recognized", event)
        assert snap == Snapshot(
            kind="recognized",
            reason="RecognizedSpeech",
            text="Hello.",
            offset_ticks=5_000_000,
            duration_ticks=10_000_000,
            json=json.dumps(raw),
        )

    def test_canceled_event_carries_reason_code_and_details(self) -> None:
        """A canceled event keeps the cancellation reason, error code and the SDK's details."""
        event = SimpleNamespace(
            result=_result(speechsdk.ResultReason.Canceled),
            cancellation_details=SimpleNamespace(
                reason=speechsdk.CancellationReason.Error,
                code=speechsdk.CancellationErrorCode.AuthenticationFailure,
                error_details="WebSocket upgrade failed: Authentication error (401).",
            ),
        )
        snap = snapshot("canceled", event)
        assert (snap.cancel_reason, snap.error_code) == ("Error", "AuthenticationFailure")
        assert "401" in snap.error_details

    def test_speech_start_takes_the_event_offset(self) -> None:
        """Speech start/end events have no result; their own offset is used."""
        assert snapshot("speech_start", SimpleNamespace(offset=3 * TICKS)).offset_ticks == 3 * TICKS


class TestToTranscriptEvent:
    def test_recognizing_is_an_interim(self) -> None:
        """A hypothesis becomes an interim with its audio span in seconds."""
        snap = Snapshot(
            kind="recognizing",
            reason="RecognizingSpeech",
            text="hello",
            offset_ticks=TICKS // 10,
            duration_ticks=TICKS // 2,
        )
        event = to_transcript_event(snap, received_ns=7)
        assert event is not None
        assert (event.kind, event.text, event.audio_start_s, event.audio_end_s) == (
            "interim",
            "hello",
            0.1,
            0.6,
        )
        assert event.received_ns == 7 and not event.speech_final

    def test_empty_hypothesis_is_skipped(self) -> None:
        """An interim without text carries nothing for turn detection."""
        assert to_transcript_event(Snapshot(kind="recognizing"), received_ns=0) is None

    def test_recognized_is_a_speech_final_with_confidence(self) -> None:
        """A phrase is a final that ends on a pause, with NBest[0]'s confidence when detailed."""
        snap = Snapshot(
            kind="recognized",
            reason="RecognizedSpeech",
            text="Hey there.",
            offset_ticks=TICKS,
            duration_ticks=TICKS,
            json=json.dumps({"NBest": [{"Confidence": 0.87, "Display": "Hey there."}]}),
        )
        event = to_transcript_event(snap, received_ns=0)
        assert event is not None
        assert (event.kind, event.text, event.speech_final, event.confidence) == (
            "final",
            "Hey there.",
            True,
            0.87,
        )
        assert (event.audio_start_s, event.audio_end_s) == (1.0, 2.0)

    def test_simple_format_has_no_confidence(self) -> None:
        """Without NBest (simple output format) the confidence is unknown, not invented."""
        snap = Snapshot(kind="recognized", reason="RecognizedSpeech", text="Hi.", json="{}")
        event = to_transcript_event(snap, received_ns=0)
        assert event is not None and event.confidence is None

    def test_no_match_is_an_empty_final(self) -> None:
        """A NoMatch (noise, a cough) is an empty final, so a pending turn can still end."""
        snap = Snapshot(kind="recognized", reason="NoMatch", text="ignored")
        event = to_transcript_event(snap, received_ns=0)
        assert event is not None
        assert (event.kind, event.text, event.speech_final) == ("final", "", True)

    def test_speech_start_and_end(self) -> None:
        """Speech start is speech_started; the service's end of speech is an utterance_end."""
        start = to_transcript_event(
            Snapshot(kind="speech_start", offset_ticks=TICKS), received_ns=0
        )
        end = to_transcript_event(
            Snapshot(kind="speech_end", offset_ticks=2 * TICKS), received_ns=0
        )
        assert start is not None and (start.kind, start.audio_start_s) == ("speech_started", 1.0)
        assert end is not None and (end.kind, end.audio_end_s) == ("utterance_end", 2.0)

    def test_lifecycle_signals_carry_no_event(self) -> None:
        """Connection and session signals are not transcript events."""
        for kind in ("connected", "disconnected", "canceled", "session_stopped"):
            assert to_transcript_event(Snapshot(kind=kind), received_ns=0) is None  # type: ignore[arg-type]

    def test_inserted_silence_is_taken_out_of_times(self) -> None:
        """Times after silence inserted by finalize are moved back by its length."""
        timeline = SilenceTimeline()
        timeline.insert(1.0, 0.5)
        snap = Snapshot(
            kind="recognized",
            reason="RecognizedSpeech",
            text="Again.",
            offset_ticks=int(2.0 * TICKS),
            duration_ticks=TICKS,
        )
        event = to_transcript_event(snap, received_ns=0, timeline=timeline)
        assert event is not None and (event.audio_start_s, event.audio_end_s) == (1.5, 2.5)


class TestSilenceTimeline:
    def test_times_before_inside_and_after_an_insert(self) -> None:
        """Before an insert nothing moves; inside it clamps to its start; after it, all of it is removed."""
        timeline = SilenceTimeline()
        timeline.insert(1.0, 0.5)
        timeline.insert(3.0, 0.25)
        assert timeline.to_stream_s(0.8) == 0.8
        assert timeline.to_stream_s(1.2) == 1.0
        assert timeline.to_stream_s(2.0) == 1.5
        assert timeline.to_stream_s(4.0) == 3.25
        assert timeline.inserted_s == 0.75

    def test_zero_length_insert_is_ignored(self) -> None:
        """An insert that wrote nothing leaves no entry."""
        timeline = SilenceTimeline()
        timeline.insert(1.0, 0.0)
        assert timeline.to_stream_s(5.0) == 5.0 and timeline.inserted_s == 0.0


class TestCancellationError:
    @pytest.mark.parametrize(
        ("code", "cls", "status"),
        [
            (speechsdk.CancellationErrorCode.AuthenticationFailure, ProviderAuthError, 401),
            (speechsdk.CancellationErrorCode.BadRequest, ProviderBadRequest, 400),
            (speechsdk.CancellationErrorCode.TooManyRequests, ProviderRateLimited, 429),
            (speechsdk.CancellationErrorCode.Forbidden, ProviderQuotaError, 403),
            (speechsdk.CancellationErrorCode.ConnectionFailure, ProviderConnectionError, None),
            (speechsdk.CancellationErrorCode.ServiceTimeout, ProviderTimeout, None),
            (speechsdk.CancellationErrorCode.ServiceUnavailable, ProviderUnavailable, 503),
        ],
    )
    def test_codes_map_to_the_error_tree(
        self, code: speechsdk.CancellationErrorCode, cls: type[ProviderError], status: int | None
    ) -> None:
        """Each SDK error code becomes the most specific provider error, with provider "azure"."""
        error = cancellation_error(code, "details")
        assert type(error) is cls
        assert (error.provider, error.status) == ("azure", status)

    def test_name_and_value_work_like_the_enum(self) -> None:
        """The code may arrive as its name (from a snapshot) or its integer value."""
        assert isinstance(cancellation_error("AuthenticationFailure"), ProviderAuthError)
        assert isinstance(cancellation_error(1), ProviderAuthError)

    def test_unknown_code_is_a_plain_provider_error(self) -> None:
        """A code without a specific class is still a ProviderError naming the code."""
        error = cancellation_error(speechsdk.CancellationErrorCode.RuntimeError, "boom")
        assert type(error) is ProviderError and "RuntimeError" in str(error)

    def test_details_are_collapsed_and_cut(self) -> None:
        """The SDK's details text is kept on one line and bounded in length."""
        error = cancellation_error("BadRequest", "line one\nline two " + "x" * 1000)
        assert "\n" not in str(error) and len(str(error)) < 500


class TestAzureLocale:
    @pytest.mark.parametrize(
        ("language", "locale"),
        [
            ("en", "en-US"),
            ("en-gb", "en-GB"),
            ("de", "de-DE"),
            ("pt_PT", "pt-PT"),
            ("zh-Hans-CN", "zh-Hans-CN"),
        ],
    )
    def test_locales(self, language: str, locale: str) -> None:
        """A bare language gets its usual region; a tag with a region keeps it, normalised."""
        assert azure_locale(language) == locale


class TestValidateHost:
    def test_host_accepts_wss_and_loopback_ws(self) -> None:
        """wss:// anywhere and ws:// to a loopback host are accepted (trailing slash dropped)."""
        assert validate_host("wss://speech.example.com/") == "wss://speech.example.com"
        assert validate_host("ws://127.0.0.1:8080") == "ws://127.0.0.1:8080"

    @pytest.mark.parametrize(
        "host", ["ws://speech.example.com", "https://x.example.com", "wss://x.example.com/path"]
    )
    def test_host_refuses_plaintext_and_paths(self, host: str) -> None:
        """Plain ws:// to a remote host, other schemes and paths are refused."""
        with pytest.raises(ValueError):
            validate_host(host)


class TestProviderConstruction:
    def test_region_or_host_is_required(self) -> None:
        """Without a region or a host the providers refuse to be built."""
        with pytest.raises(ValueError, match="AZURE_SPEECH_REGION"):
            AzureTranscriber("key")
        with pytest.raises(ValueError, match="region name"):
            AzureSynthesizer("key", region="West Europe")

    def test_default_voice(self) -> None:
        """No voice in the character means the multilingual default voice."""
        assert AzureSynthesizer("k", host=HOST).voice == DEFAULT_VOICE

    def test_repr_never_shows_the_key(self) -> None:
        """The providers' repr names the endpoint and voice, never the key."""
        secret = "az-secret-canary-0123456789"
        text = repr(AzureTranscriber(secret, host=HOST)) + repr(AzureSynthesizer(secret, host=HOST))
        assert secret not in text and "127.0.0.1" in text


class TestNormalisePhrases:
    def test_phrases_are_deduplicated_and_capped(self) -> None:
        """Phrase-list terms are stripped, de-duplicated case-insensitively and capped at 100."""
        terms = ["  Familiar ", "familiar", "", "Alice  Smith", *[f"name{i}" for i in range(200)]]
        phrases = normalise_phrases(terms)
        assert phrases[:2] == ["Familiar", "Alice Smith"] and len(phrases) == 100


class TestAzureSpeechStream:
    async def test_events_come_out_in_order_until_closed(self) -> None:
        """Snapshots delivered on the loop come out of events() in order; aclose ends the iteration."""
        stream = _stream()
        stream._on_snapshot(Snapshot(kind="speech_start", offset_ticks=TICKS // 10), 1)
        stream._on_snapshot(Snapshot(kind="recognizing", text="hey"), 2)
        stream._on_snapshot(Snapshot(kind="recognized", reason="RecognizedSpeech", text="Hey."), 3)
        await stream.aclose()
        await stream.aclose()  # idempotent
        kinds = [(e.kind, e.text, e.received_ns) async for e in stream.events()]
        assert kinds == [("speech_started", "", 1), ("interim", "hey", 2), ("final", "Hey.", 3)]

    async def test_bounded_queue_drops_interims_first(self) -> None:
        """Past event_queue_size, the oldest interim is dropped (and counted) before any final."""
        stream = _stream(event_queue_size=3)
        stream._on_snapshot(Snapshot(kind="recognized", reason="RecognizedSpeech", text="a"), 1)
        for i in range(3):
            stream._on_snapshot(Snapshot(kind="recognizing", text=f"i{i}"), 2)
        kinds = [(e.kind, e.text) for e in stream._queue._events]
        assert kinds == [("final", "a"), ("interim", "i1"), ("interim", "i2")]
        assert stream.events_dropped == 1

    async def test_error_ends_events_after_what_came_before(self) -> None:
        """A canceled-with-error snapshot ends events() with the translated error, after earlier events."""
        stream = _stream()
        stream._on_snapshot(Snapshot(kind="recognizing", text="hel"), 1)
        stream._on_snapshot(
            Snapshot(kind="canceled", cancel_reason="Error", error_code="AuthenticationFailure"), 2
        )
        seen = []
        with pytest.raises(ProviderAuthError):
            async for event in stream.events():
                seen.append(event.text)
        assert seen == ["hel"]
        stream.feed(b"\x00\x00" * 960)
        assert stream.fed_bytes == 0  # ignored after the failure

    async def test_unexpected_session_stop_is_a_connection_error(self) -> None:
        """A session that stops without our asking ends events() with ProviderConnectionError."""
        stream = _stream()
        stream._on_snapshot(Snapshot(kind="session_stopped"), 1)
        with pytest.raises(ProviderConnectionError):
            async for _ in stream.events():
                pass

    async def test_repeated_utterance_end_is_collapsed(self) -> None:
        """Two utterance ends with nothing between them are reported once."""
        stream = _stream()
        for _ in range(2):
            stream._on_snapshot(Snapshot(kind="speech_end", offset_ticks=TICKS), 1)
        stream._on_snapshot(Snapshot(kind="recognizing", text="more"), 2)
        stream._on_snapshot(Snapshot(kind="speech_end", offset_ticks=2 * TICKS), 3)
        assert [e.kind for e in stream._queue._events] == [
            "utterance_end",
            "interim",
            "utterance_end",
        ]

    async def test_connection_counters(self) -> None:
        """Disconnects and reconnects after the first connection are counted."""
        stream = _stream()
        for kind in ("connected", "disconnected", "connected"):
            stream._on_snapshot(Snapshot(kind=kind), 1)  # type: ignore[arg-type]
        assert (stream.disconnects, stream.reconnects, stream.connected) == (1, 1, True)

    async def test_odd_length_audio_is_refused(self) -> None:
        """feed() takes whole 16-bit samples only."""
        with pytest.raises(ValueError):
            _stream().feed(b"\x00")


def _stream(**overrides: Any) -> AzureSpeechStream:
    transcriber = AzureTranscriber("k", host=HOST, **overrides)
    return AzureSpeechStream(transcriber, speaker_id="7", keyterms=[])


class TestBuildSsml:
    def test_ssml_escapes_text_and_names_voice_and_locale(self) -> None:
        """Text is XML-escaped and the voice and language are quoted attributes."""
        ssml = build_ssml('5 < 6 & "quotes"', voice="en-GB-SoniaNeural", locale="en-GB")
        assert '5 &lt; 6 &amp; "quotes"' in ssml
        assert 'name="en-GB-SoniaNeural"' in ssml and 'xml:lang="en-GB"' in ssml


class TestSynthesisEvent:
    def test_audio_event_copies_the_chunk(self) -> None:
        """A synthesizing event becomes an audio event with the chunk's bytes."""
        event = SimpleNamespace(result=SimpleNamespace(audio_data=b"\x01\x02"))
        assert synthesis_event("audio", event) == SynthesisEvent(kind="audio", audio=b"\x01\x02")

    def test_word_boundary_in_seconds(self) -> None:
        """A word boundary's tick offset and timedelta duration become start and end seconds."""
        boundary = SimpleNamespace(
            boundary_type=speechsdk.SpeechSynthesisBoundaryType.Word,
            text="Hello",
            audio_offset=TICKS // 2,
            duration=timedelta(milliseconds=250),
        )
        assert synthesis_event("word", boundary) == SynthesisEvent(
            kind="word", word="Hello", start_s=0.5, end_s=0.75
        )

    def test_punctuation_boundary_is_skipped(self) -> None:
        """Only word boundaries become word timings."""
        boundary = SimpleNamespace(
            boundary_type=speechsdk.SpeechSynthesisBoundaryType.Punctuation,
            text=",",
            audio_offset=0,
            duration=timedelta(0),
        )
        assert synthesis_event("word", boundary) is None

    def test_canceled_event_keeps_the_error(self) -> None:
        """A canceled synthesis keeps reason, code and details for translation."""
        details = SimpleNamespace(
            reason=speechsdk.CancellationReason.Error,
            error_code=speechsdk.CancellationErrorCode.BadRequest,
            error_details="Error code: 1007. Invalid SSML",
        )
        event = SimpleNamespace(result=SimpleNamespace(cancellation_details=details))
        snap = synthesis_event("canceled", event)
        assert snap is not None
        assert (snap.cancel_reason, snap.error_code) == ("Error", "BadRequest")


class TestAzureContext:
    async def test_word_timings_count_from_the_reply_start(self) -> None:
        """Audio is queued as chunks and a later request's words are shifted by the audio before it."""
        synthesizer = AzureSynthesizer("k", host=HOST)
        context = AzureContext(synthesizer)
        try:
            context._deliver(SynthesisEvent(kind="audio", audio=b"\x01\x00" * 48_000))
            context._request_base_s = context.audio_bytes / 96_000
            context._deliver(SynthesisEvent(kind="word", word="next", start_s=0.1, end_s=0.3))
            items = list(context._buffer._items)
            assert isinstance(items[0], AudioChunk) and len(items[0].pcm) == 96_000
            assert items[1] == WordTiming(word="next", start_s=1.1, end_s=1.3)
            assert context.first_audio_ns is not None
        finally:
            await synthesizer.aclose()

    async def test_unread_audio_past_the_bound_fails_the_reply(self) -> None:
        """A consumer that stops reading gets its reply failed and counted, not unbounded memory."""
        synthesizer = AzureSynthesizer("k", host=HOST, max_buffered_s=0.5)
        context = AzureContext(synthesizer)
        try:
            context._deliver(SynthesisEvent(kind="audio", audio=b"\x00" * 96_000))
            assert synthesizer.overflows == 1 and not context._buffer._items
            with pytest.raises(ProviderError, match="not consumed"):
                async for _ in context.stream():
                    pass
        finally:
            await synthesizer.aclose()

    async def test_cancel_drops_audio_and_ends_the_stream(self) -> None:
        """cancel() clears buffered audio and stream() then ends quietly; say() is ignored after."""
        synthesizer = AzureSynthesizer("k", host=HOST)
        context = AzureContext(synthesizer)
        try:
            context._deliver(SynthesisEvent(kind="audio", audio=b"\x00\x00" * 100))
            await context.cancel()
            await context.say("ignored")
            assert [item async for item in context.stream()] == []
            assert context.cancelled and synthesizer.requests == 0
        finally:
            await synthesizer.aclose()

    async def test_finish_without_text_ends_the_stream(self) -> None:
        """A reply finished before any text ends without a request (no SDK object is built)."""
        synthesizer = AzureSynthesizer("k", host=HOST)
        context = AzureContext(synthesizer)
        try:
            await context.finish()
            assert [item async for item in context.stream()] == []
            assert synthesizer._sdk is None
            with pytest.raises(RuntimeError):
                await context.say("late")
        finally:
            await synthesizer.aclose()
