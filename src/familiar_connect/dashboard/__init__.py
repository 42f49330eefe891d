"""The operator dashboard: a local, token-protected web page inside the familiar's process.

Live conversations (server-sent events), latency per turn (server-side SVG),
provider health, usage and cost against budgets, the memory directory and its
audit trail, operator controls, ``/healthz`` and ``/metrics``. Start it as a
service with :class:`DashboardService`; see ``docs/dashboard.md``.

Modules: ``service`` (the supervised service), ``server`` (app factory, guard
middleware, security headers), ``auth`` (token, sessions, CSRF, Host check),
``api`` (endpoints), ``hub`` (live state and SSE fan-out), ``providers``,
``usage_view``, ``memory_view``, ``controls`` (operator actions and their log),
``metrics`` (Prometheus text), ``svg`` (charts), ``static/`` (the page).
"""

from __future__ import annotations

from familiar_connect.dashboard.controls import OPERATOR_LOG_NAME, VoiceControl
from familiar_connect.dashboard.hub import ADAPTER_COUNTERS, LiveHub
from familiar_connect.dashboard.providers import PROVIDERS, ProviderBoard
from familiar_connect.dashboard.service import DashboardService

__all__ = [
    "ADAPTER_COUNTERS",
    "OPERATOR_LOG_NAME",
    "PROVIDERS",
    "DashboardService",
    "LiveHub",
    "ProviderBoard",
    "VoiceControl",
]
