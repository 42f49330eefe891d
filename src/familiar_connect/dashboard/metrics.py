"""``GET /metrics``: the dashboard's numbers in the Prometheus text exposition format (0.0.4).

Sans-I/O: :func:`render_metrics` turns plain values into text. Counters end
in ``_total``; latency quantiles are exported as gauges labelled with
``modality``, ``stage`` and ``quantile`` (computed over the recent turns the
orchestrator keeps), since the process does not keep histograms. Label values
are redacted and escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from familiar_connect.dashboard._safe import redact_text
from familiar_connect.dashboard.svg import StageStats

__all__ = ["CONTENT_TYPE", "MetricsInput", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STAT_HELP = {
    "events_in": "Inbound events submitted to the orchestrator.",
    "accepted": "Inbound events accepted for a reply.",
    "ignored": "Inbound events ignored (access policy, mutes, bots).",
    "refused": "Inbound events refused with a notice (limits, budgets).",
    "inbox_overflow": "Inbound events dropped because a conversation inbox was full.",
    "actors_refused": "Conversations refused because too many were active.",
    "turns": "Turns started.",
    "replies": "Replies delivered.",
    "silent": "Turns where the familiar chose not to speak.",
    "cancelled": "Turns cancelled (barge-in, operator, shutdown).",
    "failed": "Turns that failed.",
    "history_refused": "History rows refused by a full writer queue.",
}


@dataclass(slots=True)
class MetricsInput:
    """Everything ``/metrics`` exports, gathered by the server."""

    orchestrator: Mapping[str, int]
    paused: bool
    active_conversations: int
    adapter_counters: Mapping[str, int]
    streams: Mapping[str, int]
    services: Sequence[Mapping[str, Any]]
    llm: Mapping[str, int]
    latency: Mapping[str, Sequence[StageStats]]
    healthy: bool
    audit_ok: bool | None = None
    usage_today: Mapping[str, Any] | None = None


def _escape(value: str) -> str:
    value = redact_text(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: Iterable[tuple[Mapping[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            self.lines.append(f"{name}{_labels(labels)} {_number(value)}")


def render_metrics(data: MetricsInput) -> str:
    """The exposition text, ending with a newline."""
    out = _Writer()
    for stat, value in data.orchestrator.items():
        help_text = _STAT_HELP.get(stat, f"Orchestrator counter {stat}.")
        out.family(f"familiar_{stat}_total", "counter", help_text, [({}, value)])
    out.family(
        "familiar_paused",
        "gauge",
        "1 while the operator has paused the familiar.",
        [({}, data.paused)],
    )
    out.family(
        "familiar_active_conversations",
        "gauge",
        "Conversations with a live actor.",
        [({}, data.active_conversations)],
    )
    out.family(
        "familiar_adapter_events_total",
        "counter",
        "Adapter counters (dropped/sampled Twitch chat, STT reconnects, DAVE decrypt failures).",
        [({"counter": name}, value) for name, value in sorted(data.adapter_counters.items())],
    )
    out.family(
        "familiar_service_up",
        "gauge",
        "1 while a supervised service is running.",
        [({"service": str(s["service"])}, s["state"] == "running") for s in data.services],
    )
    out.family(
        "familiar_service_restarts_total",
        "counter",
        "Restarts of a supervised service after a failure.",
        [({"service": str(s["service"])}, int(s["restarts"])) for s in data.services],
    )
    out.family(
        "familiar_llm_turns_total",
        "counter",
        "Turns that reached the LLM.",
        [({}, data.llm.get("turns", 0))],
    )
    out.family(
        "familiar_llm_failures_total",
        "counter",
        "Turns whose LLM call failed.",
        [({}, data.llm.get("failures", 0))],
    )
    out.family(
        "familiar_llm_fallbacks_total",
        "counter",
        "Turns answered by a configured fallback model.",
        [({}, data.llm.get("fallbacks", 0))],
    )
    out.family(
        "familiar_llm_requests_retried_total",
        "counter",
        "LLM requests repeated after a 429, 5xx, timeout or dropped connection.",
        [({}, data.llm.get("requests_retried", 0))],
    )
    out.family(
        "familiar_llm_retries_recovered_total",
        "counter",
        "LLM calls that succeeded after at least one retry.",
        [({}, data.llm.get("retries_recovered", 0))],
    )
    samples: list[tuple[Mapping[str, str], float]] = []
    for modality, rows in data.latency.items():
        for row in rows:
            for quantile, value in (("0.5", row.p50_ms), ("0.95", row.p95_ms)):
                if value is not None:
                    samples.append(
                        ({"modality": modality, "stage": row.stage, "quantile": quantile}, value)
                    )
    out.family(
        "familiar_turn_stage_latency_ms",
        "gauge",
        "Per-stage turn latency quantiles over the recent turns, in milliseconds.",
        samples,
    )
    out.family(
        "familiar_dashboard_streams",
        "gauge",
        "Open dashboard event streams.",
        [({}, data.streams.get("sse_clients", 0))],
    )
    out.family(
        "familiar_dashboard_streams_refused_total",
        "counter",
        "Dashboard event streams refused because the client cap was reached.",
        [({}, data.streams.get("sse_refused_clients", 0))],
    )
    out.family(
        "familiar_dashboard_dropped_messages_total",
        "counter",
        "Live messages dropped for dashboard clients that read too slowly.",
        [({}, data.streams.get("sse_dropped_messages", 0))],
    )
    if data.usage_today is not None:
        out.family(
            "familiar_usage_today_tokens",
            "gauge",
            "LLM tokens used today (UTC).",
            [({}, int(data.usage_today.get("tokens", 0)))],
        )
        out.family(
            "familiar_usage_today_cost_usd",
            "gauge",
            "LLM cost today (UTC), in US dollars.",
            [({}, float(data.usage_today.get("cost_usd", 0.0)))],
        )
    if data.audit_ok is not None:
        out.family(
            "familiar_memory_audit_ok",
            "gauge",
            "1 when the last memory audit verification passed.",
            [({}, data.audit_ok)],
        )
    out.family("familiar_healthy", "gauge", "1 when /healthz reports ok.", [({}, data.healthy)])
    return "\n".join(out.lines) + "\n"
