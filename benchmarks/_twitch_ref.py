"""Child process: the parse-only reference, the machine's floor for reading Twitch chat over EventSub.

A straight-line aiohttp websocket client (the library twitchio itself reads EventSub with)
connected to its own fake Twitch: it takes the ``session_welcome``, subscribes to
``channel.chat.message`` through Helix with the bot's token, then for every frame
``json.loads`` it (the parser twitchio uses here: orjson is not installed), and for a
notification reads the chat text and counts it. No twitchio, no models, no app logic, no
logging. It records the same intake lag as the familiar (now − the message's scheduled send
time), with the same bounded histogram, and answers the same ``phase``/``count``/``report``
commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import aiohttp

from benchmarks._child import ChildControl, child_main
from benchmarks._twitch_common import LagHistogram, LoopLagProbe, sent_ns


class _Reader:
    def __init__(self) -> None:
        self.intake = LagHistogram()
        self.ingested = 0
        self.frames = 0

    async def run(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        intake = self.intake
        while True:
            message = await ws.receive()
            if message.type is not aiohttp.WSMsgType.TEXT:
                if message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return
                continue
            self.frames += 1
            data = json.loads(message.data)
            if data["metadata"]["message_type"] != "notification":
                continue
            self.ingested += 1
            sent = sent_ns(data["payload"]["event"]["message"]["text"])
            if sent is not None:
                now_ns = time.monotonic_ns()
                intake.add(now_ns - sent, now_ns)

    def counters(self) -> dict[str, Any]:
        return {"t_ns": time.monotonic_ns(), "ingested": self.ingested, "frames": self.frames}


async def main(config: dict[str, Any], control: ChildControl) -> dict[str, Any]:
    reader = _Reader()
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(config["eventsub_url"], heartbeat=30.0)
        welcome = json.loads((await ws.receive(timeout=30)).data)
        session_id = welcome["payload"]["session"]["id"]
        async with session.post(
            config["helix_base"] + "eventsub/subscriptions",
            headers={
                "Authorization": f"Bearer {config['bot_token']}",
                "Client-Id": config["client_id"],
            },
            json={
                "type": "channel.chat.message",
                "version": "1",
                "condition": {
                    "broadcaster_user_id": config["channel_id"],
                    "user_id": config["bot_id"],
                },
                "transport": {"method": "websocket", "session_id": session_id},
            },
        ) as response:
            if response.status != 202:
                raise RuntimeError(
                    f"subscription refused: {response.status} {await response.text()}"
                )
        task = asyncio.get_running_loop().create_task(reader.run(ws), name="reader")
        try:
            async with LoopLagProbe() as lag:
                lag.phase("idle")
                control.ready({"pid": os.getpid()})
                while (command := await control.command()) != "stop":
                    if command == "count":
                        control.ack(reader.counters())
                        continue
                    if command == "report":
                        control.ack(
                            {
                                **reader.counters(),
                                "intake_lag_ms": reader.intake.summary(),
                                "intake_lag_max_per_s_ms": reader.intake.timeline_ms(),
                                "loop_lag_ms": lag.summaries(),
                                "reader_alive": not task.done(),
                            }
                        )
                        continue
                    name = command.removeprefix("phase ").strip()
                    reader.intake.reset()
                    lag.phase(name)
                    control.ack(reader.counters())
                lag_report = lag.summaries()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            await ws.close()
    return {"loop_lag_ms": lag_report, "ingested": reader.ingested}


if __name__ == "__main__":
    child_main(main)
