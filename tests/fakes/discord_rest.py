"""The fake Discord's REST API (``/api/v10``) and CDN (``/cdn/``).

:class:`DiscordRest` dispatches every ``/api/v10`` request through one route
table, checks ``Authorization: Bot <token>``, applies scripted failures
(:meth:`DiscordRest.fail_next`) and records the call. It serves users, the
application, the gateway URL, channels, messages, typing, reactions, guilds
and members itself; :mod:`tests.fakes.discord_interactions` adds application
commands and interaction answers through :meth:`DiscordRest.add_routes`.
Messages the bot creates, edits or deletes are echoed to the gateway, as
Discord does (adapters must ignore their own messages).

Wire details that matter to discord.py:

* every JSON reply has ``Content-Type: application/json`` exactly
  (``json_or_text`` compares with ``==``; aiohttp's ``json_response`` adds a
  charset, and discord.py then treats the body as a string);
* a 429 carries ``{"message", "retry_after", "global"}``, the
  ``X-RateLimit-*`` headers and ``Via`` (discord.py raises instead of retrying
  a 429 without ``Via``: it takes that for a Cloudflare ban);
* message bodies are validated as Discord does: at most 2000 characters
  (50035), never empty (50006), replies to unknown messages refused unless
  ``fail_if_not_exists`` is false.

Every request is recorded as a :class:`RestCall` (parsed JSON, form fields and
uploaded files, the status and body answered). Unknown routes answer 404 with
a message and are recorded too, so tests see calls nobody expected. Errors
follow Discord's shape ``{"message", "code"}`` with Discord's error codes.
"""

from __future__ import annotations

import collections
import contextlib
import email.parser
import email.policy
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from tests.fakes.discord_payloads import (
    channel_json,
    gateway_shape,
    guild_json,
    member_json,
    message_json,
    user_json,
)
from tests.fakes.discord_world import (
    CHANNEL_PUBLIC_THREAD,
    MESSAGE_FLAG_EPHEMERAL,
    MESSAGE_FLAG_LOADING,
    FakeChannel,
    InteractionRecord,
    World,
    application_flags,
    snowflake_time_iso,
)

__all__ = [
    "API_PREFIX",
    "ApiAnswer",
    "ApiError",
    "ApiRequest",
    "DiscordRest",
    "RestCall",
    "Route",
    "SentFile",
]

API_PREFIX = "/api/v10"
MAX_CONTENT_CHARS = 2000
_MAX_MENTIONS_PARSED = 100

Dispatch = Callable[[str, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SentFile:
    """A file the bot uploaded in a multipart request."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RestCall:
    """One REST request as the fake saw it, and what it answered.

    Attributes:
        method: HTTP method.
        path: path below ``/api/v10`` (``"/channels/500/messages"``).
        route: the route's name (``"create_message"``), ``"unknown"`` when
            nothing matched.
        query: query parameters (first value of each).
        headers: request headers.
        json: the JSON body, or the ``payload_json`` part of a multipart body.
        form: other non-file multipart fields.
        files: uploaded files, in order.
        status: the status answered.
        response: the JSON answered (``None`` for 204).
        t_ns: ``time.monotonic_ns()`` when it arrived.
    """

    method: str
    path: str
    route: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    json: Any
    form: Mapping[str, str]
    files: tuple[SentFile, ...]
    status: int
    response: Any
    t_ns: int

    @property
    def ok(self) -> bool:
        """Whether the fake answered 2xx."""
        return 200 <= self.status < 300


@dataclass(slots=True)
class _FailureRule:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after_s: float
    global_: bool
    body: Any
    times: int


@dataclass(slots=True)
class ApiRequest:
    """A parsed request, as route handlers get it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    json: Any
    form: dict[str, str]
    files: tuple[SentFile, ...]


@dataclass(slots=True)
class ApiAnswer:
    """What a route handler answers.

    Attributes:
        status: HTTP status; 204 (or ``body=None``) sends no body.
        body: JSON to send.
        headers: extra headers.
        on_recorded: called with the recorded call (to derive richer records).
    """

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    on_recorded: Callable[[RestCall], None] | None = None


Handler = Callable[..., Awaitable[ApiAnswer]]


@dataclass(frozen=True, slots=True)
class Route:
    """One REST route: ``pattern`` is matched with ``re.fullmatch``; groups become arguments.

    Attributes:
        auth: whether ``Authorization: Bot <token>`` is required (interaction
            and webhook routes are authorised by the token in their path).
    """

    method: str
    pattern: str
    name: str
    handler: Handler
    auth: bool = True


class ApiError(Exception):
    """A Discord error answer: ``{"message", "code", "errors"?}`` with an HTTP status."""

    def __init__(self, status: int, code: int, message: str, errors: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors


def _json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response with ``Content-Type`` exactly ``application/json``."""
    all_headers = {"Content-Type": "application/json", **dict(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


def _parse_multipart(content_type: str, body: bytes) -> tuple[Any, dict[str, str], list[SentFile]]:
    """Split a multipart/form-data body into payload_json, other fields and files.

    The base server has already read the body for its log, so aiohttp's own
    multipart reader would find an empty stream; the stdlib parser works on
    the bytes.
    """
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    payload: Any = None
    form: dict[str, str] = {}
    files: list[SentFile] = []
    if not message.is_multipart():
        return payload, form, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition") or ""
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        if filename is not None:
            files.append(SentFile(str(name), filename, part.get_content_type(), bytes(data)))
        elif name == "payload_json":
            # Malformed JSON is left as None; the handler then sees an empty body.
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                payload = json.loads(data)
        else:
            form[str(name)] = bytes(data).decode("utf-8", "replace")
    return payload, form, files


class DiscordRest:
    """Discord's REST API over a shared world.

    Args:
        world: the shared state.
        bot_token: the token ``Authorization: Bot <token>`` must carry.
        dispatch: sends a gateway event (does nothing when no client is
            connected); used to echo the bot's own messages.
        changed: called after every recorded request (wakes ``wait_for``).
        echo_own_messages: send MESSAGE_CREATE/UPDATE/DELETE for what the
            bot does, as Discord does.
        max_recorded_calls: bound of the call log.
    """

    def __init__(
        self,
        world: World,
        *,
        bot_token: str,
        dispatch: Dispatch,
        changed: Callable[[], None],
        echo_own_messages: bool = True,
        max_recorded_calls: int = 10_000,
    ) -> None:
        self.world = world
        self.bot_token = bot_token
        self.echo_own_messages = echo_own_messages
        self.enabled_privileged_intents = 0
        self.gateway_url = ""
        self._dispatch = dispatch
        self._changed = changed
        self._calls: collections.deque[RestCall] = collections.deque(maxlen=max_recorded_calls)
        self._rules: list[_FailureRule] = []
        self._routes: list[tuple[re.Pattern[str], Route]] = []
        ident = r"(\d+)"
        token = r"([^/]+)"
        self.add_routes(
            [
                Route("GET", r"/users/@me", "get_me", self._get_me),
                Route("GET", rf"/users/{ident}", "get_user", self._get_user),
                Route("POST", r"/users/@me/channels", "create_dm", self._create_dm),
                Route("GET", r"/oauth2/applications/@me", "get_application", self._get_app),
                Route("GET", r"/gateway", "get_gateway", self._get_gateway, auth=False),
                Route("GET", r"/gateway/bot", "get_gateway_bot", self._get_gateway_bot),
                Route("GET", rf"/channels/{ident}", "get_channel", self._get_channel),
                Route("POST", rf"/channels/{ident}/typing", "typing", self._typing),
                Route("GET", rf"/channels/{ident}/messages", "get_messages", self._get_messages),
                Route("POST", rf"/channels/{ident}/messages", "create_message", self._create_message),
                Route("GET", rf"/channels/{ident}/messages/{ident}", "get_message", self._get_message),
                Route("PATCH", rf"/channels/{ident}/messages/{ident}", "edit_message", self._edit_message),
                Route("DELETE", rf"/channels/{ident}/messages/{ident}", "delete_message", self._delete_message),
                Route("PUT", rf"/channels/{ident}/messages/{ident}/reactions/{token}/@me", "add_reaction", self._reaction),
                Route("DELETE", rf"/channels/{ident}/messages/{ident}/reactions/{token}/@me", "remove_reaction", self._reaction),
                Route("GET", rf"/guilds/{ident}", "get_guild", self._get_guild),
                Route("GET", rf"/guilds/{ident}/channels", "get_guild_channels", self._get_guild_channels),
                Route("GET", rf"/guilds/{ident}/members/{ident}", "get_member", self._get_member),
            ]
        )  # fmt: skip

    def add_routes(self, routes: list[Route]) -> None:
        """Add routes to the table (first match wins)."""
        self._routes.extend((re.compile(r.pattern), r) for r in routes)

    def register(self, app: web.Application) -> None:
        """Mount ``/api/v10/...`` and ``/cdn/attachments/...`` on ``app``."""
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle)
        app.router.add_get(
            "/cdn/attachments/{channel_id:\\d+}/{attachment_id:\\d+}/{filename}", self._cdn
        )

    # -- recorded traffic --------------------------------------------------

    @property
    def calls(self) -> list[RestCall]:
        """Every REST call, oldest first."""
        return list(self._calls)

    # -- failure injection -------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_regex: str,
        *,
        status: int = 429,
        retry_after_s: float = 0.05,
        global_: bool = False,
        body: Any = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with an error.

        Args:
            method: HTTP method to match.
            path_regex: matched with ``re.fullmatch`` against the path below
                ``/api/v10`` (e.g. ``r"/channels/\\d+/messages"``).
            status: the status; 429 gets Discord's rate-limit body and headers.
            retry_after_s: ``retry_after`` of a 429.
            global_: mark a 429 as a global rate limit.
            body: JSON body for other statuses (default
                ``{"message": "...", "code": 0}``).
            times: how many matching requests fail.
        """
        self._rules.append(
            _FailureRule(
                method.upper(),
                re.compile(path_regex),
                status,
                retry_after_s,
                global_,
                body,
                times,
            )
        )

    def _take_failure(self, method: str, path: str) -> _FailureRule | None:
        for rule in self._rules:
            if rule.method == method and rule.pattern.fullmatch(path):
                rule.times -= 1
                if rule.times <= 0:
                    self._rules.remove(rule)
                return rule
        return None

    @staticmethod
    def _failure_answer(rule: _FailureRule) -> ApiAnswer:
        if rule.status != 429:
            body = rule.body if rule.body is not None else {"message": "fake failure", "code": 0}
            return ApiAnswer(rule.status, body)
        reset_after = f"{rule.retry_after_s:.3f}"
        headers = {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + rule.retry_after_s:.3f}",
            "X-RateLimit-Reset-After": reset_after,
            "X-RateLimit-Bucket": "fakebucket",
            "X-RateLimit-Scope": "global" if rule.global_ else "user",
            "Retry-After": str(max(1, math.ceil(rule.retry_after_s))),
            # Real Discord 429s come through Google's front end; discord.py
            # treats a 429 without Via as a Cloudflare ban and raises.
            "Via": "1.1 google",
        }
        if rule.global_:
            headers["X-RateLimit-Global"] = "true"
        body = {
            "message": "You are being rate limited.",
            "retry_after": rule.retry_after_s,
            "global": rule.global_,
        }
        return ApiAnswer(429, body, headers)

    # -- dispatcher --------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        body = await request.read()
        parsed: Any = None
        form: dict[str, str] = {}
        files: list[SentFile] = []
        if request.content_type == "multipart/form-data":
            parsed, form, files = _parse_multipart(request.headers["Content-Type"], body)
        elif body:
            try:
                parsed = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                parsed = None
        req = ApiRequest(
            request.method,
            path,
            {k: request.query[k] for k in request.query},
            request.headers,
            parsed,
            form,
            tuple(files),
        )
        route_name = "unknown"
        try:
            answer = None
            for pattern, route in self._routes:
                match = pattern.fullmatch(path)
                if match is None or route.method != request.method:
                    continue
                route_name = route.name
                authorization = request.headers.get("Authorization")
                if route.auth and authorization != f"Bot {self.bot_token}":
                    raise ApiError(401, 0, "401: Unauthorized")
                rule = self._take_failure(request.method, path)
                if rule is not None:
                    answer = self._failure_answer(rule)
                else:
                    answer = await route.handler(req, *match.groups())
                break
            if answer is None:
                rule = self._take_failure(request.method, path)
                answer = (
                    self._failure_answer(rule)
                    if rule is not None
                    else ApiAnswer(404, {"message": f"404: Not Found (fake: no route {request.method} {path})", "code": 0})
                )  # fmt: skip
        except ApiError as exc:
            error: dict[str, Any] = {"message": exc.message, "code": exc.code}
            if exc.errors is not None:
                error["errors"] = exc.errors
            answer = ApiAnswer(exc.status, error)
        call = RestCall(
            method=req.method,
            path=path,
            route=route_name,
            query=req.query,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            json=parsed,
            form=form,
            files=req.files,
            status=answer.status,
            response=answer.body,
            t_ns=time.monotonic_ns(),
        )
        self._calls.append(call)
        if answer.on_recorded is not None:
            answer.on_recorded(call)
        self._changed()
        if answer.status == 204 or answer.body is None:
            return web.Response(status=answer.status, headers=answer.headers)
        return _json_response(answer.status, answer.body, answer.headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        data = self.world.blob(int(request.match_info["attachment_id"]))
        if data is None:
            return web.Response(status=404, text="no such attachment")
        return web.Response(body=data, content_type="application/octet-stream")

    # -- lookups -----------------------------------------------------------

    def _channel(self, channel_id: str) -> FakeChannel:
        channel = self.world.channel(int(channel_id))
        if channel is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _stored_message(self, channel_id: str, message_id: str) -> dict[str, Any]:
        message = self.world.message(int(message_id))
        if message is None or message["channel_id"] != channel_id:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    # -- users, application, gateway ---------------------------------------

    async def _get_me(self, req: ApiRequest) -> ApiAnswer:
        me = user_json(self.world.bot)
        me.update(verified=True, mfa_enabled=False, flags=0, locale="en-US", email=None)
        return ApiAnswer(200, me)

    async def _get_user(self, req: ApiRequest, user_id: str) -> ApiAnswer:
        user = self.world.users.get(int(user_id))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return ApiAnswer(200, user_json(user))

    async def _create_dm(self, req: ApiRequest) -> ApiAnswer:
        body = req.json if isinstance(req.json, dict) else {}
        try:
            channel = self.world.add_dm(int(body.get("recipient_id", 0)))
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, 50033, "Invalid Recipient(s)") from None
        return ApiAnswer(200, channel_json(self.world, channel))

    async def _get_app(self, req: ApiRequest) -> ApiAnswer:
        owner = self.world.users.get(self.world.bot.id)
        return ApiAnswer(
            200,
            {
                "id": str(self.world.application_id),
                "name": self.world.application_name,
                "icon": None,
                "description": "",
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": user_json(owner) if owner is not None else None,
                "verify_key": "0" * 64,
                "flags": application_flags(self.enabled_privileged_intents),
                "bot": user_json(self.world.bot),
                "team": None,
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "tags": [],
            },
        )

    async def _get_gateway(self, req: ApiRequest) -> ApiAnswer:
        return ApiAnswer(200, {"url": self.gateway_url})

    async def _get_gateway_bot(self, req: ApiRequest) -> ApiAnswer:
        return ApiAnswer(
            200,
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            },
        )

    # -- channels and messages ---------------------------------------------

    async def _get_channel(self, req: ApiRequest, channel_id: str) -> ApiAnswer:
        return ApiAnswer(200, channel_json(self.world, self._channel(channel_id)))

    async def _typing(self, req: ApiRequest, channel_id: str) -> ApiAnswer:
        self._channel(channel_id)
        return ApiAnswer(204)

    async def _get_messages(self, req: ApiRequest, channel_id: str) -> ApiAnswer:
        self._channel(channel_id)
        limit = max(1, min(100, int(req.query.get("limit", "50"))))
        before = int(req.query.get("before", "0")) or None
        after = int(req.query.get("after", "0")) or None
        found = [
            m
            for m in self.world.messages_in(int(channel_id))
            if (before is None or int(m["id"]) < before) and (after is None or int(m["id"]) > after)
        ]
        # Newest first, as Discord answers.
        return ApiAnswer(200, list(reversed(found))[:limit])

    async def _get_message(self, req: ApiRequest, channel_id: str, message_id: str) -> ApiAnswer:
        return ApiAnswer(200, self._stored_message(channel_id, message_id))

    async def _create_message(self, req: ApiRequest, channel_id: str) -> ApiAnswer:
        channel = self._channel(channel_id)
        body = req.json if isinstance(req.json, dict) else {}
        message = self.bot_message(channel, body, req.files)
        self.world.store_message(message)
        await self.echo("MESSAGE_CREATE", message)
        return ApiAnswer(200, message)

    async def _edit_message(self, req: ApiRequest, channel_id: str, message_id: str) -> ApiAnswer:
        message = self._stored_message(channel_id, message_id)
        if int(message["author"]["id"]) != self.world.bot.id:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        body = req.json if isinstance(req.json, dict) else {}
        self.apply_edit(message, body, req.files)
        await self.echo("MESSAGE_UPDATE", message)
        return ApiAnswer(200, message)

    async def _delete_message(self, req: ApiRequest, channel_id: str, message_id: str) -> ApiAnswer:
        message = self._stored_message(channel_id, message_id)
        self.world.delete_message(int(message_id))
        await self.echo("MESSAGE_DELETE", message)
        return ApiAnswer(204)

    async def _reaction(
        self, req: ApiRequest, channel_id: str, message_id: str, emoji: str
    ) -> ApiAnswer:
        self._stored_message(channel_id, message_id)
        return ApiAnswer(204)

    def bot_message(
        self,
        channel: FakeChannel,
        body: Mapping[str, Any],
        files: tuple[SentFile, ...],
        *,
        flags: int | None = None,
        interaction: InteractionRecord | None = None,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        """Validate a message body as Discord does and build the bot's message.

        Raises:
            ApiError: too long (50035), empty (50006), or a reply to an
                unknown message (50035).
        """
        content = body.get("content") or ""
        if not isinstance(content, str):
            content = str(content)
        if len(content) > MAX_CONTENT_CHARS:
            raise ApiError(
                400,
                50035,
                "Invalid Form Body",
                {
                    "content": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_MAX_LENGTH",
                                "message": f"Must be {MAX_CONTENT_CHARS} or fewer in length.",
                            }
                        ]
                    }
                },
            )
        embeds = list(body.get("embeds") or [])
        components = list(body.get("components") or [])
        if not (allow_empty or content or embeds or components or files or body.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")
        reply_to: int | None = None
        reference = body.get("message_reference")
        if isinstance(reference, dict) and reference.get("message_id") is not None:
            reply_to = int(reference["message_id"])
            if self.world.message(reply_to) is None and reference.get("fail_if_not_exists", True):
                raise ApiError(
                    400,
                    50035,
                    "Invalid Form Body",
                    {
                        "message_reference": {
                            "_errors": [
                                {"code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "message": "Unknown message"}
                            ]
                        }
                    },
                )  # fmt: skip
        attachments = [self.world.attachment(channel.id, f.filename, f.data, None) for f in files]
        message_id = self.world.new_id()
        metadata = None
        if interaction is not None:
            user = interaction.payload.get("member", {}).get("user") or interaction.payload.get(
                "user"
            )
            metadata = {
                "id": str(interaction.id),
                "type": interaction.payload["type"],
                "user": user,
                "authorizing_integration_owners": interaction.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
        return message_json(
            self.world,
            message_id=message_id,
            channel=channel,
            author=self.world.bot,
            content=content,
            mentions=self._mentions(content, body.get("allowed_mentions")),
            reply_to=reply_to,
            attachments=attachments,
            embeds=embeds,
            components=components,
            flags=int(flags if flags is not None else body.get("flags") or 0),
            nonce=body.get("nonce"),
            webhook_id=self.world.application_id if interaction is not None else None,
            interaction_metadata=metadata,
        )

    def _mentions(self, content: str, allowed: Any) -> list[Any]:
        """Users mentioned in ``content`` that ``allowed_mentions`` lets through."""
        found = []
        for raw in re.findall(r"<@!?(\d+)>", content)[:_MAX_MENTIONS_PARSED]:
            user = self.world.users.get(int(raw))
            if user is None or user in found:
                continue
            if isinstance(allowed, dict):
                listed = {str(u) for u in allowed.get("users") or []}
                if "users" not in (allowed.get("parse") or []) and raw not in listed:
                    continue
            found.append(user)
        return found

    def apply_edit(
        self, message: dict[str, Any], body: Mapping[str, Any], files: tuple[SentFile, ...]
    ) -> None:
        if "content" in body:
            content = body["content"] or ""
            if len(content) > MAX_CONTENT_CHARS:
                raise ApiError(400, 50035, "Invalid Form Body")
            message["content"] = content
        for key in ("embeds", "components"):
            if key in body:
                message[key] = list(body[key] or [])
        if "flags" in body and body["flags"] is not None:
            # Editing may clear the loading flag but never the ephemeral one.
            message["flags"] = (int(body["flags"]) & ~MESSAGE_FLAG_LOADING) | (
                message["flags"] & MESSAGE_FLAG_EPHEMERAL
            )
        else:
            message["flags"] = message["flags"] & ~MESSAGE_FLAG_LOADING
        channel_id = int(message["channel_id"])
        if "attachments" in body or files:
            kept = {str(a.get("id")) for a in body.get("attachments") or []}
            message["attachments"] = [a for a in message["attachments"] if a["id"] in kept] + [
                self.world.attachment(channel_id, f.filename, f.data, None) for f in files
            ]
        message["edited_timestamp"] = snowflake_time_iso(self.world.new_id())

    async def echo(self, t: str, message: dict[str, Any]) -> None:
        """Tell the gateway about the bot's own message, as Discord does (not ephemeral ones)."""
        if not self.echo_own_messages or message.get("flags", 0) & MESSAGE_FLAG_EPHEMERAL:
            return
        if t == "MESSAGE_DELETE":
            keys = ("id", "channel_id", "guild_id")
            await self._dispatch(t, {k: message[k] for k in keys if k in message})
        else:
            await self._dispatch(t, gateway_shape(self.world, message))

    # -- guilds ------------------------------------------------------------

    async def _get_guild(self, req: ApiRequest, guild_id: str) -> ApiAnswer:
        guild = self.world.guilds.get(int(guild_id))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        payload = guild_json(self.world, guild)
        payload.update(approximate_member_count=len(guild.members), approximate_presence_count=0)
        return ApiAnswer(200, payload)

    async def _get_guild_channels(self, req: ApiRequest, guild_id: str) -> ApiAnswer:
        guild = self.world.guilds.get(int(guild_id))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        return ApiAnswer(
            200,
            [
                channel_json(self.world, c)
                for c in guild.channels.values()
                if c.type != CHANNEL_PUBLIC_THREAD
            ],
        )

    async def _get_member(self, req: ApiRequest, guild_id: str, user_id: str) -> ApiAnswer:
        guild = self.world.guilds.get(int(guild_id))
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        member = guild.members.get(int(user_id))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return ApiAnswer(200, member_json(self.world, guild, member))
