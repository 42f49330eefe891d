"""The ``[twitch]`` table of ``character.toml``: what the familiar reacts to, and how.

Every key has a default, so a familiar's own ``character.toml`` only names what it changes
(tables merge key by key). One sub-table per kind of input (``chat``, ``follow``, ``sub``,
``resub``, ``gift``, ``cheer``, ``raid``, ``redemption``, ``ad_break``) says whether it is
enabled, how urgent it is, how often one viewer may trigger it, how many per minute the whole
channel may trigger, and where the answer goes::

    [twitch]
    join_in = true                       # sometimes answer chat that does not address it
    min_bits = 100                       # smaller cheers are remembered, not answered
    redemptions = ["Ask the familiar"]   # channel-point rewards it answers (by title)

    [twitch.raid]
    answer = "both"                      # in chat and out loud in the voice channel

This module is plain pydantic with no Twitch library import, so ``character.py`` can use
:class:`TwitchSection` for validation without loading twitchio.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ANSWER_ROUTES", "KindSection", "TwitchSection"]

AnswerRoute = Literal["chat", "voice", "both"]
ANSWER_ROUTES: tuple[str, ...] = ("chat", "voice", "both")
_MAX_TITLE_CHARS = 45  # Twitch's own limit on a reward title


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KindSection(_Strict):
    """How the familiar treats one kind of Twitch input.

    Attributes:
        enabled: subscribe to it and react; disabled kinds are neither subscribed nor
            remembered, and their scopes are not requested at login.
        priority: higher is answered first when several inputs wait for the same turn, and is
            kept longest when the queue overflows (a raid before chit-chat).
        cooldown_s: one viewer triggers a reaction of this kind at most this often; inside
            the cooldown the input is only remembered.
        per_minute: at most this many reactions of this kind per minute for the whole channel
            (a follow-bot wave is dropped past it, and counted).
        answer: ``"chat"``, ``"voice"`` (out loud when the familiar is in a voice channel,
            else chat) or ``"both"``.
    """

    enabled: bool = True
    priority: int = Field(default=10, ge=0, le=100)
    cooldown_s: float = Field(default=0.0, ge=0, le=86_400)
    per_minute: float = Field(default=30.0, gt=0, le=10_000)
    answer: AnswerRoute = "chat"


class TwitchSection(_Strict):
    """The validated ``[twitch]`` table.

    Attributes:
        join_in: answer chat that does not address the familiar, at most once per
            ``policy.unprompted_gap_s``; the model may decline with ``<silent>``.
        ignore_prefixes: chat starting with one of these is ignored (other bots' commands).
        min_bits: cheers below this are remembered, not answered.
        redemptions: channel-point reward titles the familiar answers (case-insensitive);
            others are remembered only. Empty: none are answered.
        max_viewer_text_chars: a viewer's own words inside an event (a resub message, a cheer
            message, a redemption's input) are cut to this, visibly.
        chat_messages_per_30s: the familiar's own chat sends per 30 s: 20 for a normal account,
            up to 100 when the bot is a moderator or the broadcaster.
        max_reply_messages: a reply is split into at most this many chat messages (500
            characters each); the rest is cut with a visible marker.
        context_lines: unaddressed chat lines kept between two turns (most recent kept).
        history_lines_per_s: unaddressed chat lines written to history per second, at most;
            the rest is sampled out and counted.
        max_pending: inputs waiting for the next turn (addressed chat and events); past it the
            lowest priority is shed.
        max_inputs_per_turn: inputs answered together in one turn; the rest wait (highest
            priority first).
        max_wait_s: an input not answered within this is dropped as stale.
    """

    join_in: bool = False
    ignore_prefixes: list[str] = Field(default_factory=lambda: ["!"], max_length=16)
    min_bits: int = Field(default=100, ge=1, le=1_000_000)
    redemptions: list[str] = Field(default_factory=list, max_length=100)
    max_viewer_text_chars: int = Field(default=300, ge=20, le=2_000)
    chat_messages_per_30s: int = Field(default=20, ge=1, le=100)
    max_reply_messages: int = Field(default=3, ge=1, le=10)
    context_lines: int = Field(default=20, ge=0, le=500)
    history_lines_per_s: float = Field(default=20.0, ge=0, le=1_000)
    max_pending: int = Field(default=100, ge=1, le=10_000)
    max_inputs_per_turn: int = Field(default=8, ge=1, le=64)
    max_wait_s: float = Field(default=120.0, ge=1, le=3_600)

    chat: KindSection = KindSection(priority=10, per_minute=600)
    follow: KindSection = KindSection(priority=20, cooldown_s=3_600, per_minute=6)
    sub: KindSection = KindSection(priority=40)
    resub: KindSection = KindSection(priority=40)
    gift: KindSection = KindSection(priority=60)
    cheer: KindSection = KindSection(priority=50)
    raid: KindSection = KindSection(priority=80, per_minute=6)
    redemption: KindSection = KindSection(priority=30, cooldown_s=30)
    ad_break: KindSection = KindSection(enabled=False, priority=5, per_minute=2)

    @field_validator("ignore_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix or len(prefix) > 8 or not prefix.isprintable():
                raise ValueError("prefixes must be 1..8 printable characters")
        return value

    @field_validator("redemptions")
    @classmethod
    def _titles(cls, value: list[str]) -> list[str]:
        titles = []
        for title in value:
            title = title.strip()
            if not title or len(title) > _MAX_TITLE_CHARS or not title.isprintable():
                raise ValueError(
                    f"reward titles must be 1..{_MAX_TITLE_CHARS} printable characters"
                )
            titles.append(title)
        return titles

    def kind(self, name: str) -> KindSection:
        """The section of one kind (``"chat"``, ``"follow"``...).

        Raises:
            KeyError: not a Twitch event kind.
        """
        section = getattr(self, name, None)
        if not isinstance(section, KindSection):
            raise KeyError(name)
        return section
