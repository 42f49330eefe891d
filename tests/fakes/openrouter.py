"""Loopback fake of OpenRouter's ``POST /api/v1/chat/completions``.

It speaks the wire format described in ``reference/library-facts.md`` §6:
JSON for ``stream: false``; for ``stream: true`` server-sent events with
``: OPENROUTER PROCESSING`` comment lines, a first ``{"role":"assistant",
"content":""}`` delta, text deltas token by token, tool calls split across
chunks by ``index``, a finish chunk, a usage chunk with ``choices: []``, and
``data: [DONE]``. Clients use ``fake.api_base`` (``{base_url}/api/v1``) as
their base URL.

Replies are scripted, first in first out::

    fake.reply_text("Hello there", ttft_s=0.05, tokens_per_s=200)
    fake.reply_tool_calls([("get_time", {"tz": "UTC"})])
    fake.reply_http_error(429, retry_after_s=0)

When the script is empty the fake answers the **echo reply**: the text
``"echo: "`` followed by the content of the last ``user`` message of the
request (text parts joined when the content is a list; ``"echo: "`` alone if
there is no user message). It is streamed like ``reply_text``.

Unless a reply names its ``model``, the served model echoes the request's
``model`` (or the first of ``models``). Default usage is deterministic:
``prompt_tokens`` is the number of whitespace-separated words in all
request message contents, ``completion_tokens`` the number of streamed
pieces, and ``cost`` is ``1e-6`` per token.
"""

from __future__ import annotations

import collections
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from tests.fakes._server import FakeServer, RecordedRequest

__all__ = ["CHAT_PATH", "FakeOpenRouter", "FakeUsage"]

CHAT_PATH = "/api/v1/chat/completions"

_TOKEN_RE = re.compile(r"\S+\s*|\s+")
_COMMENT = b": OPENROUTER PROCESSING\n\n"
_DONE = b"data: [DONE]\n\n"
_COST_PER_TOKEN_USD = 1e-6

_Kind = Literal["text", "tool_calls", "midstream_error", "http_error", "stall", "disconnect"]


@dataclass(frozen=True, slots=True)
class FakeUsage:
    """Usage numbers the fake reports in its usage chunk."""

    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    cached_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class _Reply:
    kind: _Kind
    text: str = ""
    calls: tuple[tuple[str, str], ...] = ()
    model: str | None = None
    usage: FakeUsage | None = None
    include_usage: bool = True
    ttft_s: float = 0.0
    tokens_per_s: float | None = None
    comment_lines: bool = True
    status: int = 200
    message: str = ""
    error_code: int | str = "server_error"
    retry_after_s: float | None = None
    stall_s: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict)
    fragment_chars: int = 5


def split_tokens(text: str) -> list[str]:
    """Split text into stream pieces on whitespace, keeping the spaces.

    ``"".join(split_tokens(t)) == t`` for every ``t``.
    """
    return _TOKEN_RE.findall(text)


class FakeOpenRouter(FakeServer):
    """Scripted fake of OpenRouter chat completions (JSON and SSE).

    Args:
        expected_api_key: when set, requests without
            ``Authorization: Bearer <expected_api_key>`` get a 401, like the
            real service; when ``None`` the header is not checked.
        max_queued_replies: bound of the script queue.
    """

    def __init__(
        self, *, expected_api_key: str | None = None, max_queued_replies: int = 1_000
    ) -> None:
        super().__init__()
        self.expected_api_key = expected_api_key
        self.completed_streams = 0
        self._script: collections.deque[_Reply] = collections.deque()
        self._max_queued_replies = max_queued_replies
        self._served = 0
        self.app.router.add_post(CHAT_PATH, self._chat)

    @property
    def api_base(self) -> str:
        """Base URL for clients: ``http://127.0.0.1:PORT/api/v1``."""
        return f"{self.base_url}/api/v1"

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """Recorded ``POST /api/v1/chat/completions`` requests, oldest first."""
        return self.requests_to(CHAT_PATH, method="POST")

    @property
    def queued(self) -> int:
        """Scripted replies not yet served."""
        return len(self._script)

    # -- script verbs ------------------------------------------------------

    def reply_text(
        self,
        text: str,
        *,
        model: str | None = None,
        usage: FakeUsage | None = None,
        ttft_s: float = 0.0,
        tokens_per_s: float | None = None,
        comment_lines: bool = True,
    ) -> None:
        """Queue a text reply streamed token by token, then stop, usage, [DONE].

        Args:
            text: the reply; split on whitespace with spaces kept.
            model: served model to report (default: echo the request's).
            usage: usage to report (default: derived, see module docstring).
            ttft_s: wait before the first delta (comment lines keep flowing
                first, as OpenRouter's do).
            tokens_per_s: pace of the deltas; ``None`` sends them back to back.
            comment_lines: send ``: OPENROUTER PROCESSING`` comments.
        """
        self._queue(
            _Reply(
                kind="text",
                text=text,
                model=model,
                usage=usage,
                ttft_s=ttft_s,
                tokens_per_s=tokens_per_s,
                comment_lines=comment_lines,
            )
        )

    def reply_without_usage(self, text: str, *, model: str | None = None) -> None:
        """Queue a text reply whose stream has no usage chunk."""
        self._queue(_Reply(kind="text", text=text, model=model, include_usage=False))

    def reply_tool_calls(
        self,
        calls: Sequence[tuple[str, Mapping[str, Any] | str]],
        *,
        text: str = "",
        model: str | None = None,
        usage: FakeUsage | None = None,
        fragment_chars: int = 5,
    ) -> None:
        """Queue a reply of tool calls, split across chunks by ``index``.

        Each call's first fragment carries ``id``, ``type`` and the function
        ``name`` with empty arguments; the arguments follow in pieces of
        ``fragment_chars`` characters. The finish reason is ``tool_calls``.

        Args:
            calls: ``(name, arguments)`` pairs; a mapping is JSON-encoded, a
                string is sent raw (to script malformed JSON).
            text: optional text streamed before the calls.
            model: served model to report.
            usage: usage to report.
            fragment_chars: argument characters per fragment (at least 1).
        """
        encoded = tuple(
            (name, args if isinstance(args, str) else json.dumps(dict(args)))
            for name, args in calls
        )
        self._queue(
            _Reply(
                kind="tool_calls",
                text=text,
                calls=encoded,
                model=model,
                usage=usage,
                fragment_chars=max(1, fragment_chars),
            )
        )

    def reply_midstream_error(
        self,
        *,
        after_text: str = "",
        message: str = "Provider disconnected",
        code: int | str = "server_error",
    ) -> None:
        """Queue a 200 stream that sends ``after_text`` then an error event.

        The error chunk carries ``error: {code, message}`` and a choice with
        ``finish_reason: "error"``; the stream then ends without ``[DONE]``.
        """
        self._queue(
            _Reply(kind="midstream_error", text=after_text, message=message, error_code=code)
        )

    def reply_http_error(
        self,
        status: int,
        *,
        retry_after_s: float | None = None,
        message: str = "fake error",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue a request-level error.

        The body is ``{"error": {"code": status, "message": message,
        "metadata": {...}}}`` with HTTP status ``status``, and a
        ``Retry-After`` header (seconds) when ``retry_after_s`` is given.
        """
        self._queue(
            _Reply(
                kind="http_error",
                status=status,
                retry_after_s=retry_after_s,
                message=message,
                metadata=dict(metadata or {}),
            )
        )

    def reply_stall(self, *, after_text: str = "", stall_s: float, rest: str = "") -> None:
        """Queue a stream that sends ``after_text``, then nothing for ``stall_s``.

        If the client is still there after the stall, ``rest`` is streamed
        and the stream finishes normally.
        """
        self._queue(_Reply(kind="stall", text=after_text, stall_s=stall_s, message=rest))

    def reply_disconnect(self, *, after_text: str = "") -> None:
        """Queue a stream that sends ``after_text`` then drops the TCP connection."""
        self._queue(_Reply(kind="disconnect", text=after_text))

    def _queue(self, reply: _Reply) -> None:
        if len(self._script) >= self._max_queued_replies:
            raise RuntimeError(f"more than {self._max_queued_replies} replies queued")
        self._script.append(reply)

    # -- handler -----------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._error(400, "request body must be a JSON object with messages")
        if self.expected_api_key is not None and (
            request.headers.get("Authorization") != f"Bearer {self.expected_api_key}"
        ):
            return self._error(401, "No auth credentials found")
        reply = self._script.popleft() if self._script else self._echo(body)
        self._served += 1
        if reply.kind == "http_error":
            headers = {}
            if reply.retry_after_s is not None:
                headers["Retry-After"] = f"{reply.retry_after_s:g}"
            return self._error(reply.status, reply.message, reply.metadata, headers)
        model = reply.model or _requested_model(body)
        gen_id = f"gen-fake-{self._served}"
        if body.get("stream") is True:
            return await self._stream(request, reply, body, model, gen_id)
        return await self._json(request, reply, body, model, gen_id)

    def _echo(self, body: Mapping[str, Any]) -> _Reply:
        return _Reply(kind="text", text="echo: " + _last_user_text(body.get("messages", [])))

    def _error(
        self,
        status: int,
        message: str,
        metadata: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        return self.http_error(
            status,
            body={"error": {"code": status, "message": message, "metadata": dict(metadata or {})}},
            headers=headers,
        )

    async def _stream(
        self,
        request: web.Request,
        reply: _Reply,
        body: Mapping[str, Any],
        model: str,
        gen_id: str,
    ) -> web.StreamResponse:
        stream = await self.open_stream(
            request, headers={"X-Generation-Id": gen_id, "Cache-Control": "no-cache"}
        )
        created = int(time.time())

        async def send(
            delta: Mapping[str, Any] | None = None,
            finish: str | None = None,
            **extra: Any,
        ) -> None:
            chunk: dict[str, Any] = {
                "id": gen_id,
                "provider": "FakeProvider",
                "model": model,
                "object": "chat.completion.chunk",
                "created": created,
                "choices": [
                    {
                        "index": 0,
                        "delta": dict(delta or {}),
                        "finish_reason": finish,
                        "native_finish_reason": finish,
                        "logprobs": None,
                    }
                ],
            }
            chunk.update(extra)
            await stream.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        if reply.comment_lines:
            await stream.write(_COMMENT)
        await self.delay(reply.ttft_s)
        await send({"role": "assistant", "content": ""})
        if reply.comment_lines:
            await stream.write(_COMMENT)
        pieces = await self._stream_text(reply, reply.text, send)

        if reply.kind == "midstream_error":
            await send(
                {"content": ""},
                finish="error",
                error={"code": reply.error_code, "message": reply.message},
            )
            return stream
        if reply.kind == "disconnect":
            await self.drop_connection(request)
            return stream
        if reply.kind == "stall":
            await self.stall(reply.stall_s)
            pieces += await self._stream_text(reply, reply.message, send)
        if reply.kind == "tool_calls":
            for index, (name, arguments) in enumerate(reply.calls):
                await send(
                    {
                        "tool_calls": [
                            {
                                "index": index,
                                "id": f"call_{gen_id}_{index}",
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    }
                )
                for start in range(0, len(arguments), reply.fragment_chars):
                    fragment = arguments[start : start + reply.fragment_chars]
                    await send(
                        {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                    )
                    pieces += 1
        await send({}, finish="tool_calls" if reply.kind == "tool_calls" else "stop")
        if reply.include_usage:
            usage = _usage_json(reply.usage or _default_usage(body, pieces))
            await stream.write(
                b"data: "
                + json.dumps(
                    {
                        "id": gen_id,
                        "provider": "FakeProvider",
                        "model": model,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "choices": [],
                        "usage": usage,
                    }
                ).encode()
                + b"\n\n"
            )
        await stream.write(_DONE)
        await stream.write_eof()
        self.completed_streams += 1
        return stream

    async def _stream_text(self, reply: _Reply, text: str, send: Any) -> int:
        pieces = split_tokens(text)
        for index, piece in enumerate(pieces):
            if index and reply.tokens_per_s:
                await self.delay(1.0 / reply.tokens_per_s)
            await send({"content": piece})
        return len(pieces)

    async def _json(
        self,
        request: web.Request,
        reply: _Reply,
        body: Mapping[str, Any],
        model: str,
        gen_id: str,
    ) -> web.StreamResponse:
        await self.delay(reply.ttft_s)
        if reply.kind == "disconnect":
            await self.drop_connection(request)
            return web.Response(status=499)
        if reply.kind == "midstream_error":
            return self._error(502, reply.message)
        if reply.kind == "stall":
            await self.stall(reply.stall_s)
        text = reply.text + (reply.message if reply.kind == "stall" else "")
        message: dict[str, Any] = {"role": "assistant", "content": text}
        pieces = len(split_tokens(text))
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{gen_id}_{index}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
                for index, (name, arguments) in enumerate(reply.calls)
            ]
            pieces += sum(len(arguments) for _, arguments in reply.calls)
        finish = "tool_calls" if reply.calls else "stop"
        document: dict[str, Any] = {
            "id": gen_id,
            "provider": "FakeProvider",
            "model": model,
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish,
                    "native_finish_reason": finish,
                    "logprobs": None,
                }
            ],
        }
        if reply.include_usage:
            document["usage"] = _usage_json(reply.usage or _default_usage(body, pieces))
        return web.json_response(document, headers={"X-Generation-Id": gen_id})


def _requested_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    models = body.get("models")
    if isinstance(models, list) and models and isinstance(models[0], str):
        return models[0]
    return "fake/default"


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: Iterable[Any]) -> str:
    text = ""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            text = _content_text(message.get("content"))
    return text


def _default_usage(body: Mapping[str, Any], completion_pieces: int) -> FakeUsage:
    messages = body.get("messages", [])
    prompt = sum(
        len(_content_text(m.get("content")).split()) for m in messages if isinstance(m, dict)
    )
    return FakeUsage(
        prompt_tokens=prompt,
        completion_tokens=completion_pieces,
        cost_usd=(prompt + completion_pieces) * _COST_PER_TOKEN_USD,
    )


def _usage_json(usage: FakeUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost": usage.cost_usd,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "cost_details": {"upstream_inference_cost": None},
    }
