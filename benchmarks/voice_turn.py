"""(1) Voice turn overhead: end of voiced audio → first audible frame, minus waits and providers.

Three processes (see :mod:`benchmarks._voice_rig`): the fakes and this driver pinned to core
1; the familiar (``familiar run``'s Discord adapter with its voice manager, the real Deepgram
and Cartesia clients) and a straight-line reference client (:mod:`benchmarks._voice_ref`)
pinned to core 0, each with its own set of fakes. Turns alternate A B / B A, one at a time.

One turn, on the fakes' clock (``monotonic_ns``, system-wide): alice speaks 0.2 s of tone
as 20 ms Opus RTP packets in real time, then the five Opus silence frames a Discord client
sends, then nothing. ``t0`` is when the packet holding the last voiced sample left the fake
(a client sends a frame when its 20 ms are complete). Then:

* **W, policy waits**: the silence tail (last packet sent − ``t0``: the familiar's
  endpointing timer counts from the last *packet*, and a client's five silence frames are
  packets) plus the endpointing wait (``finalize_after_idle_ms``: Discord sends nothing in
  silence, so the familiar asks Deepgram to ``Finalize`` after this long);
* **P, provider latencies the fakes measured** on the critical path: Deepgram (``Finalize``
  arrived → final sent), OpenRouter (request arrived → the token that completes the first
  clause sent; the clause boundary is the familiar's own :class:`ClauseChunker` rule, so
  waiting for it is provider pacing, not overhead), Cartesia (first transcript arrived →
  first audio chunk sent);
* ``E2E`` = first *audible* bot packet received by the fake voice server − ``t0``;
* ``overhead`` = ``E2E − W − P``. It splits exactly into four legs the fakes see:
  end of waits → ``Finalize`` arrives (receive path, voice-recv's jitter buffer, the
  timer, the Deepgram SDK), final sent → LLM request arrives (SDK, turn detection, the
  orchestrator, prompt, HTTP), clause token sent → transcript arrives at Cartesia (SSE,
  filter, chunker, sink, SDK), first chunk sent → first audible packet arrives (SDK,
  playback start, player thread, Opus encode, encryption, UDP).

Two latency profiles: **zero** (providers answer at once; endpointing 100 ms, the smallest
wait that Discord's packet jitter does not trip) and **realistic** (endpointing 300 ms,
STT final 150 ms after ``Finalize``, first token 400 ± 100 ms, 60 tokens/s, first audio
120 ms). Also: time from the first token to the first clause sent (the familiar's own stamps,
and the fakes' view for both subjects), ``E2E ÷ (W + P)``, and the familiar's own
:class:`~familiar_connect.core.events.VoiceTurnTimings` for where inside it the time goes.
Both subjects of a pair get the same script (prompt, reply, first-token delay), so their E2E
compare turn by turn. Every process logs its event-loop stalls over 20 ms
(:mod:`benchmarks._voice_stalls`); the overhead is also summarised without the turns a stall
overlapped, because on a shared machine the tail is mostly other people's load.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
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
from benchmarks._voice_fakes import VoiceLLMPlan, tone
from benchmarks._voice_rig import Subject, voice_rig, wait_until
from benchmarks._voice_stalls import StallSentinel, overlaps
from familiar_connect.core.chunking import ClauseChunker
from familiar_connect.core.output_filter import OutputFilter
from tests.fakes.openrouter import split_tokens

NAME = "voice_turn"
TITLE = "voice turn overhead (Discord voice, Deepgram, OpenRouter, Cartesia; vs a reference client)"

QUESTION_S = 0.2
SILENCE_FRAMES = 5
SECONDS_PER_CHAR = 0.002
_PROMPTS = (
    "hey Familiar, what's up",
    "Familiar, can you help me with something",
    "Familiar, what do you think about the weather",
    "tell me about your day, Familiar",
)
"""Every prompt names the familiar: unaddressed speech is answered at most every 30 s (policy)."""
_REPLIES = (
    "Sure, I can help with that. What would you like to know first?",
    "Not much, just listening to the rain. How about you?",
    "Good question. I think it depends on the weather tomorrow.",
    "It was quiet and calm today, thank you. And yours?",
)


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency profile: the policy wait and what the fakes inject."""

    endpointing_ms: int
    stt_s: float
    ttft_s: float
    ttft_jitter_s: float
    tokens_per_s: float | None
    ttfa_s: float


LATENCIES: dict[str, Latency] = {
    "zero": Latency(100, 0.0, 0.0, 0.0, None, 0.0),
    "realistic": Latency(300, 0.150, 0.400, 0.100, 60.0, 0.120),
}


@dataclass(frozen=True, slots=True)
class Sizes:
    warmup_pairs: int
    zero_pairs: int
    realistic_pairs: int


SIZES: dict[str, Sizes] = {
    "smoke": Sizes(1, 2, 1),
    "quick": Sizes(3, 20, 8),
    "full": Sizes(10, 300, 100),
}


def first_clause_index(text: str, *, output_filter: bool) -> tuple[int, str]:
    """Which streamed piece completes the first clause, and the clause (the familiar's rule)."""
    chunker = ClauseChunker()
    flt = OutputFilter() if output_filter else None
    for index, piece in enumerate(split_tokens(text)):
        visible = flt.feed(piece) if flt is not None else piece
        chunks = chunker.feed(visible) if visible else []
        if chunks:
            return index, chunks[0]
    raise ValueError(f"no clause before the end of {text!r}")


@dataclass(frozen=True, slots=True)
class TurnPlan:
    prompt: str
    reply: str
    ttft_s: float


@dataclass
class Sample:
    """One voice turn as the fakes saw it (all stamps ``monotonic_ns``)."""

    subject: str
    phase: str
    tag: int
    endpointing_ms: int
    t_start: int
    t0: int
    t_last: int
    clause_index: int
    clause: str
    first_audible: int | None = None
    finalize_rx: int | None = None
    final_tx: int | None = None
    llm_arrived: int | None = None
    token_ns: list[int] = field(default_factory=list)
    tts_text_rx: int | None = None
    tts_text: str = ""
    tts_chunk_tx: int | None = None
    stalled: bool = False
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def _ms(self, a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else (a - b) / 1e6

    @property
    def e2e_ms(self) -> float | None:
        return self._ms(self.first_audible, self.t0)

    @property
    def silence_tail_ms(self) -> float:
        return (self.t_last - self.t0) / 1e6

    @property
    def waits_ms(self) -> float:
        return self.silence_tail_ms + self.endpointing_ms

    @property
    def clause_token_ns(self) -> int | None:
        return self.token_ns[self.clause_index] if len(self.token_ns) > self.clause_index else None

    @property
    def stt_ms(self) -> float | None:
        return self._ms(self.final_tx, self.finalize_rx)

    @property
    def llm_ms(self) -> float | None:
        return self._ms(self.clause_token_ns, self.llm_arrived)

    @property
    def ttft_ms(self) -> float | None:
        return self._ms(self.token_ns[0] if self.token_ns else None, self.llm_arrived)

    @property
    def tts_ms(self) -> float | None:
        return self._ms(self.tts_chunk_tx, self.tts_text_rx)

    @property
    def providers_ms(self) -> float | None:
        parts = (self.stt_ms, self.llm_ms, self.tts_ms)
        return None if None in parts else sum(parts)  # type: ignore[arg-type]

    @property
    def overhead_ms(self) -> float | None:
        e2e, providers = self.e2e_ms, self.providers_ms
        return None if e2e is None or providers is None else e2e - self.waits_ms - providers

    @property
    def e2e_over_waits_and_providers(self) -> float | None:
        e2e, providers = self.e2e_ms, self.providers_ms
        return None if e2e is None or providers is None else e2e / (self.waits_ms + providers)

    # The four legs of the overhead (they add up to it exactly).
    @property
    def leg_to_finalize_ms(self) -> float | None:
        end_of_waits = self.t_last + self.endpointing_ms * 1_000_000
        return self._ms(self.finalize_rx, end_of_waits)

    @property
    def leg_to_llm_ms(self) -> float | None:
        return self._ms(self.llm_arrived, self.final_tx)

    @property
    def leg_to_tts_ms(self) -> float | None:
        return self._ms(self.tts_text_rx, self.clause_token_ns)

    @property
    def leg_to_frame_ms(self) -> float | None:
        return self._ms(self.first_audible, self.tts_chunk_tx)

    @property
    def token_to_clause_ms(self) -> float | None:
        """First text token sent → first clause arrived at TTS (provider pacing + code)."""
        return self._ms(self.tts_text_rx, self.token_ns[0] if self.token_ns else None)


class Driver:
    """Runs voice turns and collects samples."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - workload shape, not security
        self._tags = itertools.count(1)
        self.audio = tone(QUESTION_S)
        self.clauses = {text: first_clause_index(text, output_filter=True) for text in _REPLIES}

    def plan(self, latency: Latency) -> TurnPlan:
        """One turn's script, used by both subjects of a pair (so their E2E compare)."""
        ttft = (
            max(0.05, self.rng.gauss(latency.ttft_s, latency.ttft_jitter_s))
            if latency.ttft_s
            else 0.0
        )
        return TurnPlan(self.rng.choice(_PROMPTS), self.rng.choice(_REPLIES), ttft)

    async def turn(self, subject: Subject, phase: str, latency: Latency, plan: TurnPlan) -> Sample:
        fakes = subject.fakes
        tag = next(self._tags)
        index, clause = self.clauses[plan.reply]
        fakes.llm.plans[tag] = VoiceLLMPlan(
            plan.reply, ttft_s=plan.ttft_s, tokens_per_s=latency.tokens_per_s
        )
        stt = fakes.deepgram.expect(f"[bt{tag}] {plan.prompt}", latency_s=latency.stt_s)
        fakes.cartesia.latency_to_first_audio_s = latency.ttfa_s
        contexts_before = set(fakes.cartesia.stamps)
        sent = await fakes.voice.speak("alice", self.audio, trailing_silence=SILENCE_FRAMES)
        voiced = len(sent) - SILENCE_FRAMES
        sample = Sample(
            subject.name,
            phase,
            tag,
            latency.endpointing_ms,
            t_start=sent[0],
            t0=sent[voiced - 1],
            t_last=sent[-1],
            clause_index=index,
            clause=clause,
        )
        voice = fakes.voice
        try:
            sample.first_audible = await wait_until(
                lambda: voice.first_audible_since(sample.t0), timeout_s=15
            )
            await wait_until(lambda: self._done(subject, tag, contexts_before), timeout_s=15)
            # The reply has been played out: wait until the bot has been quiet for a while.
            await wait_until(
                lambda: time.monotonic_ns() - voice.last_rx_ns > 80_000_000, timeout_s=15
            )
        except TimeoutError:
            sample.error = "timeout"
        fakes.deepgram.pending = None
        fakes.llm.plans.pop(tag, None)
        self._collect(sample, subject, stt, contexts_before)
        await asyncio.sleep(self.rng.uniform(0.05, 0.15))
        return sample

    @staticmethod
    def _done(subject: Subject, tag: int, contexts_before: set[str]) -> bool:
        fakes = subject.fakes
        llm = fakes.llm.turns.get(tag)
        if llm is None or llm.ended_ns is None:
            return False
        new = [cid for cid in fakes.cartesia.stamps if cid not in contexts_before]
        return bool(new) and all(
            fakes.cartesia.contexts.get(cid) is not None and fakes.cartesia.contexts[cid].done
            for cid in new
        )

    @staticmethod
    def _collect(sample: Sample, subject: Subject, stt: Any, contexts_before: set[str]) -> None:
        fakes = subject.fakes
        sample.finalize_rx, sample.final_tx = stt.finalize_rx_ns, stt.final_tx_ns
        llm = fakes.llm.turns.pop(sample.tag, None)
        if llm is not None:
            sample.llm_arrived = llm.arrived_ns
            sample.token_ns = llm.token_ns
        new = [s for cid, s in fakes.cartesia.stamps.items() if cid not in contexts_before]
        firsts = [s for s in new if s.first_text_rx_ns is not None]
        if firsts:
            first = min(firsts, key=lambda s: s.first_text_rx_ns or 0)
            sample.tts_text_rx = first.first_text_rx_ns
            sample.tts_text = first.first_text
            sample.tts_chunk_tx = first.first_chunk_tx_ns
        if sample.error:
            return
        if llm is None:
            sample.error = "no_llm_request"
        elif sample.finalize_rx is None or sample.final_tx is None:
            sample.error = "no_stt_final"
        elif sample.tts_text_rx is None or sample.tts_chunk_tx is None:
            sample.error = "no_tts"
        elif sample.tts_text.strip() != sample.clause:
            sample.error = "first_clause_mismatch"
        elif sample.clause_token_ns is None:
            sample.error = "clause_token_missing"

    async def pairs(
        self, subjects: Sequence[Subject], phase: str, count: int, latency: Latency
    ) -> list[Sample]:
        for subject in subjects:
            await subject.child.send(f"phase {phase}")
        samples: list[Sample] = []
        for index in range(count):
            order = subjects if index % 2 == 0 else list(reversed(subjects))
            plan = self.plan(latency)
            for subject in order:
                samples.append(await self.turn(subject, phase, latency, plan))
        for subject in subjects:
            await subject.child.send("phase idle")
        return samples


async def run(ctx: RunContext) -> BenchResult:
    sizes = SIZES[ctx.mode]
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    result.params = {
        "sizes": {k: getattr(sizes, k) for k in Sizes.__dataclass_fields__},
        "latencies": {
            name: {k: getattr(lat, k) for k in Latency.__dataclass_fields__}
            for name, lat in LATENCIES.items()
        },
        "question_s": QUESTION_S,
        "silence_frames": SILENCE_FRAMES,
        "tts_seconds_per_char": SECONDS_PER_CHAR,
        "pinning": "driver+fakes on core 1, subjects on core 0" if can_pin() else "none",
    }
    result.method = [
        "fakes (per subject: Discord gateway+REST+TLS voice gateway+UDP, Deepgram, OpenRouter, "
        "Cartesia) and driver in this process, pinned to core 1; the familiar and the reference "
        "client in child processes pinned to core 0; turns alternate A B / B A, one at a time",
        "t0 = the fake sent the packet with the last voiced sample (0.2 s of tone, then 5 Opus "
        "silence frames); E2E = first audible bot packet received − t0",
        "overhead = E2E − W − P; W = silence tail (last packet − t0) + endpointing; P = what the "
        "fakes measured: Deepgram Finalize→final, OpenRouter request→token completing the first "
        "clause, Cartesia first transcript→first chunk",
        f"{sizes.warmup_pairs} warm-up pairs discarded; zero profile then realistic profile",
        "the familiar: memory writer off, rate limits lifted (policy); INFO JSON logging to a file",
    ]
    driver = Driver(ctx.seed)
    listen = {
        "finalize_after_idle_ms": LATENCIES["zero"].endpointing_ms,
        "barge_in_min_voiced_ms": 600,
    }
    async with voice_rig(
        ctx, NAME, listen=listen, seconds_per_char=SECONDS_PER_CHAR, members=("alice", "bob")
    ) as (bot, ref):
        subjects = (bot, ref)
        cpu0 = cpu_seconds()
        samples: dict[str, list[Sample]] = {}
        async with StallSentinel() as driver_lag:
            driver_lag.phase("warmup")
            await driver.pairs(subjects, "warmup", sizes.warmup_pairs, LATENCIES["zero"])
            connections_before = {s.name: s.fakes.connections() for s in subjects}
            for profile, count in (
                ("zero", sizes.zero_pairs),
                ("realistic", sizes.realistic_pairs),
            ):
                latency = LATENCIES[profile]
                for subject in subjects:
                    await subject.child.send(
                        "listen " + json.dumps({"finalize_after_idle_ms": latency.endpointing_ms})
                    )
                driver_lag.phase(profile)
                samples[profile] = await driver.pairs(subjects, profile, count, latency)
            driver_lag_report = driver_lag.summaries()
        connections_after = {s.name: s.fakes.connections() for s in subjects}
        driver_cpu_s = cpu_seconds() - cpu0
        bot_report, ref_report = await asyncio.gather(bot.child.stop(60), ref.child.stop(60))
        stalls = {
            "fakes_and_driver": driver_lag.stalls,
            "familiar": bot_report.get("stalls", []),
            "reference": ref_report.get("stalls", []),
        }
        every_stall = [stall for found in stalls.values() for stall in found]
        for got in samples.values():
            for sample in got:
                end = sample.first_audible or sample.t0
                sample.stalled = overlaps((sample.t_start, end), every_stall)
        result.metrics["fakes"] = {
            "driver_loop_lag_ms": driver_lag_report,
            "driver_cpu_s": round(driver_cpu_s, 3),
            "loop_stalls_over_20_ms": {name: len(found) for name, found in stalls.items()},
            "llm_untagged_requests": {s.name: s.fakes.llm.untagged_requests for s in subjects},
            "deepgram_finalizes": {s.name: s.fakes.deepgram.finalizes for s in subjects},
            "deepgram_empty_finals": {s.name: s.fakes.deepgram.empty_finals for s in subjects},
            "connections_opened_while_measuring": {
                name: {
                    k: connections_after[name][k] - connections_before[name][k]
                    for k in connections_after[name]
                }
                for name in connections_after
            },
        }
    _analyze(result, samples, bot_report, ref_report)
    return result


# --- analysis ---------------------------------------------------------------------------

_MEASURES = (
    "e2e_ms",
    "waits_ms",
    "silence_tail_ms",
    "stt_ms",
    "ttft_ms",
    "llm_ms",
    "tts_ms",
    "providers_ms",
    "overhead_ms",
    "leg_to_finalize_ms",
    "leg_to_llm_ms",
    "leg_to_tts_ms",
    "leg_to_frame_ms",
    "token_to_clause_ms",
)


def _values(samples: Sequence[Sample], attr: str) -> list[float]:
    return [float(v) for s in samples if s.ok and (v := getattr(s, attr)) is not None]


def _describe(samples: Sequence[Sample]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for sample in samples:
        if sample.error:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    described: dict[str, Any] = {"turns": len(samples), "errors": errors}
    for attr in _MEASURES:
        described[attr] = summarize(_values(samples, attr))
    described["e2e_over_waits_and_providers"] = summarize(
        _values(samples, "e2e_over_waits_and_providers"), unit="x", digits=4
    )
    # The same turns minus those a ≥ 20 ms event-loop stall of any process overlapped
    # (on a shared machine, the tail is mostly other people's load).
    calm = [s for s in samples if not s.stalled]
    described["stalled_turns"] = len(samples) - len(calm)
    described["overhead_ms_without_stalls"] = summarize(_values(calm, "overhead_ms"))
    described["e2e_over_waits_and_providers_without_stalls"] = summarize(
        _values(calm, "e2e_over_waits_and_providers"), unit="x", digits=4
    )
    return described


def _familiar_stages(samples: Sequence[Sample], timings: list[dict[str, Any]]) -> dict[str, Any]:
    """The familiar's own VoiceTurnTimings, matched to samples by its speech_end stamp."""
    ordered = sorted(
        (t for t in timings if t.get("speech_end_ns") is not None),
        key=lambda t: t["speech_end_ns"],
    )
    stages: dict[str, list[float]] = {}

    def add(name: str, a: int | None, b: int | None) -> None:
        if a is not None and b is not None:
            stages.setdefault(name, []).append((a - b) / 1e6)

    for sample in samples:
        if not sample.ok:
            continue
        match = next(
            (t for t in ordered if sample.t0 <= t["speech_end_ns"] <= sample.t0 + 200_000_000),
            None,
        )
        if match is None:
            continue
        add("t0_to_speech_end (receive path, jitter buffer)", match["speech_end_ns"], sample.t0)
        add("final_sent_to_stt_final (SDK receive)", match["stt_final_ns"], sample.final_tx)
        add("stt_final_to_llm_request", sample.llm_arrived, match["stt_final_ns"])
        add(
            "first_token_to_first_clause (familiar)",
            match["first_clause_ns"],
            match["first_token_ns"],
        )
        add("clause_to_tts_text_received", sample.tts_text_rx, match["first_clause_ns"])
        add("chunk_sent_to_first_audio (SDK receive)", match["first_audio_ns"], sample.tts_chunk_tx)
        add(
            "first_audio_to_first_frame (playback start)",
            match["first_frame_ns"],
            match["first_audio_ns"],
        )
        add(
            "first_frame_to_audible_received (encode, UDP)",
            sample.first_audible,
            match["first_frame_ns"],
        )
    return {name: summarize(values) for name, values in stages.items()}


def _analyze(
    result: BenchResult,
    samples: dict[str, list[Sample]],
    bot_report: dict[str, Any],
    ref_report: dict[str, Any],
) -> None:
    profiles: dict[str, Any] = {}
    for profile, got in samples.items():
        per = {name: [s for s in got if s.subject == name] for name in ("familiar", "reference")}
        entry = {name: _describe(values) for name, values in per.items()}
        entry["familiar"]["inside_familiar_ms"] = _familiar_stages(
            per["familiar"], bot_report.get("timings", [])
        )
        over_f = _values(per["familiar"], "overhead_ms")
        over_r = _values(per["reference"], "overhead_ms")
        entry["overhead_familiar_vs_reference"] = bootstrap_ratio(over_f, over_r)
        entry["e2e_familiar_vs_reference"] = bootstrap_ratio(
            _values(per["familiar"], "e2e_ms"), _values(per["reference"], "e2e_ms")
        )
        for leg in ("leg_to_finalize_ms", "leg_to_llm_ms", "leg_to_tts_ms", "leg_to_frame_ms"):
            entry[f"{leg}_familiar_minus_reference"] = bootstrap_ratio(
                _values(per["familiar"], leg), _values(per["reference"], leg)
            ).get("difference")
        profiles[profile] = entry
        result.ratios[f"{profile}_overhead_familiar_vs_reference"] = entry[
            "overhead_familiar_vs_reference"
        ]
        result.ratios[f"{profile}_e2e_familiar_vs_reference"] = entry["e2e_familiar_vs_reference"]
    result.metrics["profiles"] = profiles
    result.metrics["familiar_process"] = {
        key: bot_report.get(key)
        for key in ("voice", "orchestrator", "history_writer", "rss", "cpu_s", "loop_lag_ms")
    }
    result.metrics["reference_process"] = {
        key: ref_report.get(key)
        for key in ("replies", "barge_ins", "failures", "rss", "cpu_s", "loop_lag_ms")
    }
    _targets(result, profiles)


def _tail(summary: dict[str, Any]) -> tuple[str, float | None]:
    stat = "p99" if (summary.get("n") or 0) >= RELIABLE_P99_SAMPLES else "p95"
    return stat, summary.get(stat)


def _targets(result: BenchResult, profiles: dict[str, Any]) -> None:
    for profile in ("zero", "realistic"):
        entry = profiles.get(profile)
        if entry is None:
            continue
        fam, ref = entry["familiar"], entry["reference"]
        over, rover = fam["overhead_ms"], ref["overhead_ms"]
        ratio = entry["overhead_familiar_vs_reference"]
        errors = sum(fam["errors"].values())
        stat, tail = _tail(over)
        calm, rcalm = fam["overhead_ms_without_stalls"], ref["overhead_ms_without_stalls"]
        result.targets.append(
            Target(
                f"{profile}: voice overhead p50 (familiar)",
                fmt_ms(over.get("p50")),
                "≤ 5 ms",
                over.get("p50") is not None and over["p50"] <= 5.0 and errors == 0,
                f"p95 {fmt_ms(over.get('p95'))}, p99 {fmt_ms(over.get('p99'))} (n={over.get('n')}, "
                f"errors {errors}); reference p50/p95/p99 {fmt_ms(rover.get('p50'))} / "
                f"{fmt_ms(rover.get('p95'))} / {fmt_ms(rover.get('p99'))}; familiar − reference "
                f"{fmt_ms(ratio.get('difference'))}, ×{ratio.get('ratio')} {ratio.get('ratio_ci95')}",
            )
        )
        result.targets.append(
            Target(
                f"{profile}: voice overhead {stat} (familiar)",
                fmt_ms(tail),
                "≤ 20 ms (quiet box; p99 needs n ≥ 300)",
                tail is not None and tail <= 20.0,
                f"without the {fam['stalled_turns']} turns a ≥ 20 ms loop stall overlapped: "
                f"p50/p95/p99 {fmt_ms(calm.get('p50'))} / {fmt_ms(calm.get('p95'))} / "
                f"{fmt_ms(calm.get('p99'))} (reference, {ref['stalled_turns']} stalled: "
                f"{fmt_ms(rcalm.get('p50'))} / {fmt_ms(rcalm.get('p95'))} / "
                f"{fmt_ms(rcalm.get('p99'))}); legs p50: to Finalize {fmt_ms(fam['leg_to_finalize_ms'].get('p50'))}, "
                f"final→LLM {fmt_ms(fam['leg_to_llm_ms'].get('p50'))}, "
                f"clause→TTS {fmt_ms(fam['leg_to_tts_ms'].get('p50'))}, "
                f"audio→frame {fmt_ms(fam['leg_to_frame_ms'].get('p50'))} (reference "
                f"{fmt_ms(ref['leg_to_finalize_ms'].get('p50'))}, "
                f"{fmt_ms(ref['leg_to_llm_ms'].get('p50'))}, "
                f"{fmt_ms(ref['leg_to_tts_ms'].get('p50'))}, "
                f"{fmt_ms(ref['leg_to_frame_ms'].get('p50'))})",
            )
        )
        e2e_ratio = fam["e2e_over_waits_and_providers"]
        result.targets.append(
            Target(
                f"{profile}: E2E ÷ (W + P), p50 (familiar)",
                f"{e2e_ratio.get('p50')}×",
                "≤ 1.02×" if profile == "realistic" else "",
                (e2e_ratio.get("p50") is not None and e2e_ratio["p50"] <= 1.02)
                if profile == "realistic"
                else None,
                f"E2E p50 {fmt_ms(fam['e2e_ms'].get('p50'))} = W {fmt_ms(fam['waits_ms'].get('p50'))}"
                f" + P {fmt_ms(fam['providers_ms'].get('p50'))} + overhead; reference "
                f"{ref['e2e_over_waits_and_providers'].get('p50')}×; E2E familiar ÷ reference "
                f"×{entry['e2e_familiar_vs_reference'].get('ratio')}",
            )
        )
        inside = fam.get("inside_familiar_ms", {}).get("first_token_to_first_clause (familiar)", {})
        result.targets.append(
            Target(
                f"{profile}: first token → first clause sent, p50",
                fmt_ms(inside.get("p50")),
                "",
                None,
                f"familiar's own stamps, p95 {fmt_ms(inside.get('p95'))}; fakes' view (first token "
                f"sent → clause at TTS) familiar {fmt_ms(fam['token_to_clause_ms'].get('p50'))}, "
                f"reference {fmt_ms(ref['token_to_clause_ms'].get('p50'))}",
            )
        )
        result.check(f"{profile} overhead p50 familiar/reference", ratio.get("ratio"), 5.0)
    realistic = profiles.get("realistic")
    if realistic is not None:
        result.check(
            "realistic E2E p50 familiar/reference",
            realistic["e2e_familiar_vs_reference"].get("ratio"),
            1.1,
        )
