"""No secret reaches the dashboard: canary secrets are configured, provoked into every source, and looked for in every response.

The canaries are real settings (the OpenRouter key the fake checks, plus
Deepgram, Discord, Twitch and master keys). They are then pushed into every
place the dashboard reads: an LLM provider error whose message quotes the key,
a reply that repeats secrets, a supervised service whose exception carries a
token (with the supervisor's default ``repr`` error text), an adapter's error
report, a speaker's display name, and a memory note's name, text and audit
context. Every endpoint, the page, the live stream and ``/metrics`` are then
fetched and searched for each canary in its raw, URL-encoded and JSON forms.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import quote, quote_plus

import aiohttp

from tests.dashboard.conftest import TIMEOUT_S, TOKEN, dashboard_harness, login, wait_until

OPENROUTER_CANARY = "sk-or-v1-canary0openrouter0key0123456789abcdef"
DEEPGRAM_CANARY = "dgCANARY7f3e9a1c5b2d8e4f"
DISCORD_CANARY = "DiscordCanaryToken.Zq8xW3vN.k2Lm9Pq4Rs7Tu"
TWITCH_CANARY = "twitchCanarySecret9Jd8Hf2"
MASTER_CANARY = "masterCanaryKey-4Vb7Nc1Xz"
CANARIES = (OPENROUTER_CANARY, DEEPGRAM_CANARY, DISCORD_CANARY, TWITCH_CANARY, MASTER_CANARY)

ENDPOINTS = (
    "/",
    "/static/app.js",
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
    f"/api/memory/note?path=people/{DEEPGRAM_CANARY}.md",
    "/api/memory/audit?refresh=1",
    "/metrics",
    "/healthz",
)


def forms(secret: str) -> set[str]:
    """The shapes a secret can take in a response body."""
    return {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]}


class FailingGateway:
    """A platform service whose error message carries a token, as careless libraries do."""

    name = "discord"

    async def run(self) -> None:
        raise RuntimeError(f"login failed: Authorization=Bot {DISCORD_CANARY} rejected")


class TestCanarySecrets:
    """Every dashboard response is free of every configured secret."""

    async def test_no_canary_in_any_response(self, tmp_path: Path) -> None:
        """After provoking errors and echoes that contain secrets, no response contains one."""
        settings = {
            "openrouter_api_key": OPENROUTER_CANARY,
            "deepgram_api_key": DEEPGRAM_CANARY,
            "discord_token": DISCORD_CANARY,
            "twitch_client_secret": TWITCH_CANARY,
            "familiar_master_key": MASTER_CANARY,
            "stt_provider": "deepgram",
        }
        bodies: list[tuple[str, str]] = []
        async with (
            dashboard_harness(
                tmp_path,
                expected_api_key=OPENROUTER_CANARY,
                settings_overrides=settings,
                extra_services=[FailingGateway()],
            ) as harness,
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
        ):
            creds = await login(http, harness.base_url)
            stream = await http.get(harness.base_url + "/api/events", headers=creds.headers)

            # An LLM provider error quoting the key and another secret.
            harness.fake.reply_http_error(
                500, message=f"bad key {OPENROUTER_CANARY} (also tried {DEEPGRAM_CANARY})"
            )
            await harness.turn("Wisp, hello", name=f"Mallory {MASTER_CANARY}")
            # A reply that repeats secrets, from a user whose name carries one.
            harness.fake.reply_text(f"The key is {OPENROUTER_CANARY} and {TWITCH_CANARY}.")
            await harness.turn("Wisp, what's the key?", name=f"Eve {TWITCH_CANARY}")
            # An adapter's own error report, and a note the model wrote with secrets in it.
            harness.dashboard.providers.report(
                "stt", error=f"deepgram 401: token={DEEPGRAM_CANARY}", reconnected=True
            )
            await harness.familiar.memory.write_file(
                f"people/{DEEPGRAM_CANARY}.md",
                f"remember {OPENROUTER_CANARY} and {MASTER_CANARY}\n",
                source="tool:write_note",
                context={"author": f"Eve {TWITCH_CANARY}"},
            )
            await wait_until(lambda: harness.supervisor.statuses["discord"].restarts >= 1)
            assert DISCORD_CANARY in (harness.supervisor.statuses["discord"].last_error or "")

            # The live stream, while all of that happened.
            raw = b""
            async with asyncio.timeout(TIMEOUT_S):
                while b"event: turn" not in raw or raw.count(b"event: turn") < 2:
                    raw += await stream.content.readany()
            stream.close()
            bodies.append(("/api/events", raw.decode()))

            for path in ENDPOINTS:
                headers = (
                    {"Authorization": f"Bearer {TOKEN}"} if path == "/metrics" else creds.headers
                )
                async with http.get(harness.base_url + path, headers=headers) as response:
                    assert response.status in (200, 503), path
                    bodies.append((path, await response.text()))

        leaks = [
            (path, secret[:12])
            for path, body in bodies
            for secret in CANARIES
            if any(form in body for form in forms(secret))
        ]
        assert leaks == []
        # The data did flow: it arrived, scrubbed.
        everything = "\n".join(body for _, body in bodies)
        assert everything.count("[REDACTED]") >= 5
        assert "The key is [REDACTED]" in everything
        assert "Mallory [REDACTED]" in everything or "Eve [REDACTED]" in everything
