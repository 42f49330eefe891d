"""The benchmark registry: all seven benchmarks, in the issue's order.

A benchmark is a module with ``async def run(ctx: RunContext) -> BenchResult``;
it is imported only when selected, so listing the suite stays cheap. A path
that does not exist yet is registered with the reason instead of a module and
reported as ``"unavailable"``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SUITE", "BenchmarkSpec", "by_name"]


@dataclass(frozen=True, slots=True)
class BenchmarkSpec:
    """One entry of the suite.

    Attributes:
        number: its number in DESIGN §6 / the benchmark issue.
        name: the command-line and results-file name.
        title: a one-line description.
        module: the module implementing it, or ``None`` when unavailable.
        unavailable: why it cannot run yet (``module`` is ``None``).
        cheap: runs in a few seconds with ``--smoke`` (the CI smoke set).
    """

    number: int
    name: str
    title: str
    module: str | None = None
    unavailable: str = ""
    cheap: bool = False


SUITE: tuple[BenchmarkSpec, ...] = (
    BenchmarkSpec(
        1,
        "voice_turn",
        "voice turn overhead: end of voiced audio → first non-silent frame, minus waits and providers",
        module="benchmarks.voice_turn",
    ),
    BenchmarkSpec(
        2,
        "barge_in",
        "barge-in: user speech onset during playback → last familiar frame, beyond the window",
        module="benchmarks.barge_in",
    ),
    BenchmarkSpec(
        3,
        "text_turn",
        "text turn overhead: MESSAGE_CREATE → typing / reply POST, minus the LLM, 1–200 channels",
        module="benchmarks.text_turn",
        cheap=True,
    ),
    BenchmarkSpec(
        4,
        "twitch_ingest",
        "Twitch chat ingest: sustained messages/s with bounded memory",
        module="benchmarks.twitch_ingest",
        cheap=True,
    ),
    BenchmarkSpec(
        5,
        "memory_search",
        "memory_search at 1k/10k/100k notes: tool API vs raw FTS5, write→visible, cold build",
        module="benchmarks.memory_search",
        cheap=True,
    ),
    BenchmarkSpec(
        6,
        "history",
        "history at 1M turns: store API vs plain sqlite3, writes, recent-50, full text, bytes/turn",
        module="benchmarks.history",
        cheap=True,
    ),
    BenchmarkSpec(
        7,
        "startup",
        "start-up: exec of `familiar run` → first answered message, idle RSS, vs bare imports",
        module="benchmarks.startup",
        cheap=True,
    ),
)


def by_name(name: str) -> BenchmarkSpec:
    """Return the benchmark called ``name`` (or numbered ``name``).

    Raises:
        KeyError: no such benchmark.
    """
    for spec in SUITE:
        if name in (spec.name, str(spec.number)):
            return spec
    raise KeyError(name)
