"""The text benchmark's fakes: the test suite's Discord and OpenRouter fakes, instrumented.

Both subclass the loopback fakes in ``tests/fakes/`` and add one aiohttp middleware
each, so nothing private is touched:

* :class:`BenchDiscord` stamps when a ``POST /channels/{id}/typing`` or
  ``POST /channels/{id}/messages`` request has fully arrived (``monotonic_ns``, before
  the fake handles it) and resolves the waiter of that channel's turn;
* :class:`BenchLLM` reads the turn tag (``[bt<n>]``) from the newest user message of a
  chat request, queues that turn's scripted reply (latency, tokens/s, or a stall) just
  before the fake's handler pops it, and records the provider time the fake measured:
  request fully arrived → response finished (``write_eof`` done).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.discord_fake import GUILD_ID, FakeDiscord
from tests.fakes.discord_world import World
from tests.fakes.openrouter import CHAT_PATH, FakeOpenRouter

__all__ = [
    "FIRST_BENCH_CHANNEL",
    "BenchDiscord",
    "BenchLLM",
    "LLMPlan",
    "LLMTiming",
    "RestStamp",
    "TurnWaiter",
    "bench_world",
]

FIRST_BENCH_CHANNEL = 600
_TAG = re.compile(rb"\[bt(\d+)\]")
_CHANNEL_POST = re.compile(r"^/api/v10/channels/(\d+)/(typing|messages)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bench_world(channels: int) -> World:
    """The default world plus ``channels`` text channels numbered from 600."""
    world = World.default()
    for index in range(channels):
        world.add_text_channel(
            GUILD_ID, FIRST_BENCH_CHANNEL + index, f"bench-{index}", position=10 + index
        )
    return world


@dataclass(frozen=True, slots=True)
class RestStamp:
    """A REST request the fake received: when it had fully arrived, and the answer."""

    t_ns: int
    status: int


@dataclass
class TurnWaiter:
    """The typing indicator and reply of the one turn in flight in a channel."""

    typing: asyncio.Future[RestStamp]
    reply: asyncio.Future[RestStamp]


class BenchDiscord(FakeDiscord):
    """:class:`FakeDiscord` that reports typing and reply POSTs per channel as they arrive."""

    def __init__(self, *, world: World, bot_token: str) -> None:
        super().__init__(bot_token=bot_token, world=world)
        self._waiters: dict[int, TurnWaiter] = {}
        self.unexpected_posts = 0
        self.app.middlewares.append(self._stamp)

    def expect_turn(self, channel_id: int) -> TurnWaiter:
        """Register the turn about to start in ``channel_id`` (one at a time per channel)."""
        loop = asyncio.get_running_loop()
        waiter = TurnWaiter(loop.create_future(), loop.create_future())
        self._waiters[channel_id] = waiter
        return waiter

    def forget_turn(self, channel_id: int) -> None:
        waiter = self._waiters.pop(channel_id, None)
        if waiter is not None:
            for future in (waiter.typing, waiter.reply):
                if not future.done():
                    future.cancel()

    @web.middleware
    async def _stamp(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # The outer recording middleware has already read the whole body.
        t_ns = time.monotonic_ns()
        response = await handler(request)
        if request.method == "POST":
            match = _CHANNEL_POST.match(request.path)
            if match is not None:
                self._resolve(int(match.group(1)), match.group(2), RestStamp(t_ns, response.status))
        return response

    def _resolve(self, channel_id: int, kind: str, stamp: RestStamp) -> None:
        waiter = self._waiters.get(channel_id)
        if waiter is None:
            self.unexpected_posts += 1
            return
        future = waiter.typing if kind == "typing" else waiter.reply
        if not future.done():
            future.set_result(stamp)
        if kind == "messages":
            del self._waiters[channel_id]


@dataclass(frozen=True, slots=True)
class LLMPlan:
    """How the fake LLM answers one turn.

    Attributes:
        text: the reply, streamed one whitespace-separated piece per SSE event.
        ttft_s: wait before the first delta.
        tokens_per_s: pace of the deltas (``None``: back to back).
        stall_s: when > 0, send the first words then nothing for this long (a stalled
            provider stream), then the rest.
    """

    text: str
    ttft_s: float = 0.0
    tokens_per_s: float | None = None
    stall_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LLMTiming:
    """What the fake measured for one chat request."""

    arrived_ns: int
    finished_ns: int

    @property
    def duration_ms(self) -> float:
        return (self.finished_ns - self.arrived_ns) / 1e6


class BenchLLM(FakeOpenRouter):
    """:class:`FakeOpenRouter` that answers each tagged turn with its own plan.

    Attributes:
        plans: the plan of each turn tag not yet requested.
        timings: what the fake measured, per turn tag.
        untagged_requests: chat requests without a known tag (answered with the echo).
    """

    def __init__(self, *, expected_api_key: str) -> None:
        super().__init__(expected_api_key=expected_api_key, max_queued_replies=10)
        self.plans: dict[int, LLMPlan] = {}
        self.timings: dict[int, LLMTiming] = {}
        self.untagged_requests = 0
        self.app.middlewares.append(self._script_turn)

    @web.middleware
    async def _script_turn(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != CHAT_PATH:
            return await handler(request)
        arrived_ns = time.monotonic_ns()
        # Cached by the recording middleware; the newest tag is the turn's own input
        # (the new input is the last user message, after every history line).
        tags = _TAG.findall(await request.read())
        tag = int(tags[-1]) if tags else None
        plan = self.plans.pop(tag, None) if tag is not None else None
        if plan is None:
            self.untagged_requests += 1
        elif plan.stall_s > 0:
            words = plan.text.split(" ")
            self.reply_stall(
                after_text=" ".join(words[:3]) + " ",
                stall_s=plan.stall_s,
                rest=" ".join(words[3:]),
            )
        else:
            self.reply_text(plan.text, ttft_s=plan.ttft_s, tokens_per_s=plan.tokens_per_s)
        # No await between queueing the reply and the handler popping it.
        response = await handler(request)
        if tag is not None:
            self.timings[tag] = LLMTiming(arrived_ns, time.monotonic_ns())
        return response
