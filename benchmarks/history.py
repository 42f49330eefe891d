"""(6) History at 1M turns (``--quick``: 100k): the store API against plain ``sqlite3``.

One database, opened with the app's :func:`~familiar_connect.storage.db.open_database`
(WAL, ``synchronous=NORMAL``, 16 MiB cache, the app's migrations), written to the
target size in alternating blocks:

* **API** blocks: a :class:`~familiar_connect.storage.history.Turn` built per row and
  handed to :meth:`HistoryWriter.submit` (the orchestrator's hot path), the writer's own
  ``run()`` task flushing in the background (the producer yields every 256 rows and
  waits while more than 4,096 rows are pending, so nothing is dropped). The row's
  ``datetime`` and ``meta`` dict are made before the clock starts: the app has them
  already, and the raw side's tuples are made before its clock too;
* **raw** blocks: the same rows as tuples, written with the store's own statements
  (``history._insert_statements``: multi-row ``INSERT``s, the same ones the store
  sends) via ``executemany`` in ``BEGIN IMMEDIATE … COMMIT`` transactions of the
  writer's batch size (1,024), on a second, plain ``sqlite3`` connection with the same
  pragmas. Same statements, batch sizes and transaction shape on both sides.

Then, interleaved call by call on the full database: ``HistoryStore.recent`` (50 turns
of one of 100 channels) and ``HistoryStore.search`` (the app's ordering: newest match
first, ``LIMIT 20``) for a rare word, a mid-frequency word (~0.7% of turns), a two-word
query and the stop word "the" (~75% of turns), globally and within one channel,
against the store's own SQL on the plain connection. Bytes per turn = database file
size after a WAL checkpoint ÷ turns.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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

NAME = "history"
TITLE = "history store at 1M turns"

_TURNS = {"smoke": 3_000, "quick": 100_000, "full": 1_000_000}
_BLOCK = {"smoke": 500, "quick": 10_000, "full": 25_000}
_SAMPLES = {"smoke": 20, "quick": 300, "full": 500}
_CHANNELS = 100
_AUTHORS = 50
_MIN_WORDS, _MAX_WORDS = 5, 25
_MEAN_WORDS = (_MIN_WORDS + _MAX_WORDS) / 2
_PRODUCER_BURST = 256  # rows submitted between yields to the loop
_MAX_PENDING_BEFORE_WAIT = 4_096


def _rows(corpus: ZipfCorpus, count: int, seed: int) -> Iterator[tuple[Any, ...]]:
    """Row tuples in the store's column order (platform … meta), as the app writes them."""
    rng = random.Random(seed)  # noqa: S311 - workload shape, not security
    now_us = int(datetime.now(UTC).timestamp() * 1e6)
    for index, content in enumerate(
        corpus.documents(count, min_words=_MIN_WORDS, max_words=_MAX_WORDS)
    ):
        channel = f"discord:{600 + rng.randrange(_CHANNELS)}"
        if index % 2:
            meta = json.dumps(
                {
                    "outcome": "replied",
                    "model": "openrouter/auto",
                    "timings_ms": {"typing_sent": 1.2, "first_token": 412.0, "posted": 1630.5},
                },
                separators=(",", ":"),
            )
            author, name, role = "familiar", "Familiar", "assistant"
        else:
            meta = None
            user = rng.randrange(_AUTHORS)
            author, name, role = str(1000 + user), f"user{user}", "user"
        yield ("discord", channel, author, name, role, content, "text", now_us + index, meta)


async def run(ctx: RunContext) -> BenchResult:

    total = _TURNS[ctx.mode]
    block = _BLOCK[ctx.mode]
    samples = _SAMPLES[ctx.mode]
    result = BenchResult(NAME, TITLE, mode=ctx.mode)
    corpus = ZipfCorpus(seed=ctx.seed)
    queries = {
        "rare": corpus.word_for_doc_frequency(1e-4, _MEAN_WORDS),
        "mid": corpus.word_for_doc_frequency(0.007, _MEAN_WORDS),
        "two_term": corpus.word_for_doc_frequency(0.05, _MEAN_WORDS)
        + " "
        + corpus.word_for_doc_frequency(0.02, _MEAN_WORDS),
        "stop_word": "the",
    }
    result.params = {
        "turns": total,
        "block_rows": block,
        "samples_per_query_and_api": samples,
        "channels": _CHANNELS,
        "turn_words": [_MIN_WORDS, _MAX_WORDS],
        "queries": queries,
    }
    result.method = [
        "one database from open_database (WAL, synchronous=NORMAL, cache 16 MiB, migrations)",
        "writes in alternating blocks: API = Turn(...) → HistoryWriter.submit with the writer's "
        "run() task flushing (datetime and meta dict made before the clock); raw = the store's "
        "own multi-row INSERT statements via executemany, the writer's batch size (1,024) per "
        "transaction, on a plain sqlite3 connection with the same pragmas",
        "reads interleaved call by call: HistoryStore.recent/search vs the store's SQL on the "
        "plain connection (in-thread; loop-lag sentinel paused during raw calls)",
        "bytes per turn = file size after PRAGMA wal_checkpoint(TRUNCATE) / turns",
    ]
    with app_logging(ctx.out_dir / "logs" / f"{NAME}-app.log"):
        return await _measure(ctx, result, corpus, queries, total, block, samples)


async def _measure(
    ctx: RunContext,
    result: BenchResult,
    corpus: ZipfCorpus,
    queries: dict[str, str],
    total: int,
    block: int,
    samples: int,
) -> BenchResult:
    from familiar_connect.storage.db import open_database
    from familiar_connect.storage.history import HistoryStore, HistoryWriter

    db_path = ctx.work_dir / "history.db"
    db = await open_database(db_path)
    store = HistoryStore(db)
    writer = HistoryWriter(store)
    result.params["writer_batch"] = writer.max_batch
    raw = sqlite3.connect(db_path, isolation_level=None)
    for pragma in (
        "PRAGMA busy_timeout = 5000",
        "PRAGMA cache_size = -16384",
        "PRAGMA synchronous = NORMAL",
        "PRAGMA foreign_keys = ON",
        "PRAGMA secure_delete = ON",
    ):
        raw.execute(pragma)
    try:
        async with LoopLagSentinel() as lag:
            writer_task = asyncio.get_running_loop().create_task(writer.run(), name="writer")
            try:
                writes = await _write_phase(
                    store_writer=writer, raw=raw, lag=lag, rows=_rows(corpus, total, ctx.seed),
                    total=total, block=block,
                )  # fmt: skip
                await writer.flush()
            finally:
                writer_task.cancel()
                await asyncio.gather(writer_task, return_exceptions=True)
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            turns = int(raw.execute("SELECT count(*) FROM turns").fetchone()[0])
            size_bytes = db_path.stat().st_size
            reads = await _read_phase(store, raw, lag, queries, samples, ctx.seed)
            result.metrics["loop_lag_ms"] = lag.summaries()
    finally:
        raw.close()
        await writer.aclose()
        await db.close()
    result.metrics["writes"] = writes
    result.metrics["storage"] = {
        "turns": turns,
        "file_bytes": size_bytes,
        "bytes_per_turn": round(size_bytes / max(turns, 1), 1),
        "writer_dropped": writer.dropped,
    }
    result.metrics["reads"] = reads
    _analyze(result, writes, reads, turns, size_bytes)
    return result


async def _write_phase(
    *,
    store_writer: Any,
    raw: sqlite3.Connection,
    lag: LoopLagSentinel,
    rows: Iterator[tuple[Any, ...]],
    total: int,
    block: int,
) -> dict[str, Any]:
    from familiar_connect.storage.db import from_epoch_us
    from familiar_connect.storage.history import Turn, _insert_statements

    batch = store_writer.max_batch

    rates: dict[str, list[float]] = {"api": [], "raw": []}
    waits = 0
    written = 0
    index = 0
    while written < total:
        size = min(block, total - written)
        chunk = [next(rows) for _ in range(size)]
        # A B B A …: neither side always writes into the bigger database.
        api = (index % 4) in (0, 3)
        index += 1
        if api:
            # What the app holds when it makes a Turn: an aware datetime and a meta dict.
            inputs = [
                (row, from_epoch_us(row[7]), json.loads(row[8]) if row[8] is not None else None)
                for row in chunk
            ]
            lag.phase("api_writes")
            start = time.perf_counter()
            for position, (row, created_at, meta) in enumerate(inputs):
                store_writer.submit(
                    Turn(
                        platform=row[0],
                        channel=row[1],
                        author_id=row[2],
                        author_name=row[3],
                        role=row[4],
                        content=row[5],
                        modality=row[6],
                        created_at=created_at,
                        meta=meta,
                    )
                )
                if position % _PRODUCER_BURST == _PRODUCER_BURST - 1:
                    await asyncio.sleep(0)
                    for _ in range(10_000):
                        if store_writer.pending <= _MAX_PENDING_BEFORE_WAIT:
                            break
                        waits += 1
                        await asyncio.sleep(0.0005)
            await store_writer.flush()
            rates["api"].append(size / (time.perf_counter() - start))
        else:
            with lag.paused():
                start = time.perf_counter()
                for offset in range(0, size, batch):
                    raw.execute("BEGIN IMMEDIATE")
                    for sql, executions in _insert_statements(chunk[offset : offset + batch]):
                        raw.executemany(sql, executions)
                    raw.execute("COMMIT")
                rates["raw"].append(size / (time.perf_counter() - start))
        written += size
    return {
        "api_rows_per_s": summarize(rates["api"], unit="rows/s", digits=0),
        "raw_rows_per_s": summarize(rates["raw"], unit="rows/s", digits=0),
        "api_vs_raw": bootstrap_ratio(rates["api"], rates["raw"]),
        "producer_backpressure_waits": waits,
        "blocks": {
            "api": [round(r) for r in rates["api"]],
            "raw": [round(r) for r in rates["raw"]],
        },
    }


async def _read_phase(
    store: Any,
    raw: sqlite3.Connection,
    lag: LoopLagSentinel,
    queries: dict[str, str],
    samples: int,
    seed: int,
) -> dict[str, Any]:
    from familiar_connect.storage._fts import fts5_terms
    from familiar_connect.storage.history import (
        _SELECT_RECENT,
        _SELECT_SEARCH,
        _conversation_token,
    )

    rng = random.Random(seed)  # noqa: S311 - workload shape, not security
    hits = {
        label: int(
            raw.execute(
                "SELECT count(*) FROM turns_fts WHERE turns_fts MATCH ?",
                ("{content} : (" + str(fts5_terms(query)) + ")",),
            ).fetchone()[0]
        )
        for label, query in queries.items()
    }
    times: dict[str, dict[str, list[float]]] = {}

    def record(label: str, api: str, elapsed_ns: int, keep: bool) -> None:
        if keep:
            times.setdefault(label, {"api": [], "raw": []})[api].append(elapsed_ns / 1e6)

    lag.phase("api_reads")
    for round_index in range(samples + 10):
        keep = round_index >= 10
        channel = f"discord:{600 + rng.randrange(_CHANNELS)}"
        operations: list[tuple[str, Any, Any]] = []

        async def recent(ch: str = channel) -> None:
            await store.recent("discord", ch, limit=50)

        operations.append(
            ("recent_50", recent, lambda ch=channel: raw.execute(_SELECT_RECENT, ("discord", ch, 50)).fetchall())
        )  # fmt: skip
        for label, query in queries.items():
            match = "{content} : (" + str(fts5_terms(query)) + ")"
            scoped = match + ' AND {scope} : "' + _conversation_token("discord", channel) + '"'

            async def search(q: str = query) -> None:
                await store.search(q, limit=20)

            async def search_scoped(q: str = query, ch: str = channel) -> None:
                await store.search(q, platform="discord", channel=ch, limit=20)

            operations.append(
                (f"search_{label}", search, lambda m=match: raw.execute(_SELECT_SEARCH, (m, 20)).fetchall())
            )  # fmt: skip
            operations.append(
                (f"search_{label}_in_channel", search_scoped, lambda m=scoped: raw.execute(_SELECT_SEARCH, (m, 20)).fetchall())
            )  # fmt: skip
        for label, api_call, raw_call in operations:
            api_first = (round_index % 2) == 0
            for which in ("api", "raw") if api_first else ("raw", "api"):
                if which == "api":
                    start = time.perf_counter_ns()
                    await api_call()
                    record(label, "api", time.perf_counter_ns() - start, keep)
                else:
                    with lag.paused():
                        start = time.perf_counter_ns()
                        raw_call()
                        record(label, "raw", time.perf_counter_ns() - start, keep)
    return {
        "matching_turns": hits,
        "ms": {
            label: {api: summarize(values) for api, values in apis.items()}
            for label, apis in times.items()
        },
        "api_vs_raw": {
            label: bootstrap_ratio(apis["api"], apis["raw"]) for label, apis in times.items()
        },
    }


def _analyze(
    result: BenchResult,
    writes: dict[str, Any],
    reads: dict[str, Any],
    turns: int,
    size_bytes: int,
) -> None:
    api_rate = writes["api_rows_per_s"].get("p50")
    write_ratio = writes["api_vs_raw"].get("ratio")
    result.ratios["write_rate_api_vs_raw"] = writes["api_vs_raw"]
    result.ratios["reads_api_vs_raw"] = reads["api_vs_raw"]
    result.targets.append(
        Target(
            f"sustained writes through HistoryWriter at {turns:,} turns",
            f"{api_rate:,.0f} rows/s" if api_rate else "n/a",
            "≥ 20,000 rows/s",
            api_rate is not None and api_rate >= 20_000,
            f"raw sqlite3 {writes['raw_rows_per_s'].get('p50', 0):,.0f} rows/s; API/raw "
            f"×{write_ratio} (≥ 0.3×)",
        )
    )
    result.check(
        "write rate raw/API (inverse of API/raw)", (1 / write_ratio) if write_ratio else None, 10.0
    )
    ms = reads["ms"]
    recent = ms["recent_50"]["api"]
    recent_ratio = reads["api_vs_raw"]["recent_50"].get("ratio")
    result.targets.append(
        Target(
            f"recent-50 p99 at {turns:,} turns",
            fmt_ms(recent.get("p99")),
            "≤ 1 ms",
            recent.get("p99") is not None and recent["p99"] <= 1.0,
            f"p50 {fmt_ms(recent.get('p50'))}; raw p50 {fmt_ms(ms['recent_50']['raw'].get('p50'))}; "
            f"API/raw ×{recent_ratio} (≤ 3×)",
        )
    )
    result.check("recent-50 API/raw p50", recent_ratio, 20.0)
    limits = {"rare": 15.0, "mid": 15.0, "two_term": 40.0, "stop_word": 50.0}
    for label, limit in limits.items():
        for suffix in ("", "_in_channel"):
            key = f"search_{label}{suffix}"
            api = ms[key]["api"]
            ratio = reads["api_vs_raw"][key].get("ratio")
            result.targets.append(
                Target(
                    f"full text p99, {label}{' (one channel)' if suffix else ''}",
                    fmt_ms(api.get("p99")),
                    f"≤ {limit:g} ms" + (" (DESIGN ≤ 50 ms)" if limit != 50.0 else ""),
                    api.get("p99") is not None and api["p99"] <= limit,
                    f"p50 {fmt_ms(api.get('p50'))}; raw p50 {fmt_ms(ms[key]['raw'].get('p50'))}; "
                    f"API/raw ×{ratio}; {reads['matching_turns'][label]:,} matching turns"
                    + (" in all channels" if suffix else ""),
                )
            )
            if not suffix and label != "rare":  # a rare word's raw query is noise-sized
                result.check(f"{key} API/raw p50", ratio, 20.0)
    result.targets.append(
        Target("bytes per turn (database file / turns)", f"{size_bytes / max(turns, 1):.0f} B")
    )
