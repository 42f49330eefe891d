"""Fault injection through the fakes: the familiar keeps running, degrades visibly, loses nothing.

Every test runs the real familiar (Discord adapter, dashboard, OpenRouter client,
stores) in this process against the loopback fakes (:mod:`tests.reliability.rig`),
first makes a normal turn that writes a memory note (so there is history, a note
and an audit record to lose), then injects one fault and checks four promises:

1. **keeps running**: no service failed, and a later mention is answered normally;
2. **recovers or degrades visibly**: the reply arrives, or the user gets a notice;
3. **nothing accepted is lost**: earlier history rows, notes and audit records are
   unchanged, the audit chain verifies, and the faulted turn's input is in history;
4. **a counter or status shows it**: orchestrator stats, the dashboard's provider
   rows and ``/metrics``, the stream counters, or the structured log event.

Extension point: voice (Deepgram drop/stall/auth, Cartesia error/drop, voice
websocket close) and Twitch (``session_reconnect``, keepalive timeout,
revocation) faults belong here as new ``Test*Faults`` classes once their fakes
and adapters exist; the rig takes extra services.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.figures import record, timeout_s
from tests.reliability.rig import Rig, Snapshot, rig

NOTE = "people/discord-1001.md"
FAILURE_NOTICE = "I lost my train of thought"


async def warm_up(r: Rig) -> Snapshot:
    """One normal turn that writes a note, so there is something to lose."""
    r.llm.reply_tool_calls([("memory_write", {"path": NOTE, "content": "Alice likes tea.\n"})])
    r.llm.reply_text("Noted.")
    await r.mention("remember that I like tea")
    await r.wait_posted(1)
    await r.idle()
    snapshot = await r.snapshot()
    assert NOTE in snapshot.notes and snapshot.audit_hashes
    return snapshot


async def still_answers(r: Rig, text: str = "still with me?") -> None:
    """Promise 1: a normal mention gets a normal reply, and no service failed."""
    before = len(r.posted())
    r.llm.reply_text("Yes, still here.")
    await r.mention(text)
    posted = await r.wait_posted(before + 1)
    assert posted[-1] == "Yes, still here."
    states = {name: status.state for name, status in r.supervisor.statuses.items()}
    assert all(state in ("running", "stopped") for state in states.values()), states
    assert states["discord"] == states["dashboard"] == states["orchestrator"] == "running"
    assert r.supervisor.statuses["history_writer"].restarts == 0


async def user_rows(r: Rig) -> list[str]:
    await r.familiar.history_writer.flush()
    rows = await r.familiar.db.fetchall(
        "SELECT content FROM turns WHERE role = 'user' ORDER BY id", (), what="faults"
    )
    return [row[0] for row in rows]


def no_unexpected_errors(r: Rig, *allowed: str) -> None:
    errors = r.log.errors(allowed=allowed)
    assert errors == [], errors[:3]


async def failure_is_counted(r: Rig, failed_before: int) -> dict[str, Any]:
    """Promise 4 for a failed turn: stats, the dashboard's LLM row and /metrics all show it."""
    assert r.orchestrator.stats.failed == failed_before + 1
    await asyncio.sleep(0.05)  # the dashboard observes turn_finished synchronously; let it flush
    row = await r.provider("llm")
    assert row["details"]["failures"] >= 1 and row["last_error"], row
    status, metrics = await r.get("/metrics")
    assert status == 200 and "failed" in metrics
    return row


class TestOpenRouterFaults:
    async def test_429_with_retry_after_is_waited_out(self, tmp_path: Path) -> None:
        """A 429 with Retry-After is retried after the wait and the reply arrives, once."""
        async with rig(tmp_path, settings={"llm_max_retries": 2}) as r:
            before = await warm_up(r)
            r.llm.reply_http_error(429, retry_after_s=0.3, message="rate limited upstream")
            r.llm.reply_text("Thanks for waiting.")
            await r.mention("are you busy?")
            posted = await r.wait_posted(2)
            await r.idle()
            assert posted[-1] == "Thanks for waiting."
            retried = r.log.named("llm_request_retried")
            assert retried and retried[0]["status"] == 429 and retried[0]["retry_after_s"] == 0.3
            assert retried[0]["delay_s"] >= 0.3
            assert "are you busy?" in " ".join(await user_rows(r))
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "openrouter 429 Retry-After", injected=1, survived=1, outcome="recovered")

    async def test_recovered_retries_are_counted(self, tmp_path: Path) -> None:
        """A 429 that recovers after a retry is counted in the dashboard's LLM row and /metrics."""
        async with rig(tmp_path, settings={"llm_max_retries": 2}) as r:
            r.llm.reply_http_error(429, retry_after_s=0.1, message="rate limited upstream")
            r.llm.reply_text("Thanks for waiting.")
            await r.mention("are you busy?")
            await r.wait_posted(1)
            await r.idle()
            row = await r.provider("llm")
            _, metrics = await r.get("/metrics")
        assert row["details"]["requests_retried"] == 1, row
        assert row["details"]["retries_recovered"] == 1, row
        assert "familiar_llm_retries_recovered_total 1" in metrics

    async def test_429_asking_too_long_a_wait_gives_a_notice(self, tmp_path: Path) -> None:
        """A Retry-After beyond what a conversation can wait fails the turn with a notice."""
        async with rig(tmp_path, settings={"llm_max_retries": 2}) as r:
            before = await warm_up(r)
            failed = r.orchestrator.stats.failed
            r.llm.reply_http_error(429, retry_after_s=3600, message="come back in an hour")
            await r.mention("are you there?")
            posted = await r.wait_posted(2)
            await r.idle()
            assert FAILURE_NOTICE in posted[-1]
            assert len(r.llm.chat_requests) == 3  # warm-up (2) + one attempt: not waited out
            await failure_is_counted(r, failed)
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "openrouter 429 long wait", injected=1, survived=1, outcome="notice")

    @pytest.mark.parametrize("retries", [0, 1])
    async def test_502_recovers_with_retries_or_gives_a_notice(
        self, tmp_path: Path, retries: int
    ) -> None:
        """A 502 is retried when allowed (reply arrives); without retries the user gets a notice."""
        async with rig(tmp_path, settings={"llm_max_retries": retries}) as r:
            before = await warm_up(r)
            failed = r.orchestrator.stats.failed
            r.llm.reply_http_error(502, message="bad gateway")
            if retries:
                r.llm.reply_text("Recovered.")
            await r.mention("hello again")
            posted = await r.wait_posted(2)
            await r.idle()
            if retries:
                assert posted[-1] == "Recovered."
                assert r.log.named("llm_request_retried")[0]["status"] == 502
            else:
                assert FAILURE_NOTICE in posted[-1]
                await failure_is_counted(r, failed)
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record(
            "faults",
            f"openrouter 502 (retries={retries})",
            injected=1,
            survived=1,
            outcome="recovered" if retries else "notice",
        )

    async def test_midstream_error_gives_a_notice_and_keeps_the_input(self, tmp_path: Path) -> None:
        """An error event after some text ends the turn with a notice; the input stays in history."""
        async with rig(tmp_path, settings={"llm_max_retries": 2}) as r:
            before = await warm_up(r)
            failed = r.orchestrator.stats.failed
            r.llm.reply_midstream_error(after_text="Well, I think", message="provider crashed")
            await r.mention("what do you think?")
            posted = await r.wait_posted(2)
            await r.idle()
            assert FAILURE_NOTICE in posted[-1]
            assert len(r.llm.chat_requests) == 3  # output was seen: never replayed
            assert "what do you think?" in " ".join(await user_rows(r))
            await failure_is_counted(r, failed)
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "openrouter mid-stream error", injected=1, survived=1, outcome="notice")

    @pytest.mark.parametrize("when", ["before output", "after output"])
    async def test_stall_times_out(self, tmp_path: Path, when: str) -> None:
        """A stalled stream times out: retried before any output (reply arrives), a notice after."""
        async with rig(tmp_path, settings={"llm_max_retries": 1, "llm_read_timeout_s": 0.5}) as r:
            before = await warm_up(r)
            failed = r.orchestrator.stats.failed
            after_text = "" if when == "before output" else "Let me see"
            r.llm.reply_stall(after_text=after_text, stall_s=30, rest="never sent")
            if not after_text:
                r.llm.reply_text("Sorry, slow line.")
            await r.mention("are you stuck?")
            posted = await r.wait_posted(2)
            await r.idle()
            await asyncio.wait_for(r.llm.disconnected.wait(), timeout=timeout_s(10))
            if when == "before output":
                assert posted[-1] == "Sorry, slow line."
                assert r.log.named("llm_request_retried")[0]["error"] == "ProviderTimeout"
            else:
                assert FAILURE_NOTICE in posted[-1]
                await failure_is_counted(r, failed)
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", f"openrouter stall {when}", injected=1, survived=1)

    @pytest.mark.parametrize("when", ["before output", "after output"])
    async def test_dropped_connection(self, tmp_path: Path, when: str) -> None:
        """A dropped connection is retried before any output (reply arrives), a notice after."""
        async with rig(tmp_path, settings={"llm_max_retries": 1}) as r:
            before = await warm_up(r)
            failed = r.orchestrator.stats.failed
            r.llm.reply_disconnect(after_text="" if when == "before output" else "Half a")
            if when == "before output":
                r.llm.reply_text("Reconnected.")
            await r.mention("can you hear me?")
            posted = await r.wait_posted(2)
            await r.idle()
            if when == "before output":
                assert posted[-1] == "Reconnected."
            else:
                assert FAILURE_NOTICE in posted[-1]
                await failure_is_counted(r, failed)
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", f"openrouter drop {when}", injected=1, survived=1)


class TestDiscordGatewayFaults:
    async def test_reconnect_during_a_reply(self, tmp_path: Path) -> None:
        """Op 7 RECONNECT while a reply is generated: the client resumes and the reply is posted."""
        async with rig(tmp_path) as r:
            before = await warm_up(r)
            r.llm.reply_text("A slow answer.", ttft_s=0.4)
            await r.mention("take your time")
            await r.discord.wait_for(lambda: len(r.llm.chat_requests) >= 3)
            await r.discord.reconnect()
            await asyncio.wait_for(r.discord.resumed.wait(), timeout=timeout_s(20))
            posted = await r.wait_posted(2)
            await r.idle()
            assert posted[-1] == "A slow answer."
            assert r.discord.resume_count >= 1
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "discord RECONNECT", injected=1, survived=1, resumes=1)

    async def test_invalid_session_reidentifies(self, tmp_path: Path) -> None:
        """Op 9 INVALID_SESSION (not resumable): the client identifies again and answers."""
        async with rig(tmp_path) as r:
            before = await warm_up(r)
            await r.discord.invalid_session(resumable=False)
            await r.discord.wait_for(lambda: r.discord.identify_count >= 2, timeout_s=timeout_s(20))
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "discord INVALID_SESSION", injected=1, survived=1, identifies=2)

    async def test_close_4000_resumes_and_replays_a_message(self, tmp_path: Path) -> None:
        """Close 4000: the client resumes, and a mention sent while it was away is answered."""
        async with rig(tmp_path) as r:
            before = await warm_up(r)
            await r.discord.close(4000, "unknown error")
            r.llm.reply_text("Sorry, I was away.")
            await r.mention("sent while you were disconnected")
            posted = await r.wait_posted(2)
            await r.idle()
            assert posted[-1] == "Sorry, I was away."
            assert r.discord.resume_count >= 1
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "discord close 4000", injected=1, survived=1, replayed_messages=1)

    async def test_reconnects_are_counted_on_the_dashboard(self, tmp_path: Path) -> None:
        """After RECONNECT and close 4000 the dashboard's Discord gateway row counts the reconnects."""
        async with rig(tmp_path) as r:
            await r.discord.reconnect()
            await r.discord.wait_for(lambda: r.discord.resume_count >= 1, timeout_s=timeout_s(20))
            await r.discord.close(4000)
            await r.discord.wait_for(lambda: r.discord.resume_count >= 2, timeout_s=timeout_s(20))
            row = await r.provider("discord_gateway")
        assert row["reconnects"] >= 2, row
        assert row["state"] == "connected", row


class TestDashboardClientFaults:
    async def test_live_streams_dropped_mid_stream(self, tmp_path: Path) -> None:
        """Browsers that vanish mid-stream free their slots; the familiar and its stats carry on."""
        async with rig(tmp_path) as r:
            before = await warm_up(r)
            creds = await r.login()
            hub = r.dashboard.hub
            drops = 0
            for round_ in range(3):
                streams = [
                    await r.http.get(f"{r.base_url}/api/events", headers=creds.headers)
                    for _ in range(4)
                ]
                for stream in streams:
                    assert stream.status == 200
                    await stream.content.readany()
                assert hub.client_count == 4
                r.llm.reply_text(f"Turn during round {round_}.")
                await r.mention(f"round {round_}")
                await r.wait_posted(2 + round_)
                for stream in streams:
                    # Drop the TCP connection without reading the rest: a closed tab, a dead laptop.
                    stream.connection.transport.abort()  # type: ignore[union-attr]
                    stream.close()
                    drops += 1
                await r.discord.wait_for(lambda: hub.client_count == 0, timeout_s=timeout_s(10))
            await r.idle()
            assert r.dashboard.state.stream_tasks == set()
            live = await r.get_json("/api/live")
            assert live["streams"]["sse_clients"] == 0
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "dashboard streams dropped", injected=drops, survived=drops)

    async def test_requests_abandoned_half_way(self, tmp_path: Path) -> None:
        """Requests whose client gives up before the answer leave no error and no stuck task."""
        async with rig(tmp_path) as r:
            before = await warm_up(r)
            creds = await r.login()
            abandoned = 0
            for path in ("/api/usage", "/api/memory/audit?refresh=1", "/metrics", "/api/live"):
                for _ in range(5):
                    request = asyncio.create_task(
                        r.http.get(r.base_url + path, headers=creds.headers)
                    )
                    await asyncio.sleep(0)
                    request.cancel()
                    abandoned += 1
                    try:
                        response = await request
                    except asyncio.CancelledError:
                        continue
                    response.close()
            status, _ = await r.get("/api/live")
            assert status == 200
            await r.assert_nothing_lost(before)
            await still_answers(r)
            no_unexpected_errors(r)
        record("faults", "dashboard requests abandoned", injected=abandoned, survived=abandoned)
