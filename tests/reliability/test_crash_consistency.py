"""Crash consistency: the whole familiar, under load, killed with SIGKILL at random points.

``scripts/reliability/crash_driver.py`` runs the real familiar (``App``, as
``familiar run`` builds it) with concurrent conversations whose replies, from
:class:`LoadOpenRouter`, write and append memory notes through the model's
tools. In the random-kill test the familiar's Twitch adapter is logged in to the
fake Twitch too, and a chat flood (:class:`~tests.reliability.soak_twitch.TwitchFlood`,
every other message @-mentioning the bot) runs through every kill and restart:
addressed chat becomes turns that write memory and are answered through Helix,
ambient chat becomes history rows, so kills also land while Twitch is handled.
The test kills it at a random moment ``FAMILIAR_CRASH_KILLS`` times
(quick: 5; long: ``FAMILIAR_CRASH_KILLS=200``). After each kill, on the files as
the crash left them: ``PRAGMA integrity_check`` is ``ok``, the full-text index
agrees with its table, every history row is a whole message (chat lines carry
their own checksum too; no reply without its message), every note is a
whole version (its own checksum matches) and the shared log holds only whole
lines. After each restart (the driver's first report): ``familiar memory
verify`` passes once the store has quarantined a torn audit tail, and no temp
file survives.

``tests/memory/test_crash.py`` covers the MemoryStore alone; this covers it
inside the running familiar with the database beside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openrouter import FakeOpenRouter, _Reply
from tests.fakes.twitch import FakeTwitch
from tests.familiar_process import run_familiar
from tests.reliability.figures import record, timeout_s
from tests.reliability.proc import LiveProcess, start_script
from tests.reliability.soak_twitch import TwitchFlood, seed_tokens, twitch_env

DRIVER = Path(__file__).resolve().parents[2] / "scripts" / "reliability" / "crash_driver.py"
KILLS = int(os.environ.get("FAMILIAR_CRASH_KILLS", "5"))
SEED = int(os.environ.get("FAMILIAR_CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
CONVERSATIONS = 4
TOPICS = 5
LOG_NOTE = "sessions/crash-log.md"
USER_RE = re.compile(r"^msg (\S+) (\d+) ([0-9a-f]{8})$")
REPLY_RE = re.compile(r"^reply (\d+) ([0-9a-f]{8})$")
ENTRY_RE = re.compile(r"^entry (\d+) ([0-9a-f]{8})$")
# A Twitch chat line as history keeps it (an @-mention of the bot becomes "@<its name>").
CHAT_RE = re.compile(r"^(?:@\S+ )?(tw|amb) (\d+) ([0-9a-f]{8})$")
TWITCH_LINE_RE = re.compile(r"\btw \d+ [0-9a-f]{8}\b")
TWITCH_RATE_PER_S = 20.0

CHARACTER = """
[policy]
rate_per_minute = 10000
burst = 1000

[memory_writer]
enabled = false
"""


def sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def note_content(n: int) -> str:
    """A note version that proves it is whole: its last line is the checksum of the rest."""
    body = f"version {n}\n" + f"line of version {n}\n" * (20 + (n * 37) % 400)
    return body + f"sha256 {hashlib.sha256(body.encode()).hexdigest()}\n"


def chat_line(kind: str) -> Any:
    """The n-th Twitch chat line of ``kind`` (``tw``: addressed, ``amb``: ambient), self-checking."""
    return lambda n: f"{kind} {n} {sha8(f'{kind}/{n}')}"


class LoadOpenRouter(FakeOpenRouter):
    """A model that writes memory every turn: a tool round (write + append), then a reply.

    It also counts the turns it was asked for from Twitch (the prompt's input is a chat line).
    """

    def __init__(self) -> None:
        super().__init__()
        self.turns = 0
        self.twitch_turns = 0
        self.answered = asyncio.Event()

    def _echo(self, body: Any) -> _Reply:
        messages = body.get("messages") or [{}]
        self.turns += 1
        self.answered.set()
        self.answered = asyncio.Event()
        n = self.turns
        if messages[-1].get("role") == "tool":
            return _Reply(kind="text", text=f"reply {n} {sha8(f'reply/{n}')}")
        if TWITCH_LINE_RE.search(str(messages[-1].get("content", ""))):
            self.twitch_turns += 1
        calls = (
            ("memory_write", {"path": f"topics/crash-{n % TOPICS}.md", "content": note_content(n)}),
            ("memory_append", {"path": LOG_NOTE, "content": f"entry {n} {sha8(f'entry/{n}')}\n"}),
        )
        return _Reply(kind="tool_calls", calls=tuple((name, json.dumps(a)) for name, a in calls))


def driver_env(tmp_path: Path, llm: FakeOpenRouter) -> dict[str, str]:
    familiar_dir = tmp_path / "data" / "familiars" / "crashfam"
    familiar_dir.mkdir(parents=True, exist_ok=True)
    (familiar_dir / "character.toml").write_text(CHARACTER)
    return {
        "FAMILIAR_ID": "crashfam",
        "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
        "OPENROUTER_BASE_URL": llm.api_base,
        "LLM_MAX_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "json",
        "DASHBOARD_ENABLED": "false",
    }


def check_database(db_path: Path) -> dict[str, int]:
    """integrity_check ok, FTS consistent, every row a whole message, replies follow messages."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        db.execute("INSERT INTO turns_fts (turns_fts) VALUES ('integrity-check')")
        rows = db.execute("SELECT channel, role, content, meta FROM turns ORDER BY id").fetchall()
    finally:
        db.close()
    last_role: dict[str, str] = {}
    chat_rows = 0
    for channel, role, content, meta in rows:
        if role == "user":
            match = USER_RE.match(content)
            assert match and match.group(1) == channel, content
            assert sha8(f"{channel}/{match.group(2)}") == match.group(3), content
        elif role == "event":
            match = CHAT_RE.match(content)
            assert match and channel.startswith("twitch:"), (channel, content)
            assert sha8(f"{match.group(1)}/{match.group(2)}") == match.group(3), content
            chat_rows += 1
        else:
            assert role == "assistant", role
            assert last_role.get(channel) in ("user", "event"), (
                f"reply without its message in {channel}"
            )
            outcome = json.loads(meta or "{}").get("outcome")
            match = REPLY_RE.match(content)
            if outcome == "cancelled" and match is None:
                continue  # a clean shutdown keeps exactly what was delivered of a reply
            assert match and sha8(f"reply/{match.group(1)}") == match.group(2), content
        last_role[channel] = role
    return {"rows": len(rows), "chat_rows": chat_rows}


def check_notes(memory: Path) -> dict[str, int]:
    """Every note is one whole version; the shared log holds whole, distinct lines only."""
    versions = 0
    for index in range(TOPICS):
        path = memory / "topics" / f"crash-{index}.md"
        if not path.exists():
            continue
        text = path.read_text()
        body, _, tail = text.rstrip("\n").rpartition("\n")
        assert tail == f"sha256 {hashlib.sha256((body + chr(10)).encode()).hexdigest()}", path
        n = int(body.split("\n", 1)[0].removeprefix("version "))
        assert text == note_content(n) and n % TOPICS == index
        versions += 1
    lines = (memory / LOG_NOTE).read_text().splitlines() if (memory / LOG_NOTE).exists() else []
    for line in lines:
        match = ENTRY_RE.match(line)
        assert match and sha8(f"entry/{match.group(1)}") == match.group(2), line
    assert len(set(lines)) == len(lines)
    return {"notes": versions, "log_lines": len(lines)}


def check_restart(started: dict[str, Any]) -> None:
    """The driver's first report after a restart: database sound, no temp file, verify passes."""
    assert started["integrity"] == "ok" and started["fts"] == "ok", started
    assert started["temp_files"] == [], started
    assert started["verify_exit"] == 0, started


async def model_turns(llm: LoadOpenRouter, count: int) -> None:
    """Wait until the model has answered ``count`` more requests (its own counter, unbounded)."""
    target = llm.turns + count
    async with asyncio.timeout(timeout_s(30)):
        while llm.turns < target:
            await llm.answered.wait()


async def start_driver(
    tmp_path: Path, env: dict[str, str], *extra: str
) -> tuple[LiveProcess, dict]:
    proc = await start_script(DRIVER, cwd=tmp_path, env=env, extra=extra)
    line = await proc.wait_for(rb'\{"event": "started".*\}\n', stream="stdout")
    return proc, json.loads(line.group(0))


async def start_loaded(tmp_path: Path, env: dict[str, str]) -> tuple[LiveProcess, dict]:
    """Start the driver and wait until its load runs and its Twitch adapter hears chat."""
    proc, started = await start_driver(tmp_path, env)
    try:
        await proc.wait_for(rb"load_started", stream="stdout")
        await proc.wait_for(rb"twitch_ready", stream="stdout", limit_s=60)
    except BaseException:
        await proc.kill()
        raise
    return proc, started


@pytest.mark.slow
class TestCrashUnderLoad:
    async def test_sigkill_at_random_points(self, tmp_path: Path) -> None:
        """After every SIGKILL: database, index, history, notes and audit log are consistent."""
        rng = random.Random(SEED)  # noqa: S311 - kill timing, not security
        familiar_dir = tmp_path / "data" / "familiars" / "crashfam"
        torn = torn_bytes = 0
        during_twitch = 0
        figures: dict[str, int] = {}
        # Twitch's send limit is the familiar's to keep; across restarts the fake's window
        # would outlast each process's own limiter, which is not what this test is about.
        async with LoadOpenRouter() as llm, FakeTwitch(chat_limit=1_000_000) as twitch:
            env = driver_env(tmp_path, llm) | twitch_env(twitch)
            await seed_tokens(familiar_dir, twitch)
            flood = TwitchFlood(
                twitch,
                rate_per_s=TWITCH_RATE_PER_S,
                addressed_every=2,
                command_every=0,
                ambient_text=chat_line("amb"),
                addressed_text=chat_line("tw"),
            )
            flooding = asyncio.create_task(flood.run(), name="crash:twitch-flood")
            try:
                for kill in range(KILLS):
                    proc, started = await start_loaded(tmp_path, env)
                    try:
                        if kill:
                            check_restart(started)
                            torn += started["torn_bytes"] > torn_bytes
                        torn_bytes = started["torn_bytes"]
                        asked, posted = llm.twitch_turns, len(twitch.chat_sent)
                        await model_turns(llm, rng.randint(2, 12))
                        await asyncio.sleep(rng.uniform(0, 0.05))
                    finally:
                        code = await proc.kill()
                    assert code == -9, proc.err_text[-2000:]
                    # A Twitch turn was asked of the model and its answer not yet posted.
                    during_twitch += llm.twitch_turns - asked > len(twitch.chat_sent) - posted
                    # The files exactly as the crash left them.
                    figures = check_database(familiar_dir / "familiar.db") | check_notes(
                        familiar_dir / "memory"
                    )
                # A last restart: checks the last kill, runs the load a while, stops cleanly.
                proc, started = await start_loaded(tmp_path, env)
                try:
                    check_restart(started)
                    await model_turns(llm, 4 * TOPICS)
                finally:
                    code = await proc.finish()
                assert code == 0, proc.err_text[-2000:]
            finally:
                flooding.cancel()
                await asyncio.gather(flooding, return_exceptions=True)
            helix_replies = len(twitch.chat_sent)
        final = check_database(familiar_dir / "familiar.db") | check_notes(familiar_dir / "memory")
        code, out, err = await run_familiar("memory", "verify", cwd=tmp_path, env=env)
        assert code == 0, out + err[-2000:]
        assert "audit log OK" in out
        assert '"level": "error"' not in proc.err_text, proc.err_text[-2000:]
        # Twitch was part of the load: its chat reached history and became answered turns.
        assert final["chat_rows"] > 0 and llm.twitch_turns > 0 and helix_replies > 0
        record(
            "crash",
            "familiar under load, with a Twitch chat flood",
            kills=KILLS,
            kills_survived=KILLS,
            kills_during_twitch_turn=during_twitch,
            seed=SEED,
            torn_tails_quarantined=torn,
            twitch_messages_sent=flood.sent,
            twitch_turns=llm.twitch_turns,
            twitch_helix_replies=helix_replies,
            chat_rows_after=final["chat_rows"],
            rows_after=final["rows"],
            notes_after=final["notes"],
            log_lines_after=final["log_lines"],
            rows_at_last_kill=figures.get("rows", 0),
        )

    @pytest.mark.parametrize("failpoint", ["before_record", "after_record"])
    async def test_kill_either_side_of_the_audit_record(
        self, tmp_path: Path, failpoint: str
    ) -> None:
        """A SIGKILL just before or just after a note's audit record is appended still verifies."""
        async with LoadOpenRouter() as llm:
            env = driver_env(tmp_path, llm)
            proc, _ = await start_driver(tmp_path, env)
            try:
                await proc.wait_for(rb"load_started", stream="stdout")
                await model_turns(llm, 8)
            finally:
                await proc.finish()
            proc, _ = await start_driver(tmp_path, env, "--failpoint", failpoint)
            code = await proc.process.wait()
            await proc.finish(sig=None)
            assert code == -9
            proc, started = await start_driver(tmp_path, env)
            await proc.finish()
        check_notes(tmp_path / "data" / "familiars" / "crashfam" / "memory")
        assert started["verify_exit"] == 0, started["issues"]
