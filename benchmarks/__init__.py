"""Familiar-Connect benchmarks: what the familiar adds on top of its providers.

Run ``uv run python -m benchmarks [names] [--quick]`` from the repository root.
Each benchmark writes ``benchmarks/results/<name>.json`` (every sample summary,
p50/p95/p99, the ratios against its reference measured in the same run, and
the environment) and the command prints a short table. Method and targets:
``docs/performance.md`` (figures) and the design's ``reference/performance.md``
(harness rules).

The suite (numbers as in DESIGN §6 and the benchmark issue):

1. ``voice_turn``: end of speech → first audible frame, minus policy waits and providers;
2. ``barge_in``: user speech onset during playback → familiar audio stops, LLM stream closed;
3. ``text_turn``: Discord text message → typing / reply overhead, 1–200 channels;
4. ``twitch_ingest``: sustained Twitch chat ingest at 200–10k msg/s, against parse-only;
5. ``memory_search``: ``memory_search`` at 1k/10k/100k notes;
6. ``history``: the history store at 1M turns;
7. ``startup``: exec → ready and idle RSS.

Timings never live in unit tests; ``tests/benchmarks/`` only checks that the
cheap benchmarks still run (``--smoke``) and write well-formed results.
"""

from __future__ import annotations

from benchmarks.suite import SUITE, BenchmarkSpec

__all__ = ["SUITE", "BenchmarkSpec"]
