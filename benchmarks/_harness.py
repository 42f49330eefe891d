"""Shared harness: statistics, the environment record, loop-lag sentinel, CPU pinning, results.

Rules this module implements (``reference/performance.md`` §A.5):

* one clock: ``time.monotonic_ns()`` (``CLOCK_MONOTONIC``, comparable across processes);
* every summary has n, p50/p95/p99 and max; with fewer than 300 samples p99 is flagged
  as unreliable (read p95 and max);
* ratios against a reference measured in the same run, with a bootstrap interval;
* a loop-health sentinel (``sleep(10 ms)`` lateness) in every process that matters;
* the environment (cores, load average, Python, SQLite, libopus, git commit, date) in
  every result file.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "RELIABLE_P99_SAMPLES",
    "REPO_ROOT",
    "BenchResult",
    "LoopLagSentinel",
    "Mode",
    "RunContext",
    "Target",
    "app_logging",
    "bench_familiar",
    "bootstrap_ratio",
    "environment",
    "percentile",
    "pinned",
    "summarize",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
RELIABLE_P99_SAMPLES = 300
"""Below this many samples a p99 is one or two values: report p95 and max instead."""

Mode = Literal["smoke", "quick", "full"]


# --- statistics -------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0..100) of already sorted values."""
    if not sorted_values:
        return math.nan
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] * (1 - frac) + sorted_values[high] * frac)


def summarize(values: Sequence[float], *, unit: str = "ms", digits: int = 3) -> dict[str, Any]:
    """n, min, p50, p95, p99, max and mean of ``values`` (already in ``unit``)."""
    ordered = sorted(values)
    if not ordered:
        return {"n": 0, "unit": unit}

    def r(x: float) -> float:
        return round(x, digits)

    return {
        "n": len(ordered),
        "unit": unit,
        "min": r(ordered[0]),
        "p50": r(percentile(ordered, 50)),
        "p95": r(percentile(ordered, 95)),
        "p99": r(percentile(ordered, 99)),
        "max": r(ordered[-1]),
        "mean": r(sum(ordered) / len(ordered)),
        "p99_reliable": len(ordered) >= RELIABLE_P99_SAMPLES,
    }


def _median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


def bootstrap_ratio(
    subject: Sequence[float],
    reference: Sequence[float],
    *,
    iterations: int = 1_000,
    seed: int = 8,
) -> dict[str, Any]:
    """Median of ``subject`` ÷ and − median of ``reference``, with 95% bootstrap intervals.

    Samples are resampled independently (the two series were interleaved in one run,
    which is what cancels the machine's background noise; the bootstrap only says how
    sure the medians are).
    """
    if not subject or not reference:
        return {"ratio": None, "difference": None}
    rng = random.Random(seed)  # noqa: S311 - resampling, not security
    ratios: list[float] = []
    diffs: list[float] = []
    for _ in range(iterations):
        a = _median(rng.choices(subject, k=len(subject)))
        b = _median(rng.choices(reference, k=len(reference)))
        diffs.append(a - b)
        if b > 0:
            ratios.append(a / b)
    ratios.sort()
    diffs.sort()
    med_a, med_b = _median(subject), _median(reference)
    return {
        "ratio": round(med_a / med_b, 3) if med_b > 0 else None,
        "ratio_ci95": [round(percentile(ratios, 2.5), 3), round(percentile(ratios, 97.5), 3)]
        if ratios
        else None,
        "difference": round(med_a - med_b, 3),
        "difference_ci95": [round(percentile(diffs, 2.5), 3), round(percentile(diffs, 97.5), 3)],
    }


# --- the event loop's health ----------------------------------------------------------


class LoopLagSentinel:
    """Measure event-loop lag: how late a ``sleep(interval)`` wakes up, per phase.

    Start it with ``async with``; :meth:`phase` starts a new bucket; :meth:`pause`
    discards samples while the benchmark itself blocks the loop on purpose (e.g. a raw
    ``sqlite3`` reference query run in-thread).
    """

    def __init__(self, *, interval_s: float = 0.010, max_samples: int = 200_000) -> None:
        self.interval_s = interval_s
        self._max_samples = max_samples
        self._phase = "default"
        self._samples: dict[str, list[float]] = {}
        self._epoch = 0
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._count = 0

    def phase(self, name: str) -> None:
        """Put the following samples in bucket ``name``."""
        self._phase = name
        self._epoch += 1

    def pause(self) -> None:
        """Discard samples until :meth:`resume` (the loop is blocked on purpose)."""
        self._paused = True
        self._epoch += 1

    def resume(self) -> None:
        self._paused = False
        self._epoch += 1

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def lag_ms(self, phase: str) -> list[float]:
        return list(self._samples.get(phase, []))

    def summary(self, phase: str | None = None) -> dict[str, Any]:
        """Summary (ms) of one phase, or of every sample when ``phase`` is None."""
        if phase is None:
            values = [v for bucket in self._samples.values() for v in bucket]
        else:
            values = self._samples.get(phase, [])
        return summarize(values, unit="ms")

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {name: summarize(values, unit="ms") for name, values in self._samples.items()}

    async def _run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        while True:
            epoch = self._epoch
            start = time.monotonic_ns()
            await asyncio.sleep(self.interval_s)
            late_ms = (time.monotonic_ns() - start - interval_ns) / 1e6
            if epoch == self._epoch and not self._paused and self._count < self._max_samples:
                self._samples.setdefault(self._phase, []).append(max(late_ms, 0.0))
                self._count += 1

    async def __aenter__(self) -> LoopLagSentinel:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


# --- CPU pinning ------------------------------------------------------------------------


def can_pin() -> bool:
    """Two or more cores usable and ``sched_setaffinity`` available (Linux)."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[bool]:
    """Pin this process to ``cpus`` for the block (restored after); yields whether it did."""
    if cpus is None or not can_pin():
        yield False
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def pin_pid(pid: int, cpus: set[int]) -> bool:
    """Pin another process (a child we started); returns whether it worked."""
    if not can_pin():
        return False
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return False
    return True


# --- the environment ----------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            ["git", *args],  # noqa: S607 - git from PATH, like the CI script
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _libopus_version() -> str | None:
    try:
        import discord.opus as opus

        if not opus.is_loaded():
            opus._load_default()
        lib = getattr(opus, "_lib", None)
        if lib is None:
            return None
        return str(lib.opus_get_version_string().decode())
    except Exception:  # any failure just means "unknown" in the record
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _mem_total_mb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "libopus": _libopus_version(),
        "packages": {
            name: _version(name)
            for name in ("discord.py", "aiohttp", "aiosqlite", "httpx", "structlog", "numpy")
        },
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


# --- results ------------------------------------------------------------------------------


@dataclass
class Target:
    """One row of the printed table: a measured figure next to its DESIGN §6 target.

    ``met`` is None when there is no target (an informational figure) or the figure
    could not be measured.
    """

    measure: str
    value: str
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Check:
    """A gross-regression gate for CI: a ratio against its in-run reference, 2× headroom.

    Absolute times are never gated (the machine is shared); ``--check`` fails the run
    only when a ratio is far past its limit or the benchmark is broken.
    """

    name: str
    value: float | None
    limit: float
    ok: bool


@dataclass
class RunContext:
    """What a benchmark is asked to do."""

    mode: Mode
    out_dir: Path
    work_dir: Path
    seed: int = 8

    @property
    def quick(self) -> bool:
        return self.mode != "full"

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"


@dataclass
class BenchResult:
    """What a benchmark measured; written as ``<name>.json``."""

    name: str
    title: str
    status: Literal["ok", "unavailable", "failed"] = "ok"
    mode: str = ""
    reason: str = ""
    duration_s: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)
    environment_after: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    method: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, name: str, value: float | None, limit: float) -> None:
        """Add a gross-regression gate ``value <= limit`` (a missing value fails)."""
        ok = value is not None and not math.isnan(value) and value <= limit
        self.checks.append(Check(name, value, limit, ok))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
        return path


def fmt_ms(value: float | None, digits: int = 2) -> str:
    """``1.234 ms`` or ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f} ms"


@contextlib.contextmanager
def app_logging(path: Path) -> Iterator[None]:
    """The app's production log configuration (INFO, JSON), written to ``path`` for the block."""
    from familiar_connect.logs import configure_logging

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", buffering=1) as stream:
        configure_logging(level="INFO", fmt="json", stream=stream)
        try:
            yield
        finally:
            configure_logging(level="WARNING", fmt="json")


def bench_familiar(
    config: dict[str, Any], *, familiar_id: str, character_toml: str, **options: Any
) -> tuple[Any, Any]:
    """A benchmark child's familiar: its settings and character, as ``familiar run`` loads them.

    The LLM points at the driver's fake (``config["llm_base"]``/``["llm_key"]``) without
    retries, data lives in ``config["data_dir"]``; ``options`` are the platform settings.

    Returns:
        ``(settings, character)``.
    """
    from familiar_connect.character import load_character
    from familiar_connect.settings import load_settings

    settings = load_settings(
        env_file=None,
        familiar_id=familiar_id,
        familiar_data_dir=Path(config["data_dir"]),
        openrouter_base_url=config["llm_base"],
        openrouter_api_key=config["llm_key"],
        llm_max_retries=0,
        **options,
    )
    settings.familiar_dir.mkdir(parents=True, exist_ok=True)
    (settings.familiar_dir / "character.toml").write_text(character_toml)
    return settings, load_character(settings.familiar_id, settings.familiar_dir)


def rss_kib(pid: int) -> dict[str, int] | None:
    """VmRSS and VmHWM (peak) of a process, in KiB, from ``/proc``."""
    wanted = {"VmRSS": "rss_kib", "VmHWM": "peak_rss_kib"}
    found: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in wanted:
            found[wanted[key]] = int(rest.split()[0])
    return found or None


def cpu_seconds() -> float:
    """User + system CPU time of this process so far."""
    times = os.times()
    return times.user + times.system
