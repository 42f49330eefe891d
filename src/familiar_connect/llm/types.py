"""Value types of the LLM layer: messages, tools, call settings and stream events.

Everything here is a frozen dataclass with no I/O. ``to_wire()`` methods give
the OpenAI-compatible chat-completions JSON shape that OpenRouter (and local
OpenAI-compatible servers) accept.

A streamed reply is a sequence of :data:`StreamEvent` values, always in this
order::

    TextDelta*  ToolCallsReady?  Finished  UsageReport?

``UsageReport`` is absent when the server sent no usage (local servers often
do not).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeAlias

from familiar_connect.errors import ToolArgumentError

__all__ = [
    "CallSettings",
    "ChatMessage",
    "ChatModel",
    "Completion",
    "Finished",
    "Role",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallsReady",
    "ToolSpec",
    "UsageReport",
]

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]

_ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the model asked for.

    Attributes:
        id: the provider's call id; a ``tool`` message answers it by this id.
        name: the function name, as the model wrote it (not yet checked
            against any registry).
        arguments_json: the raw argument text, exactly as streamed. It is not
            parsed here so that a malformed call can still be echoed back to
            the model in the assistant message.
    """

    id: str
    name: str
    arguments_json: str

    def arguments(self) -> dict[str, Any]:
        """Parse the arguments.

        An empty or all-whitespace argument string means "no arguments" and
        gives ``{}``: models commonly stream nothing for parameterless tools.

        Returns:
            The arguments as a JSON object.

        Raises:
            ToolArgumentError: the text is not JSON, or not a JSON object.
        """
        text = self.arguments_json.strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            # The raw text is the model's, possibly long; name position only.
            raise ToolArgumentError(
                f"arguments for tool {self.name!r} are not valid JSON "
                f"({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        if not isinstance(value, dict):
            raise ToolArgumentError(
                f"arguments for tool {self.name!r} must be a JSON object, "
                f"got {type(value).__name__}"
            )
        return value

    def to_wire(self) -> dict[str, Any]:
        """Return the call as it appears in an assistant message's ``tool_calls``."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments_json},
        }


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the prompt.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: the text; ``None`` only for an assistant message that
            carries ``tool_calls`` and no text.
        name: optional participant name (OpenAI ``name`` field).
        tool_calls: calls an assistant message made, replayed in history.
        tool_call_id: for ``tool`` messages, the call this result answers.

    Raises:
        ValueError: on construction, for an unknown role, a ``tool`` message
            without ``tool_call_id``, or ``content=None`` without tool calls.
    """

    role: Role
    content: str | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = None

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"unknown chat role {self.role!r}")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.content is None and not self.tool_calls:
            raise ValueError("content may be None only for an assistant message with tool_calls")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")

    @classmethod
    def system(cls, content: str) -> ChatMessage:
        """Build a system message."""
        return cls(role="system", content=content)

    @classmethod
    def user(cls, content: str, *, name: str | None = None) -> ChatMessage:
        """Build a user message, optionally naming the speaker."""
        return cls(role="user", content=content, name=name)

    @classmethod
    def assistant(
        cls, content: str | None, *, tool_calls: Sequence[ToolCall] | None = None
    ) -> ChatMessage:
        """Build an assistant message, optionally replaying the calls it made."""
        return cls(
            role="assistant",
            content=content,
            tool_calls=tuple(tool_calls) if tool_calls else None,
        )

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> ChatMessage:
        """Build the result message answering one tool call."""
        return cls(role="tool", content=content, tool_call_id=tool_call_id)

    def to_wire(self) -> dict[str, Any]:
        """Return the OpenAI-compatible JSON object for this message.

        Optional fields are omitted when unset, because some
        OpenAI-compatible servers reject explicit nulls.
        """
        wire: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            wire["name"] = self.name
        if self.tool_calls:
            wire["tool_calls"] = [call.to_wire() for call in self.tool_calls]
        if self.tool_call_id is not None:
            wire["tool_call_id"] = self.tool_call_id
        return wire


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call.

    Attributes:
        name: function name the model will use.
        description: what the tool does, for the model.
        parameters: JSON Schema of the arguments object.
    """

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def to_wire(self) -> dict[str, Any]:
        """Return the OpenAI ``tools`` entry (``type: function``)."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True, slots=True)
class CallSettings:
    """Per-call model choice and sampling options.

    Attributes:
        model: the primary model slug, e.g. ``"openai/gpt-4o-mini"``.
        fallback_models: tried in order by OpenRouter if the primary fails
            (sent as the ``models`` array).
        temperature: sampling temperature; provider default when ``None``.
        max_tokens: completion length cap; provider default when ``None``.
        reasoning_effort: ``"low"``/``"medium"``/``"high"`` for reasoning
            models; not sent when ``None``.
    """

    model: str
    fallback_models: tuple[str, ...] = ()
    temperature: float | None = None
    max_tokens: int | None = None
    reasoning_effort: str | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of reply text, in stream order."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallsReady:
    """Every tool call of the reply, complete, ordered by stream index."""

    calls: tuple[ToolCall, ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The model stopped.

    Attributes:
        reason: ``stop``, ``tool_calls``, ``length``, ``content_filter``, or
            whatever the server said (``error`` never arrives here: it raises).
        model: the model that actually served, when the server said.
    """

    reason: str
    model: str | None


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Token use and cost of one streamed call.

    Attributes:
        prompt_tokens: input tokens.
        completion_tokens: output tokens (including reasoning tokens).
        total_tokens: as reported by the server.
        cost_usd: OpenRouter's ``usage.cost`` in credits (USD); ``None`` when
            the server does not report cost.
        model: the model that actually served.
        cached_tokens: prompt tokens served from the provider's cache.
        reasoning_tokens: completion tokens spent on hidden reasoning.
        ttft_ms: milliseconds from the start of the call (including any
            retries) to the first text or tool-call delta; ``None`` if there
            was none.
        generation_id: OpenRouter's generation id, for later look-ups.
    """

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    model: str | None
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    ttft_ms: float | None = None
    generation_id: str | None = None


StreamEvent: TypeAlias = TextDelta | ToolCallsReady | Finished | UsageReport
"""One event of a streamed reply."""


@dataclass(frozen=True, slots=True)
class Completion:
    """A whole reply, drained from a stream.

    Attributes:
        text: all text deltas joined.
        tool_calls: the calls the model made (empty when none).
        finish_reason: as in :class:`Finished`.
        model: the model that actually served, when known.
        usage: the usage report, or ``None`` when the server sent none.
    """

    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    model: str | None
    usage: UsageReport | None


class ChatModel(Protocol):
    """What the conversation layer needs from an LLM client.

    :class:`~familiar_connect.llm.openrouter.OpenRouterClient` implements it;
    so can a test double for pure unit tests of callers.
    """

    def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        call: CallSettings,
        *,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        """Stream one reply; see ``OpenRouterClient.stream_chat``."""
        ...

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        call: CallSettings,
        *,
        tools: Sequence[ToolSpec] = (),
    ) -> Completion:
        """Return one whole reply; see ``OpenRouterClient.complete``."""
        ...
