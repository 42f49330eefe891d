"""Path-jail fuzzing per operation, and through the model's own memory tools.

Extends ``tests/memory/test_paths_fuzz.py`` (its world, strategy and checks are
reused, not copied): that file draws the operation at random, so its examples are
shared among the operations; here every operation gets the full count, and the
same hostile paths also go through the six ``memory_*`` tools the model calls
(JSON arguments, the registry's validation, the async store), which must answer
with a JSON error or a result inside the root, never with outside content or the
root's absolute path.

Examples per operation: 200 by default, 10,000 with ``FAMILIAR_FUZZ=1``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from familiar_connect.conversation.memory_tools import memory_tools
from familiar_connect.conversation.tools import ToolContext, ToolRegistry
from familiar_connect.llm.types import ToolCall
from familiar_connect.memory.async_store import AsyncMemoryStore
from tests.memory.test_paths_fuzz import (
    MAX_EXAMPLES,
    OPERATIONS,
    SECRET,
    World,
    check_jailed,
    fixture_world,
    hostile_paths,
)
from tests.reliability.figures import record

__all__ = ["fixture_world"]  # the reused fixture, registered in this module

TOOLS = ["memory_read", "memory_list", "memory_glob", "memory_write", "memory_append"]
COUNTS: dict[str, int] = {}
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def tool_arguments(tool: str, path: str) -> dict[str, str]:
    if tool == "memory_glob":
        return {"pattern": path}
    if tool in ("memory_write", "memory_append"):
        return {"path": path, "content": "fuzz\n"}
    return {"path": path}


@pytest.fixture(name="tool_runner")
def fixture_tool_runner(
    world: World,
) -> Iterator[tuple[World, ToolRegistry, asyncio.AbstractEventLoop]]:
    """The world's store behind the real memory tools, with an event loop to run them on."""
    registry = ToolRegistry(memory_root=world.root)
    for tool in memory_tools(AsyncMemoryStore(world.store), None):
        registry.register(tool)
    loop = asyncio.new_event_loop()
    try:
        yield world, registry, loop
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class TestStoreFuzzPerOperation:
    @pytest.mark.parametrize("op", OPERATIONS)
    @FUZZ_SETTINGS
    @given(path=hostile_paths())
    def test_operation_stays_jailed(self, world: World, op: str, path: str) -> None:
        """Every hostile path, for this one operation, stays inside the root or raises a store error."""
        check_jailed(world, op, path)
        COUNTS[f"store {op}"] = COUNTS.get(f"store {op}", 0) + 1


class TestToolFuzz:
    @pytest.mark.parametrize("tool", TOOLS)
    @FUZZ_SETTINGS
    @given(
        path=st.one_of(hostile_paths(), st.sampled_from(["../../.env", "/etc/passwd", "self/x.md"]))
    )
    def test_tool_answers_inside_the_root(
        self,
        tool_runner: tuple[World, ToolRegistry, asyncio.AbstractEventLoop],
        tool: str,
        path: str,
    ) -> None:
        """A model's tool call with a hostile path gets a JSON answer that reveals nothing outside."""
        world, registry, loop = tool_runner
        before = world.snapshot()
        call = ToolCall("call-1", tool, json.dumps(tool_arguments(tool, path)))
        context = ToolContext("fuzz:1", "fuzz", "1", "fuzzer")
        result = loop.run_until_complete(
            registry.execute(call, context, timeout_s=10, max_result_chars=4000)
        )
        json.loads(result.content)
        assert world.snapshot() == before, f"{tool} {path!r} changed something outside"
        assert SECRET not in result.content
        assert str(world.base) not in result.content, "absolute path shown to the model"
        COUNTS[f"tool {tool}"] = COUNTS.get(f"tool {tool}", 0) + 1

    def test_report_example_counts(self) -> None:
        """Record how many examples each operation and tool ran (after the fuzz tests above)."""
        record("fuzz", "memory jail per operation", max_examples=MAX_EXAMPLES, **COUNTS)
