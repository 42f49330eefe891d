"""DashboardService: the dashboard as a supervised service inside the familiar's process.

Construct it with the running :class:`~familiar_connect.app.Familiar`, add it
to the supervisor's services, then tell it the supervisor::

    dashboard = DashboardService(familiar)
    supervisor = Supervisor([*familiar.services, dashboard], describe_error=safe_error_text)
    dashboard.supervisor = supervisor

Construction checks the bind address (a non-loopback ``DASHBOARD_HOST``
needs ``DASHBOARD_ALLOW_REMOTE=true``, else :class:`ConfigError`), settles the
login token (``FAMILIAR_DASHBOARD_TOKEN`` or a fresh random one), adds it and
every configured secret to the log redactor, and becomes the orchestrator's
``observer`` (chaining any observer already set).

:meth:`DashboardService.run` listens, prints the login URL to stderr once
(the token is a secret, so it never goes through the log), feeds the live
streams, and on cancellation closes every stream and the listener.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from aiohttp import web

from familiar_connect.dashboard.api import DashboardState, live_snapshot
from familiar_connect.dashboard.auth import (
    HostPolicy,
    SessionStore,
    check_bind,
    generate_token,
    is_wildcard_host,
)
from familiar_connect.dashboard.controls import (
    OPERATOR_LOG_NAME,
    Controls,
    OperatorLog,
    VoiceControl,
)
from familiar_connect.dashboard.hub import LiveHub
from familiar_connect.dashboard.memory_view import AuditStatus
from familiar_connect.dashboard.providers import ProviderBoard
from familiar_connect.dashboard.server import create_app
from familiar_connect.errors import ConfigError
from familiar_connect.logs import log_redactor
from familiar_connect.settings import Settings
from familiar_connect.supervisor import Supervisor

if TYPE_CHECKING:
    from familiar_connect.app import Familiar

__all__ = ["DashboardService"]

log = structlog.get_logger(__name__)


def _url_host(host: str) -> str:
    if is_wildcard_host(host):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class DashboardService:
    """The operator dashboard (a :class:`~familiar_connect.supervisor.Service` named ``dashboard``).

    Args:
        familiar: the running familiar.
        settings: defaults to ``familiar.settings``.
        supervisor: the supervisor running the services (may be set later).
        voice: the voice adapter's controls, when a voice service runs (may be
            set later with :meth:`set_voice`).
        host: overrides ``DASHBOARD_HOST``.
        port: overrides ``DASHBOARD_PORT`` (0 picks a free port; see :attr:`port`).
        token: overrides ``FAMILIAR_DASHBOARD_TOKEN`` (tests).
        extra_hosts: further ``Host`` names to accept (when bound remotely on purpose).
        out: where the login URL is printed (default: ``sys.stderr`` at start).
        max_clients: most live streams at once.
        flush_interval_s: live updates are batched at most this often.
        heartbeat_s: keep-alive comment interval on idle streams.
        audit_ttl_s: how long an audit verification result is reused.
        audit_every_s: the audit chain is verified at start and then this often,
            so the warning banner appears without anyone opening the memory page.

    Raises:
        ConfigError: non-loopback host without ``DASHBOARD_ALLOW_REMOTE``, or a
            configured token shorter than 16 characters.
    """

    name = "dashboard"

    def __init__(
        self,
        familiar: Familiar,
        *,
        settings: Settings | None = None,
        supervisor: Supervisor | None = None,
        voice: VoiceControl | None = None,
        host: str | None = None,
        port: int | None = None,
        token: str | None = None,
        extra_hosts: Iterable[str] = (),
        out: TextIO | None = None,
        max_clients: int = 32,
        flush_interval_s: float = 0.25,
        heartbeat_s: float = 15.0,
        audit_ttl_s: float = 30.0,
        audit_every_s: float = 600.0,
    ) -> None:
        self.settings = settings if settings is not None else familiar.settings
        self.host = host if host is not None else self.settings.dashboard_host
        self._requested_port = port if port is not None else self.settings.dashboard_port
        self.remote = check_bind(self.host, allow_remote=self.settings.dashboard_allow_remote)
        configured = self.settings.familiar_dashboard_token
        if token is None and configured is not None:
            token = configured.get_secret_value()
        self.token_generated = token is None
        self._token = token if token is not None else generate_token()
        self._secrets = [self._token, *self.settings.secret_values()]
        log_redactor().add_secrets(self._secrets)
        self._out = out
        self._audit_every_s = audit_every_s
        self._announced = False
        self.port: int | None = None
        self.started = asyncio.Event()

        self.hub = LiveHub(max_clients=max_clients, flush_interval_s=flush_interval_s)
        self.providers = ProviderBoard(self.settings, familiar.character, familiar.llm.stats)
        operator_log = OperatorLog(self.settings.familiar_dir / OPERATOR_LOG_NAME)
        self.controls = Controls(familiar.orchestrator, operator_log, voice=voice)
        self.state = DashboardState(
            familiar=familiar,
            hub=self.hub,
            providers=self.providers,
            sessions=SessionStore(self._token),
            hosts=HostPolicy(self.host, extra_hosts),
            controls=self.controls,
            audit=AuditStatus(familiar.memory.store, ttl_s=audit_ttl_s),
            supervisor=supervisor,
            heartbeat_s=heartbeat_s,
        )
        self.hub.snapshot = lambda: live_snapshot(self.state)
        self._attach_observer(familiar)

    # --- wiring ----------------------------------------------------------------------

    def _attach_observer(self, familiar: Familiar) -> None:
        orchestrator = familiar.orchestrator
        previous: Callable[[str, dict[str, Any]], None] | None = orchestrator.observer
        hub, providers = self.hub, self.providers

        def observe(kind: str, data: dict[str, Any]) -> None:
            hub.observe(kind, data)
            try:
                providers.observe(kind, data)
            except Exception:
                log.exception("dashboard_provider_observe_failed", kind=kind)
            if previous is not None:
                previous(kind, data)

        orchestrator.observer = observe

    @property
    def supervisor(self) -> Supervisor | None:
        return self.state.supervisor

    @supervisor.setter
    def supervisor(self, supervisor: Supervisor | None) -> None:
        self.state.supervisor = supervisor

    def set_voice(self, voice: VoiceControl | None) -> None:
        """Show (or hide, with None) the "Leave voice" control."""
        self.controls.voice = voice

    @property
    def url(self) -> str:
        """The dashboard's address, without the token (None-safe before start: uses the setting)."""
        port = self.port if self.port is not None else self._requested_port
        return f"http://{_url_host(self.host)}:{port}/"

    def login_url(self) -> str:
        """The address with ``?token=``. A secret: print it for the operator, never log it."""
        return f"{self.url}?token={self._token}"

    # --- service ---------------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled; then end every stream and close the listener.

        Raises:
            ConfigError: the address cannot be bound (port in use, no such address).
        """
        # configure_logging() may have installed a new redactor since construction.
        log_redactor().add_secrets(self._secrets)
        app = create_app(self.state)
        # handler_cancellation: a browser that goes away frees its live-stream slot at once.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=2.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"The dashboard cannot listen on {self.host}:{self._requested_port} "
                    f"({exc.strerror or exc}). Set DASHBOARD_PORT to a free port, or "
                    "DASHBOARD_ENABLED=false to run without it."
                ) from None
            self.port = _bound_port(runner, self._requested_port)
            self.hub.reopen()
            self._announce()
            self.started.set()
            async with asyncio.TaskGroup() as group:
                group.create_task(self.hub.run(), name="dashboard:broadcaster")
                group.create_task(self._verify_audit_periodically(), name="dashboard:audit")
        finally:
            self.started.clear()
            self.hub.close()
            await runner.cleanup()
            log.info("dashboard_stopped")

    async def _verify_audit_periodically(self) -> None:
        while True:
            try:
                result = await self.state.audit.get(refresh=True)
            except Exception:
                # A broken check must not take the dashboard down; the page shows the last result.
                log.warning("dashboard_audit_check_failed", exc_info=True)
            else:
                if not result["ok"]:
                    log.warning(
                        "memory_audit_verification_failed",
                        problems=result["problem_count"],
                        first_problem=result["problems"][0] if result["problems"] else None,
                    )
                self.hub.mark_dirty()
            await asyncio.sleep(self._audit_every_s)

    def _announce(self) -> None:
        if self.remote:
            log.warning(
                "dashboard_listening_remotely",
                host=self.host,
                port=self.port,
                advice="prefer 127.0.0.1 with an SSH tunnel; see docs/dashboard.md",
            )
        log.info("dashboard_started", url=self.url, token_generated=self.token_generated)
        if self._announced:
            return
        self._announced = True
        out = self._out if self._out is not None else sys.stderr
        if self.token_generated:
            line = (
                f"Dashboard: {self.login_url()}\n"
                "  (this link logs you in; it holds a secret token made for this run - "
                "do not share it)\n"
            )
        else:
            line = f"Dashboard: {self.url}?token=<FAMILIAR_DASHBOARD_TOKEN>\n"
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            log.warning("dashboard_login_url_not_printed")


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
