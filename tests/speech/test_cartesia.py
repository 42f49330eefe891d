"""The Cartesia synthesizer (real cartesia SDK) against the fake Cartesia on loopback."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.speech.audio import duration_s, rms_dbfs
from familiar_connect.speech.tts.base import AudioChunk, SynthesisContext, Synthesizer, WordTiming
from familiar_connect.speech.tts.cartesia import CartesiaContext, CartesiaSynthesizer
from tests.fakes.cartesia import FakeCartesia
from tests.speech.conftest import CARTESIA_KEY, GUARD_S, SynthesizerFactory

CLAUSES = ["Hello there,", "how are you today?"]


async def speak(ctx: CartesiaContext, clauses: list[str]) -> tuple[bytes, list[WordTiming]]:
    for clause in clauses:
        await ctx.say(clause)
    await ctx.finish()
    return await drain(ctx)


async def drain(ctx: CartesiaContext) -> tuple[bytes, list[WordTiming]]:
    audio = bytearray()
    words: list[WordTiming] = []
    async with asyncio.timeout(GUARD_S):
        async for item in ctx.stream():
            if isinstance(item, AudioChunk):
                audio += item.pcm
            else:
                words.append(item)
    return bytes(audio), words


class TestCartesiaSynthesizer:
    async def test_satisfies_the_protocols(self, make_synthesizer: SynthesizerFactory) -> None:
        """The synthesizer and its contexts satisfy the text-to-speech protocols."""
        synthesizer = make_synthesizer()
        assert isinstance(synthesizer, Synthesizer)
        assert isinstance(await synthesizer.new_context(), SynthesisContext)

    async def test_reply_is_one_context_with_continuations(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """Each clause is a continuation of one context; finish sends the closing empty transcript."""
        ctx = await make_synthesizer().new_context()
        await speak(ctx, CLAUSES)
        seen = fake_cartesia.contexts[ctx.context_id]
        assert seen.transcripts == ["Hello there, ", "how are you today? ", ""]
        assert [r["continue"] for r in seen.requests] == [True, True, False]
        first = seen.requests[0]
        assert first["model_id"] == "sonic-3"
        assert first["voice"] == {"id": "voice-123"}
        assert first["output_format"] == {
            "container": "raw",
            "encoding": "pcm_s16le",
            "sample_rate": 48000,
        }
        assert first["add_timestamps"] is True
        assert first["language"] == "en"
        assert first["max_buffer_delay_ms"] == 0

    async def test_language_tag_is_cut_to_the_primary_language(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """A character language of "en-GB" is sent to Cartesia as "en"."""
        ctx = await make_synthesizer(language="en-GB").new_context()
        await speak(ctx, ["Hi."])
        assert fake_cartesia.contexts[ctx.context_id].requests[0]["language"] == "en"

    async def test_handshake_carries_key_and_api_version(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """The websocket upgrade sends the Bearer key and the pinned Cartesia-Version."""
        await make_synthesizer().warm()
        headers = fake_cartesia.handshake_headers[0]
        assert headers["Authorization"] == f"Bearer {CARTESIA_KEY}"
        assert headers["Cartesia-Version"] == "2026-08-14"

    async def test_audio_is_non_silent_and_sized_to_the_text(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """The reply's audio is audible 48 kHz mono PCM whose length follows the text."""
        ctx = await make_synthesizer().new_context()
        audio, _ = await speak(ctx, CLAUSES)
        assert rms_dbfs(audio) > -20
        expected_s = sum(len(c) + 1 for c in CLAUSES) * fake_cartesia.seconds_per_char
        assert duration_s(len(audio)) == pytest.approx(expected_s, abs=0.01)
        assert ctx.first_audio_ns is not None

    async def test_word_timings_run_across_continuations(
        self, make_synthesizer: SynthesizerFactory
    ) -> None:
        """Word timings cover every word in order, continuing from one clause to the next."""
        ctx = await make_synthesizer().new_context()
        audio, words = await speak(ctx, CLAUSES)
        assert [w.word for w in words] == " ".join(CLAUSES).split()
        assert all(a.end_s <= b.start_s + 1e-6 for a, b in zip(words, words[1:], strict=False))
        assert words[-1].end_s == pytest.approx(duration_s(len(audio)), abs=0.01)

    async def test_one_websocket_serves_many_replies(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """The connection stays warm between replies: three replies, one websocket."""
        synthesizer = make_synthesizer()
        for _ in range(3):
            await speak(await synthesizer.new_context(), ["Hi."])
        assert fake_cartesia.connections == 1
        assert synthesizer.connects == 1

    async def test_cancel_stops_generation(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """Barge-in: cancel sends a cancel for the context and the stream ends at once."""
        fake_cartesia.chunk_interval_s = 0.02
        ctx = await make_synthesizer().new_context()
        await ctx.say("This is a long sentence that would take a while to speak out loud.")
        stream = ctx.stream()
        first = await anext(stream)
        assert isinstance(first, (AudioChunk, WordTiming))
        await ctx.cancel()
        rest = [item async for item in stream]
        assert rest == []
        await fake_cartesia.wait_until(
            lambda: (
                ctx.context_id in fake_cartesia.contexts
                and fake_cartesia.contexts[ctx.context_id].cancelled
            )
        )
        assert not fake_cartesia.contexts[ctx.context_id].done
        await ctx.cancel()  # idempotent
        await ctx.say("ignored after cancel")
        assert fake_cartesia.contexts[ctx.context_id].transcripts[-1] != "ignored after cancel "

    async def test_error_event_fails_only_that_reply(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """An error event becomes the mapped ProviderError; the next reply uses the same socket."""
        synthesizer = make_synthesizer()
        fake_cartesia.fail_next(503, error_code="overloaded")
        ctx = await synthesizer.new_context()
        with pytest.raises(ProviderUnavailable):
            await speak(ctx, CLAUSES)
        audio, _ = await speak(await synthesizer.new_context(), ["Fine now."])
        assert audio
        assert fake_cartesia.connections == 1

    async def test_bad_request_error_is_mapped(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """A 400 error event is a ProviderBadRequest."""
        fake_cartesia.fail_next(400, error_code="invalid_voice")
        with pytest.raises(ProviderBadRequest):
            await speak(await make_synthesizer().new_context(), CLAUSES)

    async def test_drop_mid_reply_fails_the_reply_then_reconnects(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """A websocket cut mid-reply is a ProviderConnectionError; the next reply reconnects lazily."""
        synthesizer = make_synthesizer()
        fake_cartesia.drop_after_chunks = 2
        ctx = await synthesizer.new_context()
        with capture_logs(), pytest.raises(ProviderConnectionError):
            await speak(ctx, CLAUSES)
        audio, _ = await speak(await synthesizer.new_context(), ["Back again."])
        assert audio
        assert fake_cartesia.connections == 2

    async def test_refused_key_is_an_auth_error(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """A 401 on the upgrade is ProviderAuthError, and the key never reaches the logs."""
        synthesizer = make_synthesizer(api_key="sk_car_wrong-canary")
        with capture_logs() as logs, pytest.raises(ProviderAuthError) as info:
            await synthesizer.new_context()
        assert info.value.status == 401
        assert "sk_car_wrong-canary" not in repr(logs) + str(info.value)
        with pytest.raises(ProviderAuthError):
            await synthesizer.synthesize("hello")

    async def test_unreachable_service_is_a_connection_error(self) -> None:
        """Nothing listening is a ProviderConnectionError from new_context."""
        synthesizer = CartesiaSynthesizer(
            CARTESIA_KEY,
            base_url="http://127.0.0.1:9",
            ws_base_url="ws://127.0.0.1:9",
            voice_id="v",
        )
        try:
            with capture_logs(), pytest.raises(ProviderConnectionError):
                await synthesizer.new_context()
        finally:
            await synthesizer.aclose()

    async def test_stall_before_first_audio_times_out(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """No answer within stall_timeout_s is a ProviderTimeout, and the context is cancelled."""
        fake_cartesia.latency_to_first_audio_s = GUARD_S
        ctx = await make_synthesizer(stall_timeout_s=0.1).new_context()
        with pytest.raises(ProviderTimeout):
            await speak(ctx, ["Hello?"])
        await fake_cartesia.wait_until(
            lambda: (
                ctx.context_id in fake_cartesia.contexts
                and fake_cartesia.contexts[ctx.context_id].cancelled
            )
        )

    async def test_slow_llm_between_clauses_is_not_a_stall(
        self, make_synthesizer: SynthesizerFactory
    ) -> None:
        """Waiting for the next clause longer than stall_timeout_s does not fail the reply."""
        ctx = await make_synthesizer(stall_timeout_s=0.05).new_context()
        await ctx.say("First part,")
        stream = ctx.stream()
        items = [await anext(stream) for _ in range(2)]
        await asyncio.sleep(0.1)  # the model is thinking; the first clause's audio is all out
        await ctx.say("second part.")
        await ctx.finish()
        items += [item async for item in stream]
        assert sum(isinstance(i, AudioChunk) for i in items) > 2

    async def test_latency_to_first_audio_is_stamped(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """first_audio_ns marks the first chunk, after the injected latency."""
        fake_cartesia.latency_to_first_audio_s = 0.05
        ctx = await make_synthesizer().new_context()
        await ctx.say("Hi.")
        await ctx.finish()
        stream = ctx.stream()
        first_audio = None
        async for item in stream:
            if isinstance(item, AudioChunk):
                first_audio = item
                break
        assert first_audio is not None and ctx.first_audio_ns == first_audio.received_ns
        await ctx.cancel()

    async def test_unread_audio_is_bounded(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """A reply whose audio nobody reads is failed past max_buffered_s, and cancelled upstream."""
        synthesizer = make_synthesizer(max_buffered_s=0.1)
        ctx = await synthesizer.new_context()
        with capture_logs():
            await ctx.say(
                "A sentence long enough to produce well over a tenth of a second of audio."
            )
            await fake_cartesia.wait_until(
                lambda: (
                    ctx.context_id in fake_cartesia.contexts
                    and fake_cartesia.contexts[ctx.context_id].cancelled
                )
            )
        with pytest.raises(ProviderError):
            await drain(ctx)
        assert synthesizer.overflows == 1

    async def test_say_after_finish_is_a_bug(self, make_synthesizer: SynthesizerFactory) -> None:
        """Adding text after finish() raises instead of silently dropping words."""
        ctx = await make_synthesizer().new_context()
        await ctx.say("Hi.")
        await ctx.finish()
        with pytest.raises(RuntimeError):
            await ctx.say("more")
        await drain(ctx)

    async def test_synthesize_uses_the_bytes_endpoint(
        self, make_synthesizer: SynthesizerFactory, fake_cartesia: FakeCartesia
    ) -> None:
        """synthesize() posts to /tts/bytes and returns audible 48 kHz PCM sized to the text."""
        pcm = await make_synthesizer().synthesize("Hello, welcome back!")
        request = fake_cartesia.requests_to("/tts/bytes", method="POST")[0]
        assert request.json["output_format"]["sample_rate"] == 48000
        assert request.json["voice"] == {"id": "voice-123"}
        assert rms_dbfs(pcm) > -20
        assert duration_s(len(pcm)) == pytest.approx(20 * fake_cartesia.seconds_per_char, abs=0.01)

    async def test_websockets_client_path_the_sdk_needs_exists(self) -> None:
        """The SDK's websocket import works with our pinned websockets (no cartesia[websockets] extra)."""
        from websockets.asyncio.client import connect

        assert callable(connect)
