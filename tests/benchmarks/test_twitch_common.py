"""The Twitch ingest benchmark's tag and lag histogram: values in, values out, no timing."""

from __future__ import annotations

import math

from benchmarks._twitch_common import LagHistogram, sent_ns


class TestSentNs:
    def test_reads_the_scheduled_time_at_the_end(self) -> None:
        """The send time is the number after the last ``~<seq>-``, whatever precedes it."""
        assert sent_ns("@familiarbot what now? ~17-123456789") == 123_456_789

    def test_other_text_has_none(self) -> None:
        """Chat without a benchmark tag (the bot's own echoes) is not a sample."""
        assert sent_ns("echo: hello") is None
        assert sent_ns("a ~ tilde without a tag") is None
        assert sent_ns("~12-notanumber") is None


class TestLagHistogram:
    def test_quantiles_within_one_percent(self) -> None:
        """Quantiles of 1..10,000 ms land within the 1% bucket width of the exact values."""
        hist = LagHistogram()
        for ms in range(1, 10_001):
            hist.add(ms * 1_000_000)
        summary = hist.summary()
        assert summary["n"] == 10_000
        assert summary["min"] == 1.0 and summary["max"] == 10_000.0
        assert math.isclose(summary["p50"], 5_000, rel_tol=0.011)
        assert math.isclose(summary["p99"], 9_900, rel_tol=0.011)
        assert math.isclose(summary["mean"], 5_000.5, rel_tol=1e-6)
        assert summary["p99_reliable"] is True

    def test_reset_and_empty(self) -> None:
        """A reset histogram is empty again; an empty one reports only n and the unit."""
        hist = LagHistogram()
        hist.add(5_000_000)
        hist.reset()
        assert hist.summary() == {"n": 0, "unit": "ms"}

    def test_tiny_and_huge_lags_are_kept(self) -> None:
        """Sub-µs lags clamp to the first bucket, lags past an hour to the last; none is lost."""
        hist = LagHistogram()
        hist.add(0)
        hist.add(10 * 3_600 * 10**9)
        assert hist.count == 2
        assert hist.quantile_ns(1.0) == 10 * 3_600 * 10**9
