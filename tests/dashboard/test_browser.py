"""The dashboard in a real browser: Playwright's async API driving Debian's chromium.

One browser per module (the tests share the module's event loop); each test
gets its own familiar, dashboard and browser context. Turns are real: text
and voice events go through ``orchestrator.submit`` to the fake OpenRouter.

Screenshots of each main page go to a temporary directory; set
``FAMILIAR_DASHBOARD_SCREENSHOTS=docs`` to refresh ``docs/images/`` instead.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from familiar_connect.core.events import Author, ConversationKey, Platform, TwitchEvent
from familiar_connect.dashboard import OPERATOR_LOG_NAME
from familiar_connect.storage.usage import UsageRecord
from tests.dashboard.conftest import TIMEOUT_S, TOKEN, Harness, dashboard_harness, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # A rebinding attacker's name that resolves to our loopback address.
    "--host-resolver-rules=MAP evil.example 127.0.0.1",
]
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
EXPECT_MS = 10_000

expect.set_options(timeout=EXPECT_MS)


@pytest_asyncio.fixture(name="browser", scope="module", loop_scope="module")
async def fixture_browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(name="harness", loop_scope="module")
async def fixture_harness(tmp_path: Path) -> AsyncIterator[Harness]:
    async with dashboard_harness(tmp_path) as harness:
        yield harness


@pytest_asyncio.fixture(name="context", loop_scope="module")
async def fixture_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    await context.close()


@pytest_asyncio.fixture(name="page", loop_scope="module")
async def fixture_page(context: BrowserContext) -> Page:
    return await context.new_page()


@pytest.fixture(name="shots")
def fixture_shots(tmp_path: Path) -> Path:
    if os.environ.get("FAMILIAR_DASHBOARD_SCREENSHOTS") == "docs":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path


async def open_logged_in(page: Page, harness: Harness, tab: str = "live") -> None:
    await page.goto(f"{harness.base_url}/?token={TOKEN}")
    await expect(page.locator("body[data-ready=true]")).to_be_attached()
    if tab != "live":
        await page.goto(f"{harness.base_url}/#{tab}")
    await expect(page.locator("#conn")).to_have_text("live")


class TestAccess:
    """Login, cookies and refusals as a browser sees them."""

    async def test_page_without_token_is_401(self, page: Page, harness: Harness) -> None:
        """Opening the dashboard without a token or session answers 401 and explains how to log in."""
        response = await page.goto(harness.base_url + "/")
        assert response is not None and response.status == 401
        await expect(page.locator("h1")).to_have_text("Login required")

    async def test_login_url_sets_cookie_and_strips_token(
        self, page: Page, context: BrowserContext, harness: Harness
    ) -> None:
        """The login URL sets an HttpOnly SameSite=Strict cookie and lands on a URL without the token."""
        await page.goto(f"{harness.base_url}/?token={TOKEN}")
        assert page.url == harness.base_url + "/"
        await expect(page.locator("#familiar-name")).to_have_text("Wisp")
        cookies = await context.cookies()
        assert len(cookies) == 1
        assert cookies[0]["httpOnly"] is True
        assert cookies[0]["sameSite"] == "Strict"
        assert TOKEN not in cookies[0]["value"]
        # The cookie alone now opens the page; a token pasted again is stripped again.
        response = await page.reload()
        assert response is not None and response.status == 200
        await page.goto(f"{harness.base_url}/?token={TOKEN}&x=1")
        assert page.url == harness.base_url + "/?x=1"

    async def test_wrong_token_is_401(self, page: Page, harness: Harness) -> None:
        """A login URL with a wrong token is refused and sets no cookie."""
        response = await page.goto(f"{harness.base_url}/?token=not-the-token-0123456789")
        assert response is not None and response.status == 401
        assert await page.context.cookies() == []

    async def test_foreign_host_is_refused(self, page: Page, harness: Harness) -> None:
        """A page reached under another host name (DNS rebinding) is refused with 403."""
        response = await page.goto(f"http://evil.example:{harness.dashboard.port}/?token={TOKEN}")
        assert response is not None and response.status == 403
        await expect(page.locator("h1")).to_have_text("Forbidden host")

    async def test_post_without_csrf_is_refused(self, page: Page, harness: Harness) -> None:
        """A logged-in page's POST without, or with a forged, CSRF header gets 403 and changes nothing."""
        await open_logged_in(page, harness)
        statuses = await page.evaluate(
            """async () => {
                const bare = await fetch('/api/control/pause', {method: 'POST'});
                const forged = await fetch('/api/control/pause', {
                    method: 'POST', headers: {'X-CSRF-Token': 'forged-0123456789'}});
                return [bare.status, forged.status];
            }"""
        )
        assert statuses == [403, 403]
        assert harness.orchestrator.paused is False


class TestLive:
    """The live view follows real turns over server-sent events."""

    async def test_turn_arrives_over_sse(self, page: Page, harness: Harness) -> None:
        """A turn that runs while the page is open appears in the list without a reload."""
        await open_logged_in(page, harness)
        await page.evaluate("window.__sameDocument = true")
        await harness.turn("Wisp, what is the moon made of?")
        turn = page.locator("#turns li.turn").first
        await expect(turn).to_contain_text("what is the moon made of?")
        await expect(
            page.locator('#conversations tr[data-conversation="discord:500"]')
        ).to_contain_text("Alice")
        await expect(page.locator('[data-counter="replies_out"] .value')).to_have_text("1")
        assert await page.evaluate("window.__sameDocument") is True

    async def test_pause_control_takes_effect(self, page: Page, harness: Harness) -> None:
        """Clicking Pause pauses the familiar, shows the badge and records the operator action."""
        await open_logged_in(page, harness)
        await page.click("#pause-btn")
        await expect(page.locator("#paused-badge")).to_be_visible()
        assert harness.orchestrator.paused is True
        assert harness.say("Wisp, are you there?") == "remembered"
        await page.click("#resume-btn")
        await expect(page.locator("#paused-badge")).to_be_hidden()
        assert harness.orchestrator.paused is False
        log_text = (harness.dashboard.settings.familiar_dir / OPERATOR_LOG_NAME).read_text()
        assert '"action":"pause"' in log_text and '"source":"operator"' in log_text

    async def test_mute_control_takes_effect(self, page: Page, harness: Harness) -> None:
        """Muting a user from the form makes the familiar ignore them; the chip unmutes."""
        await open_logged_in(page, harness)
        await page.fill("#mute-user", "discord:1001")
        await page.click("#mute-form button[type=submit]")
        await expect(page.locator('[data-muted="discord:1001"]')).to_be_visible()
        assert harness.say("Wisp, hello?") == "ignored"
        await page.click('[data-muted="discord:1001"] button')
        await expect(page.locator('[data-muted="discord:1001"]')).to_have_count(0)
        assert "discord:1001" not in harness.orchestrator.muted

    async def test_cancel_turn_in_flight(self, page: Page, harness: Harness) -> None:
        """The Cancel button on a replying conversation cancels the turn in flight."""
        await open_logged_in(page, harness)
        harness.fake.reply_stall(after_text="Let me think about", stall_s=60)
        assert harness.say("Wisp, tell me a long story") == "queued"
        button = page.locator('[data-cancel="discord:500"]')
        await button.click()
        await harness.settle()
        assert harness.orchestrator.stats.cancelled == 1
        await expect(page.locator("#turns li.turn.cancelled")).to_contain_text("Let me think about")


class TestLatency:
    """The latency page draws the turns it was given."""

    async def test_chart_draws_each_turn(self, page: Page, harness: Harness) -> None:
        """Four text and two voice turns become four and two stacked bars with their turn ids."""
        for index in range(4):
            await harness.turn(f"Wisp, question {index}")
        for index in range(2):
            await harness.voice_turn(f"voice question {index}")
        await open_logged_in(page, harness, tab="latency")
        await expect(page.locator("#chart-text g.turn")).to_have_count(4)
        await expect(page.locator("#chart-voice g.turn")).to_have_count(2)
        drawn = await page.locator("#chart-text g.turn").evaluate_all(
            "els => els.map(e => e.dataset.turnId)"
        )
        expected = [
            t.turn_id for t in harness.orchestrator.recent_timings if hasattr(t, "posted_ns")
        ]
        assert drawn == expected
        await expect(page.locator('#stages-text g.stage[data-stage="total"]')).to_contain_text(
            "n=4"
        )
        # A new turn while the page is open is drawn too.
        await harness.turn("Wisp, one more")
        await expect(page.locator("#chart-text g.turn")).to_have_count(5)


class TestScreenshots:
    """Each main page, populated with real turns, renders tidily (and is saved as a picture)."""

    async def test_main_pages(self, page: Page, harness: Harness, shots: Path) -> None:
        """Live, latency, providers, usage and memory pages render their data and are captured."""
        await _populate(harness)
        await open_logged_in(page, harness)
        await expect(page.locator("#turns li.turn")).to_have_count(9)
        await expect(page.locator('tr[data-conversation="discord:500"] .pill.info')).to_have_text(
            "thinking"
        )
        await page.screenshot(path=shots / "dashboard-live.png", full_page=True)

        await page.goto(f"{harness.base_url}/#latency")
        await expect(page.locator("#chart-text g.turn")).to_have_count(6)
        await expect(page.locator("#chart-voice g.turn")).to_have_count(3)
        await page.screenshot(path=shots / "dashboard-latency.png", full_page=True)

        await page.goto(f"{harness.base_url}/#providers")
        llm_row = page.locator('tr[data-provider="llm"]')
        await expect(llm_row.locator(".pill")).to_have_text("failing")
        await expect(llm_row).to_contain_text("1 failed")
        await page.screenshot(path=shots / "dashboard-providers.png", full_page=True)

        await page.goto(f"{harness.base_url}/#usage")
        await expect(page.locator('#usage-users tr[data-user="discord:1001"]')).to_be_visible()
        await expect(page.locator("#chart-usage g.day")).to_have_count(30)
        await page.screenshot(path=shots / "dashboard-usage.png", full_page=True)

        await page.goto(f"{harness.base_url}/#memory")
        await page.click('li[data-path="people"] button')
        await page.click('li[data-path="people/alice.md"] button')
        await expect(page.locator("#note-text")).to_contain_text("oolong")
        await expect(page.locator("#note-audit tbody tr")).to_have_count(2)
        await expect(page.locator("#audit-status")).to_contain_text("Audit chain verified")
        await page.screenshot(path=shots / "dashboard-memory.png", full_page=True)
        assert all((shots / name).stat().st_size > 10_000 for name in _SHOT_NAMES)


_SHOT_NAMES = (
    "dashboard-live.png",
    "dashboard-latency.png",
    "dashboard-providers.png",
    "dashboard-usage.png",
    "dashboard-memory.png",
)


async def _populate(harness: Harness) -> None:
    """Real turns in three conversations, a failed one, usage history and memory notes."""
    fake = harness.fake
    replies = [
        ("Alice", "1001", "Wisp, good morning!", "Good morning, Alice! The kettle's on."),
        ("Carol", "1003", "Wisp, any plans today?", "Reading by the window, mostly."),
        ("Alice", "1001", "Wisp, favourite tea?", "Oolong, always oolong."),
        ("Carol", "1003", "Wisp, tell me a fact", "Octopuses have three hearts."),
    ]
    for index, (name, user, text, reply) in enumerate(replies):
        fake.reply_text(reply, ttft_s=0.05 + 0.03 * index, tokens_per_s=150)
        await harness.turn(text, name=name, user_id=user)
    for index, reply in enumerate(("I'm here, Bob.", "Sure, one moment.", "Goodnight!")):
        fake.reply_text(reply, ttft_s=0.08 + 0.02 * index, tokens_per_s=200)
        await harness.voice_turn(f"line {index}")
    twitch = TwitchEvent(
        key=ConversationKey(Platform.TWITCH, "wispstream"),
        author=Author(Platform.TWITCH, "4242", "dana_plays"),
        kind="chat",
        description="dana_plays: Wisp, say hi to chat!",
        received_ns=time.monotonic_ns(),
    )
    fake.reply_text("Hi chat, welcome in!")
    assert harness.orchestrator.submit(twitch, harness.sink("wispstream")) == "queued"
    key = ConversationKey(Platform.TWITCH, "wispstream")
    await asyncio.wait_for(harness.orchestrator.wait_idle(key), timeout=TIMEOUT_S)
    fake.reply_http_error(502, message="fake upstream error: provider overloaded")
    await harness.turn("Wisp, are you ok?", name="Carol", user_id="1003")

    memory = harness.familiar.memory
    context = {"conversation": "discord:500", "author": "Alice"}
    await memory.write_file(
        "people/alice.md",
        "# Alice\n\n- Regular in #general since spring.\n- Drinks oolong; dislikes mint.\n",
        source="tool:write_note",
        context=context,
    )
    await memory.append_file(
        "people/alice.md", "- Learning the cello.\n", source="memory_writer", context=context
    )
    await memory.write_file(
        "people/carol.md", "# Carol\n\n- Likes odd facts.\n", source="memory_writer"
    )
    await memory.write_file(
        "self/identity.md", "# Wisp\n\nA small, curious light.\n", source="operator"
    )
    await memory.write_file(
        "topics/tea.md", "# Tea\n\nOolong, sencha, rooibos.\n", source="memory_writer"
    )

    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    records = []
    for days_ago in range(1, 30):
        calls = (days_ago * 7) % 11 + 2
        for call in range(calls):
            user = ("1001", "1003", "1002")[call % 3]
            records.append(
                UsageRecord(
                    created_at=today - timedelta(days=days_ago, minutes=call),
                    call_site=("reply", "voice_reply", "memory_writer")[call % 3],
                    model="openrouter/auto",
                    prompt_tokens=1800 + 40 * call,
                    completion_tokens=120 + 10 * call,
                    cost_usd=0.012 + 0.002 * call,
                    platform="discord",
                    user_id=user,
                )
            )
    await harness.familiar.usage.record_many(records)
    # Leave one conversation mid-turn so the live view shows the familiar thinking.
    fake.reply_stall(after_text="Hmm", stall_s=60)
    assert harness.say("Wisp, what's the longest river?", name="Alice") == "queued"
    await wait_until(lambda: harness.orchestrator.is_replying(_key("500")))


def _key(channel: str) -> ConversationKey:
    return ConversationKey(Platform.DISCORD, channel, guild_id="900")
