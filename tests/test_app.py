"""The composition root: services run together and SIGTERM closes everything cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from familiar_connect.app import App, Familiar, build_app
from familiar_connect.character import load_character
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.errors import ProviderAuthError
from familiar_connect.settings import load_settings
from tests.conversation.conftest import RecordingSink
from tests.fakes.openrouter import FakeOpenRouter


class _Platform:
    """A stand-in platform service that says one thing and then idles until cancelled."""

    name = "testplatform"

    def __init__(self, familiar: Familiar, started: asyncio.Event) -> None:
        self.familiar = familiar
        self.started = started
        self.cancelled = False

    async def run(self) -> None:
        key = ConversationKey(Platform.DISCORD, "1", guild_id="2")
        event = TextMessage(
            key=key,
            author=Author(Platform.DISCORD, "3", "Alice"),
            text="hello familiar",
            message_id="4",
            received_ns=0,
            mentions_familiar=True,
        )
        self.familiar.orchestrator.submit(event, RecordingSink())
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def _settings(tmp_path: Path, fake: FakeOpenRouter) -> object:
    return load_settings(
        env_file=None,
        familiar_id="appfam",
        familiar_data_dir=tmp_path / "data",
        openrouter_base_url=fake.api_base,
        dashboard_port=0,
    )


class TestApp:
    async def test_sigterm_stops_services_and_flushes_history(self, tmp_path: Path) -> None:
        """SIGTERM stops every service, the reply in history survives, nothing is left pending."""
        async with FakeOpenRouter() as fake:
            fake.reply_text("Hello Alice.")
            settings = _settings(tmp_path, fake)
            character = load_character("appfam", None)
            started = asyncio.Event()
            platforms: list[_Platform] = []

            def factory(familiar: Familiar) -> _Platform:
                platforms.append(_Platform(familiar, started))
                return platforms[-1]

            app = App(settings=settings, character=character, platforms={"test": factory})
            runner = asyncio.create_task(app.run())
            await asyncio.wait_for(started.wait(), timeout=10)
            for _ in range(200):
                if fake.completed_streams:
                    break
                await asyncio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(runner, timeout=10)
        assert platforms[0].cancelled
        statuses = app.supervisor.statuses if app.supervisor else {}
        assert all(status.state in ("stopped", "running") for status in statuses.values())
        db = sqlite3.connect(tmp_path / "data" / "familiars" / "appfam" / "familiar.db")
        rows = db.execute("SELECT role, content FROM turns ORDER BY id").fetchall()
        db.close()
        assert rows == [("user", "hello familiar"), ("assistant", "Hello Alice.")]
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not [t for t in leftover if not t.done() and "service" in t.get_name()]

    async def test_fatal_platform_error_propagates(self, tmp_path: Path) -> None:
        """A platform that fails fatally (bad credentials) ends run() with that error."""

        class BadToken:
            name = "badtoken"

            async def run(self) -> None:
                raise ProviderAuthError("token rejected", provider="discord", status=401)

        async with FakeOpenRouter() as fake:
            app = App(
                settings=_settings(tmp_path, fake),
                character=load_character("appfam", None),
                platforms={"bad": lambda _familiar: BadToken()},
            )
            with pytest.raises(ProviderAuthError):
                await asyncio.wait_for(app.run(install_signals=False), timeout=10)

    def test_build_app_registers_discord_when_token_set(self, tmp_path: Path) -> None:
        """With DISCORD_TOKEN set the Discord platform is part of the app."""
        settings = load_settings(
            env_file=None,
            familiar_data_dir=tmp_path,
            openrouter_api_key="sk-or-v1-x0123456789",
            discord_token="MTAxMDEwMTAxMDEwMTAxMDEw.abcdef.abcdefghijklmnopqrstuvwxyz0",
        )
        app = build_app(settings, load_character("default", None))
        assert app.has_platforms() and list(app.platforms) == ["discord"]
