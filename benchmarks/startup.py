"""(7) Start-up and memory: exec of ``familiar run`` → first answered message, idle RSS.

This process (pinned to core 1) runs a fresh fake Discord and fake OpenRouter for each
start and execs the real console script, ``familiar run``, pinned to core 0, configured
only through environment variables (a clean environment, an empty working directory,
``LOG_FORMAT=json``). Stamps, all ``monotonic_ns`` in this process:

* ``familiar_ready``: the app's log line once the database is open and migrated and
  the services are about to start;
* ``identified``: the fake gateway accepted IDENTIFY;
* ``answered`` (the headline "ready"): as soon as the fake has sent READY and the
  guilds, a user mentions the familiar; the time its reply POST arrives, minus what
  the fake LLM measured for the call, is when the familiar could answer people;
* ``discord_ready``: the adapter's ``discord_ready`` log line, which discord.py emits
  only after ``guild_ready_timeout`` (2 s in the adapter) without a new guild.

Then it idles, reads ``VmRSS`` / ``VmHWM`` from ``/proc``, and stops it with SIGTERM
(exit code and shutdown time recorded). Interleaved with each start: the bare
reference ``python -c "import discord, httpx, aiosqlite, structlog"`` (exec → exit,
its own peak RSS) and the app's own imports alone. A "loaded" start (not in
``--smoke``) runs the familiar over a data directory holding many notes (already
indexed) and many history turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    REPO_ROOT,
    BenchResult,
    RunContext,
    Target,
    app_logging,
    can_pin,
    fmt_ms,
    pin_pid,
    pinned,
    rss_kib,
    summarize,
)
from benchmarks._text_fakes import BenchDiscord, BenchLLM, LLMPlan, bench_world

NAME = "startup"
TITLE = "start-up (exec → first answer) and idle RSS"

BOT_TOKEN = "MTAxMDEwMTAxMDEwMTAxMDEw.benchS.bench-bot-token-000000000000"  # noqa: S105 - a fake's token
LLM_KEY = "sk-or-v1-bench-startup-0123456789"
BARE_IMPORTS = "import discord, httpx, aiosqlite, structlog"
APP_IMPORTS = (
    "import familiar_connect.cli, familiar_connect.app, familiar_connect.platforms.discord"
)
_PROBE_CHANNEL = 500

_RUNS = {"smoke": 1, "quick": 5, "full": 15}
_IDLE_S = {"smoke": 1.0, "quick": 2.0, "full": 10.0}
_LOADED = {"smoke": None, "quick": (10_000, 100_000), "full": (100_000, 1_000_000)}


def _familiar_argv() -> list[str]:
    script = Path(sys.executable).with_name("familiar")
    if script.exists():
        return [str(script), "run"]
    return [sys.executable, "-m", "familiar_connect.cli", "run"]


_PRINT_PEAK_RSS = (
    "\nimport sys\n"
    "sys.stdout.write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')))"
)


def _exec_and_wait(code: str) -> tuple[float, int]:
    """Run ``python -c code`` pinned to core 0; return (exec → exit in ms, peak RSS in KiB).

    The peak is the child's own ``VmHWM`` (printed by the child as it exits):
    ``wait4``'s ``ru_maxrss`` would report this process's size instead, since Linux
    carries the high-water mark across the fork/vfork + exec.
    """
    start = time.monotonic_ns()
    process = subprocess.Popen(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code + _PRINT_PEAK_RSS], cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    pin_pid(process.pid, {0})
    out, _ = process.communicate(timeout=120)
    elapsed_ms = (time.monotonic_ns() - start) / 1e6
    if process.returncode != 0:
        raise RuntimeError(f"python -c {code!r} exited with {process.returncode}")
    return elapsed_ms, int(out.split()[1])


class _LogWatcher:
    """Reads the app's JSON log lines from stderr and stamps the events we care about."""

    WANTED = ("familiar_ready", "discord_ready", "notes_index_rebuilt", "familiar_stopped")

    def __init__(self, stream: asyncio.StreamReader, log_file: Path) -> None:
        self.stamps: dict[str, int] = {}
        self.events: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump(stream, log_file))

    async def _pump(self, stream: asyncio.StreamReader, log_file: Path) -> None:
        with log_file.open("ab") as sink:
            while line := await stream.readline():
                now = time.monotonic_ns()
                sink.write(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                name = event.get("event") if isinstance(event, dict) else None
                if name in self.WANTED and name not in self.stamps:
                    self.stamps[name] = now
                    self.events[name] = event
                    self._changed.set()
                if isinstance(event, dict) and event.get("level") in ("error", "critical"):
                    self.errors.append(str(name)[:200])

    async def wait(self, name: str, timeout_s: float) -> int | None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while name not in self.stamps:
                    self._changed.clear()
                    await self._changed.wait()
        return self.stamps.get(name)

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._task
        self._task.cancel()


async def _start_familiar(
    data_dir: Path, cwd: Path, log_file: Path, idle_s: float, *, wait_rebuild: bool
) -> dict[str, Any]:
    """One exec of ``familiar run`` against fresh fakes; returns its stamps (ms from exec)."""
    async with (
        BenchLLM(expected_api_key=LLM_KEY) as llm,
        BenchDiscord(world=bench_world(0), bot_token=BOT_TOKEN) as discord,
    ):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(cwd),
            "LANG": "C.UTF-8",
            "FAMILIAR_ID": "benchstart",
            "FAMILIAR_DATA_DIR": str(data_dir),
            "OPENROUTER_BASE_URL": llm.api_base,
            "OPENROUTER_API_KEY": LLM_KEY,
            "DISCORD_TOKEN": BOT_TOKEN,
            "DISCORD_API_BASE": discord.api_base,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            # The dashboard runs, as shipped, on a free port (8765 may be taken on a shared box).
            "DASHBOARD_PORT": "0",
        }
        t_exec = time.monotonic_ns()
        process = await asyncio.create_subprocess_exec(
            *_familiar_argv(),
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        pin_pid(process.pid, {0})
        assert process.stderr is not None
        watcher = _LogWatcher(process.stderr, log_file)
        out: dict[str, Any] = {}
        try:
            async with asyncio.timeout(60):
                await discord.identified.wait()
            t_identified = time.monotonic_ns()
            async with asyncio.timeout(30):
                await discord.ready.wait()
            answered_ns, llm_ms, attempts = await _probe(discord, llm)
            out["attempts"] = attempts
            if wait_rebuild:
                await watcher.wait("notes_index_rebuilt", 600)
            await watcher.wait("discord_ready", 30)
            await asyncio.sleep(idle_s)
            out["rss_idle"] = rss_kib(process.pid)
            process.send_signal(signal.SIGTERM)
            t_term = time.monotonic_ns()
            async with asyncio.timeout(30):
                returncode = await process.wait()
            out["shutdown_ms"] = (time.monotonic_ns() - t_term) / 1e6
            out["exit_code"] = returncode
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await watcher.aclose()

    def since_exec(stamp: int | None) -> float | None:
        return None if stamp is None else (stamp - t_exec) / 1e6

    out.update(
        {
            "familiar_ready_ms": since_exec(watcher.stamps.get("familiar_ready")),
            "identified_ms": since_exec(t_identified),
            "answered_ms": since_exec(answered_ns),
            "answered_minus_llm_ms": None
            if answered_ns is None or llm_ms is None
            else since_exec(answered_ns) - llm_ms,
            "discord_ready_ms": since_exec(watcher.stamps.get("discord_ready")),
            "notes_index_rebuilt_ms": since_exec(watcher.stamps.get("notes_index_rebuilt")),
            "notes_index_rebuilt": watcher.events.get("notes_index_rebuilt"),
            "errors_logged": watcher.errors,
        }
    )
    return out


async def _probe(discord: BenchDiscord, llm: BenchLLM) -> tuple[int | None, float | None, int]:
    """Mention the familiar until it answers; return (reply stamp, LLM ms, attempts)."""
    for attempt in range(1, 6):
        tag = 900_000 + attempt
        llm.plans[tag] = LLMPlan("hello there")
        waiter = discord.expect_turn(_PROBE_CHANNEL)
        await discord.user_says(
            f"[bt{tag}] hello, are you there?", channel_id=_PROBE_CHANNEL, mentions_bot=True
        )
        try:
            async with asyncio.timeout(3):
                reply = await waiter.reply
        except TimeoutError:
            discord.forget_turn(_PROBE_CHANNEL)
            continue
        timing = llm.timings.get(tag)
        return reply.t_ns, (timing.duration_ms if timing else None), attempt
    return None, None, 5


def _prepare_loaded(data_dir: Path, notes: int, turns: int, seed: int) -> dict[str, Any]:
    """A data directory with ``notes`` indexed notes and ``turns`` history turns."""
    from benchmarks.history import _rows
    from benchmarks.memory_search import _read_all_notes, _write_notes

    familiar_dir = data_dir / "familiars" / "benchstart"
    memory_root = familiar_dir / "memory"
    t0 = time.perf_counter()
    _write_notes(memory_root, notes, seed)

    async def build() -> None:
        from familiar_connect.storage.db import open_database
        from familiar_connect.storage.notes_index import NotesIndex

        familiar_dir.mkdir(parents=True, exist_ok=True)
        db = await open_database(familiar_dir / "familiar.db")
        try:
            await NotesIndex(db).rebuild(_read_all_notes(memory_root))
        finally:
            await db.close()

    asyncio.run(build())
    from benchmarks._corpus import ZipfCorpus
    from familiar_connect.storage.history import _INSERT

    conn = sqlite3.connect(familiar_dir / "familiar.db", isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -65536")
        rows = _rows(ZipfCorpus(seed=seed), turns, seed)
        for _ in range(0, turns, 10_000):
            chunk = [row for _, row in zip(range(10_000), rows, strict=False)]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_INSERT, chunk)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = (familiar_dir / "familiar.db").stat().st_size
    finally:
        conn.close()
    return {
        "notes": notes,
        "turns": turns,
        "database_bytes": size,
        "prepare_s": round(time.perf_counter() - t0, 1),
    }


def _notes_indexed(data_dir: Path) -> int | None:
    path = data_dir / "familiars" / "benchstart" / "familiar.db"
    try:
        conn = sqlite3.connect(path)
        try:
            return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return None


async def run(ctx: RunContext) -> BenchResult:
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    runs = _RUNS[ctx.mode]
    idle_s = _IDLE_S[ctx.mode]
    result.params = {
        "starts": runs,
        "idle_before_rss_s": idle_s,
        "familiar_argv": _familiar_argv(),
        "bare_reference": f'python -c "{BARE_IMPORTS}"',
        "app_imports": f'python -c "{APP_IMPORTS}"',
        "loaded": _LOADED[ctx.mode],
        "pinning": "fakes on core 1, execs on core 0" if can_pin() else "none",
    }
    result.method = [
        "each start: fresh fake Discord + fake OpenRouter on loopback; `familiar run` exec'd "
        "with a clean environment (settings only through variables), default character",
        "answered = exec → reply POST to the first mention (sent once READY and the guilds are "
        "out), minus the fake LLM's measured time; the headline 'ready'",
        "first start creates and migrates the database; later starts reopen it",
        "bare reference, app imports and familiar start interleaved in rotating order",
        "RSS: VmRSS/VmHWM from /proc after idling; bare and app-import peaks are the child's "
        "own VmHWM, printed as it exits (the exec → exit time includes that one line)",
    ]
    logs = ctx.out_dir / "logs"
    data_dir = ctx.work_dir / "data"
    cwd = ctx.work_dir / "cwd"
    cwd.mkdir(parents=True, exist_ok=True)
    bare: list[tuple[float, int]] = []
    imports: list[tuple[float, int]] = []
    starts: list[dict[str, Any]] = []
    with pinned({1}):
        for index in range(runs + 1):  # start 0 creates the database
            order = ("bare", "imports", "familiar")
            shift = index % 3
            for what in order[shift:] + order[:shift]:
                if what == "bare":
                    bare.append(await asyncio.to_thread(_exec_and_wait, BARE_IMPORTS))
                elif what == "imports":
                    imports.append(await asyncio.to_thread(_exec_and_wait, APP_IMPORTS))
                else:
                    starts.append(
                        await _start_familiar(
                            data_dir, cwd, logs / f"{NAME}-app.log", idle_s, wait_rebuild=False
                        )
                    )
        loaded: dict[str, Any] | None = None
        if _LOADED[ctx.mode] is not None:
            notes, turns = _LOADED[ctx.mode]
            loaded_dir = ctx.work_dir / "loaded"
            with app_logging(logs / f"{NAME}-prepare.log"):
                prepared = await asyncio.to_thread(
                    _prepare_loaded, loaded_dir, notes, turns, ctx.seed
                )
            loaded = await _start_familiar(
                loaded_dir, cwd, logs / f"{NAME}-app.log", idle_s, wait_rebuild=True
            )
            loaded["prepared"] = prepared
            loaded["notes_indexed_after"] = _notes_indexed(loaded_dir)
    _analyze(result, bare, imports, starts, loaded)
    return result


def _analyze(
    result: BenchResult,
    bare: list[tuple[float, int]],
    imports: list[tuple[float, int]],
    starts: list[dict[str, Any]],
    loaded: dict[str, Any] | None,
) -> None:
    first, restarts = starts[0], starts[1:] or starts[:1]

    def values(key: str) -> list[float]:
        return [s[key] for s in restarts if s.get(key) is not None]

    rss = [s["rss_idle"]["rss_kib"] / 1024 for s in restarts if s.get("rss_idle")]
    peak = [s["rss_idle"]["peak_rss_kib"] / 1024 for s in restarts if s.get("rss_idle")]
    bare_ms = [b[0] for b in bare[1:] or bare]
    bare_rss = [b[1] / 1024 for b in bare[1:] or bare]
    imports_ms = [b[0] for b in imports[1:] or imports]
    result.metrics = {
        "familiar_restart": {
            key: summarize(values(key))
            for key in (
                "familiar_ready_ms",
                "identified_ms",
                "answered_ms",
                "answered_minus_llm_ms",
                "discord_ready_ms",
                "shutdown_ms",
            )
        },
        "familiar_first_start": {k: v for k, v in first.items() if k != "notes_index_rebuilt"},
        "familiar_rss_idle_mb": summarize(rss, unit="MB", digits=1),
        "familiar_peak_rss_mb": summarize(peak, unit="MB", digits=1),
        "bare_imports_exec_to_exit_ms": summarize(bare_ms),
        "bare_imports_peak_rss_mb": summarize(bare_rss, unit="MB", digits=1),
        "app_imports_exec_to_exit_ms": summarize(imports_ms),
        "exit_codes": [s.get("exit_code") for s in starts],
        "probe_attempts": [s.get("attempts") for s in starts],
        "errors_logged": sorted({e for s in starts for e in s.get("errors_logged", [])}),
        "runs": starts,
    }
    if loaded is not None:
        result.metrics["loaded"] = loaded
    ready = summarize(values("answered_minus_llm_ms"))
    bare_p50 = summarize(bare_ms).get("p50")
    ratio = round(ready["p50"] / bare_p50, 2) if ready.get("p50") and bare_p50 else None
    rss_p50 = summarize(rss).get("p50")
    bare_rss_p50 = summarize(bare_rss).get("p50")
    result.ratios = {
        "ready_over_bare_imports_p50": ratio,
        "app_imports_over_bare_imports_p50": round(summarize(imports_ms)["p50"] / bare_p50, 2)
        if bare_p50 and imports_ms
        else None,
        "idle_rss_over_bare_peak_rss_p50": round(rss_p50 / bare_rss_p50, 2)
        if rss_p50 and bare_rss_p50
        else None,
    }
    discord_ready = summarize(values("discord_ready_ms")).get("p50")
    result.targets += [
        Target(
            "start → answers (exec → first reply − LLM), p50",
            fmt_ms(ready.get("p50"), 0),
            "≤ 1 s",
            ready.get("p50") is not None and ready["p50"] <= 1_000,
            f"max {fmt_ms(ready.get('max'), 0)}; familiar_ready "
            f"{fmt_ms(summarize(values('familiar_ready_ms')).get('p50'), 0)}; discord_ready "
            f"{fmt_ms(discord_ready, 0)} (includes discord.py's 2 s guild_ready_timeout)",
        ),
        Target(
            "start ÷ bare imports, p50",
            f"×{ratio}",
            "≤ 2.0×",
            ratio is not None and ratio <= 2.0,
            f"bare `{BARE_IMPORTS}` {fmt_ms(bare_p50, 0)}; app imports "
            f"{fmt_ms(summarize(imports_ms).get('p50'), 0)}",
        ),
        Target(
            "idle RSS, p50",
            f"{rss_p50:.1f} MB" if rss_p50 else "n/a",
            "≤ 100 MB",
            rss_p50 is not None and rss_p50 <= 100,
            f"peak {summarize(peak).get('max', 0):.1f} MB; bare imports peak "
            f"{bare_rss_p50 or 0:.1f} MB",
        ),
    ]
    result.check("start ÷ bare imports p50", ratio, 6.0)
    if loaded is not None and loaded.get("rss_idle"):
        prepared = loaded["prepared"]
        loaded_rss = loaded["rss_idle"]["rss_kib"] / 1024
        result.targets.append(
            Target(
                f"loaded ({prepared['notes']:,} notes, {prepared['turns']:,} turns): RSS",
                f"{loaded_rss:.1f} MB",
                "≤ 150 MB",
                loaded_rss <= 150,
                f"peak {loaded['rss_idle']['peak_rss_kib'] / 1024:.1f} MB; answered "
                f"{fmt_ms(loaded.get('answered_minus_llm_ms'), 0)}; index rebuild done "
                f"{fmt_ms(loaded.get('notes_index_rebuilt_ms'), 0)}; notes indexed after "
                f"start {loaded.get('notes_indexed_after')} of {prepared['notes']:,}",
            )
        )
