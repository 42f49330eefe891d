"""The fake Discord's gateway: the websocket protocol discord.py 2.7.1 speaks.

:class:`FakeGateway` serves ``/gw/`` on a :class:`~tests.fakes._server.FakeServer`
with JSON text frames ``{op, d, s, t}`` (the client asks for
``compress=zlib-stream`` but only decompresses binary frames, so text is fine):

* HELLO (op 10) with the configured ``heartbeat_interval``; every heartbeat
  (op 1) is answered with op 11 unless :attr:`FakeGateway.ack_heartbeats` is
  off (a zombied connection);
* IDENTIFY (op 2): a wrong token is closed with 4004 (fatal for discord.py); a
  privileged intent the "developer portal" has not enabled is closed with 4014
  (``PrivilegedIntentsRequired``); otherwise READY (``resume_gateway_url``
  pointing back here) and one GUILD_CREATE per guild;
* RESUME (op 6): replays the events after the client's ``seq`` and sends
  RESUMED; an unknown session, a wrong token or a client further behind than
  the replay buffer gets INVALID_SESSION (op 9, not resumable);
* REQUEST_GUILD_MEMBERS (op 8) is answered with GUILD_MEMBERS_CHUNK;
* VOICE_STATE (op 4) is echoed as the bot's VOICE_STATE_UPDATE, then handed to
  :attr:`FakeGateway.on_voice_state` (where a voice fake adds
  VOICE_SERVER_UPDATE); PRESENCE (op 3) is recorded only;
* anything before IDENTIFY closes 4003, a second IDENTIFY 4005, an unknown
  opcode 4001, a frame that is not JSON 4002.

``s`` increases per session. Events sent while the client is away are kept
(bounded) and replayed on RESUME, as Discord does. Events follow the session's
intents (:func:`~tests.fakes.discord_payloads.apply_intents`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes._server import FakeServer
from tests.fakes.discord_payloads import (
    apply_intents,
    guild_create_json,
    member_json,
    user_json,
    voice_state_json,
)
from tests.fakes.discord_world import (
    INTENT_GUILD_MEMBERS,
    INTENT_GUILDS,
    PRIVILEGED_INTENTS,
    World,
    application_flags,
)

__all__ = ["FakeGateway", "GatewayFrame"]

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE = 3
OP_VOICE_STATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005
CLOSE_DISALLOWED_INTENTS = 4014

_MAX_SESSIONS = 16
_MAX_MEMBER_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class GatewayFrame:
    """One frame the client sent to the fake gateway.

    Attributes:
        op: the opcode.
        d: the payload.
        connection: which websocket connection (1 for the first) it came on.
        t_ns: ``time.monotonic_ns()`` when it arrived.
    """

    op: int
    d: Any
    connection: int
    t_ns: int


@dataclass(slots=True)
class _Session:
    session_id: str
    intents: int
    ws: web.WebSocketResponse | None
    connection: int
    replay: collections.deque[tuple[int, str]]
    seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FakeGateway:
    """Discord's gateway protocol on one fake server's ``/gw/`` route.

    Args:
        server: the server that owns the websockets (closed first on stop).
        world: the shared world (READY, GUILD_CREATE, member chunks).
        bot_token: the token IDENTIFY and RESUME must carry.
        gateway_url: returns this gateway's URL (READY's ``resume_gateway_url``).
        changed: called after every frame and connection change.
        heartbeat_interval_ms: announced in HELLO.
        enabled_privileged_intents: privileged intents "enabled in the
            developer portal"; asking for another one closes 4014.
        max_recorded_frames: bound of :attr:`received`.
        max_replay_events: events kept per session for RESUME.
    """

    def __init__(
        self,
        server: FakeServer,
        world: World,
        *,
        bot_token: str,
        gateway_url: Callable[[], str],
        changed: Callable[[], None],
        heartbeat_interval_ms: int = 41_250,
        enabled_privileged_intents: int = PRIVILEGED_INTENTS,
        max_recorded_frames: int = 10_000,
        max_replay_events: int = 1_000,
    ) -> None:
        self.world = world
        self.bot_token = bot_token
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.enabled_privileged_intents = enabled_privileged_intents
        self.ack_heartbeats = True
        """Set ``False`` to stop answering heartbeats (a zombied connection)."""
        self.on_voice_state: Callable[[dict[str, Any]], Awaitable[None]] | None = None
        """Awaited with each op 4 payload after the VOICE_STATE_UPDATE echo.

        It runs inside the gateway's receive loop: keep it short.
        """
        self.ready = asyncio.Event()
        """Set once READY and every GUILD_CREATE of an IDENTIFY have been sent."""
        self.identified = asyncio.Event()
        """Set on the first accepted IDENTIFY."""
        self.resumed = asyncio.Event()
        """Set on the first accepted RESUME."""
        self.identify_count = 0
        self.resume_count = 0
        self.connection_count = 0
        self._server = server
        self._gateway_url = gateway_url
        self._changed = changed
        self._max_replay_events = max_replay_events
        self._frames: collections.deque[GatewayFrame] = collections.deque(
            maxlen=max_recorded_frames
        )
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._current: _Session | None = None

    def register(self, app: web.Application) -> None:
        """Mount ``/gw/`` on ``app``."""
        app.router.add_get("/gw/", self._gateway)

    # -- recorded traffic --------------------------------------------------

    @property
    def received(self) -> list[GatewayFrame]:
        """Every frame the client sent, oldest first."""
        return list(self._frames)

    def frames(self, op: int) -> list[Any]:
        """The ``d`` of every received frame with opcode ``op``."""
        return [f.d for f in self._frames if f.op == op]

    @property
    def session_id(self) -> str | None:
        """Id of the current session (READY's ``session_id``), ``None`` before IDENTIFY."""
        return self._current.session_id if self._current is not None else None

    @property
    def session_intents(self) -> int | None:
        """Intents of the current session, ``None`` before IDENTIFY."""
        return self._current.intents if self._current is not None else None

    # -- sending -----------------------------------------------------------

    async def send_event(self, t: str, d: dict[str, Any]) -> int | None:
        """Dispatch an event (op 0) to the current session.

        It is filtered and redacted by the session's intents (module
        docstring). With no client connected it is buffered for RESUME.

        Returns:
            the event's sequence number, or ``None`` if the intents dropped it.

        Raises:
            RuntimeError: no client has identified yet.
        """
        session = self._require_session()
        visible = apply_intents(self.world, session.intents, t, d)
        if visible is None:
            return None
        return await self._emit(session, t, visible)

    async def dispatch_if_connected(self, t: str, d: dict[str, Any]) -> None:
        """Like :meth:`send_event`, but nothing happens before the first IDENTIFY."""
        if self._current is not None:
            await self.send_event(t, d)

    async def reconnect(self) -> None:
        """Send op 7 RECONNECT; the client resumes on ``resume_gateway_url``."""
        session = self._require_session()
        if session.ws is not None:
            await _send(session.ws, {"op": OP_RECONNECT, "d": None, "s": None, "t": None})

    async def invalid_session(self, *, resumable: bool = False) -> None:
        """Send op 9 INVALID_SESSION; a non-resumable session is forgotten."""
        session = self._require_session()
        if not resumable:
            self._sessions.pop(session.session_id, None)
        if session.ws is not None:
            await _send(
                session.ws, {"op": OP_INVALID_SESSION, "d": resumable, "s": None, "t": None}
            )

    async def close(self, code: int = 4000, message: str = "") -> None:
        """Close the current gateway connection with ``code`` (4000: client resumes)."""
        session = self._require_session()
        if session.ws is not None:
            ws, session.ws = session.ws, None
            await self._server.close_websocket(ws, code=code, message=message.encode())

    # -- protocol ----------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = await self._server.prepare_websocket(request)
        self.connection_count += 1
        connection = self.connection_count
        session: _Session | None = None
        try:
            await _send(
                ws,
                {
                    "op": OP_HELLO,
                    "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                    "s": None,
                    "t": None,
                },
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                    op = int(frame["op"])
                except (ValueError, KeyError, TypeError):
                    await self._server.close_websocket(
                        ws, code=CLOSE_DECODE_ERROR, message=b"Decode error."
                    )
                    break
                data = frame.get("d")
                self._frames.append(GatewayFrame(op, data, connection, time.monotonic_ns()))
                self._changed()
                if op == OP_HEARTBEAT:
                    if self.ack_heartbeats:
                        await _send(ws, {"op": OP_HEARTBEAT_ACK, "d": None, "s": None, "t": None})
                elif op in (OP_IDENTIFY, OP_RESUME):
                    if session is not None:
                        await self._server.close_websocket(
                            ws, code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated."
                        )
                        break
                    if op == OP_IDENTIFY:
                        session = await self._identify(ws, connection, data)
                    else:
                        session = await self._resume(ws, connection, data)
                    if ws.closed:
                        break
                elif session is None:
                    await self._server.close_websocket(
                        ws, code=CLOSE_NOT_AUTHENTICATED, message=b"Not authenticated."
                    )
                    break
                elif op == OP_REQUEST_MEMBERS:
                    await self._request_members(session, data)
                elif op == OP_VOICE_STATE:
                    await self._voice_state_update(session, data)
                elif op != OP_PRESENCE:
                    await self._server.close_websocket(
                        ws, code=CLOSE_UNKNOWN_OPCODE, message=b"Unknown opcode."
                    )
                    break
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
            # The base only forgets sockets it closes itself; keep its set bounded.
            self._server._websockets.discard(ws)
            self._changed()
        return ws

    async def _identify(
        self, ws: web.WebSocketResponse, connection: int, data: Any
    ) -> _Session | None:
        data = data if isinstance(data, dict) else {}
        if data.get("token") != self.bot_token:
            await self._server.close_websocket(
                ws, code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed."
            )
            return None
        intents = int(data.get("intents") or 0)
        if intents & PRIVILEGED_INTENTS & ~self.enabled_privileged_intents:
            await self._server.close_websocket(
                ws, code=CLOSE_DISALLOWED_INTENTS, message=b"Disallowed intent(s)."
            )
            return None
        session = _Session(
            session_id=uuid.uuid4().hex,
            intents=intents,
            ws=ws,
            connection=connection,
            replay=collections.deque(maxlen=self._max_replay_events),
        )
        self._sessions[session.session_id] = session
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)
        self._current = session
        self.identify_count += 1
        self.identified.set()
        world = self.world
        ready = {
            "v": 10,
            "user": {**user_json(world.bot), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(g), "unavailable": True} for g in world.guilds],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self._gateway_url(),
            "shard": [0, 1],
            "application": {
                "id": str(world.application_id),
                "flags": application_flags(self.enabled_privileged_intents),
            },
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "user_settings": {},
        }
        await self._emit(session, "READY", ready)
        if intents & INTENT_GUILDS:
            include_all = bool(intents & INTENT_GUILD_MEMBERS)
            for guild in world.guilds.values():
                await self._emit(
                    session,
                    "GUILD_CREATE",
                    guild_create_json(world, guild, include_all_members=include_all),
                )
        self.ready.set()
        return session

    async def _resume(
        self, ws: web.WebSocketResponse, connection: int, data: Any
    ) -> _Session | None:
        data = data if isinstance(data, dict) else {}
        session = self._sessions.get(str(data.get("session_id")))
        seq = int(data.get("seq") or 0)
        too_far_behind = (
            session is not None and bool(session.replay) and seq < session.replay[0][0] - 1
        )
        if session is None or data.get("token") != self.bot_token or too_far_behind:
            await _send(ws, {"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return None
        async with session.lock:
            old, session.ws, session.connection = session.ws, ws, connection
            for event_seq, frame in list(session.replay):
                if event_seq > seq:
                    await ws.send_str(frame)
            session.seq += 1
            frame = json.dumps({"op": OP_DISPATCH, "d": {}, "s": session.seq, "t": "RESUMED"})
            session.replay.append((session.seq, frame))
            await ws.send_str(frame)
        self._current = session
        if old is not None and old is not ws:
            await self._server.close_websocket(
                old, code=4000, message=b"Session resumed elsewhere."
            )
        self.resume_count += 1
        self.resumed.set()
        return session

    async def _request_members(self, session: _Session, data: Any) -> None:
        data = data if isinstance(data, dict) else {}
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if guild is None:
            return
        members = list(guild.members.values())
        user_ids = {int(u) for u in data.get("user_ids") or []}
        not_found: list[str] = []
        if user_ids:
            not_found = [str(u) for u in user_ids if u not in guild.members]
            members = [m for m in members if m.user_id in user_ids]
        else:
            query = str(data.get("query") or "").lower()
            members = [
                m for m in members if self.world.users[m.user_id].username.lower().startswith(query)
            ]
        limit = int(data.get("limit") or 0)
        members = members[: limit or _MAX_MEMBER_CHUNK][:_MAX_MEMBER_CHUNK]
        chunk: dict[str, Any] = {
            "guild_id": str(guild.id),
            "members": [member_json(self.world, guild, m) for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
        }
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        await self._emit(session, "GUILD_MEMBERS_CHUNK", chunk)

    async def _voice_state_update(self, session: _Session, data: Any) -> None:
        data = data if isinstance(data, dict) else {}
        guild = self.world.guilds.get(int(data.get("guild_id") or 0))
        if guild is not None:
            bot_id = self.world.bot.id
            channel_id = int(data["channel_id"]) if data.get("channel_id") else None
            if channel_id is None:
                guild.voice_states.pop(bot_id, None)
            else:
                guild.voice_states[bot_id] = channel_id
            state = voice_state_json(
                self.world, guild, bot_id, channel_id, session_id=session.session_id
            )
            state.update(
                self_mute=bool(data.get("self_mute")), self_deaf=bool(data.get("self_deaf"))
            )
            await self._emit(session, "VOICE_STATE_UPDATE", state)
        if self.on_voice_state is not None:
            await self.on_voice_state(data)

    async def _emit(self, session: _Session, t: str, d: Mapping[str, Any]) -> int:
        """Number, buffer and (if connected) send one dispatch, in order."""
        async with session.lock:
            session.seq += 1
            frame = json.dumps({"op": OP_DISPATCH, "d": d, "s": session.seq, "t": t})
            session.replay.append((session.seq, frame))
            ws = session.ws
            if ws is not None and not ws.closed:
                try:
                    await ws.send_str(frame)
                except ConnectionError:
                    # Kept in the replay buffer: a RESUME delivers it.
                    session.ws = None
            return session.seq

    def _require_session(self) -> _Session:
        if self._current is None:
            raise RuntimeError("no gateway session yet; await fake.ready first")
        return self._current


async def _send(ws: web.WebSocketResponse, frame: Mapping[str, Any]) -> None:
    """Send a non-dispatch frame; a socket that is already gone is ignored."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError):
        await ws.send_str(json.dumps(frame))
