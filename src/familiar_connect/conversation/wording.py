"""What the familiar tells people and its model about a turn: labels, hints and notices.

Kept apart from the orchestrator's mechanics so the words can be read (and
changed) in one place. Pure functions.
"""

from __future__ import annotations

from familiar_connect.core.events import (
    ConversationKey,
    Inbound,
    Modality,
    Platform,
    TextMessage,
    TwitchEvent,
    Utterance,
)
from familiar_connect.errors import (
    ProviderAuthError,
    ProviderError,
    ProviderQuotaError,
    ProviderRefused,
)

__all__ = ["notice_for", "platform_hint", "source_label", "text_of"]


def text_of(event: Inbound) -> str:
    """The text an event contributes to a turn (attachments noted, Twitch described)."""
    if isinstance(event, TwitchEvent):
        return event.description
    text = event.text
    if isinstance(event, TextMessage) and event.attachments_note:
        text = f"{text}\n{event.attachments_note}"
    return text


def source_label(event: Inbound) -> str:
    """The data-fence source label for an event, e.g. ``"discord message"``."""
    if isinstance(event, Utterance):
        return "voice transcript"
    if isinstance(event, TwitchEvent):
        return "twitch chat" if event.kind == "chat" else f"twitch {event.kind} event"
    if event.key.platform is Platform.TERMINAL:
        return "terminal message"
    return f"{event.key.platform.value} message"


def platform_hint(key: ConversationKey, modality: Modality) -> str:
    """One sentence telling the model where it is and how replies are shown."""
    if modality is Modality.VOICE:
        return (
            "You are speaking out loud in a Discord voice channel. Keep replies short and "
            "speakable: no lists, links or formatting."
        )
    if modality is Modality.TWITCH:
        return "You are in a Twitch stream's chat; replies are short chat lines."
    if modality is Modality.TERMINAL:
        return "You are talking with your operator in a terminal."
    if key.guild_id is None:
        return "You are in a private Discord direct message."
    return "You are in a Discord text channel; Markdown is rendered."


def notice_for(error: BaseException) -> str:
    """A short in-character notice for the people waiting when a turn fails."""
    if isinstance(error, ProviderQuotaError):
        return "I can't think right now: my LLM credits have run out (the operator can see why in the log)."
    if isinstance(error, ProviderAuthError):
        return "I can't think right now: my LLM key was rejected (the operator needs to check it)."
    if isinstance(error, ProviderRefused):
        return "I can't answer that one: my model's provider refused it."
    if isinstance(error, ProviderError):
        return "I lost my train of thought: my thinking service isn't answering right now. Try again in a moment."
    return "Something went wrong on my side; the operator can find the details in the log."
