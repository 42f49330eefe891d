"""Soak: concurrent Discord and terminal conversations, with a dashboard watching, for a while.

``scripts/reliability/soak_driver.py`` runs the familiar as ``familiar run``
does (Discord and the dashboard) plus a terminal conversation and a sampler; the
familiar is alone in its process, so its RSS, file descriptors and asyncio
tasks are its own. From here, four Discord conversations (two channels, a
thread, a DM) talk to it through the fake as fast as it answers, and a dashboard
client polls ``/api/live`` and opens and drops live streams. Then SIGTERM.

Checks: after a warm-up, RSS, open file descriptors and task count stay flat
(their growth is bounded, and the slopes are reported); queue depths (inboxes,
history writer) are back to zero at rest; nothing was dropped or failed; no
error or traceback in the JSON log; the process exits 0 with no task left.

Duration: ``FAMILIAR_SOAK_S`` seconds (quick default 8; the long profile is
``FAMILIAR_SOAK_S=1800``, sampled every 5 s).

Extension point: a voice conversation and a Twitch flood join the load when
those adapters land (their fakes drive them from this process the same way).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.dashboard.conftest import login
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import ALICE_ID, GENERAL_ID, RANDOM_ID, THREAD_ID
from tests.reliability.fences import ScriptedOpenRouter
from tests.reliability.figures import record, timeout_s
from tests.reliability.proc import start_script

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "reliability" / "soak_driver.py"
SOAK_S = float(os.environ.get("FAMILIAR_SOAK_S", "8"))
SAMPLE_S = 0.5 if SOAK_S <= 60 else 5.0
TOKEN = "soak-discord-token-0123456789"
DASHBOARD_TOKEN = "soak-dashboard-token-0123456789"
# No budgets: a long soak spends far more (fake) tokens than a day's default allowance.
CHARACTER = """
[policy]
rate_per_minute = 10000
burst = 1000
user_daily_tokens = 0
user_daily_cost_usd = 0
familiar_daily_tokens = 0
familiar_daily_cost_usd = 0

[memory_writer]
enabled = false
"""
# Bounds for "flat" after the warm-up (growth from the first to the last third, in means).
MAX_RSS_GROWTH_KB = 12 * 1024 if SOAK_S <= 60 else 24 * 1024
MAX_FD_GROWTH = 4
MAX_TASK_GROWTH = 6


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``xs`` (0 for fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def thirds_growth(samples: list[dict[str, Any]], key: str) -> float:
    """Mean of the last third minus mean of the first third."""
    third = max(1, len(samples) // 3)
    first = [s[key] for s in samples[:third]]
    last = [s[key] for s in samples[-third:]]
    return sum(last) / len(last) - sum(first) / len(first)


def quarters(samples: list[dict[str, Any]], key: str) -> list[int]:
    """Mean of ``key`` over each quarter of the samples (shows a plateau, or its absence)."""
    size = max(1, len(samples) // 4)
    chunks = [samples[i : i + size] for i in range(0, size * 4, size)]
    return [round(sum(s[key] for s in c) / len(c)) for c in chunks if c]


def newest_post(discord: FakeDiscord, channel: int) -> int | None:
    """Id of the newest message the familiar posted in ``channel`` (the fake's log is bounded)."""
    sent = discord.messages_sent(channel)
    return int(sent[-1].response["id"]) if sent else None


async def discord_conversation(discord: FakeDiscord, channel: int, dm: bool, stop: float) -> int:
    """Mention the familiar, wait for the answer, repeat until ``stop``; return turns."""
    turns = 0
    while time.monotonic() < stop:
        before = newest_post(discord, channel)
        if dm:
            await discord.dm(f"dm line {turns}", author="alice")
        else:
            await discord.user_says(f"line {turns}", channel_id=channel, mentions_bot=True)
        await discord.wait_for(
            lambda before=before: newest_post(discord, channel) != before,
            timeout_s=timeout_s(30),
        )
        turns += 1
    return turns


async def dashboard_client(base: str, stop: float) -> int:
    """Poll /api/live and open, read and drop a live stream, until ``stop``; return requests."""
    requests = 0
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        creds = await login(http, base, DASHBOARD_TOKEN)
        while time.monotonic() < stop:
            async with http.get(f"{base}/api/live", headers=creds.headers) as response:
                assert response.status == 200
                await response.read()
            stream = await http.get(f"{base}/api/events", headers=creds.headers)
            await stream.content.readany()
            stream.close()
            requests += 2
            await asyncio.sleep(0.25)
    return requests


@pytest.mark.slow
class TestSoak:
    async def test_resources_stay_flat_and_shutdown_is_clean(self, tmp_path: Path) -> None:
        """Under steady Discord + terminal load, RSS, fds, tasks and queues stay flat; exit is clean."""
        familiar_dir = tmp_path / "data" / "familiars" / "soakfam"
        familiar_dir.mkdir(parents=True)
        (familiar_dir / "character.toml").write_text(CHARACTER)
        async with (
            FakeDiscord(bot_token=TOKEN) as discord,
            ScriptedOpenRouter() as llm,
        ):
            env = {
                "FAMILIAR_ID": "soakfam",
                "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
                "OPENROUTER_BASE_URL": llm.api_base,
                "DISCORD_TOKEN": TOKEN,
                "DISCORD_API_BASE": discord.api_base,
                "DISCORD_GATEWAY_URL": discord.gateway_url,
                "DISCORD_DM_ALLOWLIST": str(ALICE_ID),
                "FAMILIAR_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
                "DASHBOARD_PORT": "0",
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json",
            }
            proc = await start_script(DRIVER, "--sample-s", str(SAMPLE_S), cwd=tmp_path, env=env)
            try:
                port = await proc.dashboard_port()
                await discord.wait_for(lambda: discord.synced_commands(900), timeout_s=30)
                stop = time.monotonic() + SOAK_S
                results = await asyncio.gather(
                    *(
                        discord_conversation(discord, channel, False, stop)
                        for channel in (GENERAL_ID, RANDOM_ID, THREAD_ID)
                    ),
                    discord_conversation(discord, discord.world.add_dm("alice").id, True, stop),
                    dashboard_client(f"http://127.0.0.1:{port}", stop),
                )
                await asyncio.sleep(2 * SAMPLE_S)  # at rest: queues drain
            finally:
                code = await proc.finish(limit_s=60)
        assert code == 0, proc.err_text[-3000:]
        lines = [json.loads(line) for line in proc.out_text.splitlines() if line.startswith("{")]
        samples = [s for s in lines if s["event"] == "sample" and not s.get("final")]
        final = next(s for s in lines if s.get("final"))
        stopped = next(s for s in lines if s["event"] == "stopped")

        # Shutdown: nothing left running.
        assert stopped["pending_tasks"] == []
        # The log: no error, no traceback, nothing unparsable.
        for line in proc.err_text.splitlines():
            if line.startswith(("Dashboard: ", "  (this link")):
                continue  # the login line is printed for the operator, not logged
            event = json.loads(line)
            assert event.get("level") not in ("error", "critical") and "exception" not in event, (
                line
            )
        # Nothing dropped or failed; queues back to zero at rest.
        assert final["failed"] == 0 and final["overflow"] == 0 and final["history_dropped"] == 0
        assert final["inbox"] == 0 and final["history_pending"] == 0

        steady = samples[max(2, len(samples) // 4) :]
        assert len(steady) >= 6, samples
        times = [s["t_s"] for s in steady]
        turns = [s["turns"] for s in steady]
        rss_growth = thirds_growth(steady, "rss_kb")
        fd_growth = thirds_growth(steady, "fds")
        task_growth = thirds_growth(steady, "tasks")
        assert rss_growth <= MAX_RSS_GROWTH_KB, (rss_growth, [s["rss_kb"] for s in steady])
        assert fd_growth <= MAX_FD_GROWTH, [s["fds"] for s in steady]
        assert task_growth <= MAX_TASK_GROWTH, [s["tasks"] for s in steady]
        assert max(s["inbox"] for s in samples) <= 64 * 5
        discord_turns = sum(results[:4])
        total_turns = final["turns"]
        assert discord_turns >= 4 and total_turns > discord_turns
        record(
            "soak",
            f"{SOAK_S:g} s Discord x4 + terminal + dashboard",
            duration_s=SOAK_S,
            turns=total_turns,
            discord_turns=discord_turns,
            dashboard_requests=results[4],
            samples=len(samples),
            rss_start_kb=steady[0]["rss_kb"],
            rss_by_quarter_kb=quarters(steady, "rss_kb"),
            rss_end_kb=final["rss_kb"],
            rss_slope_kb_per_min=round(slope(times, [s["rss_kb"] for s in steady]) * 60, 1),
            rss_slope_kb_per_1000_turns=round(
                slope(turns, [s["rss_kb"] for s in steady]) * 1000, 1
            ),
            fds_min_max=[min(s["fds"] for s in steady), max(s["fds"] for s in steady)],
            fd_slope_per_min=round(slope(times, [s["fds"] for s in steady]) * 60, 2),
            tasks_min_max=[min(s["tasks"] for s in steady), max(s["tasks"] for s in steady)],
            task_slope_per_min=round(slope(times, [s["tasks"] for s in steady]) * 60, 2),
            max_inbox=max(s["inbox"] for s in samples),
            max_history_pending=max(s["history_pending"] for s in samples),
            pending_tasks_after_shutdown=len(stopped["pending_tasks"]),
        )
