"""How an adapter tells the dashboard about its provider: connection state, errors, reconnects.

Adapters recover from most provider trouble by themselves (a gateway resume, an
EventSub reconnect), so the supervisor never sees it; they report it through a
:data:`StatusReporter` instead, which the app binds to the dashboard's
:meth:`~familiar_connect.dashboard.providers.ProviderBoard.report` for the
adapter's provider id. Without a dashboard the reporter is ``None`` and
:func:`report_status` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["StatusReporter", "report_status"]

log = structlog.get_logger(__name__)

StatusReporter = Callable[..., None]
"""``report(state=..., error=..., reconnected=...)``, all keywords optional."""


def report_status(reporter: StatusReporter | None, *args: Any, **fields: Any) -> None:
    """Pass ``args`` and ``fields`` to ``reporter`` if there is one; never raises.

    A failing reporter is logged. ``args`` carry a provider id when one adapter
    reports for several rows (voice: ``discord_voice``, ``stt``, ``tts``).

    The status line is secondary: an adapter must keep working when the dashboard
    cannot take a report.
    """
    if reporter is None:
        return
    try:
        reporter(*args, **fields)
    except Exception:
        log.warning("status_report_failed", exc_info=True)
