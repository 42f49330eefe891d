"""Logging: our structlog events and every library's stdlib records, redacted.

:func:`configure_logging` sets up one chain for everything the process logs::

    structlog logger ─┐  (filter_by_level, contextvars, logger name, level,
                      │   ISO UTC timestamp, stack info, %-args)
    stdlib logger ────┤  (same, as ProcessorFormatter.foreign_pre_chain)
                      ▼
    root handler → ProcessorFormatter:
        format_exc_info     exceptions become text first...
        RedactProcessor     ...so every field, traceback included, is scrubbed
        RedactingRenderer   render (console or JSON), then scrub the line again

Libraries (discord.py, twitchio, httpx, httpcore, aiohttp, websockets, azure,
aiosqlite) log through the stdlib, so their records reach the same root
handler and the same redaction. Python warnings are captured into it too.

Known gaps, by design: a library logger with ``propagate = False`` and its own
handler (discord.py's ``Client.run()`` installs one unless called with
``log_handler=None``) bypasses the root handler; so does anything written
straight to stdout/stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from familiar_connect._redact import Redactor, SecretLike
from familiar_connect.errors import ConfigError

__all__ = [
    "NOISY_LOGGERS",
    "OWN_LOGGER",
    "SAFE_ERROR_MAX_CHARS",
    "RedactProcessor",
    "RedactingRenderer",
    "Redactor",
    "configure_logging",
    "get_logger",
    "log_redactor",
    "safe_error_text",
    "verbosity_to_level",
]

# The package's own logger: our modules log as familiar_connect.<module>.
OWN_LOGGER = "familiar_connect"

# Library loggers that log every request or frame at INFO/DEBUG. They are held
# at WARNING unless every library's debug output was asked for (level NOTSET).
NOISY_LOGGERS: tuple[str, ...] = (
    "httpx",
    "httpcore",
    "websockets",
    "aiohttp.access",
    "discord.gateway",
)

SAFE_ERROR_MAX_CHARS = 300

# Processors shared by structlog events and foreign (stdlib) records. The same
# objects are used by every configure_logging() call: loggers cached on first
# use keep this chain, and everything that depends on the configuration (level,
# format, secrets, stream) lives in the root handler, so reconfiguring still
# reaches them.
_SHARED_PROCESSORS: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
)

_STRUCTLOG_PROCESSORS: list[Processor] = [
    # First, so a filtered-out call costs one level check. The stdlib level is
    # read on every call, so changing levels needs no new structlog config.
    structlog.stdlib.filter_by_level,
    *_SHARED_PROCESSORS,
    structlog.stdlib.PositionalArgumentsFormatter(),
    # Foreign records carry their stack_info as text already; only ours need it rendered.
    structlog.processors.StackInfoRenderer(),
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


class RedactProcessor:
    """A structlog processor that scrubs every field of every event.

    Place it after everything that adds fields and before the renderer. An
    ``exc_info`` still in the event is formatted into the ``exception`` text
    first (as :func:`structlog.processors.format_exc_info` does), because a
    renderer formatting the exception itself would do so after redaction.

    Args:
        redactor: does the scrubbing; secrets added to it later apply at once.
    """

    __slots__ = ("_redactor",)

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:
            event_dict = structlog.processors.format_exc_info(logger, method_name, event_dict)
        redacted: EventDict = self._redactor.redact_value(event_dict)
        return redacted


class RedactingRenderer:
    """Wraps a renderer and scrubs the text it produces.

    The last line of defence: it catches anything the renderer adds on its
    own, such as a value's ``repr()`` or exception formatting. ``str`` output
    is redacted as text; ``bytes`` output is decoded as UTF-8, redacted and
    re-encoded if anything changed; anything else is walked with
    :meth:`Redactor.redact_value`.

    Args:
        renderer: the processor that turns the event into its final form.
        redactor: does the scrubbing.
    """

    __slots__ = ("_redactor", "_renderer")

    def __init__(self, renderer: Processor, redactor: Redactor) -> None:
        self._renderer = renderer
        self._redactor = redactor

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
        rendered = self._renderer(logger, method_name, event_dict)
        if isinstance(rendered, str):
            return self._redactor.redact(rendered)
        if isinstance(rendered, bytes | bytearray):
            text = bytes(rendered).decode("utf-8", errors="replace")
            redacted = self._redactor.redact(text)
            return rendered if redacted is text else redacted.encode("utf-8")
        return self._redactor.redact_value(rendered)


def _summarise_websocket_frames(record: logging.LogRecord) -> bool:
    """Replace a websockets frame dump (``-vv``) with its direction, opcode and size.

    websockets logs each frame at DEBUG as ``"< %s"``/``"> %s"`` with the frame's text, cut
    to its head and tail around ``...`` when long. A secret cut in two that way is no longer
    the configured value, so the redactor could not recognise it; payloads (a provider's
    error text, a user's transcript) do not belong in logs anyway.
    """
    if (
        record.name.startswith("websockets")
        and record.msg in ("< %s", "> %s")
        and isinstance(record.args, tuple)
        and len(record.args) == 1
        and hasattr(record.args[0], "opcode")
    ):
        frame = record.args[0]
        direction = record.msg[0]
        opcode = getattr(frame.opcode, "name", str(frame.opcode))
        size = len(getattr(frame, "data", b""))
        record.msg = "%s %s frame (%d bytes)"
        record.args = (direction, opcode, size)
    return True


class _RedactingStreamHandler(logging.StreamHandler):
    """A StreamHandler whose error report is redacted.

    When a record cannot be formatted (a library passing the wrong number of
    %-arguments, say), the stdlib handler prints the record's message and
    arguments to stderr as they are, which would bypass redaction. This one
    writes the redacted traceback to its own stream instead, as a JSON object
    when the stream carries JSON lines.
    """

    def __init__(self, stream: TextIO, redactor: Redactor, *, json_lines: bool) -> None:
        super().__init__(stream)
        self._redactor = redactor
        self._json_lines = json_lines

    def handleError(self, record: logging.LogRecord) -> None:
        if not logging.raiseExceptions or self.stream is None:
            return
        exc = sys.exc_info()[1]
        details = "".join(traceback.format_exception(exc)) if exc is not None else ""
        if self._json_lines:
            report = json.dumps(
                {
                    "event": "logging_error",
                    "logger": record.name,
                    "level": "error",
                    "exception": details,
                }
            )
        else:
            report = f"--- Logging error in logger {record.name!r} ---\n{details}"
        # Like the stdlib, never let a failure to report a failure escape.
        with contextlib.suppress(Exception):
            self.stream.write(self._redactor.redact(report) + self.terminator)
            self.flush()


class _Current:
    """What the last configure_logging() call installed."""

    __slots__ = ("handler", "redactor")

    def __init__(self, redactor: Redactor, handler: logging.Handler | None) -> None:
        self.redactor = redactor
        self.handler = handler


# None until configure_logging() runs; log_redactor() then falls back to a
# redactor that knows the credential patterns but no secret values.
_current: _Current | None = None


def configure_logging(
    *,
    level: int | str = "INFO",
    fmt: Literal["console", "json"] = "console",
    secrets: Iterable[str | SecretLike] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Route structlog and stdlib logging through one redacting chain.

    Replaces the whole logging configuration: every handler on the root logger
    is removed (as ``logging.basicConfig(force=True)`` does) and one handler
    writing to ``stream`` takes their place, so calling this twice never
    duplicates output. Also turns on ``logging.captureWarnings``.

    Levels, by ``level``:

    * ``INFO`` and above: everything at that level; the loggers in
      :data:`NOISY_LOGGERS` at ``WARNING`` or above.
    * ``DEBUG`` (``-v``): our own loggers (``familiar_connect.*``) at DEBUG;
      other libraries at INFO; noisy ones at WARNING.
    * below ``DEBUG``, e.g. ``NOTSET`` (``-vv``): DEBUG everywhere, noisy
      libraries included. Our own loggers use ``level`` itself if above 0.

    Args:
        level: a level number or name (``"INFO"``, ``"debug"``, ``"NOTSET"``).
        fmt: ``"console"`` for people (colours only when ``stream`` is a TTY
            and ``NO_COLOR`` is unset) or ``"json"``, one object per line.
        secrets: values to scrub from every event, e.g.
            ``settings.secret_values()``; more can be added later through the
            returned redactor.
        stream: where lines go; ``sys.stderr`` (looked up at call time) if None.

    Returns:
        The redactor now in use, also available from :func:`log_redactor`.

    Raises:
        ConfigError: ``level`` or ``fmt`` is not valid.
    """
    global _current
    level_number = _level_number(level)
    if fmt not in ("console", "json"):
        raise ConfigError(
            f"unknown log format {fmt!r}", problems=("LOG_FORMAT must be console or json",)
        )
    redactor = Redactor(secrets)
    out = sys.stderr if stream is None else stream

    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_wants_colors(out), exception_formatter=structlog.dev.plain_traceback
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            RedactProcessor(redactor),
            RedactingRenderer(renderer, redactor),
        ],
    )
    handler = _RedactingStreamHandler(out, redactor, json_lines=fmt == "json")
    handler.setFormatter(formatter)
    handler.addFilter(_summarise_websocket_frames)

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    if _current is not None and _current.handler is not None:
        _current.handler.close()
    root.addHandler(handler)

    own_level, library_level, noisy_level = _levels(level_number)
    root.setLevel(library_level)
    logging.getLogger(OWN_LOGGER).setLevel(own_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(noisy_level)
    logging.captureWarnings(True)

    structlog.configure(
        processors=_STRUCTLOG_PROCESSORS,
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    _current = _Current(redactor, handler)
    return redactor


def verbosity_to_level(verbosity: int) -> str:
    """The ``level`` for :func:`configure_logging` from a count of ``-v`` flags.

    ``0`` (or less) gives ``"INFO"``; ``1`` gives ``"DEBUG"``, which is debug
    output from Familiar-Connect only; ``2`` or more gives ``"NOTSET"``, which
    is debug output from every library as well.
    """
    if verbosity <= 0:
        return "INFO"
    if verbosity == 1:
        return "DEBUG"
    return "NOTSET"


def get_logger(name: str, **initial_values: Any) -> Any:
    """A structlog logger writing to the stdlib logger ``name``.

    Use ``get_logger(__name__)``: the name decides the level that applies
    (see :func:`configure_logging`). ``initial_values`` are bound to it.
    """
    return structlog.stdlib.get_logger(name, **initial_values)


def log_redactor() -> Redactor:
    """The redactor of the current logging configuration.

    Use it on any text shown to people (the dashboard, exported context,
    error messages). Call it each time rather than keeping the result:
    :func:`configure_logging` installs a new one. Before logging is
    configured, it returns a redactor that knows the credential patterns
    but no secret values.
    """
    global _current
    if _current is None:
        _current = _Current(Redactor(), None)
    return _current.redactor


def safe_error_text(exc: BaseException) -> str:
    """A one-line description of ``exc`` that is safe to show to a user.

    ``"ClassName: message"`` (or just the class name when the message is
    empty), with secrets and credentials redacted by :func:`log_redactor`,
    control and other unprintable characters turned into spaces, whitespace
    collapsed, and at most :data:`SAFE_ERROR_MAX_CHARS` characters (cut with
    "…"). Never raises, even if the exception's ``__str__`` does.
    """
    redactor = log_redactor()
    try:
        message = str(exc)
    except Exception:
        message = "(message unavailable)"
    message = redactor.redact(message)
    message = " ".join("".join(c if c.isprintable() else " " for c in message).split())
    # Joining lines could in theory splice a secret back together.
    message = redactor.redact(message)
    name = type(exc).__name__
    text = f"{name}: {message}" if message else name
    if len(text) > SAFE_ERROR_MAX_CHARS:
        text = text[: SAFE_ERROR_MAX_CHARS - 1] + "…"
    return text


def _level_number(level: int | str) -> int:
    """A level number from a number or a stdlib level name, any case."""
    if isinstance(level, bool):
        raise ConfigError(f"unknown log level {level!r}")
    if isinstance(level, int):
        if level < 0:
            raise ConfigError(f"log level must not be negative, got {level}")
        return level
    number = logging.getLevelNamesMapping().get(str(level).strip().upper())
    if number is None:
        raise ConfigError(
            f"unknown log level {level!r}",
            problems=("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL",),
        )
    return number


def _levels(level: int) -> tuple[int, int, int]:
    """(own, libraries, noisy libraries) levels for a configured level."""
    if level < logging.DEBUG:
        own = level if level > logging.NOTSET else logging.DEBUG
        return own, own, own
    if level == logging.DEBUG:
        return logging.DEBUG, logging.INFO, logging.WARNING
    return level, level, max(level, logging.WARNING)


def _wants_colors(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (OSError, ValueError):
        return False
