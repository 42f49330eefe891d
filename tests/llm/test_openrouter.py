"""The real OpenRouter client (real httpx) against the fake OpenRouter on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest
import structlog

from familiar_connect.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderQuotaError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.llm.openrouter import OpenRouterClient, build_chat_body, parse_retry_after
from familiar_connect.llm.types import (
    CallSettings,
    ChatMessage,
    Finished,
    StreamEvent,
    TextDelta,
    ToolCallsReady,
    ToolSpec,
    UsageReport,
)
from tests.fakes.openrouter import FakeOpenRouter, FakeUsage
from tests.llm.conftest import TEST_API_KEY, ClientFactory

MESSAGES = [ChatMessage.system("You are a familiar."), ChatMessage.user("hello there")]
CALL = CallSettings(model="acme/primary")
# Generous: only reached if the behaviour under test is broken.
GUARD_S = 5.0


async def collect(
    client: OpenRouterClient,
    call: CallSettings = CALL,
    *,
    tools: tuple[ToolSpec, ...] = (),
    sink: list[StreamEvent] | None = None,
) -> list[StreamEvent]:
    events: list[StreamEvent] = [] if sink is None else sink
    async with contextlib.aclosing(client.stream_chat(MESSAGES, call, tools=tools)) as stream:
        async for event in stream:
            events.append(event)
    return events


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


class TestOpenRouterClient:
    async def test_streams_text_token_by_token(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Text arrives as several deltas (comment lines skipped), then Finished, then usage."""
        fake_openrouter.reply_text("The moon is made of cheese.")
        events = await collect(client)
        deltas = [e for e in events if isinstance(e, TextDelta)]
        assert len(deltas) == 6
        assert text_of(events) == "The moon is made of cheese."
        assert events[-2] == Finished(reason="stop", model="acme/primary")
        assert isinstance(events[-1], UsageReport)

    async def test_default_echo_reply(self, client: OpenRouterClient) -> None:
        """With nothing scripted the fake echoes the last user message."""
        completion = await client.complete(MESSAGES, CALL)
        assert completion.text == "echo: hello there"
        assert completion.finish_reason == "stop"

    async def test_tool_calls_reassembled(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Tool calls split across many chunks come out whole, in order, with tool_calls finish."""
        fake_openrouter.reply_tool_calls(
            [("get_time", {"tz": "Europe/Paris"}), ("recall", {"query": "cats and dogs"})],
            text="Let me check.",
            fragment_chars=3,
        )
        tools = (ToolSpec("get_time", "Current time"), ToolSpec("recall", "Search notes"))
        events = await collect(client, tools=tools)
        ready = [e for e in events if isinstance(e, ToolCallsReady)]
        assert len(ready) == 1
        calls = ready[0].calls
        assert [c.name for c in calls] == ["get_time", "recall"]
        assert [c.arguments() for c in calls] == [
            {"tz": "Europe/Paris"},
            {"query": "cats and dogs"},
        ]
        assert len({c.id for c in calls}) == 2
        assert text_of(events) == "Let me check."
        assert any(e == Finished(reason="tool_calls", model="acme/primary") for e in events)
        assert fake_openrouter.chat_requests[0].json["tools"] == [t.to_wire() for t in tools]

    async def test_usage_parsed_and_reported(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """The usage chunk becomes a UsageReport passed to on_usage with the call settings."""
        seen: list[tuple[UsageReport, CallSettings]] = []
        client = make_client(on_usage=lambda report, call: seen.append((report, call)))
        fake_openrouter.reply_text(
            "four little words here",
            usage=FakeUsage(
                prompt_tokens=12,
                completion_tokens=4,
                cost_usd=0.0005,
                cached_tokens=2,
                reasoning_tokens=1,
            ),
        )
        completion = await client.complete(MESSAGES, CALL)
        usage = completion.usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (12, 4, 16)
        assert (usage.cost_usd, usage.cached_tokens, usage.reasoning_tokens) == (0.0005, 2, 1)
        assert usage.model == "acme/primary"
        assert usage.generation_id == "gen-fake-1"
        assert seen == [(usage, CALL)]

    async def test_ttft_measured_from_request_start(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """ttft_ms covers at least the fake's injected wait before the first token."""
        fake_openrouter.reply_text("slow start", ttft_s=0.05)
        usage = (await client.complete(MESSAGES, CALL)).usage
        assert usage is not None
        assert usage.ttft_ms is not None
        assert usage.ttft_ms >= 50.0

    async def test_stream_without_usage_tolerated(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A stream with no usage chunk completes without a UsageReport or on_usage call."""
        seen: list[UsageReport] = []
        client = make_client(on_usage=lambda report, call: seen.append(report))
        fake_openrouter.reply_without_usage("no usage here")
        events = await collect(client)
        assert text_of(events) == "no usage here"
        assert isinstance(events[-1], Finished)
        assert not any(isinstance(e, UsageReport) for e in events)
        assert seen == []

    async def test_failing_usage_callback_does_not_break_the_reply(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """An exception in on_usage is logged and the reply still completes."""

        def explode(report: UsageReport, call: CallSettings) -> None:
            raise RuntimeError("accounting is down")

        client = make_client(on_usage=explode)
        fake_openrouter.reply_text("still fine")
        with structlog.testing.capture_logs() as logs:
            completion = await client.complete(MESSAGES, CALL)
        assert completion.text == "still fine"
        assert any(entry["event"] == "llm_usage_callback_failed" for entry in logs)

    async def test_attribution_and_auth_headers_sent(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Authorization, HTTP-Referer and X-OpenRouter-Title reach the server."""
        await client.complete(MESSAGES, CALL)
        headers = fake_openrouter.chat_requests[0].headers
        assert headers["Authorization"] == f"Bearer {TEST_API_KEY}"
        assert headers["HTTP-Referer"] == "https://familiar.example"
        assert headers["X-OpenRouter-Title"] == "Familiar-Connect tests"

    async def test_no_key_sends_no_authorization(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Without an API key (local servers) no Authorization header or attribution is sent."""
        client = make_client(api_key=None, referer=None, title=None)
        await client.complete(MESSAGES, CALL)
        headers = fake_openrouter.chat_requests[0].headers
        assert "Authorization" not in headers
        assert "HTTP-Referer" not in headers
        assert "X-OpenRouter-Title" not in headers

    async def test_fallback_models_sent_and_served_model_reported(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Fallbacks go out as the models array and the model that served is reported."""
        fake_openrouter.reply_text("from the fallback", model="acme/backup")
        call = CallSettings(model="acme/primary", fallback_models=("acme/backup", "acme/last"))
        completion = await client.complete(MESSAGES, call)
        body = fake_openrouter.chat_requests[0].json
        assert body["model"] == "acme/primary"
        assert body["models"] == ["acme/primary", "acme/backup", "acme/last"]
        assert completion.model == "acme/backup"
        assert completion.usage is not None
        assert completion.usage.model == "acme/backup"

    async def test_request_body(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """The body streams, carries the messages and only the options that were set."""
        call = CallSettings(
            model="acme/primary", temperature=0.7, max_tokens=256, reasoning_effort="low"
        )
        await client.complete(MESSAGES, call)
        body = fake_openrouter.chat_requests[0].json
        assert body["stream"] is True
        assert body["messages"] == [m.to_wire() for m in MESSAGES]
        assert (body["temperature"], body["max_tokens"]) == (0.7, 256)
        assert body["reasoning"] == {"effort": "low"}
        assert "models" not in body
        assert "tools" not in body

    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (400, ProviderBadRequest),
            (401, ProviderAuthError),
            (402, ProviderQuotaError),
            (403, ProviderRefused),
        ],
    )
    async def test_client_errors_raise_without_retry(
        self,
        client: OpenRouterClient,
        fake_openrouter: FakeOpenRouter,
        status: int,
        expected: type[ProviderError],
    ) -> None:
        """400/401/402/403 raise their error class after exactly one request."""
        fake_openrouter.reply_http_error(status, message=f"refused with {status}")
        fake_openrouter.reply_text("must not be reached")
        with pytest.raises(expected) as caught:
            await client.complete(MESSAGES, CALL)
        assert caught.value.status == status
        assert f"refused with {status}" in str(caught.value)
        assert len(fake_openrouter.chat_requests) == 1

    async def test_402_with_retry_after_is_still_not_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Out of credits is never retried, even when the server suggests a wait."""
        fake_openrouter.reply_http_error(402, retry_after_s=0)
        with pytest.raises(ProviderQuotaError):
            await client.complete(MESSAGES, CALL)
        assert len(fake_openrouter.chat_requests) == 1

    async def test_429_with_retry_after_is_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A 429 is retried after at least its Retry-After, and the retry succeeds."""
        fake_openrouter.reply_http_error(429, retry_after_s=0.02, message="slow down")
        fake_openrouter.reply_text("second time lucky")
        with structlog.testing.capture_logs() as logs:
            completion = await client.complete(MESSAGES, CALL)
        assert completion.text == "second time lucky"
        assert len(fake_openrouter.chat_requests) == 2
        retried = [entry for entry in logs if entry["event"] == "llm_request_retried"]
        assert len(retried) == 1
        assert (retried[0]["status"], retried[0]["attempt"]) == (429, 1)
        assert retried[0]["delay_s"] >= 0.02

    async def test_stats_count_retries_recoveries_and_failures(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """The client's stats count each call, each retried request, recoveries and failures."""
        fake_openrouter.reply_http_error(502, message="bad gateway")
        fake_openrouter.reply_text("recovered")
        await client.complete(MESSAGES, CALL)
        fake_openrouter.reply_http_error(401, message="bad key")
        with pytest.raises(ProviderAuthError):
            await client.complete(MESSAGES, CALL)
        stats = client.stats
        assert (stats.calls, stats.retries, stats.recovered, stats.failed) == (2, 1, 1, 1)

    async def test_retry_after_above_the_cap_is_raised(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A Retry-After longer than max_retry_after_s raises at once, carrying the wait."""
        client = make_client(max_retry_after_s=1.0)
        fake_openrouter.reply_http_error(429, retry_after_s=120)
        with pytest.raises(ProviderRateLimited) as caught:
            await client.complete(MESSAGES, CALL)
        assert caught.value.retry_after_s == 120
        assert len(fake_openrouter.chat_requests) == 1

    @pytest.mark.parametrize("status", [408, 500, 502, 503])
    async def test_transient_statuses_are_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter, status: int
    ) -> None:
        """408 and 5xx answers are retried and the retry's reply is returned."""
        fake_openrouter.reply_http_error(status)
        fake_openrouter.reply_text("recovered")
        assert (await client.complete(MESSAGES, CALL)).text == "recovered"
        assert len(fake_openrouter.chat_requests) == 2

    async def test_retries_exhausted_raise(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """After max_retries retries the last error is raised (max_retries + 1 requests)."""
        for _ in range(3):
            fake_openrouter.reply_http_error(502, message="upstream down")
        fake_openrouter.reply_text("never served")
        with pytest.raises(ProviderUnavailable, match="upstream down"):
            await client.complete(MESSAGES, CALL)
        assert len(fake_openrouter.chat_requests) == 3
        assert fake_openrouter.queued == 1

    async def test_midstream_error_after_text_is_raised_not_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """An error event after text was yielded raises and the call is not repeated."""
        fake_openrouter.reply_midstream_error(after_text="Half a", message="provider crashed")
        fake_openrouter.reply_text("must not be reached")
        events: list[StreamEvent] = []
        with pytest.raises(ProviderUnavailable, match="provider crashed"):
            await collect(client, sink=events)
        assert text_of(events) == "Half a"
        assert len(fake_openrouter.chat_requests) == 1

    async def test_midstream_error_before_text_is_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """An error event before anything was yielded is retried like a 5xx."""
        fake_openrouter.reply_midstream_error(message="warming up")
        fake_openrouter.reply_text("ready now")
        assert (await client.complete(MESSAGES, CALL)).text == "ready now"
        assert len(fake_openrouter.chat_requests) == 2

    async def test_stalled_stream_times_out(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A stream silent for longer than read_timeout_s raises ProviderTimeout."""
        client = make_client(read_timeout_s=0.1)
        fake_openrouter.reply_stall(after_text="Well", stall_s=GUARD_S)
        events: list[StreamEvent] = []
        with pytest.raises(ProviderTimeout):
            await collect(client, sink=events)
        assert text_of(events) == "Well"
        assert len(fake_openrouter.chat_requests) == 1

    async def test_short_stall_is_not_a_timeout(
        self, make_client: ClientFactory, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A pause shorter than read_timeout_s is waited out and the reply completes."""
        client = make_client(read_timeout_s=GUARD_S)
        fake_openrouter.reply_stall(after_text="Well, ", stall_s=0.02, rest="let me think.")
        assert (await client.complete(MESSAGES, CALL)).text == "Well, let me think."

    async def test_dropped_connection_raises_connection_error(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A TCP drop mid-stream after text raises ProviderConnectionError without retry."""
        fake_openrouter.reply_disconnect(after_text="I was saying")
        fake_openrouter.reply_text("must not be reached")
        events: list[StreamEvent] = []
        with pytest.raises(ProviderConnectionError):
            await collect(client, sink=events)
        assert text_of(events) == "I was saying"
        assert len(fake_openrouter.chat_requests) == 1

    async def test_drop_before_text_is_retried(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """A TCP drop before any text is retried on a fresh connection."""
        fake_openrouter.reply_disconnect()
        fake_openrouter.reply_text("second connection")
        assert (await client.complete(MESSAGES, CALL)).text == "second connection"
        assert len(fake_openrouter.chat_requests) == 2

    async def test_connection_refused_raises_connection_error(
        self, make_client: ClientFactory
    ) -> None:
        """Nothing listening on the port raises ProviderConnectionError after the retries."""
        spare = FakeOpenRouter()
        await spare.start()
        dead_base = spare.api_base
        await spare.stop()
        client = make_client(base_url=dead_base, max_retries=1)
        with pytest.raises(ProviderConnectionError):
            await client.complete(MESSAGES, CALL)

    async def test_closing_the_stream_early_disconnects(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Leaving an aclosing() block mid-stream closes the HTTP response at once."""
        fake_openrouter.reply_text("word " * 200, tokens_per_s=100)
        async with contextlib.aclosing(client.stream_chat(MESSAGES, CALL)) as stream:
            async for event in stream:
                assert isinstance(event, TextDelta)
                break
        await asyncio.wait_for(fake_openrouter.disconnected.wait(), GUARD_S)
        assert fake_openrouter.client_disconnects == 1
        assert fake_openrouter.completed_streams == 0

    async def test_cancelling_the_consumer_disconnects(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Cancelling the task that consumes the stream makes the server see the disconnect."""
        fake_openrouter.reply_text("word " * 200, tokens_per_s=100)
        first = asyncio.Event()

        async def consume() -> None:
            async with contextlib.aclosing(client.stream_chat(MESSAGES, CALL)) as stream:
                async for _ in stream:
                    first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), GUARD_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(fake_openrouter.disconnected.wait(), GUARD_S)
        assert fake_openrouter.completed_streams == 0

    async def test_connection_is_reused_between_calls(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Consecutive calls share one pooled connection (no new handshake per turn)."""
        await client.complete(MESSAGES, CALL)
        await client.complete(MESSAGES, CALL)
        ports = {r.peer_port for r in fake_openrouter.chat_requests}
        assert len(ports) == 1

    async def test_logs_never_contain_the_key_or_messages(
        self, client: OpenRouterClient, fake_openrouter: FakeOpenRouter
    ) -> None:
        """Request logs name model, status and attempt but never the key or message text."""
        fake_openrouter.reply_http_error(503)
        fake_openrouter.reply_http_error(401)
        with structlog.testing.capture_logs() as logs, pytest.raises(ProviderAuthError):
            await client.complete(MESSAGES, CALL)
        events = [entry["event"] for entry in logs]
        assert events == [
            "llm_request_started",
            "llm_request_retried",
            "llm_request_started",
            "llm_request_failed",
        ]
        assert logs[-1]["status"] == 401
        assert logs[-1]["model"] == "acme/primary"
        dump = repr(logs)
        assert TEST_API_KEY not in dump
        assert "hello there" not in dump

    @pytest.mark.parametrize(
        "options",
        [
            {"base_url": "ftp://example.com"},
            {"api_key": "key\nInjected: header"},
            {"title": "Café"},
        ],
    )
    def test_bad_configuration_is_rejected(self, options: dict[str, str]) -> None:
        """A non-http base URL or a header value that is not printable ASCII is a ConfigError."""
        settings = {"base_url": "https://openrouter.example/api/v1", **options}
        with pytest.raises(ConfigError) as caught:
            OpenRouterClient(**settings)
        assert "Injected" not in str(caught.value)


class TestBuildChatBody:
    def test_minimal_body(self) -> None:
        """Only model, messages and stream are sent when nothing else is set."""
        assert build_chat_body([ChatMessage.user("x")], CallSettings(model="m")) == {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "stream": True,
        }

    def test_empty_prompt_rejected(self) -> None:
        """A request with no messages is a programming error."""
        with pytest.raises(ValueError):
            build_chat_body([], CallSettings(model="m"))


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("5", 5.0), ("0.25", 0.25), ("-3", 0.0), (None, None), ("", None), ("soon", None)],
    )
    def test_seconds(self, value: str | None, expected: float | None) -> None:
        """Delay seconds parse to floats; negatives clamp to zero; junk gives None."""
        assert parse_retry_after(value) == expected

    def test_http_date(self) -> None:
        """An HTTP date is measured against the given wall-clock time."""
        now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
        assert parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now=now) == 30.0

    def test_past_http_date_is_zero(self) -> None:
        """A date already past means no wait."""
        now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
        assert parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now=now) == 0.0
