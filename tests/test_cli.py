"""The familiar command: exit codes, messages a person can act on, no tracebacks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from familiar_connect.cli import EXIT_CONFIG, EXIT_OK, EXIT_PROBLEM, main
from familiar_connect.memory.store import MemoryStore
from tests.familiar_process import clean_env

MASTER_KEY = "master-key-for-cli-tests-0123456789"


def run_cli(*args: str, env_file: Path | None = None) -> tuple[int, str]:
    out = io.StringIO()
    argv = list(args)
    if env_file is not None:
        argv = ["--env-file", str(env_file), *argv]
    code = main(argv, out=out)
    return code, out.getvalue()


def run_subprocess(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "familiar_connect.cli", *args],
        cwd=cwd,
        env=clean_env(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(name="env_file")
def fixture_env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(
        f"OPENROUTER_API_KEY=sk-or-v1-clitest0123456789\n"
        f"FAMILIAR_DATA_DIR={tmp_path / 'data'}\n"
        f"FAMILIAR_ID=cli\n"
        f"FAMILIAR_MASTER_KEY={MASTER_KEY}\n"
    )
    path.chmod(0o600)
    return path


class TestCheck:
    def test_empty_environment_exits_2_with_a_readable_message(self, tmp_path: Path) -> None:
        """With nothing configured, check explains what to set and exits 2 without a traceback."""
        result = run_subprocess("check", cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG
        assert "OPENROUTER_API_KEY" in result.stderr
        assert "Traceback" not in result.stderr + result.stdout

    def test_valid_env_prints_enabled_services(self, env_file: Path) -> None:
        """With an LLM key, check lists what is enabled and shows secrets as set/unset only."""
        code, output = run_cli("check", env_file=env_file)
        assert code == EXIT_OK
        assert "LLM: enabled" in output
        assert "Discord: off (set DISCORD_TOKEN)" in output
        assert "OPENROUTER_API_KEY set" in output and "DISCORD_TOKEN unset" in output
        assert "clitest0123456789" not in output

    def test_bad_variable_exits_2_naming_it(self, tmp_path: Path) -> None:
        """An invalid variable is named in the error and start-up exits 2."""
        result = run_subprocess("check", cwd=tmp_path, env={"DASHBOARD_PORT": "70000"})
        assert result.returncode == EXIT_CONFIG
        assert "DASHBOARD_PORT" in result.stderr
        assert "Traceback" not in result.stderr

    def test_bad_character_file_exits_2_naming_file_and_key(
        self, env_file: Path, tmp_path: Path
    ) -> None:
        """A character.toml with an unknown key stops start-up with file and key named."""
        familiar_dir = tmp_path / "data" / "familiars" / "cli"
        familiar_dir.mkdir(parents=True)
        (familiar_dir / "character.toml").write_text("[familiar]\nnickname = 'x'\n")
        result = run_subprocess("--env-file", str(env_file), "check", cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG
        assert "familiar.nickname" in result.stderr
        assert "character.toml" in result.stderr


class TestRun:
    def test_nothing_to_run_exits_2(self, tmp_path: Path) -> None:
        """`familiar` with no platform configured says what to set and that chat needs only an LLM."""
        result = run_subprocess(cwd=tmp_path, env={"OPENROUTER_API_KEY": "sk-or-v1-x0123456789"})
        assert result.returncode == EXIT_CONFIG
        assert "DISCORD_TOKEN" in result.stderr
        assert "familiar chat" in result.stderr
        assert "Traceback" not in result.stderr


class TestVersion:
    def test_prints_version(self) -> None:
        """version prints the package version and exits 0."""
        code, output = run_cli("version")
        assert code == EXIT_OK
        assert output.startswith("familiar-connect ")


class TestMemoryCommands:
    def _store(self, tmp_path: Path) -> MemoryStore:
        familiar_dir = tmp_path / "data" / "familiars" / "cli"
        return MemoryStore(familiar_dir / "memory", audit_path=familiar_dir / "audit.jsonl")

    def test_audit_prints_trail_filtered_by_path(self, env_file: Path, tmp_path: Path) -> None:
        """memory audit lists writes, and --path narrows them to one person's notes."""
        store = self._store(tmp_path)
        store.write_file("people/discord-1.md", "Alice likes tea", source="memory_writer")
        store.append_file("people/discord-1.md", "\nand cats", source="tool:memory_append")
        store.write_file("topics/tea.md", "tea", source="operator")
        code, output = run_cli("memory", "audit", "--path", "people/", env_file=env_file)
        assert code == EXIT_OK
        lines = output.strip().splitlines()
        assert len(lines) == 2
        assert "memory_writer" in lines[0] and "tool:memory_append" in lines[1]

    def test_verify_ok_then_detects_edit_behind_the_store(
        self, env_file: Path, tmp_path: Path
    ) -> None:
        """memory verify passes on a clean log and exits 1 naming a file edited on disk."""
        store = self._store(tmp_path)
        store.write_file("people/discord-1.md", "Alice likes tea", source="memory_writer")
        code, output = run_cli("memory", "verify", env_file=env_file)
        assert (code, "OK" in output) == (EXIT_OK, True)
        (store.root / "people" / "discord-1.md").write_text("Alice hates tea")
        code, output = run_cli("memory", "verify", env_file=env_file)
        assert code == EXIT_PROBLEM
        assert "people/discord-1.md" in output


class TestKeysCommands:
    def test_rotate_and_audit(self, env_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """keys rotate re-encrypts stored secrets to the newest key; keys audit counts them."""
        import asyncio

        from familiar_connect.storage.db import open_database
        from familiar_connect.storage.vault import Vault

        data_dir = env_file.parent / "data" / "familiars" / "cli"
        data_dir.mkdir(parents=True)

        async def seed() -> None:
            async with await open_database(data_dir / "familiar.db") as db:
                await Vault(db, {1: MASTER_KEY}).put("twitch_token", "oauth-secret-value")

        asyncio.run(seed())
        code, output = run_cli("keys", "audit", env_file=env_file)
        assert (code, "key version 1: 1 secrets" in output) == (EXIT_OK, True)
        monkeypatch.setenv("FAMILIAR_MASTER_KEY_V2", "second-master-key-0123456789")
        code, output = run_cli("keys", "rotate", env_file=env_file)
        assert code == EXIT_OK
        assert "re-encrypted 1 secrets to key version 2" in output
        assert "key version 2: 1 secrets" in output

    def test_keys_without_master_key_exits_2(self, tmp_path: Path) -> None:
        """keys commands without FAMILIAR_MASTER_KEY explain how to make one and exit 2."""
        result = run_subprocess("keys", "audit", cwd=tmp_path)
        assert result.returncode == EXIT_CONFIG
        assert "FAMILIAR_MASTER_KEY" in result.stderr
