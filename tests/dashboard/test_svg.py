"""Server-side SVG pictures and the latency arithmetic behind them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from familiar_connect.dashboard.svg import (
    TEXT_STAGES,
    VOICE_STAGES,
    DayBar,
    TurnBar,
    daily_usage_svg,
    latency_svg,
    percentile,
    segments,
    stage_stats,
    stage_stats_svg,
)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - our own output, parsed to check it is well-formed


class TestLatencyArithmetic:
    """Segments and percentiles from cumulative stamps."""

    def test_segments_are_differences_of_cumulative_stamps(self) -> None:
        """Each segment is its stage's stamp minus the previous stamp."""
        parts = segments({"typing_sent": 2.0, "first_token": 50.0, "posted": 80.0}, TEXT_STAGES)
        assert parts == [2.0, 48.0, 30.0]

    def test_missing_stage_is_skipped_not_zeroed(self) -> None:
        """An unstamped stage is None and the next one measures from the last stamp."""
        parts = segments({"stt_final": 40.0, "first_clause": 160.0}, VOICE_STAGES)
        assert parts == [40.0, None, 120.0, None, None]

    def test_out_of_order_stamps_clamp_to_zero(self) -> None:
        """A stamp earlier than the previous one counts as a zero-length segment."""
        parts = segments({"typing_sent": 10.0, "first_token": 5.0, "posted": 12.0}, TEXT_STAGES)
        assert parts == [10.0, 0.0, 2.0]

    @pytest.mark.parametrize(
        ("values", "q", "expected"),
        [
            ([], 0.5, None),
            ([7.0], 0.95, 7.0),
            ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
            ([0.0, 10.0], 0.95, 9.5),
        ],
    )
    def test_percentile_interpolates(
        self, values: list[float], q: float, expected: float | None
    ) -> None:
        """Quantiles interpolate linearly between ranks; no values gives None."""
        assert percentile(values, q) == expected

    def test_stage_stats_adds_a_total_row(self) -> None:
        """Stats cover each stage that was stamped, then the whole turn."""
        turns = [
            TurnBar("a", {"typing_sent": 1.0, "first_token": 11.0, "posted": 21.0}),
            TurnBar("b", {"typing_sent": 3.0}),
        ]
        rows = stage_stats(turns, TEXT_STAGES)
        assert [row.stage for row in rows] == ["typing_sent", "first_token", "posted", "total"]
        assert [row.count for row in rows] == [2, 1, 1, 2]
        assert rows[0].p50_ms == 2.0
        assert rows[-1].p50_ms == 12.0


class TestCharts:
    """The SVG documents are well-formed, complete and escape what they draw."""

    def test_one_bar_group_per_turn_with_its_id(self) -> None:
        """Every turn becomes a titled group with one rect per stamped segment."""
        turns = [
            TurnBar(f"t{i}", {"typing_sent": 1.0, "first_token": 10.0 * i, "posted": 12.0 * i})
            for i in range(1, 8)
        ]
        root = parse(latency_svg(turns, TEXT_STAGES, title="text"))
        groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "turn"]
        assert [g.get("data-turn-id") for g in groups] == [f"t{i}" for i in range(1, 8)]
        assert all(len(g.findall(f"{SVG}rect")) == 3 for g in groups)
        assert all(g.find(f"{SVG}title") is not None for g in groups)

    def test_bars_are_capped_at_the_last_200(self) -> None:
        """At most the last 200 turns are drawn."""
        turns = [TurnBar(f"t{i}", {"typing_sent": 1.0}) for i in range(250)]
        root = parse(latency_svg(turns, TEXT_STAGES, title="text"))
        groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "turn"]
        assert len(groups) == 200
        assert groups[0].get("data-turn-id") == "t50"

    def test_no_turns_draws_a_placeholder(self) -> None:
        """An empty chart is still a valid picture that says so."""
        svg = latency_svg([], VOICE_STAGES, title="voice")
        assert "No turns yet" in svg
        parse(svg)

    def test_text_is_escaped(self) -> None:
        """Titles and ids with markup characters cannot break out of the SVG."""
        turns = [TurnBar('x"><script>alert(1)</script>', {"typing_sent": 1.0})]
        svg = latency_svg(turns, TEXT_STAGES, title="<b>&")
        root = parse(svg)
        assert "<script>" not in svg
        assert not list(root.iter(f"{SVG}script"))

    def test_stage_chart_has_p50_and_p95_bars(self) -> None:
        """Each measured stage row draws a p95 and a p50 bar; unmeasured rows say so."""
        turns = [TurnBar("a", {"stt_final": 40.0, "first_token": 400.0})]
        svg = stage_stats_svg(stage_stats(turns, VOICE_STAGES), title="voice")
        root = parse(svg)
        rows = [g for g in root.iter(f"{SVG}g") if g.get("class") == "stage"]
        assert [g.get("data-stage") for g in rows][-1] == "total"
        assert "not measured" in svg
        measured = rows[0]
        assert {r.get("class") for r in measured.findall(f"{SVG}rect")} >= {"p50", "p95"}

    def test_usage_chart_draws_each_day_and_the_budget(self) -> None:
        """One group per day; the budget line is drawn when it fits the scale."""
        days = [DayBar(f"2026-01-{d:02d}", 0.5 * d, 100 * d, d) for d in range(1, 31)]
        root = parse(daily_usage_svg(days, title="usage", budget_usd=20.0))
        assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "day"]) == 30
        assert any(line.get("class") == "budget" for line in root.iter(f"{SVG}line"))

    def test_far_budget_is_noted_not_drawn(self) -> None:
        """A budget far above the spend is mentioned instead of flattening the bars."""
        days = [DayBar("2026-01-01", 0.01, 10, 1)]
        svg = daily_usage_svg(days, title="usage", budget_usd=50.0)
        root = parse(svg)
        assert not any(line.get("class") == "budget" for line in root.iter(f"{SVG}line"))
        assert "above this scale" in svg
