"""(2) Barge-in: a member talks over the reply → the familiar's last audible frame, beyond the window.

The rig of :mod:`benchmarks.voice_turn` (fakes and driver on core 1; the familiar and the
reference client on core 0, each with its own fakes), samples alternating A B / B A, one at a
time. One sample:

1. alice asks (0.2 s of tone); the fake LLM answers a long story at 60 tokens/s (its stream
   stays open for seconds), the fake TTS synthesises faster than real time;
2. once the fake voice server hears the first audible frame of the answer, the driver waits
   a random 150–400 ms (so the interruption falls anywhere in the 20 ms frame clock), then
   another member (bob, carol or dave in turn: a member's turn state needs its idle end to
   reset) talks over it: 0.4 s of tone, then five Opus silence frames;
3. ``t_window`` is when the fake sent the packet that completes the detection window
   (``barge_in_min_voiced_ms`` = 200 ms of voiced audio: the N-th voiced packet, N = 10;
   the onset of the speech is one frame before the first packet). Everything is measured
   from there, on the fakes' clock:

   * **stop**: the last audible bot packet the fake voice server received − ``t_window``
     (what the issue calls "beyond the detection window");
   * **LLM closed**: the fake OpenRouter saw the stream closed by the client − ``t_window``;
   * **TTS cancel**: the fake Cartesia received the context's cancel − ``t_window``; and how
     many transcripts reached it after the cancel (should be none).

The familiar's own stamps (around its speech-onset handler) split the stop into detection
(``t_window`` → the onset evidence reached the voice manager: UDP, voice-recv's jitter buffer,
the receive hop) and the handler (playback stop + turn cancel). The interruption's transcript
is empty (no new turn): only the voiced-duration window detects the onset here. As in
:mod:`benchmarks.voice_turn`, the figures are also given without the samples an event-loop
stall over 20 ms of any process overlapped.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._harness import (
    RELIABLE_P99_SAMPLES,
    BenchResult,
    RunContext,
    Target,
    bootstrap_ratio,
    can_pin,
    cpu_seconds,
    fmt_ms,
    summarize,
)
from benchmarks._voice_fakes import INTERRUPTERS, VoiceLLMPlan, tone
from benchmarks._voice_rig import Subject, voice_rig, wait_until
from benchmarks._voice_stalls import StallSentinel, overlaps

NAME = "barge_in"
TITLE = "barge-in stop latency beyond the detection window (vs a reference client)"

WINDOW_MS = 200
ENDPOINTING_MS = 100
QUESTION_S = 0.2
INTERRUPT_S = 0.4
SILENCE_FRAMES = 5
SECONDS_PER_CHAR = 0.006
TOKENS_PER_S = 60.0
FRAME_NS = 20_000_000
STORY = "Once upon a time, a small fox lived by the sea. " + " ".join(
    f"On day {n} it walked along the shore, and it watched the grey waves roll in."
    for n in range(20)
)


@dataclass(frozen=True, slots=True)
class Sizes:
    warmup_pairs: int
    pairs: int


SIZES: dict[str, Sizes] = {
    "smoke": Sizes(1, 2),
    "quick": Sizes(3, 16),
    "full": Sizes(6, 300),
}


@dataclass
class Sample:
    """One barge-in as the fakes saw it (stamps ``monotonic_ns``)."""

    subject: str
    phase: str
    tag: int
    interrupter: str
    delay_s: float
    t_interrupt: int = 0
    t_window: int = 0
    t_first_audible: int | None = None
    t_last_audible: int | None = None
    audible_after_window: int = 0
    llm_closed: int | None = None
    tts_cancel: int | None = None
    tts_texts_after_cancel: int = 0
    stalled: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def _ms(self, t: int | None) -> float | None:
        return None if t is None else (t - self.t_window) / 1e6

    @property
    def stop_ms(self) -> float | None:
        return self._ms(self.t_last_audible)

    @property
    def llm_closed_ms(self) -> float | None:
        return self._ms(self.llm_closed)

    @property
    def tts_cancel_ms(self) -> float | None:
        return self._ms(self.tts_cancel)


class Driver:
    """Runs barge-in samples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - workload shape, not security
        self._tags = itertools.count(1)
        self.question = tone(QUESTION_S)
        self.interruption = tone(INTERRUPT_S, freq_hz=600.0)
        self._next_interrupter = {"familiar": 0, "reference": 0}

    async def sample(self, subject: Subject, phase: str, delay_s: float) -> Sample:
        fakes = subject.fakes
        voice = fakes.voice
        tag = next(self._tags)
        turn = self._next_interrupter[subject.name]
        self._next_interrupter[subject.name] = turn + 1
        interrupter = INTERRUPTERS[turn % len(INTERRUPTERS)][0]
        sample = Sample(subject.name, phase, tag, interrupter, delay_s)
        fakes.llm.plans[tag] = VoiceLLMPlan(STORY, tokens_per_s=TOKENS_PER_S)
        fakes.deepgram.expect(f"[bt{tag}] Familiar, tell me a story", latency_s=0.0)
        fakes.cartesia.latency_to_first_audio_s = 0.0
        contexts_before = set(fakes.cartesia.stamps)
        sent = await voice.speak("alice", self.question, trailing_silence=SILENCE_FRAMES)
        t0 = sent[len(sent) - SILENCE_FRAMES - 1]
        try:
            sample.t_first_audible = await wait_until(
                lambda: voice.first_audible_since(t0), timeout_s=15
            )
            await asyncio.sleep(delay_s)
            llm = fakes.llm.turns.get(tag)
            if llm is None or llm.ended_ns is not None:
                sample.error = "llm_stream_not_open_at_interruption"
            fakes.deepgram.pending = None  # the interruption is transcribed as nothing
            sent_b = await voice.speak(
                interrupter, self.interruption, trailing_silence=SILENCE_FRAMES
            )
            sample.t_interrupt = sent_b[0]
            sample.t_window = sent_b[WINDOW_MS * 1_000_000 // FRAME_NS - 1]
            await wait_until(lambda: llm is not None and llm.ended_ns is not None, timeout_s=10)
            await wait_until(
                lambda: time.monotonic_ns() - voice.last_rx_ns > 150_000_000, timeout_s=10
            )
        except TimeoutError:
            sample.error = sample.error or "did_not_stop"
            # Let a reply that never stopped play out before the next sample.
            await wait_until(
                lambda: time.monotonic_ns() - voice.last_rx_ns > 300_000_000, timeout_s=60
            )
        self._collect(sample, subject, contexts_before)
        fakes.llm.plans.pop(tag, None)
        # The interrupter's Finalize (an empty final) and the cancelled turn settle.
        await asyncio.sleep(ENDPOINTING_MS / 1000 + 0.15)
        return sample

    @staticmethod
    def _collect(sample: Sample, subject: Subject, contexts_before: set[str]) -> None:
        fakes = subject.fakes
        llm = fakes.llm.turns.pop(sample.tag, None)
        if llm is not None:
            sample.llm_closed = llm.closed_ns
            if llm.closed_ns is None and not sample.error:
                sample.error = "llm_stream_finished_instead_of_closed"
        if sample.t_first_audible is not None and sample.t_window:
            audible = fakes.voice.audible_since(sample.t_first_audible)
            sample.t_last_audible = audible[-1] if audible else None
            sample.audible_after_window = sum(1 for t in audible if t > sample.t_window)
        new = [s for cid, s in fakes.cartesia.stamps.items() if cid not in contexts_before]
        cancels = [s.cancel_rx_ns for s in new if s.cancel_rx_ns is not None]
        if cancels:
            sample.tts_cancel = min(cancels)
            sample.tts_texts_after_cancel = sum(
                1 for s in new for t in s.text_rx_ns if t > sample.tts_cancel
            )
        if not sample.t_window and not sample.error:
            sample.error = "no_interruption"

    async def pairs(self, subjects: Sequence[Subject], phase: str, count: int) -> list[Sample]:
        for subject in subjects:
            await subject.child.send(f"phase {phase}")
        samples: list[Sample] = []
        for index in range(count):
            order = subjects if index % 2 == 0 else list(reversed(subjects))
            delay_s = self.rng.uniform(0.15, 0.4)
            for subject in order:
                samples.append(await self.sample(subject, phase, delay_s))
        for subject in subjects:
            await subject.child.send("phase idle")
        return samples


async def run(ctx: RunContext) -> BenchResult:
    sizes = SIZES[ctx.mode]
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    result.params = {
        "sizes": {k: getattr(sizes, k) for k in Sizes.__dataclass_fields__},
        "barge_in_min_voiced_ms": WINDOW_MS,
        "endpointing_ms": ENDPOINTING_MS,
        "question_s": QUESTION_S,
        "interruption_s": INTERRUPT_S,
        "llm_tokens_per_s": TOKENS_PER_S,
        "tts_seconds_per_char": SECONDS_PER_CHAR,
        "pinning": "driver+fakes on core 1, subjects on core 0" if can_pin() else "none",
    }
    result.method = [
        "fakes per subject and the driver in this process, pinned to core 1; the familiar and "
        "the reference client in child processes pinned to core 0; samples A B / B A, one at a "
        "time, both subjects of a pair interrupted at the same delay after first audio",
        f"the detection window is policy ({WINDOW_MS} ms of voiced audio); t_window = the fake "
        "sent the packet completing it; stop = last audible bot packet received − t_window",
        "LLM closed = the fake OpenRouter saw the client close the stream − t_window; "
        "TTS cancel = the fake Cartesia received the cancel − t_window",
        f"{sizes.warmup_pairs} warm-up pairs discarded (each interrupter's STT stream opens)",
    ]
    driver = Driver(ctx.seed)
    listen = {"finalize_after_idle_ms": ENDPOINTING_MS, "barge_in_min_voiced_ms": WINDOW_MS}
    members = ("alice", *(name for name, _ in INTERRUPTERS))
    async with voice_rig(
        ctx, NAME, listen=listen, seconds_per_char=SECONDS_PER_CHAR, members=members
    ) as (bot, ref):
        subjects = (bot, ref)
        cpu0 = cpu_seconds()
        async with StallSentinel() as driver_lag:
            driver_lag.phase("warmup")
            await driver.pairs(subjects, "warmup", sizes.warmup_pairs)
            driver_lag.phase("barge")
            samples = await driver.pairs(subjects, "barge", sizes.pairs)
            driver_lag_report = driver_lag.summaries()
        driver_cpu_s = cpu_seconds() - cpu0
        bot_report, ref_report = await asyncio.gather(bot.child.stop(60), ref.child.stop(60))
        stalls = {
            "fakes_and_driver": driver_lag.stalls,
            "familiar": bot_report.get("stalls", []),
            "reference": ref_report.get("stalls", []),
        }
        every_stall = [stall for found in stalls.values() for stall in found]
        for sample in samples:
            ends = [t for t in (sample.t_last_audible, sample.llm_closed, sample.t_window) if t]
            if sample.t_interrupt and ends:
                sample.stalled = overlaps((sample.t_interrupt, max(ends)), every_stall)
        result.metrics["fakes"] = {
            "driver_loop_lag_ms": driver_lag_report,
            "driver_cpu_s": round(driver_cpu_s, 3),
            "loop_stalls_over_20_ms": {name: len(found) for name, found in stalls.items()},
            "llm_untagged_requests": {s.name: s.fakes.llm.untagged_requests for s in subjects},
            "deepgram_empty_finals": {s.name: s.fakes.deepgram.empty_finals for s in subjects},
        }
    _analyze(result, samples, bot_report, ref_report)
    return result


# --- analysis ---------------------------------------------------------------------------


def _values(samples: Sequence[Sample], attr: str) -> list[float]:
    return [float(v) for s in samples if s.ok and (v := getattr(s, attr)) is not None]


def _describe(samples: Sequence[Sample]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for sample in samples:
        if sample.error:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    ok = [s for s in samples if s.ok]
    return {
        "samples": len(samples),
        "errors": errors,
        "stop_beyond_window_ms": summarize(_values(samples, "stop_ms")),
        "llm_closed_beyond_window_ms": summarize(_values(samples, "llm_closed_ms")),
        "tts_cancel_beyond_window_ms": summarize(_values(samples, "tts_cancel_ms")),
        "audible_frames_after_window": summarize(
            [float(s.audible_after_window) for s in ok], unit="frames", digits=1
        ),
        "tts_texts_after_cancel": sum(s.tts_texts_after_cancel for s in ok),
        # Minus the samples a ≥ 20 ms event-loop stall of any process overlapped.
        "stalled_samples": sum(1 for s in samples if s.stalled),
        "stop_beyond_window_ms_without_stalls": summarize(
            _values([s for s in samples if not s.stalled], "stop_ms")
        ),
        "llm_closed_beyond_window_ms_without_stalls": summarize(
            _values([s for s in samples if not s.stalled], "llm_closed_ms")
        ),
    }


def _familiar_split(samples: Sequence[Sample], onsets: list[dict[str, Any]]) -> dict[str, Any]:
    """Detection and handler times from the familiar's onset stamps, matched by arrival."""
    barge = sorted((o for o in onsets if o.get("barge_in")), key=lambda o: o["at_ns"])
    split: dict[str, list[float]] = {}
    for sample in samples:
        if not sample.ok:
            continue
        onset = next(
            (o for o in barge if sample.t_window <= o["at_ns"] <= sample.t_window + 200_000_000),
            None,
        )
        if onset is None:
            continue
        rows = {
            "window_packet_to_onset_evidence (UDP, jitter buffer, hop)": onset["at_ns"]
            - sample.t_window,
            "onset_evidence_to_handler": onset["entered_ns"] - onset["at_ns"],
            "handler (playback stop, turn cancel)": onset["returned_ns"] - onset["entered_ns"],
        }
        if sample.llm_closed is not None:
            rows["handler_return_to_llm_closed_at_fake"] = sample.llm_closed - onset["returned_ns"]
        if sample.t_last_audible is not None:
            rows["handler_return_to_last_audible"] = sample.t_last_audible - onset["returned_ns"]
        for name, ns in rows.items():
            split.setdefault(name, []).append(ns / 1e6)
    return {name: summarize(values) for name, values in split.items()}


def _analyze(
    result: BenchResult,
    samples: list[Sample],
    bot_report: dict[str, Any],
    ref_report: dict[str, Any],
) -> None:
    per = {name: [s for s in samples if s.subject == name] for name in ("familiar", "reference")}
    metrics = {name: _describe(values) for name, values in per.items()}
    metrics["familiar"]["inside_familiar_ms"] = _familiar_split(
        per["familiar"], bot_report.get("onsets", [])
    )
    result.metrics["samples"] = metrics
    for measure in ("stop_ms", "llm_closed_ms", "tts_cancel_ms"):
        result.ratios[f"{measure.removesuffix('_ms')}_familiar_vs_reference"] = bootstrap_ratio(
            _values(per["familiar"], measure), _values(per["reference"], measure)
        )
    result.metrics["familiar_process"] = {
        key: bot_report.get(key) for key in ("voice", "orchestrator", "rss", "cpu_s", "loop_lag_ms")
    }
    result.metrics["reference_process"] = {
        key: ref_report.get(key)
        for key in ("replies", "barge_ins", "failures", "rss", "cpu_s", "loop_lag_ms")
    }
    _targets(result, metrics)


def _targets(result: BenchResult, metrics: dict[str, Any]) -> None:
    fam, ref = metrics["familiar"], metrics["reference"]
    stop, rstop = fam["stop_beyond_window_ms"], ref["stop_beyond_window_ms"]
    stat = "p99" if (stop.get("n") or 0) >= RELIABLE_P99_SAMPLES else "p95"
    calm = fam["stop_beyond_window_ms_without_stalls"]
    errors = sum(fam["errors"].values())
    ratio = result.ratios["stop_familiar_vs_reference"]
    inside = fam.get("inside_familiar_ms", {})
    detect = inside.get("window_packet_to_onset_evidence (UDP, jitter buffer, hop)", {})
    result.targets += [
        Target(
            f"stop beyond the window, {stat} (familiar)",
            fmt_ms(stop.get(stat)),
            "≤ 25 ms",
            stop.get(stat) is not None and stop[stat] <= 25.0 and errors == 0,
            f"p50 {fmt_ms(stop.get('p50'))}, max {fmt_ms(stop.get('max'))} (n={stop.get('n')}, "
            f"errors {errors}); without the {fam['stalled_samples']} samples a ≥ 20 ms loop "
            f"stall overlapped: p50/{stat} {fmt_ms(calm.get('p50'))} / {fmt_ms(calm.get(stat))}, "
            f"max {fmt_ms(calm.get('max'))}; reference p50/{stat} {fmt_ms(rstop.get('p50'))} / "
            f"{fmt_ms(rstop.get(stat))}; familiar ÷ reference p50 ×{ratio.get('ratio')}, "
            f"{fmt_ms(ratio.get('difference'))}",
        ),
        Target(
            "window packet → onset reached the voice manager, p50 (familiar)",
            fmt_ms(detect.get("p50")),
            "",
            None,
            f"p95 {fmt_ms(detect.get('p95'))}; handler p50 "
            f"{fmt_ms(inside.get('handler (playback stop, turn cancel)', {}).get('p50'))}; "
            f"audible frames after the window p50 "
            f"{fam['audible_frames_after_window'].get('p50')}, max "
            f"{fam['audible_frames_after_window'].get('max')}",
        ),
    ]
    llm, rllm = fam["llm_closed_beyond_window_ms"], ref["llm_closed_beyond_window_ms"]
    closed_after_handler = inside.get("handler_return_to_llm_closed_at_fake", {})
    result.targets.append(
        Target(
            "LLM stream seen closed by the fake, beyond the window, p50 (familiar)",
            fmt_ms(llm.get("p50")),
            "",
            None,
            f"{stat} {fmt_ms(llm.get(stat))}; after the familiar's onset handler returned p50/p95 "
            f"{fmt_ms(closed_after_handler.get('p50'))} / "
            f"{fmt_ms(closed_after_handler.get('p95'))}; reference p50/{stat} "
            f"{fmt_ms(rllm.get('p50'))} / {fmt_ms(rllm.get(stat))}",
        )
    )
    result.targets.append(
        Target(
            "LLM stream closed ≤ 5 ms after the onset handler, p95 (familiar)",
            fmt_ms(closed_after_handler.get("p95")),
            "≤ 5 ms",
            closed_after_handler.get("p95") is not None and closed_after_handler["p95"] <= 5.0,
        )
    )
    cancel = fam["tts_cancel_beyond_window_ms"]
    result.targets.append(
        Target(
            "TTS cancel received, beyond the window, p50 (familiar)",
            fmt_ms(cancel.get("p50")),
            "",
            None,
            f"transcripts after the cancel: familiar {fam['tts_texts_after_cancel']}, reference "
            f"{ref['tts_texts_after_cancel']}; reference cancel p50 "
            f"{fmt_ms(ref['tts_cancel_beyond_window_ms'].get('p50'))}",
        )
    )
    result.check("stop beyond window p50 familiar/reference", ratio.get("ratio"), 3.0)
    llm_ratio = result.ratios["llm_closed_familiar_vs_reference"].get("ratio")
    result.check("LLM closed beyond window p50 familiar/reference", llm_ratio, 4.0)
