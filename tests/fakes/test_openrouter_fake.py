"""The shared fake-server base and the fake OpenRouter, checked on the wire with aiohttp."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes._server import FakeServer
from tests.fakes.openrouter import CHAT_PATH, FakeOpenRouter, split_tokens

GUARD_S = 5.0


class _EchoFake(FakeServer):
    """A minimal subclass with the kinds of routes future fakes add."""

    def __init__(self) -> None:
        super().__init__()
        self.stall_started = asyncio.Event()
        self.app.router.add_post("/echo", self._echo)
        self.app.router.add_get("/ws", self._ws)
        self.app.router.add_get("/stall", self._stall)
        self.app.router.add_get("/drop", self._drop)

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"got": await request.json()})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = await self.prepare_websocket(request)
        async for _ in ws:
            pass
        return ws

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        stream = await self.open_stream(request)
        await stream.write(b"data: 1\n\n")
        self.stall_started.set()
        await self.stall(60)
        return stream

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        stream = await self.open_stream(request)
        await stream.write(b"data: 1\n\n")
        await self.drop_connection(request)
        return stream


@pytest.fixture(name="echo_fake")
async def fixture_echo_fake() -> AsyncIterator[_EchoFake]:
    async with _EchoFake() as fake:
        yield fake


@pytest.fixture(name="fake")
async def fixture_fake() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter() as fake:
        yield fake


@pytest.fixture(name="session")
async def fixture_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_chat(
    session: aiohttp.ClientSession, fake: FakeOpenRouter, body: dict[str, Any], **kwargs: Any
) -> aiohttp.ClientResponse:
    return await session.post(f"{fake.api_base}/chat/completions", json=body, **kwargs)


def sse_payloads(raw: bytes) -> list[str]:
    return [line[len("data: ") :] for line in raw.decode().split("\n") if line.startswith("data: ")]


class TestFakeServer:
    async def test_records_requests(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """Method, path, query, headers, JSON body and client port are recorded."""
        async with session.post(
            f"{echo_fake.base_url}/echo?x=1", json={"a": 2}, headers={"X-Probe": "yes"}
        ) as response:
            assert await response.json() == {"got": {"a": 2}}
        [recorded] = echo_fake.requests
        assert (recorded.method, recorded.path, dict(recorded.query)) == (
            "POST",
            "/echo",
            {"x": "1"},
        )
        assert recorded.headers["x-probe"] == "yes"
        assert recorded.json == {"a": 2}
        assert recorded.body == b'{"a": 2}'
        assert recorded.peer_port is not None

    async def test_port_unknown_before_start(self) -> None:
        """Asking for the URL of a fake that is not running is an error."""
        with pytest.raises(RuntimeError):
            _ = _EchoFake().base_url

    async def test_stop_closes_open_websockets(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """stop() closes a connected websocket with 1001 instead of waiting for the client."""
        async with session.ws_connect(f"{echo_fake.ws_base_url}/ws") as ws:
            async with asyncio.timeout(GUARD_S):
                await echo_fake.stop()
                message = await ws.receive()
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY

    async def test_stop_ends_stalled_responses(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """stop() cuts a stalled streaming response instead of waiting for its handler."""
        async with session.get(f"{echo_fake.base_url}/stall") as response:
            await asyncio.wait_for(echo_fake.stall_started.wait(), GUARD_S)
            async with asyncio.timeout(GUARD_S):
                await echo_fake.stop()
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()
        assert echo_fake.client_disconnects == 0

    async def test_client_disconnect_is_counted(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """A client that goes away mid-response is counted and sets the disconnected event."""
        response = await session.get(f"{echo_fake.base_url}/stall")
        await asyncio.wait_for(echo_fake.stall_started.wait(), GUARD_S)
        response.close()
        await asyncio.wait_for(echo_fake.disconnected.wait(), GUARD_S)
        assert echo_fake.client_disconnects == 1

    async def test_dropping_a_connection_is_not_a_client_disconnect(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """A drop injected by the fake cuts the body short and is not counted as the client's."""
        async with session.get(f"{echo_fake.base_url}/drop") as response:
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        assert echo_fake.client_disconnects == 0

    async def test_request_delay_is_injected(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """request_delay_s holds every answer back by at least that long."""
        echo_fake.request_delay_s = 0.05
        started = time.monotonic_ns()
        async with session.post(f"{echo_fake.base_url}/echo", json={}) as response:
            await response.read()
        assert time.monotonic_ns() - started >= 50_000_000

    async def test_wait_for_requests(
        self, echo_fake: _EchoFake, session: aiohttp.ClientSession
    ) -> None:
        """wait_for_requests returns once enough requests arrived and times out otherwise."""
        async with session.post(f"{echo_fake.base_url}/echo", json={}) as response:
            await response.read()
        await echo_fake.wait_for_requests(1, timeout_s=GUARD_S)
        with pytest.raises(TimeoutError):
            await echo_fake.wait_for_requests(2, timeout_s=0.01)


class TestFakeOpenRouter:
    async def test_stream_grammar(
        self, fake: FakeOpenRouter, session: aiohttp.ClientSession
    ) -> None:
        """A streamed reply has comments, a role delta first, text, finish, usage, then [DONE]."""
        fake.reply_text("Hi there")
        body = {"model": "acme/m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        async with await post_chat(session, fake, body) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["X-Generation-Id"] == "gen-fake-1"
            raw = await response.read()
        assert b": OPENROUTER PROCESSING\n\n" in raw
        payloads = sse_payloads(raw)
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        texts = [c["choices"][0]["delta"].get("content") for c in chunks[1:3]]
        assert texts == ["Hi ", "there"]
        assert chunks[3]["choices"][0]["finish_reason"] == "stop"
        usage_chunk = chunks[4]
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["total_tokens"] == 3
        assert usage_chunk["model"] == "acme/m"

    async def test_tool_calls_are_fragmented(
        self, fake: FakeOpenRouter, session: aiohttp.ClientSession
    ) -> None:
        """Each call starts with id and name, and arguments follow in several fragments."""
        fake.reply_tool_calls([("get_time", '{"tz": "UTC"}')], fragment_chars=4)
        body = {"model": "m", "stream": True, "messages": []}
        async with await post_chat(session, fake, body) as response:
            payloads = sse_payloads(await response.read())
        fragments = [
            fragment
            for chunk in (json.loads(p) for p in payloads[:-1])
            for choice in chunk["choices"]
            for fragment in choice["delta"].get("tool_calls", [])
        ]
        assert fragments[0]["function"] == {"name": "get_time", "arguments": ""}
        assert fragments[0]["id"]
        assert len(fragments) == 5
        assert "".join(f["function"]["arguments"] for f in fragments) == '{"tz": "UTC"}'

    async def test_json_mode(self, fake: FakeOpenRouter, session: aiohttp.ClientSession) -> None:
        """stream false answers one chat.completion with the echo reply and usage."""
        body = {"models": ["acme/a", "acme/b"], "messages": [{"role": "user", "content": "ping"}]}
        async with await post_chat(session, fake, body) as response:
            document = await response.json()
        assert document["object"] == "chat.completion"
        assert document["model"] == "acme/a"
        assert document["choices"][0]["message"]["content"] == "echo: ping"
        assert document["usage"]["prompt_tokens"] == 1

    async def test_http_error_shape(
        self, fake: FakeOpenRouter, session: aiohttp.ClientSession
    ) -> None:
        """A scripted HTTP error has OpenRouter's error body and a Retry-After header."""
        fake.reply_http_error(429, retry_after_s=3, message="slow down")
        async with await post_chat(session, fake, {"model": "m", "messages": []}) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "3"
            assert await response.json() == {
                "error": {"code": 429, "message": "slow down", "metadata": {}}
            }

    async def test_expected_api_key_is_enforced(self, session: aiohttp.ClientSession) -> None:
        """With expected_api_key set, a wrong bearer token gets 401."""
        async with FakeOpenRouter(expected_api_key="right") as fake:
            body = {"model": "m", "messages": []}
            headers = {"Authorization": "Bearer wrong"}
            async with await post_chat(session, fake, body, headers=headers) as response:
                assert response.status == 401

    async def test_malformed_request_gets_400(
        self, fake: FakeOpenRouter, session: aiohttp.ClientSession
    ) -> None:
        """A body without messages is rejected like the real service would."""
        async with session.post(f"{fake.base_url}{CHAT_PATH}", data=b"nope") as response:
            assert response.status == 400

    @given(st.text(max_size=60))
    def test_split_tokens_round_trips(self, text: str) -> None:
        """Splitting text into stream pieces loses nothing."""
        assert "".join(split_tokens(text)) == text
