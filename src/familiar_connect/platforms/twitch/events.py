"""Twitch channel events in, :class:`~familiar_connect.core.events.TwitchEvent` out, with a policy.

Two steps, both sans-I/O:

1. :func:`channel_input` reads a twitchio event model (follow, subscription, resubscription,
   gift, cheer, raid, channel-point redemption, ad break) through plain attributes into a
   :class:`ChannelInput`: who, what, how much, and the viewer's own words.
2. :class:`EventPolicy` decides what the familiar does with it: **react** (answer it),
   **remember** (history only: a cheer under ``min_bits``, a reward not on the allow list, a
   viewer inside their cooldown) or **drop** (a disabled or revoked kind, a repeat, a gifted
   recipient's own ``channel.subscribe``, a kind over its per-minute cap), and builds the
   :class:`TwitchEvent` with a neutral one-line description.

Descriptions state facts in a fixed form (``Alice cheered 500 bits. Their message: "..."``).
The viewer's words are cleaned (control and invisible characters removed, one line) and cut
visibly at ``max_viewer_text_chars``; the prompt fences the whole description as untrusted
data, like any other input.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

from familiar_connect.core.events import Author, ConversationKey, Platform, TwitchEvent
from familiar_connect.core.policy import TokenBucket
from familiar_connect.core.sanitize import cap_text, sanitize_name, strip_control
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.inbox import RecentIds

__all__ = [
    "ANONYMOUS_ID",
    "ChannelInput",
    "Decision",
    "EventPolicy",
    "channel_input",
    "describe",
]

ANONYMOUS_ID = "anonymous"
"""The user id given to anonymous gifters and cheerers."""

Action = Literal["react", "remember", "drop"]
_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ChannelInput:
    """A channel event, reduced to what the familiar needs.

    Attributes:
        kind: ``"follow"``, ``"sub"``, ``"resub"``, ``"gift"``, ``"cheer"``, ``"raid"``,
            ``"redemption"`` or ``"ad_break"``.
        message_id: the notification's id (repeats share it).
        user_id: the viewer's id (:data:`ANONYMOUS_ID` when anonymous).
        login: the viewer's login.
        display_name: the name shown in chat.
        amount: bits, cumulative months, gift count, raid viewers or ad seconds.
        tier: ``"1000"``, ``"2000"`` or ``"3000"`` for subscriptions.
        streak: the resubscription streak in months, when shared.
        text: the viewer's own words (resub or cheer message, redemption input).
        title: a redeemed reward's title.
        gifted: a ``channel.subscribe`` received because someone gifted it.
        automatic: an ad break started by the schedule, not by a person.
    """

    kind: str
    message_id: str
    user_id: str
    login: str
    display_name: str
    amount: int | None = None
    tier: str | None = None
    streak: int | None = None
    text: str = ""
    title: str = ""
    gifted: bool = False
    automatic: bool = False


def _metadata_id(model: Any) -> str:
    metadata = getattr(model, "_metadata", None) or {}
    return str(metadata.get("message_id") or getattr(model, "id", "") or "")


def _who(user: Any) -> tuple[str, str, str]:
    if user is None:
        return ANONYMOUS_ID, ANONYMOUS_ID, "An anonymous viewer"
    login = str(user.name or user.id)
    return str(user.id), login, str(user.display_name or login)


def channel_input(kind: str, model: Any) -> ChannelInput:
    """Read a twitchio event model of ``kind`` into a :class:`ChannelInput`.

    Raises:
        ValueError: ``kind`` is not a channel event kind.
    """
    message_id = _metadata_id(model)
    if kind == "raid":
        user_id, login, name = _who(model.from_broadcaster)
        return ChannelInput(kind, message_id, user_id, login, name, amount=int(model.viewer_count))
    if kind == "ad_break":
        user_id, login, name = _who(model.requester)
        return ChannelInput(
            kind,
            message_id,
            user_id,
            login,
            name,
            amount=int(model.duration),
            automatic=bool(model.automatic),
        )
    user = getattr(model, "user", None)
    user_id, login, name = _who(user)
    if kind == "follow":
        return ChannelInput(kind, message_id, user_id, login, name)
    if kind == "sub":
        return ChannelInput(
            kind, message_id, user_id, login, name, tier=str(model.tier), gifted=bool(model.gift)
        )
    if kind == "resub":
        return ChannelInput(
            kind,
            message_id,
            user_id,
            login,
            name,
            amount=int(model.cumulative_months),
            tier=str(model.tier),
            streak=model.streak_months,
            text=str(model.text or ""),
        )
    if kind == "gift":
        return ChannelInput(
            kind, message_id, user_id, login, name, amount=int(model.total), tier=str(model.tier)
        )
    if kind == "cheer":
        return ChannelInput(
            kind,
            message_id,
            user_id,
            login,
            name,
            amount=int(model.bits),
            text=str(model.message or ""),
        )
    if kind == "redemption":
        return ChannelInput(
            kind,
            message_id,
            user_id,
            login,
            name,
            text=str(model.user_input or ""),
            title=str(model.reward.title or ""),
        )
    raise ValueError(f"not a channel event kind: {kind[:40]!r}")


def _tier(tier: str | None) -> str:
    return {"1000": "Tier 1", "2000": "Tier 2", "3000": "Tier 3"}.get(tier or "", "a tier")


def _plural(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _quote(text: str, max_chars: int) -> str:
    clean = " ".join(strip_control(text).split())
    capped, _ = cap_text(clean, max_chars=max_chars)
    return capped


def describe(inp: ChannelInput, *, max_viewer_text_chars: int = 300) -> str:
    """The neutral one-line description of an event (see the module docstring)."""
    name = sanitize_name(inp.display_name, max_chars=64, fallback="Someone")
    words = _quote(inp.text, max_viewer_text_chars) if inp.text else ""
    said = f' Their message: "{words}"' if words else ""
    amount = inp.amount or 0
    match inp.kind:
        case "follow":
            return f"{name} followed the channel."
        case "sub":
            return f"{name} subscribed at {_tier(inp.tier)}."
        case "resub":
            streak = f", a {inp.streak}-month streak" if inp.streak else ""
            return (
                f"{name} resubscribed at {_tier(inp.tier)}: "
                f"{_plural(amount, 'month', 'months')} in total{streak}.{said}"
            )
        case "gift":
            what = "a subscription" if amount == 1 else f"{amount} subscriptions"
            return f"{name} gifted {what} at {_tier(inp.tier)} to the community."
        case "cheer":
            return f"{name} cheered {_plural(amount, 'bit', 'bits')}.{said}"
        case "raid":
            return f"{name} raided the channel with {_plural(amount, 'viewer', 'viewers')}."
        case "redemption":
            title = _quote(inp.title, 64) or "a reward"
            given = f' Their input: "{words}"' if words else ""
            return f'{name} redeemed the channel-point reward "{title}".{given}'
        case "ad_break":
            how = "scheduled automatically" if inp.automatic else "started by the channel"
            return f"An ad break of {_plural(amount, 'second', 'seconds')} began ({how})."
    raise ValueError(f"not a channel event kind: {inp.kind[:40]!r}")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one input.

    Attributes:
        action: ``"react"``, ``"remember"`` or ``"drop"``.
        reason: a snake_case code for the log and the counters.
        event: the event for the orchestrator (None when dropped).
        route: where an answer goes: ``"chat"``, ``"voice"`` or ``"both"``.
    """

    action: Action
    reason: str
    event: TwitchEvent | None = None
    route: str = "chat"


class EventPolicy:
    """The ``[twitch]`` policy for channel events: kinds, thresholds, cooldowns, caps, priority.

    Args:
        config: the character's ``[twitch]`` table.
        key: the Twitch conversation.
        operator_ids: Twitch user ids of people who run the familiar.
        max_viewers: per-viewer cooldown entries kept (least recently used forgotten).
        dedupe_window: notification ids remembered to drop repeats.
    """

    def __init__(
        self,
        config: TwitchSection,
        *,
        key: ConversationKey,
        operator_ids: Collection[str] = (),
        max_viewers: int = 10_000,
        dedupe_window: int = 4_096,
    ) -> None:
        self.config = config
        self.key = key
        self.operator_ids = frozenset(operator_ids)
        self.max_viewers = max_viewers
        self.disabled: dict[str, str] = {}
        self.counts: Counter[str] = Counter()
        self._ids = RecentIds(dedupe_window)
        self._allowed_titles = frozenset(title.casefold() for title in config.redemptions)
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._buckets: dict[str, TokenBucket] = {}

    def disable(self, kind: str, reason: str) -> None:
        """Stop reacting to ``kind`` (revoked subscription, missing scope)."""
        self.disabled[kind] = reason

    def enabled(self, kind: str) -> bool:
        """Whether ``kind`` is enabled in the config and not disabled since."""
        return self.config.kind(kind).enabled and kind not in self.disabled

    def allow_chat(self, user_id: str, now_ns: int) -> bool:
        """Whether an addressed chat message from ``user_id`` may be answered now.

        Applies ``[twitch.chat]``'s per-viewer cooldown and per-minute cap (the orchestrator's
        own per-user rate limit still applies after this).
        """
        section = self.config.chat
        if section.cooldown_s > 0 and not self._cooled(
            ("chat", user_id), section.cooldown_s, now_ns
        ):
            return False
        return self._bucket("chat", section.per_minute).try_take(now_ns)

    def _cooled(self, viewer: tuple[str, str], cooldown_s: float, now_ns: int) -> bool:
        """True (and the clock restarted) when ``viewer`` is out of its cooldown."""
        last = self._last.get(viewer)
        if last is not None and now_ns - last < cooldown_s * _NS_PER_S:
            return False
        self._last[viewer] = now_ns
        self._last.move_to_end(viewer)
        if len(self._last) > self.max_viewers:
            self._last.popitem(last=False)
        return True

    def _bucket(self, kind: str, per_minute: float) -> TokenBucket:
        bucket = self._buckets.get(kind)
        if bucket is None:
            # A minute's worth may come at once; then per_minute / 60 per second.
            bucket = self._buckets[kind] = TokenBucket(per_minute / 60.0, max(per_minute, 1.0))
        return bucket

    def decide(self, inp: ChannelInput, now_ns: int) -> Decision:
        """Decide and count; ``now_ns`` is :func:`time.monotonic_ns`."""
        decision = self._decide(inp, now_ns)
        self.counts[f"{inp.kind}:{decision.reason}"] += 1
        return decision

    def _decide(self, inp: ChannelInput, now_ns: int) -> Decision:
        section = self.config.kind(inp.kind)
        if not section.enabled:
            return Decision("drop", "disabled")
        if inp.kind in self.disabled:
            return Decision("drop", self.disabled[inp.kind])
        if inp.message_id and self._ids.seen(inp.message_id):
            return Decision("drop", "duplicate")
        if inp.kind == "sub" and inp.gifted:
            # The gifter's channel.subscription.gift already tells the story, once.
            return Decision("drop", "gift_recipient")
        if not self._bucket(inp.kind, section.per_minute).try_take(now_ns):
            return Decision("drop", "kind_rate")
        event = self._event(inp, section.priority, now_ns)
        if inp.kind == "cheer" and (inp.amount or 0) < self.config.min_bits:
            return Decision("remember", "below_min_bits", event, section.answer)
        if inp.kind == "redemption" and inp.title.strip().casefold() not in self._allowed_titles:
            return Decision("remember", "reward_not_allowed", event, section.answer)
        if (
            section.cooldown_s > 0
            and inp.user_id != ANONYMOUS_ID
            and not self._cooled((inp.kind, inp.user_id), section.cooldown_s, now_ns)
        ):
            return Decision("remember", "cooldown", event, section.answer)
        return Decision("react", "accepted", event, section.answer)

    def _event(self, inp: ChannelInput, priority: int, now_ns: int) -> TwitchEvent:
        author = Author(
            Platform.TWITCH,
            user_id=inp.user_id,
            name=inp.login,
            display_name=inp.display_name if inp.display_name != inp.login else None,
            is_operator=inp.user_id in self.operator_ids,
        )
        return TwitchEvent(
            key=self.key,
            author=author,
            kind=inp.kind,  # type: ignore[arg-type]
            description=describe(inp, max_viewer_text_chars=self.config.max_viewer_text_chars),
            received_ns=now_ns,
            priority=priority,
            amount=inp.amount,
        )
