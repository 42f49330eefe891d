"""Loopback fake of Twitch (identity service, Helix, EventSub websocket) for the real twitchio.

One aiohttp server on ``127.0.0.1:0`` serves:

- the identity service under ``/id/``: ``POST oauth2/token`` (client credentials, refresh token,
  device code grants), ``GET oauth2/validate`` (scopes and expiry), ``POST oauth2/device``,
  ``POST oauth2/revoke``;
- Helix under ``/helix/``: ``GET users``, ``POST/GET/DELETE eventsub/subscriptions`` (202, 409 on
  duplicates, 403 when the token lacks the scope or is not the condition's user),
  ``POST chat/messages`` (``is_sent``/``drop_reason``, 20 messages per 30 s per sender, 500
  characters);
- the EventSub websocket at ``/ws``: ``session_welcome``, ``session_keepalive``, ``notification``,
  ``session_reconnect`` to ``/ws?reconnect=<session>`` (same session id, as Twitch does),
  ``revocation`` and Twitch's close codes (4001 on inbound traffic, 4003 for an unused
  connection, 4004 when the old connection outlives a reconnect's grace time).

Point twitchio at it with ``Route.BASE = fake.helix_base``, ``Route.ID_BASE = fake.id_base`` and
``websockets.WSS = fake.eventsub_url`` (our settings do exactly that)::

    async with FakeTwitch() as fake:
        bot_token, bot_refresh = fake.issue_token(BOT, BOT_SCOPES)
        ...
        await fake.chat("hi @familiarbot", user=ALICE, mention_bot=True)
        await fake.wait_for(lambda: fake.chat_sent)

Verbs (``async``, each returns the frames' message ids): :meth:`~FakeTwitch.chat`,
:meth:`~FakeTwitch.chat_burst`, :meth:`~FakeTwitch.follow`, :meth:`~FakeTwitch.sub`,
:meth:`~FakeTwitch.resub`, :meth:`~FakeTwitch.gift`, :meth:`~FakeTwitch.cheer`,
:meth:`~FakeTwitch.raid`, :meth:`~FakeTwitch.redeem`, :meth:`~FakeTwitch.ad_break`,
:meth:`~FakeTwitch.notify`; connection faults :meth:`~FakeTwitch.reconnect`,
:meth:`~FakeTwitch.revoke`, :meth:`~FakeTwitch.close_sessions`,
:meth:`~FakeTwitch.stop_keepalives`; scripted HTTP failures :meth:`~FakeTwitch.fail_next`,
:meth:`~FakeTwitch.drop_next_chat`. Tokens: :meth:`~FakeTwitch.issue_token`,
:meth:`~FakeTwitch.expire`, device grants :meth:`~FakeTwitch.approve_device`.

Like Twitch, the fake echoes the bot's own chat messages back as ``channel.chat.message``
notifications, and delivers to the old connection until the new one has been welcomed. The
websocket side (sessions, notifications, reconnects, close codes) lives in
:mod:`tests.fakes.twitch_eventsub`; payloads in :mod:`tests.fakes.twitch_payloads`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from tests.fakes._server import FakeServer
from tests.fakes.twitch_eventsub import EventSubSide, FakeSession, FakeSubscription
from tests.fakes.twitch_payloads import (
    ALICE,
    BOB,
    BOT,
    RAIDER,
    STREAMER,
    TwitchUser,
    user_json,
)

__all__ = [
    "ALICE",
    "BOB",
    "BOT",
    "RAIDER",
    "STREAMER",
    "FakeSession",
    "FakeSubscription",
    "FakeToken",
    "FakeTwitch",
    "SentChat",
    "TwitchUser",
]

T = TypeVar("T")

# What each subscription type needs, as Twitch documents it: the scopes (any one of them) and
# which condition field must be the token's user (None: no authorization needed).
SUBSCRIPTION_RULES: dict[str, tuple[str, frozenset[str], str | None]] = {
    "channel.chat.message": ("1", frozenset({"user:read:chat"}), "user_id"),
    "channel.follow": ("2", frozenset({"moderator:read:followers"}), "moderator_user_id"),
    "channel.subscribe": ("1", frozenset({"channel:read:subscriptions"}), "broadcaster_user_id"),
    "channel.subscription.gift": (
        "1",
        frozenset({"channel:read:subscriptions"}),
        "broadcaster_user_id",
    ),
    "channel.subscription.message": (
        "1",
        frozenset({"channel:read:subscriptions"}),
        "broadcaster_user_id",
    ),
    "channel.cheer": ("1", frozenset({"bits:read"}), "broadcaster_user_id"),
    "channel.raid": ("1", frozenset(), None),
    "channel.channel_points_custom_reward_redemption.add": (
        "1",
        frozenset({"channel:read:redemptions", "channel:manage:redemptions"}),
        "broadcaster_user_id",
    ),
    "channel.ad_break.begin": ("1", frozenset({"channel:read:ads"}), "broadcaster_user_id"),
}
_INVALID_TOKEN = {"error": "Unauthorized", "status": 401, "message": "Invalid OAuth token"}
_MAX_CHAT_CHARS = 500


@dataclass
class FakeToken:
    """One access token the fake issued (``user=None`` for an app token)."""

    access: str
    refresh: str | None
    user: TwitchUser | None
    scopes: tuple[str, ...]
    expires_in: int
    valid: bool = True


@dataclass(frozen=True, slots=True)
class SentChat:
    """A chat message the bot posted through ``POST /helix/chat/messages``."""

    text: str
    sender_id: str
    broadcaster_id: str
    reply_parent_message_id: str | None
    message_id: str
    t_ns: int


@dataclass
class _DeviceGrant:
    device_code: str
    user_code: str
    scopes: tuple[str, ...]
    approved: TwitchUser | None = None
    denied: bool = False
    polls: int = 0


@dataclass
class _Failure:
    path: str
    status: int
    body: Any
    headers: dict[str, str]
    times: int


class FakeTwitch(EventSubSide, FakeServer):
    """Twitch's identity service, Helix and EventSub websocket on loopback.

    Args:
        client_id: the application's client id (``Client-Id`` must match).
        client_secret: its secret (client-credential and refresh grants must carry it).
        broadcaster: the channel's owner.
        users: every account ``GET /helix/users`` knows (the broadcaster and the bot included).
        token_expires_in_s: ``expires_in`` of issued user tokens; twitchio refreshes a token
            whose ``expires_in`` is 3600 or less as soon as it is added.
        keepalive_interval_s: how often an idle session gets ``session_keepalive``.
        unused_timeout_s: close a session with 4003 when it has no subscription this long after
            its welcome (``None``: never; Twitch uses its keepalive timeout).
        reconnect_grace_s: close the old connection with 4004 this long after the new one was
            welcomed, if the client has not closed it itself.
        chat_limit: chat messages per ``chat_window_s`` per sender before 429.
        device_interval_s: the ``interval`` the device endpoint tells clients to poll at.
    """

    def __init__(
        self,
        *,
        client_id: str = "fakeclientid0123456789",
        client_secret: str = "fakeclientsecret0123456789",  # noqa: S107 - a fake's fixed secret
        broadcaster: TwitchUser = STREAMER,
        users: Sequence[TwitchUser] = (STREAMER, BOT, ALICE, BOB, RAIDER),
        token_expires_in_s: int = 14_400,
        keepalive_interval_s: float = 5.0,
        unused_timeout_s: float | None = None,
        reconnect_grace_s: float = 2.0,
        chat_limit: int = 20,
        chat_window_s: float = 30.0,
        device_interval_s: int = 0,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.broadcaster = broadcaster
        self.users = {user.user_id: user for user in users}
        self.token_expires_in_s = token_expires_in_s
        self.keepalive_interval_s = keepalive_interval_s
        self.unused_timeout_s = unused_timeout_s
        self.reconnect_grace_s = reconnect_grace_s
        self.chat_limit = chat_limit
        self.chat_window_s = chat_window_s
        self.device_interval_s = device_interval_s
        self.echo_own_messages = True

        self.tokens: dict[str, FakeToken] = {}
        self._refresh_index: dict[str, str] = {}
        self.refreshes = 0
        self.subscriptions: dict[str, FakeSubscription] = {}
        self.sessions: dict[str, FakeSession] = {}
        self.chat_sent: list[SentChat] = []
        self.chat_rejected: list[dict[str, Any]] = []
        self.chat_rate_limited = 0
        self._chat_times: dict[str, collections.deque[int]] = {}
        self._drops: collections.deque[dict[str, str]] = collections.deque()
        self._failures: list[_Failure] = []
        self._devices: dict[str, _DeviceGrant] = {}
        self.device_scope_requests: list[tuple[str, ...]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tick = asyncio.Event()

        router = self.app.router
        router.add_post("/id/oauth2/token", self._token)
        router.add_get("/id/oauth2/validate", self._validate)
        router.add_post("/id/oauth2/device", self._device)
        router.add_post("/id/oauth2/revoke", self._revoke_token)
        router.add_get("/helix/users", self._users)
        router.add_post("/helix/eventsub/subscriptions", self._create_subscription)
        router.add_get("/helix/eventsub/subscriptions", self._list_subscriptions)
        router.add_delete("/helix/eventsub/subscriptions", self._delete_subscription)
        router.add_post("/helix/chat/messages", self._chat_message)
        router.add_get("/ws", self._websocket)

    # --- lifecycle and addresses ---------------------------------------------------------

    @property
    def helix_base(self) -> str:
        """``http://127.0.0.1:P/helix/`` (trailing slash: twitchio appends paths)."""
        return f"{self.base_url}/helix/"

    @property
    def id_base(self) -> str:
        """``http://127.0.0.1:P/id/``."""
        return f"{self.base_url}/id/"

    @property
    def eventsub_url(self) -> str:
        """``ws://127.0.0.1:P/ws``."""
        return f"{self.ws_base_url}/ws"

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await super().stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T], *, timeout_s: float = 5.0, poll_s: float = 0.01
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked after every request and websocket frame, and every ``poll_s``.

        Raises:
            TimeoutError: still falsy after ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if result:
                    return result
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await self._tick.wait()

    # --- tokens --------------------------------------------------------------------------

    def issue_token(
        self,
        user: TwitchUser,
        scopes: Iterable[str],
        *,
        expires_in_s: int | None = None,
        access: str | None = None,
        refresh: str | None = None,
    ) -> tuple[str, str]:
        """Mint a user token pair as if ``user`` had authorised the app; returns (access, refresh).

        ``access``/``refresh`` choose the values (canaries); random ones otherwise.
        """
        access = access or "acc" + secrets.token_hex(12)
        refresh = refresh or "ref" + secrets.token_hex(16)
        self.tokens[access] = FakeToken(
            access,
            refresh,
            user,
            tuple(sorted(set(scopes))),
            expires_in_s if expires_in_s is not None else self.token_expires_in_s,
        )
        self._refresh_index[refresh] = access
        return access, refresh

    def expire(self, access: str) -> None:
        """Make ``access`` invalid (validate and Helix answer 401); its refresh token still works."""
        self.tokens[access].valid = False

    def revoke_refresh(self, refresh: str) -> None:
        """Make ``refresh`` unusable (a refresh grant answers 400)."""
        self._refresh_index.pop(refresh, None)

    def current_token(self, user: TwitchUser) -> FakeToken | None:
        """The newest valid user token of ``user``."""
        found = [t for t in self.tokens.values() if t.user == user and t.valid]
        return found[-1] if found else None

    def _bearer(self, request: web.Request) -> FakeToken | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or not value:
            return None
        token = self.tokens.get(value)
        return token if token is not None and token.valid else None

    # --- scripted failures -----------------------------------------------------------------

    def fail_next(
        self,
        path: str,
        status: int,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests to ``path`` (e.g. ``"/helix/chat/messages"``) with ``status``."""
        if body is None:
            body = {"error": "Scripted", "status": status, "message": f"scripted {status}"}
        self._failures.append(_Failure(path, status, body, dict(headers or {}), times))

    def drop_next_chat(self, code: str = "msg_rejected", message: str = "rejected") -> None:
        """Answer the next chat message with ``is_sent: false`` and this ``drop_reason``."""
        self._drops.append({"code": code, "message": message})

    def _scripted(self, request: web.Request) -> web.Response | None:
        for failure in self._failures:
            if failure.path == request.path and failure.times > 0:
                failure.times -= 1
                if failure.times == 0:
                    self._failures.remove(failure)
                return web.json_response(
                    failure.body, status=failure.status, headers=failure.headers
                )
        return None

    # --- identity service ----------------------------------------------------------------

    async def _params(self, request: web.Request) -> dict[str, str]:
        params = {key: request.query[key] for key in request.query}
        if request.content_type == "application/x-www-form-urlencoded":
            form = await request.post()
            params.update({key: str(value) for key, value in form.items()})
        return params

    async def _token(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        params = await self._params(request)
        if params.get("client_id") != self.client_id:
            return web.json_response({"status": 400, "message": "invalid client"}, status=400)
        grant = params.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(params)
        if params.get("client_secret") != self.client_secret:
            return web.json_response(
                {"status": 403, "message": "invalid client secret"}, status=403
            )
        if grant == "client_credentials":
            access = "app" + secrets.token_hex(12)
            self.tokens[access] = FakeToken(access, None, None, (), 5_000_000)
            return web.json_response(
                {"access_token": access, "expires_in": 5_000_000, "token_type": "bearer"}
            )
        if grant == "refresh_token":
            old = self._refresh_index.pop(params.get("refresh_token", ""), None)
            if old is None:
                return web.json_response(
                    {"status": 400, "message": "Invalid refresh token"}, status=400
                )
            previous = self.tokens[old]
            previous.valid = False
            assert previous.user is not None
            access, refresh = self.issue_token(previous.user, previous.scopes)
            self.refreshes += 1
            return web.json_response(
                {
                    "access_token": access,
                    "refresh_token": refresh,
                    "expires_in": self.tokens[access].expires_in,
                    "scope": list(previous.scopes),
                    "token_type": "bearer",
                }
            )
        return web.json_response({"status": 400, "message": "unsupported grant type"}, status=400)

    async def _validate(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        # Twitch documents "OAuth <token>" and accepts "Bearer <token>" too (twitchio sends Bearer).
        header = request.headers.get("Authorization", "")
        if not header.startswith(("OAuth ", "Bearer ")):
            return web.json_response(
                {"status": 401, "message": "missing authorization token"}, status=401
            )
        token = self._bearer(request)
        if token is None:
            return web.json_response({"status": 401, "message": "invalid access token"}, status=401)
        body: dict[str, Any] = {
            "client_id": self.client_id,
            "scopes": list(token.scopes) if token.user is not None else None,
            "expires_in": token.expires_in,
        }
        if token.user is not None:
            body["login"] = token.user.login
            body["user_id"] = token.user.user_id
        return web.json_response(body)

    async def _device(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        params = await self._params(request)
        if params.get("client_id") != self.client_id:
            return web.json_response({"status": 400, "message": "invalid client"}, status=400)
        scopes = tuple(params.get("scopes", "").replace("+", " ").split())
        self.device_scope_requests.append(scopes)
        grant = _DeviceGrant(
            device_code="dev" + secrets.token_hex(10),
            user_code=secrets.token_hex(4).upper(),
            scopes=scopes,
        )
        self._devices[grant.device_code] = grant
        return web.json_response(
            {
                "device_code": grant.device_code,
                "expires_in": 1800,
                "interval": self.device_interval_s,
                "user_code": grant.user_code,
                "verification_uri": f"{self.base_url}/activate?device-code={grant.user_code}",
            }
        )

    def device_grants(self) -> list[tuple[str, tuple[str, ...]]]:
        """``(user_code, scopes)`` of every device grant still pending, oldest first."""
        return [(grant.user_code, grant.scopes) for grant in self._devices.values()]

    def approve_device(self, user_code: str, user: TwitchUser) -> None:
        """``user`` enters ``user_code`` and authorises the app."""
        for grant in self._devices.values():
            if grant.user_code == user_code:
                grant.approved = user
                return
        raise KeyError(user_code)

    def deny_device(self, user_code: str) -> None:
        """The person declines the authorisation."""
        for grant in self._devices.values():
            if grant.user_code == user_code:
                grant.denied = True
                return
        raise KeyError(user_code)

    def _device_token(self, params: Mapping[str, str]) -> web.Response:
        grant = self._devices.get(params.get("device_code", ""))
        if grant is None:
            return web.json_response({"status": 400, "message": "invalid device code"}, status=400)
        grant.polls += 1
        if grant.denied:
            return web.json_response({"status": 400, "message": "access_denied"}, status=400)
        if grant.approved is None:
            return web.json_response(
                {"status": 400, "message": "authorization_pending"}, status=400
            )
        del self._devices[grant.device_code]
        access, refresh = self.issue_token(grant.approved, grant.scopes)
        return web.json_response(
            {
                "access_token": access,
                "refresh_token": refresh,
                "expires_in": self.tokens[access].expires_in,
                "scope": list(grant.scopes),
                "token_type": "bearer",
            }
        )

    async def _revoke_token(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        token = self.tokens.get(params.get("token", ""))
        if token is not None:
            token.valid = False
        return web.Response(status=200)

    # --- helix ---------------------------------------------------------------------------

    def _helix_auth(self, request: web.Request) -> FakeToken | web.Response:
        if request.headers.get("Client-Id") != self.client_id:
            return web.json_response(
                {
                    "error": "Unauthorized",
                    "status": 401,
                    "message": "Client ID and OAuth token do not match",
                },
                status=401,
            )
        token = self._bearer(request)
        if token is None:
            return web.json_response(_INVALID_TOKEN, status=401)
        return token

    async def _users(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        token = self._helix_auth(request)
        if isinstance(token, web.Response):
            return token
        ids = request.query.getall("id", [])
        logins = [login.lower() for login in request.query.getall("login", [])]
        if not ids and not logins and token.user is not None:
            ids = [token.user.user_id]
        found = [
            user_json(user)
            for user in self.users.values()
            if user.user_id in ids or user.login in logins
        ]
        return web.json_response({"data": found})

    def _subscription_error(
        self, token: FakeToken, sub_type: str, version: str, condition: Mapping[str, Any]
    ) -> web.Response | None:
        rule = SUBSCRIPTION_RULES.get(sub_type)
        if rule is None or rule[0] != version:
            return web.json_response(
                {"error": "Bad Request", "status": 400, "message": "unknown type or version"},
                status=400,
            )
        _version, scopes, user_field = rule
        if token.user is None:
            return web.json_response(
                {
                    "error": "Bad Request",
                    "status": 400,
                    "message": "websocket transport requires a user access token",
                },
                status=400,
            )
        if user_field is not None and str(condition.get(user_field, "")) != token.user.user_id:
            return web.json_response(
                {
                    "error": "Forbidden",
                    "status": 403,
                    "message": "subscription missing proper authorization",
                },
                status=403,
            )
        if scopes and not scopes.intersection(token.scopes):
            return web.json_response(
                {
                    "error": "Forbidden",
                    "status": 403,
                    "message": "subscription missing proper authorization",
                },
                status=403,
            )
        return None

    async def _create_subscription(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        token = self._helix_auth(request)
        if isinstance(token, web.Response):
            return token
        body = await request.json()
        sub_type, version = body.get("type", ""), str(body.get("version", ""))
        condition = {k: v for k, v in dict(body.get("condition") or {}).items() if v}
        transport = dict(body.get("transport") or {})
        if transport.get("method") != "websocket":
            return web.json_response({"status": 400, "message": "only websocket here"}, status=400)
        if (error := self._subscription_error(token, sub_type, version, condition)) is not None:
            return error
        session = self.sessions.get(str(transport.get("session_id", "")))
        if session is None or session.closed:
            return web.json_response(
                {
                    "error": "Bad Request",
                    "status": 400,
                    "message": "websocket transport session does not exist or has already disconnected",
                },
                status=400,
            )
        for sub in self.subscriptions.values():
            if (
                sub.status == "enabled"
                and sub.session_id == session.session_id
                and (sub.sub_type, sub.version, sub.condition) == (sub_type, version, condition)
            ):
                return web.json_response(
                    {
                        "error": "Conflict",
                        "status": 409,
                        "message": f"subscription already exists id={sub.sub_id}",
                    },
                    status=409,
                )
        assert token.user is not None
        sub = FakeSubscription(
            str(uuid.uuid4()), sub_type, version, condition, session.session_id, token.user.user_id
        )
        self.subscriptions[sub.sub_id] = sub
        return web.json_response(
            {
                "data": [sub.as_json()],
                "total": len(self.subscriptions),
                "total_cost": 0,
                "max_total_cost": 10,
            },
            status=202,
        )

    async def _list_subscriptions(self, request: web.Request) -> web.Response:
        token = self._helix_auth(request)
        if isinstance(token, web.Response):
            return token
        data = [sub.as_json() for sub in self.subscriptions.values()]
        return web.json_response(
            {
                "data": data,
                "total": len(data),
                "total_cost": 0,
                "max_total_cost": 10,
                "pagination": {},
            }
        )

    async def _delete_subscription(self, request: web.Request) -> web.Response:
        token = self._helix_auth(request)
        if isinstance(token, web.Response):
            return token
        if self.subscriptions.pop(request.query.get("id", ""), None) is None:
            return web.json_response({"status": 404, "message": "not found"}, status=404)
        return web.Response(status=204)

    async def _chat_message(self, request: web.Request) -> web.Response:
        self._changed()
        if (scripted := self._scripted(request)) is not None:
            return scripted
        token = self._helix_auth(request)
        if isinstance(token, web.Response):
            return token
        body = await request.json()
        sender = str(body.get("sender_id", ""))
        text = str(body.get("message", ""))
        if token.user is None or token.user.user_id != sender:
            return web.json_response(
                {
                    "error": "Forbidden",
                    "status": 403,
                    "message": "The sender must be the token's user",
                },
                status=403,
            )
        if "user:write:chat" not in token.scopes:
            return web.json_response(
                {
                    "error": "Unauthorized",
                    "status": 401,
                    "message": "Missing scope: user:write:chat",
                },
                status=401,
            )
        if not text.strip() or len(text) > _MAX_CHAT_CHARS:
            return web.json_response(
                {
                    "error": "Bad Request",
                    "status": 400,
                    "message": "message must be 1..500 characters",
                },
                status=400,
            )
        now_ns = time.monotonic_ns()
        times = self._chat_times.setdefault(sender, collections.deque())
        while times and now_ns - times[0] > self.chat_window_s * 1e9:
            times.popleft()
        if len(times) >= self.chat_limit:
            self.chat_rate_limited += 1
            return web.json_response(
                {"error": "Too Many Requests", "status": 429, "message": "rate limited"},
                status=429,
                headers={"Ratelimit-Reset": str(int(time.time()) + 1)},
            )
        times.append(now_ns)
        message_id = str(uuid.uuid4())
        if self._drops:
            drop = self._drops.popleft()
            self.chat_rejected.append({"text": text, **drop})
            return web.json_response(
                {"data": [{"message_id": "", "is_sent": False, "drop_reason": drop}]}
            )
        self.chat_sent.append(
            SentChat(
                text=text,
                sender_id=sender,
                broadcaster_id=str(body.get("broadcaster_id", "")),
                reply_parent_message_id=body.get("reply_parent_message_id"),
                message_id=message_id,
                t_ns=now_ns,
            )
        )
        if self.echo_own_messages:
            self._spawn(self.chat(text, user=token.user, message_id=message_id))
        return web.json_response(
            {"data": [{"message_id": message_id, "is_sent": True, "drop_reason": None}]}
        )
