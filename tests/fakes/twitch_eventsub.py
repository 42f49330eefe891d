"""The EventSub websocket side of the fake Twitch: sessions, notifications, reconnects, close codes.

:class:`EventSubSide` is mixed into :class:`~tests.fakes.twitch.FakeTwitch`; it serves ``/ws``
and holds the verbs that push frames to the client. Its rules follow Twitch's documentation and
the Twitch CLI mock server:

- ``session_welcome`` at once, with ``keepalive_timeout_seconds`` clamped to 10..600;
- ``session_keepalive`` while idle (``stop_keepalives()`` stops them);
- any text or binary frame from the client closes the connection with 4001;
- a connection with no subscription ``unused_timeout_s`` after its welcome is closed with 4003;
- ``reconnect()`` sends ``session_reconnect``; the reconnect URL welcomes with the **same**
  session id, notifications go to the old connection until then, and the old one is closed with
  4004 when it outlives ``reconnect_grace_s``;
- ``revoke()`` marks subscriptions revoked and sends ``revocation``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.twitch_payloads import (
    ALICE,
    BOB,
    BOT,
    RAIDER,
    TwitchUser,
    ad_break_event,
    chat_message_event,
    cheer_event,
    follow_event,
    gift_event,
    keepalive,
    notification,
    raid_event,
    reconnect_message,
    redemption_event,
    resub_event,
    revocation,
    sub_event,
    subscription_object,
    welcome,
)

__all__ = ["EventSubSide", "FakeSession", "FakeSubscription"]


@dataclass
class FakeSubscription:
    """An EventSub subscription held by the fake."""

    sub_id: str
    sub_type: str
    version: str
    condition: dict[str, Any]
    session_id: str
    user_id: str
    status: str = "enabled"

    def as_json(self) -> dict[str, Any]:
        return subscription_object(
            sub_id=self.sub_id,
            sub_type=self.sub_type,
            version=self.version,
            condition=self.condition,
            session_id=self.session_id,
            status=self.status,
        )


@dataclass
class FakeSession:
    """One EventSub websocket session (survives a reconnect, like Twitch's)."""

    session_id: str
    keepalive_s: int
    ws: web.WebSocketResponse | None = None
    old_ws: web.WebSocketResponse | None = None
    welcomed: bool = False
    closed: bool = False
    close_code: int | None = None
    keepalives: bool = True
    inbound: list[str] = field(default_factory=list)
    recent: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=256))


class EventSubSide:
    """The fake's websocket and notification verbs (mixed into ``FakeTwitch``).

    Relies on the host for ``sessions``, ``subscriptions``, ``broadcaster``, the timing knobs,
    ``eventsub_url``, ``prepare_websocket``/``close_websocket`` (from the fake server base),
    ``wait_for``, ``_spawn`` and ``_changed``.
    """

    sessions: dict[str, FakeSession]
    subscriptions: dict[str, FakeSubscription]
    broadcaster: TwitchUser
    keepalive_interval_s: float
    unused_timeout_s: float | None
    reconnect_grace_s: float
    eventsub_url: str
    prepare_websocket: Callable[..., Any]
    close_websocket: Callable[..., Any]
    wait_for: Callable[..., Any]
    _spawn: Callable[[Any], None]
    _changed: Callable[[], None]

    def enabled(self, sub_type: str | None = None) -> list[FakeSubscription]:
        """Enabled subscriptions, optionally of one type."""
        return [
            sub
            for sub in self.subscriptions.values()
            if sub.status == "enabled" and (sub_type is None or sub.sub_type == sub_type)
        ]

    # --- the EventSub websocket --------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            keepalive_s = int(request.query.get("keepalive_timeout_seconds", "10"))
        except ValueError:
            return web.json_response({"status": 400, "message": "bad keepalive"}, status=400)
        keepalive_s = max(10, min(keepalive_s, 600))
        reconnecting = request.query.get("reconnect")
        ws = await self.prepare_websocket(request)
        if reconnecting is not None and reconnecting in self.sessions:
            session = self.sessions[reconnecting]
            session.old_ws, session.ws = session.ws, ws
        else:
            session = FakeSession(session_id=secrets.token_urlsafe(16), keepalive_s=keepalive_s)
            session.ws = ws
            self.sessions[session.session_id] = session
        await ws.send_str(json.dumps(welcome(session.session_id, keepalive_s=session.keepalive_s)))
        session.welcomed = True
        self._changed()
        if session.old_ws is not None:
            self._spawn(self._expire_old(session, session.old_ws))
        self._spawn(self._keepalives(session, ws))
        if self.unused_timeout_s is not None and reconnecting is None:
            self._spawn(self._close_if_unused(session, ws))
        try:
            async for message in ws:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    session.inbound.append(str(message.data)[:200])
                    await self._close(session, ws, 4001, "sent inbound traffic")
                    break
        finally:
            self._changed()
            if session.ws is ws:
                session.closed = True
                session.close_code = ws.close_code
                for sub in self.subscriptions.values():
                    if sub.session_id == session.session_id and sub.status == "enabled":
                        sub.status = "websocket_disconnected"
            elif session.old_ws is ws:
                session.old_ws = None
        return ws

    async def _close(
        self, session: FakeSession, ws: web.WebSocketResponse, code: int, reason: str
    ) -> None:
        session.close_code = code
        await self.close_websocket(ws, code=code, message=reason.encode())

    async def _keepalives(self, session: FakeSession, ws: web.WebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.keepalive_interval_s)
            if session.keepalives and session.ws is ws and not ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.send_str(json.dumps(keepalive()))

    async def _close_if_unused(self, session: FakeSession, ws: web.WebSocketResponse) -> None:
        assert self.unused_timeout_s is not None
        await asyncio.sleep(self.unused_timeout_s)
        if not any(sub.session_id == session.session_id for sub in self.subscriptions.values()):
            await self._close(session, ws, 4003, "connection unused")

    async def _expire_old(self, session: FakeSession, old: web.WebSocketResponse) -> None:
        await asyncio.sleep(self.reconnect_grace_s)
        if not old.closed:
            await self.close_websocket(
                old, code=4004, message=b"client reconnect grace time expired"
            )

    def _live(self) -> list[FakeSession]:
        return [s for s in self.sessions.values() if not s.closed and s.ws is not None]

    # --- connection verbs ----------------------------------------------------------------

    async def reconnect(self, session_id: str | None = None, *, redeliver_last: int = 0) -> str:
        """Send ``session_reconnect`` to a session (default: every live one); return the URL.

        Notifications keep going to the old connection until the new one is welcomed, as on
        Twitch. ``redeliver_last`` re-sends that many recent notifications on the new
        connection, with their original message ids (Twitch delivers at least once).
        """
        targets = [self.sessions[session_id]] if session_id else self._live()
        url = ""
        for session in targets:
            url = f"{self.eventsub_url}?reconnect={session.session_id}"
            ws = session.ws
            assert ws is not None
            session.welcomed = False
            await ws.send_str(json.dumps(reconnect_message(session.session_id, url)))
            if redeliver_last:
                self._spawn(self._redeliver(session, ws, redeliver_last))
        return url

    async def _redeliver(
        self, session: FakeSession, old: web.WebSocketResponse, count: int
    ) -> None:
        frames = list(session.recent)[-count:]
        await self.wait_for(lambda: session.ws is not old and session.welcomed, timeout_s=10)
        new = session.ws
        assert new is not None
        for frame in frames:
            await new.send_str(frame)

    async def close_sessions(self, code: int = 4000, reason: str = "internal server error") -> None:
        """Close every live session with ``code`` (twitchio then reconnects and resubscribes)."""
        for session in self._live():
            assert session.ws is not None
            await self._close(session, session.ws, code, reason)

    def stop_keepalives(self) -> None:
        """Stop sending ``session_keepalive`` (clients time out after keepalive + 5 s)."""
        for session in self.sessions.values():
            session.keepalives = False

    async def revoke(self, sub_type: str, *, status: str = "authorization_revoked") -> list[str]:
        """Revoke every enabled subscription of ``sub_type`` and tell its session; return their ids."""
        revoked = []
        for sub in self.enabled(sub_type):
            sub.status = status
            session = self.sessions.get(sub.session_id)
            if session is not None and session.ws is not None and not session.closed:
                await session.ws.send_str(json.dumps(revocation(sub.as_json(), status=status)))
            revoked.append(sub.sub_id)
        self._changed()
        return revoked

    # --- notifications -------------------------------------------------------------------

    async def notify(
        self, sub_type: str, event: Mapping[str, Any], *, message_id: str | None = None
    ) -> list[str]:
        """Send ``event`` to every enabled ``sub_type`` subscription whose condition matches.

        Returns the notification message ids sent (empty when nothing is subscribed).
        """
        sent = []
        for sub in self.enabled(sub_type):
            if not _matches(sub.condition, event):
                continue
            session = self.sessions.get(sub.session_id)
            if session is None or session.closed:
                continue
            ws = session.ws if session.welcomed else session.old_ws or session.ws
            if ws is None or ws.closed:
                continue
            frame = notification(sub.as_json(), event, message_id=message_id)
            text = json.dumps(frame)
            session.recent.append(text)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(text)
                sent.append(frame["metadata"]["message_id"])
        self._changed()
        return sent

    async def chat(
        self,
        text: str,
        *,
        user: TwitchUser = ALICE,
        mention_bot: bool = False,
        message_id: str | None = None,
    ) -> list[str]:
        """``user`` says ``text`` in the broadcaster's chat (``mention_bot`` prepends ``@bot``)."""
        event = chat_message_event(
            broadcaster=self.broadcaster,
            chatter=user,
            text=text,
            message_id=message_id,
            mentions=(BOT,) if mention_bot else (),
        )
        return await self.notify("channel.chat.message", event)

    async def chat_burst(
        self,
        count: int,
        *,
        users: Sequence[TwitchUser] | Callable[[int], TwitchUser] = (ALICE, BOB),
        text: Callable[[int], str] = lambda i: f"message {i}",
        addressed: Callable[[int], bool] = lambda _i: False,
        on_sent: Callable[[int], Any] | None = None,
    ) -> list[str]:
        """Send ``count`` chat messages back to back; ``addressed(i)`` mentions the bot.

        ``users`` is a rotation of chatters, or a function of the message's index.
        """
        ids: list[str] = []
        for i in range(count):
            chatter = users(i) if callable(users) else users[i % len(users)]
            event = chat_message_event(
                broadcaster=self.broadcaster,
                chatter=chatter,
                text=text(i),
                mentions=(BOT,) if addressed(i) else (),
            )
            ids.extend(await self.notify("channel.chat.message", event))
            if on_sent is not None:
                result = on_sent(i)
                if asyncio.iscoroutine(result):
                    await result
        return ids

    async def follow(self, user: TwitchUser = ALICE) -> list[str]:
        return await self.notify(
            "channel.follow", follow_event(broadcaster=self.broadcaster, user=user)
        )

    async def sub(
        self, user: TwitchUser = ALICE, *, tier: str = "1000", is_gift: bool = False
    ) -> list[str]:
        return await self.notify(
            "channel.subscribe",
            sub_event(broadcaster=self.broadcaster, user=user, tier=tier, is_gift=is_gift),
        )

    async def resub(
        self,
        user: TwitchUser = ALICE,
        *,
        months: int = 15,
        streak: int | None = 3,
        text: str = "",
        tier: str = "1000",
    ) -> list[str]:
        return await self.notify(
            "channel.subscription.message",
            resub_event(
                broadcaster=self.broadcaster,
                user=user,
                text=text,
                tier=tier,
                cumulative_months=months,
                streak_months=streak,
            ),
        )

    async def gift(
        self, user: TwitchUser | None = ALICE, *, total: int = 5, tier: str = "1000"
    ) -> list[str]:
        return await self.notify(
            "channel.subscription.gift",
            gift_event(broadcaster=self.broadcaster, user=user, total=total, tier=tier),
        )

    async def cheer(
        self, bits: int, *, user: TwitchUser | None = ALICE, text: str = ""
    ) -> list[str]:
        return await self.notify(
            "channel.cheer",
            cheer_event(broadcaster=self.broadcaster, user=user, bits=bits, text=text),
        )

    async def raid(self, viewers: int, *, raider: TwitchUser = RAIDER) -> list[str]:
        return await self.notify(
            "channel.raid", raid_event(broadcaster=self.broadcaster, raider=raider, viewers=viewers)
        )

    async def redeem(
        self, title: str, user_input: str = "", *, user: TwitchUser = ALICE
    ) -> list[str]:
        return await self.notify(
            "channel.channel_points_custom_reward_redemption.add",
            redemption_event(
                broadcaster=self.broadcaster, user=user, title=title, user_input=user_input
            ),
        )

    async def ad_break(self, duration_s: int = 60, *, automatic: bool = False) -> list[str]:
        return await self.notify(
            "channel.ad_break.begin",
            ad_break_event(
                broadcaster=self.broadcaster, duration_s=duration_s, automatic=automatic
            ),
        )


def _matches(condition: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    for key in ("broadcaster_user_id", "to_broadcaster_user_id"):
        if key in condition and str(event.get(key)) != str(condition[key]):
            return False
    return True
