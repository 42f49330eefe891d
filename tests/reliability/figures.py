"""Figures the reliability families report (counts, slopes), for the summary and docs/reliability.md.

Each test calls :func:`record` with its family and numbers. They are printed in a
"reliability figures" section at the end of the pytest run and, when
``FAMILIAR_RELIABILITY_FIGURES`` names a file, appended to it as JSON lines
(``scripts/reliability.sh`` does this and prints a table).
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["FIGURES", "record", "timeout_s"]

FIGURES: list[dict[str, Any]] = []


def record(family: str, test: str, **values: Any) -> None:
    """Keep one figure line: ``family`` (canaries, faults, ...), the test, its numbers."""
    entry = {"family": family, "test": test, **values}
    FIGURES.append(entry)
    path = os.environ.get("FAMILIAR_RELIABILITY_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")


def timeout_s(base_s: float) -> float:
    """A hang guard (never a performance threshold), scaled by ``FAMILIAR_TIMEOUT_SCALE``."""
    return base_s * float(os.environ.get("FAMILIAR_TIMEOUT_SCALE", "1"))
