"""The Twitch ingest benchmark's fakes: the test suite's Twitch and OpenRouter fakes, plus a paced sender.

* :class:`BenchTwitch` is :class:`~tests.fakes.twitch.FakeTwitch` (identity, Helix, EventSub
  websocket, chat echo) with two senders that write ``channel.chat.message`` notification
  frames straight to the websockets of its enabled chat subscriptions:

  - :meth:`BenchTwitch.flood` pushes a fixed rate, open loop: message ``i`` is *scheduled*
    at ``t0 + i / rate`` and carries that time in its tag (see :mod:`._twitch_common`); on each
    wake-up the sender writes every message that is due, so a slow reader is charged for the
    wait. If the sender itself falls more than ``max_behind_s`` behind its schedule (its
    socket stays full), it stops and says so: the rate was not sustained.
  - :meth:`BenchTwitch.blast` writes as fast as the socket takes them (saturation), each
    tagged with the moment it was written.

  The frames are the fake's own payloads (:func:`~tests.fakes.twitch_payloads.chat_message_event`
  inside :func:`~tests.fakes.twitch_payloads.notification`: about 1.2 KB each, as Twitch's), built
  once per run as templates and completed per message with one ``str.join``, so the sender
  costs a few µs per message on its own core.
* :class:`BenchLLM` is :class:`~tests.fakes.openrouter.FakeOpenRouter` answering every chat
  request with a realistic stream (first token after ``ttft_s`` ± jitter, then paced tokens):
  the turns that addressed chat lines start are real turns with a provider's latency.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from benchmarks._twitch_common import TAG_MARK
from tests.fakes.openrouter import CHAT_PATH, FakeOpenRouter
from tests.fakes.twitch import BOT, STREAMER, FakeTwitch, TwitchUser
from tests.fakes.twitch_payloads import chat_message_event, notification

__all__ = ["BenchLLM", "BenchTwitch", "ChatWorkload", "FloodReport"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_PLACEHOLDER = "\x00TAG\x00"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER)[1:-1]
_YIELD_EVERY = 64
_LINES = (
    "LUL",
    "Pog",
    "KEKW that was close",
    "gg",
    "lets gooo",
    "first time here, love the vibe",
    "what game is this?",
    "hi chat",
    "that boss fight was insane",
    "OMEGALUL",
    "no way",
    "can you turn the music down a bit",
    "how long have you been streaming today",
    "W",
    "L take",
    "this run is going so well",
    "monkaS",
    "clip it!",
    "anyone else lagging?",
    "the chat is moving so fast lol",
    "PogChamp PogChamp PogChamp",
    "did you see the new patch notes? they nerfed the sword again",
    "hello from Brazil",
    "what's the keyboard?",
    "lurking while I work, have a good stream",
)
_QUESTIONS = (
    "what do you think about this run?",
    "do you remember my name?",
    "say hi to chat!",
    "what's your favourite boss so far?",
    "can you explain what just happened?",
)
_COMMANDS = ("!lurk", "!uptime", "!discord", "!so someone", "!followage")


@dataclass(frozen=True, slots=True)
class ChatWorkload:
    """The shape of the chat a flood carries.

    Attributes:
        chatters: distinct chatters (a crowd, cycled at random).
        addressed: the share of messages that @-mention the bot (these start turns).
        commands: the share of ``!commands`` for other bots.
        templates: distinct frames built (messages cycle through them).
        seed: the random generator's seed.
    """

    chatters: int = 1_000
    addressed: float = 0.01
    commands: float = 0.02
    templates: int = 2_048
    seed: int = 8


@dataclass
class FloodReport:
    """What one sender did.

    Attributes:
        sent: frames written to the socket.
        planned: frames the schedule asked for (rate × duration); 0 for a blast.
        started_ns / finished_ns: first and last write.
        max_behind_ms: the furthest the sender fell behind its schedule.
        aborted: the sender stopped because it fell more than ``max_behind_s`` behind.
    """

    sent: int = 0
    planned: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    max_behind_ms: float = 0.0
    aborted: bool = False

    @property
    def duration_s(self) -> float:
        return max(self.finished_ns - self.started_ns, 1) / 1e9

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "planned": self.planned,
            "duration_s": round(self.duration_s, 3),
            "achieved_rate": round(self.sent / self.duration_s, 1) if self.sent else 0.0,
            "max_behind_ms": round(self.max_behind_ms, 3),
            "aborted": self.aborted,
        }


class BenchTwitch(FakeTwitch):
    """:class:`FakeTwitch` with a paced and a saturating chat sender (see the module docstring)."""

    def __init__(self, *, workload: ChatWorkload, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.workload = workload
        self._templates: list[list[str]] = []
        self._template_sub = ""
        self._seq = 0

    # --- frames ---------------------------------------------------------------------------

    def _chat_targets(self) -> list[web.WebSocketResponse]:
        sockets = []
        for sub in self.enabled("channel.chat.message"):
            session = self.sessions.get(sub.session_id)
            if session is None or session.closed:
                continue
            ws = session.ws if session.welcomed else session.old_ws or session.ws
            if ws is not None and not ws.closed:
                sockets.append(ws)
        return sockets

    def _ensure_templates(self) -> list[list[str]]:
        subs = self.enabled("channel.chat.message")
        if not subs:
            raise RuntimeError("nothing is subscribed to channel.chat.message")
        sub = subs[0]
        if self._templates and self._template_sub == sub.sub_id:
            return self._templates
        w = self.workload
        rng = random.Random(w.seed)  # noqa: S311 - workload shape, not security
        crowd = [
            TwitchUser(str(100_000 + i), f"viewer{i}", f"Viewer{i}") for i in range(w.chatters)
        ]
        templates: list[list[str]] = []
        for _ in range(w.templates):
            roll = rng.random()
            chatter = rng.choice(crowd)
            addressed = roll < w.addressed
            if addressed:
                text = rng.choice(_QUESTIONS)
            elif roll < w.addressed + w.commands:
                text = rng.choice(_COMMANDS)
            else:
                text = rng.choice(_LINES)
            event = chat_message_event(
                broadcaster=STREAMER,
                chatter=chatter,
                text=f"{text} {TAG_MARK}{_PLACEHOLDER}",
                message_id=_PLACEHOLDER,
                mentions=(BOT,) if addressed else (),
            )
            frame = notification(sub.as_json(), event, message_id=_PLACEHOLDER)
            templates.append(json.dumps(frame).split(_PLACEHOLDER_JSON))
        self._templates, self._template_sub = templates, sub.sub_id
        return templates

    def prepare(self) -> None:
        """Build the frame templates now (before a timed block)."""
        self._ensure_templates()

    # --- senders ----------------------------------------------------------------------------

    async def flood(self, rate: float, duration_s: float, *, max_behind_s: float) -> FloodReport:
        """Push ``rate`` messages/s for ``duration_s``, open loop (see the module docstring)."""
        templates = self._ensure_templates()
        targets = self._chat_targets()
        if not targets:
            raise RuntimeError("no chat subscription has a live websocket")
        count = len(templates)
        planned = int(rate * duration_s)
        period_ns = 1e9 / rate
        max_behind_ns = int(max_behind_s * 1e9)
        report = FloodReport(planned=planned)
        t0 = time.monotonic_ns() + 2_000_000
        report.started_ns = t0
        index = 0
        seq = self._seq
        while index < planned:
            now = time.monotonic_ns()
            due = min(planned, int((now - t0) / period_ns) + 1)
            if due <= index:
                wake_ns = t0 + int(index * period_ns)
                await asyncio.sleep(max(0.0, min(0.001, (wake_ns - now) / 1e9)))
                continue
            behind_ns = now - (t0 + int(index * period_ns))
            if behind_ns > report.max_behind_ms * 1e6:
                report.max_behind_ms = behind_ns / 1e6
            if behind_ns > max_behind_ns:
                report.aborted = True
                break
            stop = min(due, index + _YIELD_EVERY)
            while index < stop:
                token = f"{seq}-{t0 + int(index * period_ns)}"
                frame = token.join(templates[seq % count])
                for ws in targets:
                    await ws.send_str(frame)
                index += 1
                seq += 1
            await asyncio.sleep(0)
        report.sent = index
        report.finished_ns = time.monotonic_ns()
        self._seq = seq
        return report

    async def blast(self, stop: asyncio.Event) -> FloodReport:
        """Write messages as fast as the socket takes them until ``stop`` is set."""
        templates = self._ensure_templates()
        targets = self._chat_targets()
        if not targets:
            raise RuntimeError("no chat subscription has a live websocket")
        count = len(templates)
        report = FloodReport(started_ns=time.monotonic_ns())
        seq = self._seq
        sent = 0
        while not stop.is_set():
            for _ in range(_YIELD_EVERY):
                frame = f"{seq}-{time.monotonic_ns()}".join(templates[seq % count])
                for ws in targets:
                    await ws.send_str(frame)
                seq += 1
                sent += 1
            await asyncio.sleep(0)
        report.sent = sent
        report.finished_ns = time.monotonic_ns()
        self._seq = seq
        return report


class BenchLLM(FakeOpenRouter):
    """:class:`FakeOpenRouter` answering every chat request with a realistic, paced stream.

    Attributes:
        requests_seen: chat requests answered.
    """

    def __init__(
        self,
        *,
        expected_api_key: str,
        reply: str,
        ttft_s: float,
        ttft_jitter_s: float,
        tokens_per_s: float,
        seed: int = 8,
    ) -> None:
        super().__init__(expected_api_key=expected_api_key)
        self.reply = reply
        self.ttft_s = ttft_s
        self.ttft_jitter_s = ttft_jitter_s
        self.tokens_per_s = tokens_per_s
        self.requests_seen = 0
        self._rng = random.Random(seed)  # noqa: S311 - latency shape, not security
        self.app.middlewares.append(self._pace_reply)

    @web.middleware
    async def _pace_reply(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == CHAT_PATH:
            self.requests_seen += 1
            ttft = max(0.0, self._rng.gauss(self.ttft_s, self.ttft_jitter_s))
            # No await between queueing the reply and the handler popping it.
            self.reply_text(self.reply, ttft_s=ttft, tokens_per_s=self.tokens_per_s)
        return await handler(request)
