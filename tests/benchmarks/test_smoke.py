"""The benchmark suite still runs: ``python -m benchmarks --smoke`` writes well-formed results.

Only the shape is checked, never a time: timings belong in the benchmarks themselves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from benchmarks.suite import SUITE

from tests.familiar_process import clean_env

REPO_ROOT = Path(__file__).resolve().parents[2]
SUMMARY_KEYS = {"n", "unit", "min", "p50", "p95", "p99", "max", "mean"}
ENVIRONMENT_KEYS = {
    "date_utc",
    "cores",
    "load_average",
    "python",
    "sqlite",
    "libopus",
    "git_commit",
}


def _summaries(node: Any) -> list[dict[str, Any]]:
    """Every sample summary (a dict with ``n`` and a unit) nested anywhere in ``node``."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "n" in node and "unit" in node:
            found.append(node)
        for value in node.values():
            found.extend(_summaries(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_summaries(value))
    return found


@pytest.fixture(name="results", scope="module")
def fixture_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench-results")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}


@pytest.mark.slow
class TestSmokeRun:
    def test_writes_one_result_per_benchmark(self, results: dict[str, dict[str, Any]]) -> None:
        """Every benchmark of the suite, available or not, has a results file."""
        assert set(results) == {spec.name for spec in SUITE}

    def test_available_benchmarks_ran(self, results: dict[str, dict[str, Any]]) -> None:
        """Each available benchmark finished with status ok and measured something."""
        for spec in SUITE:
            result = results[spec.name]
            if spec.module is None:
                assert result["status"] == "unavailable"
                assert result["reason"] == spec.unavailable
                continue
            assert result["status"] == "ok", result.get("reason")
            assert result["targets"], spec.name
            assert result["ratios"], spec.name

    def test_results_carry_the_environment(self, results: dict[str, dict[str, Any]]) -> None:
        """Every result records cores, load, Python, SQLite, libopus, commit and date."""
        for result in results.values():
            assert result["environment"].keys() >= ENVIRONMENT_KEYS

    def test_sample_summaries_are_complete(self, results: dict[str, dict[str, Any]]) -> None:
        """Every non-empty sample summary has n, min, p50, p95, p99, max and mean."""
        for name, result in results.items():
            for summary in _summaries(result["metrics"]):
                if summary["n"]:
                    assert summary.keys() >= SUMMARY_KEYS, name

    def test_gates_are_well_formed(self, results: dict[str, dict[str, Any]]) -> None:
        """Each available benchmark has ratio gates with a name, a limit and a verdict.

        Whether they hold is for ``--quick --check`` (tiny sizes make ratios noisy).
        """
        for spec in SUITE:
            if spec.module is None:
                continue
            checks = results[spec.name]["checks"]
            assert checks, spec.name
            for check in checks:
                assert check["name"] and check["limit"] > 0
                assert isinstance(check["ok"], bool)
