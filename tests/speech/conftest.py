"""Fixtures for speech tests: fake Deepgram and Cartesia on loopback, real SDK clients aimed at them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.deepgram import FakeDeepgram

DEEPGRAM_KEY = "dg-test-canary-0123456789abcdef"
CARTESIA_KEY = "sk_car_test-canary-0123456789"
# Generous bound for waits that only run out when the behaviour under test is broken.
GUARD_S = 5.0

TranscriberFactory = Callable[..., DeepgramTranscriber]
SynthesizerFactory = Callable[..., CartesiaSynthesizer]


@pytest.fixture(name="fake_deepgram")
async def fixture_fake_deepgram() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(api_key=DEEPGRAM_KEY) as fake:
        yield fake


@pytest.fixture(name="make_transcriber")
async def fixture_make_transcriber(
    fake_deepgram: FakeDeepgram,
) -> AsyncIterator[TranscriberFactory]:
    """Build transcribers aimed at the fake with fast timers; all closed at teardown."""
    made: list[DeepgramTranscriber] = []

    def make(**overrides: Any) -> DeepgramTranscriber:
        options: dict[str, Any] = {
            "ws_base": fake_deepgram.ws_base_url,
            "http_base": fake_deepgram.base_url,
            "keepalive_s": 3.0,
            "finalize_after_idle_s": 0.05,
            "close_after_idle_s": 30.0,
            "stall_timeout_s": GUARD_S,
            "reconnect_backoff_base_s": 0.001,
            "reconnect_backoff_max_s": 0.005,
            "close_timeout_s": 1.0,
        }
        options.update(overrides)
        transcriber = DeepgramTranscriber(options.pop("api_key", DEEPGRAM_KEY), **options)
        made.append(transcriber)
        return transcriber

    yield make
    for transcriber in made:
        await transcriber.aclose()


@pytest.fixture(name="fake_cartesia")
async def fixture_fake_cartesia() -> AsyncIterator[FakeCartesia]:
    async with FakeCartesia(api_key=CARTESIA_KEY) as fake:
        yield fake


@pytest.fixture(name="make_synthesizer")
async def fixture_make_synthesizer(
    fake_cartesia: FakeCartesia,
) -> AsyncIterator[SynthesizerFactory]:
    """Build synthesizers aimed at the fake; all closed at teardown."""
    made: list[CartesiaSynthesizer] = []

    def make(**overrides: Any) -> CartesiaSynthesizer:
        options: dict[str, Any] = {
            "base_url": fake_cartesia.base_url,
            "ws_base_url": fake_cartesia.ws_base_url,
            "voice_id": "voice-123",
            "model_id": "sonic-3",
            "language": "en",
            "stall_timeout_s": GUARD_S,
        }
        options.update(overrides)
        synthesizer = CartesiaSynthesizer(options.pop("api_key", CARTESIA_KEY), **options)
        made.append(synthesizer)
        return synthesizer

    yield make
    for synthesizer in made:
        await synthesizer.aclose()
