"""Event-loop stalls with their times, so a voice sample can be matched to machine noise.

:class:`StallSentinel` is the harness's :class:`~benchmarks._harness.LoopLagSentinel` (same
``sleep(10 ms)`` probe, same per-phase lateness buckets, no extra wake-ups) that also keeps
*when* each wake-up came more than ``stall_ms`` late: the interval during which that process's
loop could not run (descheduled, a GC pause, blocking code). The voice benchmarks run one in
every process (fakes and driver, the familiar, the reference client); a sample whose time span
overlaps a stall of any of them is reported as such, next to the figures over every sample.

Kept free of heavy imports: the subject processes import it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from benchmarks._harness import LoopLagSentinel

__all__ = ["StallSentinel", "overlaps"]


class StallSentinel(LoopLagSentinel):
    """:class:`LoopLagSentinel` that also records stalls as ``(start_ns, end_ns)`` (bounded).

    Args:
        stall_ms: lateness above which a wake-up counts as a stall.
        max_stalls: stalls kept (the first ones).
    """

    def __init__(self, *, stall_ms: float = 20.0, max_stalls: int = 20_000) -> None:
        super().__init__()
        self.stall_ns = int(stall_ms * 1e6)
        self.max_stalls = max_stalls
        self.stalls: list[tuple[int, int]] = []

    async def _run(self) -> None:
        interval_ns = int(self.interval_s * 1e9)
        while True:
            epoch = self._epoch
            start = time.monotonic_ns()
            await asyncio.sleep(self.interval_s)
            end = time.monotonic_ns()
            late_ns = end - start - interval_ns
            if late_ns > self.stall_ns and len(self.stalls) < self.max_stalls:
                self.stalls.append((start + interval_ns, end))
            if epoch == self._epoch and not self._paused and self._count < self._max_samples:
                self._samples.setdefault(self._phase, []).append(max(late_ns / 1e6, 0.0))
                self._count += 1


def overlaps(span: tuple[int, int], stalls: Iterable[Sequence[int]]) -> bool:
    """Whether ``span`` (start_ns, end_ns) intersects any stall interval."""
    start, end = span
    return any(s_start < end and s_end > start for s_start, s_end in stalls)
