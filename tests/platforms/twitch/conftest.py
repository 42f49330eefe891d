"""The familiar's Twitch adapter end to end: real twitchio, fake Twitch, fake OpenRouter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from familiar_connect.app import Familiar, open_familiar
from familiar_connect.character import load_character
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.feed import VoiceTarget
from familiar_connect.platforms.twitch.scopes import scopes_for
from familiar_connect.platforms.twitch.service import TwitchService
from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore
from familiar_connect.settings import Settings, load_settings
from familiar_connect.storage.vault import Vault
from familiar_connect.supervisor import RestartPolicy, Supervisor
from tests.conversation.conftest import RecordingSink, write_character
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.twitch import BOT, STREAMER, FakeTwitch, TwitchUser

LLM_KEY = "sk-or-v1-twitch-e2e-0123456789"
MASTER_KEY = "twitch-tests-master-key-0123456789"
ALL_KINDS = ("chat", "follow", "sub", "resub", "gift", "cheer", "raid", "redemption", "ad_break")
BOT_SCOPES = scopes_for("bot", ALL_KINDS)
BROADCASTER_SCOPES = scopes_for("broadcaster", ALL_KINDS)
# The Discord voice channel the familiar is "in" when a test gives it a voice sink.
VOICE_KEY = ConversationKey(Platform.DISCORD, "700", guild_id="900")


@dataclass
class TwitchHarness:
    familiar: Familiar
    service: TwitchService
    twitch: FakeTwitch
    llm: FakeOpenRouter
    supervisor: Supervisor
    task: asyncio.Task[None]
    voice: RecordingSink | None = None

    async def stop(self) -> None:
        self.supervisor.stop()
        await asyncio.wait_for(self.task, timeout=10)

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(Platform.TWITCH, STREAMER.user_id)

    def sent(self) -> list[str]:
        """Chat messages the familiar posted, oldest first."""
        return [message.text for message in self.twitch.chat_sent]

    async def settle(self, *, timeout_s: float = 10.0) -> None:
        """Wait until nothing is pending in the adapter and the conversation is idle."""
        service = self.service
        orchestrator = self.familiar.orchestrator

        def quiet() -> bool:
            chat = service.chat
            return (
                not len(service.inbox)
                and (chat is None or not chat.pending_addressed)
                and not orchestrator.is_replying(self.key)
            )

        async with asyncio.timeout(timeout_s):
            while True:
                await asyncio.sleep(0.05)
                await orchestrator.wait_idle(self.key)
                if quiet():
                    await asyncio.sleep(0.05)
                    if quiet():
                        break
        await self.familiar.history_writer.flush()

    async def history(self) -> list[tuple[str, str]]:
        await self.familiar.history_writer.flush()
        turns = await self.familiar.history.recent("twitch", self.key.as_str(), limit=1000)
        return [(turn.role, turn.content) for turn in turns]

    async def stored_token(self, role: str) -> StoredToken | None:
        vault = Vault(self.familiar.db, {1: MASTER_KEY})
        return await TwitchTokenStore(vault).load(role)  # type: ignore[arg-type]


HarnessFactory = Callable[..., Any]


@pytest.fixture(name="fake_twitch")
async def fixture_fake_twitch() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch() as fake:
        yield fake


@pytest.fixture(name="fake_llm")
async def fixture_fake_llm() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter(expected_api_key=LLM_KEY) as fake:
        yield fake


def twitch_settings(
    tmp_path: Path, fake_twitch: FakeTwitch, fake_llm: FakeOpenRouter, **overrides: Any
) -> Settings:
    options: dict[str, Any] = {
        "familiar_id": "twitchfam",
        "familiar_data_dir": tmp_path / "data",
        "familiar_master_key": MASTER_KEY,
        "openrouter_base_url": fake_llm.api_base,
        "openrouter_api_key": LLM_KEY,
        "llm_max_retries": 0,
        "twitch_client_id": fake_twitch.client_id,
        "twitch_client_secret": fake_twitch.client_secret,
        "twitch_channel": STREAMER.login,
        "twitch_helix_base": fake_twitch.helix_base,
        "twitch_id_base": fake_twitch.id_base,
        "twitch_eventsub_ws": fake_twitch.eventsub_url,
        "dashboard_enabled": False,
    }
    options.update(overrides)
    return load_settings(env_file=None, **options)


async def store_tokens(familiar: Familiar, *tokens: StoredToken) -> None:
    store = TwitchTokenStore(Vault(familiar.db, familiar.settings.master_keys()))
    for token in tokens:
        await store.save(token)


def stored(
    fake: FakeTwitch, role: str, user: TwitchUser, scopes: Iterable[str], **kwargs: Any
) -> StoredToken:
    """Have ``user`` authorise the app on the fake and return the pair as the vault keeps it."""
    access, refresh = fake.issue_token(user, scopes, **kwargs)
    return StoredToken(
        role=role,  # type: ignore[arg-type]
        user_id=user.user_id,
        login=user.login,
        access_token=access,
        refresh_token=refresh,
        scopes=tuple(scopes),
    )


@pytest.fixture(name="start_familiar")
async def fixture_start_familiar(
    tmp_path: Path, fake_twitch: FakeTwitch, fake_llm: FakeOpenRouter
) -> AsyncIterator[HarnessFactory]:
    """Start a familiar with the Twitch adapter; stopped (and closed) at teardown."""
    opened: list[tuple[Any, TwitchHarness]] = []

    async def start(
        toml: str = "",
        *,
        config: TwitchSection | None = None,
        bot_scopes: Iterable[str] = BOT_SCOPES,
        broadcaster_scopes: Iterable[str] | None = BROADCASTER_SCOPES,
        tokens: Iterable[StoredToken] | None = None,
        voice: bool = False,
        wait_ready: bool = True,
        **overrides: Any,
    ) -> TwitchHarness:
        settings = twitch_settings(tmp_path, fake_twitch, fake_llm, **overrides)
        base = "[memory_writer]\nenabled = false\n" if "[memory_writer]" not in toml else ""
        write_character(settings.familiar_dir, base + toml)
        character = load_character(settings.familiar_id, settings.familiar_dir)
        context = open_familiar(settings, character)
        familiar = await context.__aenter__()
        if tokens is None:
            tokens = [stored(fake_twitch, "bot", BOT, bot_scopes)]
            if broadcaster_scopes is not None:
                tokens.append(stored(fake_twitch, "broadcaster", STREAMER, broadcaster_scopes))
        await store_tokens(familiar, *tokens)
        voice_sink = RecordingSink(mode="clauses") if voice else None
        target = VoiceTarget(VOICE_KEY, voice_sink) if voice_sink is not None else None
        service = TwitchService(
            familiar,
            config=config or TwitchSection(),
            voice=(lambda: target) if target is not None else None,
            flush_interval_s=0.05,
            connection_grace_s=0.2,
        )
        familiar.subscription_checks.append(service.is_subscribed)
        supervisor = Supervisor(
            [*familiar.services, service],
            policy=RestartPolicy(initial_delay_s=0.05, max_delay_s=0.2),
        )
        task = asyncio.create_task(supervisor.run())
        harness = TwitchHarness(
            familiar, service, fake_twitch, fake_llm, supervisor, task, voice=voice_sink
        )
        opened.append((context, harness))
        if wait_ready:
            await asyncio.wait_for(service.ready.wait(), timeout=15)
        return harness

    yield start
    for context, harness in reversed(opened):
        if not harness.task.done():
            harness.supervisor.stop()
            # A test that expected a failure has already checked it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(harness.task, timeout=10)
        await context.__aexit__(None, None, None)
