"""The familiar's Discord adapter, end to end: real discord.py, fake Discord, fake OpenRouter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
import pytest
from discord.ext import voice_recv

from familiar_connect.app import Familiar, open_familiar
from familiar_connect.character import load_character
from familiar_connect.platforms.discord import DiscordService
from familiar_connect.settings import Settings, load_settings
from familiar_connect.supervisor import Supervisor
from tests.conversation.conftest import write_character
from tests.fakes.certs import TlsCert, make_cert
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.fakes.discord_world import VOICE_ID
from tests.fakes.openrouter import FakeOpenRouter
from tests.platforms.discord.test_voice_kit import running_client

BOT_TOKEN = "MTAxMDEwMTAxMDEwMTAxMDEw.fakeTk.fake-bot-token-for-tests-0000"
LLM_KEY = "sk-or-v1-discord-e2e-0123456789"


@dataclass
class DiscordHarness:
    familiar: Familiar
    service: DiscordService
    discord: FakeDiscord
    llm: FakeOpenRouter
    supervisor: Supervisor
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.supervisor.stop()
        await asyncio.wait_for(self.task, timeout=10)

    async def idle(self, channel_id: int = 500, guild_id: int | None = 900) -> None:
        """Wait until the conversation in ``channel_id`` has nothing queued or in flight."""
        from familiar_connect.core.events import ConversationKey, Platform

        key = ConversationKey(
            Platform.DISCORD, str(channel_id), guild_id=str(guild_id) if guild_id else None
        )
        await asyncio.sleep(0.05)
        await asyncio.wait_for(self.familiar.orchestrator.wait_idle(key), timeout=10)
        await self.familiar.history_writer.flush()


HarnessFactory = Callable[..., Any]


@pytest.fixture(name="fake_discord")
async def fixture_fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(bot_token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture(name="fake_llm")
async def fixture_fake_llm() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter(expected_api_key=LLM_KEY) as fake:
        yield fake


def discord_settings(
    tmp_path: Path, fake_discord: FakeDiscord, fake_llm: FakeOpenRouter, **overrides: Any
) -> Settings:
    options: dict[str, Any] = {
        "familiar_id": "discordfam",
        "familiar_data_dir": tmp_path / "data",
        "openrouter_base_url": fake_llm.api_base,
        "openrouter_api_key": LLM_KEY,
        "llm_max_retries": 0,
        "discord_token": BOT_TOKEN,
        "discord_api_base": fake_discord.api_base,
        "discord_gateway_url": fake_discord.gateway_url,
        "discord_operator_ids": "",
    }
    options.update(overrides)
    return load_settings(env_file=None, **options)


@pytest.fixture(name="start_familiar")
async def fixture_start_familiar(
    tmp_path: Path, fake_discord: FakeDiscord, fake_llm: FakeOpenRouter
) -> AsyncIterator[HarnessFactory]:
    """Start a familiar with the Discord adapter; stopped (and closed) at teardown."""
    opened: list[tuple[Any, DiscordHarness]] = []

    async def start(toml: str = "", *, wait_ready: bool = True, **overrides: Any) -> DiscordHarness:
        settings = discord_settings(tmp_path, fake_discord, fake_llm, **overrides)
        base = "[memory_writer]\nenabled = false\n" if "[memory_writer]" not in toml else ""
        write_character(settings.familiar_dir, base + toml)
        character = load_character(settings.familiar_id, settings.familiar_dir)
        context = open_familiar(settings, character)
        familiar = await context.__aenter__()
        service = DiscordService(familiar, guild_ready_timeout_s=0.05)
        familiar.subscription_checks.append(service.is_subscribed)
        supervisor = Supervisor([*familiar.services, service])
        task = asyncio.create_task(supervisor.run())
        harness = DiscordHarness(familiar, service, fake_discord, fake_llm, supervisor, task)
        opened.append((context, harness))
        if wait_ready:
            await asyncio.wait_for(service.ready.wait(), timeout=10)
        return harness

    yield start
    for context, harness in reversed(opened):
        if not harness.task.done():
            harness.supervisor.stop()
            # A test that expected a failure has already checked it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(harness.task, timeout=10)
        await context.__aexit__(None, None, None)


@pytest.fixture(name="cert")
def fixture_cert(tmp_path: Path) -> TlsCert:
    return make_cert(tmp_path / "tls")


@pytest.fixture(name="stack")
async def fixture_stack(
    cert: TlsCert,
) -> AsyncIterator[tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]]:
    """The fake gateway and voice server, a real discord.py client, joined to the voice channel."""
    async with (
        FakeDiscord() as fake,
        FakeDiscordVoice(fake, cert) as voice,
        running_client(fake, cert) as client,
    ):
        channel = client.get_channel(VOICE_ID)
        assert isinstance(channel, discord.VoiceChannel)
        vc = await channel.connect(cls=voice_recv.VoiceRecvClient, timeout=10)
        yield voice, vc
