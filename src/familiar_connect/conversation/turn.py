"""One reply: stream the model, run its tool calls, and feed the reply into a sink.

:class:`TurnRunner` owns the model → tool → model loop of a single turn. It
knows nothing about conversations or policy; the orchestrator gives it the
prompt, the sink and the tool context, and reads the outcome.

Bounds: at most ``max_tool_iterations`` rounds of tool calls, then one last
model call whose tool calls are ignored; at most ``max_reply_chars`` of reply
text (the stream is closed once the cap is reached); each tool call has its
own timeout and result cap (see :mod:`familiar_connect.conversation.tools`).

Cancellation: cancelling :meth:`TurnRunner.run` closes the LLM stream at once
(the async generator is closed by ``aclosing``) and cancels a running tool.
The :class:`TurnProgress` passed in keeps what was already handed to the sink,
so the caller can record exactly what was delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import structlog

from familiar_connect.conversation.sinks import ReplySink
from familiar_connect.conversation.tools import ToolContext, ToolRegistry
from familiar_connect.core.chunking import ClauseChunker
from familiar_connect.core.output_filter import OutputFilter
from familiar_connect.core.prompt import fence
from familiar_connect.llm.types import (
    CallSettings,
    ChatMessage,
    ChatModel,
    Finished,
    TextDelta,
    ToolCall,
    ToolCallsReady,
    UsageReport,
)

__all__ = ["TurnProgress", "TurnRunner"]

log = structlog.get_logger(__name__)

_TOOL_RESULT_SOURCE = "tool result"


@dataclass(slots=True)
class TurnProgress:
    """What a turn has done so far; read by the caller after success, error or cancellation.

    Attributes:
        emitted: filtered reply text handed to the sink so far.
        usage: usage reports of every model call in the turn.
        model: the model that served the last call, when the provider said.
        tool_calls: tool calls executed.
        llm_calls: model calls made.
        first_token_ns: monotonic time the first reply text reached the sink.
        first_clause_ns: monotonic time the first clause reached a ``"clauses"`` sink.
        silent: the model chose to stay quiet (``<silent>``).
        truncated: the reply hit ``max_reply_chars``.
    """

    emitted: list[str] = field(default_factory=list)
    usage: list[UsageReport] = field(default_factory=list)
    model: str | None = None
    tool_calls: int = 0
    llm_calls: int = 0
    first_token_ns: int | None = None
    first_clause_ns: int | None = None
    silent: bool = False
    truncated: bool = False

    @property
    def text(self) -> str:
        return "".join(self.emitted)


class _ReplyCapReached(Exception):
    """Internal: the reply reached its character cap; stop reading the stream."""


class TurnRunner:
    """Runs one model turn with tools into a sink.

    Args:
        llm: the chat model (the OpenRouter client).
        tools: the tool registry, or None for a turn without tools.
        max_tool_iterations: rounds of tool calls allowed per turn.
        tool_timeout_s: timeout of each tool call.
        max_tool_result_chars: cap on each tool result shown to the model.
        max_reply_chars: cap on the reply text.
        clock_ns: monotonic clock (tests may inject one).
    """

    def __init__(
        self,
        *,
        llm: ChatModel,
        tools: ToolRegistry | None,
        max_tool_iterations: int,
        tool_timeout_s: float,
        max_tool_result_chars: int,
        max_reply_chars: int,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.llm = llm
        self.tools = tools
        self.max_tool_iterations = max_tool_iterations
        self.tool_timeout_s = tool_timeout_s
        self.max_tool_result_chars = max_tool_result_chars
        self.max_reply_chars = max_reply_chars
        self._clock_ns = clock_ns

    async def run(
        self,
        *,
        messages: Sequence[ChatMessage],
        call: CallSettings,
        sink: ReplySink,
        tool_context: ToolContext,
        progress: TurnProgress,
    ) -> str:
        """Generate one reply into ``sink``; return the text the sink says it delivered.

        A silent reply (``<silent>``) cancels the sink's reply and returns ``""``.

        Raises:
            ProviderError: the model call failed; ``progress`` says what was already sent.
            asyncio.CancelledError: cancelled; the stream and any tool call are closed.
        """
        conversation = list(messages)
        output = OutputFilter()
        chunker = ClauseChunker() if sink.mode == "clauses" else None
        specs = self.tools.specs() if self.tools is not None else []
        for iteration in range(self.max_tool_iterations + 1):
            last_round = iteration == self.max_tool_iterations
            round_start = len(progress.emitted)
            try:
                calls = await self._stream_round(
                    conversation, call, specs, sink, output, chunker, progress
                )
            except _ReplyCapReached:
                progress.truncated = True
                calls = ()
            if not calls:
                break
            if last_round or self.tools is None:
                log.warning(
                    "tool_calls_ignored_at_limit",
                    conversation=tool_context.conversation,
                    iterations=iteration,
                    calls=len(calls),
                )
                break
            round_text = "".join(progress.emitted[round_start:])
            conversation.append(ChatMessage.assistant(round_text or None, tool_calls=calls))
            for tool_call in calls:
                conversation.append(await self._run_tool(tool_call, tool_context, progress))
        tail = output.finish()
        if tail and not progress.truncated:
            await self._emit(tail, sink, chunker, progress)
        if chunker is not None:
            for clause in chunker.flush():
                await self._send_clause(clause, sink, progress)
        if output.silent or not progress.text.strip():
            progress.silent = output.silent
            await sink.cancel()
            return ""
        return await sink.end(progress.text)

    async def _stream_round(
        self,
        conversation: list[ChatMessage],
        call: CallSettings,
        specs: list,
        sink: ReplySink,
        output: OutputFilter,
        chunker: ClauseChunker | None,
        progress: TurnProgress,
    ) -> tuple[ToolCall, ...]:
        calls: tuple[ToolCall, ...] = ()
        progress.llm_calls += 1
        stream = self.llm.stream_chat(conversation, call, tools=specs)
        async with aclosing(stream) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    visible = output.feed(event.text)
                    if visible:
                        await self._emit(visible, sink, chunker, progress)
                elif isinstance(event, ToolCallsReady):
                    calls = event.calls
                elif isinstance(event, UsageReport):
                    progress.usage.append(event)
                    progress.model = event.model or progress.model
                elif isinstance(event, Finished):
                    progress.model = event.model or progress.model
        return calls

    async def _emit(
        self,
        text: str,
        sink: ReplySink,
        chunker: ClauseChunker | None,
        progress: TurnProgress,
    ) -> None:
        room = self.max_reply_chars - len(progress.text)
        capped = len(text) > room
        text = text[: max(room, 0)]
        if text:
            if progress.first_token_ns is None:
                progress.first_token_ns = self._clock_ns()
            progress.emitted.append(text)
            if chunker is None:
                await sink.send(text)
            else:
                for clause in chunker.feed(text):
                    await self._send_clause(clause, sink, progress)
        if capped:
            raise _ReplyCapReached

    async def _send_clause(self, clause: str, sink: ReplySink, progress: TurnProgress) -> None:
        if progress.first_clause_ns is None:
            progress.first_clause_ns = self._clock_ns()
        await sink.send(clause)

    async def _run_tool(
        self, tool_call: ToolCall, context: ToolContext, progress: TurnProgress
    ) -> ChatMessage:
        assert self.tools is not None
        progress.tool_calls += 1
        result = await self.tools.execute(
            tool_call,
            context,
            timeout_s=self.tool_timeout_s,
            max_result_chars=self.max_tool_result_chars,
        )
        log.info(
            "tool_called",
            tool=tool_call.name,
            conversation=context.conversation,
            error=result.is_error,
        )
        # Tool results carry text from notes and people: data, never instructions.
        body = fence(
            result.content,
            source=f"{_TOOL_RESULT_SOURCE} {tool_call.name}",
            max_chars=self.max_tool_result_chars + 200,
        )
        return ChatMessage.tool(tool_call.id, body)
