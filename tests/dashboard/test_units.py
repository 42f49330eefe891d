"""Small dashboard units without a server: provider board, metrics text, operator log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from familiar_connect.character import load_character
from familiar_connect.dashboard.controls import OperatorLog
from familiar_connect.dashboard.metrics import MetricsInput, render_metrics
from familiar_connect.dashboard.providers import ProviderBoard
from familiar_connect.dashboard.svg import StageStats
from familiar_connect.settings import load_settings
from familiar_connect.supervisor import ServiceStatus

_SAMPLE = re.compile(r'^[a-z_:][a-z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? \S+$')


@pytest.fixture(name="board")
def fixture_board(tmp_path: Path) -> ProviderBoard:
    settings = load_settings(env_file=None, familiar_data_dir=tmp_path, stt_provider="deepgram")
    familiar_dir = settings.familiar_dir
    familiar_dir.mkdir(parents=True)
    (familiar_dir / "character.toml").write_text(
        '[llm.voice_reply]\nmodel = "a/main"\nfallback_models = ["b/backup"]\n'
    )
    return ProviderBoard(settings, load_character(settings.familiar_id, familiar_dir))


class TestProviderBoard:
    """Provider rows from events, reports and supervisor statuses."""

    def test_error_text_from_the_event_is_shown_clipped(self, board: ProviderBoard) -> None:
        """A failed turn's error text (when the event carries one) becomes the LLM's last error."""
        board.observe("turn_finished", {"outcome": "failed", "error": "E" * 1000})
        llm = board.rows({})[-1]
        assert llm["state"] == "failing"
        assert llm["last_error"] == "E" * 300

    def test_fallback_counts_only_configured_fallbacks(self, board: ProviderBoard) -> None:
        """Only a reply served by a configured fallback of that call site counts as a fallback."""
        board.observe(
            "turn_finished", {"outcome": "replied", "model": "b/backup", "modality": "voice"}
        )
        board.observe(
            "turn_finished", {"outcome": "replied", "model": "c/other", "modality": "voice"}
        )
        board.observe(
            "turn_finished", {"outcome": "replied", "model": "b/backup", "modality": "text"}
        )
        details = board.rows({})[-1]["details"]
        assert details["fallbacks"] == 1
        assert details["model_used"] == "b/backup"

    def test_service_status_and_configuration(self, board: ProviderBoard) -> None:
        """Configured providers without a service wait; a matching service supplies its state."""
        statuses = {"deepgram": ServiceStatus("deepgram", "restarting", 2, "socket closed")}
        rows = {row["provider"]: row for row in board.rows(statuses)}
        assert rows["stt"]["name"] == "Speech-to-text (Deepgram)"
        assert (rows["stt"]["state"], rows["stt"]["restarts"]) == ("restarting", 2)
        assert rows["stt"]["last_error"] == "socket closed"
        assert rows["tts"]["state"] == "not configured"
        assert board.healthy(statuses) is False
        assert board.healthy({}) is True

    def test_unknown_provider_report_is_refused(self, board: ProviderBoard) -> None:
        """Reports must name a known provider."""
        with pytest.raises(KeyError):
            board.report("carrier_pigeon", state="lost")


class TestMetrics:
    """The Prometheus exposition text."""

    def test_every_line_is_valid_exposition_format(self) -> None:
        """HELP/TYPE comments and samples only; label values escaped; ends with a newline."""
        text = render_metrics(
            MetricsInput(
                orchestrator={"events_in": 3, "replies": 2},
                paused=True,
                active_conversations=1,
                adapter_counters={"stt_reconnects": 4},
                streams={"sse_clients": 1},
                services=[{"service": 'we"ird\\name\n', "state": "running", "restarts": 0}],
                llm={"turns": 2},
                latency={"text": [StageStats("total", "whole turn", 10.0, 20.5, 2)]},
                healthy=True,
                audit_ok=False,
                usage_today={"tokens": 10, "cost_usd": 0.5},
            )
        )
        assert text.endswith("\n")
        for line in text.splitlines():
            assert line.startswith(("# HELP ", "# TYPE ")) or _SAMPLE.match(line), line
        assert "familiar_paused 1" in text
        assert "familiar_memory_audit_ok 0" in text
        assert 'familiar_service_up{service="we\\"ird\\\\name\\n"} 1' in text
        assert 'quantile="0.95"} 20.5' in text


class TestOperatorLog:
    """The operator action log file."""

    async def test_lines_and_rotation(self, tmp_path: Path) -> None:
        """Each action is one JSON line; past the size cap the file is rotated once to .1."""
        path = tmp_path / "operator_actions.jsonl"
        oplog = OperatorLog(path, max_bytes=400, recent=3)
        for index in range(8):
            await oplog.record("mute", f"discord:{index}", "muted")
        rotated = path.with_name(path.name + ".1")
        assert rotated.exists()
        current = [json.loads(line) for line in path.read_text().splitlines()]
        assert current[-1]["target"] == "discord:7"
        assert all(entry["source"] == "operator" for entry in current)
        assert [entry["target"] for entry in oplog.recent()] == [
            "discord:7",
            "discord:6",
            "discord:5",
        ]

    async def test_unwritable_log_does_not_fail_the_action(self, tmp_path: Path) -> None:
        """If the file cannot be written the action is still recorded in memory and the log."""
        oplog = OperatorLog(tmp_path / "missing-dir" / "operator_actions.jsonl")
        entry = await oplog.record("pause", None, "paused")
        assert entry["action"] == "pause"
        assert oplog.recent()[0]["result"] == "paused"
