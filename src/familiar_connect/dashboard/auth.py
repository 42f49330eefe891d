"""Who may use the dashboard: the login token, sessions, CSRF tokens and the Host check.

The dashboard has exactly one credential, the **login token** (from
``FAMILIAR_DASHBOARD_TOKEN`` or generated at start). Opening
``/?token=<token>`` exchanges it for a **session**: a random id kept in an
HttpOnly, ``SameSite=Strict`` cookie, plus a per-session **CSRF token** that
every state-changing request must echo in a header. The token itself never
lives in the browser after that redirect, and sessions are bounded (count and
age) so a leaked cookie expires.

The **Host check** defeats DNS rebinding: a page on ``evil.example`` whose
name is re-pointed at 127.0.0.1 can reach the port, but its requests carry
``Host: evil.example``. Only loopback names, the bound address and names the
operator listed are accepted. When the dashboard is bound to a wildcard
address (``0.0.0.0``/``::``, allowed only with ``DASHBOARD_ALLOW_REMOTE``), IP
literals are accepted too: a rebinding attack always arrives under a domain
name, never an IP literal.

Everything here is sans-I/O: values in, decisions out.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from familiar_connect.errors import ConfigError

__all__ = [
    "CSRF_HEADER",
    "SESSION_COOKIE",
    "HostPolicy",
    "Session",
    "SessionStore",
    "check_bind",
    "generate_token",
    "host_name",
    "is_loopback_host",
    "is_wildcard_host",
]

SESSION_COOKIE = "familiar_dashboard"
"""Name of the session cookie (HttpOnly, SameSite=Strict, Path=/)."""

CSRF_HEADER = "X-CSRF-Token"
"""Header every POST must carry, holding the session's CSRF token."""

_MAX_CANDIDATE_CHARS = 512
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})  # noqa: S104 - names we detect, not bind


def generate_token() -> str:
    """A fresh login token: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def _equal(candidate: str | None, expected: str) -> bool:
    """Constant-time comparison that tolerates missing and oversized input."""
    if not candidate or len(candidate) > _MAX_CANDIDATE_CHARS:
        return False
    return hmac.compare_digest(candidate.encode("utf-8"), expected.encode("utf-8"))


@dataclass(slots=True)
class Session:
    """One logged-in browser.

    Attributes:
        sid: the cookie value (random, 256 bits).
        csrf: the token POSTs must echo in :data:`CSRF_HEADER`.
        created_ns: ``time.monotonic_ns()`` at login.
        last_seen_ns: ``time.monotonic_ns()`` of the last authenticated request.
    """

    sid: str
    csrf: str
    created_ns: int
    last_seen_ns: int


class SessionStore:
    """The login token and the sessions it opened; bounded in count and age.

    Args:
        token: the login token.
        max_sessions: sessions kept at once; the least recently used is
            dropped when a new one would exceed it.
        max_age_s: a session expires this long after login.
        idle_s: a session expires after this long without a request.
    """

    def __init__(
        self,
        token: str,
        *,
        max_sessions: int = 32,
        max_age_s: float = 7 * 86_400,
        idle_s: float = 12 * 3_600,
    ) -> None:
        if len(token) < 16:
            raise ConfigError("the dashboard token must be at least 16 characters")
        self._token = token
        self._max_sessions = max(1, max_sessions)
        self._max_age_ns = int(max_age_s * 1e9)
        self._idle_ns = int(idle_s * 1e9)
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self.evicted = 0

    @property
    def token(self) -> str:
        """The login token. Never log or display it."""
        return self._token

    def __len__(self) -> int:
        return len(self._sessions)

    def token_matches(self, candidate: str | None) -> bool:
        """Whether ``candidate`` is the login token (constant time)."""
        return _equal(candidate, self._token)

    def open(self, *, now_ns: int | None = None) -> Session:
        """Start a session after a successful login; may evict the least recently used."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        self._sessions[session.sid] = session
        while len(self._sessions) > self._max_sessions:
            self._sessions.popitem(last=False)
            self.evicted += 1
        return session

    def get(self, sid: str | None, *, now_ns: int | None = None) -> Session | None:
        """The live session for a cookie value, or None (unknown, expired or malformed)."""
        if not sid or len(sid) > _MAX_CANDIDATE_CHARS:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = time.monotonic_ns() if now_ns is None else now_ns
        if (
            now - session.created_ns > self._max_age_ns
            or now - session.last_seen_ns > self._idle_ns
        ):
            del self._sessions[sid]
            return None
        session.last_seen_ns = now
        self._sessions.move_to_end(sid)
        return session

    def close(self, sid: str) -> None:
        """End one session (logout)."""
        self._sessions.pop(sid, None)

    @staticmethod
    def csrf_matches(session: Session, candidate: str | None) -> bool:
        """Whether ``candidate`` is the session's CSRF token (constant time)."""
        return _equal(candidate, session.csrf)


# --- binding and the Host header ----------------------------------------------------------


def is_wildcard_host(host: str) -> bool:
    """Whether binding ``host`` listens on every interface."""
    return host.strip().strip("[]") in _WILDCARDS


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP literal."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, allow_remote: bool) -> bool:
    """Decide whether the dashboard may bind ``host``; return whether it is remote.

    Raises:
        ConfigError: ``host`` is not loopback and ``DASHBOARD_ALLOW_REMOTE`` is not set.
    """
    if is_loopback_host(host):
        return False
    if not allow_remote:
        raise ConfigError(
            f"The dashboard is set to listen on {host!r}, which other machines can reach. "
            "It binds to 127.0.0.1 unless DASHBOARD_ALLOW_REMOTE=true is also set; the safer "
            "way to reach it from another machine is an SSH tunnel "
            "(ssh -L 8765:127.0.0.1:8765 you@this-host), see docs/dashboard.md.",
            problems=("DASHBOARD_HOST is not loopback and DASHBOARD_ALLOW_REMOTE is false",),
        )
    return True


def host_name(header: str | None) -> str | None:
    """The host name of a ``Host`` header value (port removed, lowercase), or None if malformed."""
    if not header or len(header) > 255:
        return None
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":")
    if not sep:
        name = value
    elif not port.isdigit() or ":" in name:
        return None
    name = name.rstrip(".")
    if not name or any(ch in name for ch in "/\\@ \t"):
        return None
    return name


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which ``Host`` (and ``Origin``) values the dashboard answers.

    Only the host name is compared, not the port: behind an SSH tunnel the
    browser talks to ``localhost:<any local port>``.

    Args:
        bind_host: the address the server listens on.
        extra_names: further names to accept (e.g. a LAN host name when bound
            remotely on purpose).
    """

    def __init__(self, bind_host: str, extra_names: Iterable[str] = ()) -> None:
        names = set(_LOOPBACK_NAMES)
        bound = bind_host.strip().strip("[]").lower()
        self._wildcard = is_wildcard_host(bind_host)
        if not self._wildcard:
            names.add(bound)
        names.update(name.strip().strip("[]").lower() for name in extra_names if name.strip())
        self._names = frozenset(names)

    @property
    def names(self) -> frozenset[str]:
        """The accepted host names."""
        return self._names

    def allows_host(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header may be served."""
        name = host_name(header)
        if name is None:
            return False
        if name in self._names or is_loopback_host(name):
            return True
        return self._wildcard and _is_ip_literal(name)

    def allows_origin(self, origin: str | None) -> bool:
        """Whether an ``Origin`` header is one of ours (absent is allowed; ``null`` is not)."""
        if origin is None:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return self.allows_host(parts.netloc)
