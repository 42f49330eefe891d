"""Shared base of every loopback fake: an aiohttp server on ``127.0.0.1:0``.

A fake speaks one service's wire protocol so the *real* client library can
talk to it. Subclasses add routes in ``__init__`` and use the helpers here
for streaming, websockets and failure injection::

    class FakeThing(FakeServer):
        def __init__(self) -> None:
            super().__init__()
            self.app.router.add_post("/v1/thing", self._thing)

        async def _thing(self, request: web.Request) -> web.StreamResponse:
            stream = await self.open_stream(request, content_type="text/event-stream")
            await stream.write(b"data: 1\\n\\n")
            await self.drop_connection(request)   # inject a mid-response drop
            return stream

    async with FakeThing() as fake:
        client = make_client(base_url=fake.base_url)
        ...
        assert fake.requests[0].json == {...}

What the base gives every fake:

* start/stop on an ephemeral loopback port (``.port``, ``.base_url``);
  ``stop()`` closes every open websocket and in-flight response first, so
  teardown never waits for aiohttp's 60-second graceful shutdown;
* a bounded request log of :class:`RecordedRequest` (body read and, when it
  parses, decoded as JSON);
* client-disconnect tracking: handler tasks are cancelled when the client
  goes away (aiohttp ``handler_cancellation``), and every such disconnect not
  caused by the fake itself counts in ``client_disconnects`` and sets
  ``disconnected``;
* failure injection: ``request_delay_s`` before every handler, ``delay()`` /
  ``stall()``, ``drop_connection()``, ``http_error()``, ``close_websocket()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, web
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FakeServer", "RecordedRequest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_DROPPED_KEY = web.RequestKey("fake_server_dropped", bool)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake received it.

    Attributes:
        method: HTTP method.
        path: URL path, without the query.
        query: query parameters (first value of each name).
        headers: request headers, case-insensitive.
        body: the raw body bytes.
        json: the body decoded as JSON, or ``None`` if it is not JSON.
        t_ns: ``time.monotonic_ns()`` when the request reached the fake.
        peer_port: the client's source port; equal ports across requests
            mean the client reused one connection.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any
    t_ns: int
    peer_port: int | None


class FakeServer:
    """An aiohttp application on loopback with recording and failure injection.

    Args:
        max_recorded_requests: size of the request log; older entries are
            dropped first.
        client_max_size_bytes: largest request body accepted (aiohttp answers
            413 above it).
        shutdown_timeout_s: backstop for aiohttp's own shutdown wait, after
            ``stop()`` has already closed every in-flight connection.
        websocket_close_timeout_s: how long ``stop()`` waits for a
            websocket's close handshake before dropping its transport.
    """

    def __init__(
        self,
        *,
        max_recorded_requests: int = 10_000,
        client_max_size_bytes: int = 16 << 20,
        shutdown_timeout_s: float = 2.0,
        websocket_close_timeout_s: float = 0.5,
    ) -> None:
        self.app = web.Application(
            middlewares=[self._middleware], client_max_size=client_max_size_bytes
        )
        self.request_delay_s = 0.0
        self.client_disconnects = 0
        self.disconnected = asyncio.Event()
        self._requests: collections.deque[RecordedRequest] = collections.deque(
            maxlen=max_recorded_requests
        )
        self._request_seen = asyncio.Condition()
        self._shutdown_timeout_s = shutdown_timeout_s
        self._websocket_close_timeout_s = websocket_close_timeout_s
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = False
        self._inflight: dict[int, web.Request] = {}
        self._websockets: set[web.WebSocketResponse] = set()

    # -- lifecycle ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port; only valid between ``start()`` and ``stop()``."""
        if self._port is None:
            raise RuntimeError("the fake server is not started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_base_url(self) -> str:
        """``ws://127.0.0.1:PORT``, for fakes with websocket routes."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Bind ``127.0.0.1`` on an ephemeral port and start serving.

        Cancellation: safe; a half-started server is cleaned up.
        """
        if self._runner is not None:
            raise RuntimeError("the fake server is already started")
        self._stopping = False
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close open websockets and responses, then stop serving. Idempotent.

        Cancellation: not safe to interrupt half-way (sockets may stay open);
        callers run it in ``finally`` / ``__aexit__``.
        """
        runner = self._runner
        if runner is None:
            return
        self._stopping = True
        for ws in list(self._websockets):
            await self.close_websocket(ws, code=WSCloseCode.GOING_AWAY, message=b"fake stopping")
        # Aborting the transports cancels their handlers (handler_cancellation),
        # so the runner's graceful shutdown has nothing left to wait for.
        for request in list(self._inflight.values()):
            transport = request.transport
            if transport is not None:
                transport.abort()
        await runner.cleanup()
        self._runner = None
        self._port = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- recording ---------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every recorded request, oldest first."""
        return list(self._requests)

    def requests_to(self, path: str, *, method: str | None = None) -> list[RecordedRequest]:
        """Recorded requests for one path (and method, when given)."""
        return [
            r
            for r in self._requests
            if r.path == path and (method is None or r.method == method.upper())
        ]

    async def wait_for_requests(self, count: int, *, timeout_s: float = 5.0) -> None:
        """Wait until at least ``count`` requests have been recorded.

        Raises:
            TimeoutError: fewer arrived within ``timeout_s``.

        Cancellation: safe; nothing is left behind.
        """
        async with asyncio.timeout(timeout_s), self._request_seen:
            await self._request_seen.wait_for(lambda: len(self._requests) >= count)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        await self._record(request)
        self._inflight[id(request)] = request
        try:
            if self.request_delay_s > 0:
                await asyncio.sleep(self.request_delay_s)
            return await handler(request)
        except asyncio.CancelledError:
            # With handler_cancellation, losing the connection cancels us.
            self._note_lost_connection(request)
            raise
        except ConnectionResetError:
            # A write found the connection gone before the cancel arrived.
            # Any response will do: aiohttp fails to send it and moves on
            # quietly, where a raised error would be logged as a 500.
            self._note_lost_connection(request)
            return web.Response(status=499)
        finally:
            del self._inflight[id(request)]

    async def _record(self, request: web.Request) -> None:
        body = await request.read()
        decoded: Any = None
        if body:
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                decoded = json.loads(body)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self._requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query={k: request.query[k] for k in request.query},
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                json=decoded,
                t_ns=time.monotonic_ns(),
                peer_port=peer[1] if peer else None,
            )
        )
        async with self._request_seen:
            self._request_seen.notify_all()

    def _note_lost_connection(self, request: web.Request) -> None:
        if self._stopping or request.get(_DROPPED_KEY):
            return
        self.client_disconnects += 1
        self.disconnected.set()

    # -- helpers for handlers ---------------------------------------------

    async def open_stream(
        self,
        request: web.Request,
        *,
        status: int = 200,
        content_type: str = "text/event-stream",
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Start a chunked streaming response and send its headers.

        ``stop()`` closes it with the connection if it is still open.

        Cancellation: safe; a half-sent header block just drops the request.
        """
        response = web.StreamResponse(status=status, headers=dict(headers or {}))
        response.content_type = content_type
        await response.prepare(request)
        return response

    async def prepare_websocket(self, request: web.Request, **kwargs: Any) -> web.WebSocketResponse:
        """Accept a websocket upgrade; ``stop()`` closes the socket first.

        Args:
            request: the upgrade request.
            **kwargs: passed to :class:`aiohttp.web.WebSocketResponse`.

        Cancellation: safe; an unprepared socket is never registered.
        """
        ws = web.WebSocketResponse(**kwargs)
        await ws.prepare(request)
        self._websockets.add(ws)
        return ws

    async def close_websocket(
        self, ws: web.WebSocketResponse, *, code: int, message: bytes = b""
    ) -> None:
        """Close a websocket with a chosen close code (bounded wait).

        Cancellation: safe; the socket is forgotten either way.
        """
        self._websockets.discard(ws)
        try:
            async with asyncio.timeout(self._websocket_close_timeout_s):
                await ws.close(code=code, message=message)
        except (TimeoutError, ConnectionError):
            pass

    async def delay(self, seconds: float) -> None:
        """Wait before answering (injected latency).

        Cancellation: cancelled when the client disconnects or the fake stops.
        """
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def stall(self, seconds: float) -> None:
        """Send nothing for ``seconds`` in the middle of a response.

        Cancellation: cancelled when the client disconnects or the fake stops.
        """
        await self.delay(seconds)

    async def drop_connection(self, request: web.Request, *, reset: bool = False) -> None:
        """Drop the TCP connection of ``request`` without finishing the response.

        Data already written is flushed first (``reset=False``, the peer sees
        an early EOF) or discarded with a TCP reset (``reset=True``). Not
        counted as a client disconnect. The handler should return right
        after; it may instead be cancelled, which aiohttp handles quietly.

        Cancellation: the drop has happened before the only await, so
        cancelling it changes nothing.
        """
        request[_DROPPED_KEY] = True
        transport = request.transport
        if transport is None:
            return
        if reset:
            transport.abort()
        else:
            transport.close()
        # Let connection_lost run so the handler is cancelled here, not later.
        await asyncio.sleep(0)

    def http_error(
        self,
        status: int,
        *,
        body: Any = None,
        text: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        """Build an error response: JSON ``body`` if given, else ``text``."""
        if body is not None:
            return web.json_response(body, status=status, headers=dict(headers or {}))
        return web.Response(status=status, text=text or "", headers=dict(headers or {}))
