"""A whole familiar with its dashboard, wired to a loopback fake OpenRouter, plus HTTP helpers.

``dashboard_harness`` opens the real familiar (``open_familiar``) in a temporary
data directory, starts its services and a :class:`DashboardService` on
127.0.0.1 port 0 under a real :class:`Supervisor`, and drives real turns
through ``orchestrator.submit``. It is an async context manager rather than a
fixture so that test modules can open it in whichever event loop they run
(the browser tests share one loop per module).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from familiar_connect.app import Familiar, open_familiar
from familiar_connect.character import load_character
from familiar_connect.core.events import (
    Author,
    ConversationKey,
    Platform,
    TextMessage,
    Utterance,
)
from familiar_connect.dashboard import DashboardService
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import Service, Supervisor
from tests.fakes.openrouter import FakeOpenRouter

API_KEY = "sk-or-v1-dashboard-tests-0123456789abcdef"
TOKEN = "dashboard-test-token-0123456789abcdef"
CHARACTER = """
[familiar]
display_name = "Wisp"

[policy]
rate_per_minute = 10000
burst = 1000

[memory_writer]
enabled = false
"""
# Generous guard against hangs; never a performance threshold.
TIMEOUT_S = 20.0


async def wait_until(predicate: Callable[[], bool], *, step_s: float = 0.01) -> None:
    """Poll ``predicate`` until it holds; fail after :data:`TIMEOUT_S` (a hang guard)."""
    for _ in range(int(TIMEOUT_S / step_s)):
        if predicate():
            return
        await asyncio.sleep(step_s)
    raise AssertionError("condition not reached in time")


@dataclass
class RecordingSink:
    """A platform's side of a conversation, recording what the familiar did with it."""

    mode: str = "text"
    posted: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    first_send: asyncio.Event = field(default_factory=asyncio.Event)

    async def begin(self) -> None:
        # One reply at a time: what cancel() reports is this reply's pieces only.
        self.sent.clear()

    async def send(self, piece: str) -> None:
        self.sent.append(piece)
        self.first_send.set()

    async def end(self, text: str) -> str:
        self.posted.append(text)
        return text

    async def cancel(self) -> str | None:
        return "".join(self.sent) if self.mode == "text" else None

    async def notice(self, text: str) -> None:
        self.notices.append(text)


@dataclass
class Harness:
    """The running familiar, its dashboard and the fake it talks to."""

    familiar: Familiar
    dashboard: DashboardService
    supervisor: Supervisor
    fake: FakeOpenRouter
    out: io.StringIO
    sinks: dict[str, RecordingSink] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard.port}"

    @property
    def orchestrator(self) -> Any:
        return self.familiar.orchestrator

    def sink(self, channel: str, mode: str = "text") -> RecordingSink:
        return self.sinks.setdefault(channel, RecordingSink(mode=mode))

    def say(
        self,
        text: str,
        *,
        user_id: str = "1001",
        name: str = "Alice",
        channel: str = "500",
        guild: str | None = "900",
    ) -> str:
        """Submit a Discord text message that mentions the familiar."""
        event = TextMessage(
            key=ConversationKey(Platform.DISCORD, channel, guild_id=guild),
            author=Author(Platform.DISCORD, user_id, name),
            text=text,
            message_id=f"m{time.monotonic_ns()}",
            received_ns=time.monotonic_ns(),
            mentions_familiar=True,
        )
        return self.orchestrator.submit(event, self.sink(channel))

    def speak(
        self, text: str, *, user_id: str = "1002", name: str = "Bob", channel: str = "700"
    ) -> str:
        """Submit a finished voice utterance (speech ended 40 ms before the final transcript)."""
        now = time.monotonic_ns()
        event = Utterance(
            key=ConversationKey(Platform.DISCORD, channel, guild_id="900"),
            author=Author(Platform.DISCORD, user_id, name),
            text=f"Wisp, {text}",
            speech_start_ns=now - 900_000_000,
            speech_end_ns=now - 40_000_000,
            stt_final_ns=now,
        )
        return self.orchestrator.submit(event, self.sink(channel, mode="clauses"))

    async def settle(self, channel: str = "500") -> None:
        """Wait until the conversation is idle and history is written."""
        key = ConversationKey(Platform.DISCORD, channel, guild_id="900")
        await asyncio.wait_for(self.orchestrator.wait_idle(key), timeout=TIMEOUT_S)
        await self.familiar.history_writer.flush()

    async def turn(self, text: str, **kwargs: Any) -> None:
        """One complete text turn."""
        assert self.say(text, **kwargs) == "queued"
        await self.settle(kwargs.get("channel", "500"))

    async def voice_turn(self, text: str, *, channel: str = "700") -> None:
        """One complete voice turn."""
        assert self.speak(text, channel=channel) == "queued"
        await self.settle(channel)


@contextlib.asynccontextmanager
async def dashboard_harness(
    tmp_path: Path,
    *,
    toml: str = CHARACTER,
    extra_services: Iterable[Service] = (),
    expected_api_key: str = API_KEY,
    settings_overrides: Mapping[str, Any] | None = None,
    **dashboard_options: Any,
) -> AsyncIterator[Harness]:
    """Run a familiar with its dashboard; stop everything (and check it stops) on exit."""
    async with FakeOpenRouter(expected_api_key=expected_api_key) as fake:
        options: dict[str, Any] = {
            "familiar_id": "dashfam",
            "familiar_data_dir": tmp_path / "data",
            "openrouter_base_url": fake.api_base,
            "openrouter_api_key": API_KEY,
            "llm_max_retries": 0,
            "llm_read_timeout_s": 120.0,
            "familiar_dashboard_token": TOKEN,
            "dashboard_port": 0,
        }
        options.update(settings_overrides or {})
        settings = load_settings(env_file=None, **options)
        settings.familiar_dir.mkdir(parents=True, exist_ok=True)
        (settings.familiar_dir / "character.toml").write_text(toml)
        character = load_character(settings.familiar_id, settings.familiar_dir)
        async with open_familiar(settings, character) as familiar:
            out = io.StringIO()
            dashboard_options.setdefault("flush_interval_s", 0.02)
            dashboard = DashboardService(familiar, out=out, **dashboard_options)
            supervisor = Supervisor([*familiar.services, dashboard, *extra_services])
            dashboard.supervisor = supervisor
            task = asyncio.create_task(supervisor.run(), name="test:supervisor")
            try:
                await asyncio.wait_for(dashboard.started.wait(), timeout=TIMEOUT_S)
                await wait_until(lambda: familiar.orchestrator.running)
                yield Harness(familiar, dashboard, supervisor, fake, out)
            finally:
                supervisor.stop()
                await asyncio.wait_for(task, timeout=TIMEOUT_S)


# --- HTTP helpers ---------------------------------------------------------------------------


@dataclass
class Login:
    """A logged-in HTTP client's credentials."""

    cookie: str
    csrf: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie}

    @property
    def post_headers(self) -> dict[str, str]:
        return {"Cookie": self.cookie, "X-CSRF-Token": self.csrf}


async def login(http: aiohttp.ClientSession, base_url: str, token: str = TOKEN) -> Login:
    """Exchange the token for a session cookie and fetch the CSRF token, as the page does."""
    async with http.get(f"{base_url}/?token={token}", allow_redirects=False) as response:
        assert response.status == 303
        jar = SimpleCookie()
        for header in response.headers.getall("Set-Cookie"):
            jar.load(header)
    cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in jar.items())
    async with http.get(f"{base_url}/api/session", headers={"Cookie": cookie}) as response:
        assert response.status == 200
        csrf = (await response.json())["csrf"]
    return Login(cookie, csrf)


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client with no cookie jar: tests send cookies explicitly."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session
