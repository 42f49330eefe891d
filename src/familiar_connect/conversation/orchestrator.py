"""The orchestrator: one actor per conversation, each with a bounded inbox.

Adapters call :meth:`Orchestrator.submit` with an inbound event and the
conversation's :class:`~familiar_connect.conversation.sinks.ReplySink`. Submit
is synchronous and cheap: it applies the policy (access, budgets, rate limit,
input cap), records the accepted input in history, and queues it for the
conversation's actor. The actor, created on demand and retired when idle,
runs one turn at a time:

- **text** messages that arrive while a reply is being generated wait in the
  inbox and are answered together in the next turn (folded);
- a new **voice** utterance cancels the reply in flight (barge-in) and is
  answered next; :meth:`Orchestrator.cancel` does the same on speech onset.

Whether a turn is answered: always when the familiar is addressed (mention,
reply, its name or an alias, the terminal, a direct message); in a subscribed
channel the model may also speak unprompted — at most once per
``unprompted_gap_s`` — and can decline with ``<silent>``; elsewhere input is
only remembered.

Failures stay inside their conversation: a provider error becomes a short
notice to the people waiting and a log line; history already written is kept,
and an assistant turn is recorded with exactly the text that was delivered.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import structlog

from familiar_connect.character import Character
from familiar_connect.conversation.context import ContextBuilder, HistoryWindow
from familiar_connect.conversation.sinks import ReplySink
from familiar_connect.conversation.tools import ToolContext
from familiar_connect.conversation.turn import TurnProgress, TurnRunner
from familiar_connect.conversation.wording import (
    notice_for,
    platform_hint,
    source_label,
    text_of,
)
from familiar_connect.core.addressing import AddressDetector
from familiar_connect.core.events import (
    ConversationKey,
    Inbound,
    Modality,
    Platform,
    TextMessage,
    TextTurnTimings,
    TwitchEvent,
    Utterance,
    VoiceTurnTimings,
    modality_of,
)
from familiar_connect.core.policy import TurnPolicy
from familiar_connect.errors import (
    FamiliarError,
)
from familiar_connect.llm.types import CallSettings, ChatMessage
from familiar_connect.logs import log_redactor, safe_error_text
from familiar_connect.storage.history import HistoryWriter, Turn
from familiar_connect.storage.usage import UsageRecord, UsageStore

__all__ = ["Orchestrator", "OrchestratorStats", "SubmitResult"]

log = structlog.get_logger(__name__)

Timings = TextTurnTimings | VoiceTurnTimings


@dataclass(slots=True)
class OrchestratorStats:
    """Counters for the dashboard and the log (monotonic since start)."""

    events_in: int = 0
    accepted: int = 0
    ignored: int = 0
    refused: int = 0
    inbox_overflow: int = 0
    actors_refused: int = 0
    turns: int = 0
    replies: int = 0
    silent: int = 0
    cancelled: int = 0
    failed: int = 0
    history_refused: int = 0


SubmitResult = str
"""``"queued"``, ``"remembered"`` (stored, no reply wanted), ``"ignored"``,
``"refused"`` (a notice was queued), ``"overflow"`` or ``"not_running"``."""


@dataclass(slots=True)
class _Item:
    event: Inbound
    text: str
    addressed: bool
    notice: str | None = None
    notice_only: bool = False
    stored_at: datetime | None = None


@dataclass(slots=True)
class _Actor:
    key: ConversationKey
    sink: ReplySink
    inbox: asyncio.Queue[_Item]
    window: HistoryWindow | None = None
    task: asyncio.Task[None] | None = None
    turn: asyncio.Task[str] | None = None
    last_unprompted_ns: int | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Orchestrator:
    """Routes inbound events to per-conversation actors and runs their turns.

    Run :meth:`run` as a service (it owns the actors' task group); call
    :meth:`submit` from adapters on the event loop thread.
    """

    character: Character
    familiar_user_id: str
    runner: TurnRunner
    context: ContextBuilder
    policy: TurnPolicy
    calls: dict[str, CallSettings]
    history_writer: HistoryWriter | None = None
    usage: UsageStore | None = None
    note_turn: Callable[[str, str, str], None] | None = None
    is_subscribed: Callable[[ConversationKey], bool] = lambda _key: True
    max_actors: int = 1_000
    unprompted_gap_s: float = 30.0
    on_timings: Callable[[Timings], None] | None = None
    observer: Callable[[str, dict[str, Any]], None] | None = None
    paused: bool = False
    muted: set[str] = field(default_factory=set)
    max_saved_prompts: int = 256
    last_prompts: OrderedDict[str, list[dict[str, str]]] = field(default_factory=OrderedDict)
    stats: OrchestratorStats = field(default_factory=OrchestratorStats)
    recent_timings: deque[Timings] = field(default_factory=lambda: deque(maxlen=500))
    _actors: dict[ConversationKey, _Actor] = field(default_factory=dict)
    _group: asyncio.TaskGroup | None = None
    _addressing: AddressDetector | None = None

    def __post_init__(self) -> None:
        self._addressing = AddressDetector(self.character.display_name, self.character.aliases)

    # --- service ------------------------------------------------------------------

    async def run(self) -> None:
        """Own the actors until cancelled; cancelling stops every turn and actor."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await asyncio.Event().wait()
        finally:
            self._group = None
            self._actors.clear()

    @property
    def running(self) -> bool:
        return self._group is not None

    def active_conversations(self) -> list[ConversationKey]:
        return list(self._actors)

    async def wait_idle(self, key: ConversationKey) -> None:
        """Wait until ``key`` has nothing queued and no reply in flight. Safe to cancel."""
        actor = self._actors.get(key)
        if actor is not None:
            await actor.idle.wait()

    def pause(self) -> None:
        """Stop answering everywhere (input is still remembered); cancel replies in flight."""
        self.paused = True
        for key in list(self._actors):
            self.cancel(key)
        self._emit("paused", paused=True)

    def resume(self) -> None:
        """Answer again after :meth:`pause`."""
        self.paused = False
        self._emit("paused", paused=False)

    def mute(self, author_key: str) -> None:
        """Ignore one person (``"discord:123"``) until :meth:`unmute`; nothing of theirs is kept."""
        self.muted.add(author_key)

    def unmute(self, author_key: str) -> None:
        self.muted.discard(author_key)

    def forget_windows(self) -> None:
        """Drop every conversation's in-memory history; each re-reads it (filtered) next turn.

        Called after a privacy change so an opted-out person's words leave the context.
        """
        for actor in self._actors.values():
            actor.window = None

    def _emit(self, kind: str, **data: Any) -> None:
        """Tell the observer (the dashboard) what happened; it must never break a turn."""
        if self.observer is None:
            return
        try:
            self.observer(kind, data)
        except Exception:
            log.exception("observer_failed", kind=kind)

    def is_replying(self, key: ConversationKey) -> bool:
        actor = self._actors.get(key)
        return actor is not None and actor.turn is not None and not actor.turn.done()

    # --- intake -------------------------------------------------------------------

    def submit(self, event: Inbound, sink: ReplySink) -> SubmitResult:
        """Accept one inbound event for its conversation. Never blocks, never raises for input.

        Returns a short code saying what happened (see :data:`SubmitResult`).
        """
        self.stats.events_in += 1
        if self._group is None:
            log.warning("orchestrator_not_running", conversation=event.key.as_str())
            return "not_running"
        now_ns = time.monotonic_ns()
        # Someone pasting the familiar's own keys must not get them stored or sent on.
        raw_text = log_redactor().redact(text_of(event))
        addressed = self._is_addressed(event, raw_text)
        access = self.policy.access.decide(event.author)
        if event.author.key in self.muted:
            access = type(access)(False, "muted")
        if not access.allowed:
            self.stats.ignored += 1
            log.debug("event_ignored", conversation=event.key.as_str(), reason=access.reason)
            return "ignored"
        wants_reply = (addressed or self.is_subscribed(event.key)) and not self.paused
        self._emit(
            "event_received",
            conversation=event.key.as_str(),
            author=event.author.shown_name,
            modality=modality_of(event).value,
            addressed=addressed,
        )
        if not wants_reply:
            text, _ = self.policy.input_limiter.limit(raw_text)
            self._remember(event, text)
            actor = self._actors.get(event.key)
            if actor is not None and actor.window is not None:
                # Context for the next turn (an idle conversation re-reads it from history).
                actor.window.add_user(event.author.shown_name, text, source_label(event))
            return "remembered"
        verdict = self.policy.evaluate(event.author, raw_text, now_ns, _today())
        if verdict.action == "ignore":
            self.stats.ignored += 1
            return "ignored"
        if verdict.action == "refuse_notice":
            self.stats.refused += 1
            item = _Item(event, "", addressed, notice=verdict.notice, notice_only=True)
            return "refused" if self._enqueue(event.key, sink, item) else "overflow"
        self.stats.accepted += 1
        stored_at = self._remember(event, verdict.text)
        item = _Item(event, verdict.text, addressed, notice=verdict.notice, stored_at=stored_at)
        if isinstance(event, Utterance):
            # Barge-in: someone spoke, so the reply being spoken is now stale.
            self.cancel(event.key)
        return "queued" if self._enqueue(event.key, sink, item) else "overflow"

    def cancel(self, key: ConversationKey) -> bool:
        """Cancel the reply in flight in ``key``, if any. Returns whether one was cancelled.

        The turn's LLM stream is closed and its tools cancelled; the sink is told to stop;
        what was already delivered is recorded in history.
        """
        actor = self._actors.get(key)
        if actor is None or actor.turn is None or actor.turn.done():
            return False
        actor.turn.cancel()
        return True

    def _is_addressed(self, event: Inbound, text: str) -> bool:
        assert self._addressing is not None
        if event.key.platform is Platform.TERMINAL:
            return True
        if isinstance(event, TextMessage):
            if event.key.guild_id is None and event.key.platform is Platform.DISCORD:
                return True  # a direct message is always meant for the familiar
            return self._addressing.is_addressed(
                text, mentioned=event.mentions_familiar, replied_to=event.reply_to_familiar
            )
        if (
            isinstance(event, TwitchEvent)
            and event.kind != "chat"
            and self.is_subscribed(event.key)
        ):
            # A follow, raid, gift... the adapter submits for an answer is meant for the
            # familiar: the unprompted gap must not swallow a raid after a follow.
            return True
        return self._addressing.is_addressed(text, mentioned=False, replied_to=False)

    def _enqueue(self, key: ConversationKey, sink: ReplySink, item: _Item) -> bool:
        actor = self._actors.get(key)
        if actor is None:
            if len(self._actors) >= self.max_actors:
                self.stats.actors_refused += 1
                log.warning("conversation_refused_too_many_actors", max_actors=self.max_actors)
                return False
            actor = _Actor(key, sink, asyncio.Queue(self.character.config.limits.inbox_size))
            self._actors[key] = actor
            assert self._group is not None
            actor.task = self._group.create_task(self._actor_loop(actor), name=f"actor:{key}")
        actor.sink = sink
        try:
            actor.inbox.put_nowait(item)
            actor.idle.clear()
        except asyncio.QueueFull:
            self.stats.inbox_overflow += 1
            log.warning("conversation_inbox_full", conversation=key.as_str())
            return False
        return True

    def _remember(self, event: Inbound, text: str) -> datetime:
        """Queue the input for history; return its timestamp."""
        author = event.author
        modality = modality_of(event)
        turn = Turn(
            platform=event.key.platform.value,
            channel=event.key.as_str(),
            author_id=author.user_id,
            author_name=author.shown_name[:200],
            role="event" if isinstance(event, TwitchEvent) else "user",
            content=text,
            modality=modality.value,
            created_at=datetime.now(UTC),
        )
        self._store_turn(turn)
        return turn.created_at

    def _store_turn(self, turn: Turn) -> None:
        if self.history_writer is not None and not self.history_writer.submit(turn):
            self.stats.history_refused += 1
        if self.note_turn is not None:
            self.note_turn(turn.channel, turn.platform, turn.channel)

    # --- the actor ----------------------------------------------------------------

    async def _actor_loop(self, actor: _Actor) -> None:
        idle_s = self.character.config.limits.actor_idle_s
        try:
            while True:
                if actor.inbox.empty():
                    actor.idle.set()
                try:
                    async with asyncio.timeout(idle_s):
                        first = await actor.inbox.get()
                except TimeoutError:
                    if actor.inbox.empty():
                        log.debug("conversation_actor_retired", conversation=actor.key.as_str())
                        return
                    continue
                batch = [first]
                while not actor.inbox.empty():
                    batch.append(actor.inbox.get_nowait())
                try:
                    await self._handle_batch(actor, batch)
                except Exception as exc:
                    # One broken turn must not end the conversation, let alone the process.
                    self.stats.failed += 1
                    log.exception("conversation_turn_crashed", conversation=actor.key.as_str())
                    await _cancel_sink(actor.sink)  # stop a typing indicator it may have begun
                    await _safe_notice(actor.sink, notice_for(exc))
        finally:
            actor.idle.set()
            if self._actors.get(actor.key) is actor:
                del self._actors[actor.key]

    async def _handle_batch(self, actor: _Actor, batch: list[_Item]) -> None:
        for item in batch:
            if item.notice:
                await _safe_notice(actor.sink, item.notice)
        inputs = [item for item in batch if not item.notice_only]
        if not inputs:
            return
        addressed = any(item.addressed for item in inputs)
        now_ns = time.monotonic_ns()
        if actor.window is None:
            # The batch's own inputs may already be in history: read only what came before.
            stamps = [item.stored_at for item in inputs if item.stored_at is not None]
            actor.window = await self.context.new_window(
                actor.key, familiar_id=self.familiar_user_id, before=min(stamps, default=None)
            )
        if not addressed:
            gap_ns = int(self.unprompted_gap_s * 1e9)
            if actor.last_unprompted_ns is not None and now_ns - actor.last_unprompted_ns < gap_ns:
                for item in inputs:
                    actor.window.add_user(
                        item.event.author.shown_name, item.text, source_label(item.event)
                    )
                return
            actor.last_unprompted_ns = now_ns
        await self._run_turn(actor, inputs)

    async def _run_turn(self, actor: _Actor, inputs: list[_Item]) -> None:
        assert actor.window is not None
        self.stats.turns += 1
        last = inputs[-1].event
        modality = modality_of(last)
        call_site = "voice_reply" if modality is Modality.VOICE else "reply"
        call = self.calls[call_site]
        turn_id = uuid.uuid4().hex[:12]
        timings = _new_timings(turn_id, last)
        bound = log.bind(conversation=actor.key.as_str(), turn_id=turn_id)
        sink = actor.sink
        # Typing (or the voice context) first: people see the familiar react while the
        # prompt is being gathered.
        self._emit(
            "turn_started",
            conversation=actor.key.as_str(),
            turn_id=turn_id,
            modality=modality.value,
            authors=sorted({item.event.author.shown_name for item in inputs}),
        )
        try:
            await sink.begin()
        except Exception:
            # A typing indicator that fails must not cost the reply.
            bound.warning("sink_begin_failed", exc_info=True)
        if isinstance(timings, TextTurnTimings):
            timings.stamp("typing_sent", time.monotonic_ns())

        prompt = await self.context.build(
            key=actor.key,
            window=actor.window,
            inputs=[(item.event.author, item.text, source_label(item.event)) for item in inputs],
            platform_hint=platform_hint(actor.key, modality),
        )
        for item in inputs:
            actor.window.add_user(item.event.author.shown_name, item.text, source_label(item.event))
        self.last_prompts[actor.key.as_str()] = prompt.messages
        self.last_prompts.move_to_end(actor.key.as_str())
        while len(self.last_prompts) > self.max_saved_prompts:
            self.last_prompts.popitem(last=False)
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in prompt.messages]
        tool_context = ToolContext(
            conversation=actor.key.as_str(),
            platform=last.author.platform.value,
            author_id=last.author.user_id,
            author_name=last.author.shown_name,
        )
        progress = TurnProgress()
        outcome = "replied"
        delivered = ""
        error_text: str | None = None
        actor.turn = asyncio.get_running_loop().create_task(
            self.runner.run(
                messages=messages,
                call=call,
                sink=sink,
                tool_context=tool_context,
                progress=progress,
            ),
            name=f"turn:{turn_id}",
        )
        try:
            await asyncio.wait([actor.turn])
            if actor.turn.cancelled():
                outcome = "cancelled"
                self.stats.cancelled += 1
                said = await _cancel_sink(sink)
                # A voice sink knows exactly what was played, even when that is nothing.
                delivered = (
                    said if said is not None and sink.mode == "clauses" else (said or progress.text)
                )
            elif (error := actor.turn.exception()) is not None:
                outcome = "failed"
                self.stats.failed += 1
                error_text = safe_error_text(error)
                delivered = await _cancel_sink(sink) or ""
                if isinstance(error, FamiliarError):
                    bound.warning("turn_failed", error=str(error), kind=type(error).__name__)
                else:
                    bound.error("turn_crashed", exc_info=error)
                await _safe_notice(sink, notice_for(error))
            else:
                delivered = actor.turn.result()
                if progress.silent or not delivered:
                    outcome = "silent"
                    self.stats.silent += 1
                else:
                    self.stats.replies += 1
        except asyncio.CancelledError:
            # The actor itself is being stopped (shutdown): stop the turn, keep what was said.
            actor.turn.cancel()
            delivered = (await _cancel_sink(sink)) or progress.text
            outcome = "cancelled"
            self._finish_turn(actor, last, delivered, progress, timings, call, outcome)
            raise
        finally:
            actor.turn = None
        self._finish_turn(actor, last, delivered, progress, timings, call, outcome)
        self._emit(
            "turn_finished",
            conversation=actor.key.as_str(),
            turn_id=turn_id,
            modality=modality.value,
            outcome=outcome,
            text=delivered[:500],
            model=progress.model,
            timings_ms=timings.durations_ms(),
            error=error_text,
        )
        bound.info(
            "turn_finished",
            outcome=outcome,
            inputs=len(inputs),
            chars=len(delivered),
            llm_calls=progress.llm_calls,
            tool_calls=progress.tool_calls,
            model=progress.model,
        )
        await self._record_usage(last, progress, call, call_site, actor.key)

    def _finish_turn(
        self,
        actor: _Actor,
        last: Inbound,
        delivered: str,
        progress: TurnProgress,
        timings: Timings,
        call: CallSettings,
        outcome: str,
    ) -> None:
        now_ns = time.monotonic_ns()
        if isinstance(timings, TextTurnTimings):
            if progress.first_token_ns is not None:
                timings.stamp("first_token", progress.first_token_ns)
            if delivered:
                timings.stamp("posted", now_ns)
        else:
            if progress.first_token_ns is not None:
                timings.stamp("first_token", progress.first_token_ns)
            if progress.first_clause_ns is not None:
                timings.stamp("first_clause", progress.first_clause_ns)
            # The voice sink knows when audio arrived and the first frame played.
            reply_stamps = getattr(actor.sink, "reply_stamps", None)
            if callable(reply_stamps):
                for stage, value in reply_stamps().items():
                    timings.stamp(stage, value)
        self.recent_timings.append(timings)
        if self.on_timings is not None:
            try:
                self.on_timings(timings)
            except Exception:
                log.exception("timings_observer_failed")
        if not delivered:
            return
        delivered = log_redactor().redact(delivered)
        if actor.window is not None:
            actor.window.add_assistant(delivered)
        meta: dict[str, Any] = {"outcome": outcome, "model": progress.model or call.model}
        meta["timings_ms"] = timings.durations_ms()
        self._store_turn(
            Turn(
                platform=actor.key.platform.value,
                channel=actor.key.as_str(),
                author_id=self.familiar_user_id,
                author_name=self.character.display_name,
                role="assistant",
                content=delivered,
                modality=modality_of(last).value,
                created_at=datetime.now(UTC),
                meta=meta,
            )
        )

    async def _record_usage(
        self,
        last: Inbound,
        progress: TurnProgress,
        call: CallSettings,
        call_site: str,
        key: ConversationKey,
    ) -> None:
        if not progress.usage:
            return
        tokens = sum(report.total_tokens for report in progress.usage)
        cost = sum(report.cost_usd or 0.0 for report in progress.usage)
        self.policy.charge(last.author, _today(), tokens, cost)
        if self.usage is None:
            return
        records = [
            UsageRecord(
                created_at=datetime.now(UTC),
                call_site=call_site,
                model=report.model or call.model,
                prompt_tokens=report.prompt_tokens,
                completion_tokens=report.completion_tokens,
                cost_usd=report.cost_usd or 0.0,
                platform=last.author.platform.value,
                user_id=last.author.user_id,
                ttft_ms=report.ttft_ms,
                conversation=key.as_str(),
            )
            for report in progress.usage
        ]
        try:
            await self.usage.record_many(records)
        except FamiliarError as exc:
            log.warning("usage_record_failed", error=str(exc))


# --- helpers ---------------------------------------------------------------------------


def _today() -> date:
    return datetime.now(UTC).date()


def _new_timings(turn_id: str, event: Inbound) -> Timings:
    if isinstance(event, Utterance):
        timings = VoiceTurnTimings(turn_id=turn_id)
        timings.stamp("speech_end", event.speech_end_ns)
        timings.stamp("stt_final", event.stt_final_ns)
        return timings
    received = event.received_ns
    return TextTurnTimings(turn_id=turn_id, received_ns=received)


async def _safe_notice(sink: ReplySink, text: str) -> None:
    try:
        await sink.notice(text)
    except Exception:
        log.warning("notice_delivery_failed", exc_info=True)


async def _cancel_sink(sink: ReplySink) -> str | None:
    try:
        return await sink.cancel()
    except Exception:
        log.warning("sink_cancel_failed", exc_info=True)
        return None
