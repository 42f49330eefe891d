"""The adapters' status line to the dashboard: optional, and never able to break an adapter."""

from __future__ import annotations

from typing import Any

import structlog

from familiar_connect.status import report_status


class TestReportStatus:
    def test_fields_reach_the_reporter(self) -> None:
        """Every keyword is passed to the reporter as given."""
        seen: list[dict[str, Any]] = []
        report_status(lambda **fields: seen.append(fields), state="connected", reconnected=True)
        assert seen == [{"state": "connected", "reconnected": True}]

    def test_no_reporter_is_a_no_op(self) -> None:
        """Without a dashboard (reporter None) nothing happens."""
        report_status(None, state="connected")

    def test_a_failing_reporter_is_logged_not_raised(self) -> None:
        """A reporter that raises is logged as status_report_failed; the adapter carries on."""

        def broken(**_fields: Any) -> None:
            raise RuntimeError("board gone")

        with structlog.testing.capture_logs() as logs:
            report_status(broken, state="reconnecting")
        assert [entry["event"] for entry in logs] == ["status_report_failed"]
