"""A benchmark child process and the driver's handle on it: a line protocol over stdio.

The driver starts ``python -m <module> '<json config>'``; the child pins itself to its
CPU, starts, and prints one ``READY {json}`` line. The driver then writes commands, one
per line, and the child answers each with ``ACK {json}``:

* ``phase <name>``: start a new measurement phase (loop lag, CPU, stage timings);
* ``stop``: stop, print ``RESULT {json}`` and exit.

Anything else the child prints goes to its log file, never to stdout. Every wait on
either side is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Child", "ChildControl", "child_main"]

_READY = "READY "
_ACK = "ACK "
_RESULT = "RESULT "
_MAX_LINE_BYTES = 64 << 20


class ChildControl:
    """The child's side: announce readiness, receive commands, answer them."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._commands: asyncio.Queue[str] = asyncio.Queue()
        self._reader_task: asyncio.Task[None] | None = None

    def ready(self, info: dict[str, Any]) -> None:
        self._line(_READY + json.dumps(info))

    def ack(self, info: dict[str, Any]) -> None:
        self._line(_ACK + json.dumps(info))

    def result(self, info: dict[str, Any]) -> None:
        self._line(_RESULT + json.dumps(info))

    def _line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_MAX_LINE_BYTES)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        async def pump() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    await self._commands.put("stop")
                    return
                await self._commands.put(line.decode().strip())

        self._reader_task = loop.create_task(pump(), name="child-commands")

    async def command(self) -> str:
        """The next command (``"stop"`` when the driver closed stdin)."""
        return await self._commands.get()

    async def aclose(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


def child_main(main: Callable[[dict[str, Any], ChildControl], Awaitable[dict[str, Any]]]) -> None:
    """Entry point of a child module: parse the config, pin, run ``main``, print RESULT."""
    config = json.loads(sys.argv[1])
    cpu = config.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {int(cpu)})
    out = sys.stdout
    # Libraries that print must not corrupt the protocol: stdout now goes to the log.
    sys.stdout = sys.stderr

    async def run() -> None:
        control = ChildControl(out)
        await control.start()
        try:
            result = await main(config, control)
        finally:
            await control.aclose()
        control.result(result)

    asyncio.run(run())


class Child:
    """The driver's handle on one child process."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        self.ready_info: dict[str, Any] = {}

    @classmethod
    async def spawn(
        cls, name: str, module: str, config: dict[str, Any], *, log_path: Path, cwd: Path
    ) -> Child:
        """Start ``python -m module`` with ``config``; its stderr goes to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                json.dumps(config),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                cwd=cwd,
                limit=_MAX_LINE_BYTES,
            )
        return cls(name, process, log_path)

    async def _expect(self, prefix: str, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(
                        f"{self.name} exited before {prefix.strip()} (see {self.log_path})"
                    )
                text = line.decode().rstrip("\n")
                if text.startswith(prefix):
                    return dict(json.loads(text[len(prefix) :]))

    async def wait_ready(self, timeout_s: float = 60.0) -> dict[str, Any]:
        self.ready_info = await self._expect(_READY, timeout_s)
        return self.ready_info

    async def send(self, command: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Send a command and wait for its ACK."""
        assert self.process.stdin is not None
        self.process.stdin.write((command + "\n").encode())
        await self.process.stdin.drain()
        return await self._expect(_ACK, timeout_s)

    async def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Ask the child to stop; return its RESULT (killed if it does not finish)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(b"stop\n")
            await self.process.stdin.drain()
            self.process.stdin.close()
            result = await self._expect(_RESULT, timeout_s)
            async with asyncio.timeout(timeout_s):
                await self.process.wait()
            return result
        finally:
            await self.kill()

    async def kill(self) -> None:
        """Kill the child if it is still running (idempotent)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self.process.wait()
