"""Run one familiar under load so that it can be killed with SIGKILL at any moment.

The familiar is the real one, built by :func:`familiar_connect.app.build_app` and
run by :class:`~familiar_connect.app.App` exactly as ``familiar run`` does, from
settings in the environment (the same variables as ``familiar``:
``FAMILIAR_DATA_DIR``, ``FAMILIAR_ID``, ``OPENROUTER_BASE_URL``, ...), with every
platform they configure: with ``TWITCH_CLIENT_ID``... set (and the bot's token in
the vault), the Twitch adapter hears chat over EventSub, and whatever floods it
(the crash test's fake Twitch) becomes turns and history rows beside the rest.
It also runs one extra service, the *load*: ``--conversations`` conversations
(the terminal plus Discord-keyed DMs) that each send a message, wait for the
reply and repeat, forever. Memory writes come from the model: point
``OPENROUTER_BASE_URL`` at a fake that answers with
``memory_write``/``memory_append`` tool calls (the crash test's
``LoadOpenRouter``).

Before the load starts, the driver reports the state it found on disk, as a
restarted familiar sees it, in one JSON line on stdout::

    {"event": "started", "verify_exit": 0, "verify_output": "audit log OK: ...",
     "issues": [...], "integrity": "ok", "fts": "ok", "torn_bytes": 0}

``verify_exit``/``verify_output`` come from running ``familiar memory verify``
itself (:func:`familiar_connect.cli.main`) after the store reopened (which
quarantines a torn audit tail). Then ``{"event": "load_started"}``; user
messages are ``msg <conversation> <n> <sha8>`` so a checker can tell a whole one.
With Twitch configured, ``{"event": "twitch_ready"}`` follows once the adapter
has subscribed (from then on a kill can land while it handles chat).

``--failpoint before_record|after_record`` kills the process with SIGKILL at the
first memory write after load starts, just before or just after its audit record
is appended (the temp file holds the new content; the rename has not happened):
the instants a random kill can only hit by luck.

Used by ``tests/reliability/test_crash_consistency.py``; also handy by hand::

    OPENROUTER_BASE_URL=http://127.0.0.1:8080/v1 FAMILIAR_DATA_DIR=/tmp/fam \\
        uv run python scripts/reliability/crash_driver.py --conversations 4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import signal
import sys
import time
from typing import Any

from familiar_connect import cli
from familiar_connect.app import Familiar, PlatformFactory, build_app
from familiar_connect.character import load_character
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.logs import configure_logging
from familiar_connect.memory.audit import AuditLog, verify_audit
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import Service

STARTED = "started"
_TWITCH_READY_TIMEOUT_S = 60.0


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def user_text(conversation: str, n: int) -> str:
    """A user message that says whether it is whole: ``msg <conversation> <n> <sha8>``."""
    return f"msg {conversation} {n} {sha8(f'{conversation}/{n}')}"


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


class NullSink:
    """A text ReplySink that keeps only the last reply (the load needs no output)."""

    mode = "text"

    def __init__(self) -> None:
        self.pieces: list[str] = []

    async def begin(self) -> None:
        self.pieces = []

    async def send(self, piece: str) -> None:
        self.pieces.append(piece)

    async def end(self, text: str) -> str:
        return "".join(self.pieces) or text

    async def cancel(self) -> str | None:
        return "".join(self.pieces)

    async def notice(self, text: str) -> None:
        return None


class LoadService:
    """The extra "platform": reports what it found on disk, then keeps the familiar busy."""

    name = "load"

    def __init__(
        self,
        familiar: Familiar,
        services: dict[str, Service],
        *,
        conversations: int,
        failpoint: str | None,
    ) -> None:
        self.familiar = familiar
        self.services = services
        self.conversations = conversations
        self.failpoint = failpoint

    async def run(self) -> None:
        await self._report_startup()
        if self.failpoint is not None:
            _arm_failpoint(self.failpoint)
        emit("load_started", conversations=self.conversations)
        async with asyncio.TaskGroup() as group:
            for index in range(self.conversations):
                group.create_task(self._converse(index), name=f"load:{index}")
            twitch = self.services.get("twitch")
            if twitch is not None:
                group.create_task(self._twitch_ready(twitch), name="load:twitch-ready")

    async def _twitch_ready(self, twitch: Any) -> None:
        """Say when the Twitch adapter hears chat (a hang guard; the supervisor restarts it)."""
        async with asyncio.timeout(_TWITCH_READY_TIMEOUT_S):
            await twitch.ready.wait()
        emit("twitch_ready", subscribed=list(twitch.status.subscribed))

    async def _report_startup(self) -> None:
        settings = self.familiar.settings
        familiar_dir = settings.familiar_dir
        out = io.StringIO()
        code = await asyncio.to_thread(cli.main, ["memory", "verify"], out=out)
        result = await asyncio.to_thread(
            verify_audit, familiar_dir / "audit.jsonl", familiar_dir / "memory"
        )
        db = self.familiar.db
        integrity = await db.fetchall("PRAGMA integrity_check", (), what="crash.integrity")
        fts = "ok"
        try:
            await db.execute(
                "INSERT INTO turns_fts (turns_fts) VALUES ('integrity-check')", what="crash.fts"
            )
        except Exception as exc:  # reported, not raised: the checker decides
            fts = f"{type(exc).__name__}: {exc}"
        temps = [
            str(path.relative_to(familiar_dir))
            for path in (familiar_dir / "memory").rglob(".*.tmp-*")
            if path.is_file()
        ]
        emit(
            STARTED,
            verify_exit=code,
            verify_output=out.getvalue().strip(),
            issues=[{"kind": i.kind, "path": i.rel_path} for i in result.issues],
            records=result.records_checked,
            integrity=";".join(str(row[0]) for row in integrity),
            fts=fts,
            temp_files=temps,
            torn_bytes=sum(p.stat().st_size for p in familiar_dir.glob("*.torn")),
        )

    async def _converse(self, index: int) -> None:
        orchestrator = self.familiar.orchestrator
        if index == 0:
            key = ConversationKey(Platform.TERMINAL, "terminal")
            author = Author(Platform.TERMINAL, "operator", "operator", is_operator=True)
        else:
            key = ConversationKey(Platform.DISCORD, f"{7000 + index}")
            author = Author(Platform.DISCORD, str(1000 + index), f"user{index}")
        sink = NullSink()
        n = 0
        while True:
            n += 1
            event = TextMessage(
                key=key,
                author=author,
                text=user_text(key.as_str(), n),
                message_id=f"{index}-{n}",
                received_ns=time.monotonic_ns(),
                mentions_familiar=True,
            )
            if orchestrator.submit(event, sink) != "queued":
                await asyncio.sleep(0.01)
                continue
            await orchestrator.wait_idle(key)


def _kept(services: dict[str, Service], name: str, factory: PlatformFactory) -> PlatformFactory:
    """``factory``, remembering the service it builds (the load says when Twitch is ready)."""

    def build(familiar: Familiar) -> Service:
        service = factory(familiar)
        services[name] = service
        return service

    return build


def _arm_failpoint(where: str) -> None:
    """SIGKILL ourselves at the first memory write from here on, on one side of its audit record.

    ``before_record``: the new content is durable in its temp file, the record not yet
    appended. ``after_record``: the record is appended, the temp file not yet renamed.
    """
    real_append = AuditLog.append

    def append_then_die(self: AuditLog, **kwargs: Any) -> Any:
        if where == "after_record":
            real_append(self, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    AuditLog.append = append_then_die  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--failpoint", choices=["before_record", "after_record"], default=None)
    args = parser.parse_args()
    settings = load_settings(env_file=None)
    configure_logging(
        level=settings.log_level, fmt="json", secrets=settings.secret_values(), stream=sys.stderr
    )
    character = load_character(settings.familiar_id, settings.familiar_dir)
    app = build_app(settings, character)
    services: dict[str, Service] = {}
    for name, factory in list(app.platforms.items()):
        app.platforms[name] = _kept(services, name, factory)
    app.platforms["load"] = lambda familiar: LoadService(
        familiar, services, conversations=args.conversations, failpoint=args.failpoint
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(app.run())
    emit("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
