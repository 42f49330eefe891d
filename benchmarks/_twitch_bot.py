"""Child process: the familiar with its Twitch adapter, against the driver's fake Twitch and LLM.

Built the way ``familiar run`` builds it (:func:`familiar_connect.app.open_familiar`,
``TwitchService(familiar)`` with its defaults, registered in ``subscription_checks``, and
the :class:`~familiar_connect.supervisor.Supervisor`), as
``tests/platforms/twitch/conftest.py`` does: real twitchio, tokens read from the encrypted
vault, EventSub over a loopback websocket. One benchmark choice: the memory writer is off
(background LLM work off the ingest path). The ``[twitch]`` policy is the default one
(ring of 20 ambient lines, 20 lines/s remembered, 100 pending inputs, flush every 0.5 s).
Logging is the production configuration (INFO, JSON) written to a file.

Two probes, both outside the adapter's code:

* ``service.on_chat`` (what twitchio's ``event_message`` calls) is wrapped: after the adapter
  has classified a message (:meth:`ChatFolder.ingest` returned, its counters updated) the
  wrapper records the **intake lag**: now − the message's scheduled send time;
* the feeder's orchestrator is wrapped in a proxy whose ``submit`` records the **delivery
  lag** of every benchmark line handed to the orchestrator, separately for lines remembered
  (ambient chat that survived sampling, at each flush) and lines answered (addressed chat in
  a turn, after the conversation was idle).

Diagnosis only (both slow the familiar down, so those runs' figures are not figures): with
``"profile"`` in its config the process runs :mod:`cProfile` during the phases whose name
starts with ``"profile_phases"`` (default ``sat``) and writes the stats there; with ``"stalls"`` a watchdog thread writes
the event loop thread's stack to that file whenever the loop has not run for 50 ms; with
``"tracemalloc"`` it traces Python allocations from the start and, at every ``report``, appends
the 25 source lines whose live memory grew most since the phase began to that file.

``"character_extra"`` (diagnosis) is appended to the character's TOML, e.g. ``[twitch]
history_lines_per_s = 0`` to take history writes out of an RSS measurement.

Commands (besides ``stop``): ``phase <name>`` resets the probes and answers the counters;
``count`` answers the adapter's intake count and what it holds; ``report`` answers the
probes' summaries and the counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import os
import sys
import threading
import time
import traceback
import tracemalloc
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks._child import ChildControl, child_main
from benchmarks._harness import app_logging, bench_familiar
from benchmarks._twitch_common import LagHistogram, LoopLagProbe, sent_ns

BENCH_CHARACTER = """\
[memory_writer]
enabled = false
"""


class _SubmitProbe:
    """Stands in for the orchestrator in the feeder; stamps what reaches ``submit``."""

    def __init__(self, orchestrator: Any, feeder: Any, probes: _Probes) -> None:
        self._orchestrator = orchestrator
        self._feeder = feeder
        self._probes = probes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._orchestrator, name)

    def submit(self, event: Any, sink: Any) -> Any:
        result = self._orchestrator.submit(event, sink)
        sent = sent_ns(getattr(event, "description", "") or "")
        if sent is not None:
            self._probes.delivered(time.monotonic_ns() - sent, self._feeder.hear_all, result)
        return result


class _Probes:
    def __init__(self) -> None:
        self.intake = LagHistogram()
        self.remembered = LagHistogram()
        self.answered = LagHistogram()
        self.handled = 0
        self.results: dict[str, int] = {}

    def reset(self) -> None:
        self.intake.reset()
        self.remembered.reset()
        self.answered.reset()

    def delivered(self, lag_ns: int, answered: bool, result: str) -> None:
        (self.answered if answered else self.remembered).add(lag_ns)
        self.handled += 1
        self.results[result] = self.results.get(result, 0) + 1


class _StallWatch:
    """A thread that dumps the loop thread's stack when the loop has not run for ``limit_s``."""

    def __init__(self, path: Path, limit_s: float = 0.05) -> None:
        self.path = path
        self.limit_s = limit_s
        self.beat = time.monotonic()
        self.stalls = 0
        self.phase = "idle"
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        with self.path.open("a") as out:
            reported = 0.0
            while not self._stop.wait(0.01):
                beat = self.beat
                if time.monotonic() - beat < self.limit_s or beat == reported:
                    continue
                reported = beat
                self.stalls += 1
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "?"
                waited = time.monotonic() - beat
                out.write(f"--- stall #{self.stalls} in {self.phase} ({waited:.3f} s so far)\n")
                out.write(stack + "\n")
                out.flush()


def _write_growth(path: Path, phase: str, before: tracemalloc.Snapshot) -> None:
    after = tracemalloc.take_snapshot()
    stats = after.compare_to(before, "lineno")
    current, peak = tracemalloc.get_traced_memory()
    with path.open("a") as out:
        out.write(f"=== {phase}: traced {current / 1e6:.1f} MB (peak {peak / 1e6:.1f} MB)\n")
        for stat in stats[:25]:
            out.write(f"{stat}\n")


def _counters(service: Any, familiar: Any, probes: _Probes) -> dict[str, Any]:
    chat = service.chat
    feeder = service.feeder
    stats = chat.stats
    return {
        "t_ns": time.monotonic_ns(),
        "chat": asdict(stats),
        "ingested": stats.received - stats.own - stats.duplicates,
        "events": dict(service.events.counts) if service.events is not None else {},
        "inbox": asdict(service.inbox.stats),
        "submitted": dict(service.status.submitted),
        "handled": probes.handled,
        "handled_results": dict(probes.results),
        "pending": {
            "ambient": chat.pending_ambient,
            "addressed": chat.pending_addressed,
            "inbox": len(service.inbox),
        },
        "remember_dropped": feeder.remember_dropped if feeder is not None else 0,
        "replying": familiar.orchestrator.is_replying(service.key),
        "sends": asdict(service.sink_stats),
        "status": {
            "reconnects": service.status.reconnects,
            "welcomes": service.status.welcomes,
            "socket_closes": service.status.socket_closes,
            "state": service.status.state,
        },
        "history_writer": {
            "written": familiar.history_writer.written,
            "dropped": familiar.history_writer.dropped,
            "pending": familiar.history_writer.pending,
        },
        "orchestrator": {
            name: getattr(familiar.orchestrator.stats, name)
            for name in type(familiar.orchestrator.stats).__dataclass_fields__
        },
    }


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    from familiar_connect.app import open_familiar
    from familiar_connect.platforms.twitch.service import TwitchService
    from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore
    from familiar_connect.storage.vault import Vault
    from familiar_connect.supervisor import Supervisor

    if config.get("tracemalloc"):
        tracemalloc.start(1)
    with app_logging(Path(config["app_log"])):
        settings, character = bench_familiar(
            config,
            familiar_id="benchtwitch",
            character_toml=BENCH_CHARACTER + config.get("character_extra", ""),
            familiar_master_key=config["master_key"],
            twitch_client_id=config["client_id"],
            twitch_client_secret=config["client_secret"],
            twitch_channel=config["channel"],
            twitch_helix_base=config["helix_base"],
            twitch_id_base=config["id_base"],
            twitch_eventsub_ws=config["eventsub_url"],
            dashboard_enabled=False,
        )
        probes = _Probes()
        async with open_familiar(settings, character) as familiar:
            store = TwitchTokenStore(Vault(familiar.db, settings.master_keys()))
            for token in config["tokens"]:
                await store.save(StoredToken(**{**token, "scopes": tuple(token["scopes"])}))
            service = TwitchService(familiar)
            familiar.subscription_checks.append(service.is_subscribed)
            original_on_chat = service.on_chat
            intake = probes.intake

            def on_chat(message: Any) -> None:
                original_on_chat(message)
                sent = sent_ns(message.text)
                if sent is not None:
                    now_ns = time.monotonic_ns()
                    intake.add(now_ns - sent, now_ns)

            service.on_chat = on_chat  # type: ignore[method-assign]
            supervisor = Supervisor([*familiar.services, service])
            task = asyncio.get_running_loop().create_task(supervisor.run(), name="supervisor")
            try:
                async with asyncio.timeout(60):
                    await service.ready.wait()
                feeder = service.feeder
                assert feeder is not None
                feeder.orchestrator = _SubmitProbe(familiar.orchestrator, feeder, probes)  # type: ignore[assignment]
                profiler = cProfile.Profile() if config.get("profile") else None
                watch = _StallWatch(Path(config["stalls"])) if config.get("stalls") else None
                beat: asyncio.Task[None] | None = None
                if watch is not None:
                    beat = asyncio.get_running_loop().create_task(watch.heartbeat())
                    watch.start()
                traced: tracemalloc.Snapshot | None = None
                lag_phase = "idle"
                async with LoopLagProbe() as lag:
                    control.ready({"pid": os.getpid(), "channel_id": service.status.channel_id})
                    while (command := await control.command()) != "stop":
                        if command == "count":
                            control.ack(_counters(service, familiar, probes))
                            continue
                        if command == "report":
                            if traced is not None:
                                _write_growth(Path(config["tracemalloc"]), lag_phase, traced)
                            control.ack(
                                {
                                    **_counters(service, familiar, probes),
                                    "intake_lag_ms": probes.intake.summary(),
                                    "intake_lag_max_per_s_ms": probes.intake.timeline_ms(),
                                    "remembered_lag_ms": probes.remembered.summary(),
                                    "answered_lag_ms": probes.answered.summary(),
                                    "loop_lag_ms": lag.summaries(),
                                    "feeder_replaced": service.feeder is not feeder,
                                }
                            )
                            continue
                        name = command.removeprefix("phase ").strip()
                        lag_phase = name
                        if watch is not None:
                            watch.phase = name
                        if config.get("tracemalloc"):
                            traced = tracemalloc.take_snapshot()
                        probes.reset()
                        lag.phase(name)
                        if profiler is not None:
                            if name.startswith(config.get("profile_phases") or "sat"):
                                profiler.enable()
                            else:
                                profiler.disable()
                        control.ack(_counters(service, familiar, probes))
                    lag_report = lag.summaries()
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(config["profile"])
                if watch is not None and beat is not None:
                    watch.stop()
                    beat.cancel()
            finally:
                supervisor.stop()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(30):
                        await task
            return {"loop_lag_ms": lag_report, "snapshot": service.snapshot()}


if __name__ == "__main__":
    child_main(main)
