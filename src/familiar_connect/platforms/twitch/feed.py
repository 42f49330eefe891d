"""Feeding the orchestrator from Twitch: when, in what order, and with which sink.

The Twitch callbacks only classify and hold (see :mod:`.chat`, :mod:`.events`, :mod:`.inbox`);
:class:`TurnFeeder` decides when held inputs reach the orchestrator:

- **remember**: every ``flush()`` (the adapter calls it twice a second and before each turn)
  submits the ambient chat lines that survived sampling and the events the policy only
  remembers, while :attr:`TurnFeeder.hear_all` is false, so the orchestrator stores them in
  history (in batches, through its history writer) and in the live context, and answers none;
- **answer**: :meth:`TurnFeeder.run` waits for the conversation to be idle (everything that
  arrives while a reply is in flight folds into the next turn), then takes the waiting inputs
  highest priority first, at most ``max_inputs_per_turn``, and submits them together while
  ``hear_all`` is true, with one sink for where their answers go;
- **join in**: with ``join_in``, at most once per ``unprompted_gap_s`` the latest ambient line is
  held back from memory and offered as an unprompted turn instead;
- **out loud**: inputs whose kind answers in ``"voice"`` or ``"both"`` go to the voice
  conversation the familiar is in (its :class:`VoiceTarget`), so that conversation's own actor
  speaks them between its other turns (and a person talking over it interrupts, as usual);
  with ``"both"`` the same generation is also posted to chat. Without a voice conversation they
  are answered in chat.

:attr:`TurnFeeder.hear_all` and :attr:`TurnFeeder.submitting` are what the adapter's
``is_subscribed`` reads: they are set only inside :meth:`TurnFeeder.submit_turn`, which runs
without awaiting, so nothing else observes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from familiar_connect.conversation.orchestrator import Orchestrator
from familiar_connect.conversation.sinks import ReplySink
from familiar_connect.core.events import ConversationKey, TwitchEvent
from familiar_connect.platforms.twitch.chat import ChatFolder, ChatLine
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.events import Decision, EventPolicy
from familiar_connect.platforms.twitch.inbox import Pending, PriorityInbox
from familiar_connect.platforms.twitch.sink import FanOutSink

__all__ = ["TurnFeeder", "VoiceTarget"]

log = structlog.get_logger(__name__)

_MAX_REMEMBER_QUEUE = 256
# Under a flood every push can shed an input; one warning per interval (with the count)
# keeps the log readable and off the hot path. The inbox counts every one.
_SHED_LOG_INTERVAL_NS = 10 * 1_000_000_000

ChatSinkFactory = Callable[["str | None"], ReplySink]


@dataclass(frozen=True, slots=True)
class VoiceTarget:
    """The voice conversation the familiar is in: its key and its reply sink (mode ``clauses``)."""

    key: ConversationKey
    sink: ReplySink


class TurnFeeder:
    """Hands held Twitch inputs to the orchestrator (see the module docstring).

    Args:
        orchestrator: the familiar's orchestrator.
        key: the Twitch conversation.
        chat: the chat folder the callbacks fill.
        events: the channel event policy (its chat cooldown applies here too).
        inbox: inputs that want an answer.
        config: the ``[twitch]`` policy.
        unprompted_gap_s: the character's ``policy.unprompted_gap_s`` (join-in cadence).
        make_chat_sink: ``make_chat_sink(reply_to)`` builds a chat sink for a turn.
        voice: returns the voice conversation the familiar is in, or None.
        counts: where to count what the orchestrator answered per input.
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        key: ConversationKey,
        chat: ChatFolder,
        events: EventPolicy,
        inbox: PriorityInbox,
        config: TwitchSection,
        unprompted_gap_s: float,
        make_chat_sink: ChatSinkFactory,
        voice: Callable[[], VoiceTarget | None],
        counts: dict[str, int],
    ) -> None:
        self.orchestrator = orchestrator
        self.key = key
        self.chat = chat
        self.events = events
        self.inbox = inbox
        self.config = config
        self.gap_ns = int(unprompted_gap_s * 1e9)
        self.make_chat_sink = make_chat_sink
        self.voice = voice
        self.counts = counts
        self.hear_all = False
        self.submitting: ConversationKey | None = None
        self.remember_dropped = 0
        self.voice_unavailable = 0
        self._remember: deque[TwitchEvent] = deque(maxlen=_MAX_REMEMBER_QUEUE)
        self._join_candidate: ChatLine | None = None
        self._last_join_ns: int | None = None
        self._wake = asyncio.Event()
        self._shed_unlogged = 0
        self._shed_logged_ns: int | None = None

    # --- intake (called from the Twitch callbacks; no awaits) ---------------------------

    def wake(self) -> None:
        """Something that wants an answer arrived."""
        self._wake.set()

    def take_decision(self, decision: Decision, now_ns: int) -> None:
        """Hold one channel event the policy kept (``react`` or ``remember``)."""
        if decision.event is None or decision.action == "drop":
            return
        if decision.action == "remember":
            if len(self._remember) == self._remember.maxlen:
                self.remember_dropped += 1
            self._remember.append(decision.event)
            return
        shed = self.inbox.push(Pending(decision.event, decision.route, None, now_ns))
        if shed is not None:
            self._note_shed(shed, now_ns)
        self._wake.set()

    def _note_shed(self, shed: Pending, now_ns: int) -> None:
        self._shed_unlogged += 1
        if self._shed_logged_ns is None or now_ns - self._shed_logged_ns >= _SHED_LOG_INTERVAL_NS:
            log.warning(
                "twitch_input_shed",
                shed=self._shed_unlogged,
                last_kind=shed.event.kind,
                last_priority=shed.priority,
            )
            self._shed_unlogged = 0
            self._shed_logged_ns = now_ns

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Submit waiting inputs whenever the conversation is idle.

        Cancellation: the stop signal; inputs still held are dropped with the adapter.
        """
        while True:
            await self._wake.wait()
            self._wake.clear()
            self.flush()
            if not self._has_candidates():
                continue
            # Everything that arrives while a reply is in flight folds into the next turn.
            await self.orchestrator.wait_idle(self.key)
            self.flush()
            self.submit_turn()
            await asyncio.sleep(0)

    def _has_candidates(self) -> bool:
        return bool(len(self.inbox) or self.chat.pending_addressed or self._join_candidate)

    # --- remembering ---------------------------------------------------------------------

    def flush(self) -> None:
        """Remember held ambient chat and remember-only events now (never answered)."""
        now_ns = time.monotonic_ns()
        lines = self.chat.take_ambient(now_ns)
        events = list(self._remember)
        self._remember.clear()
        if (
            self.config.join_in
            and lines
            and self._join_candidate is None
            and self._join_due(now_ns)
            and not self.orchestrator.is_replying(self.key)
        ):
            self._join_candidate = lines.pop()
            self._wake.set()
        if not lines and not events:
            return
        sink = self.make_chat_sink(None)
        self.hear_all = False
        for event in events:
            self._count(self.orchestrator.submit(event, sink))
        for line in lines:
            self._count(self.orchestrator.submit(self.chat_event(line), sink))

    def _join_due(self, now_ns: int) -> bool:
        return self._last_join_ns is None or now_ns - self._last_join_ns >= self.gap_ns

    def chat_event(self, line: ChatLine) -> TwitchEvent:
        """The orchestrator's input for one chat line."""
        return TwitchEvent(
            key=self.key,
            author=line.author,
            kind="chat",
            description=line.text,
            received_ns=line.received_ns,
            priority=self.config.chat.priority,
        )

    # --- answering -----------------------------------------------------------------------

    def submit_turn(self) -> None:
        """Submit the inputs of the next turn, highest priority first.

        Inputs answered in chat go to the Twitch conversation with one chat sink (replying to
        the latest addressed message); inputs answered out loud go to the voice conversation
        with its sink (fanned out to chat too for ``"both"``).
        """
        now_ns = time.monotonic_ns()
        section = self.config.chat
        for line in self.chat.take_addressed():
            if not self.events.allow_chat(line.author.user_id, now_ns):
                self.events.counts["chat:cooldown"] += 1
                continue
            shed = self.inbox.push(
                Pending(self.chat_event(line), section.answer, line.message_id, line.received_ns)
            )
            if shed is not None:
                self._note_shed(shed, now_ns)
        batch = self.inbox.take(self.config.max_inputs_per_turn, now_ns)
        if self._join_candidate is not None:
            line, self._join_candidate = self._join_candidate, None
            if batch:
                # A real turn is coming anyway: the line is only context for it.
                self._count(
                    self.orchestrator.submit(self.chat_event(line), self.make_chat_sink(None))
                )
            else:
                self._last_join_ns = now_ns
                batch = [Pending(self.chat_event(line), section.answer, None, now_ns)]
        if not batch:
            return
        target = self.voice() if any(p.route != "chat" for p in batch) else None
        if target is None and any(p.route != "chat" for p in batch):
            self.voice_unavailable += 1
        spoken = [p for p in batch if p.route != "chat" and target is not None]
        written = [p for p in batch if p.route == "chat" or target is None]
        try:
            self.hear_all = True
            if written:
                reply_to = next((p.reply_to for p in reversed(written) if p.reply_to), None)
                self._submit(self.key, written, self.make_chat_sink(reply_to))
            if spoken and target is not None:
                sink = target.sink
                if any(p.route == "both" for p in spoken):
                    sink = FanOutSink([self.make_chat_sink(None), target.sink])
                self._submit(target.key, spoken, sink)
        finally:
            self.hear_all = False
            self.submitting = None
        if len(self.inbox):
            self._wake.set()  # the rest waits for the next turn

    def _submit(self, key: ConversationKey, batch: list[Pending], sink: ReplySink) -> None:
        self.submitting = key
        for pending in batch:
            event = (
                pending.event
                if key == pending.event.key
                else dataclasses.replace(pending.event, key=key)
            )
            self._count(self.orchestrator.submit(event, sink))

    def _count(self, result: str) -> None:
        self.counts[result] = self.counts.get(result, 0) + 1
