"""(5) Memory search at 1k/10k/100k notes, through the ``memory_search`` tool.

For each size N, generated notes (Zipf vocabulary, 40–160 words) are written as
files under a familiar's memory directory (``topics/gNNN/``, 1,000 per folder: the
store refuses folders over 10,000 entries), the familiar is opened with
:func:`familiar_connect.app.open_familiar` and:

* **start-up build, as shipped**: what ``open_familiar``'s ``notes_index_rebuild``
  service does (``app._rebuild_notes_index``: ``NotesIndex.rebuild`` streaming
  ``MemoryStore.iter_notes()``, files read in worker threads), into a scratch database:
  time, notes indexed out of N, loop lag, growth of the process's peak RSS;
* **cold build of all N notes**: every file read in a worker thread, then
  ``NotesIndex.rebuild`` into the familiar's own (empty) index: µs per note, loop lag;
* **search**: a rare word, a mid-frequency word (~0.7% of notes), a stop word ("the")
  and a two-word query, each timed three ways, interleaved and rotated: the tool API
  (``ToolRegistry.execute`` of a ``memory_search`` call, as a turn runs it), the index
  API (``NotesIndex.search``) and the raw statement (``NotesIndex``'s own SQL on a plain
  ``sqlite3`` connection, in-thread, loop-lag sentinel paused);
* **write → visible**: ``memory.write_file`` of a note with a new word, then polling
  ``NotesIndex.search`` every 0.5 ms until it is found;
* **loop lag** (``sleep(10 ms)`` lateness) during each build, and during a stretch of
  back-to-back tool searches (without the in-thread raw calls, which block the loop on
  purpose).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks._corpus import ZipfCorpus
from benchmarks._harness import (
    BenchResult,
    LoopLagSentinel,
    RunContext,
    Target,
    app_logging,
    bootstrap_ratio,
    fmt_ms,
    summarize,
)

NAME = "memory_search"
TITLE = "memory_search at 1k/10k/100k notes"

_SIZES = {"smoke": (300,), "quick": (1_000, 10_000, 100_000), "full": (1_000, 10_000, 100_000)}
_SAMPLES = {"smoke": 20, "quick": 300, "full": 600}
_VISIBLE = {"smoke": 5, "quick": 30, "full": 100}
_LAG_S = {"smoke": 0.3, "quick": 2.0, "full": 5.0}
_PER_FOLDER = 1_000
_MIN_WORDS, _MAX_WORDS = 40, 160
_MEAN_WORDS = (_MIN_WORDS + _MAX_WORDS) / 2


def _write_notes(root: Path, count: int, seed: int) -> int:
    """Write ``count`` generated notes under ``root``; returns bytes written."""
    corpus = ZipfCorpus(seed=seed)
    written = 0
    for index, body in enumerate(
        corpus.documents(count, min_words=_MIN_WORDS, max_words=_MAX_WORDS)
    ):
        folder = root / "topics" / f"g{index // _PER_FOLDER:03d}"
        if index % _PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        text = f"# note {index}\n\n{body}\n"
        (folder / f"note-{index:06d}.md").write_text(text)
        written += len(text)
    return written


def _read_all_notes(root: Path) -> list[tuple[str, str]]:
    """Every ``.md`` file under ``root`` as ``(rel_path, text)``: a complete, uncapped walk."""
    notes: list[tuple[str, str]] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            if name.endswith(".md"):
                path = Path(directory) / name
                notes.append((path.relative_to(root).as_posix(), path.read_text()))
    return notes


def _peak_rss_mb() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _queries(corpus: ZipfCorpus) -> dict[str, str]:
    return {
        "rare": corpus.word_for_doc_frequency(1e-4, _MEAN_WORDS),
        "mid": corpus.word_for_doc_frequency(0.007, _MEAN_WORDS),
        "stop_word": "the",
        "two_term": corpus.word_for_doc_frequency(0.05, _MEAN_WORDS)
        + " "
        + corpus.word_for_doc_frequency(0.02, _MEAN_WORDS),
    }


async def run(ctx: RunContext) -> BenchResult:
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    sizes = _SIZES[ctx.mode]
    samples = _SAMPLES[ctx.mode]
    result.params = {
        "sizes": list(sizes),
        "samples_per_query_and_api": samples,
        "write_visible_samples": _VISIBLE[ctx.mode],
        "note_words": [_MIN_WORDS, _MAX_WORDS],
        "vocabulary": "Zipf s=1.0, 50k words, 'the' at rank 1",
        "tool_limit": "the tool's default (5 hits)",
    }
    result.method = [
        "files generated under memory/topics/gNNN/ (1,000 per folder), familiar opened with "
        "open_familiar (default character), production logging (INFO, JSON) to a file",
        "start-up build as shipped = app._rebuild_notes_index (NotesIndex.rebuild streaming "
        "MemoryStore.iter_notes(), read in worker threads), into a scratch database",
        "cold build = every file read in a thread, then NotesIndex.rebuild into the familiar's "
        "empty index",
        "search timed per call with perf_counter_ns; tool / index / raw interleaved and rotated "
        "per round; raw = NotesIndex's SQL via plain sqlite3 in-thread",
        "write→visible = memory.write_file start → first NotesIndex.search that returns the note "
        "(polled every 0.5 ms)",
    ]
    corpus = ZipfCorpus(seed=ctx.seed)
    queries = _queries(corpus)
    result.params["queries"] = queries
    per_size: dict[str, Any] = {}
    with app_logging(ctx.out_dir / "logs" / f"{NAME}-app.log"):
        for size in sizes:
            per_size[str(size)] = await _one_size(ctx, size, samples, queries)
    result.metrics["sizes"] = per_size
    _analyze(result, per_size, sizes)
    return result


async def _one_size(
    ctx: RunContext, size: int, samples: int, queries: dict[str, str]
) -> dict[str, Any]:
    from familiar_connect.app import _rebuild_notes_index, open_familiar
    from familiar_connect.character import load_character
    from familiar_connect.conversation.tools import ToolContext
    from familiar_connect.llm.types import ToolCall
    from familiar_connect.settings import load_settings
    from familiar_connect.storage._fts import fts5_terms
    from familiar_connect.storage.db import open_database
    from familiar_connect.storage.notes_index import _SEARCH, NotesIndex

    base = ctx.work_dir / f"n{size}"
    settings = load_settings(
        env_file=None,
        familiar_id="benchmem",
        familiar_data_dir=base,
        openrouter_base_url="http://127.0.0.1:9/api/v1",
    )
    memory_root = settings.familiar_dir / "memory"
    t0 = time.perf_counter()
    data_bytes = await asyncio.to_thread(_write_notes, memory_root, size, ctx.seed)
    generate_s = time.perf_counter() - t0
    character = load_character(settings.familiar_id, None)
    out: dict[str, Any] = {
        "notes": size,
        "note_bytes": data_bytes,
        "generate_s": round(generate_s, 2),
    }

    async with open_familiar(settings, character) as familiar, LoopLagSentinel() as lag:
        # Start-up build as shipped, into a scratch database.
        scratch = await open_database(base / "scratch.db")
        try:
            scratch_index = NotesIndex(scratch)
            lag.phase("startup_build")
            peak_before = _peak_rss_mb()
            t0 = time.perf_counter()
            await _rebuild_notes_index(familiar.memory.store, scratch_index)
            t1 = time.perf_counter()
            out["startup_build_as_shipped"] = {
                "total_s": round(t1 - t0, 3),
                "us_per_note_incl_reading": round((t1 - t0) * 1e6 / size, 1),
                "notes_indexed": await scratch_index.count(),
                "notes_on_disk": size,
                "peak_rss_growth_mb": round(_peak_rss_mb() - peak_before, 1),
                "loop_lag_ms": lag.summary("startup_build"),
            }
        finally:
            await scratch.close()

        # Cold build of every note into the familiar's own index.
        lag.phase("read_files")
        t0 = time.perf_counter()
        notes = await asyncio.to_thread(_read_all_notes, memory_root)
        t1 = time.perf_counter()
        lag.phase("cold_build")
        rebuilt = await familiar.notes_index.rebuild(notes)
        t2 = time.perf_counter()
        indexed = await familiar.notes_index.count()
        out["cold_build"] = {
            "read_files_s": round(t1 - t0, 3),
            "index_s": round(t2 - t1, 3),
            "us_per_note": round((t2 - t1) * 1e6 / max(len(notes), 1), 1),
            "notes_indexed": indexed,
            "written": rebuilt.written,
            "loop_lag_ms": lag.summary("cold_build"),
            "loop_lag_read_files_ms": lag.summary("read_files"),
        }
        del notes

        # Search: tool API, index API, raw statement; interleaved and rotated.
        raw = sqlite3.connect(familiar.db.path, isolation_level=None)
        try:
            raw.execute("PRAGMA cache_size = -16384")
            hits: dict[str, int] = {}
            for label, query in queries.items():
                match = fts5_terms(query)
                hits[label] = int(
                    raw.execute(
                        "SELECT count(*) FROM notes_fts WHERE notes_fts MATCH ?", (match,)
                    ).fetchone()[0]
                )
            out["query_hits"] = hits
            out["query_doc_frequency"] = {k: round(v / size, 5) for k, v in hits.items()}
            tool_ctx = ToolContext(
                conversation="discord:bench", platform="discord", author_id="1", author_name="b"
            )
            times: dict[str, dict[str, list[float]]] = {
                label: {"tool": [], "index": [], "raw": []} for label in queries
            }
            results_seen: dict[str, int] = {}
            lag.phase("search_interleaved")  # mostly paused: raw calls block the loop
            call_id = 0
            for round_index in range(samples + 10):
                for label, query in queries.items():
                    order = ("tool", "index", "raw")
                    shift = round_index % 3
                    for api in order[shift:] + order[:shift]:
                        call_id += 1
                        if api == "tool":
                            call = ToolCall(
                                f"call_{call_id}", "memory_search", json.dumps({"query": query})
                            )
                            start = time.perf_counter_ns()
                            tool_result = await familiar.tools.execute(
                                call, tool_ctx, timeout_s=10.0, max_result_chars=8_000
                            )
                            elapsed = time.perf_counter_ns() - start
                            if tool_result.is_error:
                                raise RuntimeError(f"memory_search failed: {tool_result.content}")
                            results_seen[label] = len(json.loads(tool_result.content)["hits"])
                        elif api == "index":
                            start = time.perf_counter_ns()
                            await familiar.notes_index.search(query, limit=5)
                            elapsed = time.perf_counter_ns() - start
                        else:
                            params = {
                                "match": fts5_terms(query),
                                "cap": 1_000,
                                "limit": 5,
                                "tokens": 16,
                            }
                            with lag.paused():
                                start = time.perf_counter_ns()
                                raw.execute(_SEARCH, params).fetchall()
                                elapsed = time.perf_counter_ns() - start
                        if round_index >= 10:  # warm-up rounds discarded
                            times[label][api].append(elapsed / 1e6)
            # Loop lag while searching: tool calls only (no in-thread raw calls in between).
            lag.phase("search_loop_lag")
            deadline = time.monotonic() + _LAG_S[ctx.mode]
            for round_index in range(100_000):
                if time.monotonic() >= deadline:
                    break
                for query in queries.values():
                    call = ToolCall(
                        f"lag_{round_index}", "memory_search", json.dumps({"query": query})
                    )
                    await familiar.tools.execute(
                        call, tool_ctx, timeout_s=10.0, max_result_chars=8_000
                    )
            out["search_lag_ms"] = lag.summary("search_loop_lag")
            out["search_ms"] = {
                label: {api: summarize(values) for api, values in apis.items()}
                for label, apis in times.items()
            }
            out["tool_hits_returned"] = results_seen
            out["tool_vs_raw"] = {
                label: bootstrap_ratio(apis["tool"], apis["raw"]) for label, apis in times.items()
            }
            out["index_vs_raw"] = {
                label: bootstrap_ratio(apis["index"], apis["raw"]) for label, apis in times.items()
            }
        finally:
            raw.close()

        # Write → visible in search.
        lag.phase("write_visible")
        visible: list[float] = []
        write_call: list[float] = []
        misses = 0
        for index in range(_VISIBLE[ctx.mode]):
            word = f"zqvisible{index}x{size}"
            start = time.perf_counter_ns()
            await familiar.memory.write_file(
                f"topics/bench-visible/v{index}.md",
                f"# visible {index}\n\n{word} is a word nobody used before\n",
                source="benchmark",
            )
            written_ns = time.perf_counter_ns()
            found = False
            for _ in range(4_000):  # ≤ 2 s
                if await familiar.notes_index.search(word, limit=1):
                    found = True
                    break
                await asyncio.sleep(0.0005)
            if found:
                visible.append((time.perf_counter_ns() - start) / 1e6)
                write_call.append((written_ns - start) / 1e6)
            else:
                misses += 1
        out["write_visible_ms"] = summarize(visible)
        out["write_call_ms"] = summarize(write_call)
        out["write_visible_misses"] = misses
        out["write_visible_lag_ms"] = lag.summary("write_visible")
    return out


def _analyze(result: BenchResult, per_size: dict[str, Any], sizes: tuple[int, ...]) -> None:
    smallest, largest = str(sizes[0]), str(sizes[-1])
    for label in ("rare", "mid", "stop_word", "two_term"):
        small = per_size[smallest]["search_ms"][label]["tool"]
        large = per_size[largest]["search_ms"][label]["tool"]
        result.ratios[f"tool_p99_{largest}_over_{smallest}_{label}"] = (
            round(large["p99"] / small["p99"], 2) if small.get("p99") else None
        )
        result.ratios[f"tool_vs_raw_p50_{largest}_{label}"] = per_size[largest]["tool_vs_raw"][
            label
        ]
    big = per_size[largest]
    for label in ("rare", "mid", "stop_word", "two_term"):
        tool = big["search_ms"][label]["tool"]
        raw = big["search_ms"][label]["raw"]
        ratio = big["tool_vs_raw"][label].get("ratio")
        result.targets.append(
            Target(
                f"memory_search p99 at {int(largest):,} notes, {label}",
                fmt_ms(tool.get("p99")),
                "≤ 20 ms",
                tool.get("p99") is not None and tool["p99"] <= 20.0,
                f"p50 {fmt_ms(tool.get('p50'))}; raw p50 {fmt_ms(raw.get('p50'))}; tool/raw "
                f"×{ratio} (≤ 3×); {big['query_hits'][label]} matching notes",
            )
        )
        if label != "rare":  # a rare word's raw query is ~0.03 ms: its ratio is mostly noise
            result.check(f"tool/raw p50 at {largest}, {label}", ratio, 20.0)
    if "10000" in per_size:
        mid = per_size["10000"]["search_ms"]["mid"]["tool"]
        result.targets.append(
            Target(
                "memory_search p99 at 10,000 notes, mid",
                fmt_ms(mid.get("p99")),
                "≤ 5 ms",
                mid.get("p99") is not None and mid["p99"] <= 5.0,
            )
        )
    scale = result.ratios.get(f"tool_p99_{largest}_over_{smallest}_mid")
    result.targets.append(
        Target(
            f"scaling p99({int(largest):,}) / p99({int(smallest):,}), mid",
            f"×{scale}",
            "≤ 10×",
            scale is not None and scale <= 10.0,
        )
    )
    visible = big["write_visible_ms"]
    result.targets.append(
        Target(
            f"write → visible p99 at {int(largest):,}",
            fmt_ms(visible.get("p99")),
            "≤ 100 ms",
            visible.get("p99") is not None
            and visible["p99"] <= 100.0
            and big["write_visible_misses"] == 0,
            f"p50 {fmt_ms(visible.get('p50'))}; write call p50 "
            f"{fmt_ms(big['write_call_ms'].get('p50'))}",
        )
    )
    cold = big["cold_build"]
    result.targets.append(
        Target(
            f"cold build at {int(largest):,}",
            f"{cold['us_per_note']} µs/note",
            "≤ 60 µs/note",
            cold["us_per_note"] <= 60.0,
            f"index {cold['index_s']} s + reading files {cold['read_files_s']} s; "
            f"loop lag p99 {fmt_ms(cold['loop_lag_ms'].get('p99'))} (≤ 5 ms)",
        )
    )
    lag = big["search_lag_ms"]
    result.targets.append(
        Target(
            f"loop lag p99 while searching at {int(largest):,}",
            fmt_ms(lag.get("p99")),
            "≤ 5 ms",
            lag.get("p99") is not None and lag["p99"] <= 5.0,
            f"n={lag.get('n')}; max {fmt_ms(lag.get('max'))}",
        )
    )
    shipped = big["startup_build_as_shipped"]
    result.targets.append(
        Target(
            f"start-up index build as shipped at {int(largest):,}",
            f"{shipped['notes_indexed']:,} of {shipped['notes_on_disk']:,} notes",
            "all notes",
            shipped["notes_indexed"] >= shipped["notes_on_disk"],
            f"{shipped['total_s']} s incl. reading; loop lag p99 "
            f"{fmt_ms(shipped['loop_lag_ms'].get('p99'))}; peak RSS +"
            f"{shipped['peak_rss_growth_mb']} MB",
        )
    )
