"""EventSub payloads for the fake Twitch, following Twitch's documented samples.

Each ``*_event`` builder returns the ``payload.event`` object of one subscription type with every
key present (``None`` where Twitch sends null), because twitchio's models index most keys
directly. :func:`notification`, :func:`welcome`, :func:`keepalive`, :func:`reconnect_message`
and :func:`revocation` build whole websocket frames (``{"metadata": ..., "payload": ...}``), in
the shapes of the Twitch CLI mock server (``internal/events/websocket/mock_server``).

Users are :class:`TwitchUser` values; the fake's default cast lives in :data:`STREAMER`,
:data:`BOT`, :data:`ALICE`, :data:`BOB` and :data:`RAIDER`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ALICE",
    "BOB",
    "BOT",
    "RAIDER",
    "STREAMER",
    "TwitchUser",
    "ad_break_event",
    "chat_message_event",
    "cheer_event",
    "follow_event",
    "gift_event",
    "keepalive",
    "notification",
    "raid_event",
    "reconnect_message",
    "redemption_event",
    "resub_event",
    "revocation",
    "sub_event",
    "subscription_object",
    "timestamp",
    "user_json",
    "welcome",
]


@dataclass(frozen=True, slots=True)
class TwitchUser:
    """A Twitch account: numeric id, lowercase login, display name."""

    user_id: str
    login: str
    display_name: str


STREAMER = TwitchUser("1000", "streamer", "Streamer")
BOT = TwitchUser("2000", "familiarbot", "FamiliarBot")
ALICE = TwitchUser("3001", "alice", "Alice")
BOB = TwitchUser("3002", "bob", "Bob")
RAIDER = TwitchUser("4001", "raider", "Raider")


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 with nanosecond-style precision and a ``Z``, as Twitch writes them."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _user(prefix: str, user: TwitchUser | None) -> dict[str, Any]:
    return {
        f"{prefix}_id": user.user_id if user else None,
        f"{prefix}_login": user.login if user else None,
        f"{prefix}_name": user.display_name if user else None,
    }


def user_json(user: TwitchUser) -> dict[str, Any]:
    """A ``GET /helix/users`` entry."""
    return {
        "id": user.user_id,
        "login": user.login,
        "display_name": user.display_name,
        "type": "",
        "broadcaster_type": "",
        "description": "",
        "profile_image_url": "https://static-cdn.jtvnw.net/jtv_user_pictures/x.png",
        "offline_image_url": "",
        "view_count": 0,
        "created_at": "2016-12-14T20:32:28Z",
    }


# --- events -----------------------------------------------------------------------------


def chat_message_event(
    *,
    broadcaster: TwitchUser,
    chatter: TwitchUser,
    text: str,
    message_id: str | None = None,
    mentions: Sequence[TwitchUser] = (),
    reply_to: Mapping[str, Any] | None = None,
    bits: int | None = None,
) -> dict[str, Any]:
    """``channel.chat.message`` v1; ``mentions`` are prepended as ``@login`` fragments."""
    fragments: list[dict[str, Any]] = []
    parts: list[str] = []
    for user in mentions:
        mention_text = f"@{user.login}"
        fragments.append(
            {
                "type": "mention",
                "text": mention_text,
                "cheermote": None,
                "emote": None,
                "mention": {
                    "user_id": user.user_id,
                    "user_name": user.display_name,
                    "user_login": user.login,
                },
            }
        )
        fragments.append(
            {"type": "text", "text": " ", "cheermote": None, "emote": None, "mention": None}
        )
        parts.append(mention_text + " ")
    fragments.append(
        {"type": "text", "text": text, "cheermote": None, "emote": None, "mention": None}
    )
    parts.append(text)
    return {
        **_user("broadcaster_user", broadcaster),
        **_user("chatter_user", chatter),
        "message_id": message_id or str(uuid.uuid4()),
        "message": {"text": "".join(parts), "fragments": fragments},
        "color": "#00FF7F",
        "badges": [{"set_id": "subscriber", "id": "12", "info": "16"}],
        "message_type": "text",
        "cheer": {"bits": bits} if bits else None,
        "reply": dict(reply_to) if reply_to is not None else None,
        "channel_points_custom_reward_id": None,
        "channel_points_animation_id": None,
        **_user("source_broadcaster_user", None),
        "source_message_id": None,
        "source_badges": None,
        "is_source_only": None,
    }


def follow_event(*, broadcaster: TwitchUser, user: TwitchUser) -> dict[str, Any]:
    """``channel.follow`` v2."""
    return {
        **_user("user", user),
        **_user("broadcaster_user", broadcaster),
        "followed_at": timestamp(),
    }


def sub_event(
    *, broadcaster: TwitchUser, user: TwitchUser, tier: str = "1000", is_gift: bool = False
) -> dict[str, Any]:
    """``channel.subscribe`` v1 (also sent once per recipient of gifted subs)."""
    return {
        **_user("user", user),
        **_user("broadcaster_user", broadcaster),
        "tier": tier,
        "is_gift": is_gift,
    }


def resub_event(
    *,
    broadcaster: TwitchUser,
    user: TwitchUser,
    text: str = "",
    tier: str = "1000",
    cumulative_months: int = 15,
    streak_months: int | None = 1,
    duration_months: int = 1,
) -> dict[str, Any]:
    """``channel.subscription.message`` v1."""
    return {
        **_user("user", user),
        **_user("broadcaster_user", broadcaster),
        "tier": tier,
        "message": {"text": text, "emotes": []},
        "cumulative_months": cumulative_months,
        "streak_months": streak_months,
        "duration_months": duration_months,
    }


def gift_event(
    *,
    broadcaster: TwitchUser,
    user: TwitchUser | None,
    total: int = 1,
    tier: str = "1000",
    cumulative_total: int | None = 10,
) -> dict[str, Any]:
    """``channel.subscription.gift`` v1; ``user=None`` is an anonymous gifter."""
    return {
        **_user("user", user),
        **_user("broadcaster_user", broadcaster),
        "total": total,
        "tier": tier,
        "cumulative_total": cumulative_total if user is not None else None,
        "is_anonymous": user is None,
    }


def cheer_event(
    *, broadcaster: TwitchUser, user: TwitchUser | None, bits: int, text: str = ""
) -> dict[str, Any]:
    """``channel.cheer`` v1; ``user=None`` is an anonymous cheer."""
    return {
        "is_anonymous": user is None,
        **_user("user", user),
        **_user("broadcaster_user", broadcaster),
        "message": text,
        "bits": bits,
    }


def raid_event(*, broadcaster: TwitchUser, raider: TwitchUser, viewers: int) -> dict[str, Any]:
    """``channel.raid`` v1 (into ``broadcaster``)."""
    return {
        **_user("from_broadcaster_user", raider),
        **_user("to_broadcaster_user", broadcaster),
        "viewers": viewers,
    }


def redemption_event(
    *,
    broadcaster: TwitchUser,
    user: TwitchUser,
    title: str,
    user_input: str = "",
    reward_id: str | None = None,
    cost: int = 100,
) -> dict[str, Any]:
    """``channel.channel_points_custom_reward_redemption.add`` v1."""
    return {
        "id": str(uuid.uuid4()),
        **_user("broadcaster_user", broadcaster),
        **_user("user", user),
        "user_input": user_input,
        "status": "unfulfilled",
        "reward": {
            "id": reward_id or str(uuid.uuid5(uuid.NAMESPACE_URL, title)),
            "title": title,
            "cost": cost,
            "prompt": "",
        },
        "redeemed_at": timestamp(),
    }


def ad_break_event(
    *, broadcaster: TwitchUser, duration_s: int = 60, automatic: bool = False
) -> dict[str, Any]:
    """``channel.ad_break.begin`` v1."""
    return {
        "duration_seconds": duration_s,
        "started_at": timestamp(),
        "is_automatic": automatic,
        **_user("broadcaster_user", broadcaster),
        **_user("requester_user", broadcaster),
    }


# --- frames -----------------------------------------------------------------------------


def subscription_object(
    *,
    sub_id: str,
    sub_type: str,
    version: str,
    condition: Mapping[str, Any],
    session_id: str,
    status: str = "enabled",
    created_at: str | None = None,
) -> dict[str, Any]:
    """A subscription as Helix returns it and as notifications carry it."""
    return {
        "id": sub_id,
        "status": status,
        "type": sub_type,
        "version": version,
        "cost": 0,
        "condition": dict(condition),
        "transport": {"method": "websocket", "session_id": session_id},
        "created_at": created_at or timestamp(),
    }


def _metadata(message_type: str, **extra: str) -> dict[str, Any]:
    return {
        "message_id": str(uuid.uuid4()),
        "message_type": message_type,
        "message_timestamp": timestamp(),
        **extra,
    }


def welcome(session_id: str, *, keepalive_s: int) -> dict[str, Any]:
    """``session_welcome``."""
    return {
        "metadata": _metadata("session_welcome"),
        "payload": {
            "session": {
                "id": session_id,
                "status": "connected",
                "connected_at": timestamp(),
                "keepalive_timeout_seconds": keepalive_s,
                "reconnect_url": None,
                "recovery_url": None,
            }
        },
    }


def keepalive() -> dict[str, Any]:
    """``session_keepalive``."""
    return {"metadata": _metadata("session_keepalive"), "payload": {}}


def reconnect_message(session_id: str, reconnect_url: str) -> dict[str, Any]:
    """``session_reconnect`` pointing at ``reconnect_url``."""
    return {
        "metadata": _metadata("session_reconnect"),
        "payload": {
            "session": {
                "id": session_id,
                "status": "reconnecting",
                "keepalive_timeout_seconds": None,
                "reconnect_url": reconnect_url,
                "connected_at": timestamp(),
                "recovery_url": None,
            }
        },
    }


def notification(
    subscription: Mapping[str, Any], event: Mapping[str, Any], *, message_id: str | None = None
) -> dict[str, Any]:
    """A ``notification`` frame for ``subscription`` carrying ``event``."""
    metadata = _metadata(
        "notification",
        subscription_type=subscription["type"],
        subscription_version=subscription["version"],
    )
    if message_id is not None:
        metadata["message_id"] = message_id
    return {"metadata": metadata, "payload": {"subscription": dict(subscription), "event": event}}


def revocation(subscription: Mapping[str, Any], *, status: str) -> dict[str, Any]:
    """A ``revocation`` frame; ``status`` is the reason (``"authorization_revoked"``...)."""
    return {
        "metadata": _metadata(
            "revocation",
            subscription_type=subscription["type"],
            subscription_version=subscription["version"],
        ),
        "payload": {"subscription": {**subscription, "status": status}},
    }
