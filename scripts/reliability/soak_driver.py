"""Run the familiar as ``familiar run`` does, plus a terminal conversation and a resource sampler.

The familiar is :func:`familiar_connect.app.build_app` with every platform the
settings configure (Discord, when ``DISCORD_TOKEN`` is set) and the dashboard,
run by :meth:`App.run` with its SIGINT/SIGTERM handling. One extra service,
the *probe*, keeps a terminal conversation going (the same event and
:class:`~familiar_connect.chat.TerminalSink` ``familiar chat`` uses, writing
to nowhere) and prints a JSON sample on stdout every ``--sample-s`` seconds::

    {"event": "sample", "t_s": 1.5, "turns": 40, "replies": 40, "failed": 0,
     "rss_kb": 81234, "fds": 31, "tasks": 27, "inbox": 0, "actors": 3,
     "history_pending": 0, "history_dropped": 0}

and one last sample when it is stopped. After SIGTERM, once everything is
closed, it prints ``{"event": "stopped", "pending_tasks": [...]}``: the tasks
still alive after shutdown (there should be none).

Used by ``tests/reliability/test_soak.py``. By hand (with real or fake services)::

    uv run python scripts/reliability/soak_driver.py --sample-s 5 --terminal-pause-s 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import sys
import time
from typing import Any

from familiar_connect.app import Familiar, build_app
from familiar_connect.character import load_character
from familiar_connect.chat import TerminalSink
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.logs import configure_logging
from familiar_connect.settings import load_settings

_KEY = ConversationKey(Platform.TERMINAL, "terminal")


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


class Probe:
    """The extra service: a terminal conversation and the sampler."""

    name = "soak_probe"

    def __init__(self, familiar: Familiar, *, sample_s: float, terminal_pause_s: float) -> None:
        self.familiar = familiar
        self.sample_s = sample_s
        self.terminal_pause_s = terminal_pause_s
        self.started_ns = time.monotonic_ns()

    def sample(self) -> dict[str, Any]:
        orchestrator = self.familiar.orchestrator
        actors = orchestrator._actors  # queue depths are not public; read-only here
        writer = self.familiar.history_writer
        return {
            "t_s": round((time.monotonic_ns() - self.started_ns) / 1e9, 3),
            "turns": orchestrator.stats.turns,
            "replies": orchestrator.stats.replies,
            "failed": orchestrator.stats.failed,
            "overflow": orchestrator.stats.inbox_overflow,
            "rss_kb": rss_kb(),
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": len(asyncio.all_tasks()),
            "inbox": sum(actor.inbox.qsize() for actor in actors.values()),
            "actors": len(actors),
            "history_pending": writer.pending,
            "history_dropped": writer.dropped,
        }

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._sampler(), name="soak:sampler")
                group.create_task(self._terminal(), name="soak:terminal")
        finally:
            emit("sample", final=True, **self.sample())

    async def _sampler(self) -> None:
        while True:
            emit("sample", **self.sample())
            await asyncio.sleep(self.sample_s)

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


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(env_file=None)
    configure_logging(
        level=settings.log_level, fmt="json", secrets=settings.secret_values(), stream=sys.stderr
    )
    character = load_character(settings.familiar_id, settings.familiar_dir)
    app = build_app(settings, character)
    app.platforms["soak_probe"] = lambda familiar: Probe(
        familiar, sample_s=args.sample_s, terminal_pause_s=args.terminal_pause_s
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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
