"""The fake Discord's world: users, guilds, roles, channels, messages, interactions.

:class:`World` is the state the fake's REST API and gateway share: who the bot
is, which guilds, roles, channels, members and DM channels exist, the messages
seen so far, the application commands synced, the interactions handed out and
the bytes of uploaded attachments (served back under ``/cdn/``). Every store
is bounded. :mod:`tests.fakes.discord_payloads` turns it into JSON.

The default world (:meth:`World.default`)::

    guild 900 "Test Guild"   roles: @everyone 900, "Admin" 901 (MANAGE_GUILD), bot role 902
      #general 500 (text), #random 501 (text), thread 510 in #general, voice 700 "Lounge"
      members: alice 1001 (Admin), bob 1002, the bot 1100 ("Familiar"); owner 1000 is no member
    application 1200 (distinct from the bot's id, so code mixing them up fails)

Ids of things the fake creates (messages, interactions, attachments) are real
snowflakes from the current time, strictly increasing.
"""

from __future__ import annotations

import collections
import datetime
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ADMIN_ROLE_ID",
    "ALICE_ID",
    "APPLICATION_ID",
    "BOB_ID",
    "BOT_ROLE_ID",
    "BOT_USER_ID",
    "EVERYONE_PERMISSIONS",
    "GENERAL_ID",
    "GUILD_ID",
    "INTENT_DIRECT_MESSAGES",
    "INTENT_GUILDS",
    "INTENT_GUILD_MEMBERS",
    "INTENT_GUILD_MESSAGES",
    "INTENT_GUILD_PRESENCES",
    "INTENT_GUILD_VOICE_STATES",
    "INTENT_MESSAGE_CONTENT",
    "MANAGE_GUILD",
    "OWNER_ID",
    "PRIVILEGED_INTENTS",
    "RANDOM_ID",
    "THREAD_ID",
    "VOICE_ID",
    "FakeAttachment",
    "FakeChannel",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "InteractionRecord",
    "World",
    "application_flags",
    "snowflake_time_iso",
]

# -- constants -------------------------------------------------------------

DISCORD_EPOCH_MS = 1_420_070_400_000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
CONNECT = 1 << 20
SPEAK = 1 << 21
USE_VAD = 1 << 25
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 51) - 1

EVERYONE_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | SEND_MESSAGES_IN_THREADS
    | EMBED_LINKS
    | ATTACH_FILES
    | ADD_REACTIONS
    | READ_MESSAGE_HISTORY
    | CONNECT
    | SPEAK
    | USE_VAD
    | USE_APPLICATION_COMMANDS
)
BOT_ROLE_PERMISSIONS = EVERYONE_PERMISSIONS | MANAGE_MESSAGES

# Gateway intents (https://discord.com/developers/docs/events/gateway#gateway-intents).
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_VOICE_STATES = 1 << 7
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT

# Application flags that say a privileged intent is switched on in the portal.
_APP_FLAG_FOR_INTENT = {
    INTENT_GUILD_PRESENCES: 1 << 13,
    INTENT_GUILD_MEMBERS: 1 << 15,
    INTENT_MESSAGE_CONTENT: 1 << 19,
}

CHANNEL_TEXT = 0
CHANNEL_DM = 1
CHANNEL_VOICE = 2
CHANNEL_PUBLIC_THREAD = 11

MESSAGE_FLAG_EPHEMERAL = 1 << 6
MESSAGE_FLAG_LOADING = 1 << 7
MESSAGE_TYPE_DEFAULT = 0
MESSAGE_TYPE_REPLY = 19

# The default world.
GUILD_ID = 900
ADMIN_ROLE_ID = 901
BOT_ROLE_ID = 902
GENERAL_ID = 500
RANDOM_ID = 501
THREAD_ID = 510
VOICE_ID = 700
OWNER_ID = 1000
ALICE_ID = 1001
BOB_ID = 1002
BOT_USER_ID = 1100
APPLICATION_ID = 1200

JOINED_AT = "2024-01-01T00:00:00.000000+00:00"


def application_flags(enabled_privileged_intents: int) -> int:
    """Application flags announcing which privileged intents the portal enables."""
    flags = 0
    for intent, flag in _APP_FLAG_FOR_INTENT.items():
        if enabled_privileged_intents & intent:
            flags |= flag
    return flags


def snowflake_time_iso(snowflake: int) -> str:
    """The ISO-8601 timestamp encoded in a snowflake (for display fields)."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


# -- world model -----------------------------------------------------------


@dataclass(slots=True)
class FakeUser:
    """A Discord user (the bot is one, with ``bot=True``)."""

    id: int
    username: str
    global_name: str | None = None
    bot: bool = False


@dataclass(slots=True)
class FakeRole:
    """A guild role; the ``@everyone`` role has the guild's id."""

    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False


@dataclass(slots=True)
class FakeChannel:
    """A channel: guild text (0), DM (1), voice (2) or public thread (11)."""

    id: int
    type: int
    name: str
    guild_id: int | None = None
    parent_id: int | None = None
    position: int = 0
    topic: str | None = None
    recipient_ids: tuple[int, ...] = ()
    owner_id: int | None = None


@dataclass(slots=True)
class FakeMember:
    """A user's membership in one guild."""

    user_id: int
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = JOINED_AT


@dataclass(slots=True)
class FakeGuild:
    """A guild with its roles, channels (threads included), members and voice states."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, FakeRole] = field(default_factory=dict)
    channels: dict[int, FakeChannel] = field(default_factory=dict)
    members: dict[int, FakeMember] = field(default_factory=dict)
    voice_states: dict[int, int] = field(default_factory=dict)
    """user id -> voice channel id."""


@dataclass(frozen=True, slots=True)
class FakeAttachment:
    """A file a fake user attaches to a message (served back under ``/cdn/``)."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(slots=True)
class InteractionRecord:
    """An interaction the fake sent, and what the bot did with it.

    Attributes:
        payload: the INTERACTION_CREATE ``d`` the gateway sent.
        created_ns: ``time.monotonic_ns()`` when it was sent (ack deadline).
        callback_type: the first callback's type, ``None`` until acknowledged.
        original_message_id: the message the callback created or updated.
    """

    id: int
    token: str
    payload: dict[str, Any]
    created_ns: int
    callback_type: int | None = None
    original_message_id: int | None = None


class _SnowflakeFactory:
    """Snowflakes from the wall clock (display only), strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = (time.time_ns() // 1_000_000 - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, now)
        return self._last


class World:
    """Everything the fake Discord knows; shared by its REST API and gateway.

    Args:
        bot_id: the bot user's id.
        bot_name: the bot user's name.
        application_id: the application's id (distinct from the bot's by
            default so code mixing them up fails).
        application_name: shown in ``GET /oauth2/applications/@me``.
        max_stored_messages: bound of the message store; oldest first out.
        max_stored_interactions: bound of the interaction store.
        max_blob_bytes: bound of the attachment bytes kept for ``/cdn/``.
    """

    def __init__(
        self,
        *,
        bot_id: int = BOT_USER_ID,
        bot_name: str = "Familiar",
        application_id: int = APPLICATION_ID,
        application_name: str = "Familiar",
        max_stored_messages: int = 10_000,
        max_stored_interactions: int = 1_000,
        max_blob_bytes: int = 64 << 20,
    ) -> None:
        self.bot = FakeUser(bot_id, bot_name, bot=True)
        self.application_id = application_id
        self.application_name = application_name
        self.users: dict[int, FakeUser] = {bot_id: self.bot}
        self.guilds: dict[int, FakeGuild] = {}
        self.dm_channels: dict[int, FakeChannel] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        """Synced application commands per guild id (``None``: global)."""
        self.cdn_base = "http://127.0.0.1:0/cdn"
        """Set by the fake on start; attachment URLs point here."""
        self._messages: collections.OrderedDict[int, dict[str, Any]] = collections.OrderedDict()
        self._max_messages = max_stored_messages
        self.interactions: collections.OrderedDict[int, InteractionRecord] = (
            collections.OrderedDict()
        )
        self._max_interactions = max_stored_interactions
        self._blobs: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._blob_bytes = 0
        self._max_blob_bytes = max_blob_bytes
        self._ids = _SnowflakeFactory()

    @classmethod
    def default(cls, **kwargs: Any) -> World:
        """The default world (see the module docstring); ``kwargs`` go to ``World``."""
        world = cls(**kwargs)
        world.add_guild(GUILD_ID, "Test Guild", owner_id=OWNER_ID)
        world.add_role(GUILD_ID, ADMIN_ROLE_ID, "Admin", MANAGE_GUILD, position=2)
        world.add_text_channel(GUILD_ID, GENERAL_ID, "general", position=0)
        world.add_text_channel(GUILD_ID, RANDOM_ID, "random", position=1)
        world.add_thread(GUILD_ID, THREAD_ID, "chat-thread", parent_id=GENERAL_ID)
        world.add_voice_channel(GUILD_ID, VOICE_ID, "Lounge")
        world.add_user(OWNER_ID, "owner")
        world.add_member(GUILD_ID, ALICE_ID, "alice", role_ids=[ADMIN_ROLE_ID])
        world.add_member(GUILD_ID, BOB_ID, "bob")
        return world

    # -- building ----------------------------------------------------------

    def new_id(self) -> int:
        """A fresh snowflake, greater than every one handed out before."""
        return self._ids.next()

    def add_user(
        self, user_id: int, username: str, *, bot: bool = False, global_name: str | None = None
    ) -> FakeUser:
        """Add (or replace) a user."""
        user = FakeUser(user_id, username, global_name=global_name, bot=bot)
        self.users[user_id] = user
        return user

    def add_guild(
        self,
        guild_id: int,
        name: str,
        *,
        owner_id: int = OWNER_ID,
        everyone_permissions: int = EVERYONE_PERMISSIONS,
        bot_role_id: int | None = None,
    ) -> FakeGuild:
        """Add a guild with its ``@everyone`` role and the bot as a member.

        The bot gets a managed role (``bot_role_id``, default ``guild_id + 2``)
        with the usual permissions of an invited bot.
        """
        guild = FakeGuild(guild_id, name, owner_id)
        guild.roles[guild_id] = FakeRole(guild_id, "@everyone", everyone_permissions)
        role_id = bot_role_id if bot_role_id is not None else guild_id + 2
        guild.roles[role_id] = FakeRole(
            role_id, self.bot.username, BOT_ROLE_PERMISSIONS, position=1, managed=True
        )
        guild.members[self.bot.id] = FakeMember(self.bot.id, [role_id])
        self.guilds[guild_id] = guild
        return guild

    def add_role(
        self, guild_id: int, role_id: int, name: str, permissions: int, *, position: int = 1
    ) -> FakeRole:
        """Add a role to a guild."""
        role = FakeRole(role_id, name, permissions, position=position)
        self.guilds[guild_id].roles[role_id] = role
        return role

    def add_text_channel(
        self,
        guild_id: int,
        channel_id: int,
        name: str,
        *,
        position: int = 0,
        topic: str | None = None,
    ) -> FakeChannel:
        """Add a guild text channel (type 0)."""
        return self._add_channel(
            FakeChannel(channel_id, CHANNEL_TEXT, name, guild_id, position=position, topic=topic)
        )

    def add_voice_channel(
        self, guild_id: int, channel_id: int, name: str, *, position: int = 0
    ) -> FakeChannel:
        """Add a guild voice channel (type 2)."""
        return self._add_channel(
            FakeChannel(channel_id, CHANNEL_VOICE, name, guild_id, position=position)
        )

    def add_thread(
        self, guild_id: int, thread_id: int, name: str, *, parent_id: int, owner_id: int = ALICE_ID
    ) -> FakeChannel:
        """Add a public thread (type 11) under a text channel."""
        return self._add_channel(
            FakeChannel(
                thread_id,
                CHANNEL_PUBLIC_THREAD,
                name,
                guild_id,
                parent_id=parent_id,
                owner_id=owner_id,
            )
        )

    def _add_channel(self, channel: FakeChannel) -> FakeChannel:
        if channel.guild_id is None:
            raise ValueError("a guild channel needs a guild_id")
        self.guilds[channel.guild_id].channels[channel.id] = channel
        return channel

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        username: str | None = None,
        *,
        role_ids: Iterable[int] = (),
        nick: str | None = None,
    ) -> FakeMember:
        """Add a member to a guild, creating the user when ``username`` is given."""
        if username is not None and user_id not in self.users:
            self.add_user(user_id, username)
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}; pass a username to create it")
        member = FakeMember(user_id, list(role_ids), nick=nick)
        self.guilds[guild_id].members[user_id] = member
        return member

    def add_dm(self, user: int | str | FakeUser, *, channel_id: int | None = None) -> FakeChannel:
        """The DM channel (type 1) between the bot and ``user``, created on first use."""
        recipient = self.user(user)
        for channel in self.dm_channels.values():
            if channel.recipient_ids == (recipient.id,):
                return channel
        channel = FakeChannel(
            channel_id if channel_id is not None else self.new_id(),
            CHANNEL_DM,
            "",
            recipient_ids=(recipient.id,),
        )
        self.dm_channels[channel.id] = channel
        return channel

    # -- lookups -----------------------------------------------------------

    def user(self, ref: int | str | FakeUser) -> FakeUser:
        """Resolve a user by id, username or object.

        Raises:
            KeyError: no such user.
        """
        if isinstance(ref, FakeUser):
            return ref
        if isinstance(ref, int):
            try:
                return self.users[ref]
            except KeyError:
                raise KeyError(f"unknown user id {ref}") from None
        for user in self.users.values():
            if user.username == ref:
                return user
        raise KeyError(f"unknown user {ref!r}")

    def channel(self, channel_id: int) -> FakeChannel | None:
        """A guild channel, thread or DM channel by id."""
        if channel_id in self.dm_channels:
            return self.dm_channels[channel_id]
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild.channels[channel_id]
        return None

    def guild_of(self, channel: FakeChannel) -> FakeGuild | None:
        """The guild a channel belongs to (``None`` for DMs)."""
        return self.guilds.get(channel.guild_id) if channel.guild_id is not None else None

    def permissions(self, guild: FakeGuild, user_id: int) -> int:
        """Guild-level permissions of a member: @everyone | roles; all for owner/admin."""
        if user_id == guild.owner_id:
            return ALL_PERMISSIONS
        perms = guild.roles[guild.id].permissions
        member = guild.members.get(user_id)
        if member is not None:
            for role_id in member.role_ids:
                role = guild.roles.get(role_id)
                if role is not None:
                    perms |= role.permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    # -- messages and blobs --------------------------------------------------

    def store_message(self, message: dict[str, Any]) -> None:
        """Remember a message (oldest dropped beyond the bound)."""
        mid = int(message["id"])
        self._messages[mid] = message
        self._messages.move_to_end(mid)
        while len(self._messages) > self._max_messages:
            self._messages.popitem(last=False)

    def message(self, message_id: int) -> dict[str, Any] | None:
        """A stored message by id."""
        return self._messages.get(message_id)

    def delete_message(self, message_id: int) -> dict[str, Any] | None:
        """Forget a stored message; returns it."""
        return self._messages.pop(message_id, None)

    def messages_in(self, channel_id: int) -> list[dict[str, Any]]:
        """Stored messages of one channel, oldest first."""
        return [m for m in self._messages.values() if int(m["channel_id"]) == channel_id]

    def store_interaction(self, record: InteractionRecord) -> None:
        """Remember an interaction (oldest dropped beyond the bound)."""
        self.interactions[record.id] = record
        while len(self.interactions) > self._max_interactions:
            self.interactions.popitem(last=False)

    def interaction_by_token(self, token: str) -> InteractionRecord | None:
        """The interaction whose token is ``token``."""
        for record in self.interactions.values():
            if record.token == token:
                return record
        return None

    def attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        """Store uploaded bytes and return the attachment object pointing at ``/cdn/``."""
        attachment_id = self.new_id()
        self._blobs[attachment_id] = data
        self._blob_bytes += len(data)
        while self._blob_bytes > self._max_blob_bytes and len(self._blobs) > 1:
            _, dropped = self._blobs.popitem(last=False)
            self._blob_bytes -= len(dropped)
        url = f"{self.cdn_base}/attachments/{channel_id}/{attachment_id}/{filename}"
        payload: dict[str, Any] = {
            "id": str(attachment_id),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
        }
        if content_type:
            payload["content_type"] = content_type
        return payload

    def blob(self, attachment_id: int) -> bytes | None:
        """Bytes of a stored attachment."""
        return self._blobs.get(attachment_id)
