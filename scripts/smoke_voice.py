"""Manual smoke check of Discord voice against the real Discord: DAVE receive and speaking.

What the offline tests cannot cover (library-facts §1, ``docs/voice.md``): a real DAVE/MLS
group, real epoch transitions, and the configured TTS provider's real voice. This script, run
by a person with a real bot token and a **test** guild:

1. reads ``.env`` through :func:`familiar_connect.settings.load_settings` (``DISCORD_TOKEN``,
   the speech provider keys) and the familiar's ``character.toml`` (``[voice]``);
2. logs in, joins the voice channel ``--channel-id`` with discord.py + voice-recv, and splices
   in the DAVE receive glue (:class:`~familiar_connect.platforms.discord.dave.DaveReceiveGlue`);
3. speaks ``--phrase`` through the configured text-to-speech provider (Cartesia or Azure) and
   plays it in the channel, timing the first audio byte;
4. keeps listening for ``--seconds`` (talk in the channel meanwhile) and counts, per member,
   decoded frames and voiced frames; nothing is recorded or sent to a speech-to-text provider;
5. prints a summary (DAVE version and readiness, the glue's counters, the DAVE session's own
   per-member decryption stats, TTS latency and length, frames received) and leaves.

Exit status: 0 when DAVE was negotiated, every DAVE frame heard was decrypted with few
substitutions, and the phrase was played; 1 when a check failed; 2 for a configuration error.

Network: only Discord and the speech provider configured in ``.env``. Never run in CI.

Usage::

    uv run python scripts/smoke_voice.py --channel-id 123456789012345678
    uv run python scripts/smoke_voice.py --channel-id 1234 --seconds 60 --phrase "Testing, one two."
    uv run python scripts/smoke_voice.py --channel-id 1234 --no-speak --json smoke.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
DEFAULT_PHRASE = "This is a voice smoke test. If you can hear me, speaking works."
_VOICED_RMS = 500.0  # about -36 dBFS: clearly not silence
_FRAME_BYTES = 3840  # 20 ms of 48 kHz stereo s16le


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="smoke_voice.py",
        description=(
            "Join a real Discord voice channel, check DAVE receive and speak a test phrase "
            "through the configured TTS provider. Manual check: needs DISCORD_TOKEN in .env "
            "and a test guild; never run it in CI."
        ),
    )
    parser.add_argument("--channel-id", type=int, required=True, help="voice channel to join")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="how long to listen (default 30)"
    )
    parser.add_argument("--phrase", default=DEFAULT_PHRASE, help="what to say")
    parser.add_argument("--no-speak", action="store_true", help="only listen")
    parser.add_argument(
        "--env-file", type=Path, default=Path(".env"), help="dotenv file (default ./.env)"
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    parser.add_argument(
        "--max-substituted-ratio",
        type=float,
        default=0.05,
        help="DAVE frames replaced by silence, as a share of decrypted ones, still OK (0.05)",
    )
    return parser.parse_args(argv)


@dataclass
class MemberAudio:
    """What was heard from one member (counts only)."""

    frames: int = 0
    voiced_frames: int = 0


@dataclass
class Summary:
    """Everything the run found, printed at the end."""

    guild: str = ""
    channel: str = ""
    joined: bool = False
    dave_protocol_version: int = 0
    dave_ready: bool = False
    glue: dict[str, int] = field(default_factory=dict)
    substituted: int = 0
    session_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    members: dict[str, MemberAudio] = field(default_factory=dict)
    tts_provider: str | None = None
    tts_first_audio_ms: float | None = None
    tts_audio_s: float = 0.0
    played: bool = False
    errors: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)


def counting_sink() -> Any:
    """A voice-recv sink that only counts decoded frames per member.

    Threading: ``write`` runs on voice-recv's router thread; read ``members`` under ``lock``.
    """
    import numpy as np
    from discord.ext import voice_recv

    class CountingSink(voice_recv.AudioSink):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()
            self.members: dict[str, MemberAudio] = {}

        def wants_opus(self) -> bool:
            return False

        def write(self, user: Any, data: Any) -> None:
            if not data.pcm:
                return
            samples = np.frombuffer(data.pcm[: len(data.pcm) // 2 * 2], dtype="<i2")
            rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
            if user is None:  # not in the member cache (yet)
                name = f"unknown member (ssrc {getattr(data.packet, 'ssrc', '?')})"
            else:
                name = f"{getattr(user, 'display_name', user.name)} ({user.id})"
            with self.lock:
                member = self.members.setdefault(name, MemberAudio())
                member.frames += 1
                if rms >= _VOICED_RMS:
                    member.voiced_frames += 1

        def cleanup(self) -> None:
            pass

    return CountingSink()


async def _synthesize(synthesizer: Any, phrase: str, summary: Summary) -> bytes:
    """The phrase as 48 kHz mono PCM from the configured provider, timing the first byte."""
    from familiar_connect.speech.tts.base import AudioChunk

    started = time.monotonic()
    context = await synthesizer.new_context()
    await context.say(phrase)
    await context.finish()
    chunks: list[bytes] = []
    async for item in context.stream():
        if isinstance(item, AudioChunk) and item.pcm:
            if summary.tts_first_audio_ms is None:
                summary.tts_first_audio_ms = round((time.monotonic() - started) * 1000, 1)
            chunks.append(item.pcm)
    pcm = b"".join(chunks)
    summary.tts_audio_s = round(len(pcm) / 96_000, 2)
    return pcm


async def _play(vc: Any, mono: bytes, *, timeout_s: float) -> None:
    import discord

    from familiar_connect.speech.audio import upmix_mono

    stereo = upmix_mono(mono[: len(mono) // 2 * 2])
    stereo += b"\x00" * (-len(stereo) % _FRAME_BYTES)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    error: list[BaseException] = []

    def after(exc: BaseException | None) -> None:
        if exc is not None:
            error.append(exc)
        loop.call_soon_threadsafe(done.set)

    vc.play(discord.PCMAudio(io.BytesIO(stereo)), after=after)
    async with asyncio.timeout(timeout_s):
        await done.wait()
    if error:
        raise error[0]


async def _session(
    client: Any, args: argparse.Namespace, synthesizer: Any, summary: Summary
) -> None:
    import discord
    from discord.ext import voice_recv

    from familiar_connect.platforms.discord.dave import DaveReceiveGlue

    channel = client.get_channel(args.channel_id) or await client.fetch_channel(args.channel_id)
    if not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
        raise SystemExit(f"channel {args.channel_id} is not a voice channel")
    summary.guild, summary.channel = channel.guild.name, channel.name
    vc = await channel.connect(cls=voice_recv.VoiceRecvClient, timeout=30.0, reconnect=False)
    summary.joined = True
    sink = counting_sink()
    glue = None
    try:
        vc.listen(sink)
        glue = DaveReceiveGlue.install(vc)
        deadline = time.monotonic() + args.seconds
        if synthesizer is not None and not args.no_speak:
            summary.tts_provider = synthesizer.name
            try:
                pcm = await _synthesize(synthesizer, args.phrase, summary)
                await _play(vc, pcm, timeout_s=summary.tts_audio_s + 15.0)
                summary.played = True
            except Exception as exc:  # report, keep listening
                summary.errors.append(f"speaking failed: {type(exc).__name__}: {exc}"[:300])
        print(f"listening for {max(0.0, deadline - time.monotonic()):.0f} s — talk in the channel")
        while (remaining_s := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(10.0, remaining_s))
            stats = glue.stats
            print(
                f"  … packets={stats.packets} decrypted={stats.decrypted} "
                f"passthrough={stats.passthrough} substituted={stats.substituted}"
            )
        connection = vc._connection
        session = connection.dave_session
        summary.dave_protocol_version = int(getattr(connection, "dave_protocol_version", 0) or 0)
        summary.dave_ready = bool(session is not None and session.ready)
        summary.glue = asdict(glue.stats)
        summary.substituted = glue.stats.substituted
        summary.session_stats = {str(k): v for k, v in glue.session_stats().items()}
        with sink.lock:
            summary.members = dict(sink.members)
    finally:
        if glue is not None:
            glue.uninstall()
        vc.stop()
        try:
            async with asyncio.timeout(10.0):
                await vc.disconnect(force=True)
        except (TimeoutError, discord.ClientException, OSError) as exc:
            summary.errors.append(f"leaving failed: {type(exc).__name__}")


def _judge(summary: Summary, args: argparse.Namespace) -> None:
    glue = summary.glue
    decrypted = glue.get("decrypted", 0)
    heard = sum(m.frames for m in summary.members.values())
    checks = {
        "joined": summary.joined,
        "dave negotiated (protocol >= 1, group ready)": summary.dave_protocol_version >= 1
        and summary.dave_ready,
        "no transport decryption failures": glue.get("transport_failures", 0) == 0,
    }
    if heard or decrypted:
        checks["DAVE frames decrypted"] = decrypted > 0
        checks[f"substituted <= {args.max_substituted_ratio:.0%} of decrypted"] = (
            summary.substituted <= args.max_substituted_ratio * max(decrypted, 1)
        )
    if not args.no_speak:
        checks["test phrase played"] = summary.played
    summary.checks = checks


def _print(summary: Summary, args: argparse.Namespace) -> None:
    print()
    print(f"voice smoke check — {summary.guild} / #{summary.channel}")
    print(f"  DAVE protocol {summary.dave_protocol_version}, group ready: {summary.dave_ready}")
    print("  receive glue: " + ", ".join(f"{k}={v}" for k, v in summary.glue.items()))
    print(f"  substituted with silence: {summary.substituted}")
    for user, stats in summary.session_stats.items():
        print(f"  DAVE session, user {user}: {stats}")
    if not summary.members:
        print("  heard nobody (talk in the channel during the run to check receive)")
    for name, audio in summary.members.items():
        print(f"  heard {name}: {audio.frames} frames, {audio.voiced_frames} voiced")
    if summary.tts_provider:
        print(
            f"  TTS {summary.tts_provider}: first audio after {summary.tts_first_audio_ms} ms, "
            f"{summary.tts_audio_s} s of audio, played: {summary.played}"
        )
    for error in summary.errors:
        print(f"  ! {error}")
    for name, ok in summary.checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    if args.json:
        data = asdict(summary)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"  summary written to {args.json}")


async def run(args: argparse.Namespace) -> int:
    """Log in, join, speak, listen, leave; return the exit status."""
    import discord

    from familiar_connect.character import load_character
    from familiar_connect.endpoints import apply_library_endpoints
    from familiar_connect.errors import ConfigError
    from familiar_connect.logs import configure_logging
    from familiar_connect.settings import load_settings
    from familiar_connect.speech.factory import build_speech

    try:
        settings = load_settings(env_file=args.env_file if args.env_file.is_file() else None)
        character = load_character(settings.familiar_id, settings.familiar_dir)
        if settings.discord_token is None:
            raise ConfigError("DISCORD_TOKEN is not set")
        transcriber, synthesizer = build_speech(settings, character)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(level="WARNING", secrets=settings.secret_values())
    if synthesizer is None and not args.no_speak:
        print("no text-to-speech provider is configured: only listening", file=sys.stderr)
    restore = apply_library_endpoints(settings)
    summary = Summary()
    from familiar_connect.platforms.discord.client import build_intents

    intents = build_intents()  # the familiar's own intents (its bot is approved for them)
    connector = None
    if settings.familiar_extra_ca_file is not None:  # a private CA, as the app allows
        import ssl

        import aiohttp

        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(settings.familiar_extra_ca_file))
        connector = aiohttp.TCPConnector(ssl=context)
    client = discord.Client(intents=intents, connector=connector)
    ready = asyncio.Event()

    @client.event
    async def on_ready() -> None:
        ready.set()

    try:
        async with client:
            await client.login(settings.discord_token.get_secret_value())
            runner = asyncio.create_task(client.connect(reconnect=False))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({runner, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not ready.is_set():
                failure = runner.exception() if runner.done() else None
                if failure is not None:
                    raise failure
                raise TimeoutError("Discord did not become ready within 60 s")
            try:
                await _session(client, args, synthesizer, summary)
            finally:
                await client.close()
                await asyncio.gather(runner, return_exceptions=True)
    except (discord.DiscordException, OSError, TimeoutError) as exc:
        summary.errors.append(f"{type(exc).__name__}: {exc}"[:300])
    finally:
        for provider in (transcriber, synthesizer):
            if provider is not None:
                await provider.aclose()
        restore()
    _judge(summary, args)
    _print(summary, args)
    return EXIT_OK if summary.checks and all(summary.checks.values()) else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if args.seconds <= 0:
        print("--seconds must be positive", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
