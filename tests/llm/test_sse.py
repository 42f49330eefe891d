"""Sans-I/O tests of the SSE parser and the chat-completion chunk interpreter."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderError,
    ProviderProtocolError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderUnavailable,
)
from familiar_connect.llm.sse import ChunkInterpreter, SSEParser, error_for_status
from familiar_connect.llm.types import (
    Finished,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallsReady,
    UsageReport,
)


def feed_all(parser: SSEParser, chunks: list[bytes]) -> list[str]:
    payloads: list[str] = []
    for chunk in chunks:
        payloads.extend(parser.feed(chunk))
    payloads.extend(parser.close())
    return payloads


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    model: str = "acme/model-1",
    **extra: Any,
) -> str:
    document: dict[str, Any] = {
        "id": "gen-1",
        "model": model,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    document.update(extra)
    return json.dumps(document)


def tool_fragment(index: int | None, **fields: Any) -> str:
    fragment: dict[str, Any] = dict(fields)
    if index is not None:
        fragment["index"] = index
    return chunk({"tool_calls": [fragment]})


def run(interpreter: ChunkInterpreter, payloads: list[str]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for payload in payloads:
        events.extend(interpreter.feed(payload))
    return events


class TestSSEParser:
    def test_single_event(self) -> None:
        """A data line followed by a blank line yields its payload."""
        assert SSEParser().feed(b'data: {"a":1}\n\n') == ['{"a":1}']

    def test_comment_lines_are_skipped(self) -> None:
        """Comment lines such as ': OPENROUTER PROCESSING' produce nothing."""
        parser = SSEParser()
        stream = b": OPENROUTER PROCESSING\n\ndata: x\n: OPENROUTER PROCESSING\n\n"
        assert parser.feed(stream) == ["x"]

    def test_partial_lines_across_chunks(self) -> None:
        """Bytes fed one at a time give the same payloads as one chunk."""
        stream = b"data: hello\n\ndata: world\n\n"
        parser = SSEParser()
        assert feed_all(parser, [stream[i : i + 1] for i in range(len(stream))]) == [
            "hello",
            "world",
        ]

    def test_nothing_before_the_blank_line(self) -> None:
        """An event is not delivered until its terminating blank line arrives."""
        parser = SSEParser()
        assert parser.feed(b"data: a\n") == []
        assert parser.feed(b"\n") == ["a"]

    def test_crlf_line_endings(self) -> None:
        """CRLF-terminated lines parse like LF-terminated ones."""
        assert SSEParser().feed(b"data: a\r\n\r\ndata: b\r\n\r\n") == ["a", "b"]

    def test_bare_cr_line_endings(self) -> None:
        """A lone CR also ends a line."""
        assert SSEParser().feed(b"data: a\r\rdata: b\r\r") == ["a", "b"]

    def test_crlf_split_between_chunks(self) -> None:
        """A CR at the end of one chunk and LF at the start of the next are one line end."""
        parser = SSEParser()
        assert parser.feed(b"data: a\r") == []
        assert parser.feed(b"\ndata: b\n\n") == ["a\nb"]

    def test_multi_line_data_joined_with_lf(self) -> None:
        """Several data lines in one event are joined with a newline."""
        assert SSEParser().feed(b"data: one\ndata: two\ndata:three\n\n") == ["one\ntwo\nthree"]

    def test_only_one_leading_space_is_removed(self) -> None:
        """Only the single space after the colon is stripped from the value."""
        assert SSEParser().feed(b"data:  two spaces\n\n") == [" two spaces"]

    def test_other_fields_are_ignored(self) -> None:
        """event, id and retry fields do not change the payload."""
        assert SSEParser().feed(b"event: msg\nid: 7\nretry: 10\ndata: x\n\n") == ["x"]

    def test_event_without_data_produces_nothing(self) -> None:
        """An event made only of other fields or blank lines is dropped."""
        assert SSEParser().feed(b"event: ping\n\n\n\n") == []

    def test_field_without_colon_is_an_empty_value(self) -> None:
        """A bare 'data' line contributes an empty data line."""
        assert SSEParser().feed(b"data\ndata: x\n\n") == ["\nx"]

    def test_utf8_split_inside_a_character(self) -> None:
        """A multi-byte character split across chunks decodes intact."""
        stream = "data: café ☕\n\n".encode()
        cut = stream.index("☕".encode()) + 1
        assert feed_all(SSEParser(), [stream[:cut], stream[cut:]]) == ["café ☕"]

    def test_invalid_utf8_is_replaced(self) -> None:
        """An invalid byte becomes a replacement character instead of failing the stream."""
        assert SSEParser().feed(b"data: a\xffb\n\n") == ["a\ufffdb"]

    def test_byte_order_mark_is_stripped(self) -> None:
        """A UTF-8 BOM at the start of the stream is ignored."""
        assert SSEParser().feed(b"\xef\xbb\xbfdata: x\n\n") == ["x"]

    def test_close_delivers_an_unterminated_last_event(self) -> None:
        """A stream ending right after 'data: [DONE]' still yields that payload."""
        parser = SSEParser()
        assert parser.feed(b"data: [DONE]") == []
        assert parser.close() == ["[DONE]"]

    def test_oversized_complete_line_raises(self) -> None:
        """A complete line longer than max_line_bytes is a protocol error."""
        parser = SSEParser(max_line_bytes=16)
        with pytest.raises(ProviderProtocolError):
            parser.feed(b"data: " + b"x" * 32 + b"\n\n")

    def test_oversized_partial_line_raises(self) -> None:
        """An unterminated line that outgrows max_line_bytes raises before its end arrives."""
        parser = SSEParser(max_line_bytes=16)
        parser.feed(b"data: 0123456789")
        with pytest.raises(ProviderProtocolError):
            parser.feed(b"abcdef")

    def test_line_at_the_limit_is_accepted(self) -> None:
        """A line exactly max_line_bytes long is accepted."""
        parser = SSEParser(max_line_bytes=10)
        assert parser.feed(b"data: abcd\n\n") == ["abcd"]

    def test_oversized_event_raises(self) -> None:
        """Many short data lines that add up past max_event_bytes raise."""
        parser = SSEParser(max_event_bytes=20)
        with pytest.raises(ProviderProtocolError):
            parser.feed(b"data: 12345\n" * 5)

    @given(
        payloads=st.lists(
            st.lists(
                st.text(
                    alphabet=st.characters(blacklist_characters="\r\n", codec="utf-8"),
                    max_size=20,
                ),
                min_size=1,
                max_size=3,
            ),
            max_size=6,
        ),
        line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
        comments=st.booleans(),
        data=st.data(),
    )
    def test_any_split_gives_the_same_payloads(
        self,
        payloads: list[list[str]],
        line_end: bytes,
        comments: bool,
        data: st.DataObject,
    ) -> None:
        """However a valid stream is cut into chunks, the same payloads come out."""
        stream = b""
        for lines in payloads:
            if comments:
                stream += b": OPENROUTER PROCESSING" + line_end + line_end
            for line in lines:
                stream += b"data: " + line.encode() + line_end
            stream += line_end
        cuts = sorted(
            data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=10))
        )
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        expected = ["\n".join(lines) for lines in payloads]
        assert feed_all(SSEParser(), pieces) == expected
        # Byte by byte is the split that cuts between every CR and LF.
        assert feed_all(SSEParser(), [stream[i : i + 1] for i in range(len(stream))]) == expected


class TestChunkInterpreter:
    def test_text_deltas_in_order(self) -> None:
        """Content deltas come out as TextDelta events, the empty role delta as nothing."""
        events = run(
            ChunkInterpreter(),
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hel"}),
                chunk({"content": "lo"}),
            ],
        )
        assert events == [TextDelta("Hel"), TextDelta("lo")]

    def test_finish_then_usage_then_done(self) -> None:
        """A finish chunk gives Finished; usage arrives as one UsageReport at [DONE]."""
        interpreter = ChunkInterpreter()
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "total_tokens": 14,
            "cost": 0.00021,
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
        events = run(
            interpreter,
            [
                chunk({"content": "hi"}),
                chunk({}, finish="stop"),
                json.dumps({"id": "gen-1", "model": "acme/model-1", "choices": [], "usage": usage}),
                "[DONE]",
            ],
        )
        assert events == [
            TextDelta("hi"),
            Finished(reason="stop", model="acme/model-1"),
            UsageReport(
                prompt_tokens=10,
                completion_tokens=4,
                total_tokens=14,
                cost_usd=0.00021,
                model="acme/model-1",
                cached_tokens=3,
                reasoning_tokens=2,
                generation_id="gen-1",
            ),
        ]
        assert interpreter.done

    def test_missing_usage_is_tolerated(self) -> None:
        """A stream without a usage chunk ends with Finished and no UsageReport."""
        events = run(ChunkInterpreter(), [chunk({"content": "hi"}, finish="stop"), "[DONE]"])
        assert events == [TextDelta("hi"), Finished(reason="stop", model="acme/model-1")]

    def test_repeated_usage_last_one_wins(self) -> None:
        """When a server sends usage more than once, only the last is reported."""
        events = run(
            ChunkInterpreter(),
            [
                chunk({"content": "a"}, usage={"prompt_tokens": 1, "completion_tokens": 1}),
                chunk({}, finish="stop", usage={"prompt_tokens": 5, "completion_tokens": 2}),
                "[DONE]",
            ],
        )
        usage = events[-1]
        assert isinstance(usage, UsageReport)
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 2, 7)
        assert usage.cost_usd is None

    def test_served_model_is_captured(self) -> None:
        """The model named by the chunks is the one reported, not the one requested."""
        interpreter = ChunkInterpreter()
        events = run(interpreter, [chunk({"content": "x"}, finish="stop", model="b/fallback")])
        assert interpreter.model == "b/fallback"
        assert events[-1] == Finished(reason="stop", model="b/fallback")

    def test_tool_call_fragments_reassembled(self) -> None:
        """Interleaved fragments are joined per index and emitted in index order at finish."""
        events = run(
            ChunkInterpreter(),
            [
                tool_fragment(0, id="call_a", type="function", function={"name": "get_time"}),
                tool_fragment(1, id="call_b", type="function", function={"name": "recall"}),
                tool_fragment(1, function={"arguments": '{"q": '}),
                tool_fragment(0, function={"arguments": '{"tz": '}),
                tool_fragment(0, function={"arguments": '"UTC"}'}),
                tool_fragment(1, function={"arguments": '"cats"}'}),
                chunk({}, finish="tool_calls"),
            ],
        )
        assert events == [
            ToolCallsReady(
                (
                    ToolCall(id="call_a", name="get_time", arguments_json='{"tz": "UTC"}'),
                    ToolCall(id="call_b", name="recall", arguments_json='{"q": "cats"}'),
                )
            ),
            Finished(reason="tool_calls", model="acme/model-1"),
        ]

    def test_tool_calls_flushed_at_done_without_finish(self) -> None:
        """Accumulated calls are emitted at [DONE] if no finish reason came."""
        events = run(
            ChunkInterpreter(),
            [tool_fragment(0, id="c", function={"name": "ping", "arguments": "{}"}), "[DONE]"],
        )
        assert events == [
            ToolCallsReady((ToolCall(id="c", name="ping", arguments_json="{}"),)),
            Finished(reason="tool_calls", model="acme/model-1"),
        ]

    def test_fragments_without_index_follow_ids(self) -> None:
        """Fragments lacking index start a new call per new id and otherwise extend the latest."""
        events = run(
            ChunkInterpreter(),
            [
                tool_fragment(None, id="x1", function={"name": "a", "arguments": '{"n"'}),
                tool_fragment(None, function={"arguments": ": 1}"}),
                tool_fragment(None, id="x2", function={"name": "b", "arguments": "{}"}),
                chunk({}, finish="tool_calls"),
            ],
        )
        ready = events[0]
        assert isinstance(ready, ToolCallsReady)
        assert [(c.id, c.name, c.arguments_json) for c in ready.calls] == [
            ("x1", "a", '{"n": 1}'),
            ("x2", "b", "{}"),
        ]

    def test_object_arguments_are_encoded(self) -> None:
        """Arguments sent as a JSON object instead of text are re-encoded as text."""
        events = run(
            ChunkInterpreter(),
            [tool_fragment(0, id="c", function={"name": "f", "arguments": {"k": 1}}), "[DONE]"],
        )
        ready = events[0]
        assert isinstance(ready, ToolCallsReady)
        assert ready.calls[0].arguments() == {"k": 1}

    def test_missing_call_id_gets_a_stable_one(self) -> None:
        """A call whose id never arrived is named after its index."""
        events = run(ChunkInterpreter(), [tool_fragment(2, function={"name": "f"}), "[DONE]"])
        ready = events[0]
        assert isinstance(ready, ToolCallsReady)
        assert ready.calls[0].id == "call_2"

    def test_tool_call_without_name_raises(self) -> None:
        """A tool call that never got a function name is a protocol error."""
        interpreter = ChunkInterpreter()
        interpreter.feed(tool_fragment(0, id="c", function={"arguments": "{}"}))
        with pytest.raises(ProviderProtocolError):
            interpreter.feed(chunk({}, finish="tool_calls"))

    def test_oversized_arguments_raise(self) -> None:
        """Argument text beyond max_tool_argument_bytes is a protocol error."""
        interpreter = ChunkInterpreter(max_tool_argument_bytes=8)
        interpreter.feed(tool_fragment(0, id="c", function={"name": "f", "arguments": "{1234"}))
        with pytest.raises(ProviderProtocolError):
            interpreter.feed(tool_fragment(0, function={"arguments": "5678}"}))

    def test_tool_index_out_of_bounds_raises(self) -> None:
        """An index at or above max_tool_calls is a protocol error."""
        interpreter = ChunkInterpreter(max_tool_calls=2)
        with pytest.raises(ProviderProtocolError):
            interpreter.feed(tool_fragment(2, id="c", function={"name": "f"}))

    def test_first_delta_is_noticed(self) -> None:
        """saw_delta turns true on the first text or tool fragment, not on the role delta."""
        interpreter = ChunkInterpreter()
        interpreter.feed(chunk({"role": "assistant", "content": ""}))
        assert not interpreter.saw_delta
        interpreter.feed(tool_fragment(0, id="c", function={"name": "f"}))
        assert interpreter.saw_delta

    @pytest.mark.parametrize(
        ("code", "expected"),
        [
            (401, ProviderAuthError),
            ("429", ProviderRateLimited),
            (502, ProviderUnavailable),
            ("server_error", ProviderUnavailable),
        ],
    )
    def test_midstream_error_object_raises_mapped_error(
        self, code: int | str, expected: type[ProviderError]
    ) -> None:
        """An error object inside a chunk raises the error class its code maps to."""
        interpreter = ChunkInterpreter()
        interpreter.feed(chunk({"content": "partial"}))
        payload = chunk(
            {"content": ""}, finish="error", error={"code": code, "message": "upstream fell over"}
        )
        with pytest.raises(expected) as caught:
            interpreter.feed(payload)
        assert "upstream fell over" in str(caught.value)

    def test_finish_reason_error_without_object_raises(self) -> None:
        """finish_reason 'error' with no error object still raises ProviderUnavailable."""
        with pytest.raises(ProviderUnavailable):
            ChunkInterpreter().feed(chunk({}, finish="error"))

    @pytest.mark.parametrize("payload", ["{not json", "[1, 2]", '"text"'])
    def test_non_object_payload_raises(self, payload: str) -> None:
        """A payload that is not a JSON object is a protocol error."""
        with pytest.raises(ProviderProtocolError):
            ChunkInterpreter().feed(payload)

    def test_blank_payload_is_ignored(self) -> None:
        """An empty data payload produces nothing."""
        assert ChunkInterpreter().feed("  ") == []

    def test_payloads_after_done_are_ignored(self) -> None:
        """Anything after [DONE] is ignored."""
        interpreter = ChunkInterpreter()
        interpreter.feed(chunk({}, finish="stop"))
        interpreter.feed("[DONE]")
        assert interpreter.feed(chunk({"content": "late"})) == []

    def test_other_choice_indices_are_ignored(self) -> None:
        """Deltas of choices other than index 0 are not mixed into the reply."""
        payload = json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]})
        assert ChunkInterpreter().feed(payload) == []

    def test_end_of_stream_before_finish_raises(self) -> None:
        """A stream that ends with neither finish reason nor [DONE] is a protocol error."""
        interpreter = ChunkInterpreter()
        interpreter.feed(chunk({"content": "cut"}))
        with pytest.raises(ProviderProtocolError):
            interpreter.end_of_stream()

    def test_end_of_stream_after_finish_closes(self) -> None:
        """A stream that finished but lacks [DONE] still reports its usage at the end."""
        interpreter = ChunkInterpreter()
        interpreter.feed(
            chunk({}, finish="length", usage={"prompt_tokens": 1, "completion_tokens": 2})
        )
        events = interpreter.end_of_stream()
        assert len(events) == 1
        assert isinstance(events[0], UsageReport)
        assert interpreter.done


class TestErrorForStatus:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (400, ProviderBadRequest),
            (401, ProviderAuthError),
            (402, ProviderQuotaError),
            (403, ProviderRefused),
            (404, ProviderBadRequest),
            (408, ProviderRateLimited),
            (429, ProviderRateLimited),
            (500, ProviderUnavailable),
            (502, ProviderUnavailable),
            (503, ProviderUnavailable),
            (302, ProviderProtocolError),
            (None, ProviderProtocolError),
        ],
    )
    def test_status_maps_to_class(self, status: int | None, expected: type[ProviderError]) -> None:
        """Each HTTP status maps to its documented ProviderError subclass."""
        error = error_for_status(status, "m", provider="openrouter")
        assert type(error) is expected
        assert error.status == status

    def test_fields_are_kept_and_message_truncated(self) -> None:
        """provider and retry_after_s are recorded and a huge message is cut short."""
        error = error_for_status(429, "x" * 10_000, provider="p", retry_after_s=2.5)
        assert (error.provider, error.retry_after_s) == ("p", 2.5)
        assert len(str(error)) < 1_000
