"""twitchio 3.3.2, wired for the familiar: vault tokens, one refresh per 401, sound reconnects.

:class:`FamiliarTwitchClient` is a :class:`twitchio.Client` that

- loads its user tokens from the values it was given (read from the encrypted vault) instead
  of ``.tio.tokens.json``, and never saves that file;
- reports every token refresh (at add time, on a 401, in the hourly revalidation) to
  ``on_refresh`` so the new pair is written back to the vault;
- refreshes **once** per request: if Twitch rejects the refreshed token too, the request fails
  with :class:`~familiar_connect.errors.ProviderAuthError` instead of twitchio's endless
  refresh-and-retry, and a refresh Twitch refuses is the same error;
- hands every EventSub notification to a :class:`TwitchHandler` without awaiting anything;
- works around two traps of twitchio 3.3.2's EventSub websocket (observed against the fake):
  on ``session_reconnect`` it stops reading the old connection until the new one is welcomed,
  losing what Twitch still delivers there, and because Twitch keeps the session id across a
  reconnect, closing the old socket unregisters the new one, which then outlives
  :meth:`~twitchio.Client.close`. Sockets registered by the client get a subclass whose
  reconnect runs beside its read loop, the registry never drops a live socket for a closed
  one, and :meth:`FamiliarTwitchClient.aclose` closes every socket it ever saw.

:class:`HelixChatPoster` posts chat messages and maps twitchio's exceptions to ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import structlog

with warnings.catch_warnings():
    # twitchio's web adapter subclasses aiohttp's Application, which aiohttp discourages.
    warnings.filterwarnings("ignore", "Inheritance class", DeprecationWarning)
    import twitchio
    from twitchio import eventsub
    from twitchio.authentication.tokens import ManagedHTTPClient
    from twitchio.eventsub.websockets import Websocket
    from twitchio.exceptions import (
        HTTPException,
        InvalidTokenException,
        WebsocketConnectionException,
    )

from familiar_connect.errors import (
    ProviderAuthError,
    ProviderBadRequest,
    ProviderConnectionError,
    ProviderError,
    ProviderRateLimited,
    ProviderRefused,
    ProviderTimeout,
    ProviderUnavailable,
)
from familiar_connect.platforms.twitch.sink import PostResult
from familiar_connect.platforms.twitch.tokens import StoredToken

__all__ = [
    "FamiliarTwitchClient",
    "HelixChatPoster",
    "TwitchHandler",
    "provider_error",
    "subscription_payload",
    "twitchio_error",
]

log = structlog.get_logger(__name__)

_REQUEST_TIMEOUT_S = 15.0
_GRANT_ROUTE = "oauth2/token"  # the identity route whose failures we classify


class _DropStarletteNotice(logging.Filter):
    """twitchio warns at every client construction that Starlette is not installed; we never use it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StarletteAdapter" not in str(record.msg)


logging.getLogger("twitchio.client").addFilter(_DropStarletteNotice())


class TwitchHandler(Protocol):
    """Where the client's events go. Every method runs on the loop and must not block or await.

    - ``on_chat``: a ``channel.chat.message`` (twitchio ``ChatMessage``);
    - ``on_channel_event``: ``kind`` is ``follow``, ``sub``, ``resub``, ``gift``, ``cheer``,
      ``raid``, ``redemption`` or ``ad_break``, with twitchio's model;
    - ``on_revoked``: Twitch revoked a subscription (its type and the reason);
    - ``on_welcome``: a session was welcomed (first connection or reconnect);
    - ``on_socket_closed``: an EventSub socket closed;
    - ``on_refreshed``: a token was refreshed; the new pair must be saved.
    """

    def on_chat(self, message: Any) -> None: ...

    def on_channel_event(self, kind: str, model: Any) -> None: ...

    def on_revoked(self, sub_type: str, status: str) -> None: ...

    def on_welcome(self, session_id: str) -> None: ...

    def on_socket_closed(self) -> None: ...

    def on_refreshed(
        self, user_id: str, access_token: str, refresh_token: str, scopes: tuple[str, ...]
    ) -> None: ...


def provider_error(exc: HTTPException, *, what: str) -> ProviderError:
    """Our error for a twitchio ``HTTPException``; names Twitch's message, never the URL.

    (twitchio's own message includes the request URL, which for token requests carries the
    client secret and the refresh token.)
    """
    status = int(exc.status or 0)
    extra = exc.extra if isinstance(exc.extra, Mapping) else {}
    said = str(extra.get("message", "") or "")[:200]
    message = f"{what}: {said}" if said else f"{what}: HTTP {status}"
    kinds: dict[int, type[ProviderError]] = {
        400: ProviderBadRequest,
        401: ProviderAuthError,
        403: ProviderRefused,
        408: ProviderRateLimited,
        429: ProviderRateLimited,
    }
    cls = kinds.get(status, ProviderUnavailable if status >= 500 else ProviderError)
    return cls(message, provider="twitch", status=status or None)


def _token_endpoint_error(exc: HTTPException) -> ProviderAuthError | None:
    """Our error for a refused token grant, or None when ``exc`` is about something else."""
    route = getattr(exc, "route", None)
    if route is None or _GRANT_ROUTE not in str(getattr(route, "path", "")):
        return None
    grant = (getattr(route, "params", None) or {}).get("grant_type")
    if grant == "refresh_token":
        return ProviderAuthError(
            "Twitch refused to refresh an expired token; log the account in again with "
            "`familiar twitch login`",
            provider="twitch",
            status=exc.status,
        )
    if grant == "client_credentials" and exc.status in (400, 401, 403):
        return ProviderAuthError(
            "Twitch rejected the application's credentials: check TWITCH_CLIENT_ID and "
            "TWITCH_CLIENT_SECRET against the Twitch developer console",
            provider="twitch",
            status=exc.status,
        )
    return None


_ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("twitch_http_attempt", default=0)


class _GuardedHTTPClient(ManagedHTTPClient):
    """twitchio's token-managing HTTP client with one refresh per request, reported to us."""

    def __init__(self, *, on_refresh: Callable[[str, Any], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_refresh = on_refresh

    def _dispatch_event(self, user_id: str, payload: Any) -> None:
        try:
            self._on_refresh(user_id, payload)
        except Exception:
            log.exception("twitch_refresh_listener_failed", user_id=user_id)
        super()._dispatch_event(user_id, payload)

    async def request(self, route: Any) -> Any:
        attempt = _ATTEMPT.get()
        if attempt >= 1:
            # twitchio retries here after refreshing; a second 401 is final.
            try:
                return await twitchio.http.HTTPClient.request(self, route)
            except HTTPException as exc:
                if exc.status == 401:
                    raise ProviderAuthError(
                        "Twitch rejected the token again right after refreshing it; log the "
                        "account in again with `familiar twitch login`",
                        provider="twitch",
                        status=401,
                    ) from None
                raise
        reset = _ATTEMPT.set(attempt + 1)
        try:
            return await super().request(route)
        except HTTPException as exc:
            error = _token_endpoint_error(exc)
            if error is None:
                raise
            raise error from None
        finally:
            _ATTEMPT.reset(reset)

    async def save(self, name: str | None = None) -> None:
        """Never write ``.tio.tokens.json``: tokens live in the vault."""


class _ReadingWebsocket(Websocket):
    """A twitchio EventSub socket that keeps reading while it migrates to a reconnect URL."""

    __slots__ = ()

    async def _process_reconnect(self, data: Any) -> None:
        url = data["payload"]["session"]["reconnect_url"]
        log.info("twitch_eventsub_reconnect_requested")
        task = asyncio.get_running_loop().create_task(
            self._reconnect(url=url), name="twitch:eventsub-reconnect"
        )
        self._connection_tasks.add(task)
        task.add_done_callback(self._connection_tasks.discard)


class _SessionSockets(dict[str, Websocket]):
    """One token's sockets by session id; adopts every socket, never drops a live one for a closed one."""

    def __init__(
        self, owner: FamiliarTwitchClient, initial: Mapping[str, Websocket] | None = None
    ) -> None:
        super().__init__()
        self._owner = owner
        for key, socket in (initial or {}).items():
            self[key] = socket

    def __setitem__(self, key: str, socket: Websocket) -> None:
        self._owner._adopt(socket)
        super().__setitem__(key, socket)

    def pop(self, key: str, *default: Any) -> Any:  # type: ignore[override]
        current = self.get(key)
        if current is not None and not current._closed:
            # A closing socket cleans up its session id, which after a reconnect (same id)
            # already names its live successor: keep the successor.
            return default[0] if default else current
        return super().pop(key, *default)


class _SocketRegistry(defaultdict[str, _SessionSockets]):
    def __init__(self, owner: FamiliarTwitchClient) -> None:
        super().__init__()
        self._owner = owner

    def __missing__(self, key: str) -> _SessionSockets:
        sockets = _SessionSockets(self._owner)
        super().__setitem__(key, sockets)
        return sockets

    def __setitem__(self, key: str, value: Mapping[str, Websocket]) -> None:
        if not isinstance(value, _SessionSockets):
            value = _SessionSockets(self._owner, value)
        super().__setitem__(key, value)


class FamiliarTwitchClient(twitchio.Client):
    """A twitchio client whose tokens come from the vault and whose events go to a handler.

    Args:
        client_id: the application's client id.
        client_secret: its secret.
        bot_id: the bot account's user id.
        tokens: the stored user tokens to manage (bot, and broadcaster when logged in).
        handler: receives chat, channel events, revocations, socket changes and refreshes.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        bot_id: str,
        tokens: Sequence[StoredToken],
        handler: TwitchHandler,
    ) -> None:
        super().__init__(
            client_id=client_id,
            client_secret=client_secret,
            bot_id=bot_id,
            fetch_client_user=False,
        )
        self._handler = handler
        self._stored = list(tokens)
        self.validated: dict[str, Any] = {}
        self.sockets_seen: set[Websocket] = set()
        # Replace the HTTP client before anything used it (twitchio creates sessions lazily).
        self._http = _GuardedHTTPClient(
            client_id=client_id,
            client_secret=client_secret,
            client=self,
            on_refresh=self._refreshed,
        )
        self._websockets = _SocketRegistry(self)  # type: ignore[assignment]

    # --- tokens -----------------------------------------------------------------------

    async def load_tokens(self, path: str | None = None, /) -> None:
        """Add the vault's tokens (validating, and refreshing an expiring one).

        Raises:
            ProviderAuthError: a token is invalid and cannot be refreshed (names the role).
        """
        for stored in self._stored:
            try:
                self.validated[stored.role] = await self.add_token(
                    stored.access_token, stored.refresh_token
                )
            except InvalidTokenException:
                # twitchio's message quotes the token: never pass it on.
                raise ProviderAuthError(
                    f"the stored Twitch {stored.role} token ({stored.login}) is no longer "
                    f"valid and could not be refreshed; run `familiar twitch login --as "
                    f"{stored.role}` again",
                    provider="twitch",
                    status=401,
                ) from None
        self._http._has_loaded = True

    async def save_tokens(self, path: str | None = None, /) -> None:
        """Never write ``.tio.tokens.json``; refreshed tokens are saved to the vault as they come."""

    def _refreshed(self, user_id: str, payload: Any) -> None:
        scopes = tuple(str(scope) for scope in (payload.scope or ()))
        self._handler.on_refreshed(user_id, payload.access_token, payload.refresh_token, scopes)

    # --- sockets ----------------------------------------------------------------------

    def _adopt(self, socket: Websocket) -> None:
        if type(socket) is Websocket:
            socket.__class__ = _ReadingWebsocket
        self.sockets_seen.add(socket)

    def live_sockets(self) -> list[Websocket]:
        """Every socket seen that is open now."""
        return [s for s in self.sockets_seen if s.connected and not s._closed]

    def connected_tokens(self) -> set[str]:
        """User ids whose EventSub socket is open or being reconnected by twitchio.

        A socket twitchio gave up on (close code 4001 or 4003, or every subscription revoked)
        is closed for good and does not count.
        """
        return {
            str(s._token_for)
            for s in self.sockets_seen
            if not s._closed and (s.connected or s._connecting)
        }

    async def aclose(self) -> None:
        """Close the client and every socket it ever saw; cancel their background tasks.

        Cancellation: not safe to interrupt half-way; call it from ``finally``.
        """
        try:
            await self.close(save_tokens=False)
        finally:
            for socket in list(self.sockets_seen):
                with contextlib.suppress(Exception):
                    await socket.close()
                for task in (
                    *socket._connection_tasks,
                    socket._listen_task,
                    socket._keep_alive_task,
                ):
                    if task is not None and not task.done() and task is not asyncio.current_task():
                        task.cancel()
            self.sockets_seen.clear()

    # --- events (twitchio calls these in tasks of their own) ---------------------------

    async def event_message(self, payload: Any) -> None:
        self._handler.on_chat(payload)

    async def event_follow(self, payload: Any) -> None:
        self._handler.on_channel_event("follow", payload)

    async def event_subscription(self, payload: Any) -> None:
        self._handler.on_channel_event("sub", payload)

    async def event_subscription_message(self, payload: Any) -> None:
        self._handler.on_channel_event("resub", payload)

    async def event_subscription_gift(self, payload: Any) -> None:
        self._handler.on_channel_event("gift", payload)

    async def event_cheer(self, payload: Any) -> None:
        self._handler.on_channel_event("cheer", payload)

    async def event_raid(self, payload: Any) -> None:
        self._handler.on_channel_event("raid", payload)

    async def event_custom_redemption_add(self, payload: Any) -> None:
        self._handler.on_channel_event("redemption", payload)

    async def event_ad_break(self, payload: Any) -> None:
        self._handler.on_channel_event("ad_break", payload)

    async def event_subscription_revoked(self, payload: Any) -> None:
        status = getattr(payload.status, "value", str(payload.status))
        self._handler.on_revoked(str(payload.type), str(status))

    async def event_websocket_welcome(self, payload: Any) -> None:
        self._handler.on_welcome(str(payload.id))

    async def event_websocket_closed(self, payload: Any) -> None:
        self._handler.on_socket_closed()

    async def event_error(self, payload: Any) -> None:
        log.error(
            "twitch_listener_failed",
            listener=getattr(payload.listener, "__qualname__", "?"),
            error=type(payload.error).__name__,
            exc_info=payload.error,
        )


def subscription_payload(kind: str, *, broadcaster_id: str, bot_id: str) -> Any:
    """The twitchio subscription for one feature kind in this channel.

    Raises:
        KeyError: not a feature kind.
    """
    b = broadcaster_id
    builders: dict[str, Callable[[], Any]] = {
        "chat": lambda: eventsub.ChatMessageSubscription(broadcaster_user_id=b, user_id=bot_id),
        "follow": lambda: eventsub.ChannelFollowSubscription(
            broadcaster_user_id=b, moderator_user_id=b
        ),
        "sub": lambda: eventsub.ChannelSubscribeSubscription(broadcaster_user_id=b),
        "resub": lambda: eventsub.ChannelSubscribeMessageSubscription(broadcaster_user_id=b),
        "gift": lambda: eventsub.ChannelSubscriptionGiftSubscription(broadcaster_user_id=b),
        "cheer": lambda: eventsub.ChannelCheerSubscription(broadcaster_user_id=b),
        "raid": lambda: eventsub.ChannelRaidSubscription(to_broadcaster_user_id=b),
        "redemption": lambda: eventsub.ChannelPointsRedeemAddSubscription(broadcaster_user_id=b),
        "ad_break": lambda: eventsub.AdBreakBeginSubscription(broadcaster_user_id=b),
    }
    return builders[kind]()


class HelixChatPoster:
    """Posts chat messages as the bot through ``POST /helix/chat/messages``.

    Args:
        client: the logged-in client (its HTTP client holds the bot's token).
        broadcaster_id: the channel.
        bot_id: the bot account (sender and token).
        timeout_s: the bound on one request, retries of a 503 included.
    """

    def __init__(
        self,
        client: twitchio.Client,
        *,
        broadcaster_id: str,
        bot_id: str,
        timeout_s: float = _REQUEST_TIMEOUT_S,
    ) -> None:
        self._client = client
        self._broadcaster_id = broadcaster_id
        self._bot_id = bot_id
        self._timeout_s = timeout_s

    async def post(self, text: str, *, reply_to: str | None) -> PostResult:
        """Send one message. Safe to cancel (the message may or may not have been posted).

        Raises:
            ProviderRateLimited, ProviderAuthError, ProviderError: see :class:`.sink.ChatPoster`.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                data = await self._client.http.post_chat_message(
                    broadcaster_id=self._broadcaster_id,
                    sender_id=self._bot_id,
                    message=text,
                    token_for=self._bot_id,
                    reply_to_message_id=reply_to,
                )
        except HTTPException as exc:
            raise provider_error(exc, what="sending a chat message") from None
        except TimeoutError:
            raise ProviderTimeout("sending a chat message timed out", provider="twitch") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ProviderConnectionError(
                f"cannot reach Twitch to send a chat message: {type(exc).__name__}",
                provider="twitch",
            ) from exc
        entries: Iterable[Any] = (data.get("data") or []) if isinstance(data, Mapping) else []
        entry = next(iter(entries), {}) or {}
        if entry.get("is_sent"):
            return PostResult(True, message_id=str(entry.get("message_id") or ""))
        drop = entry.get("drop_reason") or {}
        return PostResult(
            False,
            drop_code=str(drop.get("code") or "unknown"),
            drop_message=str(drop.get("message") or ""),
        )


def twitchio_error(exc: BaseException, *, what: str = "logging in to Twitch") -> ProviderError:
    """Our error for anything twitchio raised while ``what`` (never quoting a token or URL)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, HTTPException):
        return provider_error(exc, what=what)
    if isinstance(exc, WebsocketConnectionException):
        return ProviderConnectionError(
            f"{what}: the EventSub websocket did not connect or sent no welcome", provider="twitch"
        )
    if isinstance(exc, TimeoutError):
        return ProviderTimeout(f"{what} timed out", provider="twitch")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ProviderConnectionError(
            f"{what}: cannot reach Twitch ({type(exc).__name__})", provider="twitch"
        )
    return ProviderError(f"{what} failed: {type(exc).__name__}", provider="twitch")
