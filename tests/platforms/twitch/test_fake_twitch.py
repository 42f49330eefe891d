"""The fake Twitch keeps Twitch's rules: token checks, subscription authorisation, chat limits, close codes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.twitch import ALICE, BOT, STREAMER, FakeTwitch


@pytest.fixture(name="http")
async def fixture_http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(name="fake")
async def fixture_fake() -> AsyncIterator[FakeTwitch]:
    async with FakeTwitch(unused_timeout_s=0.1, reconnect_grace_s=0.05, chat_limit=2) as fake:
        yield fake


def helix(fake: FakeTwitch, token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Client-Id": fake.client_id}


async def welcome(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    message = await ws.receive_json(timeout=5)
    assert message["metadata"]["message_type"] == "session_welcome"
    return message["payload"]["session"]


async def subscribe(
    http: aiohttp.ClientSession,
    fake: FakeTwitch,
    token: str,
    session_id: str,
    sub_type: str = "channel.cheer",
    condition: dict[str, str] | None = None,
) -> int:
    body = {
        "type": sub_type,
        "version": "1",
        "condition": condition or {"broadcaster_user_id": STREAMER.user_id},
        "transport": {"method": "websocket", "session_id": session_id},
    }
    async with http.post(
        fake.helix_base + "eventsub/subscriptions", json=body, headers=helix(fake, token)
    ) as response:
        return response.status


class TestFakeIdentity:
    async def test_validate_and_refresh(
        self, fake: FakeTwitch, http: aiohttp.ClientSession
    ) -> None:
        """validate reports scopes and expiry; a refresh invalidates the old token and issues a pair."""
        access, refresh = fake.issue_token(BOT, ["user:read:chat"])
        async with http.get(
            fake.id_base + "oauth2/validate", headers={"Authorization": f"OAuth {access}"}
        ) as response:
            body = await response.json()
        assert body["user_id"] == BOT.user_id and body["scopes"] == ["user:read:chat"]
        params = {
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh,
        }
        async with http.post(fake.id_base + "oauth2/token", params=params) as response:
            assert response.status == 200
            new = await response.json()
        assert new["access_token"] != access and not fake.tokens[access].valid
        async with http.post(fake.id_base + "oauth2/token", params=params) as response:
            assert response.status == 400  # a refresh token works once


class TestFakeSubscriptions:
    async def test_authorisation_rules(self, fake: FakeTwitch, http: aiohttp.ClientSession) -> None:
        """202 when allowed, 409 on a duplicate, 403 without the scope or for another user's channel."""
        good, _ = fake.issue_token(STREAMER, ["bits:read"])
        no_scope, _ = fake.issue_token(STREAMER, [])
        other, _ = fake.issue_token(ALICE, ["bits:read"])
        async with http.ws_connect(fake.eventsub_url) as ws:
            session = await welcome(ws)
            assert (await subscribe(http, fake, good, session["id"])) == 202
            assert (await subscribe(http, fake, good, session["id"])) == 409
            assert (await subscribe(http, fake, no_scope, session["id"])) == 403
            assert (await subscribe(http, fake, other, session["id"])) == 403
            assert (await subscribe(http, fake, good, "no-such-session")) == 400
            assert await fake.notify("channel.follow", {}) == []
            assert len(await fake.cheer(100)) == 1
            frame = await ws.receive_json(timeout=5)
            assert frame["payload"]["event"]["bits"] == 100


class TestFakeChat:
    async def test_limits_length_and_drops(
        self, fake: FakeTwitch, http: aiohttp.ClientSession
    ) -> None:
        """Over 500 characters is 400, a scripted drop is is_sent false, past the limit is 429."""
        fake.echo_own_messages = False
        token, _ = fake.issue_token(BOT, ["user:write:chat"])
        url = fake.helix_base + "chat/messages"

        async def send(text: str) -> tuple[int, Any]:
            body = {"broadcaster_id": STREAMER.user_id, "sender_id": BOT.user_id, "message": text}
            async with http.post(url, json=body, headers=helix(fake, token)) as response:
                return response.status, await response.json()

        assert (await send("x" * 501))[0] == 400
        fake.drop_next_chat("msg_duplicate", "duplicate")
        status, body = await send("hi")
        assert status == 200 and body["data"][0]["is_sent"] is False
        assert (await send("one"))[0] == 200
        assert (await send("two"))[0] == 429
        assert [sent.text for sent in fake.chat_sent] == ["one"]


class TestFakeWebsocket:
    async def test_inbound_traffic_closes_with_4001(
        self, fake: FakeTwitch, http: aiohttp.ClientSession
    ) -> None:
        """Any message from the client closes the connection with 4001, as on Twitch."""
        async with http.ws_connect(fake.eventsub_url) as ws:
            await welcome(ws)
            await ws.send_str(json.dumps({"hello": 1}))
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 4001

    async def test_unused_connection_closes_with_4003(
        self, fake: FakeTwitch, http: aiohttp.ClientSession
    ) -> None:
        """A connection with no subscription after the window is closed with 4003."""
        async with http.ws_connect(fake.eventsub_url + "?keepalive_timeout_seconds=30") as ws:
            session = await welcome(ws)
            assert session["keepalive_timeout_seconds"] == 30
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 4003

    async def test_reconnect_keeps_the_session_and_expires_the_old_socket(
        self, fake: FakeTwitch, http: aiohttp.ClientSession
    ) -> None:
        """The reconnect URL welcomes with the same session id; the old socket gets 4004 after the grace."""
        token, _ = fake.issue_token(STREAMER, ["bits:read"])
        async with http.ws_connect(fake.eventsub_url) as old:
            session = await welcome(old)
            assert (await subscribe(http, fake, token, session["id"])) == 202
            url = await fake.reconnect()
            frame = await old.receive_json(timeout=5)
            assert frame["metadata"]["message_type"] == "session_reconnect"
            assert frame["payload"]["session"]["reconnect_url"] == url
            async with http.ws_connect(url) as new:
                assert (await welcome(new))["id"] == session["id"]
                message = await old.receive(timeout=5)
                assert old.close_code == 4004, message
                await fake.cheer(300)
                assert (await new.receive_json(timeout=5))["payload"]["event"]["bits"] == 300
