"""Inbound events and per-turn timing records: the vocabulary adapters and the orchestrator share.

Adapters translate platform objects into these small frozen values; nothing here holds a client,
a socket or a clock. Every ``*_ns`` field is a :func:`time.monotonic_ns` reading taken by the
adapter; wall-clock values (``created_at``) are for display and storage only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import ClassVar, Literal, TypeAlias, get_args

__all__ = [
    "TWITCH_EVENT_KINDS",
    "Author",
    "ConversationKey",
    "Inbound",
    "Modality",
    "Platform",
    "TextMessage",
    "TextStage",
    "TextTurnTimings",
    "TwitchEvent",
    "TwitchEventKind",
    "Utterance",
    "VoiceStage",
    "VoiceTurnTimings",
    "modality_of",
]


class Platform(StrEnum):
    """Where a conversation happens."""

    DISCORD = "discord"
    TWITCH = "twitch"
    TERMINAL = "terminal"


class Modality(StrEnum):
    """How a turn reached the familiar, which decides how the reply goes out."""

    TEXT = "text"
    VOICE = "voice"
    TWITCH = "twitch"
    TERMINAL = "terminal"


@dataclass(frozen=True, slots=True)
class Author:
    """Who sent an inbound event.

    Attributes:
        platform: the platform the id belongs to; ids are only unique within one platform.
        user_id: the platform's stable id for the user (never the name, which can change).
        name: the account name.
        display_name: the name shown in the channel, when it differs.
        is_operator: the person who runs this familiar (from settings), trusted for admin actions.
        is_bot: another bot account; the familiar never answers bots, to avoid reply loops.
    """

    platform: Platform
    user_id: str
    name: str
    display_name: str | None = None
    is_operator: bool = False
    is_bot: bool = False

    @property
    def key(self) -> str:
        """The stable per-user key used by policy and storage, e.g. ``"discord:1234"``."""
        return f"{self.platform.value}:{self.user_id}"

    @property
    def shown_name(self) -> str:
        """The name to show the model: the display name when there is one."""
        return self.display_name or self.name


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation: a channel (or DM, or voice channel) on one platform.

    ``as_str()`` is ``"<platform>:<channel_id>"``; the guild is context, not identity, because
    channel ids are already unique per platform.
    """

    platform: Platform
    channel_id: str
    guild_id: str | None = None

    def as_str(self) -> str:
        """Return ``"<platform>:<channel_id>"``, e.g. ``"discord:123"``."""
        return f"{self.platform.value}:{self.channel_id}"

    @classmethod
    def parse(cls, value: str, *, guild_id: str | None = None) -> ConversationKey:
        """Parse the output of :meth:`as_str` back into a key.

        Args:
            value: ``"<platform>:<channel_id>"``; the channel id may itself contain ``:``.
            guild_id: the guild to attach, since :meth:`as_str` does not carry it.

        Raises:
            ValueError: if the platform is unknown or the channel id is empty.
        """
        platform, sep, channel_id = value.partition(":")
        if not sep or not channel_id:
            raise ValueError(f"not a conversation key: {value[:80]!r}")
        try:
            parsed = Platform(platform)
        except ValueError:
            raise ValueError(f"unknown platform in conversation key: {platform[:20]!r}") from None
        return cls(parsed, channel_id, guild_id)


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A text message in a channel the familiar reads (Discord or the terminal).

    Attributes:
        mentions_familiar: the message @-mentions the familiar.
        reply_to_familiar: the message is a reply to one of the familiar's messages.
        attachments_note: a short description of attachments, e.g. ``"[2 images]"``.
        created_at: the platform's timestamp, for display and storage only.
    """

    key: ConversationKey
    author: Author
    text: str
    message_id: str
    received_ns: int
    mentions_familiar: bool = False
    reply_to_familiar: bool = False
    attachments_note: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Utterance:
    """One finished voice turn from one speaker, transcribed.

    Attributes:
        speech_start_ns: first voiced audio of the turn.
        speech_end_ns: end of the last voiced audio (t0 of the voice latency budget).
        stt_final_ns: when the final transcript arrived.
        confidence: the recogniser's confidence in 0..1, when it gives one.
    """

    key: ConversationKey
    author: Author
    text: str
    speech_start_ns: int
    speech_end_ns: int
    stt_final_ns: int
    confidence: float | None = None


TwitchEventKind: TypeAlias = Literal[
    "chat", "follow", "sub", "resub", "gift", "cheer", "raid", "redemption", "ad_break"
]
TWITCH_EVENT_KINDS: frozenset[str] = frozenset(get_args(TwitchEventKind))
"""Every accepted :attr:`TwitchEvent.kind`."""


@dataclass(frozen=True, slots=True)
class TwitchEvent:
    """A Twitch chat message or channel event.

    Attributes:
        kind: one of :data:`TWITCH_EVENT_KINDS`.
        description: a one-line human description, e.g. ``"Alice gifted 5 subs"``.
        priority: higher is more important; the orchestrator sheds low priorities under load.
        amount: bits, months, gift count or raid size, when the kind has one.

    Raises:
        ValueError: on an unknown ``kind``.
    """

    key: ConversationKey
    author: Author
    kind: TwitchEventKind
    description: str
    received_ns: int
    priority: int = 0
    amount: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in TWITCH_EVENT_KINDS:
            raise ValueError(f"unknown twitch event kind: {str(self.kind)[:40]!r}")


Inbound: TypeAlias = TextMessage | Utterance | TwitchEvent
"""Anything an adapter hands the orchestrator."""


def modality_of(event: Inbound) -> Modality:
    """Return how ``event`` arrived, which decides where its reply goes."""
    if isinstance(event, Utterance):
        return Modality.VOICE
    if isinstance(event, TwitchEvent):
        return Modality.TWITCH
    if event.key.platform is Platform.TERMINAL:
        return Modality.TERMINAL
    return Modality.TEXT


TextStage: TypeAlias = Literal["typing_sent", "first_token", "posted"]
VoiceStage: TypeAlias = Literal[
    "speech_end", "stt_final", "first_token", "first_clause", "first_audio", "first_frame"
]


@dataclass(slots=True)
class _Timings:
    """Shared stamping logic; subclasses list their ``*_ns`` fields in ``_STAGES``, origin first."""

    _STAGES: ClassVar[tuple[str, ...]] = ()

    turn_id: str

    def stamp(self, stage: str, now_ns: int) -> bool:
        """Record ``now_ns`` for ``stage`` if it has not been recorded yet.

        First stamp wins, so callers can stamp on every token without an ``if``.

        Args:
            stage: a stage name without the ``_ns`` suffix, e.g. ``"first_token"``.
            now_ns: a :func:`time.monotonic_ns` reading.

        Returns:
            True if this call recorded the stamp, False if it was already set.

        Raises:
            ValueError: if ``stage`` is not a stage of this record.
        """
        name = f"{stage}_ns"
        if name not in self._STAGES:
            raise ValueError(f"unknown timing stage: {stage[:40]!r}")
        if getattr(self, name) is not None:
            return False
        setattr(self, name, now_ns)
        return True

    def durations_ms(self) -> dict[str, float]:
        """Milliseconds from the origin stamp to every later stage that has been stamped.

        Returns:
            ``{stage: ms}`` in stage order, without the origin itself; empty when the origin is
            not stamped.
        """
        names = self._STAGES
        origin = getattr(self, names[0])
        if origin is None:
            return {}
        out: dict[str, float] = {}
        for name in names[1:]:
            value = getattr(self, name)
            if value is not None:
                out[name.removesuffix("_ns")] = (value - origin) / 1e6
        return out


@dataclass(slots=True)
class TextTurnTimings(_Timings):
    """Latency stamps of one text turn; the origin is ``received_ns``.

    Stages: ``received``, ``typing_sent``, ``first_token``, ``posted``.
    """

    _STAGES: ClassVar[tuple[str, ...]] = (
        "received_ns",
        "typing_sent_ns",
        "first_token_ns",
        "posted_ns",
    )

    received_ns: int
    typing_sent_ns: int | None = None
    first_token_ns: int | None = None
    posted_ns: int | None = None


@dataclass(slots=True)
class VoiceTurnTimings(_Timings):
    """Latency stamps of one voice turn; the origin is ``speech_end_ns``.

    Stages: ``speech_end``, ``stt_final``, ``first_token``, ``first_clause`` (sent to TTS),
    ``first_audio`` (first TTS byte), ``first_frame`` (first Opus frame played).
    """

    _STAGES: ClassVar[tuple[str, ...]] = (
        "speech_end_ns",
        "stt_final_ns",
        "first_token_ns",
        "first_clause_ns",
        "first_audio_ns",
        "first_frame_ns",
    )

    speech_end_ns: int | None = None
    stt_final_ns: int | None = None
    first_token_ns: int | None = None
    first_clause_ns: int | None = None
    first_audio_ns: int | None = None
    first_frame_ns: int | None = None
