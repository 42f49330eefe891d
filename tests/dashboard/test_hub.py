"""The live hub: O(1) observing, bounded state, bounded SSE fan-out, closing streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from familiar_connect.dashboard.hub import ADAPTER_COUNTERS, LiveHub, SseClient, sse_message


def finished(conversation: str = "discord:1", **extra: Any) -> dict[str, Any]:
    data = {
        "conversation": conversation,
        "turn_id": "t1",
        "modality": "text",
        "outcome": "replied",
        "text": "hello",
        "model": "m",
        "timings_ms": {"typing_sent": 1.0, "first_token": 20.0, "posted": 30.0},
    }
    data.update(extra)
    return data


def decode(message: bytes) -> tuple[str, Any]:
    head, data = message.decode().strip().split("\n")
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


@pytest.fixture(name="hub")
def fixture_hub() -> LiveHub:
    return LiveHub(
        snapshot=lambda: {"n": 1},
        max_clients=3,
        client_queue_size=4,
        max_conversations=5,
        max_recent_turns=3,
        flush_interval_s=0.0,
    )


class TestObserve:
    """What the orchestrator's events do to the live state."""

    def test_conversation_follows_events(self, hub: LiveHub) -> None:
        """Speaker, activity and turn count follow received, started and finished events."""
        hub.observe(
            "event_received", {"conversation": "discord:1", "author": "Ann", "modality": "voice"}
        )
        assert hub.conversations()[0]["activity"] == "listening"
        hub.observe("turn_started", {"conversation": "discord:1", "modality": "voice"})
        assert hub.conversations()[0]["activity"] == "thinking"
        hub.observe("turn_finished", finished(modality="voice"))
        view = hub.conversations()[0]
        assert view["speaker"] == "Ann"
        assert view["activity"] == "listening"
        assert view["turns"] == 1
        assert hub.recent_turns()[0]["total_ms"] == 30.0

    def test_state_is_bounded(self, hub: LiveHub) -> None:
        """Only the most recent conversations and turns are kept."""
        for index in range(20):
            hub.observe("turn_finished", finished(f"discord:{index}", turn_id=f"t{index}"))
        assert [c["conversation"] for c in hub.conversations()] == [
            f"discord:{i}" for i in (19, 18, 17, 16, 15)
        ]
        assert [t["turn_id"] for t in hub.recent_turns()] == ["t19", "t18", "t17"]

    def test_long_values_are_cut(self, hub: LiveHub) -> None:
        """Oversized names and texts are cut before they are stored."""
        hub.observe("turn_finished", finished("discord:" + "9" * 500, text="x" * 5000))
        turn = hub.recent_turns()[0]
        assert len(turn["conversation"]) <= 80
        assert len(turn["text"]) <= 500

    @pytest.mark.parametrize(
        "data", [{}, {"conversation": None}, {"conversation": "d:1", "timings_ms": "nope"}]
    )
    def test_malformed_events_never_raise(self, hub: LiveHub, data: dict[str, Any]) -> None:
        """Whatever the observer is handed, it returns normally."""
        hub.observe("turn_finished", data)
        hub.observe("unknown_kind", data)

    def test_adapter_counters(self, hub: LiveHub) -> None:
        """Known adapter counters start at zero; new names are capped at 64."""
        assert all(hub.counters[name] == 0 for name in ADAPTER_COUNTERS)
        hub.incr("stt_reconnects")
        hub.incr("stt_reconnects", 2)
        assert hub.counters["stt_reconnects"] == 3
        for index in range(100):
            hub.incr(f"custom_{index}")
        assert len(hub.counters) == 64

    def test_activity_reports(self, hub: LiveHub) -> None:
        """Adapters may report speaking; unknown activities are refused."""
        hub.set_activity("discord:9", "speaking", speaker="Ann")
        assert hub.conversations()[0]["activity"] == "speaking"
        with pytest.raises(ValueError):
            hub.set_activity("discord:9", "dancing")


class TestStreams:
    """SSE clients: capped in number, bounded in queue, closed on shutdown."""

    def test_client_cap(self, hub: LiveHub) -> None:
        """Beyond max_clients, subscribing is refused and counted."""
        clients = [hub.subscribe() for _ in range(5)]
        assert sum(client is not None for client in clients) == 3
        assert hub.refused_clients == 2
        hub.unsubscribe(clients[0])  # type: ignore[arg-type]
        assert hub.subscribe() is not None

    async def test_slow_client_drops_oldest(self, hub: LiveHub) -> None:
        """A client that does not read keeps only the newest messages; drops are counted."""
        client = hub.subscribe()
        assert client is not None
        for index in range(10):
            hub.publish("n", {"i": index})
        batch = await client.next_batch(timeout_s=1.0)
        assert batch is not None
        assert [decode(m)[1]["i"] for m in batch] == [6, 7, 8, 9]
        assert hub.dropped_messages == 6

    async def test_flush_sends_turns_then_snapshot(self, hub: LiveHub) -> None:
        """A flush sends each pending finished turn, then one snapshot."""
        client = hub.subscribe()
        assert client is not None
        hub.observe("turn_finished", finished(turn_id="a"))
        hub.observe("turn_finished", finished(turn_id="b"))
        hub.flush()
        batch = await client.next_batch(timeout_s=1.0)
        assert batch is not None
        assert [decode(m)[0] for m in batch] == ["turn", "turn", "live"]

    async def test_broadcaster_closes_streams_when_cancelled(self, hub: LiveHub) -> None:
        """Cancelling the broadcaster ends every stream: readers get None."""
        client = hub.subscribe()
        assert client is not None
        task = asyncio.create_task(hub.run())
        hub.observe("turn_finished", finished())
        batch = await client.next_batch(timeout_s=5.0)
        assert batch
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await client.next_batch(timeout_s=5.0) is None

    async def test_idle_stream_times_out_for_heartbeat(self) -> None:
        """With nothing to send, the reader gets an empty batch (the handler sends a keep-alive)."""
        client = SseClient(4)
        assert await client.next_batch(timeout_s=0.01) == []

    def test_closed_hub_refuses_streams(self, hub: LiveHub) -> None:
        """After close() no stream can subscribe until the hub is reopened."""
        hub.close()
        assert hub.subscribe() is None
        hub.reopen()
        assert hub.subscribe() is not None


class TestSseMessage:
    """The wire format of one event."""

    def test_one_line_of_json(self) -> None:
        """An event is one event line and one single-line data field, even for multi-line text."""
        message = sse_message("turn", {"text": "a\nb\r\nc"})
        lines = message.decode().split("\n")
        assert lines[0] == "event: turn"
        assert lines[1].startswith("data: ")
        assert lines[2:] == ["", ""]
        assert json.loads(lines[1][6:]) == {"text": "a\nb\r\nc"}
