"""JSON payloads of the fake Discord, in the shapes discord.py 2.7.1 parses.

Each builder fills the keys discord.py reads with ``data[...]`` (a missing one
is a ``KeyError`` deep inside the client) and the usual optional ones, from
the shared :class:`~tests.fakes.discord_world.World`. Besides the objects
(user, role, member, channel, guild, voice state, message) this module builds
interaction payloads (slash command data with options and ``resolved``,
component clicks) and applies Discord's intent rules to outgoing events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.fakes.discord_world import (
    CHANNEL_DM,
    CHANNEL_PUBLIC_THREAD,
    CHANNEL_TEXT,
    CHANNEL_VOICE,
    EVERYONE_PERMISSIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILD_VOICE_STATES,
    INTENT_MESSAGE_CONTENT,
    JOINED_AT,
    MESSAGE_TYPE_DEFAULT,
    MESSAGE_TYPE_REPLY,
    FakeAttachment,
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    World,
    snowflake_time_iso,
)

__all__ = [
    "apply_intents",
    "channel_json",
    "component_type",
    "find_command",
    "gateway_shape",
    "guild_create_json",
    "guild_json",
    "interaction_json",
    "member_json",
    "message_json",
    "rest_shape",
    "role_json",
    "slash_command_data",
    "user_json",
    "voice_state_json",
]

ATTACHMENT_SIZE_LIMIT = 25 << 20
"""``attachment_size_limit`` of interactions (bytes), Discord's default tier."""

# -- objects -----------------------------------------------------------------


def user_json(user: FakeUser) -> dict[str, Any]:
    """A user object."""
    return {
        "id": str(user.id),
        "username": user.username,
        "discriminator": "0",
        "global_name": user.global_name,
        "avatar": None,
        "bot": user.bot,
        "public_flags": 0,
    }


def role_json(role: FakeRole) -> dict[str, Any]:
    """A role object."""
    return {
        "id": str(role.id),
        "name": role.name,
        "color": 0,
        "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
        "hoist": False,
        "icon": None,
        "unicode_emoji": None,
        "position": role.position,
        "permissions": str(role.permissions),
        "managed": role.managed,
        "mentionable": False,
        "flags": 0,
    }


def member_json(
    world: World,
    guild: FakeGuild,
    member: FakeMember,
    *,
    with_user: bool = True,
    with_permissions: bool = False,
) -> dict[str, Any]:
    """A guild member object (``with_permissions`` as in interactions)."""
    payload: dict[str, Any] = {
        "roles": [str(r) for r in member.role_ids],
        "nick": member.nick,
        "avatar": None,
        "banner": None,
        "joined_at": member.joined_at,
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if with_user:
        payload["user"] = user_json(world.users[member.user_id])
    if with_permissions:
        payload["permissions"] = str(world.permissions(guild, member.user_id))
    return payload


def channel_json(world: World, channel: FakeChannel) -> dict[str, Any]:
    """A channel object of the channel's type."""
    if channel.type == CHANNEL_DM:
        return {
            "id": str(channel.id),
            "type": CHANNEL_DM,
            "last_message_id": None,
            "recipients": [user_json(world.users[uid]) for uid in channel.recipient_ids],
            "flags": 0,
        }
    payload: dict[str, Any] = {
        "id": str(channel.id),
        "type": channel.type,
        "guild_id": str(channel.guild_id),
        "name": channel.name,
        "position": channel.position,
        "permission_overwrites": [],
        "nsfw": False,
        "parent_id": str(channel.parent_id) if channel.parent_id is not None else None,
        "flags": 0,
    }
    if channel.type == CHANNEL_TEXT:
        payload.update(topic=channel.topic, last_message_id=None, rate_limit_per_user=0)
    elif channel.type == CHANNEL_VOICE:
        payload.update(bitrate=64000, user_limit=0, rtc_region=None, rate_limit_per_user=0)
    elif channel.type == CHANNEL_PUBLIC_THREAD:
        payload.pop("position")
        payload.pop("permission_overwrites")
        payload.update(
            owner_id=str(channel.owner_id),
            last_message_id=None,
            rate_limit_per_user=0,
            message_count=0,
            member_count=1,
            total_message_sent=0,
            thread_metadata={
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": JOINED_AT,
                "locked": False,
                "create_timestamp": JOINED_AT,
            },
        )
    return payload


def guild_json(world: World, guild: FakeGuild) -> dict[str, Any]:
    """A guild object (REST shape: scalars and roles, no channels or members)."""
    return {
        "id": str(guild.id),
        "name": guild.name,
        "icon": None,
        "splash": None,
        "discovery_splash": None,
        "banner": None,
        "description": None,
        "owner_id": str(guild.owner_id),
        "afk_channel_id": None,
        "afk_timeout": 300,
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "roles": [role_json(r) for r in guild.roles.values()],
        "emojis": [],
        "stickers": [],
        "features": [],
        "mfa_level": 0,
        "system_channel_id": None,
        "system_channel_flags": 0,
        "rules_channel_id": None,
        "public_updates_channel_id": None,
        "safety_alerts_channel_id": None,
        "vanity_url_code": None,
        "premium_tier": 0,
        "premium_subscription_count": 0,
        "preferred_locale": "en-US",
        "nsfw_level": 0,
        "premium_progress_bar_enabled": False,
        "max_members": 500000,
        "max_video_channel_users": 25,
    }


def voice_state_json(
    world: World, guild: FakeGuild, user_id: int, channel_id: int | None, *, session_id: str
) -> dict[str, Any]:
    """A voice state (in GUILD_CREATE and VOICE_STATE_UPDATE)."""
    payload: dict[str, Any] = {
        "guild_id": str(guild.id),
        "channel_id": str(channel_id) if channel_id is not None else None,
        "user_id": str(user_id),
        "session_id": session_id,
        "deaf": False,
        "mute": False,
        "self_deaf": False,
        "self_mute": False,
        "self_video": False,
        "suppress": False,
        "request_to_speak_timestamp": None,
    }
    member = guild.members.get(user_id)
    if member is not None:
        payload["member"] = member_json(world, guild, member)
    return payload


def guild_create_json(
    world: World, guild: FakeGuild, *, include_all_members: bool
) -> dict[str, Any]:
    """A GUILD_CREATE ``d``: the full guild.

    Without the GUILD_MEMBERS intent Discord sends only the bot's own member
    and members in voice; ``member_count`` is always the true count.
    """
    payload = guild_json(world, guild)
    in_voice = set(guild.voice_states)
    members = [
        member_json(world, guild, m)
        for m in guild.members.values()
        if include_all_members or m.user_id == world.bot.id or m.user_id in in_voice
    ]
    payload.update(
        unavailable=False,
        large=False,
        joined_at=JOINED_AT,
        member_count=len(guild.members),
        members=members,
        channels=[
            channel_json(world, c)
            for c in guild.channels.values()
            if c.type != CHANNEL_PUBLIC_THREAD
        ],
        threads=[
            channel_json(world, c)
            for c in guild.channels.values()
            if c.type == CHANNEL_PUBLIC_THREAD
        ],
        voice_states=[
            {
                k: v
                for k, v in voice_state_json(
                    world, guild, uid, cid, session_id=f"voice-{uid}"
                ).items()
                if k not in ("guild_id", "member")
            }
            for uid, cid in guild.voice_states.items()
        ],
        presences=[],
        stage_instances=[],
        guild_scheduled_events=[],
        soundboard_sounds=[],
        embedded_activities=[],
        application_command_counts={},
    )
    return payload


def message_json(
    world: World,
    *,
    message_id: int,
    channel: FakeChannel,
    author: FakeUser,
    content: str,
    mentions: Sequence[FakeUser] = (),
    mention_everyone: bool = False,
    mention_role_ids: Sequence[int] = (),
    reply_to: int | None = None,
    attachments: Sequence[Mapping[str, Any]] = (),
    embeds: Sequence[Mapping[str, Any]] = (),
    components: Sequence[Mapping[str, Any]] = (),
    flags: int = 0,
    nonce: str | int | None = None,
    webhook_id: int | None = None,
    interaction_metadata: Mapping[str, Any] | None = None,
    gateway: bool = False,
) -> dict[str, Any]:
    """A message object.

    Args:
        gateway: add what MESSAGE_CREATE carries beyond the REST shape: the
            author's ``member`` and each mention's ``member`` in guilds.
        reply_to: id of the message replied to; it becomes
            ``message_reference`` and ``referenced_message`` (``None`` when
            that message is unknown, as for a deleted one) and type 19.
    """
    guild = world.guild_of(channel)
    payload: dict[str, Any] = {
        "id": str(message_id),
        "type": MESSAGE_TYPE_REPLY if reply_to is not None else MESSAGE_TYPE_DEFAULT,
        "channel_id": str(channel.id),
        "author": user_json(author),
        "content": content,
        "timestamp": snowflake_time_iso(message_id),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": mention_everyone,
        "mentions": [],
        "mention_roles": [str(r) for r in mention_role_ids],
        "attachments": [dict(a) for a in attachments],
        "embeds": [dict(e) for e in embeds],
        "components": [dict(c) for c in components],
        "pinned": False,
        "flags": flags,
    }
    if guild is not None:
        payload["guild_id"] = str(guild.id)
    if nonce is not None:
        payload["nonce"] = nonce
    if webhook_id is not None:
        payload["webhook_id"] = str(webhook_id)
        payload["application_id"] = str(world.application_id)
    if interaction_metadata is not None:
        payload["interaction_metadata"] = dict(interaction_metadata)
    for user in mentions:
        mention = user_json(user)
        if gateway and guild is not None and user.id in guild.members:
            mention["member"] = member_json(world, guild, guild.members[user.id], with_user=False)
        payload["mentions"].append(mention)
    if gateway and guild is not None and author.id in guild.members:
        payload["member"] = member_json(world, guild, guild.members[author.id], with_user=False)
    if reply_to is not None:
        referenced = world.message(reply_to)
        payload["message_reference"] = {
            "type": 0,
            "message_id": str(reply_to),
            "channel_id": str(channel.id),
            **({"guild_id": str(guild.id)} if guild is not None else {}),
        }
        payload["referenced_message"] = (
            {k: v for k, v in referenced.items() if k not in ("referenced_message", "member")}
            if referenced is not None
            else None
        )
    return payload


def rest_shape(message: Mapping[str, Any]) -> dict[str, Any]:
    """A MESSAGE_CREATE payload as REST returns it (no ``member`` keys)."""
    stored = {k: v for k, v in message.items() if k != "member"}
    stored["mentions"] = [
        {k: v for k, v in m.items() if k != "member"} for m in message.get("mentions", [])
    ]
    return stored


def gateway_shape(world: World, message: Mapping[str, Any]) -> dict[str, Any]:
    """A REST message as MESSAGE_CREATE carries it: adds the author's ``member``."""
    event = dict(message)
    guild_id = message.get("guild_id")
    guild = world.guilds.get(int(guild_id)) if guild_id is not None else None
    author_id = int(message["author"]["id"])
    if guild is not None and author_id in guild.members:
        event["member"] = member_json(world, guild, guild.members[author_id], with_user=False)
    return event


# -- intents -----------------------------------------------------------------


def apply_intents(world: World, intents: int, t: str, d: dict[str, Any]) -> dict[str, Any] | None:
    """Discord's intent rules for one event: ``None`` (not sent), a redacted copy, or ``d``.

    MESSAGE_* need GUILD_MESSAGES (guild) or DIRECT_MESSAGES (DM); without
    MESSAGE_CONTENT a guild message loses content, embeds, attachments and
    components unless the bot wrote it or is mentioned. Other users' voice
    states need GUILD_VOICE_STATES; GUILD_MEMBER_* need GUILD_MEMBERS.
    """
    bot_id = str(world.bot.id)
    if t in ("MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"):
        in_guild = "guild_id" in d
        if not intents & (INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES):
            return None
        if t != "MESSAGE_DELETE" and in_guild and not intents & INTENT_MESSAGE_CONTENT:
            author = (d.get("author") or {}).get("id")
            mentioned = any(m.get("id") == bot_id for m in d.get("mentions") or [])
            if author != bot_id and not mentioned:
                return {**d, "content": "", "embeds": [], "attachments": [], "components": []}
    elif t == "VOICE_STATE_UPDATE":
        if d.get("user_id") != bot_id and not intents & INTENT_GUILD_VOICE_STATES:
            return None
    elif t.startswith("GUILD_MEMBER_") and not intents & INTENT_GUILD_MEMBERS:
        return None
    return d


# -- interactions --------------------------------------------------------------


def find_command(world: World, name: str, guild_id: int | None) -> dict[str, Any]:
    """A synced command by name: the guild's first, then the global ones.

    Raises:
        LookupError: never synced.
    """
    scopes = [guild_id, None] if guild_id is not None else [None]
    for scope in scopes:
        for command in world.commands.get(scope, []):
            if command.get("name") == name:
                return command
    raise LookupError(f"/{name} was never synced (guild {guild_id} or global)")


def slash_command_data(
    world: World,
    channel: FakeChannel,
    name: str,
    options: Mapping[str, Any] | None,
    subcommand: str | None,
) -> dict[str, Any]:
    """The ``data`` of a slash-command interaction, typed from the synced schema.

    Args:
        world: the world (synced commands, users, roles, channels).
        channel: where the command runs.
        name: the command's name.
        options: option name -> value (user id/name, channel id, role id or
            :class:`FakeAttachment` for snowflake types).
        subcommand: ``"sub"`` or ``"group sub"``.

    Raises:
        LookupError: the command, a subcommand or a referenced object is unknown.
    """
    guild = world.guild_of(channel)
    command = find_command(world, name, guild.id if guild is not None else None)
    data_options: list[dict[str, Any]] = []
    container = data_options
    schema: list[dict[str, Any]] = list(command.get("options") or [])
    for part in (subcommand or "").split():
        spec = next((o for o in schema if o.get("name") == part and o.get("type") in (1, 2)), None)
        if spec is None:
            raise LookupError(f"/{name} has no subcommand {part!r} in its synced schema")
        entry: dict[str, Any] = {"name": part, "type": spec["type"], "options": []}
        container.append(entry)
        container = entry["options"]
        schema = list(spec.get("options") or [])
    resolved: dict[str, dict[str, Any]] = {}
    for option_name, value in (options or {}).items():
        spec = next((o for o in schema if o.get("name") == option_name), None)
        option_type = int(spec["type"]) if spec is not None else _infer_option_type(value)
        container.append(
            {
                "name": option_name,
                "type": option_type,
                "value": _option_value(world, option_type, value, channel, guild, resolved),
            }
        )
    data: dict[str, Any] = {
        "id": command["id"],
        "name": command["name"],
        "type": int(command.get("type", 1)),
        "options": data_options,
    }
    if "guild_id" in command:
        data["guild_id"] = command["guild_id"]
    if resolved:
        data["resolved"] = resolved
    return data


def _infer_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    if isinstance(value, FakeAttachment):
        return 11
    return 3


def _option_value(
    world: World,
    option_type: int,
    value: Any,
    channel: FakeChannel,
    guild: FakeGuild | None,
    resolved: dict[str, dict[str, Any]],
) -> Any:
    """Encode one option value, adding ``resolved`` entries for snowflake types."""
    if option_type == 3:
        return str(value)
    if option_type == 4:
        return int(value)
    if option_type == 5:
        return bool(value)
    if option_type == 10:
        return float(value)
    if option_type == 11:
        attachment = value if isinstance(value, FakeAttachment) else FakeAttachment(*value)
        payload = world.attachment(
            channel.id, attachment.filename, attachment.data, attachment.content_type
        )
        resolved.setdefault("attachments", {})[payload["id"]] = payload
        return payload["id"]
    is_role = option_type == 8 or (
        option_type == 9 and guild is not None and isinstance(value, int) and value in guild.roles
    )
    if is_role:
        if guild is None or int(value) not in guild.roles:
            raise LookupError(f"unknown role {value!r}")
        role = guild.roles[int(value)]
        resolved.setdefault("roles", {})[str(role.id)] = role_json(role)
        return str(role.id)
    if option_type in (6, 9):
        user = world.user(value)
        resolved.setdefault("users", {})[str(user.id)] = user_json(user)
        if guild is not None and user.id in guild.members:
            resolved.setdefault("members", {})[str(user.id)] = member_json(
                world, guild, guild.members[user.id], with_user=False, with_permissions=True
            )
        return str(user.id)
    if option_type == 7:
        target = world.channel(int(value))
        if target is None:
            raise LookupError(f"unknown channel {value!r}")
        payload = channel_json(world, target)
        bot_perms = world.permissions(guild, world.bot.id) if guild is not None else None
        payload["permissions"] = str(bot_perms if bot_perms is not None else EVERYONE_PERMISSIONS)
        resolved.setdefault("channels", {})[str(target.id)] = payload
        return str(target.id)
    return value


def component_type(components: Sequence[Any], custom_id: str, depth: int = 0) -> int | None:
    """The type of the component with ``custom_id``, searching nested rows (bounded depth)."""
    if depth > 8:
        return None
    for component in components:
        if not isinstance(component, Mapping):
            continue
        if component.get("custom_id") == custom_id:
            return int(component["type"])
        children = list(component.get("components") or [])
        if isinstance(component.get("accessory"), Mapping):
            children.append(component["accessory"])
        found = component_type(children, custom_id, depth + 1)
        if found is not None:
            return found
    return None


def interaction_json(
    world: World,
    *,
    interaction_id: int,
    token: str,
    interaction_type: int,
    data: Mapping[str, Any],
    user: FakeUser,
    channel: FakeChannel,
    message: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An INTERACTION_CREATE ``d``: ``member`` (with permissions) in guilds, ``user`` in DMs.

    Raises:
        LookupError: the user is not a member of the channel's guild.
    """
    guild = world.guild_of(channel)
    channel_payload = channel_json(world, channel)
    payload: dict[str, Any] = {
        "id": str(interaction_id),
        "application_id": str(world.application_id),
        "type": interaction_type,
        "data": dict(data),
        "channel_id": str(channel.id),
        "channel": channel_payload,
        "token": token,
        "version": 1,
        "locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
    }
    if guild is not None:
        if user.id not in guild.members:
            raise LookupError(f"{user.username} is not a member of guild {guild.id}")
        member = member_json(world, guild, guild.members[user.id], with_permissions=True)
        channel_payload["permissions"] = member["permissions"]
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": "en-US", "features": []},
            guild_locale="en-US",
            member=member,
            app_permissions=str(world.permissions(guild, world.bot.id)),
            context=0,
            authorizing_integration_owners={"0": str(guild.id)},
        )
    else:
        if channel.type != CHANNEL_DM:
            raise LookupError(f"channel {channel.id} is neither in a guild nor a DM")
        payload.update(
            user=user_json(user),
            app_permissions=str(EVERYONE_PERMISSIONS),
            context=1,
            authorizing_integration_owners={"0": "0"},
        )
    if message is not None:
        payload["message"] = dict(message)
    return payload
