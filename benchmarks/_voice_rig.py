"""The voice benchmarks' rig: two subjects in a voice channel, each with its own fakes.

This process (pinned to core 1) runs every fake and the driver. Each subject gets its own
fake Discord (gateway, REST, the TLS voice gateway and UDP of
:class:`~benchmarks._voice_fakes.BenchVoice`), fake Deepgram, fake Cartesia and fake
OpenRouter, so the two never share a queue or a script. The subjects run in child processes
pinned to core 0: the familiar (:mod:`benchmarks._voice_bot`, joined with the real
``/join-voice`` command) and the reference client (:mod:`benchmarks._voice_ref`).

:func:`voice_rig` yields both subjects connected to voice; the caller drives them one turn
at a time (never both at once: they share core 0) and stops the children itself to collect
their reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from benchmarks._child import Child
from benchmarks._harness import REPO_ROOT, RunContext, can_pin, pinned
from benchmarks._voice_fakes import SubjectFakes
from tests.fakes.certs import make_cert
from tests.fakes.discord_world import GENERAL_ID, GUILD_ID, VOICE_ID

__all__ = ["Subject", "voice_rig", "wait_until"]

BOT_TOKEN = "MTAxMDEwMTAxMDEwMTAxMDEw.benchV.bench-voice-token-00000000000"  # noqa: S105 - a fake's token
LLM_KEY = "sk-or-v1-bench-voice-0123456789"
DEEPGRAM_KEY = "dg-bench-voice-0123456789abcdef"
CARTESIA_KEY = "sk_car_bench-voice-0123456789"

T = TypeVar("T")


@dataclass
class Subject:
    """One subject under test: ``"familiar"`` or ``"reference"``, its fakes and its process."""

    name: str
    fakes: SubjectFakes
    child: Child


async def wait_until(predicate: Callable[[], T], *, timeout_s: float, poll_s: float = 0.005) -> T:
    """Poll ``predicate`` until it is truthy; raise :class:`TimeoutError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError
        await asyncio.sleep(poll_s)


@contextlib.asynccontextmanager
async def voice_rig(
    ctx: RunContext,
    name: str,
    *,
    listen: dict[str, Any],
    seconds_per_char: float,
    members: tuple[str, ...],
) -> AsyncIterator[tuple[Subject, Subject]]:
    """Start the fakes and both children, join voice with both; yield (familiar, reference).

    Args:
        listen: the policy waits (``finalize_after_idle_ms``, ``barge_in_min_voiced_ms``).
        seconds_per_char: length of the fake TTS's audio per character.
        members: who is in the voice channel (they may speak).
    """
    logs = ctx.out_dir / "logs"
    cert = make_cert(ctx.work_dir / name / "tls")
    cpu_sub = 0 if can_pin() else None
    keys = {
        "bot_token": BOT_TOKEN,
        "llm_key": LLM_KEY,
        "deepgram_key": DEEPGRAM_KEY,
        "cartesia_key": CARTESIA_KEY,
    }
    with pinned({1}):
        async with (
            SubjectFakes.start(
                "familiar",
                cert=cert,
                bot_token=BOT_TOKEN,
                deepgram_key=DEEPGRAM_KEY,
                cartesia_key=CARTESIA_KEY,
                llm_key=LLM_KEY,
                seconds_per_char=seconds_per_char,
            ) as fbot,
            SubjectFakes.start(
                "reference",
                cert=cert,
                bot_token=BOT_TOKEN,
                deepgram_key=DEEPGRAM_KEY,
                cartesia_key=CARTESIA_KEY,
                llm_key=LLM_KEY,
                seconds_per_char=seconds_per_char,
            ) as fref,
        ):
            base = {
                **keys,
                "cpu": cpu_sub,
                "ca_file": str(cert.ca_path),
                "listen": listen,
                "voice_channel_id": VOICE_ID,
            }
            bot = await Child.spawn(
                "familiar",
                "benchmarks._voice_bot",
                {
                    **base,
                    **fbot.endpoints(),
                    "data_dir": str(ctx.work_dir / name / "bot-data"),
                    "app_log": str(logs / f"{name}-familiar-app.log"),
                },
                log_path=logs / f"{name}-familiar.stderr.log",
                cwd=REPO_ROOT,
            )
            ref = await Child.spawn(
                "reference",
                "benchmarks._voice_ref",
                {**base, **fref.endpoints()},
                log_path=logs / f"{name}-reference.stderr.log",
                cwd=REPO_ROOT,
            )
            try:
                await asyncio.gather(bot.wait_ready(90), ref.wait_ready(90))
                for fakes in (fbot, fref):
                    await fakes.members_in_voice(members)
                await _join_familiar(fbot)
                await ref.send("join", timeout_s=30)
                await fref.voice.wait_for(lambda: fref.voice.session_ready.is_set(), timeout_s=30)
                yield Subject("familiar", fbot, bot), Subject("reference", fref, ref)
            finally:
                await bot.kill()
                await ref.kill()


async def _join_familiar(fakes: SubjectFakes) -> None:
    """Alice runs ``/join-voice`` in #general, as a person would; wait until voice is up."""
    discord = fakes.discord
    await discord.wait_for(lambda: discord.synced_commands(GUILD_ID), timeout_s=30)
    interaction = await discord.slash("join-voice", user="alice", channel_id=GENERAL_ID)
    await fakes.voice.wait_for(lambda: fakes.voice.session_ready.is_set(), timeout_s=30)
    await discord.wait_for(lambda: discord.interaction_callbacks(interaction), timeout_s=30)
