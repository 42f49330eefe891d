"""Sans-I/O access rules: the login token, sessions, CSRF tokens, binding and the Host check."""

from __future__ import annotations

import pytest

from familiar_connect.dashboard.auth import (
    HostPolicy,
    SessionStore,
    check_bind,
    generate_token,
    host_name,
    is_loopback_host,
)
from familiar_connect.errors import ConfigError

TOKEN = "a-login-token-0123456789abcdef"
WILDCARD = "0.0.0.0"  # noqa: S104 - the address under test, never bound here


@pytest.fixture(name="store")
def fixture_store() -> SessionStore:
    return SessionStore(TOKEN, max_sessions=3, max_age_s=100.0, idle_s=10.0)


class TestSessionStore:
    """Token checks and bounded, expiring sessions."""

    def test_token_matches_only_the_token(self, store: SessionStore) -> None:
        """Only the exact token matches; missing, wrong, prefixed and oversized values do not."""
        assert store.token_matches(TOKEN)
        for candidate in (None, "", TOKEN[:-1], TOKEN + "x", "x" * 10_000):
            assert not store.token_matches(candidate)

    def test_short_token_is_a_config_error(self) -> None:
        """A configured token shorter than 16 characters is refused at start."""
        with pytest.raises(ConfigError):
            SessionStore("short-token")

    def test_generated_tokens_are_long_and_unique(self) -> None:
        """Generated tokens carry 256 bits and never repeat."""
        tokens = {generate_token() for _ in range(50)}
        assert len(tokens) == 50
        assert all(len(token) >= 43 for token in tokens)

    def test_session_lookup_and_csrf(self, store: SessionStore) -> None:
        """A session is found by its id and accepts only its own CSRF token."""
        session = store.open(now_ns=0)
        assert store.get(session.sid, now_ns=1) is session
        assert store.csrf_matches(session, session.csrf)
        assert not store.csrf_matches(session, None)
        assert not store.csrf_matches(session, session.sid)
        assert session.csrf != session.sid and TOKEN not in (session.sid, session.csrf)

    def test_unknown_and_malformed_session_ids(self, store: SessionStore) -> None:
        """Unknown, empty and oversized cookie values find no session."""
        store.open(now_ns=0)
        for sid in (None, "", "nope", "x" * 4096):
            assert store.get(sid, now_ns=1) is None

    def test_sessions_expire_when_idle_or_old(self, store: SessionStore) -> None:
        """A session idle longer than idle_s, or older than max_age_s, is gone."""
        idle = store.open(now_ns=0)
        assert store.get(idle.sid, now_ns=int(11e9)) is None
        old = store.open(now_ns=0)
        for step in range(1, 12):
            assert store.get(old.sid, now_ns=int(step * 9e9)) is old
        assert store.get(old.sid, now_ns=int(101e9)) is None

    def test_session_count_is_bounded(self, store: SessionStore) -> None:
        """Opening more than max_sessions evicts the least recently used."""
        first = store.open(now_ns=0)
        second = store.open(now_ns=0)
        store.open(now_ns=0)
        assert store.get(first.sid, now_ns=1) is first  # first is now the most recent
        store.open(now_ns=2)
        assert len(store) == 3
        assert store.evicted == 1
        assert store.get(second.sid, now_ns=3) is None
        assert store.get(first.sid, now_ns=3) is first

    def test_close_ends_a_session(self, store: SessionStore) -> None:
        """Logging out removes the session."""
        session = store.open(now_ns=0)
        store.close(session.sid)
        assert store.get(session.sid, now_ns=1) is None


class TestBinding:
    """Which addresses the dashboard may listen on."""

    @pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
    def test_loopback_is_always_allowed(self, host: str) -> None:
        """Loopback addresses need no extra setting and are not remote."""
        assert is_loopback_host(host)
        assert check_bind(host, allow_remote=False) is False

    @pytest.mark.parametrize("host", [WILDCARD, "::", "192.168.1.20", "dash.example"])
    def test_remote_needs_allow_remote(self, host: str) -> None:
        """Any other address is a ConfigError unless DASHBOARD_ALLOW_REMOTE is set."""
        with pytest.raises(ConfigError, match="SSH tunnel"):
            check_bind(host, allow_remote=False)
        assert check_bind(host, allow_remote=True) is True


class TestHostPolicy:
    """The Host check that defeats DNS rebinding."""

    @pytest.mark.parametrize(
        ("header", "name"),
        [
            ("127.0.0.1:8765", "127.0.0.1"),
            ("LOCALHOST", "localhost"),
            ("localhost.:9000", "localhost"),
            ("[::1]:8765", "::1"),
            ("evil.example", "evil.example"),
            ("", None),
            (None, None),
            ("a:b:c", None),
            ("host:port", None),
            ("[::1", None),
            ("[::1]x", None),
            ("user@host", None),
        ],
    )
    def test_host_name_parsing(self, header: str | None, name: str | None) -> None:
        """Host headers are reduced to a lowercase name; malformed ones to None."""
        assert host_name(header) == name

    def test_loopback_binding_accepts_only_loopback_names(self) -> None:
        """Bound to 127.0.0.1, loopback names on any port pass and every other name fails."""
        policy = HostPolicy("127.0.0.1")
        for header in ("127.0.0.1:8765", "localhost:9000", "[::1]:1", "localhost"):
            assert policy.allows_host(header)
        for header in ("evil.example:8765", "192.168.1.5:8765", "127.0.0.1.evil.example", None):
            assert not policy.allows_host(header)

    def test_specific_remote_address_and_extra_names(self) -> None:
        """A specific bound address and configured extra names are accepted."""
        policy = HostPolicy("192.168.1.20", ["dash.lan"])
        assert policy.allows_host("192.168.1.20:8765")
        assert policy.allows_host("DASH.lan:8765")
        assert not policy.allows_host("192.168.1.21:8765")
        assert not policy.allows_host("evil.example")

    def test_wildcard_binding_accepts_ip_literals_only(self) -> None:
        """Bound to 0.0.0.0, IP literals pass (rebinding needs a name) but names do not."""
        policy = HostPolicy(WILDCARD)
        assert policy.allows_host("10.0.0.7:8765")
        assert policy.allows_host("[fe80::1]:8765")
        assert not policy.allows_host("evil.example:8765")

    def test_origin_check(self) -> None:
        """An absent Origin passes; ours passes; foreign, null and odd schemes fail."""
        policy = HostPolicy("127.0.0.1")
        assert policy.allows_origin(None)
        assert policy.allows_origin("http://127.0.0.1:8765")
        assert policy.allows_origin("http://localhost:1234")
        for origin in ("null", "http://evil.example:8765", "file://", "chrome-extension://abc"):
            assert not policy.allows_origin(origin)
