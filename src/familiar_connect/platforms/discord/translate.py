"""Discord messages in, our events out: who spoke, where, and what they said.

Pure functions over discord.py objects: no sends, no awaits. Mentions are
resolved to display names, so the model sees "@Alice", never
``<@1234>``; attachments, embeds and stickers become a short note instead of
being dropped, so a message with only an image is still something the
familiar can answer.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection

import discord

from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage

__all__ = [
    "author_of",
    "conversation_key",
    "describe_extras",
    "ignore_reason",
    "is_reply_to",
    "resolve_mentions",
    "to_text_message",
]

_MENTION = re.compile(r"<(@!?|@&|#)(\d{1,20})>")
_MAX_EXTRAS = 10
_MAX_EXTRA_NAME_CHARS = 100
_USER_MESSAGE_TYPES = frozenset({discord.MessageType.default, discord.MessageType.reply})


def author_of(user: discord.abc.User, *, operator_ids: Collection[str]) -> Author:
    """Our :class:`Author` for a Discord user or member."""
    display = getattr(user, "display_name", None) or user.name
    return Author(
        Platform.DISCORD,
        user_id=str(user.id),
        name=user.name,
        display_name=display if display != user.name else None,
        is_operator=str(user.id) in operator_ids,
        is_bot=user.bot,
    )


def conversation_key(
    channel: discord.abc.Messageable, guild: discord.Guild | None
) -> ConversationKey:
    """One conversation per channel, thread or DM."""
    channel_id = getattr(channel, "id", None)
    return ConversationKey(
        Platform.DISCORD,
        str(channel_id),
        guild_id=str(guild.id) if guild is not None else None,
    )


def ignore_reason(message: discord.Message, *, bot_user_id: int) -> str | None:
    """Why a message must not reach the orchestrator, or None.

    The familiar's own messages, other bots' and webhooks' are ignored so two
    bots can never talk each other into a loop; system messages (joins, pins)
    are not conversation.
    """
    if message.author.id == bot_user_id:
        return "own_message"
    if message.webhook_id is not None:
        return "webhook"
    if message.author.bot:
        return "bot"
    if message.type not in _USER_MESSAGE_TYPES:
        return "system_message"
    return None


def resolve_mentions(message: discord.Message) -> str:
    """The content with user, role and channel mentions written as names (``@Alice``, ``#general``).

    Our own resolution rather than ``clean_content``: it does not depend on the
    id's length and leaves no ``<@id>`` the model would have to guess about.
    """
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role.name for role in message.role_mentions}
    guild = message.guild

    def name_of(match: re.Match[str]) -> str:
        kind, target = match.group(1), int(match.group(2))
        if kind == "@&":
            role = roles.get(target) or (
                getattr(guild.get_role(target), "name", None) if guild else None
            )
            return f"@{role}" if role else "@role"
        if kind == "#":
            channel = guild.get_channel_or_thread(target) if guild else None
            return f"#{channel.name}" if channel is not None else "#channel"
        member = guild.get_member(target) if guild else None
        name = users.get(target) or (member.display_name if member is not None else None)
        return f"@{name}" if name else "@someone"

    return _MENTION.sub(name_of, message.content)


def is_reply_to(message: discord.Message, user_id: int) -> bool:
    """Whether ``message`` replies to a message written by ``user_id``."""
    reference = message.reference
    if reference is None:
        return False
    resolved = reference.resolved
    return isinstance(resolved, discord.Message) and resolved.author.id == user_id


def describe_extras(message: discord.Message) -> str | None:
    """A short note for attachments, embeds and stickers, or None when there are none."""
    notes: list[str] = []
    for attachment in message.attachments[:_MAX_EXTRAS]:
        kind = attachment.content_type or "file"
        notes.append(
            f"{attachment.filename[:_MAX_EXTRA_NAME_CHARS]} ({kind}, {attachment.size} bytes)"
        )
    for embed in message.embeds[:_MAX_EXTRAS]:
        title = (embed.title or embed.description or embed.url or "link preview")[
            :_MAX_EXTRA_NAME_CHARS
        ]
        notes.append(f"embed: {title}")
    for sticker in message.stickers[:_MAX_EXTRAS]:
        notes.append(f"sticker: {sticker.name[:_MAX_EXTRA_NAME_CHARS]}")
    if not notes:
        return None
    return "[attached: " + "; ".join(notes) + "]"


def to_text_message(
    message: discord.Message,
    *,
    bot_user_id: int,
    operator_ids: Collection[str],
    received_ns: int | None = None,
) -> TextMessage:
    """Translate a user's message; mentions resolved to names, extras described."""
    mentions_bot = any(user.id == bot_user_id for user in message.mentions)
    return TextMessage(
        key=conversation_key(message.channel, message.guild),
        author=author_of(message.author, operator_ids=operator_ids),
        text=resolve_mentions(message),
        message_id=str(message.id),
        received_ns=received_ns if received_ns is not None else time.monotonic_ns(),
        mentions_familiar=mentions_bot,
        reply_to_familiar=is_reply_to(message, bot_user_id),
        attachments_note=describe_extras(message),
        created_at=message.created_at,
    )
