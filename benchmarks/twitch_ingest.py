"""(4) Twitch chat ingest: the highest chat rate the familiar sustains, against a parse-only reader.

Three processes, as in ``text_turn``. This one (pinned to core 1) runs the fakes and the
driver: one :class:`~benchmarks._twitch_fakes.BenchTwitch` per subject (the test suite's fake
Twitch: identity, Helix, EventSub websocket) and one fake OpenRouter with a realistic stream
(TTFT ~0.4 s, 50 tokens/s). Two children pinned to core 0 are the subjects: the familiar
(``benchmarks._twitch_bot``: ``open_familiar`` + ``TwitchService`` with real twitchio, as
``familiar run`` builds it) and the parse-only reference (``benchmarks._twitch_ref``: an aiohttp
websocket client on the same kind of socket that ``json.loads`` each notification and counts
it). Only one subject receives chat at a time.

**The chat.** ``channel.chat.message`` notifications as Twitch sends them (~1.2 KB), from a crowd
of 1,000 chatters: 1% @-mention the bot (each starts or joins a real turn: LLM stream, Helix chat
post, the post echoed back), 2% are ``!commands`` for other bots, the rest is ambient chat.

**Phases.**

1. **Rates**: 200, 1,000, 5,000 and 10,000 messages/s, open loop (each message carries its
   scheduled send time; a reader that falls behind is charged for the wait). Per rate one
   familiar block (60 s; ``--quick`` 10 s) and one shorter reference block (20 s; 3 s), in the
   order A B, B A, A B, B A over the rates. After each block the driver waits until the
   subject has read everything sent (bounded), then, for the familiar, one flush (0.5 s) for
   the ambient ring to be remembered or counted.
2. **Saturation**: the fake writes as fast as the socket takes them; blocks alternate
   A B A B (``--quick``: 2 s each after a 0.5 s ramp; full: 5 s, three pairs). Sampled every
   0.5 s: *throughput* = messages read per wall-clock second, and *capacity* = messages read per
   CPU-second the subject used. The ratio familiar ÷ reference is taken on capacity (a ratio of
   medians with a bootstrap interval): on a shared machine other processes take turns on core
   0, which lowers both subjects' wall-clock throughput at random but not their cost per
   message. Both are reported.

**What "handled" means.** The adapter never queues chat for the LLM: every message is classified
once on arrival (:meth:`ChatFolder.ingest`, called from twitchio's ``event_message``) and held
in bounded structures whose every eviction is counted (``platforms/twitch/chat.py``,
``inbox.py``, ``feed.py``). So a message the fake sent ends in exactly one of:

* **handled**: handed to the orchestrator (``Orchestrator.submit``) by the feeder: an ambient
  line that survived sampling (remembered in history, at a flush), or an addressed line in a
  turn (answered);
* **counted-dropped**: dropped by the flood control with a counter: ambient lines overwritten
  in the 20-line ring (``ambient_overwritten``), folded per author (``ambient_folded``) or
  sampled out by the 20 lines/s history rate (``ambient_sampled_out``); addressed lines dropped
  past 100 waiting (``addressed_dropped``), folded per author (``addressed_folded``), inside
  the chat cooldown (``chat:cooldown``), shed from or gone stale in the priority inbox
  (``shed``, ``stale``); and ``!commands`` (``commands``, ignored on purpose);
* **pending**: still held in those bounded structures at the end of a block (carried into
  the next block's accounting).

``silent = sent + pending_before − handled − counted-dropped − pending_after``, which must be 0.
Messages the subject had not even read by the end of the drain (still in socket buffers) are
reported apart as ``unread``.

**Lag.** *Intake lag* = the adapter has classified the message and counted it (the flood
control's decision point) − its scheduled send time: every message has one. *Delivery lag* =
handed to the orchestrator − scheduled send time, for remembered lines (≤ one 0.5 s flush by
design) and, informational only, for answered lines (which wait, by design, for the turn in
flight to finish). A rate is **sustained** when the fake kept to its schedule, nothing was left
unread, ``silent == 0``, intake lag p99 < 1 s and remembered-line delivery lag p99 < 1 s.

**Per block**: CPU share of a core (the subject's threads' run time from
``/proc/<pid>/task/*/schedstat`` over the send window ÷ its wall time) and CPU µs per message
(send window plus drain), RSS (``/proc/<pid>/status`` every 0.25 s) with its least-squares
slope in MB/min, the overload counters, the subject's loop lag, the largest intake lag of each
second (to show when a backlog built up), and the fake process's own CPU share (so a limit of
the sender shows). The RSS slope of a 10 s ``--quick`` block mostly shows warm-up (caches and
history filling); the 5 MB / 10 min target needs the full profile or a longer run.

Diagnosis only (they slow the familiar down): ``FAMILIAR_BENCH_PROFILE=1`` writes a cProfile of
the familiar's saturation blocks (or of the blocks whose name starts with
``FAMILIAR_BENCH_PROFILE_PHASES``, e.g. ``r200-familiar``) to
``<out>/logs/twitch_ingest-familiar.prof``;
``FAMILIAR_BENCH_STALLS=1`` writes the event-loop thread's stack whenever the familiar's loop
stalls for 50 ms to ``<out>/logs/twitch_ingest-familiar-stalls.txt``;
``FAMILIAR_BENCH_TRACEMALLOC=1`` writes, per block, the source lines whose Python memory grew
most to ``<out>/logs/twitch_ingest-familiar-growth.txt``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
    pinned,
    rss_kib,
    summarize,
)
from benchmarks._twitch_fakes import BenchLLM, BenchTwitch, ChatWorkload, FloodReport

NAME = "twitch_ingest"
TITLE = "Twitch chat ingest: sustained messages/s with bounded memory, vs a parse-only reader"

LLM_KEY = "sk-or-v1-bench-twitch-0123456789"
MASTER_KEY = "bench-twitch-master-key-0123456789"
_REPLY = "ha, good question chat, let me think about that one for a second and get back to you"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_LAG_LIMIT_MS = 1_000.0
_WINDOW_S = 0.5


@dataclass(frozen=True, slots=True)
class Profile:
    """Sizes of one mode."""

    rates: tuple[int, ...]
    block_s: float
    ref_block_s: float
    warmup_s: float
    saturation: str  # "ABAB": A is the familiar, B the reference
    saturation_s: float
    ramp_s: float
    drain_s: float
    settle_s: float
    max_behind_s: float


PROFILES: dict[str, Profile] = {
    "smoke": Profile((1_000,), 1.0, 0.5, 0.3, "AB", 0.75, 0.25, 5.0, 1.0, 2.0),
    "quick": Profile((200, 1_000, 5_000, 10_000), 10.0, 3.0, 1.0, "ABAB", 2.0, 0.5, 8.0, 2.0, 3.0),
    "full": Profile(
        (200, 1_000, 5_000, 10_000), 60.0, 20.0, 2.0, "ABABAB", 5.0, 0.5, 20.0, 3.0, 5.0
    ),
}


# --- /proc ------------------------------------------------------------------------------


def proc_cpu_s(pid: int) -> float | None:
    """CPU seconds of process ``pid``: the sum of its threads' ``schedstat`` run time (ns).

    Falls back to ``/proc/<pid>/stat`` (user + system, in clock ticks) where ``schedstat``
    is missing.
    """
    total_ns = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                total_ns += int((task / "schedstat").read_text().split()[0])
    except OSError:
        return None
    if total_ns:
        return total_ns / 1e9
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class RssSampler:
    """Samples a process's RSS every ``interval_s`` while running."""

    def __init__(self, pid: int, interval_s: float = 0.25) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (seconds, MB)
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        t0 = time.monotonic()
        while True:
            rss = rss_kib(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - t0, rss["rss_kib"] / 1024))
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rss")

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        values = [mb for _, mb in self.samples]
        if not values:
            return {"samples": 0}
        return {
            "samples": len(values),
            "start_mb": round(values[0], 2),
            "end_mb": round(values[-1], 2),
            "peak_mb": round(max(values), 2),
            "slope_mb_per_min": _slope_per_min(self.samples),
        }


def _slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var <= 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return round(cov / var * 60.0, 3)


# --- subjects ---------------------------------------------------------------------------


@dataclass
class Subject:
    """One subject: its fake Twitch and its process."""

    name: str
    fake: BenchTwitch
    child: Child

    @property
    def pid(self) -> int:
        return int(self.child.ready_info["pid"])

    @property
    def is_familiar(self) -> bool:
        return self.name == "familiar"


_DROP_COUNTERS = (
    "ambient_overwritten",
    "ambient_folded",
    "ambient_sampled_out",
    "addressed_dropped",
    "addressed_folded",
    "commands",
)


def _dropped(counters: dict[str, Any]) -> dict[str, int]:
    """Every counted drop of the flood control, by counter (cumulative)."""
    chat = counters["chat"]
    out = {name: int(chat[name]) for name in _DROP_COUNTERS}
    out["chat:cooldown"] = int(counters["events"].get("chat:cooldown", 0))
    out["inbox_shed"] = int(counters["inbox"]["shed"])
    out["inbox_stale"] = int(counters["inbox"]["stale"])
    return out


def _pending(counters: dict[str, Any]) -> int:
    return int(sum(counters["pending"].values()))


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


class Driver:
    """Runs the blocks and collects what each measured."""

    def __init__(self, profile: Profile, llm: BenchLLM) -> None:
        self.profile = profile
        self.llm = llm

    async def _drain(self, subject: Subject, before: dict[str, Any], sent: int) -> dict[str, Any]:
        """Wait until the subject has read ``sent`` messages more than ``before`` (bounded)."""
        deadline = time.monotonic() + self.profile.drain_s
        counters = await subject.child.send("count")
        while counters["ingested"] - before["ingested"] < sent and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            counters = await subject.child.send("count")
        return counters

    async def _settle(self, subject: Subject) -> None:
        """Familiar: one flush for the ambient ring, then until nothing waits (bounded)."""
        if not subject.is_familiar:
            return
        await asyncio.sleep(0.6)
        deadline = time.monotonic() + self.profile.settle_s
        while time.monotonic() < deadline:
            counters = await subject.child.send("count")
            if _pending(counters) == 0:
                return
            await asyncio.sleep(0.1)

    async def rate_block(
        self, subject: Subject, rate: int, seconds: float, phase: str
    ) -> dict[str, Any]:
        p = self.profile
        subject.fake.prepare()
        before = await subject.child.send(f"phase {phase}")
        llm_before = self.llm.requests_seen
        posts_before = len(subject.fake.chat_sent)
        rss = RssSampler(subject.pid)
        rss.start()
        cpu0, drv0, t0 = proc_cpu_s(subject.pid), cpu_seconds(), time.monotonic()
        flood = await subject.fake.flood(rate, seconds, max_behind_s=p.max_behind_s)
        cpu1, drv1, t1 = proc_cpu_s(subject.pid), cpu_seconds(), time.monotonic()
        drained = await self._drain(subject, before, flood.sent)
        cpu2 = proc_cpu_s(subject.pid)
        await self._settle(subject)
        rss_report = await rss.stop()
        report = await subject.child.send("report")
        return self._describe(
            subject,
            phase,
            flood,
            before,
            drained,
            report,
            rss_report,
            cpu=(cpu0, cpu1, cpu2),
            wall_s=t1 - t0,
            driver_cpu_s=drv1 - drv0,
            llm_requests=self.llm.requests_seen - llm_before,
            chat_posts=len(subject.fake.chat_sent) - posts_before,
        )

    async def saturation_block(self, subject: Subject, phase: str) -> dict[str, Any]:
        p = self.profile
        subject.fake.prepare()
        before = await subject.child.send(f"phase {phase}")
        rss = RssSampler(subject.pid)
        rss.start()
        stop = asyncio.Event()
        blast = asyncio.get_running_loop().create_task(subject.fake.blast(stop))
        cpu0, drv0, t0 = proc_cpu_s(subject.pid), cpu_seconds(), time.monotonic()
        try:
            await asyncio.sleep(p.ramp_s)
            points = [(await subject.child.send("count"), proc_cpu_s(subject.pid))]
            end = time.monotonic() + p.saturation_s
            while time.monotonic() < end:
                await asyncio.sleep(_WINDOW_S)
                points.append((await subject.child.send("count"), proc_cpu_s(subject.pid)))
        finally:
            stop.set()
            flood = await blast
        cpu1, drv1, t1 = proc_cpu_s(subject.pid), cpu_seconds(), time.monotonic()
        drained = await self._drain(subject, before, flood.sent)
        cpu2 = proc_cpu_s(subject.pid)
        await self._settle(subject)
        rss_report = await rss.stop()
        report = await subject.child.send("report")
        rates: list[float] = []
        per_cpu: list[float] = []
        for (a, cpu_a), (b, cpu_b) in zip(points, points[1:], strict=False):
            count = b["ingested"] - a["ingested"]
            if b["t_ns"] > a["t_ns"]:
                rates.append(count / ((b["t_ns"] - a["t_ns"]) / 1e9))
            if cpu_a is not None and cpu_b is not None and cpu_b > cpu_a:
                per_cpu.append(count / (cpu_b - cpu_a))
        first, last = points[0], points[-1]
        span_s = (last[0]["t_ns"] - first[0]["t_ns"]) / 1e9
        span_cpu = (last[1] - first[1]) if first[1] is not None and last[1] is not None else None
        read = last[0]["ingested"] - first[0]["ingested"]
        described = self._describe(
            subject,
            phase,
            flood,
            before,
            drained,
            report,
            rss_report,
            cpu=(cpu0, cpu1, cpu2),
            wall_s=t1 - t0,
            driver_cpu_s=drv1 - drv0,
            llm_requests=0,
            chat_posts=0,
        )
        described["throughput"] = {
            "windows_per_s": [round(w, 1) for w in rates],
            "windows_per_cpu_s": [round(w, 1) for w in per_cpu],
            "mean_per_s": round(read / span_s, 1) if span_s > 0 else None,
            "mean_per_cpu_s": round(read / span_cpu, 1) if span_cpu else None,
            "cpu_share": round(span_cpu / span_s, 3) if span_cpu and span_s > 0 else None,
        }
        return described

    def _describe(
        self,
        subject: Subject,
        phase: str,
        flood: FloodReport,
        before: dict[str, Any],
        drained: dict[str, Any],
        report: dict[str, Any],
        rss_report: dict[str, Any],
        *,
        cpu: tuple[float | None, float | None, float | None],
        wall_s: float,
        driver_cpu_s: float,
        llm_requests: int,
        chat_posts: int,
    ) -> dict[str, Any]:
        ingested = report["ingested"] - before["ingested"]
        cpu0, cpu1, cpu2 = cpu
        block: dict[str, Any] = {
            "subject": subject.name,
            "phase": phase,
            "flood": flood.as_dict(),
            "ingested": ingested,
            "unread": max(0, flood.sent - (drained["ingested"] - before["ingested"])),
            "intake_lag_ms": report["intake_lag_ms"],
            "intake_lag_max_per_s_ms": report.get("intake_lag_max_per_s_ms"),
            "cpu_share": _share(cpu0, cpu1, wall_s),
            "cpu_us_per_message": round((cpu2 - cpu0) * 1e6 / ingested, 2)
            if cpu0 is not None and cpu2 is not None and ingested
            else None,
            "rss": rss_report,
            "loop_lag_ms": report["loop_lag_ms"].get(phase),
            "fake_cpu_share": round(driver_cpu_s / wall_s, 3) if wall_s > 0 else None,
        }
        if not subject.is_familiar:
            block["reader_alive"] = report.get("reader_alive")
            return block
        dropped = _delta(_dropped(report), _dropped(before))
        counted = sum(dropped.values())
        handled = report["handled"] - before["handled"]
        pending_before, pending_after = _pending(before), _pending(report)
        silent = flood.sent + pending_before - handled - counted - pending_after
        block.update(
            {
                "handled": handled,
                "counted_dropped": counted,
                "dropped_by_counter": dropped,
                "pending_before": pending_before,
                "pending_after": pending_after,
                "silent": silent,
                "duplicates": report["chat"]["duplicates"] - before["chat"]["duplicates"],
                "own_echoes": report["chat"]["own"] - before["chat"]["own"],
                "handled_results": _delta(
                    report["handled_results"], before.get("handled_results", {})
                ),
                "remembered_lag_ms": report["remembered_lag_ms"],
                "answered_lag_ms": report["answered_lag_ms"],
                "turns": report["orchestrator"]["turns"] - before["orchestrator"]["turns"],
                "llm_requests": llm_requests,
                "chat_posts": chat_posts,
                "history_written": report["history_writer"]["written"]
                - before["history_writer"]["written"],
                "history_dropped": report["history_writer"]["dropped"]
                - before["history_writer"]["dropped"],
                "reconnects": report["status"]["reconnects"] - before["status"]["reconnects"],
                "feeder_replaced": report.get("feeder_replaced"),
            }
        )
        return block


def _share(cpu0: float | None, cpu1: float | None, wall_s: float) -> float | None:
    if cpu0 is None or cpu1 is None or wall_s <= 0:
        return None
    return round((cpu1 - cpu0) / wall_s, 3)


def sustained(block: dict[str, Any]) -> bool:
    """Kept to schedule, all read, nothing silent, intake (and remembered) lag p99 < 1 s."""
    flood = block["flood"]
    if flood["aborted"] or flood["sent"] < flood["planned"] or block["unread"]:
        return False
    if block.get("silent", 0) != 0:
        return False
    p99 = block["intake_lag_ms"].get("p99")
    if p99 is None or p99 >= _LAG_LIMIT_MS:
        return False
    remembered = block.get("remembered_lag_ms", {}).get("p99")
    return remembered is None or remembered < _LAG_LIMIT_MS


# --- the run ----------------------------------------------------------------------------


async def run(ctx: RunContext) -> BenchResult:
    from familiar_connect.platforms.twitch.scopes import scopes_for
    from tests.fakes.twitch import BOT, STREAMER

    profile = PROFILES[ctx.mode]
    workload = ChatWorkload(seed=ctx.seed)
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    result.params = {
        "profile": {name: getattr(profile, name) for name in Profile.__dataclass_fields__},
        "workload": {name: getattr(workload, name) for name in ChatWorkload.__dataclass_fields__},
        "pinning": "driver+fakes on core 1, subjects on core 0" if can_pin() else "none",
        "llm": {"ttft_s": 0.4, "ttft_jitter_s": 0.1, "tokens_per_s": 50.0},
    }
    result.method = [
        "fakes (one fake Twitch per subject, one fake OpenRouter) and the driver in this "
        "process, pinned to core 1; the familiar (real twitchio + TwitchService, as `familiar "
        "run` builds it) and the parse-only reference (aiohttp websocket + json.loads) in "
        "child processes pinned to core 0; only one subject receives chat at a time",
        "chat: channel.chat.message notifications (~1.2 KB) from 1,000 chatters; 1% @-mention "
        "the bot (real turns: LLM TTFT 0.4±0.1 s, 50 tokens/s, Helix post), 2% !commands",
        f"rates {', '.join(f'{r:,}' for r in profile.rates)} msg/s, open loop (lag from the "
        f"scheduled send time); familiar {profile.block_s:.0f} s and reference "
        f"{profile.ref_block_s:.0f} s per rate, order alternating A B / B A",
        f"saturation: blocks {profile.saturation} of {profile.saturation_s:.0f} s after a "
        f"{profile.ramp_s} s ramp, the fake writing as fast as the socket takes them; "
        "throughput sampled every 0.25 s, ratio of medians with a bootstrap interval",
        "handled = handed to the orchestrator (remembered or answered); counted-dropped = the "
        "adapter's flood-control counters; silent = sent + pending before − handled − counted − "
        "pending after; intake lag = classified by ChatFolder.ingest − scheduled send",
        "the familiar: default [twitch] policy, memory writer off, INFO JSON logging to a file",
    ]
    run_dir = ctx.work_dir / NAME
    logs = ctx.out_dir / "logs"
    cpu_sub = 0 if can_pin() else None
    llm_cfg = result.params["llm"]
    with pinned({1}):
        async with (
            BenchLLM(
                expected_api_key=LLM_KEY,
                reply=_REPLY,
                ttft_s=llm_cfg["ttft_s"],
                ttft_jitter_s=llm_cfg["ttft_jitter_s"],
                tokens_per_s=llm_cfg["tokens_per_s"],
                seed=ctx.seed,
            ) as llm,
            BenchTwitch(workload=workload) as fbot,
            BenchTwitch(workload=workload) as fref,
        ):
            kinds = ("chat", "follow", "sub", "resub", "gift", "cheer", "raid", "redemption")
            bot_scopes = scopes_for("bot", kinds)
            caster_scopes = scopes_for("broadcaster", kinds)
            tokens = []
            for role, user, scopes in (
                ("bot", BOT, bot_scopes),
                ("broadcaster", STREAMER, caster_scopes),
            ):
                access, refresh = fbot.issue_token(user, scopes)
                tokens.append(
                    {
                        "role": role,
                        "user_id": user.user_id,
                        "login": user.login,
                        "access_token": access,
                        "refresh_token": refresh,
                        "scopes": list(scopes),
                    }
                )
            ref_access, _ = fref.issue_token(BOT, bot_scopes)
            bot_child = await Child.spawn(
                "familiar",
                "benchmarks._twitch_bot",
                {
                    "cpu": cpu_sub,
                    "data_dir": str(run_dir / "bot-data"),
                    "app_log": str(logs / f"{NAME}-familiar-app.log"),
                    "master_key": MASTER_KEY,
                    "llm_base": llm.api_base,
                    "llm_key": LLM_KEY,
                    "client_id": fbot.client_id,
                    "client_secret": fbot.client_secret,
                    "channel": STREAMER.login,
                    "helix_base": fbot.helix_base,
                    "id_base": fbot.id_base,
                    "eventsub_url": fbot.eventsub_url,
                    "tokens": tokens,
                    "profile": str(logs / f"{NAME}-familiar.prof")
                    if os.environ.get("FAMILIAR_BENCH_PROFILE")
                    else None,
                    "profile_phases": os.environ.get("FAMILIAR_BENCH_PROFILE_PHASES", "sat"),
                    "stalls": str(logs / f"{NAME}-familiar-stalls.txt")
                    if os.environ.get("FAMILIAR_BENCH_STALLS")
                    else None,
                    "tracemalloc": str(logs / f"{NAME}-familiar-growth.txt")
                    if os.environ.get("FAMILIAR_BENCH_TRACEMALLOC")
                    else None,
                },
                log_path=logs / f"{NAME}-familiar.stderr.log",
                cwd=REPO_ROOT,
            )
            ref_child = await Child.spawn(
                "reference",
                "benchmarks._twitch_ref",
                {
                    "cpu": cpu_sub,
                    "client_id": fref.client_id,
                    "helix_base": fref.helix_base,
                    "eventsub_url": fref.eventsub_url,
                    "bot_token": ref_access,
                    "bot_id": BOT.user_id,
                    "channel_id": STREAMER.user_id,
                },
                log_path=logs / f"{NAME}-reference.stderr.log",
                cwd=REPO_ROOT,
            )
            children = (bot_child, ref_child)
            try:
                await asyncio.gather(*(child.wait_ready(90) for child in children))
                bot = Subject("familiar", fbot, bot_child)
                ref = Subject("reference", fref, ref_child)
                driver = Driver(profile, llm)
                async with LoopLagSentinel() as driver_lag:
                    driver_lag.phase("warmup")
                    for subject in (bot, ref):
                        await driver.rate_block(subject, 1_000, profile.warmup_s, "warmup")
                    rates: dict[int, dict[str, Any]] = {}
                    for index, rate in enumerate(profile.rates):
                        driver_lag.phase(f"r{rate}")
                        order = (bot, ref) if index % 2 == 0 else (ref, bot)
                        entry: dict[str, Any] = {}
                        for subject in order:
                            seconds = (
                                profile.block_s if subject.is_familiar else profile.ref_block_s
                            )
                            entry[subject.name] = await driver.rate_block(
                                subject, rate, seconds, f"r{rate}-{subject.name}"
                            )
                        rates[rate] = entry
                    driver_lag.phase("saturation")
                    saturation: list[dict[str, Any]] = []
                    for index, letter in enumerate(profile.saturation):
                        subject = bot if letter == "A" else ref
                        saturation.append(
                            await driver.saturation_block(subject, f"sat{index}-{subject.name}")
                        )
                    driver_lag_report = driver_lag.summaries()
                bot_final, ref_final = await asyncio.gather(bot_child.stop(60), ref_child.stop(60))
            finally:
                for child in children:
                    await child.kill()
            result.metrics["fakes"] = {
                "driver_loop_lag_ms": driver_lag_report,
                "llm_requests": llm.requests_seen,
                "chat_posts": len(fbot.chat_sent),
                "chat_rate_limited": fbot.chat_rate_limited,
            }
            result.metrics["familiar_final"] = bot_final
            result.metrics["reference_final"] = ref_final
    _analyze(result, profile, rates, saturation)
    return result


# --- analysis ---------------------------------------------------------------------------


def _fmt_rate(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:,.0f} msg/s"


def _fmt_count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


_COUNTER_NAMES = {
    "ambient_overwritten": "ring-overwritten",
    "ambient_folded": "folded",
    "ambient_sampled_out": "sampled-out",
    "addressed_dropped": "addressed-dropped",
    "addressed_folded": "addressed-folded",
    "commands": "commands",
    "chat:cooldown": "cooldown",
    "inbox_shed": "shed",
    "inbox_stale": "stale",
}


def _counters_note(dropped: dict[str, int]) -> str:
    parts = [f"{_COUNTER_NAMES.get(k, k)} {v:,}" for k, v in dropped.items() if v]
    return ", ".join(parts) or "none"


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f}%"


def _analyze(
    result: BenchResult,
    profile: Profile,
    rates: dict[int, dict[str, Any]],
    saturation: list[dict[str, Any]],
) -> None:
    per_rate: dict[str, Any] = {}
    highest: dict[str, int | None] = {"familiar": None, "reference": None}
    broken: dict[str, bool] = {"familiar": False, "reference": False}
    for rate in sorted(rates):
        entry = rates[rate]
        for name in ("familiar", "reference"):
            block = entry[name]
            block["sustained"] = sustained(block)
            if block["sustained"] and not broken[name]:
                highest[name] = rate
            elif not block["sustained"]:
                broken[name] = True
        fam, ref = entry["familiar"], entry["reference"]
        cpu_f, cpu_r = fam["cpu_us_per_message"], ref["cpu_us_per_message"]
        entry["cpu_per_message_familiar_over_reference"] = (
            round(cpu_f / cpu_r, 2) if cpu_f and cpu_r else None
        )
        per_rate[str(rate)] = entry
    result.metrics["rates"] = per_rate
    result.metrics["highest_sustained"] = highest
    result.metrics["saturation"] = saturation

    def windows(name: str, key: str) -> list[float]:
        return [w for b in saturation if b["subject"] == name for w in b["throughput"][key]]

    result.metrics["saturation_throughput"] = {
        name: {
            "per_s": summarize(windows(name, "windows_per_s"), unit="msg/s", digits=1),
            "per_cpu_s": summarize(windows(name, "windows_per_cpu_s"), unit="msg/cpu-s", digits=1),
        }
        for name in ("familiar", "reference")
    }
    ratio = bootstrap_ratio(
        windows("familiar", "windows_per_cpu_s"), windows("reference", "windows_per_cpu_s")
    )
    result.ratios["saturation_capacity_per_cpu_s_familiar_over_reference"] = ratio
    result.ratios["saturation_throughput_per_s_familiar_over_reference"] = bootstrap_ratio(
        windows("familiar", "windows_per_s"), windows("reference", "windows_per_s")
    )
    for rate, entry in per_rate.items():
        result.ratios[f"cpu_per_message_r{rate}_familiar_over_reference"] = entry[
            "cpu_per_message_familiar_over_reference"
        ]
    _targets(result, profile, per_rate, highest, saturation, ratio)


def _targets(
    result: BenchResult,
    profile: Profile,
    per_rate: dict[str, Any],
    highest: dict[str, int | None],
    saturation: list[dict[str, Any]],
    ratio: dict[str, Any],
) -> None:
    targets = result.targets
    rates = sorted(int(r) for r in per_rate)
    silent_total = 0
    for rate in rates:
        entry = per_rate[str(rate)]
        fam, ref = entry["familiar"], entry["reference"]
        silent_total += abs(fam["silent"])
        lag = fam["intake_lag_ms"]
        rem = fam["remembered_lag_ms"]
        rss = fam["rss"]
        slope = rss.get("slope_mb_per_min")
        targets.append(
            Target(
                f"{rate:,}/s: intake lag p50 / p99",
                f"{_ms(lag.get('p50'))} / {_ms(lag.get('p99'))}",
                "p99 < 1 s, 0 silent",
                fam["sustained"],
                f"sent {fam['flood']['sent']:,} = handled {fam['handled']:,} + counted-dropped "
                f"{fam['counted_dropped']:,} + pending {fam['pending_after'] - fam['pending_before']:+} "
                f"+ silent {fam['silent']} (unread {fam['unread']}); remembered lag p99 "
                f"{_ms(rem.get('p99'))}; parse-only intake p99 {_ms(ref['intake_lag_ms'].get('p99'))}",
            )
        )
        targets.append(
            Target(
                f"{rate:,}/s: CPU share, RSS slope",
                f"{_pct(fam['cpu_share'])}, {'n/a' if slope is None else f'{slope:+.1f}'} MB/min",
                "",
                None,
                f"{fam['cpu_us_per_message']} µs/msg vs parse-only {ref['cpu_us_per_message']} "
                f"(×{entry['cpu_per_message_familiar_over_reference']}); RSS {rss.get('end_mb')} MB; "
                f"counters: {_counters_note(fam['dropped_by_counter'])}",
            )
        )
    best = highest["familiar"]
    targets.append(
        Target(
            "highest sustained rate (familiar)",
            _fmt_rate(best),
            "≥ 5,000 msg/s",
            best is not None and best >= 5_000,
            f"rates tried: {', '.join(f'{r:,}' for r in rates)}; parse-only reference: "
            f"{_fmt_rate(highest['reference'])}"
            + ("" if rates and rates[-1] >= 5_000 else " (this profile does not reach 5,000/s)"),
        )
    )
    for rate, limit in ((200, 0.05), (1_000, 0.25)):
        block = per_rate.get(str(rate), {}).get("familiar")
        if block is None:
            continue
        share = block["cpu_share"]
        targets.append(
            Target(
                f"CPU share at {rate:,} msg/s",
                _pct(share),
                f"≤ {limit * 100:.0f}% of a core",
                share is not None and share <= limit,
            )
        )
    slope_rate = 1_000 if str(1_000) in per_rate else rates[0]
    slope = per_rate[str(slope_rate)]["familiar"]["rss"].get("slope_mb_per_min")
    targets.append(
        Target(
            f"RSS slope at {slope_rate:,} msg/s",
            "n/a" if slope is None else f"{slope:+.2f} MB/min",
            "≤ 0.5 MB/min (5 MB / 10 min)",
            slope is not None and slope <= 0.5,
            f"over a {profile.block_s:.0f} s block"
            + ("; short blocks make the slope noisy" if profile.block_s < 60 else ""),
        )
    )
    sat = result.metrics["saturation_throughput"]
    raw = result.ratios["saturation_throughput_per_s_familiar_over_reference"]
    sat_silent = sum(abs(b.get("silent", 0)) for b in saturation)
    fake_share = max((b["fake_cpu_share"] or 0.0) for b in saturation) if saturation else None
    shares = {
        name: [b["throughput"]["cpu_share"] for b in saturation if b["subject"] == name]
        for name in ("familiar", "reference")
    }
    targets.append(
        Target(
            "saturation capacity familiar / parse-only (msg per CPU-s)",
            f"{ratio.get('ratio')}×",
            "≥ 0.25×",
            ratio.get("ratio") is not None and ratio["ratio"] >= 0.25,
            f"familiar p50 {_fmt_count(sat['familiar']['per_cpu_s'].get('p50'))} msg per "
            f"CPU-second, parse-only {_fmt_count(sat['reference']['per_cpu_s'].get('p50'))}; 95% CI "
            f"{ratio.get('ratio_ci95')}",
        )
    )
    targets.append(
        Target(
            "saturation throughput (wall clock)",
            f"{_fmt_rate(sat['familiar']['per_s'].get('p50'))}",
            "",
            None,
            f"parse-only {_fmt_rate(sat['reference']['per_s'].get('p50'))} (×{raw.get('ratio')}); "
            f"CPU share of core 0 familiar {shares['familiar']}, parse-only "
            f"{shares['reference']} (below 1.0: the core was shared or the reader waited); "
            f"silent drops under saturation {sat_silent}; fake process CPU up to "
            f"{_pct(fake_share)}",
        )
    )
    inverse = (1.0 / ratio["ratio"]) if ratio.get("ratio") else None
    result.check("saturation capacity parse-only / familiar (per CPU-s)", inverse, 8.0)
    result.check("silent drops (all blocks; a count, not a ratio)", silent_total + sat_silent, 0.5)
    cpu_ratio = per_rate.get(str(1_000), per_rate[str(rates[0])])[
        "cpu_per_message_familiar_over_reference"
    ]
    result.check("CPU per message familiar / parse-only", cpu_ratio, 20.0)
