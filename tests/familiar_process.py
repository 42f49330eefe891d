"""Run the `familiar` command as a separate process, the way an operator does."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

# Only what a process needs to start; nothing of the developer's own settings leaks in.
_PASSED_THROUGH = ("PATH", "HOME", "LANG", "SYSTEMROOT")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment with no Familiar-Connect settings except ``extra``."""
    env = {k: v for k, v in os.environ.items() if k in _PASSED_THROUGH}
    env.update(extra or {})
    return env


async def start_familiar(
    *args: str, cwd: Path, env: Mapping[str, str] | None = None, stdin: bool = False
) -> asyncio.subprocess.Process:
    """Start ``python -m familiar_connect.cli ARGS`` with piped output (and stdin if asked)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "familiar_connect.cli",
        *args,
        cwd=cwd,
        env=clean_env(env),
        stdin=asyncio.subprocess.PIPE if stdin else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_familiar(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout_s: float = 60,
) -> tuple[int, str, str]:
    """Run ``familiar ARGS`` to completion; return (exit code, stdout, stderr)."""
    process = await start_familiar(*args, cwd=cwd, env=env, stdin=stdin is not None)
    out, err = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), timeout=timeout_s
    )
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
