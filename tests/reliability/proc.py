"""A running ``familiar`` (or driver script) subprocess whose output is read while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.familiar_process import clean_env, start_familiar
from tests.reliability.figures import timeout_s

__all__ = ["LiveProcess", "start_script"]

_DASHBOARD_LINE = re.compile(rb"Dashboard: http://127\.0\.0\.1:(\d+)/")


class LiveProcess:
    """Collects stdout and stderr of a child as they arrive.

    Use :meth:`start` (``familiar ARGS``) or :func:`start_script`; always
    :meth:`finish` (or :meth:`kill`) it.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._changed = asyncio.Event()
        self._readers = [
            asyncio.create_task(self._pump(process.stdout, self.stdout)),
            asyncio.create_task(self._pump(process.stderr, self.stderr)),
        ]

    @classmethod
    async def start(cls, *args: str, cwd: Path, env: Mapping[str, str]) -> LiveProcess:
        """Start ``familiar ARGS`` with a clean environment plus ``env``."""
        return cls(await start_familiar(*args, cwd=cwd, env=env, stdin=True))

    async def _pump(self, stream: asyncio.StreamReader | None, into: bytearray) -> None:
        if stream is None:
            return
        while chunk := await stream.read(65536):
            into.extend(chunk)
            self._changed.set()

    async def wait_for(
        self, pattern: bytes, *, stream: str = "stderr", limit_s: float = 30
    ) -> re.Match[bytes]:
        """Wait until ``pattern`` (a regex) appears in the output; fail if the child exits first."""
        regex = re.compile(pattern)
        buffer = self.stderr if stream == "stderr" else self.stdout
        async with asyncio.timeout(timeout_s(limit_s)):
            while True:
                match = regex.search(buffer)
                if match is not None:
                    return match
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"process exited {self.process.returncode} before {pattern!r}:\n"
                        + self.stderr.decode(errors="replace")[-3000:]
                    )
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._changed.wait()

    async def dashboard_port(self) -> int:
        """The port from the ``Dashboard: http://127.0.0.1:PORT/`` line the familiar prints."""
        match = await self.wait_for(_DASHBOARD_LINE.pattern)
        return int(match.group(1))

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def finish(self, *, sig: int | None = signal.SIGTERM, limit_s: float = 30) -> int:
        """Send ``sig`` (None: just close stdin), wait for the exit; return the exit code."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        if sig is not None and self.process.returncode is None:
            self.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout=timeout_s(limit_s))
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> int:
        """SIGKILL: no cleanup at all, as a crash or the OOM killer would."""
        return await self.finish(sig=signal.SIGKILL)

    @property
    def out_text(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err_text(self) -> str:
        return self.stderr.decode(errors="replace")


async def start_script(
    script: Path, *args: str, cwd: Path, env: Mapping[str, str], extra: Sequence[str] = ()
) -> LiveProcess:
    """Start ``python SCRIPT ARGS`` (a driver under ``scripts/``) with a clean environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        *extra,
        cwd=cwd,
        env=clean_env(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return LiveProcess(process)
