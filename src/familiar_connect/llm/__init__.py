"""The LLM layer: value types, the sans-I/O stream reader and the OpenRouter client.

Callers import from here::

    from familiar_connect.llm import CallSettings, ChatMessage, OpenRouterClient
"""

from __future__ import annotations

from familiar_connect.llm.openrouter import (
    OPENROUTER_BASE_URL,
    OpenRouterClient,
    UsageCallback,
    build_chat_body,
    parse_retry_after,
)
from familiar_connect.llm.sse import ChunkInterpreter, SSEParser, error_for_status
from familiar_connect.llm.types import (
    CallSettings,
    ChatMessage,
    ChatModel,
    Completion,
    Finished,
    Role,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallsReady,
    ToolSpec,
    UsageReport,
)

__all__ = [
    "OPENROUTER_BASE_URL",
    "CallSettings",
    "ChatMessage",
    "ChatModel",
    "ChunkInterpreter",
    "Completion",
    "Finished",
    "OpenRouterClient",
    "Role",
    "SSEParser",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolCallsReady",
    "ToolSpec",
    "UsageCallback",
    "UsageReport",
    "build_chat_body",
    "error_for_status",
    "parse_retry_after",
]
