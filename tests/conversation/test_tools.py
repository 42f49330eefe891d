"""The tool registry: schema checking, safe execution, error results and result caps."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from familiar_connect.conversation.tools import (
    MIN_RESULT_CHARS,
    Tool,
    ToolContext,
    ToolHandler,
    ToolRegistry,
    ToolResult,
    check_schema,
    validate_arguments,
)
from familiar_connect.errors import (
    MemoryStoreError,
    MemoryStorePathError,
    ToolArgumentError,
    ToolError,
)
from familiar_connect.llm.types import ToolCall

CTX = ToolContext(conversation="discord:500", platform="discord", author_id="1001", author_name="A")

NOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "minLength": 1, "maxLength": 20},
        "limit": {"type": "integer", "minimum": 1, "maximum": 20},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "loud": {"type": "boolean"},
        "mode": {"type": "string", "enum": ["a", "b"]},
        "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 5}},
        "meta": {
            "type": "object",
            "properties": {"k": {"type": "integer"}},
            "required": ["k"],
            "additionalProperties": False,
        },
    },
    "required": ["path"],
    "additionalProperties": False,
}


async def _echo(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    return {"args": args, "conversation": ctx.conversation}


def _tool(handler: ToolHandler = _echo, *, name: str = "note", schema: Any = None) -> Tool:
    return Tool(
        name=name,
        description="A test tool.",
        parameters=NOTE_SCHEMA if schema is None else schema,
        handler=handler,
    )


def _call(arguments: str, *, name: str = "note") -> ToolCall:
    return ToolCall(id="call_1", name=name, arguments_json=arguments)


async def _run(
    registry: ToolRegistry,
    call: ToolCall,
    *,
    timeout_s: float = 5.0,
    max_result_chars: int = 4_000,
) -> tuple[ToolResult, Any]:
    result = await registry.execute(
        call, CTX, timeout_s=timeout_s, max_result_chars=max_result_chars
    )
    return result, json.loads(result.content)


@pytest.fixture(name="registry")
def fixture_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(_tool())
    return registry


class TestTool:
    def test_spec_carries_schema(self) -> None:
        """A tool's spec has its name, description and parameters schema."""
        spec = _tool().spec()
        assert (spec.name, spec.description, spec.parameters) == (
            "note",
            "A test tool.",
            NOTE_SCHEMA,
        )

    @pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dot.name", "slash/x"])
    def test_bad_names_refused(self, name: str) -> None:
        """Names outside [A-Za-z0-9_-]{1,64} are refused when the tool is built."""
        with pytest.raises(ValueError, match="tool name"):
            _tool(name=name)

    def test_schema_must_be_object(self) -> None:
        """A parameters schema whose type is not object is refused."""
        with pytest.raises(ValueError, match="type object"):
            _tool(schema={"type": "string"})


class TestCheckSchema:
    @pytest.mark.parametrize(
        "schema",
        [
            {"type": "object", "properties": {"x": {"type": "string", "pattern": "a+"}}},
            {"type": "object", "oneOf": []},
            {"type": "null"},
            {"type": "string", "maxLength": -1},
            {"type": "string", "maxLength": True},
            {"type": "number", "minimum": float("nan")},
            {"type": "string", "enum": []},
            {"type": "object", "properties": {}, "required": ["missing"]},
            {"type": "object", "additionalProperties": {"type": "string"}},
            "not a mapping",
        ],
    )
    def test_unsupported_schemas_refused(self, schema: Any) -> None:
        """Keywords the validator would ignore, and malformed values, are refused up front."""
        with pytest.raises(ValueError):
            check_schema(schema)

    def test_supported_subset_accepted(self) -> None:
        """The full supported subset, with annotations, passes."""
        check_schema({**NOTE_SCHEMA, "description": "d", "title": "t"})


class TestValidateArguments:
    @pytest.mark.parametrize(
        ("arguments", "fragment"),
        [
            ({}, "missing required field 'path'"),
            ({"path": 3}, "'path' must be a string, got integer"),
            ({"path": ""}, "'path' must have at least 1 characters"),
            ({"path": "x" * 21}, "'path' must have at most 20 characters"),
            ({"path": "p", "limit": 21}, "'limit' must be at most 20"),
            ({"path": "p", "limit": 0}, "'limit' must be at least 1"),
            ({"path": "p", "limit": True}, "'limit' must be an integer, got boolean"),
            ({"path": "p", "limit": 2.5}, "'limit' must be an integer, got number"),
            ({"path": "p", "ratio": float("inf")}, "'ratio' must be a finite number"),
            ({"path": "p", "loud": 1}, "'loud' must be a boolean, got integer"),
            ({"path": "p", "mode": "c"}, "'mode' must be one of"),
            ({"path": "p", "tags": ["a", "b", "c", "d"]}, "'tags' must have at most 3 items"),
            ({"path": "p", "tags": ["toolong"]}, "'tags[0]' must have at most 5"),
            ({"path": "p", "meta": {}}, "missing required field 'meta.k'"),
            ({"path": "p", "meta": {"k": 1, "z": 2}}, "unexpected field 'meta.z'"),
            ({"path": "p", "extra": 1}, "unexpected field 'extra'"),
            ({"path": None}, "got null"),
        ],
    )
    def test_mismatch_names_the_field(self, arguments: dict[str, Any], fragment: str) -> None:
        """Each kind of mismatch raises ToolArgumentError naming the offending field."""
        with pytest.raises(ToolArgumentError) as caught:
            validate_arguments(NOTE_SCHEMA, arguments)
        assert fragment in str(caught.value)

    def test_valid_arguments_pass(self) -> None:
        """Arguments that match every constraint raise nothing."""
        validate_arguments(
            NOTE_SCHEMA,
            {
                "path": "p",
                "limit": 20,
                "ratio": 0.5,
                "loud": False,
                "mode": "a",
                "tags": ["x"],
                "meta": {"k": 1},
            },
        )

    def test_long_field_names_are_capped_in_messages(self) -> None:
        """A model-invented field name is echoed back at most 64 characters long."""
        with pytest.raises(ToolArgumentError) as caught:
            validate_arguments(NOTE_SCHEMA, {"path": "p", "y" * 5000: 1})
        assert len(str(caught.value)) < 300

    @settings(max_examples=200, deadline=None)
    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_any_json_value_is_accepted_or_refused_cleanly(self, value: Any) -> None:
        """Whatever JSON the model sends, validation passes or raises ToolArgumentError only."""
        with contextlib.suppress(ToolArgumentError):
            validate_arguments(NOTE_SCHEMA, value)


class TestToolRegistry:
    async def test_runs_handler_with_context(self, registry: ToolRegistry) -> None:
        """A valid call runs the handler and returns its dict as JSON."""
        result, body = await _run(registry, _call('{"path": "people/a.md"}'))
        assert result == ToolResult("call_1", "note", result.content, is_error=False)
        assert body == {"args": {"path": "people/a.md"}, "conversation": "discord:500"}
        assert result.error_kind is None
        assert result.to_message().tool_call_id == "call_1"

    async def test_specs_and_names(self, registry: ToolRegistry) -> None:
        """specs() and names() list the registered tools in order."""
        registry.register(_tool(name="other"))
        assert registry.names() == ["note", "other"]
        assert [spec.name for spec in registry.specs()] == ["note", "other"]
        assert registry.get("other") is not None and registry.get("nope") is None

    async def test_duplicate_and_too_many_refused(self) -> None:
        """Registering a name twice, or past max_tools, raises ValueError."""
        registry = ToolRegistry(max_tools=1)
        registry.register(_tool())
        with pytest.raises(ValueError, match="already registered"):
            registry.register(_tool())
        with pytest.raises(ValueError, match="at most 1"):
            registry.register(_tool(name="second"))

    async def test_unknown_tool(self, registry: ToolRegistry) -> None:
        """An unknown name gives an unknown_tool result listing the available tools."""
        result, body = await _run(registry, _call("{}", name="rm_rf"))
        assert result.is_error and result.error_kind == "unknown_tool"
        assert body["available"] == ["note"]
        assert "rm_rf" in body["message"]

    @pytest.mark.parametrize("raw", ['{"path": ', "not json", "[1, 2]", '"text"', "1" * 5000])
    async def test_invalid_json_arguments(self, registry: ToolRegistry, raw: str) -> None:
        """Arguments that are not a JSON object give an invalid_arguments result."""
        result, body = await _run(registry, _call(raw))
        assert result.is_error and body["error"] == "invalid_arguments"
        assert body["message"]

    async def test_deeply_nested_arguments(self, registry: ToolRegistry) -> None:
        """Absurdly nested JSON is refused as invalid arguments, not a crash."""
        result, _ = await _run(registry, _call("[" * 100_000 + "]" * 100_000))
        assert result.error_kind == "invalid_arguments"

    async def test_schema_violation(self, registry: ToolRegistry) -> None:
        """Arguments that break the schema give invalid_arguments naming the field."""
        result, body = await _run(registry, _call('{"path": "p", "limit": 99}'))
        assert result.error_kind == "invalid_arguments"
        assert "'limit'" in body["message"]

    async def test_empty_arguments_are_an_empty_object(self) -> None:
        """An empty argument string means {} (models send nothing for no-argument tools)."""
        registry = ToolRegistry()
        registry.register(_tool(schema={"type": "object", "properties": {}}))
        _, body = await _run(registry, _call(""))
        assert body["args"] == {}

    async def test_familiar_error_becomes_its_kind(self) -> None:
        """A FamiliarError from the handler becomes {"error": snake_case class, "message"}."""

        async def escape(args: dict[str, Any], ctx: ToolContext) -> str:
            raise MemoryStorePathError("path leaves the memory root via '..'")

        registry = ToolRegistry()
        registry.register(_tool(escape))
        result, body = await _run(registry, _call('{"path": "../../.env"}'))
        assert body == {
            "error": "memory_store_path_error",
            "message": "path leaves the memory root via '..'",
        }
        assert result.is_error

    async def test_tool_errors_keep_plain_kinds(self) -> None:
        """ToolArgumentError raised by a handler reads as invalid_arguments, ToolError as tool_error."""
        errors: list[Exception] = [ToolArgumentError("bad path"), ToolError("refused")]

        async def raising(args: dict[str, Any], ctx: ToolContext) -> str:
            raise errors.pop(0)

        registry = ToolRegistry()
        registry.register(_tool(raising))
        first, _ = await _run(registry, _call('{"path": "p"}'))
        second, _ = await _run(registry, _call('{"path": "p"}'))
        assert (first.error_kind, second.error_kind) == ("invalid_arguments", "tool_error")

    async def test_messages_hide_paths_and_secrets(self, tmp_path: Path) -> None:
        """Error messages show memory/ for the root, <path> for other absolute paths, no keys."""
        root = tmp_path / "memory"
        root.mkdir()
        secret = "sk-or-v1-0123456789abcdef0123456789abcdef"

        async def leaky(args: dict[str, Any], ctx: ToolContext) -> str:
            raise MemoryStoreError(f"cannot open {root}/people/a.md near /etc/passwd with {secret}")

        registry = ToolRegistry(memory_root=root)
        registry.register(_tool(leaky))
        _, body = await _run(registry, _call('{"path": "p"}'))
        message = body["message"]
        assert "memory/people/a.md" in message
        assert "<path>" in message
        assert str(tmp_path) not in message and "/etc/passwd" not in message
        assert secret not in message

    async def test_unexpected_exception_is_tool_failed_and_logged(self) -> None:
        """Any other exception gives {"error": "tool_failed"} and is logged with its traceback."""

        async def broken(args: dict[str, Any], ctx: ToolContext) -> str:
            raise KeyError("internal detail")

        registry = ToolRegistry()
        registry.register(_tool(broken))
        with capture_logs() as logs:
            result, body = await _run(registry, _call('{"path": "p"}'))
        assert body == {"error": "tool_failed"}
        assert result.is_error
        failed = [entry for entry in logs if entry["event"] == "tool_failed"]
        assert failed and failed[0]["exc_info"] is True

    async def test_hanging_tool_times_out(self) -> None:
        """A handler that never finishes is cancelled at timeout_s and gives a timeout result."""
        cancelled = asyncio.Event()

        async def hang(args: dict[str, Any], ctx: ToolContext) -> str:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()
            return "never"

        registry = ToolRegistry()
        registry.register(_tool(hang))
        result, body = await _run(registry, _call('{"path": "p"}'), timeout_s=0.05)
        assert body["error"] == "timeout"
        assert result.is_error and cancelled.is_set()

    async def test_own_timeout_error_is_a_failure(self) -> None:
        """A TimeoutError the handler raises itself, before the deadline, is tool_failed."""

        async def own_timeout(args: dict[str, Any], ctx: ToolContext) -> str:
            raise TimeoutError

        registry = ToolRegistry()
        registry.register(_tool(own_timeout))
        _, body = await _run(registry, _call('{"path": "p"}'))
        assert body == {"error": "tool_failed"}

    async def test_cancellation_propagates(self) -> None:
        """Cancelling the caller cancels the handler and raises CancelledError, no result."""
        started, handler_cancelled = asyncio.Event(), asyncio.Event()

        async def hang(args: dict[str, Any], ctx: ToolContext) -> str:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                handler_cancelled.set()
                raise
            return "never"

        registry = ToolRegistry()
        registry.register(_tool(hang))
        task = asyncio.create_task(_run(registry, _call('{"path": "p"}'), timeout_s=60))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert handler_cancelled.is_set()

    async def test_oversized_result_truncated_valid_json(self) -> None:
        """A result over max_result_chars is cut down, marked truncated, and still valid JSON."""

        async def big(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
            return {"content": "x" * 50_000, "entries": [{"name": f"n{i}"} for i in range(500)]}

        registry = ToolRegistry()
        registry.register(_tool(big))
        result, body = await _run(registry, _call('{"path": "p"}'), max_result_chars=1_000)
        assert len(result.content) <= 1_000
        assert body["truncated"] is True and body["original_chars"] > 50_000
        assert body["content"].startswith("xxx") and body["content"].endswith("…")
        assert 0 < len(body["entries"]) < 500
        assert not result.is_error

    async def test_str_and_list_results_are_wrapped(self) -> None:
        """A str or list result becomes {"result": ...}; a long str is truncated inside it."""
        outputs: list[Any] = ["hello", [1, 2], "y" * 10_000]

        async def plain(args: dict[str, Any], ctx: ToolContext) -> Any:
            return outputs.pop(0)

        registry = ToolRegistry()
        registry.register(_tool(plain))
        bodies = [
            (await _run(registry, _call('{"path": "p"}'), max_result_chars=500))[1]
            for _ in range(3)
        ]
        assert bodies[0] == {"result": "hello"} and bodies[1] == {"result": [1, 2]}
        assert bodies[2]["truncated"] is True and len(bodies[2]["result"]) < 500

    async def test_non_json_result_is_tool_failed(self) -> None:
        """A handler returning something JSON cannot hold gives tool_failed."""

        async def odd(args: dict[str, Any], ctx: ToolContext) -> Any:
            return {"when": object()}

        registry = ToolRegistry()
        registry.register(_tool(odd))
        _, body = await _run(registry, _call('{"path": "p"}'))
        assert body == {"error": "tool_failed"}

    async def test_error_results_fit_tiny_caps(self) -> None:
        """Even an unknown_tool result with many tools stays within a small cap."""
        registry = ToolRegistry()
        for index in range(40):
            registry.register(_tool(name=f"tool_with_a_long_name_{index:02d}"))
        result, body = await _run(
            registry, _call("{}", name="nope"), max_result_chars=MIN_RESULT_CHARS
        )
        assert len(result.content) <= MIN_RESULT_CHARS
        assert body["error"] == "unknown_tool" and body["truncated"] is True

    @pytest.mark.parametrize(
        ("timeout_s", "max_chars"), [(0, 1000), (-1, 1000), (float("inf"), 1000), (1, 10)]
    )
    async def test_bad_limits_are_caller_errors(
        self, registry: ToolRegistry, timeout_s: float, max_chars: int
    ) -> None:
        """A non-positive timeout or a cap below MIN_RESULT_CHARS raises ValueError."""
        with pytest.raises(ValueError):
            await registry.execute(
                _call('{"path": "p"}'), CTX, timeout_s=timeout_s, max_result_chars=max_chars
            )

    @settings(max_examples=100, deadline=None)
    @given(
        payload=st.dictionaries(
            st.text(max_size=10),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=400),
                lambda inner: (
                    st.lists(inner, max_size=30)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=5)
                ),
                max_leaves=60,
            ),
            max_size=6,
        ),
        cap=st.integers(min_value=MIN_RESULT_CHARS, max_value=2_000),
    )
    def test_any_result_fits_the_cap_as_json(self, payload: dict[str, Any], cap: int) -> None:
        """Whatever a handler returns, the content is valid JSON within max_result_chars."""

        async def give(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
            return payload

        registry = ToolRegistry()
        registry.register(_tool(give))
        result = asyncio.run(
            registry.execute(_call('{"path": "p"}'), CTX, timeout_s=5, max_result_chars=cap)
        )
        assert len(result.content) <= cap
        body = json.loads(result.content)
        assert isinstance(body, dict)
