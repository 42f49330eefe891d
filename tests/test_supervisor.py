"""The supervisor: services run together, failures restart, fatal errors and stop end the run."""

from __future__ import annotations

import asyncio

import pytest

from familiar_connect.errors import ConfigError, ProviderAuthError
from familiar_connect.supervisor import RestartPolicy, Supervisor


class Forever:
    def __init__(self, name: str) -> None:
        self.name = name
        self.started = asyncio.Event()
        self.cancelled = False

    async def run(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise


class FailsThenRuns:
    def __init__(self, failures: int) -> None:
        self.name = "flaky"
        self.failures = failures
        self.calls = 0
        self.running = asyncio.Event()

    async def run(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("connection dropped")
        self.running.set()
        await asyncio.Event().wait()


class RaisesOnce:
    def __init__(self, error: BaseException) -> None:
        self.name = "raiser"
        self.error = error

    async def run(self) -> None:
        raise self.error


async def _no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


class TestSupervisor:
    async def test_stop_cancels_every_service(self) -> None:
        """stop() cancels all running services and run() returns with none left pending."""
        a, b = Forever("a"), Forever("b")
        supervisor = Supervisor([a, b])
        runner = asyncio.create_task(supervisor.run())
        await a.started.wait()
        await b.started.wait()
        supervisor.stop()
        await runner
        assert a.cancelled and b.cancelled
        assert supervisor.statuses["a"].state == "stopped"

    async def test_failed_service_restarts_without_touching_others(self) -> None:
        """A service that raises is restarted while the other keeps running."""
        steady, flaky = Forever("steady"), FailsThenRuns(failures=2)
        supervisor = Supervisor([steady, flaky], sleep=_no_sleep)
        runner = asyncio.create_task(supervisor.run())
        await flaky.running.wait()
        assert flaky.calls == 3
        assert supervisor.statuses["flaky"].restarts == 2
        assert "connection dropped" in (supervisor.statuses["flaky"].last_error or "")
        assert not steady.cancelled
        supervisor.stop()
        await runner

    @pytest.mark.parametrize(
        "error",
        [ConfigError("bad"), ProviderAuthError("bad token", provider="discord", status=401)],
    )
    async def test_fatal_error_stops_everything_and_propagates(self, error: Exception) -> None:
        """Bad configuration or rejected credentials end the run and re-raise the error."""
        other = Forever("other")
        supervisor = Supervisor([other, RaisesOnce(error)])
        with pytest.raises(type(error)):
            await supervisor.run()
        assert other.cancelled
        assert supervisor.statuses["raiser"].state == "failed"

    async def test_backoff_grows_and_is_capped(self) -> None:
        """Restart delays double after each quick failure up to the cap."""
        delays: list[float] = []

        async def record(seconds: float) -> None:
            delays.append(seconds)

        flaky = FailsThenRuns(failures=5)
        policy = RestartPolicy(initial_delay_s=1.0, max_delay_s=4.0, jitter=0.0)
        supervisor = Supervisor([flaky], policy=policy, sleep=record)
        runner = asyncio.create_task(supervisor.run())
        await flaky.running.wait()
        supervisor.stop()
        await runner
        assert delays == [1.0, 2.0, 4.0, 4.0, 4.0]

    async def test_all_services_finishing_ends_the_run(self) -> None:
        """When every service returns normally, run() returns."""

        class Once:
            name = "once"

            async def run(self) -> None:
                await asyncio.sleep(0)

        await asyncio.wait_for(Supervisor([Once()]).run(), timeout=5)
