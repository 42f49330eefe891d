"""Sans-I/O reading of an OpenAI-compatible chat-completions stream.

Two plain classes, no ``await`` anywhere, tested with values in and values
out; :mod:`familiar_connect.llm.openrouter` only moves bytes into them:

* :class:`SSEParser` turns raw bytes, split anywhere, into the ``data``
  payloads of complete server-sent events (WHATWG "event stream" rules:
  LF, CRLF or CR line ends, ``:`` comment lines such as OpenRouter's
  ``: OPENROUTER PROCESSING`` skipped, multi-line ``data`` joined by LF).
* :class:`ChunkInterpreter` turns each payload (a ``chat.completion.chunk``
  JSON object, or ``[DONE]``) into :data:`~familiar_connect.llm.types.StreamEvent`
  values: text deltas, tool calls reassembled from fragments by ``index``,
  the finish reason, and usage. A mid-stream ``error`` object raises the
  matching :class:`~familiar_connect.errors.ProviderError`.

Every buffer is bounded: line length, event size, number of tool calls and
argument bytes per call. Exceeding a bound raises
:class:`~familiar_connect.errors.ProviderProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

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
from familiar_connect.llm.types import (
    Finished,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallsReady,
    UsageReport,
)

__all__ = [
    "DONE",
    "ChunkInterpreter",
    "SSEParser",
    "error_for_status",
]

DONE = "[DONE]"
"""The payload that ends an OpenAI-compatible stream."""

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A

# Provider messages are shown in logs and to operators; a proxy can send a
# whole HTML page, so keep only the start.
_MAX_MESSAGE_CHARS = 500


def error_for_status(
    status: int | None,
    message: str,
    *,
    provider: str,
    retry_after_s: float | None = None,
) -> ProviderError:
    """Build the most specific :class:`ProviderError` for an HTTP status.

    The mapping is 400→:class:`ProviderBadRequest`, 401→:class:`ProviderAuthError`,
    402→:class:`ProviderQuotaError`, 403→:class:`ProviderRefused`,
    408/429→:class:`ProviderRateLimited`, 5xx→:class:`ProviderUnavailable`,
    other 4xx→:class:`ProviderBadRequest`; anything else (no status, 1xx-3xx)
    is a :class:`ProviderProtocolError`.

    Args:
        status: the HTTP status, or the numeric ``code`` of an error object.
        message: readable text; truncated to a few hundred characters.
        provider: service name recorded on the error.
        retry_after_s: the server's requested wait, if any.

    Returns:
        The error, not raised.
    """
    message = message[:_MAX_MESSAGE_CHARS]
    cls: type[ProviderError]
    if status is None:
        cls = ProviderProtocolError
    elif status == 400:
        cls = ProviderBadRequest
    elif status == 401:
        cls = ProviderAuthError
    elif status == 402:
        cls = ProviderQuotaError
    elif status == 403:
        cls = ProviderRefused
    elif status in (408, 429):
        cls = ProviderRateLimited
    elif 500 <= status <= 599:
        cls = ProviderUnavailable
    elif 400 <= status <= 499:
        cls = ProviderBadRequest
    else:
        cls = ProviderProtocolError
    return cls(message, provider=provider, status=status, retry_after_s=retry_after_s)


class SSEParser:
    """Incremental server-sent-events parser yielding ``data`` payloads.

    Feed it bytes exactly as they come off the socket; it keeps partial lines
    between calls. Only the ``data`` field is used (OpenRouter sends no
    ``event``/``id``/``retry``); other fields are ignored as the SSE rules
    say.

    Args:
        max_line_bytes: longest line accepted, in bytes, terminator excluded.
        max_event_bytes: largest joined ``data`` of one event, in bytes.
        provider: service name put on raised errors.
    """

    def __init__(
        self,
        *,
        max_line_bytes: int = 1 << 20,
        max_event_bytes: int = 4 << 20,
        provider: str = "openrouter",
    ) -> None:
        self._max_line_bytes = max_line_bytes
        self._max_event_bytes = max_event_bytes
        self._provider = provider
        self._buffer = bytearray()
        self._data: list[str] = []
        self._data_bytes = 0
        self._has_data = False
        # A chunk that ended on CR may be followed by the LF of a CRLF pair.
        self._skip_lf = False
        self._first_line = True

    def feed(self, chunk: bytes) -> list[str]:
        """Consume bytes and return the payloads of events they completed.

        Args:
            chunk: any slice of the stream, possibly empty or mid-line.

        Returns:
            The ``data`` of each event completed by this chunk, in order
            (multi-line data joined with ``"\\n"``). Comment lines and
            events without ``data`` produce nothing.

        Raises:
            ProviderProtocolError: a line or an event exceeds its bound.
        """
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == _LF:
                chunk = chunk[1:]
        buf = self._buffer
        buf += chunk
        out: list[str] = []
        end_of_buf = len(buf)
        pos = 0
        cr = buf.find(b"\r")
        lf = buf.find(b"\n")
        # Each pass consumes one line, so the loop is bounded by len(buf).
        while cr != -1 or lf != -1:
            if cr != -1 and (lf == -1 or cr < lf):
                end = cr
                if end + 1 < end_of_buf:
                    nxt = end + 2 if buf[end + 1] == _LF else end + 1
                else:
                    nxt = end + 1
                    self._skip_lf = True
            else:
                end = lf
                nxt = lf + 1
            if end - pos > self._max_line_bytes:
                raise self._too_long("line", end - pos, self._max_line_bytes)
            self._line(bytes(buf[pos:end]), out)
            pos = nxt
            if cr != -1 and cr < pos:
                cr = buf.find(b"\r", pos)
            if lf != -1 and lf < pos:
                lf = buf.find(b"\n", pos)
        del buf[:pos]
        if len(buf) > self._max_line_bytes:
            raise self._too_long("line", len(buf), self._max_line_bytes)
        return out

    def close(self) -> list[str]:
        """Signal end of stream and return any event it completes.

        Lenient on purpose: a server that closes right after ``data: [DONE]``
        without the final blank line still gets its last event delivered.

        Returns:
            Zero or one payload.
        """
        out: list[str] = []
        if self._buffer:
            line = bytes(self._buffer)
            self._buffer.clear()
            self._line(line, out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[str]) -> None:
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[len(_BOM) :]
        if not line:
            if self._has_data:
                out.append("\n".join(self._data))
                self._data = []
                self._data_bytes = 0
                self._has_data = False
            return
        if line[0] == _COLON:
            return
        colon = line.find(b":")
        if colon == -1:
            name, value = line, b""
        else:
            name, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name != b"data":
            return
        self._data_bytes += len(value) + 1
        if self._data_bytes > self._max_event_bytes:
            raise self._too_long("event", self._data_bytes, self._max_event_bytes)
        # Browsers decode event streams with replacement; a stray bad byte
        # should cost one character, not the whole reply.
        self._data.append(value.decode("utf-8", "replace"))
        self._has_data = True

    def _too_long(self, what: str, size: int, limit: int) -> ProviderProtocolError:
        return ProviderProtocolError(
            f"server-sent {what} of at least {size} bytes exceeds the {limit}-byte limit",
            provider=self._provider,
        )


@dataclass(slots=True)
class _PendingCall:
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    size_bytes: int = 0


class ChunkInterpreter:
    """Turns chat-completion chunk payloads into stream events.

    Feed it each payload from :class:`SSEParser`. Text deltas come out at
    once; tool-call fragments are accumulated by ``index`` and come out
    complete as one :class:`ToolCallsReady` when the finish reason arrives
    (or at ``[DONE]`` if the server never sent one); usage comes out as one
    :class:`UsageReport` at the end, so the last usage object wins if a
    server repeats it.

    Attributes:
        model: the serving model, from the latest chunk that named one.
        generation_id: the chunk ``id`` (OpenRouter's generation id).
        saw_delta: whether any text or tool-call fragment has arrived (the
            moment that counts as "first token").
        done: whether the stream is over; later payloads are ignored.

    Args:
        provider: service name put on raised errors.
        max_tool_calls: most tool calls accepted in one reply.
        max_tool_argument_bytes: largest argument text of one call, in bytes.
    """

    def __init__(
        self,
        *,
        provider: str = "openrouter",
        max_tool_calls: int = 32,
        max_tool_argument_bytes: int = 256 * 1024,
    ) -> None:
        self._provider = provider
        self._max_tool_calls = max_tool_calls
        self._max_tool_argument_bytes = max_tool_argument_bytes
        self.model: str | None = None
        self.generation_id: str | None = None
        self.saw_delta = False
        self.done = False
        self._calls: dict[int, _PendingCall] = {}
        self._last_index: int | None = None
        self._calls_emitted = False
        self._finished = False
        self._usage: dict[str, Any] | None = None

    def feed(self, payload: str) -> list[StreamEvent]:
        """Interpret one event payload.

        Args:
            payload: the ``data`` of one server-sent event.

        Returns:
            The events it produced, in order; ``[DONE]`` returns the closing
            events (pending tool calls, :class:`Finished`, usage).

        Raises:
            ProviderError: the chunk carries an ``error`` object (the class
                follows its numeric ``code``; a non-numeric code such as
                ``"server_error"`` gives :class:`ProviderUnavailable`), or
                ``finish_reason`` is ``"error"``.
            ProviderProtocolError: the payload is not a JSON object, or a
                tool call breaks a bound or has no name.
        """
        if self.done:
            return []
        text = payload.strip()
        if not text:
            return []
        if text == DONE:
            return self._close()
        try:
            chunk = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProviderProtocolError(
                f"stream chunk is not JSON ({exc.msg} at column {exc.colno})",
                provider=self._provider,
            ) from None
        if not isinstance(chunk, dict):
            raise ProviderProtocolError(
                "stream chunk is not a JSON object", provider=self._provider
            )
        return self._chunk(chunk)

    def end_of_stream(self) -> list[StreamEvent]:
        """Close a stream that ended without ``[DONE]``.

        Returns:
            The closing events, when the model had already finished.

        Raises:
            ProviderProtocolError: the stream ended before any finish reason,
                so the reply may be cut short.
        """
        if self.done:
            return []
        if not self._finished:
            raise ProviderProtocolError(
                "stream ended before the model finished", provider=self._provider
            )
        return self._close()

    def _chunk(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self.model = model
        gen_id = chunk.get("id")
        if isinstance(gen_id, str) and gen_id:
            self.generation_id = gen_id
        error = chunk.get("error")
        if error:
            raise self._stream_error(error)
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
        out: list[StreamEvent] = []
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return out
        for choice in choices:
            # We never ask for n > 1; other choices would interleave text.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self.saw_delta = True
                    out.append(TextDelta(content))
                fragments = delta.get("tool_calls")
                if isinstance(fragments, list):
                    for fragment in fragments:
                        self._tool_fragment(fragment)
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                if reason == "error":
                    raise ProviderUnavailable(
                        "the model stopped with finish_reason 'error'", provider=self._provider
                    )
                out.extend(self._finish(reason))
        return out

    def _stream_error(self, error: object) -> ProviderError:
        if not isinstance(error, dict):
            return ProviderUnavailable(f"stream error: {error!s}", provider=self._provider)
        message = error.get("message")
        if not isinstance(message, str) or not message:
            message = "stream error"
        code = error.get("code")
        status: int | None = None
        if isinstance(code, int) and not isinstance(code, bool):
            status = code
        elif isinstance(code, str) and code.isdigit():
            status = int(code)
        if status is None:
            return ProviderUnavailable(
                f"{message} ({code})" if code else message, provider=self._provider
            )
        return error_for_status(status, message, provider=self._provider)

    def _tool_fragment(self, fragment: object) -> None:
        if not isinstance(fragment, dict):
            raise ProviderProtocolError(
                "tool-call fragment is not an object", provider=self._provider
            )
        self.saw_delta = True
        call_id = fragment.get("id")
        index = fragment.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._index_without_index(call_id)
        if not 0 <= index < self._max_tool_calls:
            raise ProviderProtocolError(
                f"tool-call index {index} outside 0..{self._max_tool_calls - 1}",
                provider=self._provider,
            )
        pending = self._calls.get(index)
        if pending is None:
            pending = self._calls[index] = _PendingCall()
        self._last_index = index
        if isinstance(call_id, str) and call_id and not pending.id:
            pending.id = call_id
        function = fragment.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        # Some providers repeat the full name on every fragment; keep the first.
        if isinstance(name, str) and name and not pending.name:
            pending.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            # A few providers send the arguments as an object, not text.
            arguments = json.dumps(arguments)
        if isinstance(arguments, str) and arguments:
            pending.size_bytes += len(arguments.encode())
            if pending.size_bytes > self._max_tool_argument_bytes:
                raise ProviderProtocolError(
                    f"arguments of tool call {index} exceed {self._max_tool_argument_bytes} bytes",
                    provider=self._provider,
                )
            pending.parts.append(arguments)

    def _index_without_index(self, call_id: object) -> int:
        # Some OpenAI-compatible servers omit ``index``: a new id starts a new
        # call, a known id continues it, no id continues the latest call.
        if isinstance(call_id, str) and call_id:
            for index, pending in self._calls.items():
                if pending.id == call_id:
                    return index
            return max(self._calls, default=-1) + 1
        if self._last_index is not None:
            return self._last_index
        return 0

    def _finish(self, reason: str) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        out.extend(self._ready_calls())
        if not self._finished:
            self._finished = True
            out.append(Finished(reason=reason, model=self.model))
        return out

    def _ready_calls(self) -> list[StreamEvent]:
        if self._calls_emitted or not self._calls:
            return []
        self._calls_emitted = True
        calls: list[ToolCall] = []
        for index in sorted(self._calls):
            pending = self._calls[index]
            if not pending.name:
                raise ProviderProtocolError(
                    f"tool call {index} has no function name", provider=self._provider
                )
            calls.append(
                ToolCall(
                    id=pending.id or f"call_{index}",
                    name=pending.name,
                    arguments_json="".join(pending.parts),
                )
            )
        return [ToolCallsReady(tuple(calls))]

    def _close(self) -> list[StreamEvent]:
        self.done = True
        out: list[StreamEvent] = []
        if not self._finished:
            # [DONE] without a finish chunk: a normal end by the server's word.
            out.extend(self._finish("tool_calls" if self._calls else "stop"))
        usage = self._usage_report()
        if usage is not None:
            out.append(usage)
        return out

    def _usage_report(self) -> UsageReport | None:
        usage = self._usage
        if usage is None:
            return None
        prompt = _as_int(usage.get("prompt_tokens"))
        completion = _as_int(usage.get("completion_tokens"))
        total = _as_int(usage.get("total_tokens")) or prompt + completion
        cost = usage.get("cost")
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        return UsageReport(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=total,
            cost_usd=float(cost)
            if isinstance(cost, int | float) and not isinstance(cost, bool)
            else None,
            model=self.model,
            cached_tokens=_as_int(
                prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
            ),
            reasoning_tokens=_as_int(
                completion_details.get("reasoning_tokens")
                if isinstance(completion_details, dict)
                else None
            ),
            generation_id=self.generation_id,
        )


def _as_int(value: object) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0
