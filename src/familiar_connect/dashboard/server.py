"""The dashboard's aiohttp application: the page, the guard middleware and the security headers.

Every request passes the **guard** (:func:`_guard`), in this order:

1. **Host check** — a ``Host`` that is not the bound address, a loopback name
   or a configured extra name gets ``403`` (DNS rebinding).
2. ``/healthz`` and ``/static/*`` need nothing more (no secrets in either).
3. **Login** — any request with ``?token=`` is a login attempt: a right token
   opens a session (HttpOnly, ``SameSite=Strict`` cookie) and redirects
   (``303``) to the same URL *without* the token, so it never stays in the
   address bar or history; a wrong one gets ``401``. This also strips a token
   pasted again after login.
4. **Session** — no valid session cookie: ``401`` (an explanation page for the
   browser, JSON for the API). ``/metrics`` also accepts
   ``Authorization: Bearer <token>`` for scrapers.
5. **CSRF** — every non-GET request must carry the session's token in
   ``X-CSRF-Token``, and an ``Origin`` (when sent) must be ours; else ``403``.

Every response, errors included, gets the security headers
(:data:`SECURITY_HEADERS`): a CSP that allows only our own script and style
files (no inline script or style, no framing) and ``no-store`` caching.
On shutdown every open event stream is ended and its task cancelled, so the
server stops at once instead of waiting for browsers.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from familiar_connect.dashboard._safe import dumps
from familiar_connect.dashboard.api import SESSION_KEY, STATE_KEY, DashboardState, routes
from familiar_connect.dashboard.auth import CSRF_HEADER, SESSION_COOKIE

__all__ = ["SECURITY_HEADERS", "STATIC_FILES", "create_app"]

log = structlog.get_logger(__name__)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}
"""Headers set on every response."""

STATIC_FILES: dict[str, str] = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The only files served from ``dashboard/static`` (name → content type)."""

_PUBLIC_PREFIXES = ("/static/",)
_PUBLIC_PATHS = frozenset({"/healthz", "/favicon.ico"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_REQUEST_BYTES = 64 * 1024
_SESSION_MAX_AGE_S = 7 * 86_400

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="/static/style.css"></head>
<body class="plain"><main class="notice"><h1>{title}</h1><p>{message}</p></main></body></html>
"""
_LOGIN_HELP = (
    "Open the login link the familiar printed when it started "
    "(<code>http://127.0.0.1:PORT/?token=…</code>). If you set "
    "<code>FAMILIAR_DASHBOARD_TOKEN</code>, add it as <code>?token=</code> to this address."
)


def _page(status: int, title: str, message: str) -> web.Response:
    # Static text only: nothing from the request is ever echoed into a page.
    return web.Response(
        text=_PAGE.format(title=title, message=message), status=status, content_type="text/html"
    )


def _wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/") or request.path == "/metrics"


def _refuse(request: web.Request, status: int, title: str, message: str) -> web.Response:
    if _wants_json(request):
        return web.Response(
            text=dumps({"error": title}), status=status, content_type="application/json"
        )
    return _page(status, title, message)


def _without_token(request: web.Request) -> str:
    """The request's path and query minus ``token``; always a local path (no open redirect)."""
    # The raw (still percent-encoded) path is safe to put in a Location header as is.
    path = request.raw_path.partition("?")[0]
    if not path.startswith("/") or path.startswith(("//", "/\\")):
        path = "/"
    rest = [(name, value) for name, value in request.query.items() if name != "token"]
    return path + ("?" + urlencode(rest) if rest else "")


def _login(request: web.Request, state: DashboardState) -> web.Response:
    if not state.sessions.token_matches(request.query.get("token")):
        state.failed_logins += 1
        # Never log the candidate: it may be a real token with a typo.
        log.warning("dashboard_login_failed", failed_logins=state.failed_logins)
        return _refuse(
            request,
            401,
            "Login link not valid",
            "That token is wrong or from an earlier run. " + _LOGIN_HELP,
        )
    session = state.sessions.open()
    response = web.Response(status=303, headers={"Location": _without_token(request)})
    response.set_cookie(
        SESSION_COOKIE,
        session.sid,
        httponly=True,
        samesite="Strict",
        path="/",
        max_age=_SESSION_MAX_AGE_S,
        secure=request.secure,
    )
    log.info("dashboard_login", sessions=len(state.sessions))
    return response


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if not state.hosts.allows_host(request.headers.get("Host")):
        return _refuse(
            request,
            403,
            "Forbidden host",
            "This dashboard only answers requests addressed to its own address "
            "(protection against DNS rebinding).",
        )
    if request.path in _PUBLIC_PATHS or request.path.startswith(_PUBLIC_PREFIXES):
        return await handler(request)
    if "token" in request.query:
        return _login(request, state)
    session = state.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        if request.path == "/metrics" and state.sessions.token_matches(_bearer(request)):
            return await handler(request)
        response = _refuse(request, 401, "Login required", _LOGIN_HELP)
        if request.path == "/metrics":
            response.headers["WWW-Authenticate"] = 'Bearer realm="familiar-dashboard"'
        return response
    if request.method not in _SAFE_METHODS:
        if not state.hosts.allows_origin(request.headers.get("Origin")):
            return _refuse(request, 403, "Cross-origin request refused", "")
        if not state.sessions.csrf_matches(session, request.headers.get(CSRF_HEADER)):
            log.warning("dashboard_csrf_refused", path=request.path)
            return _refuse(request, 403, "CSRF token missing or wrong", "")
    request[SESSION_KEY] = session
    return await handler(request)


async def _security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers.setdefault("Cache-Control", "no-store")


def _load_static() -> dict[str, bytes]:
    root = resources.files("familiar_connect.dashboard") / "static"
    return {name: (root / name).read_bytes() for name in STATIC_FILES}


def _static_handler(files: dict[str, bytes]) -> Any:
    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = files.get(name)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=body,
            content_type=STATIC_FILES[name],
            charset="utf-8" if STATIC_FILES[name].startswith("text/") else None,
            headers={"Cache-Control": "no-cache"},
        )

    return static


def _index_handler(files: dict[str, bytes]) -> Any:
    async def index(_request: web.Request) -> web.Response:
        return web.Response(body=files["index.html"], content_type="text/html", charset="utf-8")

    return index


async def _end_streams(app: web.Application) -> None:
    """on_shutdown: end every event stream so cleanup does not wait for browsers."""
    state = app[STATE_KEY]
    state.hub.close_streams()
    tasks = [task for task in state.stream_tasks if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2.0)


def create_app(state: DashboardState) -> web.Application:
    """Build the dashboard application around ``state`` (see the module docstring)."""
    app = web.Application(middlewares=[_guard], client_max_size=_MAX_REQUEST_BYTES)
    app[STATE_KEY] = state
    files = _load_static()
    app.router.add_get("/", _index_handler(files))
    app.router.add_get("/static/{name}", _static_handler(files))
    app.router.add_routes(routes())
    app.on_response_prepare.append(_security_headers)
    app.on_shutdown.append(_end_streams)
    return app
