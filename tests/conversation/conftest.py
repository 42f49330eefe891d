"""A whole familiar (real stores, real OpenRouter client) wired to a loopback fake OpenRouter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from familiar_connect.app import Familiar, open_familiar
from familiar_connect.character import load_character
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import Supervisor
from tests.fakes.openrouter import FakeOpenRouter

API_KEY = "sk-or-v1-conversation-tests-0123456789"


@dataclass
class RecordingSink:
    """A platform's side of a conversation, recording what the familiar did with it."""

    mode: str = "text"
    events: list[tuple[str, str]] = field(default_factory=list)
    posted: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    first_send: asyncio.Event = field(default_factory=asyncio.Event)

    async def begin(self) -> None:
        self.events.append(("begin", ""))

    async def send(self, piece: str) -> None:
        self.sent.append(piece)
        self.events.append(("send", piece))
        self.first_send.set()

    async def end(self, text: str) -> str:
        self.events.append(("end", text))
        self.posted.append(text)
        return text

    async def cancel(self) -> str | None:
        self.events.append(("cancel", ""))
        return "".join(self.sent) if self.mode == "text" else None

    async def notice(self, text: str) -> None:
        self.events.append(("notice", text))
        self.notices.append(text)


def write_character(familiar_dir: Path, toml: str) -> None:
    familiar_dir.mkdir(parents=True, exist_ok=True)
    (familiar_dir / "character.toml").write_text(toml)


@dataclass
class Harness:
    familiar: Familiar
    fake: FakeOpenRouter
    data_dir: Path

    @property
    def orchestrator(self) -> Any:
        return self.familiar.orchestrator

    def say(
        self,
        text: str,
        *,
        sink: RecordingSink,
        user_id: str = "1001",
        name: str = "Alice",
        channel: str = "500",
        guild: str | None = "900",
        mentioned: bool = True,
    ) -> str:
        event = TextMessage(
            key=ConversationKey(Platform.DISCORD, channel, guild_id=guild),
            author=Author(Platform.DISCORD, user_id, name),
            text=text,
            message_id=f"m{len(text)}",
            received_ns=0,
            mentions_familiar=mentioned,
        )
        return self.orchestrator.submit(event, sink)

    async def settle(self, channel: str = "500", guild: str | None = "900") -> None:
        key = ConversationKey(Platform.DISCORD, channel, guild_id=guild)
        await asyncio.wait_for(self.orchestrator.wait_idle(key), timeout=10)
        await self.familiar.history_writer.flush()


HarnessFactory = Callable[..., Any]


@pytest.fixture(name="fake_openrouter")
async def fixture_fake_openrouter() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter(expected_api_key=API_KEY) as fake:
        yield fake


@pytest.fixture(name="make_harness")
async def fixture_make_harness(
    tmp_path: Path, fake_openrouter: FakeOpenRouter
) -> AsyncIterator[HarnessFactory]:
    """Open a familiar with the given character.toml; everything is closed at teardown."""
    stack: list[tuple[Any, asyncio.Task[None], Supervisor]] = []

    async def make(toml: str = "", **settings_overrides: Any) -> Harness:
        data_dir = tmp_path / "data"
        options: dict[str, Any] = {
            "familiar_id": "testfam",
            "familiar_data_dir": data_dir,
            "openrouter_base_url": fake_openrouter.api_base,
            "openrouter_api_key": API_KEY,
            "llm_max_retries": 1,
            "llm_read_timeout_s": 5.0,
        }
        options.update(settings_overrides)
        settings = load_settings(env_file=None, **options)
        base = "[memory_writer]\nenabled = false\n" if "[memory_writer]" not in toml else ""
        write_character(settings.familiar_dir, base + toml)
        character = load_character(settings.familiar_id, settings.familiar_dir)
        context = open_familiar(settings, character)
        familiar = await context.__aenter__()
        # As if a platform had subscribed every channel: the familiar hears everything.
        familiar.subscription_checks.append(lambda _key: True)
        supervisor = Supervisor(list(familiar.services))
        task = asyncio.create_task(supervisor.run())
        for _ in range(100):
            if familiar.orchestrator.running:
                break
            await asyncio.sleep(0)
        stack.append((context, task, supervisor))
        return Harness(familiar, fake_openrouter, data_dir)

    yield make
    for context, task, supervisor in reversed(stack):
        supervisor.stop()
        await task
        await context.__aexit__(None, None, None)
