"""The whole familiar in this process, wired as ``familiar run`` wires it, against loopback fakes.

A :class:`Rig` is the real :func:`~familiar_connect.app.open_familiar`, the real
:class:`~familiar_connect.platforms.discord.DiscordService` (real discord.py
talking to :class:`~tests.fakes.discord_fake.FakeDiscord`), the real
:class:`~familiar_connect.dashboard.DashboardService` on 127.0.0.1 port 0 and the
real OpenRouter client talking to :class:`~tests.fakes.openrouter.FakeOpenRouter`,
all under one :class:`~familiar_connect.supervisor.Supervisor`, with every log line
captured as JSON (see :class:`JsonLog`). Faults are injected through the fakes only.

Extension point: when voice (Deepgram, Cartesia) and Twitch land, add their fakes
and services here (``extra_services``) and their faults to ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from familiar_connect import logs
from familiar_connect.app import Familiar, connect_adapters, open_familiar
from familiar_connect.character import load_character
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.dashboard import DashboardService
from familiar_connect.logs import NOISY_LOGGERS, OWN_LOGGER, configure_logging
from familiar_connect.memory.audit import verify_audit
from familiar_connect.platforms.discord import DiscordService
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import Service, Supervisor
from tests.dashboard.conftest import Login, login
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import GENERAL_ID, GUILD_ID
from tests.fakes.openrouter import FakeOpenRouter
from tests.reliability.figures import timeout_s

__all__ = [
    "BASE_CHARACTER",
    "DASHBOARD_TOKEN",
    "DISCORD_TOKEN",
    "LLM_KEY",
    "JsonLog",
    "Rig",
    "Snapshot",
    "captured_logging",
    "rig",
]

DISCORD_TOKEN = "rig-discord-token-0123456789abcdef"
LLM_KEY = "rig-llm-key-0123456789abcdef"
DASHBOARD_TOKEN = "rig-dashboard-token-0123456789abcdef"

BASE_CHARACTER = """
[policy]
rate_per_minute = 10000
burst = 1000

[memory_writer]
enabled = false
"""


class JsonLog:
    """Every log line the process wrote, one JSON object each."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def events(self) -> list[dict[str, Any]]:
        """Parsed lines (a line that is not JSON becomes ``{"event": "unparsed", "text": ...}``)."""
        out: list[dict[str, Any]] = []
        for line in self.stream.getvalue().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "unparsed", "text": line})
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        """Lines whose ``event`` is ``event``."""
        return [e for e in self.events() if e.get("event") == event]

    def errors(self, *, allowed: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Lines at error level or above, or carrying a traceback, except ``allowed`` events."""
        allow = set(allowed)
        return [
            e
            for e in self.events()
            if (e.get("level") in ("error", "critical") or "exception" in e)
            and e.get("event") not in allow
        ]

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@contextlib.contextmanager
def captured_logging(level: str = "DEBUG", secrets: Iterable[str] = ()) -> Any:
    """Route all logging to a :class:`JsonLog` (as ``familiar --log-format json``); restore after."""
    root = logging.getLogger()
    names = [None, OWN_LOGGER, *NOISY_LOGGERS]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(root.handlers)
    showwarning = warnings.showwarning
    structlog_config = structlog.get_config()
    current = logs._current
    sink = JsonLog()
    configure_logging(level=level, fmt="json", stream=sink.stream, secrets=list(secrets))
    # Module-level loggers cache their first configuration; a cached JSON logger would
    # outlive this block and blind later tests' structlog.testing.capture_logs().
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield sink
    finally:
        structlog.reset_defaults()
        structlog.configure(**structlog_config)
        structlog.contextvars.clear_contextvars()
        logging.captureWarnings(False)
        warnings.showwarning = showwarning
        for name, value in levels.items():
            logging.getLogger(name).setLevel(value)
        for handler in list(root.handlers):
            if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers and type(handler).__name__ != "LogCaptureHandler":
                root.addHandler(handler)
        logs._current = current


@dataclass(frozen=True)
class Snapshot:
    """What the familiar had accepted at one moment: history, notes, audit records."""

    turns: list[tuple[str, str, str]]
    notes: dict[str, str]
    audit_hashes: list[str]


@dataclass
class Rig:
    """A running familiar with Discord and the dashboard, its fakes and its log."""

    familiar: Familiar
    service: DiscordService
    dashboard: DashboardService
    supervisor: Supervisor
    task: asyncio.Task[None]
    discord: FakeDiscord
    llm: FakeOpenRouter
    log: JsonLog
    http: aiohttp.ClientSession
    _login: Login | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard.port}"

    @property
    def orchestrator(self) -> Any:
        return self.familiar.orchestrator

    def posted(self, channel_id: int = GENERAL_ID) -> list[str]:
        """Contents of every message the familiar posted in ``channel_id``."""
        return [call.json["content"] for call in self.discord.messages_sent(channel_id)]

    async def wait_posted(self, count: int, channel_id: int = GENERAL_ID) -> list[str]:
        """Wait until at least ``count`` messages were posted in ``channel_id``."""
        await self.discord.wait_for(
            lambda: len(self.posted(channel_id)) >= count, timeout_s=timeout_s(20)
        )
        return self.posted(channel_id)

    async def idle(self, channel_id: int = GENERAL_ID, guild_id: int | None = GUILD_ID) -> None:
        """Wait until the conversation has nothing queued or in flight and history is written."""
        key = ConversationKey(
            Platform.DISCORD, str(channel_id), guild_id=str(guild_id) if guild_id else None
        )
        await asyncio.sleep(0.02)
        await asyncio.wait_for(self.orchestrator.wait_idle(key), timeout=timeout_s(20))
        await self.familiar.history_writer.flush()

    async def mention(self, text: str, *, author: str = "alice", channel_id: int = GENERAL_ID):
        """A user mentions the familiar; returns the gateway payload."""
        return await self.discord.user_says(
            text, author=author, channel_id=channel_id, mentions_bot=True
        )

    async def login(self) -> Login:
        """The dashboard session (cookie and CSRF token), logged in on first use."""
        if self._login is None:
            self._login = await login(self.http, self.base_url, DASHBOARD_TOKEN)
        return self._login

    async def get(self, path: str) -> tuple[int, str]:
        """GET a dashboard path with a logged-in session."""
        creds = await self.login()
        async with self.http.get(self.base_url + path, headers=creds.headers) as response:
            return response.status, await response.text()

    async def get_json(self, path: str) -> Any:
        status, body = await self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    async def provider(self, provider_id: str) -> dict[str, Any]:
        """The dashboard's row for one provider (``llm``, ``discord_gateway``...)."""
        data = await self.get_json("/api/providers")
        return next(row for row in data["providers"] if row["provider"] == provider_id)

    async def snapshot(self) -> Snapshot:
        """History rows, note contents and audit hashes, as they are now."""
        await self.familiar.history_writer.flush()
        rows = await self.familiar.db.fetchall(
            "SELECT role, channel, content FROM turns ORDER BY id", (), what="rig.snapshot"
        )
        store = self.familiar.memory.store
        notes = {path: store.read_file(path) for path in store.glob("**/*.md")}
        hashes = [entry.hash for entry in self.familiar.memory.audit_entries]
        return Snapshot([tuple(r) for r in rows], notes, hashes)

    async def assert_nothing_lost(self, before: Snapshot) -> Snapshot:
        """Every turn, note and audit record accepted before is still there; the chain verifies."""
        after = await self.snapshot()
        assert after.turns[: len(before.turns)] == before.turns
        for path, text in before.notes.items():
            assert after.notes.get(path) == text, path
        assert after.audit_hashes[: len(before.audit_hashes)] == before.audit_hashes
        settings = self.familiar.settings
        result = verify_audit(
            settings.familiar_dir / "audit.jsonl", settings.familiar_dir / "memory"
        )
        assert result.ok, result.problems
        return after

    async def stop(self) -> None:
        self.supervisor.stop()
        await asyncio.wait_for(self.task, timeout=timeout_s(20))


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    toml: str = "",
    settings: Mapping[str, Any] | None = None,
    extra_services: Iterable[Service] = (),
    service_factories: Iterable[Callable[[Familiar], Service]] = (),
    discord: FakeDiscord | None = None,
    llm: FakeOpenRouter | None = None,
    log_level: str = "DEBUG",
) -> AsyncIterator[Rig]:
    """Start a familiar with Discord and the dashboard; stop everything on exit.

    ``service_factories`` build further adapters (Twitch, ...) from the opened familiar,
    the way ``familiar run`` does; ``extra_services`` are added as they are.
    """
    async with contextlib.AsyncExitStack() as stack:
        if discord is None:
            discord = await stack.enter_async_context(FakeDiscord(bot_token=DISCORD_TOKEN))
        if llm is None:
            llm = await stack.enter_async_context(FakeOpenRouter(expected_api_key=LLM_KEY))
        options: dict[str, Any] = {
            "familiar_id": "relfam",
            "familiar_data_dir": tmp_path / "data",
            "openrouter_base_url": llm.api_base,
            "openrouter_api_key": LLM_KEY,
            "llm_max_retries": 0,
            "discord_token": DISCORD_TOKEN,
            "discord_api_base": discord.api_base,
            "discord_gateway_url": discord.gateway_url,
            "familiar_dashboard_token": DASHBOARD_TOKEN,
            "dashboard_port": 0,
        }
        options.update(settings or {})
        loaded = load_settings(env_file=None, **options)
        loaded.familiar_dir.mkdir(parents=True, exist_ok=True)
        (loaded.familiar_dir / "character.toml").write_text(BASE_CHARACTER + toml)
        character = load_character(loaded.familiar_id, loaded.familiar_dir)
        sink = stack.enter_context(captured_logging(log_level, loaded.secret_values()))
        familiar = await stack.enter_async_context(open_familiar(loaded, character))
        service = DiscordService(familiar, guild_ready_timeout_s=0.05)
        familiar.subscription_checks.append(service.is_subscribed)
        dashboard = DashboardService(familiar, out=io.StringIO(), flush_interval_s=0.02)
        built = [make(familiar) for make in service_factories]
        services = [*familiar.services, service, dashboard, *extra_services, *built]
        connect_adapters(services, dashboard)
        supervisor = Supervisor(services)
        dashboard.supervisor = supervisor
        task = asyncio.create_task(supervisor.run(), name="rig:supervisor")
        http = await stack.enter_async_context(
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        )
        the_rig = Rig(familiar, service, dashboard, supervisor, task, discord, llm, sink, http)
        try:
            await asyncio.wait_for(service.ready.wait(), timeout=timeout_s(20))
            await asyncio.wait_for(dashboard.started.wait(), timeout=timeout_s(20))
            yield the_rig
        finally:
            if not task.done():
                supervisor.stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, timeout=timeout_s(20))
