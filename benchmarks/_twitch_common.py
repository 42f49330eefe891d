"""What the Twitch ingest benchmark's processes share: the send-time tag and a bounded lag histogram.

Every chat message the fake pushes ends in `` ~<seq>-<t_ns>``: ``t_ns`` is the moment the
driver *scheduled* it (``time.monotonic_ns()``, comparable across processes), so a subject
that falls behind is charged for the whole wait, including time the message spent in the
fake's or the kernel's socket buffers (open loop: no coordinated omission). The same token
is the chat message id, so no two messages are ever de-duplicated.

:class:`LagHistogram` records latencies in fixed log-spaced buckets (1% wide), so recording
600,000 samples allocates nothing and does not colour the subject's RSS slope.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Any

from benchmarks._harness import RELIABLE_P99_SAMPLES

__all__ = ["TAG_MARK", "LagHistogram", "LoopLagProbe", "sent_ns"]

TAG_MARK = "~"
_BUCKETS_PER_E = 1.0 / math.log1p(0.01)  # 1% wide buckets
_MAX_BUCKET = int(math.log(3_600e9) * _BUCKETS_PER_E) + 1  # an hour, in ns


def sent_ns(text: str) -> int | None:
    """The scheduled send time in a benchmark message's text, or None (not a benchmark message)."""
    head, mark, tag = text.rpartition(TAG_MARK)
    if not mark:
        return None
    _, dash, stamp = tag.partition("-")
    if not dash or not stamp.isdigit():
        return None
    return int(stamp)


class LagHistogram:
    """Latencies in 1%-wide log buckets, with exact count, min, max and mean.

    With ``now_ns`` given to :meth:`add`, it also keeps the largest lag of each second since
    the last :meth:`reset` (up to ``timeline_s`` seconds), to show when a backlog built up.
    """

    __slots__ = ("_buckets", "_per_second", "_started_ns", "count", "max_ns", "min_ns", "total_ns")

    def __init__(self, timeline_s: int = 900) -> None:
        self._buckets = [0] * (_MAX_BUCKET + 1)
        self._per_second = [0] * timeline_s
        self._started_ns = time.monotonic_ns()
        self.count = 0
        self.total_ns = 0
        self.min_ns = 0
        self.max_ns = 0

    def reset(self) -> None:
        for array in (self._buckets, self._per_second):
            for index in range(len(array)):
                array[index] = 0
        self._started_ns = time.monotonic_ns()
        self.count = self.total_ns = self.min_ns = self.max_ns = 0

    def add(self, lag_ns: int, now_ns: int | None = None) -> None:
        if now_ns is not None:
            second = (now_ns - self._started_ns) // 1_000_000_000
            if 0 <= second < len(self._per_second) and lag_ns > self._per_second[second]:
                self._per_second[second] = lag_ns
        if lag_ns < 1_000:
            lag_ns = 1_000 if lag_ns > 0 else 1  # below 1 µs the clock's own noise rules
        index = int(math.log(lag_ns) * _BUCKETS_PER_E)
        self._buckets[index if index <= _MAX_BUCKET else _MAX_BUCKET] += 1
        if self.count == 0 or lag_ns < self.min_ns:
            self.min_ns = lag_ns
        if lag_ns > self.max_ns:
            self.max_ns = lag_ns
        self.count += 1
        self.total_ns += lag_ns

    def quantile_ns(self, q: float) -> float:
        """The ``q`` quantile (0..1), at the geometric middle of its bucket."""
        if self.count == 0:
            return math.nan
        rank = q * (self.count - 1)
        seen = 0
        for index, count in enumerate(self._buckets):
            seen += count
            if seen > rank:
                if index == _MAX_BUCKET:
                    return float(self.max_ns)  # the overflow bucket has no middle
                value = math.exp((index + 0.5) / _BUCKETS_PER_E)
                return min(max(value, self.min_ns), self.max_ns)
        return float(self.max_ns)

    def timeline_ms(self) -> list[float]:
        """The largest lag of each second since the reset, in ms (0: no sample that second)."""
        seconds = min(
            len(self._per_second), (time.monotonic_ns() - self._started_ns) // 1_000_000_000 + 1
        )
        return [round(ns / 1e6, 1) for ns in self._per_second[:seconds]]

    def summary(self) -> dict[str, Any]:
        """The harness's summary shape, in ms (1% resolution)."""
        if self.count == 0:
            return {"n": 0, "unit": "ms"}

        def ms(ns: float) -> float:
            return round(ns / 1e6, 3)

        return {
            "n": self.count,
            "unit": "ms",
            "min": ms(self.min_ns),
            "p50": ms(self.quantile_ns(0.50)),
            "p95": ms(self.quantile_ns(0.95)),
            "p99": ms(self.quantile_ns(0.99)),
            "max": ms(self.max_ns),
            "mean": ms(self.total_ns / self.count),
            "p99_reliable": self.count >= RELIABLE_P99_SAMPLES,
        }


class LoopLagProbe:
    """Event-loop lag (how late a ``sleep(10 ms)`` wakes up) per phase, in fixed memory.

    The harness's :class:`~benchmarks._harness.LoopLagSentinel` keeps every sample (about
    0.2 MB a minute), which would show up in the RSS slope this benchmark measures; this one
    keeps one :class:`LagHistogram` per phase.
    """

    def __init__(self, interval_s: float = 0.010) -> None:
        self.interval_s = interval_s
        self._phases: dict[str, LagHistogram] = {}
        self._current = self._histogram("idle")
        self._task: asyncio.Task[None] | None = None

    def _histogram(self, name: str) -> LagHistogram:
        if name not in self._phases:
            self._phases[name] = LagHistogram(timeline_s=1)
        return self._phases[name]

    def phase(self, name: str) -> None:
        self._current = self._histogram(name)

    def summaries(self) -> dict[str, dict[str, Any]]:
        return {name: hist.summary() for name, hist in self._phases.items()}

    async def _run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        while True:
            current = self._current
            start = time.monotonic_ns()
            await asyncio.sleep(self.interval_s)
            late = time.monotonic_ns() - start - interval_ns
            if current is self._current:
                current.add(max(late, 0))

    async def __aenter__(self) -> LoopLagProbe:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="loop-lag")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
