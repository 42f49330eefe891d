"""(3) Text turn overhead: fake gateway MESSAGE_CREATE → typing POST and → reply POST.

Three processes. This one (pinned to core 1) runs the fakes and the driver: an
instrumented fake OpenRouter shared by both subjects and one instrumented fake Discord
per subject. Two children pinned to core 0 are the subjects: the familiar
(``benchmarks._text_bot``: ``open_familiar`` + the Discord adapter, as ``familiar run``
builds it) and the reference client (``benchmarks._text_ref``: straight-line
discord.py + httpx, no app logic). Only one subject has a turn in flight at a time in
the sequential phase, and the concurrency blocks alternate A B B A, so both see the
same machine noise.

Per turn, on the fakes' clock (``monotonic_ns``, system-wide):

* ``typing_ms`` = typing POST fully received − MESSAGE_CREATE handed to the gateway;
* ``e2e_ms`` = reply POST fully received − MESSAGE_CREATE handed to the gateway;
* ``llm_ms`` = what the fake LLM measured: request fully received → response finished;
* ``overhead_ms`` = ``e2e_ms − llm_ms`` (everything not spent inside the provider:
  gateway, discord.py, the app, the HTTP client, the REST POST).

Phases:

1. **sequential**: one turn at a time, subjects alternating A B / B A, zero injected
   LLM latency (pure overhead);
2. **concurrency**: N ∈ {1, 10, 50, 200} channels, closed loop with exponential think
   times, realistic LLM (first token after ~TTFT ± jitter, paced tokens/s), plus one
   extra channel whose LLM stream stalls for the whole block (isolation); blocks A B B A
   per N, then one more block of the familiar without the stalled channel (the
   isolation reference); N=1 blocks last three times as long (one channel makes few
   turns). Tail ratios use p99 when both sides have ≥ 300 samples,
   otherwise p95 (and say which).

Not attached to the familiar here: the operator dashboard (``familiar run`` starts it;
the ``startup`` benchmark runs the real command). ``FAMILIAR_BENCH_PROFILE=1`` makes the
familiar's process write a :mod:`cProfile` of the sequential phase to
``<out>/logs/text_turn-familiar.prof`` (diagnosis only; it slows the familiar down).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks._child import Child
from benchmarks._harness import (
    REPO_ROOT,
    BenchResult,
    LoopLagSentinel,
    RunContext,
    Target,
    bootstrap_ratio,
    can_pin,
    cpu_seconds,
    fmt_ms,
    pinned,
    summarize,
)
from benchmarks._text_fakes import (
    FIRST_BENCH_CHANNEL,
    BenchDiscord,
    BenchLLM,
    LLMPlan,
    LLMTiming,
    RestStamp,
    bench_world,
)

NAME = "text_turn"
TITLE = "text turn overhead (Discord text, vs a reference client)"

BOT_TOKEN = "MTAxMDEwMTAxMDEwMTAxMDEw.benchT.bench-bot-token-000000000000"  # noqa: S105 - a fake's token
LLM_KEY = "sk-or-v1-bench-text-turn-0123456789"
_AUTHORS = ("alice", "bob")
_PROMPTS = (
    "hey, what do you think about the weather today?",
    "can you remind me what we talked about yesterday evening?",
    "tell me something nice about cats and gardens",
    "how was your day, and what are you reading at the moment?",
)
_REPLY = (
    "the quiet garden sleeps while a small cat watches the moon over old stone walls "
    "and the wind carries a song from the river toward the hills where lanterns glow"
)


@dataclass(frozen=True, slots=True)
class Profile:
    """Sizes of one mode."""

    warmup: int
    pairs: int
    seq_tokens: int
    levels: tuple[int, ...]
    block_s: float
    blocks: str  # "ABBA": A is the familiar, B the reference
    ttft_s: float
    ttft_jitter_s: float
    tokens_per_s: float
    tokens: int
    think_s: float
    turn_timeout_s: float


PROFILES: dict[str, Profile] = {
    "smoke": Profile(3, 8, 20, (2,), 1.5, "AB", 0.05, 0.01, 200.0, 10, 0.1, 20.0),
    "quick": Profile(20, 300, 40, (1, 10, 50, 200), 4.0, "ABBA", 0.3, 0.1, 50.0, 40, 0.5, 30.0),
    "full": Profile(20, 1000, 40, (1, 10, 50, 200), 10.0, "ABBA", 0.5, 0.15, 50.0, 150, 1.0, 60.0),
}


@dataclass
class Sample:
    """One turn as the fakes saw it."""

    system: str
    phase: str
    channel: int
    t_tx_ns: int
    t_sent_ns: int
    typing: RestStamp | None
    reply: RestStamp | None
    llm: LLMTiming | None
    tokens: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def typing_ms(self) -> float | None:
        return None if self.typing is None else (self.typing.t_ns - self.t_tx_ns) / 1e6

    @property
    def llm_ms(self) -> float | None:
        return None if self.llm is None else self.llm.duration_ms

    @property
    def e2e_ms(self) -> float | None:
        return None if self.reply is None else (self.reply.t_ns - self.t_tx_ns) / 1e6

    @property
    def overhead_ms(self) -> float | None:
        e2e = self.e2e_ms
        return None if e2e is None or self.llm is None else e2e - self.llm.duration_ms


@dataclass
class Subject:
    """One subject under test: its fake Discord and its process."""

    name: str
    fake: BenchDiscord
    child: Child


class Driver:
    """Sends turns and collects samples."""

    def __init__(self, llm: BenchLLM, profile: Profile, seed: int) -> None:
        self.llm = llm
        self.profile = profile
        self.rng = random.Random(seed)  # noqa: S311 - workload shape, not security
        self._tags = itertools.count(1)

    def plan(self, *, realistic: bool) -> tuple[LLMPlan, int]:
        p = self.profile
        count = p.tokens if realistic else p.seq_tokens
        words = _REPLY.split(" ")
        text = " ".join(words[i % len(words)] for i in range(count))
        if not realistic:
            return LLMPlan(text), count
        ttft = max(0.0, self.rng.gauss(p.ttft_s, p.ttft_jitter_s))
        return LLMPlan(text, ttft_s=ttft, tokens_per_s=p.tokens_per_s), count

    async def turn(
        self,
        subject: Subject,
        channel: int,
        plan: LLMPlan,
        tokens: int,
        phase: str,
        *,
        timeout_s: float,
    ) -> Sample:
        tag = next(self._tags)
        self.llm.plans[tag] = plan
        waiter = subject.fake.expect_turn(channel)
        text = f"[bt{tag}] {self.rng.choice(_PROMPTS)}"
        author = _AUTHORS[tag % len(_AUTHORS)]
        t_tx = time.monotonic_ns()
        await subject.fake.user_says(text, author=author, channel_id=channel, mentions_bot=True)
        t_sent = time.monotonic_ns()
        error = ""
        reply: RestStamp | None = None
        try:
            async with asyncio.timeout(timeout_s):
                reply = await waiter.reply
        except TimeoutError:
            error = "timeout"
        typing = (
            waiter.typing.result()
            if waiter.typing.done() and not waiter.typing.cancelled()
            else None
        )
        subject.fake.forget_turn(channel)
        self.llm.plans.pop(tag, None)
        timing = self.llm.timings.pop(tag, None)
        if not error:
            if reply is not None and reply.status >= 300:
                error = f"reply_status_{reply.status}"
            elif timing is None:
                error = "reply_without_llm_call"  # e.g. a notice after a provider error
        return Sample(
            subject.name, phase, channel, t_tx, t_sent, typing, reply, timing, tokens, error
        )

    async def sequential(self, subjects: Sequence[Subject], phase: str, pairs: int) -> list[Sample]:
        for subject in subjects:
            await subject.child.send(f"phase {phase}")
        samples: list[Sample] = []
        channel = FIRST_BENCH_CHANNEL + 1
        for index in range(pairs):
            order = subjects if index % 2 == 0 else list(reversed(subjects))
            for subject in order:
                plan, tokens = self.plan(realistic=False)
                samples.append(await self.turn(subject, channel, plan, tokens, phase, timeout_s=10))
        for subject in subjects:
            await subject.child.send("phase idle")
        return samples

    async def block(
        self, subject: Subject, channels: int, phase: str, *, stalled: bool
    ) -> tuple[list[Sample], Sample | None]:
        p = self.profile
        await subject.child.send(f"phase {phase}")
        # One channel yields few turns per block: give it three blocks' time.
        deadline = time.monotonic() + p.block_s * (3 if channels == 1 else 1)
        samples: list[Sample] = []
        stall: list[Sample] = []

        async def channel_loop(channel: int) -> None:
            await asyncio.sleep(self.rng.uniform(0, p.think_s))
            for _ in range(10_000):
                if time.monotonic() >= deadline:
                    return
                plan, tokens = self.plan(realistic=True)
                samples.append(
                    await self.turn(
                        subject, channel, plan, tokens, phase, timeout_s=p.turn_timeout_s
                    )
                )
                await asyncio.sleep(self.rng.expovariate(1.0 / p.think_s))

        async def stall_turn() -> None:
            plan, tokens = self.plan(realistic=True)
            stall_s = p.block_s * (3 if channels == 1 else 1) + 1.0
            stalled_plan = LLMPlan(plan.text, stall_s=stall_s)
            stall.append(
                await self.turn(
                    subject,
                    FIRST_BENCH_CHANNEL,
                    stalled_plan,
                    tokens,
                    phase + ":stalled",
                    timeout_s=stall_s + p.turn_timeout_s,
                )
            )

        async with asyncio.TaskGroup() as group:
            if stalled:
                group.create_task(stall_turn())
                await asyncio.sleep(0.05)  # the stall is in flight before the others start
            for index in range(channels):
                group.create_task(channel_loop(FIRST_BENCH_CHANNEL + 1 + index))
        await asyncio.sleep(0.2)  # let trailing work (history writes) settle
        await subject.child.send("phase idle")
        return samples, (stall[0] if stall else None)


# --- analysis ---------------------------------------------------------------------------


def _values(samples: Sequence[Sample], attr: str) -> list[float]:
    out = []
    for sample in samples:
        value = getattr(sample, attr)
        if sample.ok and value is not None:
            out.append(float(value))
    return out


def _describe(samples: Sequence[Sample]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for sample in samples:
        if sample.error:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    return {
        "turns": len(samples),
        "errors": errors,
        "typing_ms": summarize(_values(samples, "typing_ms")),
        "e2e_ms": summarize(_values(samples, "e2e_ms")),
        "llm_ms": summarize(_values(samples, "llm_ms")),
        "overhead_ms": summarize(_values(samples, "overhead_ms")),
    }


def _fairness(samples: Sequence[Sample]) -> float | None:
    per_channel: dict[int, list[float]] = {}
    for sample in samples:
        if sample.ok and sample.overhead_ms is not None:
            per_channel.setdefault(sample.channel, []).append(sample.overhead_ms)
    medians = sorted(sorted(v)[len(v) // 2] for v in per_channel.values() if v)
    if len(medians) < 2 or medians[len(medians) // 2] <= 0:
        return None
    return round(medians[-1] / medians[len(medians) // 2], 2)


def _tail_ratio(subject: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Tail ratio of two overhead summaries: p99 when both have ≥ 300 samples, else p95."""
    reliable = subject.get("p99_reliable") and reference.get("p99_reliable")
    stat = "p99" if reliable else "p95"
    a, b = subject.get(stat), reference.get(stat)
    a50, b50 = subject.get("p50"), reference.get("p50")
    return {
        "stat": stat,
        "ratio": round(a / b, 2) if a and b else None,
        "p50_ratio": round(a50 / b50, 2) if a50 and b50 else None,
    }


def _ingress(samples: Sequence[Sample], received_ns: Sequence[int]) -> list[float]:
    """Gateway ingress per sequential turn: MESSAGE_CREATE handed over → app received it."""
    stamps = sorted(received_ns)
    out: list[float] = []
    position = 0
    for sample in sorted(samples, key=lambda s: s.t_tx_ns):
        while position < len(stamps) and stamps[position] < sample.t_tx_ns:
            position += 1
        if position < len(stamps) and (
            sample.reply is None or stamps[position] <= sample.reply.t_ns
        ):
            out.append((stamps[position] - sample.t_tx_ns) / 1e6)
            position += 1
    return out


async def run(ctx: RunContext) -> BenchResult:
    profile = PROFILES[ctx.mode]
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    result.params = {
        "profile": _profile_dict(profile),
        "pinning": "driver+fakes on core 1, subjects on core 0" if can_pin() else "none",
    }
    result.method = [
        "fakes (Discord gateway+REST per subject, one OpenRouter) and driver in this process, "
        "pinned to core 1; the familiar and the reference client in child processes pinned "
        "to core 0",
        "overhead = reply POST received − MESSAGE_CREATE handed to the gateway − the LLM time "
        "the fake measured (request received → response finished)",
        "sequential: zero injected LLM latency, subjects alternating A B / B A per pair; "
        f"{profile.warmup} warm-up pairs discarded",
        "concurrency: closed-loop channels with exponential think time, TTFT "
        f"{profile.ttft_s * 1000:.0f}±{profile.ttft_jitter_s * 1000:.0f} ms, "
        f"{profile.tokens_per_s:.0f} tokens/s, {profile.tokens} tokens; one extra channel's "
        f"stream stalls {profile.block_s + 1:.1f} s; blocks {profile.blocks} of "
        f"{profile.block_s:.0f} s per N, then one familiar block without the stall",
        "the familiar: memory writer off, per-user rate limit and budgets lifted, outbound "
        "per-channel limiter 1000/s (policy waits, not code); INFO JSON logging to a file",
    ]
    run_dir = ctx.work_dir / NAME
    logs = ctx.out_dir / "logs"
    cpu_sub = 0 if can_pin() else None
    with pinned({1}):
        async with (
            BenchLLM(expected_api_key=LLM_KEY) as llm,
            BenchDiscord(world=bench_world(max(profile.levels) + 2), bot_token=BOT_TOKEN) as fbot,
            BenchDiscord(world=bench_world(max(profile.levels) + 2), bot_token=BOT_TOKEN) as fref,
        ):
            base = {"llm_base": llm.api_base, "llm_key": LLM_KEY, "bot_token": BOT_TOKEN}
            bot_child = await Child.spawn(
                "familiar",
                "benchmarks._text_bot",
                {
                    **base,
                    "cpu": cpu_sub,
                    "data_dir": str(run_dir / "bot-data"),
                    "profile": str(logs / f"{NAME}-familiar.prof")
                    if os.environ.get("FAMILIAR_BENCH_PROFILE")
                    else None,
                    "app_log": str(logs / f"{NAME}-familiar-app.log"),
                    "discord_api": fbot.api_base,
                    "discord_gateway": fbot.gateway_url,
                },
                log_path=logs / f"{NAME}-familiar.stderr.log",
                cwd=REPO_ROOT,
            )
            ref_child = await Child.spawn(
                "reference",
                "benchmarks._text_ref",
                {
                    **base,
                    "cpu": cpu_sub,
                    "discord_api": fref.api_base,
                    "discord_gateway": fref.gateway_url,
                },
                log_path=logs / f"{NAME}-reference.stderr.log",
                cwd=REPO_ROOT,
            )
            children = (bot_child, ref_child)
            try:
                await asyncio.gather(*(child.wait_ready(90) for child in children))
                bot = Subject("familiar", fbot, bot_child)
                ref = Subject("reference", fref, ref_child)
                driver = Driver(llm, profile, ctx.seed)
                cpu0 = cpu_seconds()
                async with LoopLagSentinel() as driver_lag:
                    driver_lag.phase("warmup")
                    await driver.sequential((bot, ref), "warmup", profile.warmup)
                    driver_lag.phase("sequential")
                    sequential = await driver.sequential((bot, ref), "sequential", profile.pairs)
                    concurrency: dict[int, dict[str, Any]] = {}
                    for level in profile.levels:
                        driver_lag.phase(f"c{level}")
                        concurrency[level] = await _level(driver, bot, ref, level, profile)
                    driver_lag_report = driver_lag.summaries()
                driver_cpu_s = cpu_seconds() - cpu0
                bot_report, ref_report = await asyncio.gather(
                    bot_child.stop(60), ref_child.stop(60)
                )
            finally:
                for child in children:
                    await child.kill()
            result.metrics["fakes"] = {
                "driver_loop_lag_ms": driver_lag_report,
                "driver_cpu_s": round(driver_cpu_s, 3),
                "llm_untagged_requests": llm.untagged_requests,
                "unexpected_posts": {
                    "familiar": fbot.unexpected_posts,
                    "reference": fref.unexpected_posts,
                },
            }
    _analyze(result, profile, sequential, concurrency, bot_report, ref_report)
    return result


def _profile_dict(profile: Profile) -> dict[str, Any]:
    return {name: getattr(profile, name) for name in Profile.__dataclass_fields__}


async def _level(
    driver: Driver, bot: Subject, ref: Subject, level: int, profile: Profile
) -> dict[str, Any]:
    samples: dict[str, list[Sample]] = {"familiar": [], "reference": []}
    stalls: dict[str, list[Sample]] = {"familiar": [], "reference": []}
    for letter in profile.blocks:
        subject = bot if letter == "A" else ref
        got, stall = await driver.block(subject, level, f"c{level}", stalled=True)
        samples[subject.name].extend(got)
        if stall is not None:
            stalls[subject.name].append(stall)
    nostall, _ = await driver.block(bot, level, f"c{level}-nostall", stalled=False)
    return {"samples": samples, "stalls": stalls, "nostall": nostall}


def _analyze(
    result: BenchResult,
    profile: Profile,
    sequential: list[Sample],
    concurrency: dict[int, dict[str, Any]],
    bot_report: dict[str, Any],
    ref_report: dict[str, Any],
) -> None:
    seq = {name: [s for s in sequential if s.system == name] for name in ("familiar", "reference")}
    seq_metrics = {name: _describe(samples) for name, samples in seq.items()}
    ingress = _ingress(seq["familiar"], bot_report.get("received_ns", {}).get("sequential", []))
    seq_metrics["familiar"]["gateway_ingress_ms"] = summarize(ingress)
    seq_metrics["familiar"]["app_stages_ms"] = bot_report.get("stages_ms", {}).get("sequential")
    result.metrics["sequential"] = seq_metrics
    bot_over = _values(seq["familiar"], "overhead_ms")
    ref_over = _values(seq["reference"], "overhead_ms")
    bot_typing = _values(seq["familiar"], "typing_ms")
    ref_typing = _values(seq["reference"], "typing_ms")
    result.ratios["sequential_overhead_familiar_vs_reference"] = bootstrap_ratio(bot_over, ref_over)
    result.ratios["sequential_typing_familiar_vs_reference"] = bootstrap_ratio(
        bot_typing, ref_typing
    )

    levels: dict[str, Any] = {}
    base: dict[str, Any] | None = None
    for level, data in concurrency.items():
        entry: dict[str, Any] = {}
        for name in ("familiar", "reference"):
            samples = data["samples"][name]
            described = _describe(samples)
            cpu_s = (
                (bot_report if name == "familiar" else ref_report).get("cpu_s", {}).get(f"c{level}")
            )
            tokens = sum(s.tokens for s in samples if s.ok)
            described["cpu_us_per_streamed_token"] = (
                round(cpu_s * 1e6 / tokens, 1) if cpu_s and tokens else None
            )
            described["fairness_max_over_median"] = _fairness(samples)
            described["loop_lag_ms"] = (
                (bot_report if name == "familiar" else ref_report)
                .get("loop_lag_ms", {})
                .get(f"c{level}")
            )
            described["stalled_turns"] = [
                {"error": s.error, "e2e_ms": s.e2e_ms} for s in data["stalls"][name]
            ]
            entry[name] = described
        nostall = data["nostall"]
        entry["familiar_without_stall"] = _describe(nostall)
        stalled_over = entry["familiar"]["overhead_ms"]
        entry["isolation_with_over_without_stall"] = _tail_ratio(
            stalled_over, entry["familiar_without_stall"]["overhead_ms"]
        )
        entry["overhead_familiar_vs_reference"] = bootstrap_ratio(
            _values(data["samples"]["familiar"], "overhead_ms"),
            _values(data["samples"]["reference"], "overhead_ms"),
        )
        if base is None:
            base = stalled_over
        entry["familiar_scaling_vs_first_level"] = _tail_ratio(stalled_over, base)
        levels[str(level)] = entry
    result.metrics["concurrency"] = levels
    result.metrics["familiar_process"] = {
        key: bot_report.get(key)
        for key in ("orchestrator", "sink", "history_writer", "rss", "cpu_s", "loop_lag_ms")
    }
    result.metrics["reference_process"] = {
        key: ref_report.get(key) for key in ("replies", "failures", "rss", "cpu_s", "loop_lag_ms")
    }
    _targets(result, profile, seq_metrics, levels)


def _targets(
    result: BenchResult,
    profile: Profile,
    seq: dict[str, Any],
    levels: dict[str, Any],
) -> None:
    fam = seq["familiar"]
    ref = seq["reference"]
    over = fam["overhead_ms"]
    ratio = result.ratios["sequential_overhead_familiar_vs_reference"]
    diff = ratio.get("difference")
    result.targets += [
        Target(
            "text overhead p50 (sequential, familiar)",
            fmt_ms(over.get("p50")),
            "≤ 3 ms",
            over.get("p50") is not None and over["p50"] <= 3.0,
            f"reference p50 {fmt_ms(ref['overhead_ms'].get('p50'))}; familiar − reference "
            f"{fmt_ms(diff)}",
        ),
        Target(
            "text overhead p99 (sequential, familiar)",
            fmt_ms(over.get("p99")),
            "≤ 10 ms (quiet box)",
            over.get("p99") is not None and over["p99"] <= 10.0,
            f"n={over.get('n')}; reference p99 {fmt_ms(ref['overhead_ms'].get('p99'))}",
        ),
        Target(
            "typing POST p99 (sequential, familiar)",
            fmt_ms(fam["typing_ms"].get("p99")),
            "≤ 10 ms",
            fam["typing_ms"].get("p99") is not None and fam["typing_ms"]["p99"] <= 10.0,
            f"reference p99 {fmt_ms(ref['typing_ms'].get('p99'))}",
        ),
        Target(
            "overhead familiar / reference, p50",
            f"{ratio.get('ratio')}×",
            "≤ 1.5×",
            ratio.get("ratio") is not None and ratio["ratio"] <= 1.5,
            f"95% CI {ratio.get('ratio_ci95')}",
        ),
    ]
    result.check("sequential overhead ratio p50 (familiar/reference)", ratio.get("ratio"), 4.0)
    typing_ratio = result.ratios["sequential_typing_familiar_vs_reference"].get("ratio")
    result.check("sequential typing ratio p50 (familiar/reference)", typing_ratio, 4.0)
    for level, entry in levels.items():
        fam_level = entry["familiar"]
        lag = (fam_level.get("loop_lag_ms") or {}).get("p99")
        scaling = entry["familiar_scaling_vs_first_level"]
        isolation = entry["isolation_with_over_without_stall"]
        scale = scaling.get("ratio")
        stat = scaling.get("stat", "p99")
        scale_target = {"50": 2.0, "200": 3.0}.get(level)
        errors = sum(fam_level["errors"].values())
        note = (
            f"p50 {fmt_ms(fam_level['overhead_ms'].get('p50'))} (×{scaling.get('p50_ratio')} "
            f"of N={next(iter(levels))}); reference {stat} "
            f"{fmt_ms(entry['reference']['overhead_ms'].get(stat))}; errors {errors}/"
            f"{fam_level['turns']}; isolation {isolation.get('stat')} ×{isolation.get('ratio')}"
        )
        result.targets.append(
            Target(
                f"N={level}: overhead {stat}, O_{stat}(N)/O_{stat}(1)",
                f"{fmt_ms(fam_level['overhead_ms'].get(stat))}, ×{scale}",
                f"≤ {scale_target}×" if scale_target else "",
                (scale is not None and scale <= scale_target and errors == 0)
                if scale_target
                else None,
                note,
            )
        )
        if level == "50":
            result.targets.append(
                Target(
                    "N=50: familiar loop lag p99",
                    fmt_ms(lag),
                    "≤ 5 ms",
                    lag is not None and lag <= 5.0,
                )
            )
