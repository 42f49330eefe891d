"""Loopback fake of Discord (gateway + REST) for the real discord.py 2.7.1 client.

One aiohttp server on ``127.0.0.1:0`` serves the REST API under ``/api/v10``
(:mod:`tests.fakes.discord_rest`, :mod:`tests.fakes.discord_interactions`),
the gateway websocket at ``/gw/`` (:mod:`tests.fakes.discord_gateway`) and
uploaded attachments under ``/cdn/``, over one shared
:class:`~tests.fakes.discord_world.World` (default: guild 900 with #general
500, #random 501, thread 510, voice 700; alice 1001 is Admin, bob 1002 is
not). Point the library at it through settings
(``DISCORD_API_BASE=fake.api_base``, ``DISCORD_GATEWAY_URL=fake.gateway_url``)
or, for a bare client, with :func:`pointed_at`::

    async with FakeDiscord(bot_token="t0k") as fake:
        with pointed_at(fake):
            client = discord.Client(intents=intents, guild_ready_timeout=0.05)
            await client.login("t0k")
            task = asyncio.create_task(client.connect(reconnect=True))
            await fake.ready.wait()
            await fake.user_says("hello", author="alice", mentions_bot=True)
            (reply,) = await fake.wait_for(lambda: fake.messages_sent(GENERAL_ID))
            ...
            await client.close()

Verbs (``async``; each returns the payload it sent): :meth:`~FakeDiscord.user_says`,
:meth:`~FakeDiscord.dm`, :meth:`~FakeDiscord.slash`, :meth:`~FakeDiscord.click`,
:meth:`~FakeDiscord.voice_state`, :meth:`~FakeDiscord.send_event`,
:meth:`~FakeDiscord.reconnect`, :meth:`~FakeDiscord.invalid_session`,
:meth:`~FakeDiscord.close`; scripted REST failures with
:meth:`~FakeDiscord.fail_next`. Recorded traffic: :attr:`~FakeDiscord.rest_calls`
(with :meth:`~FakeDiscord.messages_sent`, :meth:`~FakeDiscord.typing_calls`,
:meth:`~FakeDiscord.interaction_callbacks`, :meth:`~FakeDiscord.synced_commands`,
:meth:`~FakeDiscord.unexpected_calls`) and :attr:`~FakeDiscord.gateway_received`.
Connection knobs (``ack_heartbeats``, ``on_voice_state``) live on
:attr:`FakeDiscord.gateway`.

Like Discord, the fake echoes the bot's own messages back as MESSAGE_CREATE,
redacts guild message content for a client without the MESSAGE_CONTENT intent,
and keeps events for a client that is reconnecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import discord.gateway
import discord.http
import yarl

from tests.fakes._server import FakeServer
from tests.fakes.discord_gateway import (
    OP_HEARTBEAT,
    OP_IDENTIFY,
    OP_RESUME,
    OP_VOICE_STATE,
    FakeGateway,
    GatewayFrame,
)
from tests.fakes.discord_interactions import InteractionApi, InteractionCallback
from tests.fakes.discord_payloads import (
    component_type,
    interaction_json,
    message_json,
    rest_shape,
    slash_command_data,
    voice_state_json,
)
from tests.fakes.discord_rest import DiscordRest, RestCall, SentFile
from tests.fakes.discord_world import (
    ALICE_ID,
    APPLICATION_ID,
    BOB_ID,
    BOT_USER_ID,
    GENERAL_ID,
    GUILD_ID,
    PRIVILEGED_INTENTS,
    RANDOM_ID,
    THREAD_ID,
    VOICE_ID,
    FakeAttachment,
    FakeChannel,
    InteractionRecord,
    World,
)

__all__ = [
    "ALICE_ID",
    "APPLICATION_ID",
    "BOB_ID",
    "BOT_USER_ID",
    "GENERAL_ID",
    "GUILD_ID",
    "RANDOM_ID",
    "THREAD_ID",
    "VOICE_ID",
    "FakeAttachment",
    "FakeDiscord",
    "GatewayFrame",
    "InteractionCallback",
    "RestCall",
    "SentFile",
    "World",
    "pointed_at",
]

T = TypeVar("T")

_COMPONENT_TYPES_WITH_VALUES = (3, 5, 6, 7, 8)


class FakeDiscord(FakeServer):
    """Discord's gateway and REST API on loopback, for the real discord.py client.

    Args:
        bot_token: the token REST (``Authorization: Bot ...``) and IDENTIFY
            must carry; anything else gets 401 / close 4004.
        world: the guilds, channels and users; :meth:`World.default` if
            ``None``.
        heartbeat_interval_ms: announced in HELLO.
        enabled_privileged_intents: privileged intents "enabled in the
            developer portal" (all by default); IDENTIFY asking for another
            one is closed with 4014 and discord.py raises
            ``PrivilegedIntentsRequired``.
        echo_own_messages: send MESSAGE_CREATE/UPDATE/DELETE for the bot's
            own REST actions, as Discord does.
        ack_deadline_s: answer interaction callbacks later than this with
            404 "Unknown interaction"; ``None`` (default) never expires.
        max_recorded_frames: bound of :attr:`gateway_received`.
        max_replay_events: events kept per session for RESUME; a client
            further behind gets INVALID_SESSION.

    Attributes:
        world: the shared state; change it before the client connects (or
            send the matching events yourself).
        rest: the REST API (its own ``bot_token``, call log, failure rules).
        interactions: the application-command and interaction routes.
        gateway: the gateway protocol (``bot_token``, ``ack_heartbeats``,
            ``on_voice_state``, counters, sessions).
    """

    def __init__(
        self,
        *,
        bot_token: str = "fake-bot-token",  # noqa: S107 - a fake's token, not a secret
        world: World | None = None,
        heartbeat_interval_ms: int = 41_250,
        enabled_privileged_intents: int = PRIVILEGED_INTENTS,
        echo_own_messages: bool = True,
        ack_deadline_s: float | None = None,
        max_recorded_frames: int = 10_000,
        max_replay_events: int = 1_000,
    ) -> None:
        super().__init__()
        self.world = world if world is not None else World.default()
        self._tick = asyncio.Event()
        self.gateway = FakeGateway(
            self,
            self.world,
            bot_token=bot_token,
            gateway_url=lambda: self.gateway_url,
            changed=self._changed,
            heartbeat_interval_ms=heartbeat_interval_ms,
            enabled_privileged_intents=enabled_privileged_intents,
            max_recorded_frames=max_recorded_frames,
            max_replay_events=max_replay_events,
        )
        self.rest = DiscordRest(
            self.world,
            bot_token=bot_token,
            dispatch=self.gateway.dispatch_if_connected,
            changed=self._changed,
            echo_own_messages=echo_own_messages,
        )
        self.rest.enabled_privileged_intents = enabled_privileged_intents
        self.interactions = InteractionApi(self.rest, ack_deadline_s=ack_deadline_s)
        self.rest.register(self.app)
        self.gateway.register(self.app)

    async def start(self) -> None:
        """Start serving; URLs in payloads now point at this port."""
        await super().start()
        self.world.cdn_base = f"{self.base_url}/cdn"
        self.rest.gateway_url = self.gateway_url

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    # -- endpoints ---------------------------------------------------------

    @property
    def api_base(self) -> str:
        """REST base for ``DISCORD_API_BASE``: ``http://127.0.0.1:PORT/api/v10``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """Gateway URL for ``DISCORD_GATEWAY_URL``: ``ws://127.0.0.1:PORT/gw/``."""
        return f"{self.ws_base_url}/gw/"

    @property
    def bot_token(self) -> str:
        """The token the gateway accepts (``rest.bot_token`` is checked separately)."""
        return self.gateway.bot_token

    # -- gateway state -------------------------------------------------------

    @property
    def ready(self) -> asyncio.Event:
        """Set once READY and every GUILD_CREATE have been sent."""
        return self.gateway.ready

    @property
    def identified(self) -> asyncio.Event:
        """Set on the first accepted IDENTIFY."""
        return self.gateway.identified

    @property
    def resumed(self) -> asyncio.Event:
        """Set on the first accepted RESUME."""
        return self.gateway.resumed

    @property
    def identify_count(self) -> int:
        """Accepted IDENTIFYs."""
        return self.gateway.identify_count

    @property
    def resume_count(self) -> int:
        """Accepted RESUMEs."""
        return self.gateway.resume_count

    @property
    def connection_count(self) -> int:
        """Gateway websocket connections accepted."""
        return self.gateway.connection_count

    @property
    def session_id(self) -> str | None:
        """Id of the current gateway session, ``None`` before IDENTIFY."""
        return self.gateway.session_id

    @property
    def session_intents(self) -> int | None:
        """Intents of the current gateway session, ``None`` before IDENTIFY."""
        return self.gateway.session_intents

    # -- recorded traffic --------------------------------------------------

    @property
    def rest_calls(self) -> list[RestCall]:
        """Every REST call, oldest first (failed attempts and unknown routes included)."""
        return self.rest.calls

    @property
    def gateway_received(self) -> list[GatewayFrame]:
        """Every gateway frame the client sent, oldest first."""
        return self.gateway.received

    def frames(self, op: int) -> list[Any]:
        """The ``d`` of every received gateway frame with opcode ``op``."""
        return self.gateway.frames(op)

    @property
    def identifies(self) -> list[dict[str, Any]]:
        """IDENTIFY payloads received."""
        return self.frames(OP_IDENTIFY)

    @property
    def resumes(self) -> list[dict[str, Any]]:
        """RESUME payloads received."""
        return self.frames(OP_RESUME)

    @property
    def heartbeats(self) -> list[Any]:
        """Heartbeat payloads (the client's last sequence) received."""
        return self.frames(OP_HEARTBEAT)

    @property
    def voice_state_updates(self) -> list[dict[str, Any]]:
        """Op 4 voice state updates received."""
        return self.frames(OP_VOICE_STATE)

    def unexpected_calls(self) -> list[RestCall]:
        """REST calls that matched no route."""
        return [c for c in self.rest.calls if c.route == "unknown"]

    def messages_sent(self, channel_id: int | None = None) -> list[RestCall]:
        """Accepted ``POST /channels/{id}/messages`` calls (``.response`` is the message)."""
        return self._calls("create_message", channel_id, ok_only=True)

    def message_edits(self, channel_id: int | None = None) -> list[RestCall]:
        """Accepted ``PATCH /channels/{id}/messages/{mid}`` calls."""
        return self._calls("edit_message", channel_id, ok_only=True)

    def typing_calls(self, channel_id: int | None = None) -> list[RestCall]:
        """``POST /channels/{id}/typing`` calls."""
        return self._calls("typing", channel_id, ok_only=False)

    def _calls(self, route: str, channel_id: int | None, *, ok_only: bool) -> list[RestCall]:
        prefix = f"/channels/{channel_id}/"
        return [
            c
            for c in self.rest.calls
            if c.route == route
            and (channel_id is None or c.path.startswith(prefix))
            and (c.ok or not ok_only)
        ]

    def interaction_callbacks(
        self, interaction: int | Mapping[str, Any] | None = None
    ) -> list[InteractionCallback]:
        """Accepted answers to an interaction (or all): callback, follow-ups, edits, in order.

        Args:
            interaction: an interaction id or the payload a verb returned.
        """
        if interaction is None:
            return self.interactions.callbacks
        iid = int(interaction["id"]) if isinstance(interaction, Mapping) else int(interaction)
        return [c for c in self.interactions.callbacks if c.interaction_id == iid]

    def synced_commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Application commands synced to a guild (``None``: global)."""
        return list(self.world.commands.get(guild_id, []))

    async def wait_for(
        self, predicate: Callable[[], T], *, timeout_s: float = 5.0, poll_s: float = 0.01
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        It is re-checked after every REST call and gateway frame, and every
        ``poll_s`` besides, so predicates over client-side state work too.

        Raises:
            TimeoutError: still falsy after ``timeout_s``.

        Cancellation: safe; nothing is left behind.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if result:
                    return result
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await self._tick.wait()

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    # -- failure injection -------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after_s: float = 0.05,
        global_: bool = False,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Fail the next matching REST request(s); see :meth:`DiscordRest.fail_next`."""
        self.rest.fail_next(
            method,
            path_regex,
            status=status,
            retry_after_s=retry_after_s,
            global_=global_,
            body=body,
            times=times,
        )

    # -- verbs: connection -------------------------------------------------

    async def send_event(self, t: str, d: dict[str, Any]) -> int | None:
        """Dispatch any event to the client; see :meth:`FakeGateway.send_event`."""
        return await self.gateway.send_event(t, d)

    async def reconnect(self) -> None:
        """Send op 7 RECONNECT; the client resumes on ``resume_gateway_url``."""
        await self.gateway.reconnect()

    async def invalid_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; a non-resumable session is forgotten."""
        await self.gateway.invalid_session(resumable=resumable)

    async def close(self, code: int = 4000, message: str = "") -> None:
        """Close the current gateway connection with ``code`` (4000: the client resumes)."""
        await self.gateway.close(code, message)

    # -- verbs: users --------------------------------------------------------

    async def user_says(
        self,
        text: str,
        *,
        author: int | str = "alice",
        channel_id: int = GENERAL_ID,
        mentions_bot: bool = False,
        reply_to: int | None = None,
        attachments: Sequence[FakeAttachment | tuple[str, bytes]] = (),
        embeds: Sequence[Mapping[str, Any]] = (),
        mention_everyone: bool = False,
        mentions: Sequence[int | str] = (),
    ) -> dict[str, Any]:
        """A user posts a message: MESSAGE_CREATE (with ``member`` in guilds).

        Args:
            text: the content.
            author: user id or name.
            channel_id: guild text channel, thread or DM channel.
            mentions_bot: prefix ``<@bot_id>`` (unless already in ``text``)
                and list the bot in ``mentions``.
            reply_to: id of the message replied to.
            attachments: files attached; served back under ``/cdn/``.
            embeds: embed objects.
            mention_everyone: prefix ``@everyone`` and set ``mention_everyone``.
            mentions: other users mentioned (listed in ``mentions``; put
                ``<@id>`` in ``text`` yourself).

        Returns:
            the message as sent (before any intent redaction).
        """
        channel = self._channel(channel_id)
        user = self.world.user(author)
        bot = self.world.bot
        content = text
        mentioned = [self.world.user(m) for m in mentions]
        if mentions_bot:
            if f"<@{bot.id}>" not in content and f"<@!{bot.id}>" not in content:
                content = f"<@{bot.id}> {content}"
            if bot not in mentioned:
                mentioned.insert(0, bot)
        if mention_everyone and "@everyone" not in content:
            content = f"@everyone {content}"
        files = [a if isinstance(a, FakeAttachment) else FakeAttachment(*a) for a in attachments]
        message = message_json(
            self.world,
            message_id=self.world.new_id(),
            channel=channel,
            author=user,
            content=content,
            mentions=mentioned,
            mention_everyone=mention_everyone,
            reply_to=reply_to,
            attachments=[
                self.world.attachment(channel.id, f.filename, f.data, f.content_type) for f in files
            ],
            embeds=embeds,
            gateway=True,
        )
        self.world.store_message(rest_shape(message))
        await self.gateway.send_event("MESSAGE_CREATE", message)
        return message

    async def dm(
        self,
        text: str,
        *,
        author: int | str = "alice",
        attachments: Sequence[FakeAttachment | tuple[str, bytes]] = (),
    ) -> dict[str, Any]:
        """A user writes to the bot in their DM channel (created on first use)."""
        channel = self.world.add_dm(author)
        return await self.user_says(
            text, author=author, channel_id=channel.id, attachments=attachments
        )

    async def voice_state(
        self, user: int | str, channel_id: int | None, *, guild_id: int = GUILD_ID
    ) -> dict[str, Any]:
        """A member joins (``channel_id``) or leaves (``None``) voice: VOICE_STATE_UPDATE."""
        guild = self.world.guilds[guild_id]
        member = self.world.user(user)
        if channel_id is None:
            guild.voice_states.pop(member.id, None)
        else:
            guild.voice_states[member.id] = channel_id
        payload = voice_state_json(
            self.world, guild, member.id, channel_id, session_id=f"voice-{member.id}"
        )
        await self.gateway.send_event("VOICE_STATE_UPDATE", payload)
        return payload

    async def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        user: int | str = "alice",
        channel_id: int = GENERAL_ID,
        subcommand: str | None = None,
    ) -> dict[str, Any]:
        """A user runs a synced slash command: INTERACTION_CREATE type 2.

        The command is looked up among the commands synced to the channel's
        guild, then the global ones; option types come from its synced
        schema (falling back to the Python type of the value). User, channel,
        role, mentionable and attachment options get ``resolved`` data;
        pass a user id or name, a channel id, a role id or a
        :class:`FakeAttachment`.

        Args:
            name: the command's name.
            options: option name -> value.
            user: who runs it (id or name).
            channel_id: where (guild channel, thread or DM).
            subcommand: ``"sub"`` or ``"group sub"``.

        Returns:
            the interaction payload (find the bot's answer with
            :meth:`interaction_callbacks`).

        Raises:
            LookupError: the command (or subcommand) was never synced.
        """
        channel = self._channel(channel_id)
        data = slash_command_data(self.world, channel, name, options, subcommand)
        return await self._interact(2, data, user=user, channel=channel)

    async def click(
        self,
        custom_id: str,
        *,
        message: int | Mapping[str, Any],
        user: int | str = "alice",
        values: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """A user clicks a button (or picks from a select): INTERACTION_CREATE type 3.

        Args:
            custom_id: the component's ``custom_id``.
            message: the bot's message carrying it (id or payload; the
                stored, latest version is used).
            user: who clicks (id or name).
            values: chosen values, for select menus.

        Raises:
            LookupError: the message is unknown or has no such component.
        """
        message_id = int(message["id"]) if isinstance(message, Mapping) else int(message)
        stored = self.world.message(message_id)
        if stored is None:
            if not isinstance(message, Mapping):
                raise LookupError(f"unknown message {message_id}")
            stored = dict(message)
        kind = component_type(stored.get("components") or [], custom_id)
        if kind is None:
            raise LookupError(f"message {message_id} has no component {custom_id!r}")
        channel = self._channel(int(stored["channel_id"]))
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": kind}
        if kind in _COMPONENT_TYPES_WITH_VALUES:
            data["values"] = list(values or [])
        return await self._interact(3, data, user=user, channel=channel, message=stored)

    def _channel(self, channel_id: int) -> FakeChannel:
        channel = self.world.channel(channel_id)
        if channel is None:
            raise LookupError(f"unknown channel {channel_id}")
        return channel

    async def _interact(
        self,
        interaction_type: int,
        data: dict[str, Any],
        *,
        user: int | str,
        channel: FakeChannel,
        message: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        interaction_id = self.world.new_id()
        payload = interaction_json(
            self.world,
            interaction_id=interaction_id,
            token=f"fake-interaction-{interaction_id}-{secrets.token_hex(8)}",
            interaction_type=interaction_type,
            data=data,
            user=self.world.user(user),
            channel=channel,
            message=message,
        )
        self.world.store_interaction(
            InteractionRecord(interaction_id, payload["token"], payload, time.monotonic_ns())
        )
        await self.gateway.send_event("INTERACTION_CREATE", payload)
        return payload


@contextlib.contextmanager
def pointed_at(fake: FakeDiscord) -> Iterator[FakeDiscord]:
    """Point discord.py's REST base and gateway URL at ``fake``; restore on exit.

    For tests that drive a bare ``discord.Client``; the application does the
    same through settings (``familiar_connect.endpoints``).
    """
    route = discord.http.Route
    websocket = discord.gateway.DiscordWebSocket
    old_base, old_gateway = route.BASE, websocket.DEFAULT_GATEWAY
    route.BASE = fake.api_base
    websocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    try:
        yield fake
    finally:
        route.BASE = old_base
        websocket.DEFAULT_GATEWAY = old_gateway
