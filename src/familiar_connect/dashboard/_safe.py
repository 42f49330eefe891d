"""The one exit for dashboard data: every value is redacted before it is serialised.

Everything the dashboard sends (JSON, server-sent events, SVG labels, metrics
labels) passes through :func:`redact` or :func:`dumps`, which use the
process's log redactor: configured secret values (in their URL, JSON and
``repr`` forms) and credential patterns become ``[REDACTED]``. A final pass
over the serialised text catches anything an encoder could have recombined.
"""

from __future__ import annotations

import json
from typing import Any

from familiar_connect.logs import log_redactor

__all__ = ["dumps", "redact", "redact_text"]


def redact(obj: Any) -> Any:
    """``obj`` with every string in it redacted (containers walked; input unchanged)."""
    return log_redactor().redact_value(obj)


def redact_text(text: str) -> str:
    """One string, redacted."""
    return log_redactor().redact(text)


def dumps(obj: Any) -> str:
    """Redact, then serialise to one line of JSON, then redact the text once more."""
    text = json.dumps(redact(obj), ensure_ascii=False, separators=(",", ":"), default=str)
    return log_redactor().redact(text)
