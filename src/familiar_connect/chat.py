"""``familiar chat``: talk to the familiar in a terminal.

The terminal is one more platform: the operator's lines become
:class:`~familiar_connect.core.events.TextMessage` events (platform
``terminal``, the operator as author) for the same orchestrator, memory,
history and tools the Discord and Twitch adapters use, and the reply streams
back through a :class:`TerminalSink` as it is generated.

Keys: Enter sends; the input line has editing and history (GNU readline when
the terminal has it); Ctrl-C cancels a reply in flight (at the prompt it only
reminds you how to leave); Ctrl-D exits cleanly, flushing history and memory.
``--once TEXT`` answers one message and exits, for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

import structlog

from familiar_connect.app import open_familiar
from familiar_connect.character import Character
from familiar_connect.conversation.orchestrator import Orchestrator
from familiar_connect.core.events import Author, ConversationKey, Platform, TextMessage
from familiar_connect.dashboard import DashboardService
from familiar_connect.settings import Settings
from familiar_connect.supervisor import Supervisor

__all__ = ["TerminalSink", "run_chat"]

log = structlog.get_logger(__name__)

_KEY = ConversationKey(Platform.TERMINAL, "terminal")
_HISTORY_FILE = "chat_history"
_MAX_LINE_CHARS = 100_000


class TerminalSink:
    """Prints a reply as it streams. ``mode = "text"``: receives text deltas."""

    mode = "text"

    def __init__(self, out: TextIO, *, name: str) -> None:
        self._out = out
        self._name = name
        self._started = False
        self._delivered: list[str] = []

    async def begin(self) -> None:
        self._started = False
        self._delivered = []

    async def send(self, piece: str) -> None:
        if not self._started:
            self._out.write(f"{self._name}: ")
            self._started = True
        self._out.write(piece)
        self._out.flush()
        self._delivered.append(piece)

    async def end(self, text: str) -> str:
        if self._started:
            self._out.write("\n")
            self._out.flush()
        self._started = False
        return "".join(self._delivered) or text

    async def cancel(self) -> str | None:
        if self._started:
            self._out.write(" [interrupted]\n")
            self._out.flush()
        self._started = False
        return "".join(self._delivered)

    async def notice(self, text: str) -> None:
        self._out.write(f"[{text}]\n")
        self._out.flush()


def _enable_line_editing(history_path: Path) -> None:
    """Use GNU readline for editing and history when the terminal has it."""
    try:
        import readline
    except ImportError:  # pragma: no cover - platforms without readline
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(history_path)
    readline.set_history_length(1000)


def _save_line_history(history_path: Path) -> None:
    try:
        import readline
    except ImportError:  # pragma: no cover
        return
    with contextlib.suppress(OSError):
        readline.write_history_file(history_path)
        history_path.chmod(0o600)


def _operator() -> Author:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    return Author(Platform.TERMINAL, user_id="operator", name=user, is_operator=True)


def _submit(orchestrator: Orchestrator, author: Author, text: str, sink: TerminalSink) -> str:
    event = TextMessage(
        key=_KEY,
        author=author,
        text=text[:_MAX_LINE_CHARS],
        message_id=str(time.time_ns()),
        received_ns=time.monotonic_ns(),
    )
    return orchestrator.submit(event, sink)


async def run_chat(
    settings: Settings,
    character: Character,
    *,
    once: str | None = None,
    dashboard: bool = False,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the terminal conversation; return the exit code (1 if ``--once`` got no reply).

    With ``dashboard`` the operator dashboard runs alongside, as with ``familiar run``.
    """
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    interactive = once is None and stdin.isatty()
    async with open_familiar(settings, character) as familiar:
        orchestrator = familiar.orchestrator
        board = DashboardService(familiar) if dashboard else None
        supervisor = Supervisor([*familiar.services, *([board] if board is not None else [])])
        if board is not None:
            board.supervisor = supervisor
        sink = TerminalSink(out, name=character.display_name)
        author = _operator()
        history_path = settings.familiar_dir / _HISTORY_FILE
        loop = asyncio.get_running_loop()

        def on_interrupt() -> None:
            if not orchestrator.cancel(_KEY) and interactive:
                out.write("\n(Ctrl-D to leave)\n")
                out.flush()

        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        services = asyncio.create_task(supervisor.run(), name="chat:services")
        try:
            for _ in range(1000):  # the orchestrator starts within a few loop iterations
                if orchestrator.running or services.done():
                    break
                await asyncio.sleep(0)
            if services.done():
                await services  # a fatal start-up error surfaces here
            if once is not None:
                failed_before = orchestrator.stats.failed
                replies_before = orchestrator.stats.replies
                _submit(orchestrator, author, once, sink)
                await orchestrator.wait_idle(_KEY)
                ok = (
                    orchestrator.stats.failed == failed_before
                    and orchestrator.stats.replies > replies_before
                )
                return 0 if ok else 1
            if interactive:
                _enable_line_editing(history_path)
                out.write(
                    f"Talking with {character.display_name}. Ctrl-C stops a reply, Ctrl-D leaves.\n"
                )
            prompt = "you> " if interactive else ""
            while True:
                try:
                    line = await loop.run_in_executor(None, _read_line, stdin, prompt)
                except EOFError:
                    break
                if not line.strip():
                    continue
                _submit(orchestrator, author, line, sink)
                await orchestrator.wait_idle(_KEY)
            return 0
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            if interactive:
                _save_line_history(history_path)
                out.write("\n")
            supervisor.stop()
            await services


def _read_line(stdin: TextIO, prompt: str) -> str:
    if prompt and stdin is sys.stdin:
        return input(prompt)
    line = stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")
