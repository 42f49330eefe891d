"""Reliability suite: prints the figures every family recorded at the end of the run."""

from __future__ import annotations

import json
from typing import Any

from tests.reliability.figures import FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Show the figures (counts, slopes) recorded by the reliability tests."""
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for entry in FIGURES:
        terminalreporter.write_line(json.dumps(entry, sort_keys=True))
