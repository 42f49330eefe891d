"""The dashboard's data endpoints and controls, fed by a real familiar's real turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from familiar_connect.dashboard import OPERATOR_LOG_NAME
from familiar_connect.dashboard.memory_view import MAX_VIEW_CHARS
from tests.dashboard.conftest import (
    CHARACTER,
    Harness,
    Login,
    dashboard_harness,
    login,
    wait_until,
)


@pytest.fixture(name="harness")
async def fixture_harness(tmp_path: Path) -> Any:
    async with dashboard_harness(tmp_path) as harness:
        yield harness


@pytest.fixture(name="creds")
async def fixture_creds(harness: Harness, http: aiohttp.ClientSession) -> Login:
    return await login(http, harness.base_url)


async def get(
    http: aiohttp.ClientSession, harness: Harness, creds: Login, path: str, status: int = 200
) -> Any:
    async with http.get(harness.base_url + path, headers=creds.headers) as response:
        assert response.status == status, await response.text()
        return await response.json()


async def post(
    http: aiohttp.ClientSession,
    harness: Harness,
    creds: Login,
    action: str,
    body: dict[str, Any] | None = None,
    status: int = 200,
) -> Any:
    async with http.post(
        f"{harness.base_url}/api/control/{action}",
        headers=creds.post_headers,
        data=json.dumps(body or {}),
    ) as response:
        assert response.status == status, await response.text()
        return await response.json()


class TestLiveAndLatency:
    """The live snapshot and latency numbers after real turns."""

    async def test_live_snapshot_after_turns(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Conversations, speakers, counters and the last turns reflect what happened."""
        await harness.turn("Wisp, hi", name="Alice")
        await harness.voice_turn("hello")
        live = await get(http, harness, creds, "/api/live")
        by_name = {row["conversation"]: row for row in live["conversations"]}
        assert by_name["discord:500"]["speaker"] == "Alice"
        assert by_name["discord:700"]["modality"] == "voice"
        assert by_name["discord:700"]["activity"] == "listening"
        assert live["counters"]["messages_in"] == 2
        assert live["counters"]["replies_out"] == 2
        assert [turn["modality"] for turn in live["turns"]] == ["voice", "text"]
        assert live["paused"] is False

    async def test_latency_stats_per_modality(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """p50/p95 per stage are reported for the text and voice turns given."""
        for index in range(3):
            await harness.turn(f"Wisp, q{index}")
        await harness.voice_turn("v")
        data = await get(http, harness, creds, "/api/latency")
        assert data["text"]["turns"] == 3
        assert data["voice"]["turns"] == 1
        text_total = data["text"]["stages"][-1]
        assert text_total["stage"] == "total" and text_total["count"] == 3
        voice = {row["stage"]: row for row in data["voice"]["stages"]}
        assert voice["stt_final"]["p50_ms"] == pytest.approx(40.0)
        assert voice["first_frame"]["count"] == 0

    @pytest.mark.parametrize("query", ["modality=audio", "modality=text&n=abc"])
    async def test_bad_chart_queries(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login, query: str
    ) -> None:
        """Unknown modalities and non-numeric counts are refused with 400."""
        async with http.get(
            f"{harness.base_url}/api/charts/latency.svg?{query}", headers=creds.headers
        ) as response:
            assert response.status == 400

    async def test_chart_is_svg(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """The latency chart is served as an SVG document with one bar per turn."""
        await harness.turn("Wisp, one")
        await harness.turn("Wisp, two")
        async with http.get(
            f"{harness.base_url}/api/charts/latency.svg?modality=text&n=1", headers=creds.headers
        ) as response:
            assert response.headers["Content-Type"].startswith("image/svg+xml")
            svg = await response.text()
        assert svg.startswith("<svg") and svg.count('class="turn"') == 1


class TestMemory:
    """The read-only memory browser, through the MemoryStore."""

    async def test_browse_and_read_with_audit_trail(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Listing shows the note with its last writer; reading shows text and every write."""
        memory = harness.familiar.memory
        await memory.write_file("people/ann.md", "# Ann\n", source="tool:write_note")
        await memory.append_file("people/ann.md", "- likes tea\n", source="memory_writer")
        listing = await get(http, harness, creds, "/api/memory/list?path=people")
        assert listing["entries"][0]["name"] == "ann.md"
        assert listing["entries"][0]["last_source"] == "memory_writer"
        note = await get(http, harness, creds, "/api/memory/note?path=people/ann.md")
        assert note["text"] == "# Ann\n- likes tea\n"
        assert note["truncated"] is False
        assert [row["operation"] for row in note["audit"]] == ["append", "write"]

    @pytest.mark.parametrize(
        "path",
        [
            "../audit.jsonl",
            "../../../../etc/passwd",
            "/etc/passwd",
            "people/../../familiar.db",
            "people/%00x.md",
            "people\\..\\..\\x",
        ],
    )
    async def test_traversal_is_refused_by_the_store(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login, path: str
    ) -> None:
        """Paths out of the memory root are refused (400) by the store, for notes and listings."""
        query = quote(path, safe="%")
        note = await get(http, harness, creds, f"/api/memory/note?path={query}", status=400)
        assert "refused" in note["error"] or "outside" in note["error"]
        await get(http, harness, creds, f"/api/memory/list?path={query}", status=400)

    async def test_escaping_symlink_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A symlink inside the root that points outside it cannot be read."""
        root = harness.familiar.memory.store.root
        (root / "people" / "leak.md").symlink_to(root.parent / "familiar.db")
        await get(http, harness, creds, "/api/memory/note?path=people/leak.md", status=400)

    async def test_huge_note_is_truncated_in_the_view(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A note longer than the view cap is cut, flagged, and its full length reported."""
        text = "a line of a very long note\n" * 8_000
        await harness.familiar.memory.write_file("topics/huge.md", text, source="memory_writer")
        note = await get(http, harness, creds, "/api/memory/note?path=topics/huge.md")
        assert note["truncated"] is True
        assert note["chars"] == len(text)
        assert len(note["text"]) == MAX_VIEW_CHARS

    async def test_file_over_the_store_cap_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A file larger than the store reads at all is refused with 413, not loaded."""
        root = harness.familiar.memory.store.root
        (root / "topics" / "giant.md").write_text("x" * 400_000)
        note = await get(http, harness, creds, "/api/memory/note?path=topics/giant.md", status=413)
        assert "too large" in note["error"]

    async def test_missing_note_is_404(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A note that does not exist answers 404."""
        await get(http, harness, creds, "/api/memory/note?path=people/nobody.md", status=404)

    async def test_failed_verification_is_reported(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A note changed outside the store fails verification; the live data carries the banner."""
        memory = harness.familiar.memory
        await memory.write_file("self/identity.md", "# Wisp\n", source="operator")
        audit = await get(http, harness, creds, "/api/memory/audit?refresh=1")
        assert audit["status"]["ok"] is True
        (memory.store.root / "self" / "identity.md").write_text("# Evil Wisp\n")
        audit = await get(http, harness, creds, "/api/memory/audit?refresh=1")
        assert audit["status"]["ok"] is False
        assert "self/identity.md" in audit["status"]["problems"][0]
        live = await get(http, harness, creds, "/api/live")
        assert live["audit"]["ok"] is False
        async with http.get(harness.base_url + "/metrics", headers=creds.headers) as response:
            assert "familiar_memory_audit_ok 0" in await response.text()

    async def test_failed_verification_at_start_shows_without_asking(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A note put in the memory directory behind the store's back is flagged at start."""
        stray = tmp_path / "data" / "familiars" / "dashfam" / "memory" / "people" / "stray.md"
        stray.parent.mkdir(parents=True)
        stray.write_text("written outside the store\n")
        async with dashboard_harness(tmp_path) as harness:
            creds = await login(http, harness.base_url)
            await wait_until(lambda: harness.dashboard.state.audit.last is not None)
            live = await get(http, harness, creds, "/api/live")
        assert live["audit"]["ok"] is False
        assert "stray.md" in live["audit"]["problems"][0]


class TestUsage:
    """Usage and cost from real turns, against the character's budgets."""

    async def test_usage_per_user_and_call_site(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Today's totals, the per-user and per-call-site rows and the budgets add up."""
        await harness.turn("Wisp, a", user_id="1001")
        await harness.turn("Wisp, b", user_id="1003")
        await harness.voice_turn("c")
        data = await get(http, harness, creds, "/api/usage")
        today = data["today"]
        assert today["calls"] == 3
        assert today["tokens"] > 0
        assert today["tokens_budget"] == 2_000_000
        assert today["cost_budget_usd"] == 5.0
        assert {row["user"] for row in data["users"]} == {
            "discord:1001",
            "discord:1002",
            "discord:1003",
        }
        assert sum(row["today_tokens"] for row in data["users"]) == today["tokens"]
        sites = {row["call_site"]: row["calls"] for row in data["call_sites"]}
        assert sites == {"reply": 2, "voice_reply": 1}
        assert len(data["daily"]) == 30
        assert data["daily"][-1]["calls"] == 3


class TestControls:
    """Operator controls act on the orchestrator and are recorded with source operator."""

    async def test_pause_and_resume(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Pausing stops answering everywhere (input is remembered); resuming answers again."""
        result = await post(http, harness, creds, "pause")
        assert result["source"] == "operator" and result["result"] == "paused"
        assert harness.say("Wisp, anyone?") == "remembered"
        await post(http, harness, creds, "resume")
        assert harness.say("Wisp, anyone now?") == "queued"
        await harness.settle()

    async def test_mute_and_unmute(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A muted user is ignored until unmuted."""
        await post(http, harness, creds, "mute", {"user": "discord:1001"})
        assert harness.say("Wisp, hey", user_id="1001") == "ignored"
        assert harness.say("Wisp, hey", user_id="1003") == "queued"
        await harness.settle()
        await post(http, harness, creds, "unmute", {"user": "discord:1001"})
        assert harness.say("Wisp, hey again", user_id="1001") == "queued"
        await harness.settle()

    @pytest.mark.parametrize(
        "body", [{}, {"user": 5}, {"user": "1001"}, {"user": "irc:bob"}, {"user": "discord:a b"}]
    )
    async def test_mute_rejects_bad_users(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login, body: dict[str, Any]
    ) -> None:
        """Only platform:user-id keys can be muted."""
        await post(http, harness, creds, "mute", body, status=400)
        assert harness.orchestrator.muted == set()

    async def test_cancel_turn_in_flight(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Cancel stops the reply in flight in that conversation; what was said is kept."""
        harness.fake.reply_stall(after_text="Once upon", stall_s=60)
        assert harness.say("Wisp, a story") == "queued"
        await harness.sink("500").first_send.wait()
        result = await post(http, harness, creds, "cancel", {"conversation": "discord:500"})
        assert result["result"] == "cancelled"
        await harness.settle()
        assert harness.orchestrator.stats.cancelled == 1
        live = await get(http, harness, creds, "/api/live")
        assert live["turns"][0]["outcome"] == "cancelled"
        again = await post(http, harness, creds, "cancel", {"conversation": "discord:500"})
        assert again["result"] == "nothing in flight"
        other = await post(http, harness, creds, "cancel", {"conversation": "discord:404"})
        assert other["result"] == "not active"

    @pytest.mark.parametrize(
        ("action", "body", "status"),
        [
            ("explode", {}, 404),
            ("leave_voice", {}, 404),
            ("cancel", {"conversation": 3}, 400),
        ],
    )
    async def test_bad_control_requests(
        self,
        harness: Harness,
        http: aiohttp.ClientSession,
        creds: Login,
        action: str,
        body: dict[str, Any],
        status: int,
    ) -> None:
        """Unknown actions, leave-voice without a voice service and bad bodies are refused."""
        await post(http, harness, creds, action, body, status=status)

    async def test_non_json_body_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A body that is not a JSON object gets 400."""
        for body in ("not json", "[1, 2]"):
            async with http.post(
                harness.base_url + "/api/control/mute", headers=creds.post_headers, data=body
            ) as response:
                assert response.status == 400

    async def test_leave_voice_with_a_voice_service(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """With a voice hook the control is offered and leaving calls it."""

        class Voice:
            def __init__(self) -> None:
                self.channels = ["discord:700"]

            def voice_channels(self) -> list[str]:
                return list(self.channels)

            async def leave_voice(self, conversation: str | None = None) -> bool:
                left = bool(self.channels)
                self.channels.clear()
                return left

        harness.dashboard.set_voice(Voice())
        session = await get(http, harness, creds, "/api/session")
        assert session["voice_available"] is True
        live = await get(http, harness, creds, "/api/live")
        assert live["controls"]["voice_channels"] == ["discord:700"]
        assert (await post(http, harness, creds, "leave_voice", {}))["result"] == "left"
        assert (await post(http, harness, creds, "leave_voice", {}))["result"] == "not in voice"

    async def test_actions_are_written_to_the_operator_log(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """Each action is one JSON line next to the audit log, source operator, mode 0600."""
        await post(http, harness, creds, "pause")
        await post(http, harness, creds, "mute", {"user": "twitch:42"})
        path = harness.dashboard.settings.familiar_dir / OPERATOR_LOG_NAME
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert [(e["action"], e["target"], e["source"]) for e in lines] == [
            ("pause", None, "operator"),
            ("mute", "twitch:42", "operator"),
        ]
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent == harness.familiar.memory.store.audit_path.parent


class TestProviders:
    """Provider rows from the supervisor, the LLM's turns and adapter reports."""

    async def test_llm_model_and_fallbacks(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """The model actually used is shown and replies from a fallback model are counted."""
        toml = (
            CHARACTER + '\n[llm.reply]\nmodel = "main/model"\nfallback_models = ["backup/model"]\n'
        )
        async with dashboard_harness(tmp_path, toml=toml) as harness:
            creds = await login(http, harness.base_url)
            harness.fake.reply_text("from the backup", model="backup/model")
            await harness.turn("Wisp, hi")
            data = await get(http, harness, creds, "/api/providers")
        llm = next(row for row in data["providers"] if row["provider"] == "llm")
        assert llm["state"] == "ok"
        assert llm["details"]["model_used"] == "backup/model"
        assert llm["details"]["fallbacks"] == 1

    async def test_llm_failure_marks_it_failing(
        self, harness: Harness, http: aiohttp.ClientSession, creds: Login
    ) -> None:
        """A turn whose LLM call fails turns the LLM row to failing with an error note."""
        harness.fake.reply_http_error(502, message="upstream down")
        await harness.turn("Wisp, hi")
        data = await get(http, harness, creds, "/api/providers")
        llm = next(row for row in data["providers"] if row["provider"] == "llm")
        assert llm["state"] == "failing"
        assert llm["last_error"]
        assert data["healthy"] is False

    async def test_supervised_service_and_adapter_reports(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A failing service shows its restarts and error; adapter reports add reconnects."""

        class Gateway:
            name = "discord"

            async def run(self) -> None:
                raise ConnectionError("gateway closed the connection (4000)")

        async with dashboard_harness(tmp_path, extra_services=[Gateway()]) as harness:
            creds = await login(http, harness.base_url)
            harness.dashboard.providers.report("stt", state="connected", reconnected=True)
            harness.dashboard.providers.report("stt", error="socket closed 1011")
            await wait_until(lambda: harness.supervisor.statuses["discord"].restarts >= 1)
            data = await get(http, harness, creds, "/api/providers")
        rows = {row["provider"]: row for row in data["providers"]}
        assert rows["discord_gateway"]["state"] in ("restarting", "running")
        assert rows["discord_gateway"]["restarts"] >= 1
        assert "4000" in rows["discord_gateway"]["last_error"]
        assert rows["stt"]["reconnects"] == 1
        assert rows["stt"]["last_error"] == "socket closed 1011"
        services = {row["service"]: row for row in data["services"]}
        assert services["dashboard"]["state"] == "running"
