"""Child process: the familiar itself, with its Discord adapter, against the driver's fakes.

Built the way ``familiar run`` builds it (:func:`familiar_connect.app.open_familiar`,
:class:`~familiar_connect.platforms.discord.DiscordService` and the
:class:`~familiar_connect.supervisor.Supervisor`), as ``tests/platforms/discord/conftest.py``
does, with three benchmark choices, all policy rather than code:

* the memory writer is off (it is background work off the reply path that would
  consume scripted LLM replies);
* the per-user rate limit and daily budgets are lifted (a benchmark user sends
  thousands of messages);
* the per-channel outbound limiter admits 1,000 messages/s (its default, 1/s with a
  burst of 5, is a deliberate wait that would otherwise dominate a 300-turn run).

Logging is the production configuration (INFO, JSON) written to a file. The process
adds a loop-lag sentinel and collects the orchestrator's own stage stamps
(:class:`~familiar_connect.core.events.TextTurnTimings`) per phase. With
``"profile"`` in its config it also runs :mod:`cProfile` on the event-loop thread
during the ``sequential`` phase and writes the stats there (diagnosis only: the
profiler slows every call down, so those runs' timings are not figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
from pathlib import Path
from typing import Any

from benchmarks._child import ChildControl, child_main
from benchmarks._harness import (
    LoopLagSentinel,
    app_logging,
    bench_familiar,
    cpu_seconds,
    rss_kib,
    summarize,
)

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
"""

_MAX_RAW_STAMPS = 20_000


class _PhaseStats:
    """Per-phase CPU time and orchestrator stage stamps."""

    def __init__(self) -> None:
        self.name = "startup"
        self.cpu_start = cpu_seconds()
        self.cpu: dict[str, float] = {}
        self.stages: dict[str, dict[str, list[float]]] = {}
        self.received: dict[str, list[int]] = {}
        self._raw = 0

    def switch(self, name: str) -> None:
        now = cpu_seconds()
        self.cpu[self.name] = self.cpu.get(self.name, 0.0) + now - self.cpu_start
        self.cpu_start = now
        self.name = name

    def on_timings(self, timings: Any) -> None:
        received = getattr(timings, "received_ns", None)
        if received is None or not hasattr(timings, "posted_ns"):
            return
        stages = self.stages.setdefault(self.name, {})
        for stage in ("typing_sent", "first_token", "posted"):
            value = getattr(timings, f"{stage}_ns", None)
            if value is not None:
                stages.setdefault(stage, []).append((value - received) / 1e6)
        if self._raw < _MAX_RAW_STAMPS:
            self.received.setdefault(self.name, []).append(received)
            self._raw += 1

    def report(self) -> dict[str, Any]:
        self.switch(self.name)
        return {
            "cpu_s": {k: round(v, 4) for k, v in self.cpu.items()},
            "stages_ms": {
                phase: {stage: summarize(values) for stage, values in stages.items()}
                for phase, stages in self.stages.items()
            },
            "received_ns": self.received,
        }


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    from familiar_connect.app import open_familiar
    from familiar_connect.platforms.discord import DiscordService
    from familiar_connect.platforms.discord.sink import OutboundLimiter
    from familiar_connect.supervisor import Supervisor

    with app_logging(Path(config["app_log"])):
        settings, character = bench_familiar(
            config,
            familiar_id="benchbot",
            character_toml=BENCH_CHARACTER,
            discord_token=config["bot_token"],
            discord_api_base=config["discord_api"],
            discord_gateway_url=config["discord_gateway"],
            discord_operator_ids="",
        )
        phases = _PhaseStats()
        async with open_familiar(settings, character) as familiar:
            service = DiscordService(
                familiar,
                guild_ready_timeout_s=0.05,
                outbound=OutboundLimiter(rate_per_s=1_000.0, burst=1_000),
            )
            familiar.subscription_checks.append(service.is_subscribed)
            familiar.orchestrator.on_timings = phases.on_timings
            supervisor = Supervisor([*familiar.services, service])
            task = asyncio.get_running_loop().create_task(supervisor.run(), name="supervisor")
            try:
                async with asyncio.timeout(60):
                    await service.ready.wait()
                async with LoopLagSentinel() as lag:
                    lag.phase("idle")
                    control.ready({"pid": os.getpid()})
                    profiler = cProfile.Profile() if config.get("profile") else None
                    while (command := await control.command()) != "stop":
                        name = command.removeprefix("phase ").strip()
                        lag.phase(name)
                        phases.switch(name)
                        if profiler is not None:
                            if name == "sequential":
                                profiler.enable()
                            else:
                                profiler.disable()
                        control.ack({"phase": name})
                    if profiler is not None:
                        profiler.dump_stats(config["profile"])
                    lag_report = lag.summaries()
            finally:
                supervisor.stop()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(30):
                        await task
            stats = familiar.orchestrator.stats
            result = {
                "loop_lag_ms": lag_report,
                **phases.report(),
                "orchestrator": {
                    name: getattr(stats, name) for name in type(stats).__dataclass_fields__
                },
                "sink": {
                    "messages_posted": service.sink_stats.messages_posted,
                    "send_failures": service.sink_stats.send_failures,
                    "typing_failures": service.sink_stats.typing_failures,
                },
                "history_writer": {
                    "written": familiar.history_writer.written,
                    "dropped": familiar.history_writer.dropped,
                    "pending": familiar.history_writer.pending,
                },
                "rss": rss_kib(os.getpid()),
            }
        return result


if __name__ == "__main__":
    child_main(main)
