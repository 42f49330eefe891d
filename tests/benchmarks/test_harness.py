"""The benchmark harness's statistics and registry: values in, values out, no timing."""

from __future__ import annotations

import math

import pytest
from benchmarks._harness import BenchResult, bootstrap_ratio, percentile, summarize
from benchmarks.suite import SUITE, by_name


class TestPercentile:
    def test_interpolates_between_ranks(self) -> None:
        """The 50th percentile of an even-sized sample is the mean of the two middle values."""
        assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5

    def test_extremes_are_min_and_max(self) -> None:
        """Percentiles 0 and 100 are the smallest and largest value."""
        values = [0.5, 1.0, 9.0]
        assert percentile(values, 0) == 0.5
        assert percentile(values, 100) == 9.0

    def test_empty_sample_is_nan(self) -> None:
        """An empty sample has no percentile (NaN, not an exception)."""
        assert math.isnan(percentile([], 99))


class TestSummarize:
    def test_reports_the_fields_every_result_needs(self) -> None:
        """A summary has n, min, p50, p95, p99, max, mean and the unit."""
        summary = summarize([float(i) for i in range(1, 101)])
        assert summary["n"] == 100
        assert summary["min"] == 1.0
        assert summary["max"] == 100.0
        assert summary["p50"] == 50.5
        assert {"p95", "p99", "mean", "unit"} <= summary.keys()

    def test_flags_p99_from_few_samples(self) -> None:
        """Below 300 samples a p99 is marked unreliable; from 300 on it is not."""
        assert summarize([1.0] * 299)["p99_reliable"] is False
        assert summarize([1.0] * 300)["p99_reliable"] is True

    def test_empty_sample_has_only_n(self) -> None:
        """An empty sample summarises to n=0 without percentiles."""
        assert summarize([]) == {"n": 0, "unit": "ms"}


class TestBootstrapRatio:
    def test_ratio_and_difference_of_medians(self) -> None:
        """The ratio and difference compare the two medians, with intervals around them."""
        result = bootstrap_ratio([2.0] * 50, [1.0] * 50, iterations=50)
        assert result["ratio"] == 2.0
        assert result["difference"] == 1.0
        assert result["ratio_ci95"] == [2.0, 2.0]

    def test_missing_series_gives_no_ratio(self) -> None:
        """Without samples on one side there is no ratio rather than an error."""
        assert bootstrap_ratio([], [1.0]) == {"ratio": None, "difference": None}


class TestBenchResult:
    def test_checks_fail_on_missing_values(self) -> None:
        """A gate whose value could not be measured fails, as a broken benchmark must."""
        result = BenchResult("x", "x")
        result.check("ratio", None, 2.0)
        result.check("fine", 1.5, 2.0)
        assert [c.ok for c in result.checks] == [False, True]


class TestSuite:
    def test_lists_all_seven_benchmarks_in_order(self) -> None:
        """The suite has the issue's seven benchmarks, numbered 1 to 7."""
        assert [spec.number for spec in SUITE] == [1, 2, 3, 4, 5, 6, 7]

    def test_unavailable_entries_say_why(self) -> None:
        """A benchmark without a module carries the reason it cannot run yet."""
        for spec in SUITE:
            assert (spec.module is None) == bool(spec.unavailable)

    def test_lookup_by_name_or_number(self) -> None:
        """A benchmark is found by its name or its number; an unknown one is a KeyError."""
        assert by_name("history").number == 6
        assert by_name("3").name == "text_turn"
        with pytest.raises(KeyError):
            by_name("nope")
