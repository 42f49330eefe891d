"""`familiar chat` as a person uses it: a subprocess talking to a loopback fake OpenRouter."""

from __future__ import annotations

import asyncio
import io
import signal
import sqlite3
from pathlib import Path

import pytest

from familiar_connect.chat import TerminalSink
from tests.fakes.openrouter import FakeOpenRouter
from tests.familiar_process import run_familiar, start_familiar

API_KEY = "sk-or-v1-chat-e2e-0123456789"


def chat_env(fake: FakeOpenRouter, data_dir: Path, key: str | None = API_KEY) -> dict[str, str]:
    env = {
        "OPENROUTER_BASE_URL": fake.api_base,
        "FAMILIAR_DATA_DIR": str(data_dir),
        "FAMILIAR_ID": "chatfam",
        "LLM_MAX_RETRIES": "0",
    }
    if key is not None:
        env["OPENROUTER_API_KEY"] = key
    return env


async def run_chat(
    *args: str, fake: FakeOpenRouter, data_dir: Path, stdin: str = "", key: str | None = API_KEY
) -> tuple[int, str, str]:
    return await run_familiar(
        "chat", *args, cwd=data_dir.parent, env=chat_env(fake, data_dir, key), stdin=stdin
    )


def history_rows(data_dir: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(data_dir / "familiars" / "chatfam" / "familiar.db")
    try:
        return db.execute("SELECT role, content FROM turns ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.slow
class TestChatCommand:
    async def test_once_prints_streamed_reply_and_stores_the_turn(self, tmp_path: Path) -> None:
        """`familiar chat --once` prints the reply and both turns are in history afterwards."""
        async with FakeOpenRouter(expected_api_key=API_KEY) as fake:
            fake.reply_text("Hello there, operator.")
            code, out, err = await run_chat(
                "--once", "hello", fake=fake, data_dir=tmp_path / "data"
            )
        assert code == 0, err
        assert out.strip() == "Familiar: Hello there, operator."
        assert history_rows(tmp_path / "data") == [
            ("user", "hello"),
            ("assistant", "Hello there, operator."),
        ]
        assert "Traceback" not in err

    async def test_stdin_conversation_until_eof(self, tmp_path: Path) -> None:
        """Lines on stdin are answered in order and the process exits 0 at end of input."""
        async with FakeOpenRouter(expected_api_key=API_KEY) as fake:
            fake.reply_text("One.")
            fake.reply_text("Two.")
            code, out, err = await run_chat(
                fake=fake, data_dir=tmp_path / "data", stdin="first\n\nsecond\n"
            )
            second_prompt = fake.chat_requests[1].json["messages"]
        assert code == 0, err
        assert out.splitlines() == ["Familiar: One.", "Familiar: Two."]
        # The second turn sees the first exchange as history.
        assert any(m["role"] == "assistant" and m["content"] == "One." for m in second_prompt)

    async def test_local_server_without_key_works(self, tmp_path: Path) -> None:
        """With only OPENROUTER_BASE_URL (a local server) and no key, chat works and sends no auth."""
        async with FakeOpenRouter() as fake:
            fake.reply_text("Local hello.")
            code, out, err = await run_chat(
                "--once", "hi", fake=fake, data_dir=tmp_path / "data", key=None
            )
            headers = fake.chat_requests[0].headers
        assert code == 0, err
        assert out.strip() == "Familiar: Local hello."
        assert "Authorization" not in headers

    async def test_provider_error_prints_notice_and_exits_1(self, tmp_path: Path) -> None:
        """A 402 from the provider is shown as a notice, and --once exits 1."""
        async with FakeOpenRouter(expected_api_key=API_KEY) as fake:
            fake.reply_http_error(402, message="Insufficient credits")
            code, out, err = await run_chat(
                "--once", "hello", fake=fake, data_dir=tmp_path / "data"
            )
        assert code == 1
        assert "credits have run out" in out
        assert "Traceback" not in err
        assert history_rows(tmp_path / "data") == [("user", "hello")]

    async def test_ctrl_c_cancels_the_reply_in_flight(self, tmp_path: Path) -> None:
        """SIGINT during a reply stops it, closes the model stream, and the chat goes on."""
        async with FakeOpenRouter(expected_api_key=API_KEY) as fake:
            fake.reply_stall(after_text="Once upon a time", stall_s=30)
            fake.reply_text("Still here.")
            env = chat_env(fake, tmp_path / "data")
            env.pop("LLM_MAX_RETRIES")
            process = await start_familiar("chat", cwd=tmp_path, env=env, stdin=True)
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(b"tell me a story\n")
            await process.stdin.drain()
            first = await asyncio.wait_for(process.stdout.read(len("Familiar: Once")), timeout=30)
            assert first == b"Familiar: Once"
            process.send_signal(signal.SIGINT)
            await asyncio.wait_for(fake.disconnected.wait(), timeout=30)
            process.stdin.write(b"are you there?\n")
            process.stdin.close()
            rest, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, err.decode()
        assert (first + rest).decode().splitlines() == [
            "Familiar: Once upon a time [interrupted]",
            "Familiar: Still here.",
        ]
        assert history_rows(tmp_path / "data")[:2] == [
            ("user", "tell me a story"),
            ("assistant", "Once upon a time"),
        ]

    async def test_chat_without_llm_exits_2(self, tmp_path: Path) -> None:
        """With no LLM endpoint configured, chat exits 2 saying what to set."""
        code, _, stderr = await run_familiar("chat", "--once", "hi", cwd=tmp_path)
        assert code == 2
        assert "OPENROUTER_API_KEY" in stderr


class TestTerminalSink:
    async def test_streams_then_ends_line(self) -> None:
        """Deltas print after the familiar's name and the reply ends with a newline."""
        out = io.StringIO()
        sink = TerminalSink(out, name="Aria")
        await sink.begin()
        await sink.send("Hel")
        await sink.send("lo.")
        assert await sink.end("Hello.") == "Hello."
        assert out.getvalue() == "Aria: Hello.\n"

    async def test_cancel_marks_interruption_and_returns_delivered(self) -> None:
        """Cancelling mid-reply marks the line and returns exactly what was printed."""
        out = io.StringIO()
        sink = TerminalSink(out, name="Aria")
        await sink.begin()
        await sink.send("Once upon")
        assert await sink.cancel() == "Once upon"
        assert out.getvalue() == "Aria: Once upon [interrupted]\n"
