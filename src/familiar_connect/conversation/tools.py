"""Tools the model may call: definitions, a registry, argument checking and safe execution.

A :class:`Tool` pairs a JSON-schema description (what the model sees, as a
:class:`~familiar_connect.llm.types.ToolSpec`) with an async handler. The
:class:`ToolRegistry` runs one :class:`~familiar_connect.llm.types.ToolCall` at
a time and always answers with a :class:`ToolResult` whose ``content`` is JSON
text, because a model's mistake must become something the model can read and
correct, never an exception that ends the turn:

============================  ==================================================
what went wrong               ``content``
============================  ==================================================
no such tool                  ``{"error": "unknown_tool", "message", "available"}``
arguments not JSON / schema   ``{"error": "invalid_arguments", "message"}``
handler raised FamiliarError  ``{"error": "<snake_case class>", "message"}``
handler raised anything else  ``{"error": "tool_failed"}`` (details only in the log)
handler ran past timeout_s    ``{"error": "timeout"}``
result over max_result_chars  the result cut down, with ``"truncated": true``
============================  ==================================================

Error messages shown to the model go through
:func:`familiar_connect.logs.safe_error_text` (secrets redacted, one line,
capped), the memory root's absolute path becomes ``memory/`` and any other
absolute path becomes ``<path>``.

The argument checker implements the JSON-schema subset the tools use:
``type`` (object, string, integer, number, boolean, array; a boolean is not
an integer), ``properties``, ``required``, ``additionalProperties: false``,
``minLength``/``maxLength``, ``minimum``/``maximum``, ``minItems``/``maxItems``,
``enum`` and ``items``. Schemas are checked when a tool is built, so a keyword
we would silently ignore (``pattern``, ``oneOf``...) is refused up front.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import structlog

from familiar_connect.errors import (
    FamiliarError,
    ToolArgumentError,
    UnknownToolError,
)
from familiar_connect.llm.types import ChatMessage, ToolCall, ToolSpec
from familiar_connect.logs import safe_error_text

__all__ = [
    "MIN_RESULT_CHARS",
    "Tool",
    "ToolContext",
    "ToolHandler",
    "ToolOutput",
    "ToolRegistry",
    "ToolResult",
    "check_schema",
    "validate_arguments",
]

log = structlog.get_logger(__name__)

MIN_RESULT_CHARS: Final = 128
"""The smallest ``max_result_chars`` accepted; the smallest error result fits in it."""

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's function-name rule
_MAX_ECHO_CHARS: Final = 64  # model-written names echoed back in messages
_MAX_MESSAGE_CHARS: Final = 300
_MAX_DESCRIPTION_CHARS: Final = 4_000
_MAX_SCHEMA_DEPTH: Final = 8
_MAX_RESULT_DEPTH: Final = 32
_SCHEMA_TYPES: Final = frozenset({"object", "string", "integer", "number", "boolean", "array"})
_ANNOTATIONS: Final = frozenset({"description", "title", "default", "examples"})
_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "minItems",
        "maxItems",
        "enum",
        "items",
    }
)
_COUNT_KEYWORDS: Final = ("minLength", "maxLength", "minItems", "maxItems")
_ARTICLE: Final = {
    "object": "an object",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
}
# An absolute POSIX path not glued to a word, URL or relative path before it.
_ABS_PATH_RE: Final = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)*[^\s/'\"]+/?")
_CAMEL_RE: Final = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool call is made for; handlers use it for audit context, never for trust.

    Attributes:
        conversation: the conversation key, e.g. ``"discord:123"``.
        platform: the speaker's platform, e.g. ``"discord"``.
        author_id: the speaker's platform user id.
        author_name: the speaker's display name (untrusted text).
    """

    conversation: str
    platform: str
    author_id: str
    author_name: str


ToolOutput: TypeAlias = str | dict[str, Any] | list[Any]
"""What a handler returns: a dict is the result object; a str or list becomes ``{"result": ...}``."""

ToolHandler: TypeAlias = Callable[[dict[str, Any], ToolContext], Awaitable[ToolOutput]]
"""``await handler(arguments, context)``; arguments already match the tool's schema."""


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call.

    Attributes:
        name: ``[A-Za-z0-9_-]{1,64}``, unique within a registry.
        description: what the tool does and when to use it, for the model.
        parameters: JSON schema of the arguments; ``type`` must be ``object``
            and only the supported subset (module docstring) may be used.
        handler: the coroutine function that does the work. It may raise any
            :class:`~familiar_connect.errors.FamiliarError` to report a
            problem to the model; cancellation must be allowed to propagate.

    Raises:
        ValueError: on construction, for a bad name, an over-long
            description or an unsupported schema.
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    handler: ToolHandler

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(f"tool name must match {_NAME_RE.pattern}, got {self.name!r}")
        if not self.description or len(self.description) > _MAX_DESCRIPTION_CHARS:
            raise ValueError(f"tool {self.name!r}: description must be 1..4000 characters")
        check_schema(self.parameters)
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name!r}: the parameters schema must have type object")
        if not callable(self.handler):
            raise ValueError(f"tool {self.name!r}: handler must be callable")

    def spec(self) -> ToolSpec:
        """Return the description the model is given."""
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The answer to one tool call.

    Attributes:
        call_id: the :class:`ToolCall` id this answers.
        name: the tool name as the model wrote it.
        content: JSON text (always parses), at most the ``max_result_chars``
            given to :meth:`ToolRegistry.execute`.
        is_error: True when ``content`` is an ``{"error": ...}`` object.
    """

    call_id: str
    name: str
    content: str
    is_error: bool

    @property
    def error_kind(self) -> str | None:
        """The ``error`` field of an error result, else ``None``."""
        if not self.is_error:
            return None
        kind = json.loads(self.content).get("error")
        return kind if isinstance(kind, str) else None

    def to_message(self) -> ChatMessage:
        """Return the ``tool`` message that answers the call in the next prompt."""
        return ChatMessage.tool(self.call_id, self.content)


class ToolRegistry:
    """The tools one familiar offers, and the one place tool calls are executed.

    Args:
        memory_root: the memory directory; its absolute path is replaced by
            ``memory/`` in error messages the model sees.
        max_tools: the most tools that may be registered.
    """

    def __init__(
        self, *, memory_root: str | os.PathLike[str] | None = None, max_tools: int = 64
    ) -> None:
        if max_tools < 1:
            raise ValueError("max_tools must be at least 1")
        self._tools: dict[str, Tool] = {}
        self._max_tools = max_tools
        self._roots = _root_forms(memory_root)

    def register(self, tool: Tool) -> None:
        """Add a tool.

        Raises:
            ValueError: a tool of that name exists, or ``max_tools`` is reached.
        """
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        if len(self._tools) >= self._max_tools:
            raise ValueError(f"at most {self._max_tools} tools may be registered")
        self._tools[tool.name] = tool

    def specs(self) -> list[ToolSpec]:
        """Return every tool's spec, in registration order, for the LLM request."""
        return [tool.spec() for tool in self._tools.values()]

    def names(self) -> list[str]:
        """Return the registered tool names, in registration order."""
        return list(self._tools)

    def get(self, name: str) -> Tool | None:
        """Return the tool called ``name``, or ``None``."""
        return self._tools.get(name)

    async def execute(
        self,
        call: ToolCall,
        ctx: ToolContext,
        *,
        timeout_s: float,
        max_result_chars: int,
    ) -> ToolResult:
        """Run one tool call and return its JSON result; model mistakes never raise.

        Args:
            call: the call as the model made it (name and raw argument text).
            ctx: who the call is made for.
            timeout_s: the handler's time limit in seconds; past it the
                handler is cancelled and the result is ``{"error": "timeout"}``.
            max_result_chars: the most characters of ``content``; a larger
                result is cut down (strings shortened, lists shortened) and
                marked ``"truncated": true``.

        Returns:
            The result; ``is_error`` tells success from failure.

        Raises:
            ValueError: ``timeout_s`` is not a positive finite number or
                ``max_result_chars`` is below :data:`MIN_RESULT_CHARS`
                (caller bugs, not model mistakes).

        Cancellation:
            Cancelling the caller cancels the handler and propagates
            :class:`asyncio.CancelledError`; nothing is returned. Work a
            handler handed to a thread (e.g. a memory write) may still finish.
        """
        if not (isinstance(timeout_s, int | float) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError("timeout_s must be a positive number of seconds")
        if max_result_chars < MIN_RESULT_CHARS:
            raise ValueError(f"max_result_chars must be at least {MIN_RESULT_CHARS}")
        started_ns = time.monotonic_ns()
        result = await self._run(call, ctx, started_ns, timeout_s, max_result_chars)
        log.info(
            "tool_executed",
            tool=result.name[:_MAX_ECHO_CHARS],
            conversation=ctx.conversation,
            is_error=result.is_error,
            error=result.error_kind,
            result_chars=len(result.content),
            duration_ms=round((time.monotonic_ns() - started_ns) / 1e6, 3),
        )
        return result

    async def _run(
        self,
        call: ToolCall,
        ctx: ToolContext,
        started_ns: int,
        timeout_s: float,
        max_result_chars: int,
    ) -> ToolResult:
        cap = max_result_chars
        tool = self._tools.get(call.name)
        if tool is None:
            return _error(
                call,
                "unknown_tool",
                max_chars=cap,
                message=f"there is no tool named {_echo(call.name)}",
                available=self.names(),
            )
        try:
            arguments = call.arguments()
            validate_arguments(tool.parameters, arguments)
        except ToolArgumentError as exc:
            return _error(call, "invalid_arguments", max_chars=cap, message=self._message(exc))
        except (ValueError, RecursionError):
            # json.loads raises these past ToolCall.arguments for absurd nesting or digits.
            return _error(
                call, "invalid_arguments", max_chars=cap, message="the arguments are not valid JSON"
            )
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                output = await tool.handler(arguments, ctx)
        except TimeoutError:
            if deadline.expired():
                return _error(
                    call, "timeout", max_chars=cap, message=f"no result within {timeout_s:g} s"
                )
            log.error("tool_failed", tool=tool.name, exc_info=True)
            return _error(call, "tool_failed", max_chars=cap)
        except FamiliarError as exc:
            return _error(call, _kind(exc), max_chars=cap, message=self._message(exc))
        except Exception:
            log.error("tool_failed", tool=tool.name, exc_info=True)
            return _error(call, "tool_failed", max_chars=cap)
        try:
            content = _encode(output, max_result_chars=max_result_chars)
        except (TypeError, ValueError, RecursionError):
            log.error("tool_result_not_json", tool=tool.name, exc_info=True)
            return _error(call, "tool_failed", max_chars=cap)
        return ToolResult(call.id, call.name, content, is_error=False)

    def _message(self, exc: BaseException) -> str:
        """A short, redacted message for the model, with no absolute paths in it."""
        text = safe_error_text(exc)
        prefix = f"{type(exc).__name__}: "
        if text.startswith(prefix):
            text = text[len(prefix) :]
        for root in self._roots:
            text = text.replace(root + "/", "memory/").replace(root, "memory")
        text = _ABS_PATH_RE.sub("<path>", text)
        return text[:_MAX_MESSAGE_CHARS]


# -- schemas -----------------------------------------------------------------


def check_schema(schema: object, *, _depth: int = 0) -> None:
    """Check that ``schema`` uses only the supported JSON-schema subset.

    Raises:
        ValueError: an unknown keyword or type, a malformed keyword value, a
            ``required`` name missing from ``properties``, or nesting deeper
            than 8 levels.
    """
    if _depth > _MAX_SCHEMA_DEPTH:
        raise ValueError("schema is nested too deeply")
    if not isinstance(schema, Mapping):
        raise ValueError("a schema must be a mapping")
    unknown = set(schema) - _KEYWORDS - _ANNOTATIONS
    if unknown:
        raise ValueError(f"unsupported schema keywords: {sorted(unknown)}")
    kind = schema.get("type")
    if kind not in _SCHEMA_TYPES:
        raise ValueError(f"schema type must be one of {sorted(_SCHEMA_TYPES)}, got {kind!r}")
    for key in _COUNT_KEYWORDS:
        value = schema.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise ValueError(f"{key} must be a non-negative integer")
    for key in ("minimum", "maximum"):
        value = schema.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{key} must be a finite number")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise ValueError("enum must be a non-empty list")
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        raise ValueError("properties must be a mapping")
    for name, sub in properties.items():
        if not isinstance(name, str):
            raise ValueError("property names must be strings")
        check_schema(sub, _depth=_depth + 1)
    required = schema.get("required", [])
    if not isinstance(required, list) or any(name not in properties for name in required):
        raise ValueError("required must list names defined in properties")
    if not isinstance(schema.get("additionalProperties", True), bool):
        raise ValueError("additionalProperties must be true or false")
    if "items" in schema:
        check_schema(schema["items"], _depth=_depth + 1)


def validate_arguments(schema: Mapping[str, Any], value: object) -> None:
    """Check parsed arguments against a schema accepted by :func:`check_schema`.

    Raises:
        ToolArgumentError: the first mismatch, naming the field (e.g.
            ``'limit' must be at most 20``).
    """
    _validate(schema, value, "")


def _validate(schema: Mapping[str, Any], value: object, where: str) -> None:
    kind = schema["type"]
    label = f"{_echo(where)}" if where else "the arguments"
    if not _has_type(value, kind):
        raise ToolArgumentError(f"{label} must be {_ARTICLE[kind]}, got {_json_type(value)}")
    if "enum" in schema and not any(
        type(option) is type(value) and option == value for option in schema["enum"]
    ):
        choices = ", ".join(json.dumps(option) for option in schema["enum"])
        raise ToolArgumentError(f"{label} must be one of: {choices}"[:_MAX_MESSAGE_CHARS])
    if isinstance(value, str):
        _check_count(schema, len(value), label, "minLength", "maxLength", "characters")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, label)
    elif isinstance(value, list):
        _check_count(schema, len(value), label, "minItems", "maxItems", "items")
        item_schema = schema.get("items")
        if item_schema is not None:
            for index, item in enumerate(value):
                _validate(item_schema, item, f"{where}[{index}]")
    elif isinstance(value, dict):
        _validate_object(schema, value, where)


def _validate_object(schema: Mapping[str, Any], value: dict[str, Any], where: str) -> None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    prefix = f"{where}." if where else ""
    for name in schema.get("required", []):
        if name not in value:
            raise ToolArgumentError(f"missing required field {_echo(prefix + name)}")
    if schema.get("additionalProperties", True) is False:
        extra = sorted(name for name in value if name not in properties)
        if extra:
            allowed = ", ".join(properties) or "none"
            raise ToolArgumentError(
                f"unexpected field {_echo(prefix + extra[0])} (allowed: {allowed})"
            )
    for name, sub in properties.items():
        if name in value:
            _validate(sub, value[name], prefix + name)


def _check_count(
    schema: Mapping[str, Any], count: int, label: str, low: str, high: str, unit: str
) -> None:
    if low in schema and count < schema[low]:
        raise ToolArgumentError(f"{label} must have at least {schema[low]} {unit}, got {count}")
    if high in schema and count > schema[high]:
        raise ToolArgumentError(f"{label} must have at most {schema[high]} {unit}, got {count}")


def _check_number(schema: Mapping[str, Any], value: float, label: str) -> None:
    if not math.isfinite(value):
        raise ToolArgumentError(f"{label} must be a finite number")
    if "minimum" in schema and value < schema["minimum"]:
        raise ToolArgumentError(f"{label} must be at least {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ToolArgumentError(f"{label} must be at most {schema['maximum']}")


def _has_type(value: object, kind: str) -> bool:
    # bool is a subclass of int in Python, but not an integer in JSON schema.
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list)
    return isinstance(value, dict)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


# -- results -----------------------------------------------------------------


def _error(call: ToolCall, kind: str, *, max_chars: int, **fields: Any) -> ToolResult:
    payload = {"error": kind, **fields}
    content = _dumps(payload)
    if len(content) > max_chars:  # e.g. a long list of available tools
        content = _truncated(payload, original_chars=len(content), max_chars=max_chars)
    return ToolResult(call.id, call.name, content, is_error=True)


def _kind(exc: FamiliarError) -> str:
    """The ``error`` field for an exception: snake_case class name, two renamed."""
    if isinstance(exc, UnknownToolError):
        return "unknown_tool"
    if isinstance(exc, ToolArgumentError):
        return "invalid_arguments"
    return _CAMEL_RE.sub("_", type(exc).__name__).lower()


def _echo(text: str) -> str:
    """Quote a model-written name for a message, capped."""
    return repr(text[:_MAX_ECHO_CHARS] + ("…" if len(text) > _MAX_ECHO_CHARS else ""))


def _root_forms(root: str | os.PathLike[str] | None) -> tuple[str, ...]:
    if root is None:
        return ()
    given = os.path.abspath(os.fspath(root)).rstrip("/")
    forms = {given, str(Path(given).resolve()).rstrip("/")}
    # Longest first, so a root nested in another form is replaced whole.
    return tuple(sorted((form for form in forms if form), key=len, reverse=True))


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode(output: object, *, max_result_chars: int) -> str:
    if isinstance(output, dict):
        payload: dict[Any, Any] = dict(output)
    elif isinstance(output, str | list):
        payload = {"result": output}
    else:
        raise TypeError(f"a tool returned {type(output).__name__}, not str, dict or list")
    text = _dumps(payload)
    if len(text) <= max_result_chars:
        return text
    return _truncated(payload, original_chars=len(text), max_chars=max_result_chars)


def _truncated(payload: dict[Any, Any], *, original_chars: int, max_chars: int) -> str:
    """Shrink every string and list to ``k`` characters/items, for the largest ``k`` that fits.

    The serialised size grows with ``k``, so a binary search finds it in about
    log2(original size) serialisations.
    """
    marker: dict[Any, Any] = {"truncated": True, "original_chars": original_chars}
    if "error" in payload:  # an error result stays recognisable however small
        marker = {"error": payload["error"], **marker}

    def render(k: int) -> str:
        rest = {key: _shrink(value, k, 1) for key, value in payload.items() if key not in marker}
        return _dumps({**marker, **rest})

    best = _dumps(marker)
    low, high = 0, original_chars
    while low <= high:
        k = (low + high) // 2
        text = render(k)
        if len(text) <= max_chars:
            best, low = text, k + 1
        else:
            high = k - 1
    return best


def _shrink(value: Any, k: int, depth: int) -> Any:
    if depth > _MAX_RESULT_DEPTH:
        return "…"
    if isinstance(value, str):
        return value if len(value) <= k else value[:k] + "…"
    if isinstance(value, list):
        return [_shrink(item, k, depth + 1) for item in value[:k]]
    if isinstance(value, dict):
        return {key: _shrink(item, k, depth + 1) for key, item in value.items()}
    return value
