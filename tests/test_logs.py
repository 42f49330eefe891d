"""Tests for familiar_connect.logs: one redacting chain for structlog and stdlib logging."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog

from familiar_connect import logs
from familiar_connect.errors import ConfigError, ProviderAuthError
from familiar_connect.logs import (
    NOISY_LOGGERS,
    OWN_LOGGER,
    SAFE_ERROR_MAX_CHARS,
    RedactingRenderer,
    Redactor,
    RedactProcessor,
    configure_logging,
    get_logger,
    log_redactor,
    safe_error_text,
    verbosity_to_level,
)

M = "[REDACTED]"
SECRET = "sk-test+secret/value=42%"  # needs URL encoding
DISCORD_SECRET = "discord-canary-token-123"
FORMS = (SECRET, quote(SECRET, safe=""), quote_plus(SECRET))
FORMATS = ["console", "json"]


@pytest.fixture(autouse=True, name="restore_logging")
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put back every piece of global logging state configure_logging() touches."""
    root = logging.getLogger()
    names = [None, OWN_LOGGER, *NOISY_LOGGERS]
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(root.handlers)
    showwarning = warnings.showwarning
    structlog_config = structlog.get_config()
    monkeypatch.setattr(logs, "_current", logs._current)
    yield
    structlog.reset_defaults()
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()
    logging.captureWarnings(False)
    warnings.showwarning = showwarning
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler in list(root.handlers):
        if isinstance(handler.formatter, structlog.stdlib.ProcessorFormatter):
            root.removeHandler(handler)
            handler.close()
    # pytest adds and removes its per-phase LogCaptureHandlers itself; put back
    # everything else that configure_logging() took away.
    for handler in handlers:
        if handler not in root.handlers and type(handler).__name__ != "LogCaptureHandler":
            root.addHandler(handler)


@pytest.fixture(name="out")
def _out() -> io.StringIO:
    return io.StringIO()


def _configure(out: io.StringIO, fmt: str = "console", **kw: Any) -> Redactor:
    kw.setdefault("secrets", [SECRET, DISCORD_SECRET])
    return configure_logging(fmt=fmt, stream=out, **kw)  # type: ignore[arg-type]


def _assert_clean(text: str) -> None:
    for form in (*FORMS, DISCORD_SECRET):
        assert form not in text
    assert M in text


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


class TestRedactProcessor:
    def test_redacts_every_field(self) -> None:
        """Every field, nested values included, is scrubbed."""
        proc = RedactProcessor(Redactor([SECRET]))
        event = {"event": f"got {SECRET}", "nested": {"list": [SECRET]}, "n": 1}
        assert proc(None, "info", event) == {
            "event": f"got {M}",
            "nested": {"list": [M]},
            "n": 1,
        }

    def test_clean_event_is_same_object(self) -> None:
        """An event with nothing to hide passes through untouched."""
        proc = RedactProcessor(Redactor([SECRET]))
        event = {"event": "turn_completed", "ttft_s": 0.7}
        assert proc(None, "info", event) is event

    def test_formats_exc_info_before_redacting(self) -> None:
        """An exception left in exc_info is turned into redacted traceback text."""
        proc = RedactProcessor(Redactor([SECRET]))
        try:
            raise ValueError(f"bad {SECRET}")
        except ValueError as exc:
            out = proc(None, "error", {"event": "x", "exc_info": exc})
        assert "exc_info" not in out
        assert "Traceback" in out["exception"]
        assert f"ValueError: bad {M}" in out["exception"]


class TestRedactingRenderer:
    def test_redacts_rendered_text(self) -> None:
        """Text the renderer adds by itself is scrubbed from its output."""

        def renderer(logger: Any, name: str, event: dict[str, Any]) -> str:
            return f"{event['event']} extra={SECRET}"

        wrapped = RedactingRenderer(renderer, Redactor([SECRET]))
        assert wrapped(None, "info", {"event": "e"}) == f"e extra={M}"

    def test_bytes_output_stays_bytes(self) -> None:
        """A bytes renderer's output is scrubbed and still returned as bytes."""

        def renderer(logger: Any, name: str, event: dict[str, Any]) -> bytes:
            return f"line {SECRET}".encode()

        wrapped = RedactingRenderer(renderer, Redactor([SECRET]))
        assert wrapped(None, "info", {}) == f"line {M}".encode()


class TestConfigureLoggingRedaction:
    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize("form", FORMS, ids=["plain", "quote", "quote_plus"])
    def test_secret_in_event_name(self, out: io.StringIO, fmt: str, form: str) -> None:
        """A secret (plain or URL-encoded) in our own event name is redacted."""
        _configure(out, fmt)
        get_logger("familiar_connect.test").info(f"connecting with {form}")
        _assert_clean(out.getvalue())
        assert "connecting with" in out.getvalue()

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_secret_in_fields(self, out: io.StringIO, fmt: str) -> None:
        """Secrets in a field, a nested dict and a list of our event are redacted."""
        _configure(out, fmt)
        get_logger("familiar_connect.test").info(
            "request_sent",
            url=f"https://h/x?state={quote(SECRET, safe='')}&page=2",
            body={"inner": {"k": SECRET}},
            items=[1, quote_plus(SECRET), (DISCORD_SECRET,)],
        )
        text = out.getvalue()
        _assert_clean(text)
        assert "page=2" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_credential_patterns_in_fields(self, out: io.StringIO, fmt: str) -> None:
        """Unconfigured credentials are still caught by their patterns."""
        _configure(out, fmt, secrets=())
        get_logger("familiar_connect.test").info(
            "headers",
            h={"Authorization": "Bearer unconfigured-bearer-1"},
            note="api_key=unconfigured-key-2&x=1",
        )
        text = out.getvalue()
        assert "unconfigured-bearer-1" not in text
        assert "unconfigured-key-2" not in text
        assert "x=1" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_credential_named_field_is_hidden_whole(self, out: io.StringIO, fmt: str) -> None:
        """A field named like a credential is hidden whole, even where a text pattern would stop."""
        _configure(out, fmt, secrets=())
        get_logger("familiar_connect.test").info("login", password="correct horse battery")
        text = out.getvalue()
        assert "horse" not in text
        assert "battery" not in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_renderer_repr_is_redacted(self, out: io.StringIO, fmt: str) -> None:
        """A value whose repr() (used by the renderer) shows a secret its str() hides is caught."""

        class Client:
            def __str__(self) -> str:
                return "Client"

            def __repr__(self) -> str:
                return f"Client(key={SECRET!r}, host='h')"

        _configure(out, fmt)
        get_logger("familiar_connect.test").info("client_ready", client=Client())
        text = out.getvalue()
        _assert_clean(text)
        assert "host=" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_exception_traceback(self, out: io.StringIO, fmt: str) -> None:
        """log.exception renders the traceback with the secret in the message redacted."""
        _configure(out, fmt)
        try:
            raise ValueError(f"login failed with {SECRET}")
        except ValueError:
            get_logger("familiar_connect.test").exception("login_failed")
        text = out.getvalue()
        _assert_clean(text)
        assert "Traceback (most recent call last)" in text
        assert "ValueError: login failed with" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_chained_exception(self, out: io.StringIO, fmt: str) -> None:
        """A secret in the cause of a chained exception is redacted too."""
        _configure(out, fmt)
        try:
            try:
                raise OSError(f"socket {DISCORD_SECRET}")
            except OSError as exc:
                raise ProviderAuthError("rejected", provider="discord", status=401) from exc
        except ProviderAuthError:
            get_logger("familiar_connect.test").exception("gateway_failed")
        text = out.getvalue()
        _assert_clean(text)
        assert "OSError" in text
        assert "discord (status 401): rejected" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_stdlib_library_record_with_args(self, out: io.StringIO, fmt: str) -> None:
        """A library's stdlib record is redacted after %-interpolation of its args."""
        _configure(out, fmt)
        logging.getLogger("httpx").warning("HTTP Request: GET %s failed", f"https://h?t={SECRET}")
        text = out.getvalue()
        _assert_clean(text)
        assert "HTTP Request: GET" in text
        assert "httpx" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_stdlib_exception(self, out: io.StringIO, fmt: str) -> None:
        """A stdlib logger.exception with a secret in the exception is redacted."""
        _configure(out, fmt)
        try:
            raise RuntimeError(f"token rejected: {DISCORD_SECRET}")
        except RuntimeError:
            logging.getLogger("discord.client").exception("Attempting a reconnect")
        text = out.getvalue()
        _assert_clean(text)
        assert "Traceback (most recent call last)" in text
        assert "Attempting a reconnect" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_warnings_are_captured(self, out: io.StringIO, fmt: str) -> None:
        """Python warnings go through the chain and are redacted."""
        _configure(out, fmt)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn(f"insecure use of {SECRET}", UserWarning, stacklevel=1)
        text = out.getvalue()
        _assert_clean(text)
        assert "py.warnings" in text

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_unformattable_record(self, out: io.StringIO, fmt: str) -> None:
        """A record whose args do not fit its format is reported without its secret args."""
        _configure(out, fmt)
        logging.getLogger("aiohttp.client").warning("two %s %s", SECRET)
        text = out.getvalue()
        assert SECRET not in text
        assert "Logging error" in text or "logging_error" in text
        if fmt == "json":
            assert _json_lines(text)[0]["event"] == "logging_error"

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_context_vars_are_merged_and_redacted(self, out: io.StringIO, fmt: str) -> None:
        """Bound context variables appear in events, scrubbed like any field."""
        _configure(out, fmt)
        structlog.contextvars.bind_contextvars(guild_id=1234, session=SECRET)
        get_logger("familiar_connect.test").info("turn_started")
        logging.getLogger("discord.voice").info("connected")
        text = out.getvalue()
        _assert_clean(text)
        assert text.count("1234") == 2

    def test_secret_added_at_runtime(self, out: io.StringIO) -> None:
        """A secret added to the returned redactor (token refresh) is redacted from then on."""
        redactor = _configure(out)
        redactor.add_secrets(["refreshed-oauth-token-9"])
        get_logger("familiar_connect.test").info("refreshed", value="refreshed-oauth-token-9")
        assert "refreshed-oauth-token-9" not in out.getvalue()
        assert M in out.getvalue()


class TestWebsocketFrameLogs:
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_frame_payloads_are_summarised(self, out: io.StringIO, fmt: str) -> None:
        """websockets' -vv frame dumps show direction, opcode and size, never the payload."""
        from websockets.frames import Frame, Opcode

        _configure(out, fmt, level="NOTSET")
        payload = ("x" * 200 + " the key is " + SECRET).encode()
        logging.getLogger("websockets.client").debug("< %s", Frame(Opcode.TEXT, payload))
        text = out.getvalue()
        assert f"< TEXT frame ({len(payload)} bytes)" in text
        assert "the key is" not in text and "xxxx" not in text
        assert SECRET[-12:] not in text


class TestConfigureLoggingOutput:
    def test_json_is_one_object_per_line(self, out: io.StringIO) -> None:
        """JSON format writes one parseable object per line, each with an event key."""
        _configure(out, "json")
        log = get_logger("familiar_connect.test")
        log.info("first", n=1)
        try:
            raise KeyError("multi\nline")
        except KeyError:
            log.exception("second")
        logging.getLogger("httpcore").error("third\nwith newline")
        records = _json_lines(out.getvalue())
        assert [r["event"] for r in records] == ["first", "second", "third\nwith newline"]
        assert records[0]["level"] == "info"
        assert records[0]["logger"] == "familiar_connect.test"
        assert records[0]["timestamp"].endswith("Z")
        assert records[1]["level"] == "error"

    def test_console_has_no_colors_off_a_tty(self, out: io.StringIO) -> None:
        """Console output to a non-terminal stream carries no ANSI escapes."""
        _configure(out, "console")
        get_logger("familiar_connect.test").warning("plain_text", n=1)
        assert "\x1b[" not in out.getvalue()
        assert "plain_text" in out.getvalue()

    def test_console_colors_on_a_tty(
        self, out: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Console output to a terminal is coloured unless NO_COLOR is set."""
        monkeypatch.delenv("NO_COLOR", raising=False)
        monkeypatch.setattr(out, "isatty", lambda: True)
        _configure(out, "console")
        get_logger("familiar_connect.test").warning("coloured")
        assert "\x1b[" in out.getvalue()

    def test_no_color_env_disables_colors(
        self, out: io.StringIO, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """NO_COLOR turns colours off even on a terminal."""
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setattr(out, "isatty", lambda: True)
        _configure(out, "console")
        get_logger("familiar_connect.test").warning("plain")
        assert "\x1b[" not in out.getvalue()

    def test_writes_to_stderr_by_default(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without a stream, lines go to sys.stderr as it is at call time."""
        configure_logging(fmt="json")
        get_logger("familiar_connect.test").info("to_stderr")
        captured = capsys.readouterr()
        assert "to_stderr" in captured.err
        assert captured.out == ""

    def test_configure_twice_keeps_one_handler(self) -> None:
        """A second call replaces the first: one handler, output only to the new stream."""
        first, second = io.StringIO(), io.StringIO()
        _configure(first)
        _configure(second, "json")
        assert len(logging.getLogger().handlers) == 1
        get_logger("familiar_connect.test").info("once")
        logging.getLogger("discord").warning("library_once")
        assert first.getvalue() == ""
        assert [r["event"] for r in _json_lines(second.getvalue())] == ["once", "library_once"]

    def test_replaces_foreign_root_handlers(self, out: io.StringIO) -> None:
        """A handler installed earlier (e.g. by basicConfig) is removed so nothing bypasses redaction."""
        leaky = io.StringIO()
        logging.getLogger().addHandler(logging.StreamHandler(leaky))
        _configure(out)
        logging.getLogger("httpx").warning("key %s", SECRET)
        assert leaky.getvalue() == ""
        _assert_clean(out.getvalue())

    def test_cached_logger_follows_reconfiguration(self) -> None:
        """A logger used before a second configure_logging() call writes to the new stream."""
        first, second = io.StringIO(), io.StringIO()
        _configure(first)
        log = get_logger("familiar_connect.test")
        log.info("before")
        _configure(second, level="DEBUG", secrets=["later-secret-value"])
        log.debug("after", v="later-secret-value")
        assert "before" in first.getvalue()
        assert "after" in second.getvalue()
        assert "later-secret-value" not in second.getvalue()

    def test_returns_the_active_redactor(self, out: io.StringIO) -> None:
        """configure_logging returns the redactor that log_redactor() then hands out."""
        redactor = _configure(out)
        assert log_redactor() is redactor
        assert log_redactor().redact(SECRET) == M

    @pytest.mark.parametrize("bad", ["LOUD", "", True, -1])
    def test_invalid_level_is_a_config_error(self, out: io.StringIO, bad: object) -> None:
        """An unknown or invalid level is reported as a ConfigError."""
        with pytest.raises(ConfigError):
            configure_logging(level=bad, stream=out)  # type: ignore[arg-type]

    def test_invalid_format_is_a_config_error(self, out: io.StringIO) -> None:
        """An unknown format is reported as a ConfigError."""
        with pytest.raises(ConfigError):
            configure_logging(fmt="xml", stream=out)  # type: ignore[arg-type]


class TestConfigureLoggingLevels:
    def _emit_all(self) -> None:
        own = get_logger("familiar_connect.test")
        own.debug("own_debug")
        own.info("own_info")
        logging.getLogger("twitchio.client").debug("lib_debug")
        logging.getLogger("twitchio.client").info("lib_info")
        logging.getLogger("httpx").debug("noisy_debug")
        logging.getLogger("httpx").info("noisy_info")
        logging.getLogger("httpx").warning("noisy_warning")

    def _events(self, out: io.StringIO) -> set[str]:
        return {r["event"] for r in _json_lines(out.getvalue())}

    def test_info(self, out: io.StringIO) -> None:
        """At INFO, debug is dropped everywhere and noisy libraries only show warnings."""
        _configure(out, "json", level="INFO")
        self._emit_all()
        assert self._events(out) == {"own_info", "lib_info", "noisy_warning"}

    def test_warning_drops_info(self, out: io.StringIO) -> None:
        """At WARNING, info events from our code and libraries are dropped."""
        _configure(out, "json", level=logging.WARNING)
        self._emit_all()
        assert self._events(out) == {"noisy_warning"}

    def test_debug_is_for_our_code(self, out: io.StringIO) -> None:
        """At DEBUG (-v), our debug events show; libraries stay at INFO, noisy ones at WARNING."""
        _configure(out, "json", level="debug")
        self._emit_all()
        assert self._events(out) == {"own_debug", "own_info", "lib_info", "noisy_warning"}

    def test_notset_is_debug_everywhere(self, out: io.StringIO) -> None:
        """At NOTSET (-vv), every library's debug output shows, noisy ones included."""
        _configure(out, "json", level=verbosity_to_level(2))
        self._emit_all()
        assert self._events(out) == {
            "own_debug",
            "own_info",
            "lib_debug",
            "lib_info",
            "noisy_debug",
            "noisy_info",
            "noisy_warning",
        }


class TestVerbosityToLevel:
    @pytest.mark.parametrize(
        ("verbosity", "level"),
        [(-1, "INFO"), (0, "INFO"), (1, "DEBUG"), (2, "NOTSET"), (5, "NOTSET")],
    )
    def test_mapping(self, verbosity: int, level: str) -> None:
        """0 is INFO, 1 is DEBUG for our code, 2 or more is NOTSET for every library too."""
        assert verbosity_to_level(verbosity) == level


class TestGetLogger:
    def test_name_and_initial_values(self, out: io.StringIO) -> None:
        """The logger writes under the given name with its initial values bound."""
        _configure(out, "json")
        get_logger("familiar_connect.x", guild_id=7).info("hello")
        (record,) = _json_lines(out.getvalue())
        assert record["logger"] == "familiar_connect.x"
        assert record["guild_id"] == 7


class TestLogRedactor:
    def test_before_configuration_knows_patterns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Before logging is configured, the redactor still hides credential patterns."""
        monkeypatch.setattr(logs, "_current", None)
        redactor = log_redactor()
        assert redactor.secret_count == 0
        assert redactor.redact("Authorization: Bearer abc") == f"Authorization: Bearer {M}"
        assert log_redactor() is redactor


class TestSafeErrorText:
    def test_class_name_and_redacted_message(self, out: io.StringIO) -> None:
        """The text is the class name and the message with secrets redacted."""
        _configure(out)
        assert safe_error_text(ValueError(f"bad key {SECRET}")) == f"ValueError: bad key {M}"

    def test_provider_error_keeps_provider_and_status(self, out: io.StringIO) -> None:
        """A ProviderError shows its provider and status, which are not secret."""
        _configure(out)
        exc = ProviderAuthError(f"key {SECRET} revoked", provider="openrouter", status=401)
        assert (
            safe_error_text(exc) == f"ProviderAuthError: openrouter (status 401): key {M} revoked"
        )

    def test_credential_patterns_without_configuration(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Credential patterns are hidden even before logging is configured."""
        monkeypatch.setattr(logs, "_current", None)
        text = safe_error_text(RuntimeError("GET /x?api_key=abc123 failed"))
        assert text == f"RuntimeError: GET /x?api_key={M} failed"

    def test_one_line_without_control_characters(self) -> None:
        """Newlines, tabs and escape sequences become single spaces."""
        text = safe_error_text(OSError("line one\n\tline two\x1b[31m red\x00"))
        assert text == "OSError: line one line two [31m red"

    def test_empty_message(self) -> None:
        """An exception without a message is shown by class name alone."""
        assert safe_error_text(TimeoutError()) == "TimeoutError"

    def test_capped_length(self) -> None:
        """The text is cut to SAFE_ERROR_MAX_CHARS characters, ending in an ellipsis."""
        text = safe_error_text(ValueError("x" * 1000))
        assert len(text) == SAFE_ERROR_MAX_CHARS
        assert text.endswith("…")

    def test_secret_at_the_cut_is_still_hidden(self, out: io.StringIO) -> None:
        """Redaction happens before cutting, so a secret straddling the limit leaks no prefix."""
        _configure(out)
        text = safe_error_text(ValueError("x" * 280 + SECRET))
        assert SECRET[:8] not in text

    def test_broken_str(self) -> None:
        """An exception whose __str__ raises still gives a safe text."""

        class Weird(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no")

        assert safe_error_text(Weird()) == "Weird: (message unavailable)"
