"""Twitch in the reliability rig: the fake Twitch, its settings, stored tokens, the real adapter.

:func:`twitch_rig` starts a :class:`~tests.reliability.rig.Rig` (Discord, the dashboard, the
OpenRouter client) with the real :class:`~familiar_connect.platforms.twitch.TwitchService`
added the way ``familiar run`` adds it: built from the opened familiar by
``app._twitch_service`` (which also registers its ``is_subscribed`` check) and wired to the
dashboard by the rig's ``connect_adapters`` (its reports go to the ``twitch_eventsub`` row).
twitchio talks to :class:`RigTwitch`, a :class:`~tests.fakes.twitch.FakeTwitch`, through the
settings (``TWITCH_HELIX_BASE``...), and the bot's and broadcaster's tokens are in the
encrypted vault before the familiar opens, as ``familiar twitch login`` leaves them.

Used by ``test_faults_twitch.py``, ``test_canaries.py`` and ``test_bad_inputs.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from familiar_connect.app import Familiar, _twitch_service
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.platforms.twitch.scopes import FEATURES, scopes_for
from familiar_connect.platforms.twitch.service import TwitchService
from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault
from familiar_connect.supervisor import Service
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.openrouter import FakeOpenRouter
from tests.fakes.twitch import BOT, STREAMER, FakeTwitch
from tests.platforms.twitch.conftest import stored
from tests.reliability.figures import timeout_s
from tests.reliability.rig import Rig, rig

__all__ = [
    "BOT_SCOPES",
    "BROADCASTER_SCOPES",
    "MASTER_KEY",
    "RigTwitch",
    "TwitchRig",
    "store_tokens",
    "stored",
    "twitch_rig",
    "twitch_settings",
]

MASTER_KEY = "rig-master-key-0123456789abcdef"
BOT_SCOPES = scopes_for("bot", FEATURES)
BROADCASTER_SCOPES = scopes_for("broadcaster", FEATURES)
FAMILIAR_ID = "relfam"  # the rig's familiar id


class RigTwitch(FakeTwitch):
    """:class:`FakeTwitch` that can also lose an EventSub connection without a close frame.

    :meth:`drop_sessions` resets the TCP connection of every live session: no close code,
    no goodbye, which is what a connection that died on the way looks like to the client.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._upgrades: dict[web.WebSocketResponse, web.Request] = {}

    async def prepare_websocket(self, request: web.Request, **kwargs: Any) -> web.WebSocketResponse:
        ws = await super().prepare_websocket(request, **kwargs)
        # Bounded: closed sockets are forgotten as new ones arrive.
        self._upgrades = {w: r for w, r in self._upgrades.items() if not w.closed}
        self._upgrades[ws] = request
        return ws

    async def drop_sessions(self) -> int:
        """Reset the connection of every live EventSub session; return how many were dropped."""
        dropped = 0
        for session in list(self.sessions.values()):
            ws = session.ws
            if session.closed or ws is None or ws not in self._upgrades:
                continue
            await self.drop_connection(self._upgrades.pop(ws), reset=True)
            dropped += 1
        return dropped


def twitch_settings(fake: FakeTwitch, *, master_key: str = MASTER_KEY) -> dict[str, Any]:
    """Settings that configure Twitch against ``fake`` (and the master key the vault needs)."""
    return {
        "familiar_master_key": master_key,
        "twitch_client_id": fake.client_id,
        "twitch_client_secret": fake.client_secret,
        "twitch_channel": STREAMER.login,
        "twitch_helix_base": fake.helix_base,
        "twitch_id_base": fake.id_base,
        "twitch_eventsub_ws": fake.eventsub_url,
    }


def default_tokens(fake: FakeTwitch) -> list[StoredToken]:
    """The bot and the broadcaster logged in with every scope the features need."""
    return [
        stored(fake, "bot", BOT, BOT_SCOPES),
        stored(fake, "broadcaster", STREAMER, BROADCASTER_SCOPES),
    ]


async def store_tokens(
    familiar_dir: Path, master_keys: Mapping[int, str], tokens: Iterable[StoredToken]
) -> None:
    """Write ``tokens`` into the familiar's vault, as ``familiar twitch login`` does."""
    await asyncio.to_thread(familiar_dir.mkdir, parents=True, exist_ok=True)
    db = await open_database(familiar_dir / "familiar.db")
    try:
        store = TwitchTokenStore(Vault(db, dict(master_keys)))
        for token in tokens:
            await store.save(token)
    finally:
        await db.close()


@dataclass
class TwitchRig:
    """A running familiar with Discord, the dashboard and Twitch, and its fakes."""

    r: Rig
    twitch: RigTwitch
    service: TwitchService

    @property
    def llm(self) -> FakeOpenRouter:
        return self.r.llm

    @property
    def key(self) -> ConversationKey:
        """The Twitch conversation (the broadcaster's channel)."""
        return ConversationKey(Platform.TWITCH, STREAMER.user_id)

    def sent(self) -> list[str]:
        """Chat messages the familiar posted, oldest first."""
        return [message.text for message in self.twitch.chat_sent]

    async def wait_sent(self, count: int) -> list[str]:
        """Wait until at least ``count`` chat messages were posted."""
        await self.twitch.wait_for(
            lambda: len(self.twitch.chat_sent) >= count, timeout_s=timeout_s(20)
        )
        return self.sent()

    async def wait_ready(self) -> None:
        """Wait until the adapter is subscribed and ready (again, after a restart)."""
        await asyncio.wait_for(self.service.ready.wait(), timeout=timeout_s(30))

    async def settle(self) -> None:
        """Wait until nothing is pending in the adapter, the conversation is idle, history written."""
        service = self.service
        orchestrator = self.r.orchestrator

        def quiet() -> bool:
            chat = service.chat
            return (
                not len(service.inbox)
                and (chat is None or not chat.pending_addressed)
                and not orchestrator.is_replying(self.key)
            )

        async with asyncio.timeout(timeout_s(30)):
            while True:
                await asyncio.sleep(0.05)
                await orchestrator.wait_idle(self.key)
                if quiet():
                    await asyncio.sleep(0.05)
                    if quiet():
                        break
        await self.r.familiar.history_writer.flush()

    async def row(self) -> dict[str, Any]:
        """The dashboard's Twitch provider row."""
        return await self.r.provider("twitch_eventsub")

    async def input_rows(self) -> list[str]:
        """Every Twitch input in history (chat and channel events), oldest first."""
        await self.r.familiar.history_writer.flush()
        rows = await self.r.familiar.db.fetchall(
            "SELECT content FROM turns WHERE role != 'assistant' AND channel = ? ORDER BY id",
            (self.key.as_str(),),
            what="rig_twitch",
        )
        return [row[0] for row in rows]


@contextlib.asynccontextmanager
async def twitch_rig(
    tmp_path: Path,
    *,
    toml: str = "",
    settings: Mapping[str, Any] | None = None,
    twitch: RigTwitch | None = None,
    tokens: Iterable[StoredToken] | None = None,
    discord: FakeDiscord | None = None,
    llm: FakeOpenRouter | None = None,
    log_level: str = "DEBUG",
) -> AsyncIterator[TwitchRig]:
    """Start a familiar with Discord, the dashboard and Twitch; stop everything on exit."""
    async with contextlib.AsyncExitStack() as stack:
        if twitch is None:
            twitch = await stack.enter_async_context(RigTwitch())
        options = {**twitch_settings(twitch), **(settings or {})}
        familiar_dir = (
            tmp_path / "data" / "familiars" / str(options.get("familiar_id", FAMILIAR_ID))
        )
        await store_tokens(
            familiar_dir,
            {1: str(options["familiar_master_key"])},
            default_tokens(twitch) if tokens is None else tokens,
        )
        built: list[TwitchService] = []

        def make(familiar: Familiar) -> Service:
            service = _twitch_service(familiar)
            assert isinstance(service, TwitchService)
            built.append(service)
            return service

        r = await stack.enter_async_context(
            rig(
                tmp_path,
                toml=toml,
                settings=options,
                service_factories=[make],
                discord=discord,
                llm=llm,
                log_level=log_level,
            )
        )
        (service,) = built
        # Wired by the rig as `familiar run` wires it; without it no Twitch status reaches the board.
        assert service.report is not None, "the rig no longer connects adapters to the dashboard"
        the_rig = TwitchRig(r, twitch, service)
        await the_rig.wait_ready()
        yield the_rig
