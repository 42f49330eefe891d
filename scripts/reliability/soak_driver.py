"""Run the familiar as ``familiar run`` does, plus a terminal conversation and a resource sampler.

The familiar is :func:`familiar_connect.app.build_app` with every platform the
settings configure (Discord with its voice presence, when ``DISCORD_TOKEN`` and
the speech keys are set; Twitch, when ``TWITCH_CLIENT_ID``... are set) and the
dashboard, run by :meth:`App.run` with its SIGINT/SIGTERM handling. One extra
service, the *probe*, keeps a terminal conversation going (the same event and
:class:`~familiar_connect.chat.TerminalSink` ``familiar chat`` uses, writing
to nowhere) and prints a JSON sample on stdout every ``--sample-s`` seconds::

    {"event": "sample", "t_s": 1.5, "turns": 40, "replies": 40, "failed": 0,
     "rss_kb": 81234, "fds": 31, "tasks": 27, "threads": 5, "inbox": 0, "actors": 3,
     "history_pending": 0, "history_dropped": 0, "py_objects": 301234, "sqlite_kb": 9000,
     "malloc_used_kb": 30000, "malloc_free_kb": 2000, "db_kb": 12000,
     "twitch": {"chat": {...}, "inbox": {...}, "pending_addressed": 0, ...},
     "voice": {"joined": true, "utterances": 3, "tasks": 2, ...}}

(``twitch``/``voice`` only when those parts run) and one last sample when it is
stopped. After SIGTERM, once everything is closed, it prints
``{"event": "stopped", "pending_tasks": [...]}``: the tasks still alive after
shutdown (there should be none).

Diagnostics, for finding what grows: every sample also says where the RSS is
(``sqlite_kb``: SQLite's own allocations, its page cache included;
``malloc_used_kb``/``malloc_free_kb``: glibc's heap; ``py_objects``: objects the
garbage collector tracks; ``db_kb``: the database and its WAL on disk). With
``FAMILIAR_SOAK_TRACEMALLOC=1`` the driver also traces Python allocations
(``FAMILIAR_SOAK_TRACEMALLOC_FRAMES`` frames, default 1), takes a baseline
``FAMILIAR_SOAK_TRACE_WARMUP_S`` seconds after the start (default 120) and then,
every ``FAMILIAR_SOAK_TRACE_EVERY_S`` seconds (default 300), prints
``{"event": "growth", "t_s": ..., "top": [...], "stacks": [...], "types": [...]}``:
the source lines whose live allocations grew most since the baseline (with
more than one frame, the stacks too), and the object types whose live count
grew most (``gc.get_objects``). A report is worked out in a thread and takes
seconds (with more frames, much longer: space reports minutes apart). Tracing
slows the familiar down and inflates its RSS; use it to find a culprit, not to
measure a slope.

Used by ``tests/reliability/test_soak.py``. By hand (with real or fake services)::

    uv run python scripts/reliability/soak_driver.py --sample-s 5 --terminal-pause-s 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import gc
import io
import json
import os
import sys
import threading
import time
import tracemalloc
from dataclasses import asdict
from typing import Any

from familiar_connect.app import Familiar, PlatformFactory, build_app
from familiar_connect.character import load_character
from familiar_connect.chat import TerminalSink
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.logs import configure_logging
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import Service

_KEY = ConversationKey(Platform.TERMINAL, "terminal")
_TRACE = os.environ.get("FAMILIAR_SOAK_TRACEMALLOC") == "1"
_TOP_LINES = 25
_TOP_TYPES = 25


class _Nowhere(io.TextIOBase):
    """A text stream that keeps nothing (the soak must not grow a buffer of its own)."""

    def write(self, text: str) -> int:
        return len(text)


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _native() -> tuple[Any, Any]:
    """glibc's ``mallinfo2`` and SQLite's ``sqlite3_memory_used`` (None where unavailable)."""
    mallinfo = sqlite_used = None
    with contextlib.suppress(OSError, AttributeError):
        mallinfo = ctypes.CDLL("libc.so.6").mallinfo2
        mallinfo.restype = _MallInfo2
    with contextlib.suppress(OSError, AttributeError):
        # The same library _sqlite3 is linked against: its counters are the process's.
        sqlite_used = ctypes.CDLL("libsqlite3.so.0").sqlite3_memory_used
        sqlite_used.restype = ctypes.c_int64
    return mallinfo, sqlite_used


_MALLINFO, _SQLITE_USED = _native()


def memory_parts(familiar: Familiar) -> dict[str, int]:
    """Where the RSS is: SQLite's allocations, malloc's heap (used/free), Python objects, db size.

    RSS alone cannot tell a leak from a cache filling up or a fragmented heap; these can.
    """
    parts: dict[str, int] = {"py_objects": len(gc.get_objects())}
    if _SQLITE_USED is not None:
        parts["sqlite_kb"] = _SQLITE_USED() // 1024
    if _MALLINFO is not None:
        info = _MALLINFO()
        parts["malloc_used_kb"] = (info.uordblks + info.hblkhd) // 1024
        parts["malloc_free_kb"] = info.fordblks // 1024
    db = familiar.settings.familiar_dir / "familiar.db"
    parts["db_kb"] = sum(
        path.stat().st_size // 1024
        for path in (db, db.with_name(db.name + "-wal"))
        if path.exists()
    )
    return parts


def twitch_sample(service: Any) -> dict[str, Any] | None:
    """The Twitch adapter's counters and queue depths (read-only; None before it is built)."""
    if service is None or service.chat is None:
        return None
    snapshot = service.snapshot()
    feeder = service.feeder
    return {
        "state": snapshot["status"]["state"],
        "reconnects": snapshot["status"]["reconnects"],
        "submitted": snapshot["status"]["submitted"],
        "chat": snapshot["chat"],
        "cooldown": snapshot["events"].get("chat:cooldown", 0),
        "inbox": snapshot["inbox"],
        "sends": snapshot["sends"],
        # Queue depths: what waits in the adapter between Twitch and the orchestrator.
        "inbox_len": len(service.inbox),
        "pending_addressed": service.chat.pending_addressed,
        "pending_ambient": service.chat.pending_ambient,
        "remember_queue": len(feeder._remember) if feeder is not None else 0,
        "background_tasks": len(service._tasks),
    }


def voice_sample(discord: Any) -> dict[str, Any] | None:
    """The voice presence's counters and queue depths (None when voice is not configured)."""
    manager = getattr(discord, "voice", None)
    if manager is None:
        return None
    conn = manager._conn  # queue depths are not public; read-only here
    listener = manager.listener
    playback = conn.lane.current if conn is not None else None
    receive = asdict(manager.stats.receive)
    return {
        "joined": manager.connected,
        "joins": manager.stats.joins,
        "utterances": manager.stats.utterances,
        "barge_ins": manager.stats.barge_ins,
        "turns": receive["turns"],
        "frames_in": receive["frames_in"],
        "frames_dropped": receive["frames_dropped_overflow"] + receive["backlog_dropped"],
        "stream_failures": receive["stream_failures"],
        "streams_opened": receive["streams_opened"],
        "tasks": len(conn.tasks) if conn is not None else 0,
        "listener_tasks": len(listener._tasks) if listener is not None else 0,
        "speakers": len(listener.speakers) if listener is not None else 0,
        "playing": bool(playback is not None and playback.active),
    }


class Growth:
    """Where live memory grew since a baseline: tracemalloc by line, gc objects by type.

    Only the snapshots are taken on the event loop; grouping and comparing them (seconds of
    pure Python for a million traces) runs in a worker thread, so the familiar's heartbeats
    and voice frames keep going (a blocked loop drops the voice connection).
    """

    def __init__(self) -> None:
        self.baseline: tracemalloc.Snapshot | None = None
        self.types: collections.Counter[str] = collections.Counter()
        self._filters = (
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"),
        )

    @staticmethod
    def _type_counts(objects: list[Any]) -> collections.Counter[str]:
        return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)

    @staticmethod
    def _capture() -> tuple[tracemalloc.Snapshot, list[Any]]:
        gc.collect()
        return tracemalloc.take_snapshot(), gc.get_objects()

    async def take_baseline(self) -> None:
        snapshot, objects = self._capture()
        self.baseline = await asyncio.to_thread(snapshot.filter_traces, self._filters)
        self.types = await asyncio.to_thread(self._type_counts, objects)

    async def report(self, t_s: float) -> None:
        if self.baseline is None:
            return
        snapshot, objects = self._capture()
        rss = rss_kb()
        # Printed from the loop: the sampler prints too, and lines must not interleave.
        emit("growth", **await asyncio.to_thread(self._report, snapshot, objects, t_s, rss))

    def _report(
        self, snapshot: tracemalloc.Snapshot, objects: list[Any], t_s: float, rss: int
    ) -> dict[str, Any]:
        assert self.baseline is not None
        now = snapshot.filter_traces(self._filters)
        by_line = now.compare_to(self.baseline, "lineno")
        top = [
            {
                "where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                "size_diff_kb": round(s.size_diff / 1024, 1),
                "count_diff": s.count_diff,
                "size_kb": round(s.size / 1024, 1),
            }
            for s in by_line[:_TOP_LINES]
        ]
        stacks = [
            {
                "size_diff_kb": round(s.size_diff / 1024, 1),
                "count_diff": s.count_diff,
                "stack": [f"{f.filename}:{f.lineno}" for f in s.traceback],
            }
            for s in (
                now.compare_to(self.baseline, "traceback")[:8]
                if tracemalloc.get_traceback_limit() > 1
                else ()
            )
        ]
        types = self._type_counts(objects)
        del objects
        grown = sorted(
            ((name, types[name] - self.types.get(name, 0)) for name in types),
            key=lambda item: -item[1],
        )[:_TOP_TYPES]
        traced_kb, _ = tracemalloc.get_traced_memory()
        return {
            "t_s": round(t_s, 1),
            "rss_kb": rss,
            "traced_kb": traced_kb // 1024,
            "top": top,
            "stacks": stacks,
            "types": [{"type": name, "count_diff": diff} for name, diff in grown],
        }


class Probe:
    """The extra service: a terminal conversation and the sampler."""

    name = "soak_probe"

    def __init__(
        self,
        familiar: Familiar,
        services: dict[str, Service],
        *,
        sample_s: float,
        terminal_pause_s: float,
    ) -> None:
        self.familiar = familiar
        self.services = services
        self.sample_s = sample_s
        self.terminal_pause_s = terminal_pause_s
        self.started_ns = time.monotonic_ns()
        self.growth = Growth() if _TRACE else None

    def elapsed_s(self) -> float:
        return (time.monotonic_ns() - self.started_ns) / 1e9

    def sample(self) -> dict[str, Any]:
        orchestrator = self.familiar.orchestrator
        actors = orchestrator._actors  # queue depths are not public; read-only here
        writer = self.familiar.history_writer
        sample: dict[str, Any] = {
            "t_s": round(self.elapsed_s(), 3),
            "turns": orchestrator.stats.turns,
            "replies": orchestrator.stats.replies,
            "failed": orchestrator.stats.failed,
            "cancelled": orchestrator.stats.cancelled,
            "overflow": orchestrator.stats.inbox_overflow,
            "rss_kb": rss_kb(),
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "inbox": sum(actor.inbox.qsize() for actor in actors.values()),
            "actors": len(actors),
            "history_pending": writer.pending,
            "history_dropped": writer.dropped,
            **memory_parts(self.familiar),
        }
        twitch = twitch_sample(self.services.get("twitch"))
        if twitch is not None:
            sample["twitch"] = twitch
        voice = voice_sample(self.services.get("discord"))
        if voice is not None:
            sample["voice"] = voice
        return sample

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sampler(), name="soak:sampler")
                group.create_task(self._terminal(), name="soak:terminal")
                if self.growth is not None:
                    group.create_task(self._growth(self.growth), name="soak:growth")
        finally:
            emit("sample", final=True, **self.sample())

    async def _sampler(self) -> None:
        while True:
            emit("sample", **self.sample())
            await asyncio.sleep(self.sample_s)

    async def _growth(self, growth: Growth) -> None:
        warmup_s = float(os.environ.get("FAMILIAR_SOAK_TRACE_WARMUP_S", "120"))
        every_s = float(os.environ.get("FAMILIAR_SOAK_TRACE_EVERY_S", "300"))
        await asyncio.sleep(warmup_s)
        await growth.take_baseline()
        emit("growth_baseline", t_s=round(self.elapsed_s(), 1), rss_kb=rss_kb())
        while True:
            await asyncio.sleep(every_s)
            await growth.report(self.elapsed_s())

    async def _terminal(self) -> None:
        orchestrator = self.familiar.orchestrator
        sink = TerminalSink(_Nowhere(), name=self.familiar.character.display_name)
        author = Author(Platform.TERMINAL, "operator", "operator", is_operator=True)
        n = 0
        while True:
            n += 1
            event = TextMessage(
                key=_KEY,
                author=author,
                text=f"terminal line {n}",
                message_id=str(n),
                received_ns=time.monotonic_ns(),
            )
            orchestrator.submit(event, sink)
            await orchestrator.wait_idle(_KEY)
            await asyncio.sleep(self.terminal_pause_s)


def _kept(services: dict[str, Service], name: str, factory: PlatformFactory) -> PlatformFactory:
    """``factory``, remembering the service it builds (the probe samples its queues)."""

    def build(familiar: Familiar) -> Service:
        service = factory(familiar)
        services[name] = service
        return service

    return build


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(env_file=None)
    configure_logging(
        level=settings.log_level, fmt="json", secrets=settings.secret_values(), stream=sys.stderr
    )
    character = load_character(settings.familiar_id, settings.familiar_dir)
    app = build_app(settings, character)
    services: dict[str, Service] = {}
    for name, factory in list(app.platforms.items()):
        app.platforms[name] = _kept(services, name, factory)
    app.platforms["soak_probe"] = lambda familiar: Probe(
        familiar, services, sample_s=args.sample_s, terminal_pause_s=args.terminal_pause_s
    )
    await app.run()
    current = asyncio.current_task()
    pending = [task.get_name() for task in asyncio.all_tasks() if task is not current]
    emit("stopped", pending_tasks=pending)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample-s", type=float, default=1.0)
    parser.add_argument("--terminal-pause-s", type=float, default=0.05)
    args = parser.parse_args()
    if _TRACE:
        tracemalloc.start(int(os.environ.get("FAMILIAR_SOAK_TRACEMALLOC_FRAMES", "1")))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
