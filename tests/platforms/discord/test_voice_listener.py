"""The receive side's idle timer: every turn of a speaker is finalized after the endpointing wait."""

from __future__ import annotations

import asyncio
import time

from familiar_connect.core.turns import TurnConfig, TurnDetected
from familiar_connect.platforms.discord.voice_receive import (
    ListenConfig,
    ReceiveStats,
    VoiceListener,
)
from tests.platforms.discord.test_voice_kit import ScriptedTranscriber, tone

SPEAKER = 1001
FRAME = tone(0.02).tobytes()  # one 20 ms mono frame, clearly voiced


async def _speak(listener: VoiceListener, frames: int) -> None:
    for _ in range(frames):
        listener.audio(SPEAKER, FRAME, 5_000.0, time.monotonic_ns())
        await asyncio.sleep(0.02)


async def _wait_turns(heard: asyncio.Event, turns: list[TurnDetected], count: int) -> None:
    async with asyncio.timeout(2):
        while len(turns) < count:
            heard.clear()
            await heard.wait()


async def test_second_turn_is_finalized_after_the_idle_wait() -> None:
    """A speaker's later turns are finalized after ``finalize_after_idle_ms`` too.

    After the first finalize the pending tick is the stream-close one (30 s away); the next
    voiced frame must bring the finalize back, or the turn only ends at the idle end.
    """
    stt = ScriptedTranscriber.with_lines(
        {str(SPEAKER): ["the first line", "the second line"]}, min_voiced_frames=2
    )
    turns: list[TurnDetected] = []
    heard = asyncio.Event()

    def on_turn(turn: TurnDetected) -> None:
        turns.append(turn)
        heard.set()

    listener = VoiceListener(
        stt,
        keyterms=list,
        on_onset=lambda _onset: None,
        on_turn=on_turn,
        config=ListenConfig(
            finalize_after_idle_ms=60,
            close_stream_after_idle_s=30.0,
            turns=TurnConfig(idle_end_ms=10_000),
        ),
        stats=ReceiveStats(),
    )
    try:
        await _speak(listener, 8)
        await _wait_turns(heard, turns, 1)
        await asyncio.sleep(0.1)
        await _speak(listener, 8)
        ended = time.monotonic()
        await _wait_turns(heard, turns, 2)
        assert time.monotonic() - ended < 1.0
        assert [t.text for t in turns] == ["the first line", "the second line"]
        assert [t.reason for t in turns] == ["speech_final", "speech_final"]
        assert stt.streams[0].finalize_calls == 2
    finally:
        await listener.aclose()
