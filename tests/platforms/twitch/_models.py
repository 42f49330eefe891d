"""twitchio event models built from the fake's payloads, for the sans-I/O unit tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from familiar_connect.platforms.twitch.client import subscription_payload  # noqa: F401 - loads twitchio quietly
from tests.fakes.twitch_payloads import notification, subscription_object

SUB_TYPES = {
    "chat": "channel.chat.message",
    "follow": "channel.follow",
    "sub": "channel.subscribe",
    "resub": "channel.subscription.message",
    "gift": "channel.subscription.gift",
    "cheer": "channel.cheer",
    "raid": "channel.raid",
    "redemption": "channel.channel_points_custom_reward_redemption.add",
    "ad_break": "channel.ad_break.begin",
}


def model(kind: str, event: Mapping[str, Any], *, message_id: str | None = None) -> Any:
    """The twitchio model twitchio would dispatch for ``event`` of ``kind``."""
    from twitchio.models.eventsub_ import create_event_instance

    sub_type = SUB_TYPES[kind]
    subscription = subscription_object(
        sub_id="sub-1",
        sub_type=sub_type,
        version="2" if kind == "follow" else "1",
        condition={},
        session_id="session-1",
    )
    frame = notification(subscription, event, message_id=message_id)
    return create_event_instance(sub_type, frame, http=None)
