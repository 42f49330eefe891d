"""Run long-lived services in one TaskGroup, restart the ones that fail, stop them all cleanly.

A *service* is anything with a ``name`` and an ``async run()`` that runs until
cancelled: a platform adapter, a background writer, the dashboard. The
supervisor is what makes the process safe to leave running:

- a service that raises an ordinary exception is logged and restarted after an
  exponential backoff (capped), so one adapter's outage never takes the others
  down;
- a service that raises a *fatal* error — bad configuration or rejected
  credentials, which no restart can fix — stops the whole process, and the
  error propagates to the CLI, which prints it and exits 2;
- :meth:`Supervisor.stop` (wired to SIGINT/SIGTERM by the app) cancels every
  service and waits for them; nothing is left pending.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import structlog

from familiar_connect.errors import ConfigError, ProviderAuthError

__all__ = ["FATAL_ERRORS", "RestartPolicy", "Service", "ServiceStatus", "Supervisor"]

log = structlog.get_logger(__name__)

# Errors no restart can fix: stop the process and tell the operator.
FATAL_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ProviderAuthError)


@runtime_checkable
class Service(Protocol):
    """A long-lived part of the familiar.

    ``run()`` runs until cancelled. Cancellation is the stop signal: the
    service must release what it holds (``try/finally``) and re-raise
    :class:`asyncio.CancelledError`. Returning normally means the service is
    finished and is not restarted.
    """

    name: str

    async def run(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Backoff between restarts of a failed service.

    A service that ran for at least ``healthy_after_s`` before failing starts
    again from ``initial_delay_s``; one that keeps failing quickly waits
    longer each time, up to ``max_delay_s``.
    """

    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    multiplier: float = 2.0
    healthy_after_s: float = 60.0
    jitter: float = 0.1


@dataclass(slots=True)
class ServiceStatus:
    """What the supervisor knows about one service (read by the dashboard)."""

    name: str
    state: str = "starting"  # starting | running | restarting | stopped | failed
    restarts: int = 0
    last_error: str | None = None
    started_ns: int | None = None


@dataclass
class Supervisor:
    """Runs services until :meth:`stop` is called or a fatal error occurs."""

    services: list[Service]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    describe_error: Callable[[BaseException], str] = repr
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    statuses: dict[str, ServiceStatus] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Ask every service to stop. Safe to call more than once, from signal handlers too."""
        self._stop.set()

    async def run(self) -> None:
        """Run every service until :meth:`stop`; re-raise the first fatal error.

        Cancelling ``run()`` itself cancels every service and waits for them.
        """
        for service in self.services:
            self.statuses[service.name] = ServiceStatus(service.name)
        fatal: list[BaseException] = []
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._supervise(service, fatal), name=f"service:{service.name}")
                for service in self.services
            ]
            stop_waiter = group.create_task(self._stop.wait(), name="supervisor:stop")
            pending: set[asyncio.Task[object]] = {stop_waiter, *tasks}
            while pending:
                _done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if self._stop.is_set() or fatal or all(task.done() for task in tasks):
                    break
            for task in tasks:
                task.cancel()
            stop_waiter.cancel()
        if fatal:
            raise fatal[0]

    async def _supervise(self, service: Service, fatal: list[BaseException]) -> None:
        status = self.statuses[service.name]
        delay_s = self.policy.initial_delay_s
        while True:
            status.state = "running"
            status.started_ns = time.monotonic_ns()
            try:
                await service.run()
            except asyncio.CancelledError:
                status.state = "stopped"
                raise
            except FATAL_ERRORS as exc:
                status.state = "failed"
                status.last_error = self.describe_error(exc)
                log.error("service_failed_fatally", service=service.name, error=status.last_error)
                fatal.append(exc)
                self._stop.set()
                return
            except Exception as exc:
                status.last_error = self.describe_error(exc)
                ran_s = (time.monotonic_ns() - status.started_ns) / 1e9
                if ran_s >= self.policy.healthy_after_s:
                    delay_s = self.policy.initial_delay_s
                status.state = "restarting"
                status.restarts += 1
                log.warning(
                    "service_failed_restarting",
                    service=service.name,
                    error=status.last_error,
                    restart_in_s=round(delay_s, 2),
                    restarts=status.restarts,
                    exc_info=True,
                )
                jitter = 1 + random.uniform(-self.policy.jitter, self.policy.jitter)  # noqa: S311
                await self.sleep(delay_s * jitter)
                delay_s = min(delay_s * self.policy.multiplier, self.policy.max_delay_s)
                continue
            status.state = "stopped"
            log.info("service_finished", service=service.name)
            return
