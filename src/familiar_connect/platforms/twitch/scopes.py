"""Which EventSub subscriptions and OAuth scopes each Twitch feature needs, and whose token.

Two accounts take part. The **bot** account reads and writes chat: ``channel.chat.message`` is
subscribed with its token (``user:read:chat``) and replies are posted as it
(``user:write:chat``). The **broadcaster** (the channel's owner) authorises the channel events,
because Twitch only lets the channel's own token (or a moderator's, for follows) subscribe to
them. When one account is both, its token needs both sets of scopes.

Sans-I/O: tables and set arithmetic only. Required scopes per subscription are Twitch's
(``dev.twitch.tv/docs/eventsub/eventsub-subscription-types``); the fake enforces the same table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "FEATURES",
    "Feature",
    "Role",
    "describe_missing",
    "missing_scopes",
    "scopes_for",
]

Role = Literal["bot", "broadcaster"]


@dataclass(frozen=True, slots=True)
class Feature:
    """One kind of Twitch input the familiar can react to.

    Attributes:
        kind: the :class:`~familiar_connect.core.events.TwitchEvent` kind it produces.
        sub_type: the EventSub subscription type.
        version: its version.
        role: whose token subscribes (and must hold ``scopes``).
        scopes: every scope the token needs for this feature.
        label: how the operator reads it ("subscriptions", "cheers"...).
    """

    kind: str
    sub_type: str
    version: str
    role: Role
    scopes: tuple[str, ...]
    label: str


FEATURES: dict[str, Feature] = {
    feature.kind: feature
    for feature in (
        Feature(
            "chat",
            "channel.chat.message",
            "1",
            "bot",
            ("user:read:chat", "user:write:chat"),
            "chat",
        ),
        Feature(
            "follow", "channel.follow", "2", "broadcaster", ("moderator:read:followers",), "follows"
        ),
        Feature(
            "sub",
            "channel.subscribe",
            "1",
            "broadcaster",
            ("channel:read:subscriptions",),
            "subscriptions",
        ),
        Feature(
            "resub",
            "channel.subscription.message",
            "1",
            "broadcaster",
            ("channel:read:subscriptions",),
            "resubscriptions",
        ),
        Feature(
            "gift",
            "channel.subscription.gift",
            "1",
            "broadcaster",
            ("channel:read:subscriptions",),
            "gift subscriptions",
        ),
        Feature("cheer", "channel.cheer", "1", "broadcaster", ("bits:read",), "cheers"),
        Feature("raid", "channel.raid", "1", "broadcaster", (), "raids"),
        Feature(
            "redemption",
            "channel.channel_points_custom_reward_redemption.add",
            "1",
            "broadcaster",
            ("channel:read:redemptions",),
            "channel-point redemptions",
        ),
        Feature(
            "ad_break",
            "channel.ad_break.begin",
            "1",
            "broadcaster",
            ("channel:read:ads",),
            "ad breaks",
        ),
    )
}
"""Every feature, by kind."""

# A granted scope that also satisfies another (manage implies read).
_IMPLIES: dict[str, frozenset[str]] = {
    "channel:manage:redemptions": frozenset({"channel:read:redemptions"}),
}


def scopes_for(role: Role, kinds: Iterable[str], *, same_account: bool = False) -> tuple[str, ...]:
    """The scopes to request when logging ``role`` in, for the enabled ``kinds``.

    Args:
        role: ``"bot"`` or ``"broadcaster"``.
        kinds: enabled feature kinds; unknown kinds are ignored.
        same_account: the bot and the broadcaster are one account, so its token needs both
            roles' scopes.

    Returns:
        Sorted, without duplicates.
    """
    wanted: set[str] = set()
    for kind in kinds:
        feature = FEATURES.get(kind)
        if feature is not None and (same_account or feature.role == role):
            wanted.update(feature.scopes)
    return tuple(sorted(wanted))


def _granted_closure(granted: Iterable[str]) -> set[str]:
    closure = set(granted)
    for scope in list(closure):
        closure.update(_IMPLIES.get(scope, ()))
    return closure


def missing_scopes(granted: Iterable[str], needed: Iterable[str]) -> list[str]:
    """The scopes in ``needed`` that ``granted`` does not cover, sorted."""
    have = _granted_closure(granted)
    return sorted(set(needed) - have)


def describe_missing(
    missing: Mapping[str, list[str]], *, role: Role, command: str = "familiar twitch login"
) -> str:
    """One sentence naming each feature's missing scopes and the command that fixes them.

    Args:
        missing: ``{kind: [scope, ...]}`` for one role's token.
        role: whose token it is.
        command: the login command to suggest.
    """
    parts = [
        f"{FEATURES[kind].label} need {', '.join(scopes)}"
        for kind, scopes in sorted(missing.items())
        if scopes
    ]
    return (
        f"The {role} token lacks scopes: {'; '.join(parts)}. "
        f"Run `{command} --as {role}` again to grant them."
    )
