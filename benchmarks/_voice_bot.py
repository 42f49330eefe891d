"""Child process: the familiar itself, in a voice channel, against the driver's fakes.

Built the way ``familiar run`` builds it: :func:`familiar_connect.app.open_familiar`, then
:func:`familiar_connect.app._discord_service` (the Discord adapter with its
:class:`~familiar_connect.platforms.discord.voice.VoiceManager`, the real
:class:`~familiar_connect.speech.stt.deepgram.DeepgramTranscriber` and
:class:`~familiar_connect.speech.tts.cartesia.CartesiaSynthesizer` from settings), under the
:class:`~familiar_connect.supervisor.Supervisor`. The driver makes it join with the real
``/join-voice`` slash command. Benchmark choices, all policy rather than code:

* the memory writer is off, and the per-user rate limit and daily budgets are lifted (a
  benchmark member talks hundreds of times), as in the text benchmark;
* the receive side's two policy waits come from the driver: ``finalize_after_idle_ms`` (the
  endpointing: how long after Discord's packets stop the stream is finalized) and
  ``barge_in_min_voiced_ms`` (the barge-in detection window); the ``listen`` command changes
  the endpointing between profiles.

Logging is the production configuration (INFO, JSON) written to a file. The process adds a
loop-lag sentinel, CPU time per phase, every :class:`~familiar_connect.core.events.VoiceTurnTimings`
the orchestrator reports, and, around the voice manager's speech-onset handler, when the onset
evidence arrived (``SpeechOnset.at_ns``) and when the handler (playback stop, turn cancel)
returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks._child import ChildControl, child_main
from benchmarks._harness import app_logging, bench_familiar, cpu_seconds, rss_kib
from benchmarks._voice_stalls import StallSentinel

BENCH_CHARACTER = """\
[memory_writer]
enabled = false

[policy]
rate_per_minute = 10000
burst = 1000
user_daily_tokens = 0
user_daily_cost_usd = 0
familiar_daily_tokens = 0
familiar_daily_cost_usd = 0

[voice]
tts_voice = "voice-bench"
"""

_MAX_RECORDS = 20_000
_STAGES = (
    "speech_end_ns",
    "stt_final_ns",
    "first_token_ns",
    "first_clause_ns",
    "first_audio_ns",
    "first_frame_ns",
)


class _Recorder:
    """Per-phase CPU time, voice turn stamps and onset stamps."""

    def __init__(self) -> None:
        self.phase = "startup"
        self.cpu_start = cpu_seconds()
        self.cpu: dict[str, float] = {}
        self.timings: list[dict[str, Any]] = []
        self.onsets: list[dict[str, Any]] = []

    def switch(self, name: str) -> None:
        now = cpu_seconds()
        self.cpu[self.phase] = self.cpu.get(self.phase, 0.0) + now - self.cpu_start
        self.cpu_start = now
        self.phase = name

    def on_timings(self, timings: Any) -> None:
        if not hasattr(timings, "speech_end_ns") or len(self.timings) >= _MAX_RECORDS:
            return
        record = {stage: getattr(timings, stage, None) for stage in _STAGES}
        record["phase"] = self.phase
        self.timings.append(record)

    def on_onset(self, at_ns: int, entered_ns: int, returned_ns: int, barge_in: bool) -> None:
        if len(self.onsets) < _MAX_RECORDS:
            self.onsets.append(
                {
                    "phase": self.phase,
                    "at_ns": at_ns,
                    "entered_ns": entered_ns,
                    "returned_ns": returned_ns,
                    "barge_in": barge_in,
                }
            )


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    from familiar_connect.app import _discord_service, open_familiar
    from familiar_connect.supervisor import Supervisor

    with app_logging(Path(config["app_log"])):
        settings, character = bench_familiar(
            config,
            familiar_id="benchvoice",
            character_toml=BENCH_CHARACTER,
            discord_token=config["bot_token"],
            discord_api_base=config["discord_api"],
            discord_gateway_url=config["discord_gateway"],
            discord_operator_ids="",
            familiar_extra_ca_file=config["ca_file"],
            deepgram_api_key=config["deepgram_key"],
            deepgram_ws_base=config["deepgram_ws"],
            deepgram_http_base=config["deepgram_http"],
            cartesia_api_key=config["cartesia_key"],
            cartesia_base_url=config["cartesia_base"],
            cartesia_ws_base_url=config["cartesia_ws"],
        )
        recorder = _Recorder()
        async with open_familiar(settings, character) as familiar:
            service: Any = _discord_service(familiar)
            service.guild_ready_timeout_s = 0.05
            voice = service.voice
            assert voice is not None, "voice is configured: both providers have keys"
            _set_listen(voice, config["listen"])
            familiar.orchestrator.on_timings = recorder.on_timings
            _wrap_onset(voice, recorder)
            supervisor = Supervisor([*familiar.services, service])
            task = asyncio.get_running_loop().create_task(supervisor.run(), name="supervisor")
            try:
                async with asyncio.timeout(60):
                    await service.ready.wait()
                async with StallSentinel() as lag:
                    lag.phase("idle")
                    recorder.switch("idle")
                    control.ready({"pid": os.getpid()})
                    while (command := await control.command()) != "stop":
                        verb, _, rest = command.partition(" ")
                        if verb == "listen":
                            _set_listen(voice, json.loads(rest))
                            control.ack({"listen": json.loads(rest)})
                            continue
                        name = rest.strip() or verb
                        lag.phase(name)
                        recorder.switch(name)
                        control.ack({"phase": name})
                    lag_report = lag.summaries()
                    stalls = lag.stalls
                recorder.switch("stopping")
                result = {
                    "loop_lag_ms": lag_report,
                    "stalls": stalls,
                    "cpu_s": {k: round(v, 4) for k, v in recorder.cpu.items()},
                    "timings": recorder.timings,
                    "onsets": recorder.onsets,
                    "voice": _voice_stats(voice),
                    "orchestrator": {
                        name: getattr(familiar.orchestrator.stats, name)
                        for name in type(familiar.orchestrator.stats).__dataclass_fields__
                    },
                    "history_writer": {
                        "written": familiar.history_writer.written,
                        "dropped": familiar.history_writer.dropped,
                    },
                    "rss": rss_kib(os.getpid()),
                }
            finally:
                supervisor.stop()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(30):
                        await task
        return result


def _set_listen(voice: Any, options: dict[str, Any]) -> None:
    """Apply the driver's policy waits to the manager's config and to a live listener."""
    listen = voice.config.listen
    if "finalize_after_idle_ms" in options:
        listen = dataclasses.replace(
            listen, finalize_after_idle_ms=options["finalize_after_idle_ms"]
        )
    if "barge_in_min_voiced_ms" in options:
        turns = dataclasses.replace(
            listen.turns, barge_in_min_voiced_ms=options["barge_in_min_voiced_ms"]
        )
        listen = dataclasses.replace(listen, turns=turns)
    voice.config = dataclasses.replace(voice.config, listen=listen)
    listener = voice.listener
    if listener is not None:
        listener.config = listen
        listener.detector.config = listen.turns


def _wrap_onset(voice: Any, recorder: _Recorder) -> None:
    """Stamp the manager's speech-onset handler (it is looked up on each call, see ``_wire``)."""
    original = voice._onset

    def onset(conn: Any, signal: Any) -> None:
        entered = time.monotonic_ns()
        before = voice.stats.barge_ins
        original(conn, signal)
        recorder.on_onset(
            signal.at_ns, entered, time.monotonic_ns(), voice.stats.barge_ins > before
        )

    voice._onset = onset


def _voice_stats(voice: Any) -> dict[str, Any]:
    sink = voice.sink
    stats: dict[str, Any] = {
        "utterances": voice.stats.utterances,
        "barge_ins": voice.stats.barge_ins,
        "backchannels_while_busy": voice.stats.backchannels_while_busy,
        "receive": dataclasses.asdict(voice.stats.receive),
        "tts_connects": getattr(voice.synthesizer, "connects", None),
        "stt_reconnects": sum(
            getattr(s, "reconnects", 0) for s in getattr(voice.transcriber, "_streams", ())
        ),
    }
    if sink is not None:
        stats["sink"] = dataclasses.asdict(sink.stats)
    return stats


if __name__ == "__main__":
    child_main(main)
