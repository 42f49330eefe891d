"""The sans-I/O core: decisions that need no socket, as plain classes and functions.

Nothing in this package awaits, opens a socket, starts a thread or reads a clock: time comes in
as arguments (``now_ns`` from :func:`time.monotonic_ns`, ``today`` for daily windows), so every
decision is a value in, value out, and the tests and the benchmarks drive the same code.

- :mod:`.events`: inbound events, authors, conversation keys, per-turn timing records;
- :mod:`.sanitize`: control-character stripping, safe names, visible truncation;
- :mod:`.policy`: access lists, rate limits, daily budgets, input caps, and the turn facade;
- :mod:`.addressing`: whether a message speaks to the familiar;
- :mod:`.prompt`: fenced, budgeted prompt assembly;
- :mod:`.splitting`: Discord-sized message parts that keep code blocks intact;
- :mod:`.chunking`: clause-sized chunks for streaming text-to-speech;
- :mod:`.output_filter`: the ``<silent>`` sentinel and leaked markup, removed from a stream.
"""

from __future__ import annotations

from familiar_connect.core.addressing import AddressDetector
from familiar_connect.core.chunking import ClauseChunker, strip_speech_markup
from familiar_connect.core.events import (
    TWITCH_EVENT_KINDS,
    Author,
    ConversationKey,
    Inbound,
    Modality,
    Platform,
    TextMessage,
    TextTurnTimings,
    TwitchEvent,
    Utterance,
    VoiceTurnTimings,
    modality_of,
)
from familiar_connect.core.output_filter import SILENT_SENTINEL, OutputFilter
from familiar_connect.core.policy import (
    AccessDecision,
    AccessPolicy,
    BudgetDecision,
    BudgetLedger,
    InputLimiter,
    PolicyVerdict,
    RateLimiter,
    TokenBucket,
    TurnPolicy,
)
from familiar_connect.core.prompt import (
    AssembledPrompt,
    HistoryLine,
    InputItem,
    MemorySnippet,
    PromptBudget,
    PromptInputs,
    assemble,
    estimate_tokens,
    fence,
)
from familiar_connect.core.sanitize import cap_text, sanitize_name, strip_control
from familiar_connect.core.splitting import DISCORD_MESSAGE_LIMIT, split_message

__all__ = [
    "DISCORD_MESSAGE_LIMIT",
    "SILENT_SENTINEL",
    "TWITCH_EVENT_KINDS",
    "AccessDecision",
    "AccessPolicy",
    "AddressDetector",
    "AssembledPrompt",
    "Author",
    "BudgetDecision",
    "BudgetLedger",
    "ClauseChunker",
    "ConversationKey",
    "HistoryLine",
    "Inbound",
    "InputItem",
    "InputLimiter",
    "MemorySnippet",
    "Modality",
    "OutputFilter",
    "Platform",
    "PolicyVerdict",
    "PromptBudget",
    "PromptInputs",
    "RateLimiter",
    "TextMessage",
    "TextTurnTimings",
    "TokenBucket",
    "TurnPolicy",
    "TwitchEvent",
    "Utterance",
    "VoiceTurnTimings",
    "assemble",
    "cap_text",
    "estimate_tokens",
    "fence",
    "modality_of",
    "sanitize_name",
    "split_message",
    "strip_control",
    "strip_speech_markup",
]
