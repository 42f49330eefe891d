"""The dashboard's endpoints: JSON, server-sent events, SVG charts, controls, health and metrics.

Handlers only gather values and serialise them; authentication, the Host
check, CSRF and security headers are the server's middleware
(:mod:`familiar_connect.dashboard.server`). Every body leaves through
:mod:`~familiar_connect.dashboard._safe` (redacted), and every response is
``Cache-Control: no-store``.

Endpoints (all ``GET`` unless marked; all behind the session except ``/healthz``)::

    /api/session            CSRF token for this session, familiar name, features
    /api/live               the live snapshot (also pushed over /api/events)
    /api/events             server-sent events: "live" snapshots and "turn" records
    /api/latency            p50/p95 per stage, per modality (JSON)
    /api/charts/latency.svg ?modality=text|voice&n=40: stacked bars per turn
    /api/charts/stages.svg  ?modality=text|voice: p50/p95 per stage
    /api/charts/usage.svg   cost per day, last 30 days, with the budget line
    /api/providers          provider rows and supervised services
    /api/usage              totals, budgets, per user, per call site
    /api/memory/list        ?path=: one directory of the memory store
    /api/memory/note        ?path=: one note (truncated view) and its audit trail
    /api/memory/audit       ?refresh=1: chain verification status and recent writes
    POST /api/control/{action}   pause, resume, mute, unmute, cancel, leave_voice
    POST /api/logout        end this session
    /healthz                "ok" or "degraded" (no auth, no details)
    /metrics                Prometheus text (session cookie or Bearer token)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from familiar_connect.core.events import TextTurnTimings, VoiceTurnTimings
from familiar_connect.dashboard._safe import dumps, redact_text
from familiar_connect.dashboard.auth import SESSION_COOKIE, HostPolicy, Session, SessionStore
from familiar_connect.dashboard.controls import ControlError, Controls
from familiar_connect.dashboard.hub import LiveHub, sse_message
from familiar_connect.dashboard.memory_view import (
    AuditStatus,
    MemoryViewError,
    audit_rows,
    list_directory,
    read_note,
)
from familiar_connect.dashboard.metrics import CONTENT_TYPE, MetricsInput, render_metrics
from familiar_connect.dashboard.providers import ProviderBoard
from familiar_connect.dashboard.svg import (
    TEXT_STAGES,
    VOICE_STAGES,
    Stage,
    TurnBar,
    daily_usage_svg,
    latency_svg,
    stage_stats,
    stage_stats_svg,
)
from familiar_connect.dashboard.usage_view import usage_report
from familiar_connect.errors import StorageError
from familiar_connect.supervisor import ServiceStatus, Supervisor

if TYPE_CHECKING:
    # app.py builds the dashboard; importing it at run time would be circular.
    from familiar_connect.app import Familiar

__all__ = ["SESSION_KEY", "STATE_KEY", "DashboardState", "live_snapshot", "routes"]

log = structlog.get_logger(__name__)

_DEFAULT_BARS = 40
_MAX_BARS = 200
_MAX_BODY_BYTES = 16 * 1024
_STREAM_WRITE_TIMEOUT_S = 30.0


@dataclass
class DashboardState:
    """Everything the handlers read; one per running dashboard."""

    familiar: Familiar
    hub: LiveHub
    providers: ProviderBoard
    sessions: SessionStore
    hosts: HostPolicy
    controls: Controls
    audit: AuditStatus
    supervisor: Supervisor | None = None
    heartbeat_s: float = 15.0
    stream_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    failed_logins: int = 0

    @property
    def statuses(self) -> dict[str, ServiceStatus]:
        return dict(self.supervisor.statuses) if self.supervisor is not None else {}


STATE_KEY = web.AppKey("familiar_dashboard_state", DashboardState)
SESSION_KEY = web.RequestKey("familiar_dashboard_session", Session)


def _state(request: web.Request) -> DashboardState:
    return request.app[STATE_KEY]


def json_response(data: Any, *, status: int = 200) -> web.Response:
    """A redacted JSON response."""
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def _svg_response(svg: str) -> web.Response:
    return web.Response(text=redact_text(svg), content_type="image/svg+xml")


# --- snapshots -------------------------------------------------------------------------------


def live_snapshot(state: DashboardState) -> dict[str, Any]:
    """The live view: conversations, last turns, counters, pause/mute state. Cheap, synchronous."""
    orchestrator = state.familiar.orchestrator
    stats = asdict(orchestrator.stats)
    active = {key.as_str(): key for key in orchestrator.active_conversations()}
    conversations = state.hub.conversations()
    known = {row["conversation"] for row in conversations}
    for name in active:
        if name not in known:
            conversations.append(
                {
                    "conversation": name,
                    "platform": name.partition(":")[0],
                    "modality": "",
                    "speaker": "",
                    "activity": "idle",
                    "turns": 0,
                    "last_outcome": "",
                    "updated_at": "",
                }
            )
    for row in conversations:
        key = active.get(row["conversation"])
        row["active"] = key is not None
        row["replying"] = key is not None and orchestrator.is_replying(key)
        if row["replying"] and row["activity"] in ("idle", "listening"):
            row["activity"] = "thinking"
    counters = {
        "messages_in": stats["events_in"],
        "replies_out": stats["replies"],
        "turns": stats["turns"],
        "cancelled": stats["cancelled"],
        "failed": stats["failed"],
        "inbox_overflow": stats["inbox_overflow"],
        **state.hub.counters,
    }
    return {
        "familiar": state.familiar.character.display_name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "paused": orchestrator.paused,
        "counters": counters,
        "conversations": conversations[:50],
        "turns": state.hub.recent_turns()[:25],
        "controls": state.controls.state(),
        "streams": state.hub.stats,
        "audit": state.audit.last,
        "healthy": state.providers.healthy(state.statuses),
    }


def _turns(state: DashboardState, voice: bool) -> list[TurnBar]:
    kind = VoiceTurnTimings if voice else TextTurnTimings
    return [
        TurnBar(timings.turn_id, timings.durations_ms())
        for timings in list(state.familiar.orchestrator.recent_timings)
        if isinstance(timings, kind)
    ]


def _modality(request: web.Request) -> tuple[bool, tuple[Stage, ...], str]:
    modality = request.query.get("modality", "text")
    if modality not in ("text", "voice"):
        raise web.HTTPBadRequest(text="modality must be text or voice")
    voice = modality == "voice"
    return voice, VOICE_STAGES if voice else TEXT_STAGES, modality


def _latency_stats(state: DashboardState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for modality, voice, stages in (("text", False, TEXT_STAGES), ("voice", True, VOICE_STAGES)):
        turns = _turns(state, voice)
        out[modality] = {
            "turns": len(turns),
            "stages": [asdict(row) for row in stage_stats(turns, stages)],
        }
    return out


# --- handlers --------------------------------------------------------------------------------


async def session_info(request: web.Request) -> web.Response:
    state = _state(request)
    session = request[SESSION_KEY]
    return json_response(
        {
            "csrf": session.csrf,
            "familiar": state.familiar.character.display_name,
            "familiar_id": state.familiar.settings.familiar_id,
            "voice_available": state.controls.voice is not None,
        }
    )


async def live(request: web.Request) -> web.Response:
    return json_response(live_snapshot(_state(request)))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events until the browser leaves or the dashboard shuts down."""
    state = _state(request)
    client = state.hub.subscribe()
    if client is None:
        return web.Response(
            text=dumps({"error": "too many live streams are open; close a dashboard tab"}),
            status=503,
            content_type="application/json",
            headers={"Retry-After": "10"},
        )
    task = asyncio.current_task()
    if task is not None:
        state.stream_tasks.add(task)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    try:
        await response.prepare(request)
        await response.write(b"retry: 3000\n\n" + sse_message("live", live_snapshot(state)))
        while True:
            batch = await client.next_batch(timeout_s=state.heartbeat_s)
            if batch is None:
                break
            payload = b"".join(batch) if batch else b": keep-alive\n\n"
            async with asyncio.timeout(_STREAM_WRITE_TIMEOUT_S):
                await response.write(payload)
    except (ConnectionError, TimeoutError):
        # The browser went away or stopped reading; its slot is freed below.
        pass
    finally:
        state.hub.unsubscribe(client)
        if task is not None:
            state.stream_tasks.discard(task)
    return response


async def latency(request: web.Request) -> web.Response:
    return json_response(_latency_stats(_state(request)))


async def latency_chart(request: web.Request) -> web.Response:
    state = _state(request)
    voice, stages, modality = _modality(request)
    try:
        count = int(request.query.get("n", _DEFAULT_BARS))
    except ValueError:
        raise web.HTTPBadRequest(text="n must be a number") from None
    count = max(1, min(count, _MAX_BARS))
    turns = _turns(state, voice)[-count:]
    return _svg_response(latency_svg(turns, stages, title=f"{modality} turns: latency per stage"))


async def stages_chart(request: web.Request) -> web.Response:
    state = _state(request)
    voice, stages, modality = _modality(request)
    rows = stage_stats(_turns(state, voice), stages)
    return _svg_response(stage_stats_svg(rows, title=f"{modality} turns: p50 and p95 per stage"))


async def providers(request: web.Request) -> web.Response:
    state = _state(request)
    statuses = state.statuses
    return json_response(
        {
            "providers": state.providers.rows(statuses),
            "services": state.providers.services(statuses),
            "healthy": state.providers.healthy(statuses),
        }
    )


async def _usage(state: DashboardState) -> Any:
    familiar = state.familiar
    return await usage_report(familiar.db, familiar.usage, familiar.character.config.policy)


async def usage(request: web.Request) -> web.Response:
    try:
        report = await _usage(_state(request))
    except StorageError as exc:
        return json_response({"error": f"usage unavailable: {exc}"}, status=503)
    return json_response(report.data)


async def usage_chart(request: web.Request) -> web.Response:
    try:
        report = await _usage(_state(request))
    except StorageError as exc:
        return json_response({"error": f"usage unavailable: {exc}"}, status=503)
    return _svg_response(
        daily_usage_svg(
            report.days, title="cost per day, last 30 days", budget_usd=report.budget_usd
        )
    )


async def memory_list(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        data = await list_directory(state.familiar.memory, request.query.get("path", ""))
    except MemoryViewError as exc:
        return json_response({"error": exc.message}, status=exc.status)
    return json_response(data)


async def memory_note(request: web.Request) -> web.Response:
    state = _state(request)
    try:
        data = await read_note(state.familiar.memory, request.query.get("path", ""))
    except MemoryViewError as exc:
        return json_response({"error": exc.message}, status=exc.status)
    return json_response(data)


async def memory_audit(request: web.Request) -> web.Response:
    state = _state(request)
    status = await state.audit.get(refresh=request.query.get("refresh") == "1")
    state.hub.mark_dirty()
    return json_response(
        {"status": status, "recent": audit_rows(state.familiar.memory.audit_entries, limit=50)}
    )


async def control(request: web.Request) -> web.Response:
    state = _state(request)
    action = request.match_info["action"]
    body: dict[str, Any] = {}
    if request.can_read_body:
        raw = await request.content.read(_MAX_BODY_BYTES + 1)
        if len(raw) > _MAX_BODY_BYTES:
            return json_response({"error": "request body too large"}, status=413)
        if raw.strip():
            try:
                parsed = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return json_response({"error": "body must be JSON"}, status=400)
            if not isinstance(parsed, dict):
                return json_response({"error": "body must be a JSON object"}, status=400)
            body = parsed
    try:
        result = await state.controls.run(action, body)
    except ControlError as exc:
        return json_response({"error": exc.message}, status=exc.status)
    state.hub.mark_dirty()
    return json_response(result)


async def logout(request: web.Request) -> web.Response:
    state = _state(request)
    session = request[SESSION_KEY]
    state.sessions.close(session.sid)
    response = json_response({"ok": True})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def healthz(request: web.Request) -> web.Response:
    state = _state(request)
    healthy = state.familiar.orchestrator.running and state.providers.healthy(state.statuses)
    return web.Response(
        text="ok\n" if healthy else "degraded\n",
        status=200 if healthy else 503,
        content_type="text/plain",
    )


async def metrics(request: web.Request) -> web.Response:
    state = _state(request)
    orchestrator = state.familiar.orchestrator
    statuses = state.statuses
    usage_today: dict[str, Any] | None
    try:
        usage_today = (await _usage(state)).data["today"]
    except StorageError:
        usage_today = None
    latency_rows = {
        "text": stage_stats(_turns(state, False), TEXT_STAGES),
        "voice": stage_stats(_turns(state, True), VOICE_STAGES),
    }
    audit = state.audit.last
    text = render_metrics(
        MetricsInput(
            orchestrator=asdict(orchestrator.stats),
            paused=orchestrator.paused,
            active_conversations=len(orchestrator.active_conversations()),
            adapter_counters=state.hub.counters,
            streams=state.hub.stats,
            services=state.providers.services(statuses),
            llm=state.providers.llm,
            latency=latency_rows,
            healthy=orchestrator.running and state.providers.healthy(statuses),
            audit_ok=audit["ok"] if audit is not None else None,
            usage_today=usage_today,
        )
    )
    response = web.Response(text=text)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


def routes() -> list[web.RouteDef]:
    """The API and health routes (the server adds the page and static files)."""
    return [
        web.get("/api/session", session_info),
        web.get("/api/live", live),
        web.get("/api/events", events),
        web.get("/api/latency", latency),
        web.get("/api/charts/latency.svg", latency_chart),
        web.get("/api/charts/stages.svg", stages_chart),
        web.get("/api/charts/usage.svg", usage_chart),
        web.get("/api/providers", providers),
        web.get("/api/usage", usage),
        web.get("/api/memory/list", memory_list),
        web.get("/api/memory/note", memory_note),
        web.get("/api/memory/audit", memory_audit),
        web.post("/api/control/{action}", control),
        web.post("/api/logout", logout),
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
    ]
