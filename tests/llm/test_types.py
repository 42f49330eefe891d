"""Tests of the LLM value types and their wire shapes."""

from __future__ import annotations

import pytest

from familiar_connect.errors import ToolArgumentError
from familiar_connect.llm.types import ChatMessage, ToolCall, ToolSpec


class TestToolCall:
    def test_arguments_parse_a_json_object(self) -> None:
        """Valid JSON object text parses to a dict."""
        assert ToolCall("c", "f", '{"tz": "UTC", "n": 2}').arguments() == {"tz": "UTC", "n": 2}

    @pytest.mark.parametrize("text", ["", "  "])
    def test_empty_arguments_mean_no_arguments(self, text: str) -> None:
        """Empty argument text parses to an empty dict."""
        assert ToolCall("c", "f", text).arguments() == {}

    def test_bad_json_raises_tool_argument_error(self) -> None:
        """Malformed JSON raises ToolArgumentError naming the tool."""
        with pytest.raises(ToolArgumentError, match="'f'"):
            ToolCall("c", "f", '{"tz": ').arguments()

    def test_non_object_json_raises_tool_argument_error(self) -> None:
        """JSON that is not an object raises ToolArgumentError."""
        with pytest.raises(ToolArgumentError, match="JSON object"):
            ToolCall("c", "f", "[1, 2]").arguments()

    def test_wire_shape(self) -> None:
        """to_wire gives the OpenAI function-call shape with raw argument text."""
        assert ToolCall("c1", "f", "{bad").to_wire() == {
            "id": "c1",
            "type": "function",
            "function": {"name": "f", "arguments": "{bad"},
        }


class TestChatMessage:
    def test_user_message_wire_omits_unset_fields(self) -> None:
        """A plain message sends only role and content."""
        assert ChatMessage.user("hi").to_wire() == {"role": "user", "content": "hi"}

    def test_named_user_message(self) -> None:
        """A speaker name is sent as the name field."""
        assert ChatMessage.user("hi", name="ada").to_wire()["name"] == "ada"

    def test_assistant_tool_calls_and_tool_result(self) -> None:
        """Assistant tool calls and the answering tool message keep their ids on the wire."""
        call = ToolCall("c1", "get_time", "{}")
        assistant = ChatMessage.assistant(None, tool_calls=[call]).to_wire()
        result = ChatMessage.tool("c1", '{"time": "noon"}').to_wire()
        assert assistant == {"role": "assistant", "content": None, "tool_calls": [call.to_wire()]}
        assert result == {"role": "tool", "content": '{"time": "noon"}', "tool_call_id": "c1"}

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"role": "wizard", "content": "x"},
            {"role": "tool", "content": "x"},
            {"role": "user", "content": None},
            {"role": "user", "content": "x", "tool_calls": (ToolCall("c", "f", "{}"),)},
        ],
    )
    def test_invalid_messages_are_rejected(self, kwargs: dict[str, object]) -> None:
        """Unknown roles, tool messages without ids and misplaced fields raise ValueError."""
        with pytest.raises(ValueError):
            ChatMessage(**kwargs)  # type: ignore[arg-type]


class TestToolSpec:
    def test_wire_shape(self) -> None:
        """to_wire gives an OpenAI function tool with the JSON schema as parameters."""
        schema = {"type": "object", "properties": {"tz": {"type": "string"}}}
        assert ToolSpec("get_time", "Current time", schema).to_wire() == {
            "type": "function",
            "function": {"name": "get_time", "description": "Current time", "parameters": schema},
        }
