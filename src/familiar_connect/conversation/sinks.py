"""Where replies go: the ``ReplySink`` protocol, one sink per conversation.

The orchestrator never imports an adapter. Each adapter hands it a sink for
the conversation an event came from, and the orchestrator drives the sink
through one reply at a time:

``begin()`` → ``send(piece)`` × n → ``end(text)``, or ``cancel()`` at any point.

Two modes decide what ``send`` receives:

- ``"text"`` sinks (Discord text, Twitch chat, the terminal) get each filtered
  text delta as it streams; a sink that posts whole messages ignores the
  deltas (or shows progress) and posts the accumulated text in ``end``.
- ``"clauses"`` sinks (voice) get clause-sized chunks ready for
  text-to-speech, the first one as soon as the model has produced a clause.

``end`` and ``cancel`` return what actually reached people, so history records
what was delivered rather than what was generated: after a barge-in, a voice
sink returns only the clauses that were played.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

__all__ = ["ReplySink", "SinkMode"]

SinkMode = Literal["text", "clauses"]


@runtime_checkable
class ReplySink(Protocol):
    """The outbound side of one conversation.

    Cancellation: the orchestrator may cancel the task that is awaiting any of
    these methods (barge-in, shutdown). Implementations must leave no partial
    state behind that breaks the next reply, and ``cancel()`` must be safe to
    call after any other method, including twice.
    """

    mode: SinkMode

    async def begin(self) -> None:
        """A reply is being generated: show a typing indicator, open a TTS stream."""

    async def send(self, piece: str) -> None:
        """Deliver the next piece: a text delta (``"text"``) or a clause (``"clauses"``)."""

    async def end(self, text: str) -> str:
        """The reply is complete; ``text`` is all of it. Return the text delivered."""
        ...

    async def cancel(self) -> str | None:
        """Stop now (barge-in, shutdown, error). Return the text delivered, if known."""
        ...

    async def notice(self, text: str) -> None:
        """Show a short notice that is not a reply (limits, errors, truncation)."""
