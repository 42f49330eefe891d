"""Child process: the reference client, the machine's floor for a Discord text turn.

A straight-line discord.py client with the familiar's intents and no app logic: on a
message that mentions it, start the typing POST, stream the reply from the fake LLM
(httpx raw chunks split into SSE events, ``json.loads`` per event), and post it as a
reply. No policy, no history, no
prompt assembly, no memory, no logging. Whatever the familiar takes beyond this is what
its own code costs.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import discord
import discord.gateway
import discord.http
import httpx
import yarl

from benchmarks._child import ChildControl, child_main
from benchmarks._harness import LoopLagSentinel, cpu_seconds, rss_kib


class ReferenceClient(discord.Client):
    """Decode, forward, encode."""

    def __init__(self, llm_url: str, llm_key: str, **options: Any) -> None:
        super().__init__(**options)
        self.llm_url = llm_url
        self.http_llm = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {llm_key}", "Accept": "text/event-stream"},
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=1_000, max_keepalive_connections=1_000),
        )
        self.tasks: set[asyncio.Task[Any]] = set()
        self.replies = 0
        self.failures = 0

    async def on_message(self, message: discord.Message) -> None:
        me = self.user
        if me is None or message.author.id == me.id:
            return
        if not any(user.id == me.id for user in message.mentions):
            return
        typing = asyncio.get_running_loop().create_task(self._typing(message.channel))
        self.tasks.add(typing)
        typing.add_done_callback(self.tasks.discard)
        try:
            text = await self._complete(message.content)
            await message.channel.send(
                text or "…",
                reference=message,
                allowed_mentions=discord.AllowedMentions.none(),
                mention_author=False,
            )
            self.replies += 1
        except (httpx.HTTPError, discord.HTTPException):
            self.failures += 1

    async def _typing(self, channel: discord.abc.Messageable) -> None:
        try:
            await channel.typing()
        except discord.HTTPException:
            self.failures += 1

    async def _complete(self, content: str) -> str:
        body = {
            "model": "openrouter/auto",
            "stream": True,
            "messages": [{"role": "user", "content": content}],
        }
        parts: list[str] = []
        buffer = b""
        async with self.http_llm.stream("POST", self.llm_url, json=body) as response:
            async for data in response.aiter_raw():
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: {"):
                        continue  # comments and [DONE]
                    for choice in json.loads(event[6:]).get("choices") or ():
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            parts.append(piece)
        return "".join(parts)


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    discord.http.Route.BASE = config["discord_api"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(config["discord_gateway"])
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True
    intents.members = True
    intents.voice_states = True
    client = ReferenceClient(
        config["llm_base"].rstrip("/") + "/chat/completions",
        config["llm_key"],
        intents=intents,
        guild_ready_timeout=0.05,
        chunk_guilds_at_startup=False,
        allowed_mentions=discord.AllowedMentions.none(),
    )
    ready = asyncio.Event()
    client.event(_on_ready(ready))
    await client.login(config["bot_token"])
    connection = asyncio.get_running_loop().create_task(client.connect(reconnect=True))
    cpu: dict[str, float] = {}
    phase, cpu_start = "startup", cpu_seconds()
    try:
        async with asyncio.timeout(60):
            await ready.wait()
        async with LoopLagSentinel() as lag:
            lag.phase("idle")
            phase, cpu_start = "idle", cpu_seconds()
            control.ready({"pid": os.getpid()})
            while (command := await control.command()) != "stop":
                name = command.removeprefix("phase ").strip()
                now = cpu_seconds()
                cpu[phase] = cpu.get(phase, 0.0) + now - cpu_start
                phase, cpu_start = name, now
                lag.phase(name)
                control.ack({"phase": name})
            now = cpu_seconds()
            cpu[phase] = cpu.get(phase, 0.0) + now - cpu_start
            lag_report = lag.summaries()
    finally:
        await client.close()
        await client.http_llm.aclose()
        connection.cancel()
        await asyncio.gather(connection, return_exceptions=True)
    return {
        "loop_lag_ms": lag_report,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "replies": client.replies,
        "failures": client.failures,
        "rss": rss_kib(os.getpid()),
    }


def _on_ready(ready: asyncio.Event) -> Any:
    async def on_ready() -> None:
        ready.set()

    return on_ready


if __name__ == "__main__":
    child_main(main)
