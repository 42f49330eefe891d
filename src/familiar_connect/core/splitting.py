"""Split a long reply into Discord-sized messages without breaking its formatting.

Discord rejects messages over 2,000 characters. :func:`split_message` cuts at the most natural
boundary available in each window (paragraph, line, sentence, word, and only then a hard cut),
and keeps code blocks intact: when a cut falls inside a ````` fenced block, the part is closed with
````` and the next part reopens the block with the same language tag.

Markers are paired the way Discord pairs them: every ````` toggles, wherever it appears. Runs of
four or more backticks get no special treatment (a hard cut avoids splitting a run where it can).
"""

from __future__ import annotations

import re

__all__ = ["DISCORD_MESSAGE_LIMIT", "MIN_SPLIT_LIMIT", "split_message"]

DISCORD_MESSAGE_LIMIT = 2000
"""Discord's maximum message length, in characters."""

MIN_SPLIT_LIMIT = 16
"""The smallest ``limit`` :func:`split_message` accepts: room for a reopened fence and content."""

_FENCE = "```"
_CLOSE = "\n```"
# A language tag: the rest of the opening fence's line, one token of tag-like characters.
_LANG = re.compile(r"[A-Za-z0-9_+#.\-]{1,32}(?=\n|$)")
_SENTENCE_END = re.compile(r"[.!?…][\"')\]*_]*(?=\s)")


def _open_fence(text: str, end: int) -> tuple[str, int] | None:
    """Scan ``text[:end]`` for ````` toggles and report a block left open at ``end``.

    The language tag is read from the whole of ``text``: a cut just after ``"```py"`` must not
    make ``"py"`` of ``"```python"`` look like a complete tag.

    Discord pairs ````` markers wherever they appear, so this does too; an opening marker's tag is
    the rest of its line when that is a single tag-like token (``"python"``), else ``""``.

    Returns:
        ``(language_tag, index_of_opening_marker)`` if a block is open at the end, else None.
    """
    open_at: int | None = None
    lang = ""
    pos = text.find(_FENCE, 0, end)
    while pos >= 0:
        after = pos + len(_FENCE)
        if open_at is None:
            open_at = pos
            match = _LANG.match(text, after)
            lang = match.group(0) if match else ""
        else:
            open_at = None
        pos = text.find(_FENCE, after, end)
    return None if open_at is None else (lang, open_at)


def _find_cut(window: str, min_cut: int) -> int:
    """Choose where to end a part inside ``window``; always returns a value > ``min_cut``.

    Paragraph, line and sentence boundaries are only taken in the second half of the window (an
    early one would make a needlessly short part); any word boundary beats a hard cut.
    """
    half = max(min_cut + 1, len(window) // 2)
    for sep in ("\n\n", "\n"):
        idx = window.rfind(sep, half)
        if idx >= half:
            return idx
    ends = [m.end() for m in _SENTENCE_END.finditer(window, half)]
    if ends:
        return ends[-1]
    for i in range(len(window) - 1, min_cut, -1):
        if window[i].isspace():
            return i
    cut = len(window)
    # Do not split a run of backticks: half a fence marker would silently change the formatting.
    while cut - 1 > min_cut and window[cut - 1] == "`":
        cut -= 1
    return cut


def split_message(text: str, *, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Split ``text`` into parts of at most ``limit`` characters.

    Contract:
        - every part is at most ``limit`` characters and contains non-whitespace;
        - parts come in order and, apart from whitespace at the cuts and the fence markers added
          around a cut inside a code block, their concatenation is ``text``;
        - a cut inside a ````` block closes it in that part and reopens it, with the same language
          tag, at the start of the next part;
        - text that is empty or only whitespace gives ``[]``.

    Args:
        text: the reply to send.
        limit: the platform's maximum message length; at least :data:`MIN_SPLIT_LIMIT`.

    Returns:
        The parts, in order.

    Raises:
        ValueError: if ``limit`` is below :data:`MIN_SPLIT_LIMIT`.
    """
    if limit < MIN_SPLIT_LIMIT:
        raise ValueError(f"limit must be at least {MIN_SPLIT_LIMIT}")
    parts: list[str] = []
    rest = text.strip()
    prefix_len = 0  # length of a fence reopened at the start of ``rest``
    while len(rest) > limit:
        # Reserve room for a closing fence in case the cut lands inside a code block.
        cut = _find_cut(rest[: limit - len(_CLOSE)], prefix_len)
        fence = _open_fence(rest, cut)
        if (
            fence is not None
            and fence[1] > prefix_len
            and not rest[fence[1] : cut].strip(_FENCE + fence[0] + " \t\n")
        ):
            # The cut would leave an opening fence with nothing after it: cut before the fence.
            cut = fence[1]
            fence = _open_fence(rest, cut)
        head, tail = rest[:cut], rest[cut:]
        has_content = bool(head[prefix_len:].strip())
        if fence is None:
            head, tail, prefix_len = head.rstrip(), tail.lstrip(), 0
        else:
            lang = fence[0]
            # Keep the reopened fence within half the limit so every part still makes progress.
            if len(_FENCE) + len(lang) + 1 > limit // 2:
                lang = ""
            reopen = f"{_FENCE}{lang}\n"
            head = head.rstrip() + _CLOSE
            tail = reopen + tail.lstrip("\n")
            prefix_len = len(reopen)
        if has_content:
            parts.append(head)
        rest = tail
    if rest.strip():
        parts.append(rest)
    return parts
