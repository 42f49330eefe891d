"""Secret-leak canaries: every secret set to a canary, failures provoked, everything produced scanned.

The canary profile (:mod:`tests.reliability.canaries`) sets a distinct value for
every entry of ``SECRET_FIELDS`` and a second master key version. Each scenario
then runs ``familiar`` as an operator does (a subprocess, ``-vv`` so every
library logs at DEBUG) against the loopback fakes and provokes failures whose
text carries secrets: OpenRouter 401/400/502 and a mid-stream error echoing the
key, a response whose headers reflect the ``Authorization`` header (httpcore logs
response headers at DEBUG), error messages with ``?token=`` URLs, Discord
rejecting the token on login with a body that repeats it, a Discord send refused
with a body holding the token, a dashboard login with the wrong secret; with Twitch
(canary OAuth tokens in the vault), a viewer pasting the bot's token, a Helix 401 and the
refresh, an EventSub close whose resubscription is refused with a body twitchio logs, and
a refused refresh that stops the process. Then it
scans stdout (terminal output, notices), stderr (console and JSON logs), the
Discord messages and files sent, the prompts sent to the model, the dashboard's
responses and live stream, and every file of the familiar (SQLite file with its
``-wal``/``-shm``, memory notes, ``audit.jsonl``, ``operator_actions.jsonl``)
for every canary in raw, URL-encoded, JSON-escaped and partial form, and fails
naming where it found one.

Voice (:class:`TestVoiceCanaries`) runs in this process (``tests/reliability/rig_voice.py``,
logging configured as ``-vv --log-format json``): keys said aloud and repeated by the model,
a Cartesia error carrying its key, a voice websocket close, a Deepgram 401 echoing the key;
what was sent to Cartesia to be spoken is scanned too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from familiar_connect.errors import ProviderError
from familiar_connect.settings import SECRET_FIELDS, load_settings
from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer
from familiar_connect.storage.db import open_database
from familiar_connect.storage.vault import Vault
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.deepgram import FakeDeepgram
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import GENERAL_ID
from tests.fakes.openrouter import CHAT_PATH, FakeOpenRouter
from tests.fakes.twitch import ALICE, BOB, BOT, STREAMER
from tests.familiar_process import run_familiar
from tests.reliability.canaries import (
    CANARIES,
    MASTER_KEY_V2,
    TWITCH_TOKENS,
    canary_env,
    discord_sent,
    files_under,
    model_requests,
    scan,
)
from tests.reliability.figures import record, timeout_s
from tests.reliability.proc import LiveProcess
from tests.reliability.rig import LLM_KEY, captured_logging, rig
from tests.reliability.rig_twitch import (
    BOT_SCOPES,
    BROADCASTER_SCOPES,
    RigTwitch,
    store_tokens,
    stored,
)
from tests.reliability.rig_voice import voice_rig

OPENROUTER = CANARIES["openrouter_api_key"]
DISCORD = CANARIES["discord_token"]
DEEPGRAM = CANARIES["deepgram_api_key"]
DASHBOARD = CANARIES["familiar_dashboard_token"]
MARKER = "[REDACTED]"

CHARACTER = """
[policy]
rate_per_minute = 10000
burst = 1000

[memory_writer]
enabled = false

[voice]
tts_voice = "canary-voice-id"
"""
# The speech keys are canaries too, so voice is configured: its providers are pointed at a
# closed loopback port, never at the real services.
CLOSED = "127.0.0.1:9"

DASHBOARD_PATHS = (
    "/",
    "/api/session",
    "/api/live",
    "/api/latency",
    "/api/charts/latency.svg?modality=text",
    "/api/charts/stages.svg?modality=text",
    "/api/charts/usage.svg",
    "/api/providers",
    "/api/usage",
    "/api/memory/list",
    "/api/memory/list?path=people",
    "/api/memory/note?path=people/discord-1001.md",
    "/api/memory/audit?refresh=1",
    "/metrics",
    "/healthz",
)


class ReflectingOpenRouter(FakeOpenRouter):
    """FakeOpenRouter that can answer once like a careless proxy: the caller's headers echoed back.

    After :meth:`reflect_next`, the next chat request gets a 401 whose response
    headers and JSON message repeat the request's ``Authorization`` header.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reflections = 0
        self._reflect = 0

    def reflect_next(self) -> None:
        """The next request's credentials come back in the 401's headers and message."""
        self._reflect += 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self._reflect and request.path == CHAT_PATH:
            self._reflect -= 1
            self.reflections += 1
            auth = request.headers.get("Authorization", "")
            return self.http_error(
                401,
                body={"error": {"code": 401, "message": f"invalid credentials: {auth}"}},
                headers={"X-Echo-Authorization": auth, "X-Debug-Url": f"/v1?key={auth[7:]}"},
            )
        return await super()._chat(request)


def familiar_env(
    tmp_path: Path, llm: FakeOpenRouter, discord: FakeDiscord | None
) -> dict[str, str]:
    env = {
        **canary_env(),
        "FAMILIAR_ID": "canary",
        "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
        "OPENROUTER_BASE_URL": llm.api_base,
        "LLM_MAX_RETRIES": "0",
        "DASHBOARD_PORT": "0",
        "DEEPGRAM_WS_BASE": f"ws://{CLOSED}",
        "DEEPGRAM_HTTP_BASE": f"http://{CLOSED}",
        "CARTESIA_BASE_URL": f"http://{CLOSED}",
        "CARTESIA_WS_BASE_URL": f"ws://{CLOSED}",
    }
    if discord is not None:
        env["DISCORD_API_BASE"] = discord.api_base
        env["DISCORD_GATEWAY_URL"] = discord.gateway_url
    familiar_dir = tmp_path / "data" / "familiars" / "canary"
    familiar_dir.mkdir(parents=True, exist_ok=True)
    (familiar_dir / "character.toml").write_text(CHARACTER)
    return env


def leak_report(leaks: list[Any]) -> str:
    return "canaries found:\n" + "\n".join(f"  - {leak}" for leak in leaks)


async def mention_and_wait(discord: FakeDiscord, text: str, posted_before: int) -> None:
    """Mention the familiar in #general and wait for its next message there."""
    await discord.user_says(text, mentions_bot=True)
    await discord.wait_for(
        lambda: len(discord.messages_sent(GENERAL_ID)) > posted_before,
        timeout_s=timeout_s(30),
    )


class TestCanaryProfile:
    def test_every_secret_setting_has_a_distinct_canary(self) -> None:
        """Each SECRET_FIELDS entry (and a master key V2) has its own canary, accepted by the settings."""
        assert set(CANARIES) == set(SECRET_FIELDS)
        values = [*CANARIES.values(), MASTER_KEY_V2]
        assert len(set(values)) == len(values)
        settings = load_settings(env_file=None, environ=canary_env(), **CANARIES)
        assert sorted(settings.secret_values()) == sorted(values)
        record("canaries", "profile", canaries_planted=len(values))


@pytest.mark.slow
class TestFamiliarRunCanaries:
    async def test_provoked_failures_leak_no_canary_anywhere(self, tmp_path: Path) -> None:
        """`familiar -vv run` with Discord and the dashboard, provoked into failures, shows no canary."""
        async with (
            FakeDiscord(bot_token=DISCORD) as discord,
            ReflectingOpenRouter(expected_api_key=OPENROUTER) as llm,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            env = familiar_env(tmp_path, llm, discord)
            env["LOG_FORMAT"] = "json"
            proc = await LiveProcess.start("-vv", "run", cwd=tmp_path, env=env)
            bodies: list[tuple[str, str | bytes]] = []
            try:
                port = await proc.dashboard_port()
                base = f"http://127.0.0.1:{port}"
                await discord.wait_for(lambda: discord.synced_commands(900), timeout_s=30)

                # 1. A proxy reflects the credentials (headers and message): 401 notice.
                llm.reflect_next()
                await mention_and_wait(discord, "hello?", 0)
                # 2. A 502 whose message carries URLs with ?api_key= and ?token=.
                llm.reply_http_error(
                    502,
                    message=f"upstream https://up.example/v1/chat?api_key={OPENROUTER}&token={DISCORD}",
                )
                await mention_and_wait(discord, "still there?", 1)
                # 3. A mid-stream error echoing the key and a URL with ?access_token=.
                llm.reply_midstream_error(
                    after_text="Let me think",
                    message=f"key {OPENROUTER} rejected, see https://x.example/cb?access_token={DEEPGRAM}",
                )
                await mention_and_wait(discord, "and now?", 2)
                # 4. A 400 quoting the request's Authorization header.
                llm.reply_http_error(
                    400, message=f"bad request: Authorization: Bearer {OPENROUTER}"
                )
                await mention_and_wait(discord, "one more", 3)
                # 5. A turn that writes memory through a tool (a note, an audit record).
                llm.reply_tool_calls(
                    [
                        (
                            "memory_write",
                            {"path": "people/discord-1001.md", "content": "Alice likes tea.\n"},
                        )
                    ]
                )
                llm.reply_text("Noted, Alice.")
                await mention_and_wait(discord, "remember I like tea", 4)
                # 6. Discord refuses the reply with a body that repeats the bot token.
                discord.fail_next(
                    "POST",
                    r"/channels/500/messages",
                    status=403,
                    body={
                        "message": f"Missing Access for {DISCORD} (https://discord.com/api?token={DISCORD})",
                        "code": 50001,
                    },
                )
                llm.reply_text("This reply will be refused.")
                await discord.user_says("try again", mentions_bot=True)
                await discord.wait_for(
                    lambda: any(c.status == 403 for c in discord.rest_calls), timeout_s=30
                )
                llm.reply_text("Back to normal.")
                await mention_and_wait(discord, "normal now?", 5)
                # 7. Slash commands that show stored data and the last prompt.
                for name, sub in (
                    ("context", None),
                    ("familiar-status", None),
                    ("my-data", "export"),
                ):
                    interaction = await discord.slash(name, subcommand=sub)
                    await discord.wait_for(
                        lambda i=interaction: discord.interaction_callbacks(i), timeout_s=30
                    )

                # 8. The dashboard: a wrong login carrying another secret, then every page.
                async with http.get(f"{base}/?token={quote(OPENROUTER, safe='')}") as response:
                    assert response.status == 401
                    bodies.append(("dashboard wrong login", await response.text()))
                async with http.get(
                    f"{base}/?token={quote(DASHBOARD, safe='')}", allow_redirects=False
                ) as response:
                    assert response.status == 303
                    bodies.append(("dashboard login Location", response.headers["Location"]))
                    cookie = "; ".join(f"{c.key}={c.value}" for c in response.cookies.values())
                headers = {"Cookie": cookie}
                async with http.get(f"{base}/api/session", headers=headers) as response:
                    csrf = (await response.json())["csrf"]
                post = {**headers, "X-CSRF-Token": csrf}
                for action, payload in (
                    ("pause", {}),
                    ("resume", {}),
                    ("mute", {"user": "discord:1002"}),
                    ("cancel", {"conversation": "discord:500"}),
                ):
                    async with http.post(
                        f"{base}/api/control/{action}", json=payload, headers=post
                    ) as response:
                        bodies.append((f"dashboard POST {action}", await response.text()))
                stream = await http.get(f"{base}/api/events", headers=headers)
                bodies.append(("dashboard /api/events", await stream.content.readany()))
                stream.close()
                for path in DASHBOARD_PATHS:
                    async with http.get(base + path, headers=headers) as response:
                        bodies.append((f"dashboard {path}", await response.text()))
                # While it runs: the database's -wal and -shm exist; scan them as they are.
                running_files = files_under(tmp_path / "data")
            finally:
                code = await proc.finish()

        assert code == 0, proc.err_text[-3000:]
        sources: list[tuple[str, str | bytes]] = [
            ("stdout", proc.out_text),
            ("stderr (JSON log)", proc.err_text),
            *bodies,
            *discord_sent(discord),
            *model_requests(llm),
            *[(f"{where} (while running)", data) for where, data in running_files],
            *files_under(tmp_path / "data"),
        ]
        leaks = scan(sources)
        assert leaks == [], leak_report(leaks)

        # The provocations really happened, and what they carried arrived scrubbed.
        log = proc.err_text
        assert llm.reflections == 1
        assert "receive_response_headers" in log and "X-Echo-Authorization" in log
        assert log.count('"turn_failed"') >= 4
        assert '"discord_send_failed"' in log and '"dashboard_login_failed"' in log
        notices = [c.json["content"] for c in discord.messages_sent(GENERAL_ID)]
        assert any("key was rejected" in n for n in notices)
        files = {where for where, _ in running_files}
        assert {
            "file familiars/canary/familiar.db-wal",
            "file familiars/canary/audit.jsonl",
        } <= files
        assert (tmp_path / "data/familiars/canary/operator_actions.jsonl").exists()
        assert (tmp_path / "data/familiars/canary/memory/people/discord-1001.md").exists()
        redactions = sum(
            (data if isinstance(data, str) else data.decode(errors="replace")).count(MARKER)
            for _, data in sources
        )
        assert redactions >= 8
        record(
            "canaries",
            "familiar run",
            canaries_planted=len(CANARIES) + 1,
            sources_scanned=len(sources),
            redactions_seen=redactions,
            leaks_found=len(leaks),
        )

    @pytest.mark.parametrize("fmt", ["json", "console"])
    async def test_discord_rejecting_the_token_leaks_nothing(
        self, tmp_path: Path, fmt: str
    ) -> None:
        """A 401 on login whose body repeats the token ends with exit 2 and no canary anywhere."""
        async with (
            FakeDiscord(bot_token="the-token-discord-expects-0123") as discord,
            FakeOpenRouter(expected_api_key=OPENROUTER) as llm,
        ):
            discord.fail_next(
                "GET",
                r"/users/@me",
                status=401,
                body={"message": f"401: Unauthorized: Bot {DISCORD} (?token={DISCORD})", "code": 0},
            )
            env = familiar_env(tmp_path, llm, discord)
            code, out, err = await run_familiar(
                "-vv", "--log-format", fmt, "run", cwd=tmp_path, env=env, timeout_s=timeout_s(60)
            )
        assert code == 2, err[-3000:]
        assert "DISCORD_TOKEN" in err and "Traceback" not in err.split("familiar: ")[-1]
        leaks = scan(
            [("stdout", out), (f"stderr ({fmt} log)", err), *files_under(tmp_path / "data")]
        )
        assert leaks == [], leak_report(leaks)
        record("canaries", f"discord 401 ({fmt})", leaks_found=len(leaks))


@pytest.mark.slow
class TestChatCanaries:
    async def test_terminal_failures_leak_no_canary(self, tmp_path: Path) -> None:
        """`familiar -vv chat` through a reflected 401, a mid-stream error and a tool write shows no canary."""
        async with ReflectingOpenRouter(expected_api_key=OPENROUTER) as llm:
            llm.reflect_next()
            llm.reply_midstream_error(
                after_text="Half a thought", message=f"key {OPENROUTER} expired ?token={DISCORD}"
            )
            llm.reply_tool_calls(
                [("memory_append", {"path": "topics/tea.md", "content": "Green tea.\n"})]
            )
            llm.reply_text("Written down.")
            env = familiar_env(tmp_path, llm, None)
            env["FAMILIAR_DASHBOARD_TOKEN"] = DASHBOARD
            code, out, err = await run_familiar(
                "-vv",
                "chat",
                "--dashboard",
                cwd=tmp_path,
                env=env,
                stdin="hello\nwhat now\nremember tea\n",
                timeout_s=timeout_s(60),
            )
            requests = model_requests(llm)
        assert code == 0, err[-3000:]
        assert "key was rejected" in out and "Half a thought" in out and "Written down." in out
        leaks = scan(
            [("stdout (terminal)", out), ("stderr (console log)", err), *requests]
            + files_under(tmp_path / "data")
        )
        assert leaks == [], leak_report(leaks)
        record(
            "canaries", "familiar chat", leaks_found=len(leaks), redactions_seen=err.count(MARKER)
        )


@pytest.mark.slow
class TestCommandCanaries:
    async def test_check_keys_and_memory_commands_leak_nothing(self, tmp_path: Path) -> None:
        """`check`, `keys rotate/audit` and `memory verify/audit` print and store no canary."""
        vault_secret = "cnryVaultStored+Z6u1E8gIj0Av2Fm9/oauth="
        async with FakeOpenRouter() as llm:
            env = familiar_env(tmp_path, llm, None)
        # What the Twitch adapter will keep: an OAuth token, in the encrypted vault.
        db = await open_database(tmp_path / "data" / "familiars" / "canary" / "familiar.db")
        try:
            await Vault(db, {1: CANARIES["familiar_master_key"]}).put("twitch_oauth", vault_secret)
        finally:
            await db.close()
        outputs: list[tuple[str, str]] = []
        for args in (
            ("check",),
            ("keys", "rotate"),
            ("keys", "audit"),
            ("memory", "verify"),
            ("memory", "audit"),
            ("-vv", "--log-format", "json", "keys", "rotate"),
        ):
            code, out, err = await run_familiar(*args, cwd=tmp_path, env=env)
            assert code == 0, (args, err[-2000:])
            name = "familiar " + " ".join(args)
            outputs += [(f"{name} stdout", out), (f"{name} stderr", err)]
        assert "key version 2: 1 secrets" in "".join(out for _, out in outputs)
        sources = [*outputs, *files_under(tmp_path / "data")]
        leaks = scan(sources)
        stored = [
            where for where, data in files_under(tmp_path / "data") if vault_secret.encode() in data
        ]
        assert leaks == [], leak_report(leaks)
        assert stored == [], stored
        record("canaries", "cli commands", commands=6, leaks_found=len(leaks) + len(stored))


class TestConversationTextCanaries:
    async def test_pasted_secret_is_not_stored_or_sent(self, tmp_path: Path) -> None:
        """A user who pastes the familiar's own key into Discord does not get it into history or the prompt."""
        async with rig(tmp_path) as r:
            r.llm.reply_text("I won't repeat that.")
            await r.mention(f"is this your key? {LLM_KEY}")
            await r.wait_posted(1)
            await r.idle()
            prompt = r.llm.chat_requests[0].body
            familiar_dir = r.familiar.settings.familiar_dir
            stored = [w for w, data in files_under(familiar_dir) if LLM_KEY.encode() in data]
        assert LLM_KEY.encode() not in prompt
        assert stored == []

    async def test_reply_repeating_a_secret_is_not_posted(self, tmp_path: Path) -> None:
        """A model reply that repeats a configured secret is posted and stored with it redacted."""
        async with rig(tmp_path) as r:
            r.llm.reply_text(f"Sure, my key is {LLM_KEY}.")
            await r.mention("what is your key?")
            posted = await r.wait_posted(1)
            await r.idle()
            rows = await r.familiar.db.fetchall("SELECT content FROM turns", (), what="t")
        assert all(LLM_KEY not in text for text in posted)
        assert all(LLM_KEY not in row[0] for row in rows)


class TestOperatorLogCanaries:
    async def test_secret_in_a_control_target_is_not_written_to_disk(self, tmp_path: Path) -> None:
        """A secret pasted as a control's target is redacted in operator_actions.jsonl too."""
        async with rig(tmp_path) as r:
            creds = await r.login()
            async with r.http.post(
                f"{r.base_url}/api/control/cancel",
                json={"conversation": f"discord:{LLM_KEY}"},
                headers=creds.post_headers,
            ) as response:
                assert response.status == 200
                body = await response.text()
            written = (r.familiar.settings.familiar_dir / "operator_actions.jsonl").read_text()
        assert LLM_KEY not in body
        assert LLM_KEY not in written


# --- Twitch ----------------------------------------------------------------------------------

TWITCH_SECRET = CANARIES["twitch_client_secret"]
BOT_ACCESS = TWITCH_TOKENS["twitch_bot_access"]
BOT_REFRESH = TWITCH_TOKENS["twitch_bot_refresh"]


@pytest.mark.slow
class TestTwitchCanaries:
    async def test_twitch_failures_leak_no_canary(self, tmp_path: Path) -> None:
        """`familiar -vv run` with Twitch through a token refresh, EventSub close and refused refresh shows no canary."""
        async with (
            FakeDiscord(bot_token=DISCORD) as discord,
            FakeOpenRouter(expected_api_key=OPENROUTER) as llm,
            RigTwitch(client_secret=TWITCH_SECRET) as twitch,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            env = {
                **familiar_env(tmp_path, llm, discord),
                "LOG_FORMAT": "json",
                "TWITCH_CLIENT_ID": twitch.client_id,
                "TWITCH_CHANNEL": STREAMER.login,
                "TWITCH_HELIX_BASE": twitch.helix_base,
                "TWITCH_ID_BASE": twitch.id_base,
                "TWITCH_EVENTSUB_WS": twitch.eventsub_url,
            }
            # What `familiar twitch login` leaves: both accounts' tokens (canaries), in the vault.
            await store_tokens(
                tmp_path / "data" / "familiars" / "canary",
                {1: CANARIES["familiar_master_key"], 2: MASTER_KEY_V2},
                [
                    stored(twitch, "bot", BOT, BOT_SCOPES, access=BOT_ACCESS, refresh=BOT_REFRESH),
                    stored(
                        twitch,
                        "broadcaster",
                        STREAMER,
                        BROADCASTER_SCOPES,
                        access=TWITCH_TOKENS["twitch_broadcaster_access"],
                        refresh=TWITCH_TOKENS["twitch_broadcaster_refresh"],
                    ),
                ],
            )
            proc = await LiveProcess.start("-vv", "run", cwd=tmp_path, env=env)
            bodies: list[tuple[str, str | bytes]] = []
            code: int | None = None
            try:
                port = await proc.dashboard_port()
                base = f"http://127.0.0.1:{port}"
                subscribed = 8  # chat and the seven channel events on by default
                await twitch.wait_for(lambda: len(twitch.enabled()) >= subscribed, timeout_s=30)

                # 1. A viewer pastes the bot's token and the app secret; twitchio logs the
                # notification it received (DEBUG), the orchestrator stores and prompts it.
                llm.reply_text("I will not repeat that.")
                await twitch.chat(
                    f"is this yours? {BOT_ACCESS} {TWITCH_SECRET}", user=ALICE, mention_bot=True
                )
                await twitch.wait_for(lambda: len(twitch.chat_sent) >= 1, timeout_s=30)
                # 2. Helix 401 on the send: twitchio refreshes (client secret and refresh token
                # in the token request's query string), retries, and the new pair is saved.
                twitch.expire(BOT_ACCESS)
                llm.reply_text("Refreshed and here.")
                await twitch.chat("are you there?", user=ALICE, mention_bot=True)
                await twitch.wait_for(lambda: len(twitch.chat_sent) >= 2, timeout_s=30)
                assert twitch.refreshes == 1
                # 3. EventSub closes (4000, a reason holding a token); twitchio reconnects and one
                # resubscription is refused with a body echoing secrets, which twitchio logs
                # with its own request line at ERROR.
                fresh = twitch.current_token(BOT)
                assert fresh is not None and fresh.refresh is not None
                twitch.fail_next(
                    "/helix/eventsub/subscriptions",
                    500,
                    body={
                        "error": f"Internal error for {fresh.access}",
                        "status": 500,
                        "message": f"session lost; client_secret={TWITCH_SECRET} "
                        f"refresh_token={fresh.refresh}",
                    },
                )
                subscribes = len(twitch.requests_to("/helix/eventsub/subscriptions"))
                await twitch.close_sessions(4000, f"gone; token {fresh.access}"[:100])
                await twitch.wait_for(
                    lambda: (
                        len(twitch.requests_to("/helix/eventsub/subscriptions"))
                        >= subscribes + subscribed
                    ),
                    timeout_s=30,
                )
                # 4. The dashboard, with the Twitch row and its errors.
                async with http.get(
                    f"{base}/?token={quote(DASHBOARD, safe='')}", allow_redirects=False
                ) as response:
                    assert response.status == 303
                    cookie = "; ".join(f"{c.key}={c.value}" for c in response.cookies.values())
                for path in ("/api/providers", "/api/live", "/metrics", "/healthz"):
                    async with http.get(base + path, headers={"Cookie": cookie}) as response:
                        bodies.append((f"dashboard {path}", await response.text()))
                running_files = files_under(tmp_path / "data")
                # 5. The token expires again and Twitch refuses the refresh, with a body echoing
                # the refresh token and the secret: the process stops with a clear message.
                current = twitch.current_token(BOT)
                assert current is not None
                twitch.expire(current.access)
                twitch.fail_next(
                    "/id/oauth2/token",
                    400,
                    body={
                        "status": 400,
                        "message": f"Invalid refresh token {current.refresh} "
                        f"for client_secret={TWITCH_SECRET}",
                    },
                )
                llm.reply_text("You will never see this.")
                llm.reply_text("Nor this.")
                # One of chat and follows lost its subscription in step 3; the other asks.
                await twitch.chat("hello again?", user=ALICE, mention_bot=True)
                await twitch.follow(BOB)
                code = await asyncio.wait_for(proc.process.wait(), timeout=timeout_s(60))
            finally:
                final = await proc.finish()
                code = final if code is None else code
            # Every token the fake issued (app tokens, refreshed pairs), canaries or not.
            issued = {
                f"twitch {kind} token #{i}": value
                for i, token in enumerate(twitch.tokens.values())
                for kind, value in (("access", token.access), ("refresh", token.refresh))
                if value
            }
            said = [("twitch chat sent", m.text) for m in twitch.chat_sent]

        assert code == 2, proc.err_text[-3000:]
        assert "familiar twitch login" in proc.err_text
        sources: list[tuple[str, str | bytes]] = [
            ("stdout", proc.out_text),
            ("stderr (JSON log)", proc.err_text),
            *bodies,
            *said,
            *discord_sent(discord),
            *model_requests(llm),
            *[(f"{where} (while running)", data) for where, data in running_files],
            *files_under(tmp_path / "data"),
        ]
        leaks = scan(sources, also=issued)
        assert leaks == [], leak_report(leaks)

        # The provocations really happened, and what they carried arrived scrubbed.
        log = proc.err_text
        assert twitch.refreshes == 1 and '"twitch_token_refreshed"' in log
        assert "Received close message [4000]" in log
        # twitchio's own lines about its traffic carried secrets, and show them scrubbed: the
        # notification it received (DEBUG) and the resubscription it failed (ERROR, with its
        # request URL and the response body).
        for needle in ("is this yours?", "Unable to resubscribe"):
            lines = [line for line in log.splitlines() if needle in line]
            assert lines and all(MARKER in line for line in lines), (needle, lines[:2])
        assert '"twitch_chat_send_unauthorised"' in log
        assert any("is this yours?" in r.body.decode() for r in llm.chat_requests)
        redactions = sum(
            (data if isinstance(data, str) else data.decode(errors="replace")).count(MARKER)
            for _, data in sources
        )
        assert redactions >= 5
        record(
            "canaries",
            "familiar run (twitch)",
            canaries_planted=len(CANARIES) + 1 + len(TWITCH_TOKENS),
            runtime_tokens_scanned=len(issued),
            sources_scanned=len(sources),
            redactions_seen=redactions,
            leaks_found=len(leaks),
        )


# --- Voice ------------------------------------------------------------------------------------

CARTESIA = CANARIES["cartesia_api_key"]
VOICE_DASHBOARD_PATHS = ("/api/providers", "/api/live", "/api/latency", "/metrics", "/healthz")


class ReflectingDeepgram(FakeDeepgram):
    """FakeDeepgram that can refuse once like a careless proxy: the key echoed back in a 401.

    After :meth:`reflect_next`, the next connection gets a 401 whose headers and JSON body
    repeat the upgrade's ``Authorization`` header (websockets logs response headers at DEBUG;
    the SDK keeps headers and body in its ``ApiError``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reflections = 0
        self._reflect = 0

    def reflect_next(self) -> None:
        self._reflect += 1

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        if not self._reflect:
            return await super()._listen(request)
        self._reflect -= 1
        self.reflections += 1
        auth = request.headers.get("Authorization", "")
        return self.http_error(
            401,
            body={"err_code": "INVALID_AUTH", "err_msg": f"Invalid credentials: {auth}"},
            headers={"X-Echo-Authorization": auth, "X-Debug-Url": f"/v1/listen?key={auth[6:]}"},
        )


class TestVoiceCanaries:
    async def test_voice_failures_leak_no_canary(self, tmp_path: Path) -> None:
        """Voice through a Cartesia error, a voice close, a reflected Deepgram 401 and pasted keys shows no canary."""
        secrets = {name: CANARIES[name] for name in SECRET_FIELDS}
        async with (
            FakeOpenRouter(expected_api_key=OPENROUTER) as llm,
            ReflectingDeepgram(api_key=DEEPGRAM) as deepgram,
            FakeCartesia(api_key=CARTESIA, seconds_per_char=0.004) as cartesia,
            voice_rig(
                tmp_path,
                settings=secrets,
                discord_token=DISCORD,
                llm=llm,
                deepgram=deepgram,
                cartesia=cartesia,
                log_level="NOTSET",  # as `familiar -vv`: every library logs at DEBUG
            ) as v,
        ):
            r = v.rig
            await v.join()
            # 1. A member says the Deepgram key aloud; the model repeats the Cartesia key, which
            # would be spoken: neither may be stored, prompted, synthesised or posted.
            r.llm.reply_text(f"My speech key is {CARTESIA}, and yours is safe with me.")
            await v.say(f"Familiar, my Deepgram key is {DEEPGRAM}")
            await v.wait_utterances(1)
            await v.settle()
            # 2. Cartesia answers with an error that carries its key and a ?api_key= URL (in
            # the middle: see test_secret_at_the_end_of_a_long_websocket_frame for the end).
            cartesia.fail_next(
                500,
                message=f"bad key {CARTESIA}, see https://x.example/tts?api_key={CARTESIA} "
                "for what went wrong with this request and how to fix it",
            )
            r.llm.reply_text("This reply goes out as text instead.")
            posted = len(v.posted())
            await v.say("Familiar, say something")
            await r.wait_posted(posted + 1)
            await v.settle()
            # 3. The voice websocket closes with a reason holding the bot token: rejoined.
            await v.voice.close_voice(4015, f"session of {DISCORD} ended")
            await v.voice.wait_for(lambda: v.manager.stats.rejoins == 1, timeout_s=timeout_s(30))
            # 4. Deepgram refuses the key with a 401 that echoes it (headers and body).
            deepgram.reflect_next()
            await v.say("Familiar, can you hear me?")
            await r.wait_posted(posted + 2)
            # 5. The dashboard, with the provider rows and their errors.
            async with r.http.get(
                f"{r.base_url}/?token={quote(DASHBOARD, safe='')}", allow_redirects=False
            ) as response:
                assert response.status == 303
                cookie = "; ".join(f"{c.key}={c.value}" for c in response.cookies.values())
            bodies: list[tuple[str, str | bytes]] = []
            for path in VOICE_DASHBOARD_PATHS:
                async with r.http.get(r.base_url + path, headers={"Cookie": cookie}) as response:
                    bodies.append((f"dashboard {path}", await response.text()))
            familiar_dir = r.familiar.settings.familiar_dir
            running_files = files_under(familiar_dir)
            spoken = [
                (f"cartesia transcript {context.context_id}", "\n".join(context.transcripts))
                for context in cartesia.contexts.values()
            ]
            voice_frames = [
                (f"discord voice op {frame.op}", json.dumps(frame.d)) for frame in v.voice.received
            ]
            rows = await v.voice_rows()
            sources: list[tuple[str, str | bytes]] = [
                ("JSON log", r.log.text),
                *bodies,
                *spoken,
                *voice_frames,
                *discord_sent(r.discord),
                *model_requests(llm),
                *[(f"{where} (while running)", data) for where, data in running_files],
            ]
        sources += files_under(familiar_dir)
        leaks = scan(sources)
        assert leaks == [], leak_report(leaks)

        # The provocations really happened, and what they carried arrived scrubbed.
        assert deepgram.reflections == 1 and cartesia.contexts
        assert ("user", f"Familiar, my Deepgram key is {MARKER}") in rows, rows[:4]
        log = r.log.text
        for event in ("voice_tts_failed", "voice_rejoined", "voice_stt_auth_failed"):
            assert f'"{event}"' in log, event
        assert "X-Echo-Authorization" in log  # websockets logged the 401's headers
        redactions = sum(
            (data if isinstance(data, str) else data.decode(errors="replace")).count(MARKER)
            for _, data in sources
        )
        assert redactions >= 5
        record(
            "canaries",
            "voice (in-process run, -vv)",
            canaries_planted=len(secrets),
            sources_scanned=len(sources),
            redactions_seen=redactions,
            leaks_found=len(leaks),
        )

    async def test_secret_at_the_end_of_a_long_websocket_frame(self) -> None:
        """A Cartesia error frame ending in the key leaves no part of it in the `-vv` log."""
        with captured_logging("NOTSET", [CARTESIA]) as log:
            async with FakeCartesia(api_key=CARTESIA) as cartesia:
                tts = CartesiaSynthesizer(
                    CARTESIA,
                    base_url=cartesia.base_url,
                    ws_base_url=cartesia.ws_base_url,
                    voice_id="voice-canary",
                )
                cartesia.fail_next(500, message=f"this key was refused: {CARTESIA}")
                try:
                    context = await tts.new_context()
                    await context.say("Hello there.")
                    await context.finish()
                    with contextlib.suppress(ProviderError):
                        async for _ in context.stream():
                            pass
                finally:
                    await tts.aclose()
            text = log.text
        assert '"cartesia' in text or "websockets" in text  # the exchange was logged
        leaks = scan([("JSON log", text)])
        assert leaks == [], leak_report(leaks)
