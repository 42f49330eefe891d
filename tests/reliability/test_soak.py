"""Soak: Discord text and voice, Twitch chat, the terminal and a dashboard client, all at once, for a while.

``scripts/reliability/soak_driver.py`` runs the familiar as ``familiar run`` does (Discord with
its voice presence, Twitch and the dashboard) plus a terminal conversation and a sampler; the
familiar is alone in its process, so its RSS, file descriptors, threads and asyncio tasks are
its own. From here, through the fakes:

- four Discord conversations (two channels, a thread, a DM) talk to it as fast as it answers;
- a voice conversation: Alice runs ``/join-voice``, then says a sentence every few seconds
  (real Opus over the fake voice server, transcribed by the fake Deepgram) and waits until the
  familiar's answer (synthesised by the fake Cartesia) is heard as non-silent Opus;
- a Twitch chat flood (fake EventSub) from eight viewers at a steady rate: ambient chat,
  ``!commands``, and every 40th message @-mentioning the bot, answered in chat through Helix;
- a dashboard client polls ``/api/live`` and opens and drops live streams.

Then SIGTERM. Checks: after a warm-up, RSS, open file descriptors, threads and task count stay
flat (their growth is bounded, and the slopes are reported); queue depths (conversation
inboxes, the history writer, the Twitch adapter's inbox and chat buffers, the voice tasks) are
back to zero at rest; Twitch's books balance (every message sent is handled or counted as
dropped); every sentence said got an audible answer and the last @-mention a Helix reply;
nothing failed; no error or traceback in the JSON log; the process exits 0 with no task left.

Duration: ``FAMILIAR_SOAK_S`` seconds (quick default 8, for CI; the issue's quick profile is
``FAMILIAR_SOAK_S=120``, the long one ``FAMILIAR_SOAK_S=1800``, sampled every 5 s past 60 s).
``FAMILIAR_SOAK_SAMPLES=FILE`` keeps the driver's samples (JSON lines) for plotting, and its
log beside them (``FILE`` with the suffix ``.log``);
``FAMILIAR_SOAK_TRACEMALLOC=1`` (with ``FAMILIAR_SOAK_TRACE_WARMUP_S``/``_EVERY_S``) makes the
driver report which source lines and object types grew (see the driver's docstring); the RSS
bound is not checked then (tracing inflates the RSS by itself).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.dashboard.conftest import login
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.certs import make_cert
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import ALICE_ID, GENERAL_ID, GUILD_ID, RANDOM_ID, THREAD_ID, VOICE_ID
from tests.fakes.twitch import FakeTwitch
from tests.reliability.fences import ScriptedOpenRouter
from tests.reliability.figures import record, timeout_s
from tests.reliability.proc import LiveProcess, start_script
from tests.reliability.soak_twitch import TwitchFlood, arrived, ledger, seed_tokens, twitch_env
from tests.reliability.soak_voice import SoakDeepgram, SoakVoice, VoiceTally, speak_and_listen

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "reliability" / "soak_driver.py"
SOAK_S = float(os.environ.get("FAMILIAR_SOAK_S", "8"))
SAMPLE_S = 0.5 if SOAK_S <= 60 else 5.0
TOKEN = "soak-discord-token-0123456789"
DASHBOARD_TOKEN = "soak-dashboard-token-0123456789"
DEEPGRAM_KEY = "soak-deepgram-key-0123456789abcdef"
CARTESIA_KEY = "soak-cartesia-key-0123456789abcdef"
TWITCH_RATE_PER_S = 20.0
VOICE_PAUSE_S = 2.0
VOICE_REPLY = "Here is a spoken answer for you."
TWITCH_REPLY = "Hello chat, thanks for asking."
# Driver knobs the test passes through (diagnostics for a long run).
PASSED_THROUGH = (
    "FAMILIAR_SOAK_TRACEMALLOC",
    "FAMILIAR_SOAK_TRACEMALLOC_FRAMES",
    "FAMILIAR_SOAK_TRACE_WARMUP_S",
    "FAMILIAR_SOAK_TRACE_EVERY_S",
)
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

[voice]
tts_voice = "voice-soak"
open_to_everyone = true
"""
# Tracing allocations inflates the RSS by itself: a traced run finds culprits, not slopes.
TRACING = os.environ.get("FAMILIAR_SOAK_TRACEMALLOC") == "1"
# Bounds for "flat" after the warm-up (growth from the first to the last third, in means).
MAX_RSS_GROWTH_KB = 12 * 1024 if SOAK_S <= 60 else 24 * 1024
MAX_FD_GROWTH = 4
MAX_TASK_GROWTH = 6
MAX_THREAD_GROWTH = 2


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


def driver_lines(proc: LiveProcess) -> list[dict[str, Any]]:
    """Every complete JSON line the driver printed so far."""
    text = proc.out_text
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]


def samples_of(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in lines if s["event"] == "sample" and not s.get("final")]


async def until_sample(
    proc: LiveProcess, predicate: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    """Wait for a driver sample satisfying ``predicate`` (a hang guard, not a timing check)."""
    deadline = time.monotonic() + timeout_s(60)
    while time.monotonic() < deadline:
        samples = samples_of(driver_lines(proc))
        if samples and predicate(samples[-1]):
            return samples[-1]
        if proc.process.returncode is not None:
            break
        await asyncio.sleep(SAMPLE_S / 2)
    samples = samples_of(driver_lines(proc))
    raise AssertionError(f"never {what}: {samples[-1] if samples else None}")


def at_rest(flood: TwitchFlood) -> Callable[[dict[str, Any]], bool]:
    """Every message delivered and nothing waiting anywhere (Twitch, voice, inboxes, history)."""

    def check(sample: dict[str, Any]) -> bool:
        twitch, voice = sample.get("twitch"), sample.get("voice")
        return (
            twitch is not None
            and voice is not None
            and arrived(twitch) == flood.sent
            and twitch["pending_addressed"] == twitch["pending_ambient"] == 0
            and twitch["inbox_len"] == twitch["remember_queue"] == 0
            and not voice["playing"]
            and sample["inbox"] == sample["history_pending"] == 0
        )

    return check


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


async def join_voice(discord: FakeDiscord, voice: SoakVoice) -> None:
    """Alice enters the voice channel and runs ``/join-voice`` (the real command)."""
    await discord.voice_state("alice", VOICE_ID)
    interaction = await discord.slash("join-voice", user="alice", channel_id=GENERAL_ID)
    await voice.wait_for(
        lambda: voice.connected and voice.session_ready.is_set(), timeout_s=timeout_s(30)
    )
    await discord.wait_for(
        lambda: discord.interaction_callbacks(interaction), timeout_s=timeout_s(30)
    )


def max_of(samples: list[dict[str, Any]], part: str, key: str) -> int:
    return max((s[part][key] for s in samples if part in s), default=0)


@pytest.mark.slow
class TestSoak:
    async def test_resources_stay_flat_and_shutdown_is_clean(self, tmp_path: Path) -> None:
        """Under Discord text + voice + Twitch + terminal load: flat resources, balanced books, clean exit."""
        familiar_dir = tmp_path / "data" / "familiars" / "soakfam"
        familiar_dir.mkdir(parents=True)
        (familiar_dir / "character.toml").write_text(CHARACTER)
        cert = make_cert(tmp_path / "tls")
        async with (
            FakeDiscord(bot_token=TOKEN) as discord,
            ScriptedOpenRouter() as llm,
            FakeTwitch() as twitch,
            SoakVoice(discord, cert) as voice,
            SoakDeepgram(api_key=DEEPGRAM_KEY) as deepgram,
            FakeCartesia(api_key=CARTESIA_KEY) as cartesia,
        ):
            llm.replies.update({"voice topic": VOICE_REPLY, "twq": TWITCH_REPLY})
            await seed_tokens(familiar_dir, twitch)
            env = {
                "FAMILIAR_ID": "soakfam",
                "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
                "OPENROUTER_BASE_URL": llm.api_base,
                "DISCORD_TOKEN": TOKEN,
                "DISCORD_API_BASE": discord.api_base,
                "DISCORD_GATEWAY_URL": discord.gateway_url,
                "DISCORD_DM_ALLOWLIST": str(ALICE_ID),
                "FAMILIAR_EXTRA_CA_FILE": str(cert.ca_path),
                "DEEPGRAM_API_KEY": DEEPGRAM_KEY,
                "DEEPGRAM_WS_BASE": deepgram.ws_base_url,
                "DEEPGRAM_HTTP_BASE": deepgram.base_url,
                "CARTESIA_API_KEY": CARTESIA_KEY,
                "CARTESIA_BASE_URL": cartesia.base_url,
                "CARTESIA_WS_BASE_URL": cartesia.ws_base_url,
                **twitch_env(twitch),
                "FAMILIAR_DASHBOARD_TOKEN": DASHBOARD_TOKEN,
                "DASHBOARD_PORT": "0",
                "LOG_LEVEL": "WARNING",
                "LOG_FORMAT": "json",
                **{k: os.environ[k] for k in PASSED_THROUGH if k in os.environ},
            }
            flood = TwitchFlood(twitch, rate_per_s=TWITCH_RATE_PER_S)
            tally = VoiceTally()
            proc = await start_script(DRIVER, "--sample-s", str(SAMPLE_S), cwd=tmp_path, env=env)
            try:
                port = await proc.dashboard_port()
                await discord.wait_for(
                    lambda: discord.synced_commands(GUILD_ID), timeout_s=timeout_s(30)
                )
                await twitch.wait_for(
                    lambda: twitch.enabled("channel.chat.message"), timeout_s=timeout_s(30)
                )
                await join_voice(discord, voice)
                load_from = len(samples_of(driver_lines(proc)))
                stop = time.monotonic() + SOAK_S
                results = await asyncio.gather(
                    *(
                        discord_conversation(discord, channel, False, stop)
                        for channel in (GENERAL_ID, RANDOM_ID, THREAD_ID)
                    ),
                    discord_conversation(discord, discord.world.add_dm("alice").id, True, stop),
                    dashboard_client(f"http://127.0.0.1:{port}", stop),
                    flood.run(stop),
                    speak_and_listen(voice, stop, tally, pause_s=VOICE_PAUSE_S),
                )
                # At rest: every Twitch message arrived and every queue drained.
                rest = await until_sample(proc, at_rest(flood), "at rest")
                assert flood.last_addressed_id is not None
                await twitch.wait_for(
                    lambda: any(
                        sent.reply_parent_message_id == flood.last_addressed_id
                        for sent in twitch.chat_sent
                    ),
                    timeout_s=timeout_s(30),
                )
                await asyncio.sleep(2 * SAMPLE_S)
            finally:
                code = await proc.finish(limit_s=60)
                samples_file = os.environ.get("FAMILIAR_SOAK_SAMPLES")
                if samples_file:
                    path = Path(samples_file)
                    await asyncio.to_thread(path.write_text, proc.out_text)
                    await asyncio.to_thread(path.with_suffix(".log").write_text, proc.err_text)
            helix_replies = len(twitch.chat_sent)
            stt_heard = deepgram.heard
        assert code == 0, proc.err_text[-3000:]
        lines = driver_lines(proc)
        samples = samples_of(lines)
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
        # Twitch: the books balance, every reply went out through Helix, none failed.
        books = ledger(flood, final["twitch"])
        assert books["pending"] == 0, books
        sends = final["twitch"]["sends"]
        assert sends["posted"] == helix_replies >= 1, (sends, helix_replies)
        assert sends["failures"] == sends["dropped"] == 0, sends
        assert final["twitch"]["reconnects"] == 0, final["twitch"]
        # Voice: every sentence said was heard, became a turn and got an audible answer.
        voice_rest = rest["voice"]
        assert voice_rest["joined"] and voice_rest["joins"] == 1, voice_rest
        assert tally.said >= 1 and tally.answered == tally.said, tally
        assert stt_heard >= tally.said and voice_rest["utterances"] >= tally.said, voice_rest
        assert voice_rest["frames_dropped"] == voice_rest["stream_failures"] == 0, voice_rest
        assert voice_rest["tasks"] <= 4 and voice_rest["listener_tasks"] == 0, voice_rest

        load = samples[load_from:]
        steady = load[max(2, len(load) // 4) :]
        assert len(steady) >= 6, samples
        times = [s["t_s"] for s in steady]
        turns = [s["turns"] for s in steady]
        rss_growth = thirds_growth(steady, "rss_kb")
        fd_growth = thirds_growth(steady, "fds")
        task_growth = thirds_growth(steady, "tasks")
        thread_growth = thirds_growth(steady, "threads")
        if not TRACING:
            assert rss_growth <= MAX_RSS_GROWTH_KB, (rss_growth, [s["rss_kb"] for s in steady])
        assert fd_growth <= MAX_FD_GROWTH, [s["fds"] for s in steady]
        assert task_growth <= MAX_TASK_GROWTH, [s["tasks"] for s in steady]
        assert thread_growth <= MAX_THREAD_GROWTH, [s["threads"] for s in steady]
        assert all(s["inbox"] <= 64 * s["actors"] for s in samples)
        discord_turns = sum(results[:4])
        total_turns = final["turns"]
        assert discord_turns >= 4 and total_turns > discord_turns + tally.said
        record(
            "soak",
            f"{SOAK_S:g} s Discord x4 + voice + Twitch flood + terminal + dashboard",
            duration_s=SOAK_S,
            turns=total_turns,
            discord_turns=discord_turns,
            voice_said=tally.said,
            voice_answered=tally.answered,
            voice_utterances=voice_rest["utterances"],
            twitch_sent=books["sent"],
            twitch_handled=books["handled"],
            twitch_counted_drops=books["counted_drops"],
            twitch_remembered=books["remembered"],
            twitch_addressed=books["addressed"],
            twitch_answered_inputs=books["answered_inputs"],
            twitch_helix_replies=helix_replies,
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
            threads_min_max=[min(s["threads"] for s in steady), max(s["threads"] for s in steady)],
            max_inbox=max(s["inbox"] for s in samples),
            max_history_pending=max(s["history_pending"] for s in samples),
            max_twitch_inbox=max_of(samples, "twitch", "inbox_len"),
            max_twitch_addressed_waiting=max_of(samples, "twitch", "pending_addressed"),
            max_twitch_ambient_waiting=max_of(samples, "twitch", "pending_ambient"),
            max_voice_tasks=max_of(samples, "voice", "tasks"),
            pending_tasks_after_shutdown=len(stopped["pending_tasks"]),
        )
