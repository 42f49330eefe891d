"""The dashboard over HTTP: access control, headers, start-up rules, streams and shutdown.

Every test runs the real familiar and a real DashboardService on 127.0.0.1
(port 0) under a Supervisor, and talks to it with a plain aiohttp client.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from familiar_connect.dashboard import DashboardService
from familiar_connect.errors import ConfigError
from familiar_connect.logs import log_redactor
from tests.dashboard.conftest import (
    TIMEOUT_S,
    TOKEN,
    Harness,
    dashboard_harness,
    login,
    wait_until,
)

WILDCARD = "0.0.0.0"  # noqa: S104 - the point of the test: binding needs DASHBOARD_ALLOW_REMOTE


@pytest.fixture(name="harness")
async def fixture_harness(tmp_path: Path) -> Any:
    async with dashboard_harness(tmp_path) as harness:
        yield harness


async def read_event(response: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next server-sent event (comments skipped)."""
    event, data = "message", ""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            line = (await response.content.readline()).decode()
            if not line:
                raise EOFError("stream ended")
            line = line.rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                return event, json.loads(data)


class TestLogin:
    """Token to cookie, and nothing without it."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/"),
            ("GET", "/api/live"),
            ("GET", "/api/events"),
            ("GET", "/api/memory/note?path=people/a.md"),
            ("POST", "/api/control/pause"),
            ("GET", "/no/such/page"),
        ],
    )
    async def test_everything_needs_a_session(
        self, harness: Harness, http: aiohttp.ClientSession, method: str, path: str
    ) -> None:
        """Without a session every page, endpoint and even unknown path answers 401."""
        async with http.request(method, harness.base_url + path) as response:
            assert response.status == 401
        assert harness.orchestrator.paused is False

    async def test_login_sets_strict_httponly_cookie_and_strips_token(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """The token becomes an HttpOnly SameSite=Strict cookie and the redirect drops it."""
        url = f"{harness.base_url}/?token={TOKEN}&view=1"
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/?view=1"
            cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert TOKEN not in cookie

    async def test_token_after_login_is_stripped(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """A token in the query of a logged-in request is redirected away, path kept."""
        creds = await login(http, harness.base_url)
        url = f"{harness.base_url}/api/live?token={TOKEN}"
        async with http.get(url, headers=creds.headers, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/api/live"

    async def test_login_never_redirects_off_site(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """A path that looks like another host redirects to the dashboard's root instead."""
        url = f"{harness.base_url}//evil.example/x?token={TOKEN}"
        async with http.get(url, allow_redirects=False) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/"

    @pytest.mark.parametrize("token", ["wrong-token-0123456789abcdef", "", TOKEN[:-1]])
    async def test_wrong_token_is_refused_and_not_logged(
        self, harness: Harness, http: aiohttp.ClientSession, token: str
    ) -> None:
        """A wrong token gets 401, sets no cookie, and the candidate never reaches the log."""
        with capture_logs() as logs:
            async with http.get(f"{harness.base_url}/?token={token}") as response:
                assert response.status == 401
                assert "Set-Cookie" not in response.headers
        assert any(entry["event"] == "dashboard_login_failed" for entry in logs)
        if token:
            assert token not in repr(logs)

    async def test_logout_ends_the_session(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """After logout the old cookie no longer works."""
        creds = await login(http, harness.base_url)
        async with http.post(
            harness.base_url + "/api/logout", headers=creds.post_headers
        ) as response:
            assert response.status == 200
        async with http.get(harness.base_url + "/api/live", headers=creds.headers) as response:
            assert response.status == 401


class TestRequestChecks:
    """CSRF, Host and body limits on every request."""

    async def test_post_needs_the_csrf_token(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """POSTs without, or with a forged, CSRF token are refused; the right one works."""
        creds = await login(http, harness.base_url)
        url = harness.base_url + "/api/control/pause"
        async with http.post(url, headers=creds.headers) as response:
            assert response.status == 403
        forged = {**creds.headers, "X-CSRF-Token": "forged-" + creds.csrf[7:]}
        async with http.post(url, headers=forged) as response:
            assert response.status == 403
        assert harness.orchestrator.paused is False
        async with http.post(url, headers=creds.post_headers) as response:
            assert response.status == 200
        assert harness.orchestrator.paused is True

    async def test_cross_origin_post_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """Even with the CSRF token, a POST from a foreign Origin is refused."""
        creds = await login(http, harness.base_url)
        headers = {**creds.post_headers, "Origin": "http://evil.example"}
        async with http.post(harness.base_url + "/api/control/pause", headers=headers) as response:
            assert response.status == 403
        assert harness.orchestrator.paused is False

    @pytest.mark.parametrize("path", ["/", "/api/live", "/healthz", "/static/app.js"])
    async def test_foreign_host_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession, path: str
    ) -> None:
        """A foreign Host header gets 403 even with a valid session (DNS rebinding)."""
        creds = await login(http, harness.base_url)
        headers = {**creds.headers, "Host": f"evil.example:{harness.dashboard.port}"}
        async with http.get(harness.base_url + path, headers=headers) as response:
            assert response.status == 403

    async def test_localhost_on_another_port_is_accepted(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """Host localhost with a different port (an SSH tunnel's local end) is accepted."""
        creds = await login(http, harness.base_url)
        headers = {**creds.headers, "Host": "localhost:18765"}
        async with http.get(harness.base_url + "/api/live", headers=headers) as response:
            assert response.status == 200

    async def test_oversized_body_is_refused(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """A control request body over the cap gets 413."""
        creds = await login(http, harness.base_url)
        body = json.dumps({"user": "x" * 70_000})
        async with http.post(
            harness.base_url + "/api/control/mute", headers=creds.post_headers, data=body
        ) as response:
            assert response.status == 413


class TestHeaders:
    """Security headers on every kind of response."""

    async def test_headers_on_pages_api_errors_and_static(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """CSP without inline scripts, no framing, nosniff and no-store everywhere."""
        creds = await login(http, harness.base_url)
        checks = [
            ("/", creds.headers, 200),
            ("/api/live", creds.headers, 200),
            ("/api/live", {}, 401),
            ("/static/app.js", {}, 200),
            ("/healthz", {}, 200),
        ]
        for path, headers, status in checks:
            async with http.get(harness.base_url + path, headers=headers) as response:
                assert response.status == status
                csp = response.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp
                assert "unsafe-inline" not in csp
                assert "frame-ancestors 'none'" in csp
                assert response.headers["X-Frame-Options"] == "DENY"
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                assert response.headers["Referrer-Policy"] == "no-referrer"
                if path.startswith("/api/") or path == "/healthz":
                    assert response.headers["Cache-Control"] == "no-store"

    async def test_page_has_no_inline_script_or_style(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """The page loads its script and style from files, so the CSP can forbid inline ones."""
        creds = await login(http, harness.base_url)
        async with http.get(harness.base_url + "/", headers=creds.headers) as response:
            page = await response.text()
        assert '<script src="/static/app.js" defer></script>' in page
        assert page.count("<script") == 1
        assert "<style" not in page and "style=" not in page and "onclick" not in page

    async def test_static_serves_only_known_files(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """Only the page's own files are served; anything else under /static is 404."""
        for name in ("secrets.txt", "..%2Fapi.py", "%2E%2E%2F%2E%2E%2Fsettings.py"):
            async with http.get(f"{harness.base_url}/static/{name}") as response:
                assert response.status == 404


class TestHealthAndMetrics:
    """/healthz for anyone, /metrics for the operator's scraper."""

    async def test_healthz_needs_no_login_and_says_only_ok(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """/healthz answers "ok" with no session and no details."""
        async with http.get(harness.base_url + "/healthz") as response:
            assert response.status == 200
            assert await response.text() == "ok\n"

    async def test_healthz_reports_degraded_services(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """A service that keeps failing turns /healthz into "degraded" (503), still without details."""

        class Flaky:
            name = "discord"

            async def run(self) -> None:
                raise RuntimeError("gateway closed 4004")

        async with dashboard_harness(tmp_path, extra_services=[Flaky()]) as harness:
            await wait_until(lambda: harness.supervisor.statuses["discord"].restarts >= 1)
            async with http.get(harness.base_url + "/healthz") as response:
                assert response.status == 503
                assert await response.text() == "degraded\n"

    async def test_metrics_needs_the_token(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """/metrics refuses anonymous and wrong-bearer requests and accepts the token as bearer."""
        url = harness.base_url + "/metrics"
        async with http.get(url) as response:
            assert response.status == 401
            assert "Bearer" in response.headers["WWW-Authenticate"]
        async with http.get(url, headers={"Authorization": "Bearer nope-0123456789abcdef"}) as r:
            assert r.status == 401
        await harness.turn("Wisp, count this")
        async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await response.text()
        assert "familiar_events_in_total 1\n" in text
        assert "familiar_replies_total 1\n" in text
        assert 'familiar_service_up{service="orchestrator"} 1' in text
        assert (
            'familiar_turn_stage_latency_ms{modality="text",stage="total",quantile="0.5"}' in text
        )
        assert TOKEN not in text


class TestStartup:
    """Binding rules, the login URL, and start-up failures."""

    async def test_remote_bind_needs_allow_remote(self, harness: Harness) -> None:
        """A non-loopback host without DASHBOARD_ALLOW_REMOTE is a ConfigError at construction."""
        with pytest.raises(ConfigError, match="DASHBOARD_ALLOW_REMOTE"):
            DashboardService(harness.familiar, host=WILDCARD, port=0)
        with pytest.raises(ConfigError):
            DashboardService(harness.familiar, host="192.168.1.20", port=0)

    async def test_remote_bind_with_allow_remote_warns(self, tmp_path: Path) -> None:
        """With DASHBOARD_ALLOW_REMOTE the dashboard binds remotely and logs a warning."""
        with capture_logs() as logs:
            async with dashboard_harness(
                tmp_path, host=WILDCARD, settings_overrides={"dashboard_allow_remote": True}
            ) as harness:
                assert harness.dashboard.remote is True
        warnings = [e for e in logs if e["event"] == "dashboard_listening_remotely"]
        assert warnings and warnings[0]["log_level"] == "warning"

    async def test_generated_token_is_printed_once_and_redacted(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Without a configured token one is generated, printed once as a login URL, and redacted."""
        with capture_logs() as logs:
            async with dashboard_harness(
                tmp_path, settings_overrides={"familiar_dashboard_token": None}
            ) as harness:
                printed = harness.out.getvalue()
                assert printed.count("?token=") == 1
                url = printed.split()[1]
                token = url.split("?token=")[1]
                assert len(token) >= 43
                assert log_redactor().redact(f"x {token} y") == "x [REDACTED] y"
                async with http.get(url, allow_redirects=False) as response:
                    assert response.status == 303
        assert token not in repr(logs)

    async def test_configured_token_is_not_printed(self, harness: Harness) -> None:
        """A token from FAMILIAR_DASHBOARD_TOKEN is not echoed; only the address is printed."""
        printed = harness.out.getvalue()
        assert TOKEN not in printed
        assert f"127.0.0.1:{harness.dashboard.port}" in printed

    async def test_port_in_use_is_a_config_error(self, harness: Harness) -> None:
        """A second dashboard on a taken port fails with a ConfigError naming the fix."""
        second = DashboardService(harness.familiar, port=harness.dashboard.port, out=io.StringIO())
        with pytest.raises(ConfigError, match="DASHBOARD_PORT"):
            await asyncio.wait_for(second.run(), timeout=TIMEOUT_S)


class TestStreams:
    """Live streams: updates, the client cap, and shutdown with clients connected."""

    async def test_turn_is_pushed_to_the_stream(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """A stream gets a snapshot at once, then the finished turn and a fresh snapshot."""
        creds = await login(http, harness.base_url)
        async with http.get(harness.base_url + "/api/events", headers=creds.headers) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            event, first = await read_event(response)
            assert event == "live" and first["turns"] == []
            seen: dict[str, Any] = {}
            await harness.turn("Wisp, stream this")
            while "turn" not in seen or not seen.get("live", {}).get("turns"):
                event, data = await read_event(response)
                seen[event] = data
        assert "stream this" in seen["turn"]["text"]
        assert seen["live"]["counters"]["replies_out"] == 1

    async def test_hundreds_of_streams_are_bounded(
        self, harness: Harness, http: aiohttp.ClientSession
    ) -> None:
        """Of 200 simultaneous streams only max_clients are served; the rest get 503."""
        creds = await login(http, harness.base_url)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as many:
            responses = await asyncio.gather(
                *(
                    many.get(harness.base_url + "/api/events", headers=creds.headers)
                    for _ in range(200)
                )
            )
            statuses = [response.status for response in responses]
            assert statuses.count(200) == harness.dashboard.hub.max_clients
            assert statuses.count(503) == 200 - harness.dashboard.hub.max_clients
            assert harness.dashboard.hub.client_count == harness.dashboard.hub.max_clients
            for response in responses:
                response.close()
        await wait_until(lambda: harness.dashboard.hub.client_count == 0)

    async def test_shutdown_with_streams_open_does_not_hang(
        self, tmp_path: Path, http: aiohttp.ClientSession
    ) -> None:
        """Stopping the familiar ends every open stream and the whole shutdown completes."""
        async with dashboard_harness(tmp_path, heartbeat_s=3600.0) as harness:
            creds = await login(http, harness.base_url)
            responses = [
                await http.get(harness.base_url + "/api/events", headers=creds.headers)
                for _ in range(5)
            ]
            for response in responses:
                await read_event(response)
            harness.supervisor.stop()
            # dashboard_harness awaits the supervisor with a hang guard on exit.
        for response in responses:
            with pytest.raises(EOFError):
                while True:
                    await read_event(response)
            response.close()
        assert harness.dashboard.hub.client_count == 0
