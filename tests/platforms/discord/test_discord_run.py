"""`familiar` as an operator runs it: a subprocess with DISCORD_TOKEN, stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_world import GENERAL_ID
from tests.fakes.openrouter import FakeOpenRouter
from tests.familiar_process import run_familiar, start_familiar
from tests.platforms.discord.conftest import BOT_TOKEN, LLM_KEY


def _discord_env(tmp_path: Path, discord: FakeDiscord, llm: FakeOpenRouter) -> dict[str, str]:
    return {
        "FAMILIAR_DATA_DIR": str(tmp_path / "data"),
        "OPENROUTER_BASE_URL": llm.api_base,
        "DISCORD_API_BASE": discord.api_base,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
    }


@pytest.mark.slow
class TestFamiliarRun:
    async def test_runs_discord_and_stops_cleanly_on_sigterm(
        self, tmp_path: Path, fake_discord: FakeDiscord, fake_llm: FakeOpenRouter
    ) -> None:
        """`familiar` connects to Discord, answers a mention, and exits 0 on SIGTERM."""
        env = {
            **_discord_env(tmp_path, fake_discord, fake_llm),
            "OPENROUTER_API_KEY": LLM_KEY,
            "DISCORD_TOKEN": BOT_TOKEN,
            "LOG_FORMAT": "json",
            "DASHBOARD_PORT": "0",
        }
        process = await start_familiar(cwd=tmp_path, env=env)
        try:
            await fake_discord.wait_for(lambda: fake_discord.synced_commands(900), timeout_s=30)
            fake_llm.reply_text("Hello from a real process.")
            await fake_discord.user_says("are you running?", mentions_bot=True)
            await fake_discord.wait_for(
                lambda: fake_discord.messages_sent(GENERAL_ID), timeout_s=30
            )
            process.send_signal(signal.SIGTERM)
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert fake_discord.messages_sent(GENERAL_ID)[0].json["content"] == (
            "Hello from a real process."
        )
        log = stderr.decode()
        assert "Traceback" not in log
        assert BOT_TOKEN not in log and LLM_KEY not in log
        assert '"event": "familiar_stopped"' in log or "familiar_stopped" in log

    async def test_bad_token_exits_2_with_a_message(
        self, tmp_path: Path, fake_discord: FakeDiscord, fake_llm: FakeOpenRouter
    ) -> None:
        """A token Discord rejects stops `familiar` with exit 2 and a readable message."""
        env = {
            **_discord_env(tmp_path, fake_discord, fake_llm),
            "DISCORD_TOKEN": "not-the-right-token-0123",
            "DASHBOARD_ENABLED": "false",
        }
        code, _, text = await run_familiar(cwd=tmp_path, env=env, timeout_s=30)
        assert code == 2
        assert "DISCORD_TOKEN" in text
        assert "not-the-right-token-0123" not in text
        assert "Traceback" not in text
