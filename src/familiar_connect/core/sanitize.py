"""Text hygiene for everything that reaches the model or a label: control characters, names, caps.

Every string that comes from outside the process (Discord messages, transcripts, Twitch events,
display names, memory files, tool results) passes through these functions before it is placed in a
prompt. They are pure, total (never raise on odd input) and cheap: each is a single pass over the
text with :meth:`str.translate` or a precompiled regular expression.

- :func:`strip_control` removes characters a reader cannot see but a model can: C0/C1 control
  characters, zero-width characters and bidirectional overrides (the usual ways to hide text or
  make it render differently from how it is read).
- :func:`sanitize_name` makes a display name safe to put inside a ``author="..."`` label.
- :func:`cap_text` truncates with a visible marker, so a cut is never silent.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "DEFAULT_NAME",
    "TRUNCATION_MARKER_FORMAT",
    "cap_text",
    "sanitize_name",
    "strip_control",
    "truncation_marker",
]

DEFAULT_NAME = "someone"
"""What :func:`sanitize_name` returns when nothing printable is left of a name."""

TRUNCATION_MARKER_FORMAT = "…[truncated {n} chars]"
"""The visible marker :func:`cap_text` appends; ``n`` is how many characters were cut."""


def _build_strip_table() -> dict[int, int | None]:
    table: dict[int, int | None] = {}
    # C0 controls except TAB and LF; DEL; C1 controls.
    for cp in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)):
        if cp not in (0x09, 0x0A):
            table[cp] = None
    # Zero-width and invisible formatting characters.
    for cp in (*range(0x200B, 0x2010), *range(0x2060, 0x2065), 0xFEFF):
        table[cp] = None
    # Bidirectional embeddings, overrides and isolates, plus the Arabic letter mark (also bidi).
    for cp in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x061C):
        table[cp] = None
    # Tag characters are invisible yet read by models ("ASCII smuggling"): never pass them on.
    for cp in range(0xE0000, 0xE0080):
        table[cp] = None
    # A lone surrogate (legal in JSON escapes, e.g. from a gateway) cannot be encoded as UTF-8
    # and would crash whatever encodes it next: replace it with the replacement character.
    for cp in range(0xD800, 0xE000):
        table[cp] = 0xFFFD
    # Unicode line/paragraph separators end a line for some renderers but not others; make them
    # one plain newline so what the model sees matches what a person sees.
    table[0x2028] = 0x0A
    table[0x2029] = 0x0A
    return table


_STRIP_TABLE = _build_strip_table()

# Characters that could open or close a fence, a label or a quoted attribute in a prompt.
_NAME_BREAKERS = str.maketrans({ch: " " for ch in "<>[]`\"'\n\t"})
_WHITESPACE_RUN = re.compile(r"\s+")


def strip_control(text: str) -> str:
    """Remove invisible and control characters, keeping newlines and tabs.

    CRLF and lone CR become LF first (so the CR is not simply deleted and two lines do not merge),
    then C0/C1 control characters other than TAB and LF, zero-width characters (U+200B..U+200F,
    U+2060..U+2064, U+FEFF) and bidi embedding/override/isolate characters (U+202A..U+202E,
    U+2066..U+2069, U+061C) are removed. U+2028/U+2029 become LF.

    Args:
        text: any string.

    Returns:
        The cleaned string; never longer than ``text``.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.translate(_STRIP_TABLE)


def sanitize_name(name: str, *, max_chars: int = 64, fallback: str = DEFAULT_NAME) -> str:
    """Make a display name (or any label value) safe to show inside a prompt label.

    Applies NFKC (so full-width ``＜`` becomes ``<`` before it is removed), strips control,
    zero-width and bidi characters, replaces characters that could break a fence or a quoted
    label (``< > [ ] ` " '``, newlines, tabs) with spaces, collapses whitespace and caps the
    result at ``max_chars`` characters.

    Args:
        name: the untrusted name.
        max_chars: the longest result; must be at least 1.
        fallback: returned when nothing printable is left.

    Returns:
        A single-line string of 1..``max_chars`` characters with none of the breaking characters.

    Raises:
        ValueError: if ``max_chars`` is less than 1.
    """
    if max_chars < 1:
        raise ValueError("max_chars must be at least 1")
    cleaned = strip_control(unicodedata.normalize("NFKC", name)).translate(_NAME_BREAKERS)
    cleaned = _WHITESPACE_RUN.sub(" ", cleaned).strip()[:max_chars].rstrip()
    return cleaned or fallback[:max_chars]


def truncation_marker(dropped_chars: int) -> str:
    """Return the visible marker for a cut of ``dropped_chars`` characters."""
    return TRUNCATION_MARKER_FORMAT.format(n=dropped_chars)


def cap_text(text: str, *, max_chars: int) -> tuple[str, bool]:
    """Cap ``text`` at ``max_chars`` characters, marking any cut visibly.

    Short text is returned unchanged. Longer text is cut at the last whitespace in the final fifth
    of the allowed window (or hard, when there is none), trailing whitespace is dropped, and
    ``" …[truncated N chars]"`` is appended, where N counts every character of ``text`` that was
    left out. The result, marker included, is at most ``max_chars`` long, except that a
    ``max_chars`` smaller than the marker yields the marker alone: a cut is never silent.

    Args:
        text: the text to cap.
        max_chars: the maximum length of the result, marker included; must be >= 0.

    Returns:
        ``(capped_text, truncated)``.

    Raises:
        ValueError: if ``max_chars`` is negative.
    """
    if max_chars < 0:
        raise ValueError("max_chars must not be negative")
    if len(text) <= max_chars:
        return text, False
    # The marker's length depends on N; size it for the largest N (nothing kept) so the result
    # never overshoots, at the cost of occasionally keeping a character or two fewer.
    reserve = len(truncation_marker(len(text))) + 1
    window = max_chars - reserve
    if window <= 0:
        return truncation_marker(len(text)), True
    space = _last_space(text, end=window, start=max(1, window - window // 5))
    cut = space if space > 0 else window
    kept = text[:cut].rstrip()
    marker = truncation_marker(len(text) - len(kept))
    return (f"{kept} {marker}" if kept else marker), True


def _last_space(text: str, *, end: int, start: int) -> int:
    """Index of the last whitespace character in ``text[start:end + 1]``, or -1."""
    for i in range(min(end, len(text) - 1), start - 1, -1):
        if text[i].isspace():
            return i
    return -1
