"""The ``familiar`` command.

Exit codes: 0 success; 1 a check found a problem (``memory verify``); 2 the
configuration is wrong or there is nothing to run — always with a message a
person can act on, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import structlog

from familiar_connect import __version__
from familiar_connect.character import Character, load_character
from familiar_connect.errors import ConfigError, FamiliarError
from familiar_connect.logs import configure_logging, safe_error_text, verbosity_to_level
from familiar_connect.settings import Settings, env_file_warning, load_settings
from familiar_connect.speech.factory import provider_choices

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_PROBLEM", "build_parser", "main"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2

log = structlog.get_logger(__name__)

NOTHING_TO_RUN = (
    "Nothing is configured to run. `familiar run` needs an LLM endpoint "
    "(OPENROUTER_API_KEY, or OPENROUTER_BASE_URL pointing at a local OpenAI-compatible "
    "server) and at least one platform: DISCORD_TOKEN for Discord, or TWITCH_CLIENT_ID, "
    "TWITCH_CLIENT_SECRET and TWITCH_CHANNEL for Twitch. To try the familiar without any "
    "Discord or Twitch account, `familiar chat` needs only the LLM endpoint. "
    "See .env.example and docs/configuration.md."
)

NO_LLM = (
    "No LLM endpoint is configured. Set OPENROUTER_API_KEY (get one at openrouter.ai), or "
    "set OPENROUTER_BASE_URL to a local OpenAI-compatible server such as "
    "http://127.0.0.1:8080/v1. See .env.example and docs/configuration.md."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``familiar`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="familiar",
        description="Run a familiar: a companion with a persona, a voice and a memory.",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        help="dotenv file to read settings from (default: ./.env)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: debug logs from the familiar; -vv: debug logs from libraries too",
    )
    parser.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=None,
        help="console for people (default), json for log collectors (one object per line)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run the familiar on every configured platform (default)")
    commands.add_parser("check", help="validate settings and character, show what is enabled")
    commands.add_parser("version", help="print the version")
    chat = commands.add_parser("chat", help="talk to the familiar in this terminal")
    chat.add_argument("--once", metavar="TEXT", help="answer one message, print it and exit")
    chat.add_argument(
        "--dashboard", action="store_true", help="also serve the operator dashboard on 127.0.0.1"
    )

    memory = commands.add_parser("memory", help="inspect the memory notes' audit trail")
    memory_cmds = memory.add_subparsers(dest="memory_command", metavar="ACTION", required=True)
    audit = memory_cmds.add_parser("audit", help="print every recorded write, oldest first")
    audit.add_argument("--path", default=None, help="only records for this path or folder prefix")
    memory_cmds.add_parser("verify", help="check the hash chain and the notes' current content")

    keys = commands.add_parser("keys", help="manage the encryption of stored secrets")
    keys_cmds = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    keys_cmds.add_parser("rotate", help="re-encrypt every stored secret with the newest key")
    keys_cmds.add_parser("audit", help="count stored secrets per key version")

    twitch = commands.add_parser("twitch", help="Twitch accounts (see docs/twitch.md)")
    twitch_cmds = twitch.add_subparsers(dest="twitch_command", metavar="ACTION", required=True)
    login = twitch_cmds.add_parser(
        "login",
        help="log an account in with Twitch's device code flow; the token is stored encrypted",
    )
    login.add_argument(
        "--as",
        dest="role",
        choices=("bot", "broadcaster"),
        required=True,
        help="bot: the account the familiar chats as; broadcaster: the channel's owner",
    )
    return parser


# --- helpers ---------------------------------------------------------------------------


def _load(args: argparse.Namespace, out: TextIO) -> tuple[Settings, Character]:
    env_file: Path | None = args.env_file
    if env_file is not None and not env_file.exists():
        env_file = None
    settings = load_settings(env_file=env_file)
    level = verbosity_to_level(args.verbose) if args.verbose else settings.log_level
    configure_logging(
        level=level,
        fmt=args.log_format or settings.log_format,
        secrets=settings.secret_values(),
    )
    if env_file is not None:
        warning = env_file_warning(env_file)
        if warning:
            log.warning("env_file_permissions_too_open", detail=warning)
    character = load_character(settings.familiar_id, settings.familiar_dir)
    return settings, character


def _voice_line(settings: Settings) -> str:
    stt, tts = provider_choices(settings)
    if stt is None and tts is None:
        return "off (set DEEPGRAM_API_KEY and CARTESIA_API_KEY, or AZURE_SPEECH_KEY)"
    return f"speech-to-text {stt or 'none'}, text-to-speech {tts or 'none'}"


def _enabled_lines(settings: Settings, character: Character) -> list[str]:
    def state(ok: bool, missing: str) -> str:
        return "enabled" if ok else f"off (set {missing})"

    reply = character.config.llm.reply
    lines = [
        f"familiar: {settings.familiar_id} ({character.display_name})",
        f"data directory: {settings.familiar_dir}",
        "character: "
        + (
            str(settings.familiar_dir / "character.toml")
            if (settings.familiar_dir / "character.toml").is_file()
            else "packaged default (no character.toml)"
        ),
        f"LLM: {state(settings.llm_configured, 'OPENROUTER_API_KEY or OPENROUTER_BASE_URL')}"
        f" — {settings.openrouter_base_url}, reply model {reply.model}",
        f"Discord: {state(settings.discord_configured, 'DISCORD_TOKEN')}",
        "voice: " + _voice_line(settings),
        "Twitch: "
        + state(
            settings.twitch_configured, "TWITCH_CLIENT_ID, TWITCH_CLIENT_SECRET, TWITCH_CHANNEL"
        ),
        "dashboard: "
        + (
            f"http://{settings.dashboard_host}:{settings.dashboard_port}"
            if settings.dashboard_enabled
            else "off"
        ),
        "secrets: "
        + ", ".join(
            f"{name} {'set' if is_set else 'unset'}"
            for name, is_set in settings.secret_status().items()
        ),
    ]
    return lines


# --- commands --------------------------------------------------------------------------


def _cmd_version(_args: argparse.Namespace, out: TextIO) -> int:
    print(f"familiar-connect {__version__}", file=out)
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    settings, character = _load(args, out)
    for line in _enabled_lines(settings, character):
        print(line, file=out)
    if settings.twitch_configured:
        from familiar_connect.platforms.twitch import describe_twitch

        for line in asyncio.run(describe_twitch(settings, character)):
            print(line, file=out)
    if not settings.llm_configured:
        raise ConfigError(NO_LLM)
    return EXIT_OK


def _cmd_twitch(args: argparse.Namespace, out: TextIO) -> int:
    from familiar_connect.platforms.twitch import run_device_login

    settings, character = _load(args, out)
    return asyncio.run(run_device_login(settings, character, role=args.role, out=out))


def _cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from familiar_connect.app import build_app

    settings, character = _load(args, out)
    if not settings.llm_configured:
        raise ConfigError(NOTHING_TO_RUN)
    app = build_app(settings, character)
    if not app.has_platforms():
        raise ConfigError(NOTHING_TO_RUN + app.unavailable_note())
    asyncio.run(app.run())
    return EXIT_OK


def _cmd_chat(args: argparse.Namespace, out: TextIO) -> int:
    from familiar_connect.chat import run_chat

    settings, character = _load(args, out)
    if not settings.llm_configured:
        raise ConfigError(NO_LLM)
    return asyncio.run(
        run_chat(settings, character, once=args.once, dashboard=args.dashboard, out=out)
    )


def _cmd_memory(args: argparse.Namespace, out: TextIO) -> int:
    from familiar_connect.memory.audit import AuditLog, format_audit_entries, verify_audit

    settings, _character = _load(args, out)
    familiar_dir = settings.familiar_dir
    audit_path = familiar_dir / "audit.jsonl"
    memory_root = familiar_dir / "memory"
    if args.memory_command == "audit":
        entries = AuditLog(audit_path).entries() if audit_path.exists() else []
        lines = format_audit_entries(entries, path_filter=args.path)
        for line in lines:
            print(line, file=out)
        if not lines:
            print("no recorded writes" + (f" under {args.path}" if args.path else ""), file=out)
        return EXIT_OK
    result = verify_audit(audit_path, memory_root)
    if result.ok:
        print(
            f"audit log OK: {result.records_checked} records, chain and file hashes match", file=out
        )
        return EXIT_OK
    print(f"audit log FAILED after checking {result.records_checked} records:", file=out)
    for problem in result.problems:
        print(f"  - {problem}", file=out)
    return EXIT_PROBLEM


def _cmd_keys(args: argparse.Namespace, out: TextIO) -> int:
    from familiar_connect.storage.db import open_database
    from familiar_connect.storage.vault import Vault

    settings, _character = _load(args, out)
    master_keys = settings.master_keys()
    if not master_keys:
        raise ConfigError(
            "FAMILIAR_MASTER_KEY is not set. Stored secrets (such as Twitch tokens) are "
            'encrypted with it; generate one with: python -c "import secrets; '
            'print(secrets.token_urlsafe(32))"'
        )

    async def work() -> int:
        settings.familiar_dir.mkdir(parents=True, exist_ok=True)
        async with await open_database(settings.familiar_dir / "familiar.db") as db:
            vault = Vault(db, master_keys)
            if args.keys_command == "rotate":
                changed = await vault.rotate()
                newest = max(master_keys)
                print(f"re-encrypted {changed} secrets to key version {newest}", file=out)
            counts = await vault.audit()
            if not counts:
                print("no stored secrets", file=out)
            for version, rows in sorted(counts.items()):
                print(f"key version {version}: {rows} secrets", file=out)
        return EXIT_OK

    return asyncio.run(work())


COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO], int]] = {
    "run": _cmd_run,
    "check": _cmd_check,
    "chat": _cmd_chat,
    "version": _cmd_version,
    "memory": _cmd_memory,
    "keys": _cmd_keys,
    "twitch": _cmd_twitch,
}


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``familiar`` console script; returns the exit code."""
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command or "run"]
    try:
        return command(args, out)
    except ConfigError as exc:
        print(f"familiar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except FamiliarError as exc:
        # A failure to start that is not a config error (a bad token, an unreadable
        # database): one paragraph, no traceback; details are in the log.
        print(f"familiar: could not start: {safe_error_text(exc)}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - exercised via the console script
    sys.exit(main())
