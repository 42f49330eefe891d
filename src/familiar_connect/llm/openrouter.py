"""Streaming chat-completions client for OpenRouter and OpenAI-compatible servers.

This module only moves bytes: :class:`~familiar_connect.llm.sse.SSEParser`
and :class:`~familiar_connect.llm.sse.ChunkInterpreter` do all parsing. It
owns one pooled :class:`httpx.AsyncClient`, the retry policy, the mapping of
httpx failures to :class:`~familiar_connect.errors.ProviderError`, and usage
accounting.

Retry policy, in one place:

* retried, with exponential backoff and jitter, while **nothing has been
  yielded to the caller yet**: 408/429 (:class:`ProviderRateLimited`), 5xx
  (:class:`ProviderUnavailable`), connection failures and timeouts, and an
  error event that arrives before the first delta;
* ``Retry-After`` (seconds or HTTP date) is a floor for the wait; a
  ``Retry-After`` above ``max_retry_after_s`` is not waited out: the error is
  raised with ``retry_after_s`` set so the caller can decide;
* never retried: 400/401/402/403 and other 4xx, protocol errors, and any
  failure after the first event reached the caller (replaying would repeat
  text the user has already seen or heard).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog

from familiar_connect import __version__
from familiar_connect.errors import (
    ConfigError,
    ProviderConnectionError,
    ProviderError,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.llm.sse import ChunkInterpreter, SSEParser, error_for_status
from familiar_connect.llm.types import (
    CallSettings,
    ChatMessage,
    Completion,
    Finished,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallsReady,
    ToolSpec,
    UsageReport,
)

__all__ = [
    "OPENROUTER_BASE_URL",
    "LLMClientStats",
    "OpenRouterClient",
    "UsageCallback",
    "build_chat_body",
    "parse_retry_after",
]

log = structlog.get_logger(__name__)

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
"""The real service; tests and local servers pass their own ``base_url``."""

UsageCallback = Callable[[UsageReport, CallSettings], None]
"""Receives the usage of every completed call; must not block or raise."""

# After [DONE] only the chunked-encoding terminator should remain.
_MAX_DRAIN_BYTES = 64 << 10

_RETRYABLE = (ProviderRateLimited, ProviderUnavailable, ProviderConnectionError, ProviderTimeout)


def build_chat_body(
    messages: Sequence[ChatMessage],
    call: CallSettings,
    *,
    tools: Sequence[ToolSpec] = (),
    stream: bool = True,
) -> dict[str, Any]:
    """Build the JSON body of ``POST /chat/completions``.

    Optional settings are left out when unset, so the provider's defaults
    apply and strict OpenAI-compatible servers see no unknown nulls.

    Args:
        messages: the prompt, oldest first.
        call: model choice and sampling options; ``fallback_models`` become
            OpenRouter's ``models`` array, primary first.
        tools: functions offered to the model.
        stream: ask for server-sent events.

    Returns:
        The body, ready for ``json=``.

    Raises:
        ValueError: no messages.
    """
    if not messages:
        raise ValueError("a chat request needs at least one message")
    body: dict[str, Any] = {
        "model": call.model,
        "messages": [message.to_wire() for message in messages],
        "stream": stream,
    }
    if call.fallback_models:
        body["models"] = [call.model, *call.fallback_models]
    if call.temperature is not None:
        body["temperature"] = call.temperature
    if call.max_tokens is not None:
        body["max_tokens"] = call.max_tokens
    if call.reasoning_effort is not None:
        body["reasoning"] = {"effort": call.reasoning_effort}
    if tools:
        body["tools"] = [tool.to_wire() for tool in tools]
    return body


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header.

    Args:
        value: the header value: delay seconds (fractions accepted) or an
            HTTP date.
        now: the wall-clock time to measure a date against (``UTC`` now by
            default; a parameter so tests need no clock).

    Returns:
        Seconds to wait, never negative, or ``None`` when absent or
        unparseable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now if now is not None else datetime.now(UTC)
    return max((when - reference).total_seconds(), 0.0)


def _header_value(name: str, value: str) -> str:
    # httpx sends header values as ASCII; a bad value would only fail at the
    # first request, deep in a conversation. Fail at start-up instead, and
    # never echo the value (it may be the API key).
    if not value.isascii() or not value.isprintable():
        raise ConfigError(f"{name} must be printable ASCII")
    return value


@dataclass(slots=True)
class LLMClientStats:
    """What the client did, for the dashboard's LLM row and ``/metrics``.

    Attributes:
        calls: calls to :meth:`OpenRouterClient.stream_chat`.
        retries: requests repeated after a retryable failure (429, 5xx, timeout, drop).
        recovered: calls that succeeded after at least one retry (invisible to the
            user but for the delay, and otherwise only a log line).
        failed: calls that raised to the caller.
    """

    calls: int = 0
    retries: int = 0
    recovered: int = 0
    failed: int = 0


class OpenRouterClient:
    """Streams chat completions from OpenRouter or any OpenAI-compatible server.

    One instance is shared by every conversation; it holds one connection
    pool. Close it with :meth:`aclose` or use it as an async context manager.

    Args:
        base_url: API root, e.g. ``https://openrouter.ai/api/v1``; requests
            go to ``{base_url}/chat/completions``.
        api_key: bearer key, already unwrapped from its ``SecretStr``.
            ``None`` sends no ``Authorization`` header (local servers).
        connect_timeout_s: TCP/TLS connect timeout, and pool wait timeout.
        read_timeout_s: longest silence between two reads of the response;
            a stream that stalls longer raises :class:`ProviderTimeout`.
            OpenRouter's ``: OPENROUTER PROCESSING`` comments reset it.
        referer: ``HTTP-Referer`` attribution header (the app URL).
        title: ``X-OpenRouter-Title`` attribution header (the app name).
        max_retries: retries after the first attempt (so up to
            ``max_retries + 1`` requests per call).
        backoff_base_s: first backoff; doubles per retry, with jitter.
        backoff_max_s: cap of the exponential backoff.
        max_retry_after_s: a ``Retry-After`` longer than this is raised, not
            waited out.
        on_usage: called with each completed call's :class:`UsageReport`;
            exceptions it raises are logged and swallowed.
        transport: httpx transport override (tests, proxies).
        max_connections: size of the connection pool.
        max_stream_events: most SSE events read from one response.
        max_response_bytes: most bytes read from one response.
        max_line_bytes: longest SSE line accepted.
        max_tool_calls: most tool calls accepted in one reply.
        max_tool_argument_bytes: largest argument text of one tool call.
        max_error_body_bytes: most bytes read from an error response.
        drain_timeout_s: after ``[DONE]``, how long to wait for the server to
            end the response so the connection can be reused.
        provider: service name on errors and logs.

    Raises:
        ConfigError: ``base_url`` is not http(s), or a header value is not
            printable ASCII.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        referer: str | None = None,
        title: str | None = None,
        max_retries: int = 3,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_retry_after_s: float = 30.0,
        on_usage: UsageCallback | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 20,
        max_stream_events: int = 100_000,
        max_response_bytes: int = 32 << 20,
        max_line_bytes: int = 1 << 20,
        max_tool_calls: int = 32,
        max_tool_argument_bytes: int = 256 << 10,
        max_error_body_bytes: int = 64 << 10,
        drain_timeout_s: float = 1.0,
        provider: str = "openrouter",
    ) -> None:
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError("the LLM base URL must start with http:// or https://")
        if max_retries < 0:
            raise ConfigError("max_retries must not be negative")
        headers = {
            # Compression would only let a proxy buffer tokens; SSE is small.
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "User-Agent": f"familiar-connect/{__version__}",
        }
        if api_key:
            headers["Authorization"] = "Bearer " + _header_value("the API key", api_key)
        if referer:
            headers["HTTP-Referer"] = _header_value("the referer", referer)
        if title:
            headers["X-OpenRouter-Title"] = _header_value("the title", title)
        self._url = f"{base}/chat/completions"
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._provider = provider
        self._max_retries = max_retries
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._max_retry_after_s = max_retry_after_s
        self._on_usage = on_usage
        self._max_stream_events = max_stream_events
        self._max_response_bytes = max_response_bytes
        self._max_line_bytes = max_line_bytes
        self._max_tool_calls = max_tool_calls
        self._max_tool_argument_bytes = max_tool_argument_bytes
        self._max_error_body_bytes = max_error_body_bytes
        self._drain_timeout_s = drain_timeout_s
        self.stats = LLMClientStats()
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=read_timeout_s,
                pool=connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )

    async def __aenter__(self) -> OpenRouterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Idempotent.

        Cancellation: safe; the pool is closed as far as it got, and the
        client must not be used afterwards either way.
        """
        await self._http.aclose()

    async def stream_chat(
        self,
        messages: Sequence[ChatMessage],
        call: CallSettings,
        *,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[StreamEvent]:
        """Stream one reply.

        Events come in the order ``TextDelta*, ToolCallsReady?, Finished,
        UsageReport?``. Iterate with :func:`contextlib.aclosing` so that
        leaving the loop early closes the HTTP response at once::

            async with contextlib.aclosing(client.stream_chat(msgs, call)) as events:
                async for event in events:
                    ...

        Args:
            messages: the prompt, oldest first.
            call: model, fallbacks and sampling options.
            tools: functions the model may call.

        Yields:
            Stream events.

        Raises:
            ProviderError: the mapped failure (see the module docstring for
                which are retried first). A failure after events were
                yielded is raised as is, never retried.
            ProviderProtocolError: the stream broke a bound or its grammar.
            ValueError: ``messages`` is empty.

        Cancellation:
            Cancelling the consuming task, or closing the generator, closes
            the HTTP response immediately (the server sees the connection
            drop) and releases its pool slot; nothing else is left running.
            No usage is reported for a cancelled call. Without ``aclosing``,
            an abandoned generator keeps its connection open until it is
            garbage-collected.
        """
        body = build_chat_body(messages, call, tools=tools)
        started_ns = time.monotonic_ns()
        self.stats.calls += 1
        # Bounded: each pass either returns, raises, or spends one of max_retries.
        for attempt in range(1, self._max_retries + 2):
            log.info(
                "llm_request_started",
                model=call.model,
                attempt=attempt,
                messages=len(messages),
                tools=len(tools),
            )
            yielded = False
            delay_s = 0.0
            try:
                async with contextlib.aclosing(self._attempt(body, call, started_ns)) as events:
                    async for event in events:
                        yielded = True
                        yield event
                if attempt > 1:
                    self.stats.recovered += 1
                return
            except ProviderError as exc:
                # Once the caller has seen output, a replay would repeat it.
                retry_delay_s = None if yielded else self._retry_delay_s(exc, attempt)
                if retry_delay_s is None:
                    log.warning(
                        "llm_request_failed",
                        model=call.model,
                        status=exc.status,
                        attempt=attempt,
                        error=type(exc).__name__,
                        after_output=yielded,
                    )
                    self.stats.failed += 1
                    raise
                delay_s = retry_delay_s
                self.stats.retries += 1
                log.info(
                    "llm_request_retried",
                    model=call.model,
                    status=exc.status,
                    attempt=attempt,
                    error=type(exc).__name__,
                    delay_s=round(delay_s, 3),
                    retry_after_s=exc.retry_after_s,
                )
            # Outside the except block, so a later error does not chain this one.
            await asyncio.sleep(delay_s)

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        call: CallSettings,
        *,
        tools: Sequence[ToolSpec] = (),
    ) -> Completion:
        """Return one whole reply by draining :meth:`stream_chat`.

        Args:
            messages: the prompt, oldest first.
            call: model, fallbacks and sampling options.
            tools: functions the model may call.

        Returns:
            The joined text, tool calls, finish reason, model and usage.

        Raises:
            ProviderError: as :meth:`stream_chat`.

        Cancellation:
            Safe at any point; the HTTP response is closed and nothing is
            returned.
        """
        parts: list[str] = []
        calls: tuple[ToolCall, ...] = ()
        reason = "stop"
        model: str | None = None
        usage: UsageReport | None = None
        async with contextlib.aclosing(self.stream_chat(messages, call, tools=tools)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, ToolCallsReady):
                    calls = event.calls
                elif isinstance(event, Finished):
                    reason, model = event.reason, event.model
                elif isinstance(event, UsageReport):
                    usage = event
        return Completion(
            text="".join(parts),
            tool_calls=calls,
            finish_reason=reason,
            model=model,
            usage=usage,
        )

    async def _attempt(
        self, body: dict[str, Any], call: CallSettings, started_ns: int
    ) -> AsyncIterator[StreamEvent]:
        """One HTTP request; httpx failures leave here as ProviderError."""
        try:
            async with self._http.stream("POST", self._url, json=body) as response:
                await self._check_response(response)
                async with contextlib.aclosing(
                    self._read_events(response, call, started_ns)
                ) as events:
                    async for event in events:
                        yield event
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc) from exc

    async def _read_events(
        self, response: httpx.Response, call: CallSettings, started_ns: int
    ) -> AsyncIterator[StreamEvent]:
        parser = SSEParser(max_line_bytes=self._max_line_bytes, provider=self._provider)
        interpreter = ChunkInterpreter(
            provider=self._provider,
            max_tool_calls=self._max_tool_calls,
            max_tool_argument_bytes=self._max_tool_argument_bytes,
        )
        header_generation_id = response.headers.get("x-generation-id")
        received_bytes = 0
        events_seen = 0
        ttft_ns: int | None = None
        reason: str | None = None
        async with contextlib.aclosing(response.aiter_bytes()) as chunks:
            async for chunk in chunks:
                received_bytes += len(chunk)
                if received_bytes > self._max_response_bytes:
                    raise ProviderProtocolError(
                        f"response exceeds {self._max_response_bytes} bytes",
                        provider=self._provider,
                    )
                for payload in parser.feed(chunk):
                    events_seen += 1
                    if events_seen > self._max_stream_events:
                        raise ProviderProtocolError(
                            f"response exceeds {self._max_stream_events} events",
                            provider=self._provider,
                        )
                    produced = interpreter.feed(payload)
                    if ttft_ns is None and interpreter.saw_delta:
                        ttft_ns = time.monotonic_ns()
                    for event in produced:
                        if isinstance(event, Finished):
                            reason = event.reason
                        elif isinstance(event, UsageReport):
                            event = self._complete_usage(
                                event, call, started_ns, ttft_ns, header_generation_id
                            )
                        yield event
                    if interpreter.done:
                        break
                if interpreter.done:
                    break
            if interpreter.done:
                await self._drain(chunks)
            else:
                closing: list[StreamEvent] = []
                for payload in parser.close():
                    closing.extend(interpreter.feed(payload))
                closing.extend(interpreter.end_of_stream())
                for event in closing:
                    if isinstance(event, Finished):
                        reason = event.reason
                    elif isinstance(event, UsageReport):
                        event = self._complete_usage(
                            event, call, started_ns, ttft_ns, header_generation_id
                        )
                    yield event
        log.info(
            "llm_request_finished",
            model=call.model,
            served_model=interpreter.model,
            finish_reason=reason,
            ttft_ms=_ms_between(started_ns, ttft_ns),
            duration_ms=_ms_between(started_ns, time.monotonic_ns()),
        )

    async def _drain(self, chunks: AsyncIterator[bytes]) -> None:
        # Reading the response to its end lets httpx return the connection to
        # the pool; closing it half-read would cost a new TCP+TLS handshake on
        # the next turn. Bounded in time and bytes, errors ignored: the reply
        # is already complete.
        drained = 0
        with contextlib.suppress(TimeoutError, httpx.HTTPError):
            async with asyncio.timeout(self._drain_timeout_s):
                async for chunk in chunks:
                    drained += len(chunk)
                    if drained > _MAX_DRAIN_BYTES:
                        return

    def _complete_usage(
        self,
        usage: UsageReport,
        call: CallSettings,
        started_ns: int,
        ttft_ns: int | None,
        header_generation_id: str | None,
    ) -> UsageReport:
        usage = replace(
            usage,
            ttft_ms=_ms_between(started_ns, ttft_ns),
            generation_id=header_generation_id or usage.generation_id,
        )
        if self._on_usage is not None:
            try:
                self._on_usage(usage, call)
            except Exception:
                # Accounting must never break a reply in flight.
                log.warning("llm_usage_callback_failed", model=call.model, exc_info=True)
        return usage

    async def _check_response(self, response: httpx.Response) -> None:
        status = response.status_code
        content_type = response.headers.get("content-type", "")
        if status == 200 and not content_type.startswith("application/json"):
            return
        raw = bytearray()
        async with contextlib.aclosing(response.aiter_bytes()) as chunks:
            async for chunk in chunks:
                raw += chunk
                if len(raw) >= self._max_error_body_bytes:
                    break
        retry_after_s = parse_retry_after(response.headers.get("retry-after"))
        error = _json_error(bytes(raw))
        if status == 200:
            # Some servers answer 200 with a JSON error instead of a stream.
            if error is None:
                raise ProviderProtocolError(
                    "expected an event stream, got a JSON body", provider=self._provider
                )
            code = error.get("code")
            status_from_code = code if isinstance(code, int) and 400 <= code <= 599 else 502
            raise error_for_status(
                status_from_code,
                _error_text(error, response),
                provider=self._provider,
                retry_after_s=retry_after_s,
            )
        raise error_for_status(
            status,
            _error_text(error, response),
            provider=self._provider,
            retry_after_s=retry_after_s,
        )

    def _retry_delay_s(self, exc: ProviderError, attempt: int) -> float | None:
        if attempt > self._max_retries or not isinstance(exc, _RETRYABLE):
            return None
        backoff_s = min(self._backoff_max_s, self._backoff_base_s * 2 ** (attempt - 1))
        # "Equal jitter": at least half the backoff, so retries still spread
        # out, and never all callers at the same instant.
        delay_s = backoff_s / 2 + random.uniform(0.0, backoff_s / 2)  # noqa: S311 - jitter, not security
        if exc.retry_after_s is not None:
            if exc.retry_after_s > self._max_retry_after_s:
                return None
            delay_s = max(delay_s, exc.retry_after_s)
        return delay_s

    def _map_transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        # Most specific first: TimeoutException is also a TransportError.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, httpx.ReadTimeout):
            return ProviderTimeout(
                f"no data for {self._read_timeout_s} s (stalled stream or slow model)",
                provider=self._provider,
            )
        if isinstance(exc, httpx.ConnectTimeout):
            return ProviderTimeout(
                f"could not connect within {self._connect_timeout_s} s", provider=self._provider
            )
        if isinstance(exc, httpx.TimeoutException):
            return ProviderTimeout(detail, provider=self._provider)
        if isinstance(exc, httpx.DecodingError | httpx.LocalProtocolError):
            return ProviderProtocolError(detail, provider=self._provider)
        # ConnectError, ReadError/WriteError, RemoteProtocolError (peer closed
        # mid-body), proxy and unsupported-protocol failures.
        return ProviderConnectionError(detail, provider=self._provider)


def _json_error(raw: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    error = document.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return None


def _error_text(error: dict[str, Any] | None, response: httpx.Response) -> str:
    if error is not None:
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
    reason = response.reason_phrase or "error"
    return f"HTTP {response.status_code} {reason}"


def _ms_between(start_ns: int, end_ns: int | None) -> float | None:
    if end_ns is None:
        return None
    return (end_ns - start_ns) / 1_000_000
