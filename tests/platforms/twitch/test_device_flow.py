"""``familiar twitch login`` (Device Code Grant) and ``familiar check``'s Twitch lines, against the fake."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path

import pytest

from familiar_connect.character import load_character
from familiar_connect.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderProtocolError,
    ProviderTimeout,
)
from familiar_connect.platforms.twitch.check import describe_twitch
from familiar_connect.platforms.twitch.config import KindSection, TwitchSection
from familiar_connect.platforms.twitch.device_flow import (
    DevicePoll,
    login_scopes,
    run_device_login,
)
from familiar_connect.platforms.twitch.identity import DeviceCode, TokenResponse
from familiar_connect.platforms.twitch.tokens import TwitchTokenStore
from familiar_connect.settings import Settings
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.twitch import ALICE, BOT, STREAMER, FakeTwitch
from tests.platforms.twitch.conftest import (
    BOT_SCOPES,
    BROADCASTER_SCOPES,
    MASTER_KEY,
    HarnessFactory,
    store_tokens,
    stored,
    twitch_settings,
)

S = 1_000_000_000
CODE = DeviceCode("dev-1", "ABCD", "https://www.twitch.tv/activate", 5, 1800)


def answer(status: int, **body: object) -> TokenResponse:
    return TokenResponse(status, body)


async def login(settings: Settings, fake: FakeTwitch, role: str, user: object) -> tuple[int, str]:
    """Run the login command, approving on the fake as ``user`` once the code is shown."""
    out = io.StringIO()
    character = load_character(settings.familiar_id, None)
    task = asyncio.create_task(
        run_device_login(settings, character, role=role, out=out, min_interval_s=0.01)  # type: ignore[arg-type]
    )
    grants = await fake.wait_for(lambda: fake.device_grants() or task.done())
    if task.done():
        return await task, out.getvalue()
    fake.approve_device(grants[-1][0], user)  # type: ignore[index,arg-type]
    code = await asyncio.wait_for(task, timeout=10)
    return code, out.getvalue()


class TestDevicePoll:
    def test_pending_and_slow_down(self) -> None:
        """Pending waits the interval; slow_down adds five seconds to it."""
        poll = DevicePoll(CODE, started_ns=0)
        assert poll.first_wait_s() == 5
        assert poll.on_answer(answer(400, message="authorization_pending"), S).wait_s == 5
        assert poll.on_answer(answer(400, message="slow_down"), S).wait_s == 10

    def test_interval_has_a_floor(self) -> None:
        """A zero interval from the service never makes the client poll in a tight loop."""
        code = DeviceCode("d", "C", "u", 0, 60)
        assert DevicePoll(code, started_ns=0, min_interval_s=1.0).first_wait_s() == 1.0

    def test_granted_needs_both_tokens(self) -> None:
        """A grant returns the body; one without a refresh token is a protocol error."""
        poll = DevicePoll(CODE, started_ns=0)
        outcome = poll.on_answer(answer(200, access_token="a", refresh_token="r"), S)
        assert outcome.state == "granted"
        with pytest.raises(ProviderProtocolError):
            poll.on_answer(answer(200, access_token="a"), S)

    def test_denied_and_expired(self) -> None:
        """A declined login is an auth error; a code past its lifetime is a timeout."""
        poll = DevicePoll(CODE, started_ns=0)
        with pytest.raises(ProviderAuthError):
            poll.on_answer(answer(400, message="access_denied"), S)
        with pytest.raises(ProviderTimeout):
            poll.on_answer(answer(400, message="authorization_pending"), 1801 * S)
        with pytest.raises(ProviderProtocolError):
            poll.on_answer(answer(500, message="boom"), S)


class TestLoginScopes:
    def test_scopes_follow_the_enabled_features(self, tmp_path: Path) -> None:
        """Disabled features' scopes are not requested; the bot always asks for chat."""
        settings = Settings(twitch_channel="streamer", familiar_data_dir=tmp_path)
        config = TwitchSection(cheer=KindSection(enabled=False), follow=KindSection(enabled=False))
        scopes = login_scopes(settings, config, "broadcaster")
        assert "bits:read" not in scopes and "moderator:read:followers" not in scopes
        assert "channel:read:subscriptions" in scopes
        assert login_scopes(settings, config, "bot") == ("user:read:chat", "user:write:chat")

    def test_one_account_asks_for_everything(self, tmp_path: Path) -> None:
        """When TWITCH_BOT_LOGIN is the channel, the bot login asks for the broadcaster's scopes too."""
        settings = Settings(
            twitch_channel="streamer", twitch_bot_login="Streamer", familiar_data_dir=tmp_path
        )
        assert "bits:read" in login_scopes(settings, TwitchSection(), "bot")


@pytest.fixture(name="settings")
async def fixture_settings(
    tmp_path: Path, fake_twitch: FakeTwitch, fake_llm: FakeOpenRouter
) -> Settings:
    return twitch_settings(tmp_path, fake_twitch, fake_llm)


class TestDeviceLogin:
    async def test_login_stores_encrypted_tokens(
        self, settings: Settings, fake_twitch: FakeTwitch
    ) -> None:
        """The bot logs in with exactly the chat scopes; the pair is stored encrypted, never printed."""
        code, out = await login(settings, fake_twitch, "bot", BOT)
        assert code == 0
        assert fake_twitch.device_scope_requests == [BOT_SCOPES]
        token = fake_twitch.current_token(BOT)
        assert token is not None
        assert token.scopes == tuple(sorted(BOT_SCOPES))
        assert "/activate" in out and "Logged in as familiarbot (bot)" in out
        assert token.access not in out and token.refresh not in out
        db_path = settings.familiar_dir / "familiar.db"
        raw = await asyncio.to_thread(
            lambda: (
                sqlite3.connect(db_path).execute("SELECT ciphertext FROM vault_secrets").fetchall()
            )
        )
        assert token.access.encode() not in bytes(raw[0][0])
        async with await open_database(db_path) as db:
            loaded = await TwitchTokenStore(Vault(db, {1: MASTER_KEY})).load("bot")
        assert loaded is not None and loaded.access_token == token.access

    async def test_wrong_account_is_refused_and_nothing_stored(
        self, settings: Settings, fake_twitch: FakeTwitch
    ) -> None:
        """Authorising as someone other than the channel's owner stores nothing."""
        with pytest.raises(ConfigError) as caught:
            await login(settings, fake_twitch, "broadcaster", ALICE)
        assert "alice" in str(caught.value) and "streamer" in str(caught.value)
        assert not await asyncio.to_thread((settings.familiar_dir / "familiar.db").exists)

    async def test_declined_login(self, settings: Settings, fake_twitch: FakeTwitch) -> None:
        """Declining on Twitch ends the command with an auth error."""
        character = load_character(settings.familiar_id, None)
        task = asyncio.create_task(
            run_device_login(
                settings, character, role="bot", out=io.StringIO(), min_interval_s=0.01
            )
        )
        grants = await fake_twitch.wait_for(fake_twitch.device_grants)
        fake_twitch.deny_device(grants[-1][0])
        with pytest.raises(ProviderAuthError):
            await asyncio.wait_for(task, timeout=10)

    async def test_needs_a_master_key(self, tmp_path: Path, fake_twitch: FakeTwitch) -> None:
        """Without FAMILIAR_MASTER_KEY the command refuses before contacting Twitch."""
        settings = Settings(
            twitch_client_id=fake_twitch.client_id,
            twitch_channel="streamer",
            familiar_data_dir=tmp_path,
        )
        character = load_character(settings.familiar_id, None)
        with pytest.raises(ConfigError) as caught:
            await run_device_login(settings, character, role="bot", out=io.StringIO())
        assert "FAMILIAR_MASTER_KEY" in str(caught.value)
        assert fake_twitch.requests == []

    async def test_a_later_run_uses_and_refreshes_them(
        self, settings: Settings, fake_twitch: FakeTwitch, start_familiar: HarnessFactory
    ) -> None:
        """Tokens from the device login drive the adapter, and a refresh rewrites them in the vault."""
        await login(settings, fake_twitch, "bot", BOT)
        await login(settings, fake_twitch, "broadcaster", STREAMER)
        first = fake_twitch.current_token(BOT)
        assert first is not None
        harness = await start_familiar(tokens=[])
        assert "cheer" in harness.service.status.subscribed
        fake_twitch.expire(first.access)
        harness.llm.reply_text("Fresh token, same me.")
        await fake_twitch.chat("hello", mention_bot=True)
        await fake_twitch.wait_for(lambda: fake_twitch.chat_sent, timeout_s=10)
        for _ in range(100):
            now = await harness.stored_token("bot")
            if now is not None and now.access_token != first.access:
                break
            await asyncio.sleep(0.02)
        assert now is not None and now.access_token != first.access
        assert fake_twitch.tokens[now.access_token].valid


class TestDescribeTwitch:
    async def test_check_reports_validity_and_missing_scopes(
        self, settings: Settings, fake_twitch: FakeTwitch
    ) -> None:
        """familiar check names each account, its lifetime, and any missing scope with the fix."""
        from familiar_connect.app import open_familiar

        character = load_character(settings.familiar_id, None)
        bot = stored(fake_twitch, "bot", BOT, BOT_SCOPES)
        lacking = [scope for scope in BROADCASTER_SCOPES if scope != "bits:read"]
        broadcaster = stored(fake_twitch, "broadcaster", STREAMER, lacking)
        async with open_familiar(settings, character) as familiar:
            await store_tokens(familiar, bot, broadcaster)
        lines = await describe_twitch(settings, character)
        assert lines[0] == "Twitch bot: familiarbot: valid for 4 h 0 min, scopes OK"
        assert "MISSING SCOPES: cheers need bits:read" in lines[1]
        assert "--as broadcaster" in lines[1]
        fake_twitch.expire(bot.access_token)
        lines = await describe_twitch(settings, character)
        assert "expired or was revoked" in lines[0]
        assert all(bot.access_token not in line for line in lines)

    async def test_check_without_tokens(self, settings: Settings) -> None:
        """Before any login, check says which command to run."""
        character = load_character(settings.familiar_id, None)
        assert await describe_twitch(settings, character) == [
            "Twitch tokens: none stored (run `familiar twitch login --as bot`)"
        ]
