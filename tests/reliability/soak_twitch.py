"""Twitch load for the soak and crash runs: a logged-in bot, a steady chat flood, and its ledger.

The familiar runs in a driver process; the fake Twitch runs here. :func:`seed_tokens` has the
bot and the broadcaster authorise the app on the fake and stores their tokens in the
familiar's encrypted vault (the real :class:`~familiar_connect.storage.vault.Vault`, as
``familiar twitch login`` would), before the driver starts. :class:`TwitchFlood` pushes
``channel.chat.message`` notifications at a steady rate from a crowd of viewers; every
``addressed_every``-th message @-mentions the bot (a turn, answered in chat through Helix),
every ``command_every``-th is a ``!command`` for another bot, the rest is ambient chat.

:func:`ledger` checks the adapter's books against what was sent, from one sample of the
driver (``soak_driver.twitch_sample``): every message the adapter received is either handled
(remembered in history, or taken into a turn) or counted by a drop counter, or still waiting
in a bounded queue.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from familiar_connect.platforms.twitch.scopes import scopes_for
from familiar_connect.platforms.twitch.tokens import TwitchTokenStore
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault
from tests.fakes.twitch import BOT, STREAMER, FakeTwitch, TwitchUser
from tests.fakes.twitch_payloads import chat_message_event
from tests.platforms.twitch.conftest import stored

__all__ = ["MASTER_KEY", "VIEWERS", "TwitchFlood", "ledger", "seed_tokens", "twitch_env"]

MASTER_KEY = "soak-master-key-0123456789abcdef"
# The kinds a familiar subscribes to by default ([twitch] ad_break is off).
KINDS = ("chat", "follow", "sub", "resub", "gift", "cheer", "raid", "redemption")
VIEWERS = tuple(TwitchUser(str(5100 + i), f"viewer{i}", f"Viewer{i}") for i in range(8))
"""The crowd: more chatters than ``per_author_lines`` folds, so chat reaches history."""


def twitch_env(fake: FakeTwitch) -> dict[str, str]:
    """The settings that point the familiar's Twitch adapter at ``fake``."""
    return {
        "TWITCH_CLIENT_ID": fake.client_id,
        "TWITCH_CLIENT_SECRET": fake.client_secret,
        "TWITCH_CHANNEL": STREAMER.login,
        "TWITCH_HELIX_BASE": fake.helix_base,
        "TWITCH_ID_BASE": fake.id_base,
        "TWITCH_EVENTSUB_WS": fake.eventsub_url,
        "FAMILIAR_MASTER_KEY": MASTER_KEY,
    }


async def seed_tokens(familiar_dir: Path, fake: FakeTwitch) -> None:
    """Log the bot and the broadcaster in: their tokens, encrypted in the familiar's vault.

    ``familiar_dir`` must exist (the database is created in it).
    """
    db = await open_database(familiar_dir / "familiar.db")
    try:
        store = TwitchTokenStore(Vault(db, {1: MASTER_KEY}))
        for role, user in (("bot", BOT), ("broadcaster", STREAMER)):
            await store.save(stored(fake, role, user, scopes_for(role, KINDS)))  # type: ignore[arg-type]
    finally:
        await db.close()


def _ambient(n: int) -> str:
    return f"chat line {n} about the run"


def _addressed(n: int) -> str:
    return f"twq {n} how is it going"


@dataclass
class TwitchFlood:
    """Chat at ``rate_per_s`` from :data:`VIEWERS`, until told to stop; counts what was delivered.

    Only messages the fake delivered to a subscription count as sent (while the familiar is
    down, e.g. between a SIGKILL and its restart, nothing is subscribed and nothing is sent).

    Args:
        fake: the fake Twitch.
        rate_per_s: messages per second, on a fixed schedule (no drift, no catch-up burst).
        addressed_every: every n-th message @-mentions the bot.
        command_every: every n-th message is a ``!command`` (0: none).
        ambient_text / addressed_text: the message text for the n-th message.
    """

    fake: FakeTwitch
    rate_per_s: float = 20.0
    addressed_every: int = 40
    command_every: int = 50
    ambient_text: Callable[[int], str] = _ambient
    addressed_text: Callable[[int], str] = _addressed
    ambient: int = 0
    addressed: int = 0
    commands: int = 0
    undelivered: int = 0
    last_addressed_id: str | None = None
    _n: int = field(default=0, repr=False)

    @property
    def sent(self) -> int:
        """Messages delivered to the familiar's chat subscription."""
        return self.ambient + self.addressed + self.commands

    async def run(self, stop: float | None = None) -> None:
        """Send until ``time.monotonic() >= stop`` (or until cancelled, with ``stop=None``)."""
        period_s = 1.0 / self.rate_per_s
        next_at = time.monotonic()
        while stop is None or time.monotonic() < stop:
            await self.send_one()
            next_at = max(next_at + period_s, time.monotonic() - period_s)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def send_one(self) -> None:
        self._n += 1
        n = self._n
        viewer = VIEWERS[n % len(VIEWERS)]
        message_id = str(uuid.uuid4())
        if n % self.addressed_every == 0:
            kind, text, mentions = "addressed", self.addressed_text(n), (BOT,)
        elif self.command_every and n % self.command_every == 0:
            kind, text, mentions = "commands", f"!uptime {n}", ()
        else:
            kind, text, mentions = "ambient", self.ambient_text(n), ()
        event = chat_message_event(
            broadcaster=self.fake.broadcaster,
            chatter=viewer,
            text=text,
            message_id=message_id,
            mentions=mentions,
        )
        if not await self.fake.notify("channel.chat.message", event):
            self.undelivered += 1
            return
        setattr(self, kind, getattr(self, kind) + 1)
        if kind == "addressed":
            self.last_addressed_id = message_id


def arrived(twitch: dict[str, Any]) -> int:
    """Flood messages the adapter received (its own echoes and repeats aside)."""
    chat = twitch["chat"]
    return chat["received"] - chat["own"] - chat["duplicates"]


def ledger(flood: TwitchFlood, twitch: dict[str, Any]) -> dict[str, int]:
    """Check sent == handled + counted drops (+ still queued) on one driver sample; return the books.

    Raises:
        AssertionError: a message is unaccounted for, at any step.
    """
    chat, inbox = twitch["chat"], twitch["inbox"]
    assert arrived(twitch) == flood.sent, (flood, chat)
    assert chat["commands"] == flood.commands, (flood, chat)
    # Ambient: remembered, or folded / overwritten / sampled out (counted), or still in the ring.
    assert chat["ambient"] == flood.ambient, (flood, chat)
    ambient_dropped = chat["ambient_overwritten"] + chat["ambient_folded"]
    ambient_dropped += chat["ambient_sampled_out"]
    assert chat["ambient"] == chat["remembered"] + ambient_dropped + twitch["pending_ambient"], chat
    # Addressed: into the inbox, or dropped / folded / cooled down (counted), or still waiting.
    assert chat["addressed"] == flood.addressed, (flood, chat)
    addressed_dropped = chat["addressed_dropped"] + chat["addressed_folded"] + twitch["cooldown"]
    assert chat["addressed"] == (
        inbox["pushed"] + addressed_dropped + twitch["pending_addressed"]
    ), twitch
    inbox_dropped = inbox["shed"] + inbox["stale"]
    assert inbox["pushed"] == inbox["taken"] + inbox_dropped + twitch["inbox_len"], inbox
    # Everything handed on reached the orchestrator, which said what it did with each.
    submitted = twitch["submitted"]
    assert sum(submitted.values()) == chat["remembered"] + inbox["taken"], twitch
    handled = chat["remembered"] + inbox["taken"]
    dropped = chat["commands"] + ambient_dropped + addressed_dropped + inbox_dropped
    pending = twitch["pending_ambient"] + twitch["pending_addressed"] + twitch["inbox_len"]
    assert flood.sent == handled + dropped + pending
    return {
        "sent": flood.sent,
        "handled": handled,
        "counted_drops": dropped,
        "pending": pending,
        "remembered": chat["remembered"],
        "addressed": chat["addressed"],
        "answered_inputs": submitted.get("queued", 0),
        "replies_posted": twitch["sends"]["posted"],
    }
