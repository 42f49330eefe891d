"""Checking what reached the model: every untrusted text inside a ``<data ...>`` fence, nothing hidden.

:func:`outside_fences` removes every real fence from a prompt message; since the
familiar neutralises ``<data``/``</data`` inside fenced text, a fence always ends
at its own ``</data>``, so any marker left afterwards escaped its fence.
:class:`ScriptedOpenRouter` answers from tokens found in the last user message,
so many conversations can run at once with replies chosen per conversation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.fakes._server import RecordedRequest
from tests.fakes.openrouter import FakeOpenRouter, _Reply

__all__ = [
    "HIDDEN",
    "ScriptedOpenRouter",
    "fence_report",
    "hidden_characters",
    "outside_fences",
]

FENCE = re.compile(r'<data source="[^"<>\n]*"(?: author="[^"<>\n]*")?>\n.*?\n</data>', re.DOTALL)
# Roles whose content the familiar assembles from untrusted parts; assistant messages are the
# familiar's own earlier words (trusted by design, see SECURITY.md residual risks).
CHECKED_ROLES = frozenset({"system", "user", "tool"})

_HIDDEN_RANGES = (
    (0x00, 0x08),
    (0x0B, 0x1F),
    (0x7F, 0x9F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x2069),
    (0xFEFF, 0xFEFF),
    (0x061C, 0x061C),
    (0xE0000, 0xE007F),  # Unicode tag characters: invisible, read by models as ASCII
    (0xD800, 0xDFFF),  # lone surrogates
)
HIDDEN = frozenset(cp for lo, hi in _HIDDEN_RANGES for cp in range(lo, hi + 1))
"""Code points a person cannot see but a model reads: none may reach a prompt."""


def outside_fences(content: str) -> str:
    """``content`` with every real data fence removed."""
    return FENCE.sub("", content)


def _messages(request: RecordedRequest) -> list[dict[str, Any]]:
    body = request.json if isinstance(request.json, dict) else {}
    return [m for m in body.get("messages", []) if isinstance(m, dict)]


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    return json.dumps(content) if content is not None else ""


def fence_report(requests: Sequence[RecordedRequest], nonce: str) -> tuple[int, list[str]]:
    """How often ``nonce`` reached the model inside a fence, and every place it was outside one."""
    fenced = 0
    escapes: list[str] = []
    for index, request in enumerate(requests, start=1):
        for position, message in enumerate(_messages(request)):
            content = _text(message)
            if nonce not in content:
                continue
            if message.get("role") not in CHECKED_ROLES:
                continue
            rest = outside_fences(content)
            if nonce in rest:
                at = rest.index(nonce)
                escapes.append(
                    f"request {index} message {position} ({message.get('role')}): "
                    f"...{rest[max(0, at - 80) : at + 40]!r}"
                )
            else:
                fenced += 1
    return fenced, escapes


def hidden_characters(requests: Iterable[RecordedRequest]) -> list[str]:
    """Hidden code points found in any prompt message (as ``U+XXXX in request N``)."""
    found: list[str] = []
    for index, request in enumerate(requests, start=1):
        for message in _messages(request):
            for char in {c for c in _text(message) if ord(c) in HIDDEN}:
                found.append(f"U+{ord(char):04X} in request {index} ({message.get('role')})")
    return found


def _last_user_text(body: Mapping[str, Any]) -> str:
    text = ""
    for message in body.get("messages", []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _text(message)
    return text


class ScriptedOpenRouter(FakeOpenRouter):
    """A fake model whose reply is chosen by a token in the last user message.

    ``replies[token]`` (text) is answered when ``token`` appears in the last user
    message; ``tools[token]`` (a list of ``(name, arguments)``) is answered as
    tool calls, and the request after a tool round gets ``"done."``. Anything
    else gets ``"noted."``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replies: dict[str, str] = {}
        self.tools: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}

    def _echo(self, body: Any) -> _Reply:
        messages = body.get("messages") or [{}]
        if messages[-1].get("role") == "tool":
            return _Reply(kind="text", text="done.")
        last = _last_user_text(body)
        for token, calls in self.tools.items():
            if token in last:
                encoded = tuple((name, json.dumps(dict(args))) for name, args in calls)
                return _Reply(kind="tool_calls", calls=encoded)
        for token, text in self.replies.items():
            if token in last:
                return _Reply(kind="text", text=text)
        return _Reply(kind="text", text="noted.")
