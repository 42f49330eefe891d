"""A voice conversation for the soak: a scripted speaker, a transcriber that never runs out, an ear.

The familiar runs in the driver process with its real voice stack (discord.py + voice-recv,
the Deepgram and Cartesia SDKs); the fakes run here:

- :class:`SoakDeepgram` is :class:`~tests.fakes.deepgram.FakeDeepgram` answering for as long
  as the run lasts: a connection's script is fixed up front, but a soak's speaker says an
  unbounded number of sentences on one connection. Whenever the familiar sends ``Finalize``
  after at least :data:`MIN_UTTERANCE_S` of new audio, it hears the next line
  (``speech_final``), as Deepgram does for a sentence followed by silence; ``SpeechStarted``
  comes with the first audio of each sentence. It keeps counts, not the audio.
- :class:`SoakVoice` is :class:`~tests.fakes.discord_voice.FakeDiscordVoice` with small bounded
  recordings and monotonic counters of the familiar's packets (the recordings wrap around in
  a long run; the counters do not).
- :func:`speak_and_listen`: a member says something every few seconds and waits until the
  familiar's answer is heard as non-silent Opus, then until it has finished speaking.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.deepgram import (
    BYTES_PER_SECOND,
    DeepgramSession,
    FakeDeepgram,
    Session,
    metadata,
    pcm_tone,
    results,
    speech_started,
    utterance_end,
)
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.reliability.figures import timeout_s

__all__ = ["MIN_UTTERANCE_S", "SoakDeepgram", "SoakVoice", "VoiceTally", "speak_and_listen"]

MIN_UTTERANCE_S = 0.3
"""New audio a Finalize must follow to be a sentence (less is a stray frame: an empty final)."""
SPOKEN_S = 0.8
AUDIBLE_FRAMES = 8
"""Non-silent 20 ms frames that make "the answer was heard" (the reply is ~16 frames)."""
QUIET_S = 0.4


def voice_line(n: int) -> str:
    """What the speaker's n-th sentence is transcribed as (addressed to the familiar)."""
    return f"Familiar, tell me about voice topic {n}"


class SoakDeepgram(FakeDeepgram):
    """Deepgram that transcribes every sentence, however many (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.heard = 0
        self.audio_bytes = 0
        self.finalizes = 0

    async def _receive_loop(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        script: Session,
        record: DeepgramSession,
        outbox: asyncio.Queue[tuple[float, dict[str, Any] | None]],
    ) -> None:
        received = covered = 0
        started = False
        while True:
            try:
                async with asyncio.timeout(script.idle_timeout_s):
                    msg = await ws.receive()
            except TimeoutError:
                record.ended = "idle_timeout"
                await self.close_websocket(ws, code=1011, message=b"NET-0001")
                return
            now = time.monotonic()
            if msg.type == WSMsgType.BINARY:
                received += len(msg.data)
                self.audio_bytes += len(msg.data)
                if not started:
                    started = True
                    outbox.put_nowait((now, speech_started(covered / BYTES_PER_SECOND)))
            elif msg.type == WSMsgType.TEXT:
                kind = json.loads(msg.data).get("type")
                if kind == "Finalize":
                    self.finalizes += 1
                    start = covered / BYTES_PER_SECOND
                    duration = (received - covered) / BYTES_PER_SECOND
                    if duration >= MIN_UTTERANCE_S:
                        self.heard += 1
                        text = voice_line(self.heard)
                        final = results(
                            text,
                            is_final=True,
                            speech_final=True,
                            from_finalize=True,
                            start=start,
                            duration=duration,
                        )
                        outbox.put_nowait((now, final))
                        outbox.put_nowait((now, utterance_end(start + duration)))
                    else:
                        empty = results(
                            "", is_final=True, start=start, duration=duration, from_finalize=True
                        )
                        outbox.put_nowait((now, empty))
                    covered, started = received, False
                elif kind == "CloseStream":
                    outbox.put_nowait((now, metadata(received / BYTES_PER_SECOND)))
                    outbox.put_nowait((now, None))
                    record.ended = "close_stream"
            else:
                if record.ended is None:
                    record.ended = "client_closed"
                return


class SoakVoice(FakeDiscordVoice):
    """The fake voice server with bounded recordings and counters that never wrap."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max_recorded_packets", 2_000)
        kwargs.setdefault("max_recorded_frames", 2_000)
        super().__init__(*args, **kwargs)
        self.bot_frames = 0
        self.audible_frames = 0
        self.last_bot_ns = 0

    def _bot_rtp(self, data: bytes) -> None:
        last = self._packets[-1] if self._packets else None
        super()._bot_rtp(data)
        if self._packets and self._packets[-1] is not last:
            packet = self._packets[-1]
            self.bot_frames += 1
            self.last_bot_ns = packet.t_ns
            if not packet.silent:
                self.audible_frames += 1


@dataclass
class VoiceTally:
    """What the speaker did: sentences said, answers heard."""

    said: int = 0
    answered: int = 0


async def speak_and_listen(
    voice: SoakVoice, stop: float, tally: VoiceTally, *, speaker: str = "alice", pause_s: float
) -> None:
    """Say a sentence, wait for the answer to be heard and to end, pause; until ``stop``.

    Raises:
        AssertionError: a sentence got no audible answer (within a generous hang guard).
    """
    audio = pcm_tone(SPOKEN_S)
    while time.monotonic() < stop:
        before = voice.audible_frames
        await voice.user_speaks(speaker, audio, channels=1)
        tally.said += 1
        try:
            await voice.wait_for(
                lambda before=before: voice.audible_frames - before >= AUDIBLE_FRAMES,
                timeout_s=timeout_s(30),
            )
        except TimeoutError:
            raise AssertionError(f"sentence {tally.said} got no audible answer") from None
        tally.answered += 1
        # Speaking over the answer would be a barge-in: wait until the familiar is quiet.
        await voice.wait_for(
            lambda: time.monotonic_ns() - voice.last_bot_ns >= QUIET_S * 1e9,
            timeout_s=timeout_s(30),
            poll_s=0.05,
        )
        await asyncio.sleep(pause_s)
