"""Turn a streaming reply into speakable chunks for text-to-speech, as early as is natural.

A TTS engine speaks a sentence better than a handful of tokens, but waiting for a whole paragraph
wastes the latency budget. :class:`ClauseChunker` releases a chunk as soon as one is complete:

- at a sentence end (``. ! ? …``, with any closing quotes or brackets) once the next character
  shows it really is one (whitespace follows), so ``"3.14"`` and ``"$29."`` mid-token never
  split; common abbreviations (``Mr.``, ``e.g.``) and single-letter initials do not end a
  sentence;
- at a clause boundary (``, ; :`` followed by whitespace, or ``—``) once the chunk has
  ``min_chars``: for the first chunk of a reply (first audio sooner), then only once the chunk
  has reached half of ``max_chars``;
- at ``max_chars`` on the last word boundary, or hard when a single word is longer.

Markup that must not be spoken is removed as text arrives: ``*``, ``_``, backticks and the ``#``
of a Markdown heading at the start of a line. Chunks have their whitespace collapsed to single
spaces. Joined, the chunks equal the input minus that markup, modulo whitespace.
"""

from __future__ import annotations

import re

__all__ = ["ClauseChunker", "strip_speech_markup"]

_MARKUP = str.maketrans({"*": None, "_": None, "`": None})
# The blanks and "#" marks that open a line; the streaming path strips the same characters.
_LINE_OPENING = re.compile(r"(?:^|(?<=\n))[ \t#]+")
_SENTENCE = re.compile(r"(?:[.!?]+|…)+[\"'”’)\]]*(?=\s)")
_CLAUSE = re.compile(r"[,;:][\"'”’)\]]*(?=\s)|—")
_WHITESPACE_RUN = re.compile(r"\s+")
_LAST_TOKEN = re.compile(r"(\S+)$")
# Lower-case tokens (without their final ".") after which a "." does not end a sentence.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "e.g", "i.e", "cf", "approx"}
)


def strip_speech_markup(text: str) -> str:
    """Remove ``*``, ``_``, backticks and heading ``#`` marks (the batch form of the chunker)."""
    return _LINE_OPENING.sub(lambda m: m.group(0).replace("#", ""), text.translate(_MARKUP))


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


class ClauseChunker:
    """Accumulates streamed text and releases speakable chunks.

    Feed deltas with :meth:`feed` and collect the chunks it returns; call :meth:`flush` at the end
    of the reply for the remainder. The internal buffer never holds more than ``max_chars`` plus
    one delta, and each :meth:`feed` costs time linear in the delta.

    Args:
        min_chars: the shortest chunk a clause boundary may end (sentence ends may end shorter).
        max_chars: the longest chunk ever released.

    Raises:
        ValueError: unless ``1 <= min_chars <= max_chars``.
    """

    __slots__ = ("_at_line_start", "_buf", "_emitted", "max_chars", "min_chars")

    def __init__(self, *, min_chars: int = 20, max_chars: int = 220) -> None:
        if not 1 <= min_chars <= max_chars:
            raise ValueError("need 1 <= min_chars <= max_chars")
        self.min_chars = min_chars
        self.max_chars = max_chars
        self._buf = ""
        self._at_line_start = True
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        """Add ``delta`` and return every chunk that is now complete (often none)."""
        self._buf += self._strip(delta)
        chunks: list[str] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                break
            self._release(cut, chunks)
        return chunks

    def flush(self) -> list[str]:
        """Return the rest of the reply as chunks and reset for the next reply."""
        chunks: list[str] = []
        while len(self._buf) > self.max_chars:
            self._release(self._hard_cut(), chunks)
        self._release(len(self._buf), chunks)
        self._at_line_start = True
        self._emitted = 0
        return chunks

    def _strip(self, delta: str) -> str:
        """Remove markup from ``delta``, tracking line starts across deltas for headings."""
        delta = delta.translate(_MARKUP)
        if "#" in delta:
            out: list[str] = []
            for ch in delta:
                if ch == "#" and self._at_line_start:
                    continue
                if ch == "\n":
                    self._at_line_start = True
                elif ch not in " \t":
                    self._at_line_start = False
                out.append(ch)
            return "".join(out)
        if delta:
            # Only the tail matters: is the delta's end still within a line's leading blanks?
            tail = delta.rstrip(" \t")
            if tail:
                self._at_line_start = tail.endswith("\n")
        return delta

    def _release(self, cut: int, chunks: list[str]) -> None:
        chunk = _WHITESPACE_RUN.sub(" ", self._buf[:cut]).strip()
        self._buf = self._buf[cut:]
        if chunk:
            chunks.append(chunk)
            self._emitted += 1

    def _next_cut(self) -> int | None:
        """Return the end of the next complete chunk in the buffer, or None to wait for more."""
        buf = self._buf
        # A boundary also needs the character after it, hence the + 1.
        window = buf[: self.max_chars + 1]
        candidates: list[tuple[int, bool]] = [(m.end(), True) for m in _SENTENCE.finditer(window)]
        candidates += [(m.end(), False) for m in _CLAUSE.finditer(window)]
        candidates.sort()
        clause_min = (
            self.min_chars if self._emitted == 0 else max(self.min_chars, self.max_chars // 2)
        )
        for end, is_sentence in candidates:
            if end > self.max_chars:
                break
            head = buf[:end]
            if not _has_letter(head):
                continue
            if is_sentence:
                if not self._is_abbreviation(head):
                    return end
            elif len(head.strip()) >= clause_min:
                return end
        if len(buf) > self.max_chars:
            return self._hard_cut()
        return None

    def _hard_cut(self) -> int:
        """Cut at the last whitespace within ``max_chars``, or at ``max_chars`` inside a word."""
        limit = self.max_chars
        for i in range(limit, 0, -1):
            if self._buf[i].isspace():
                return i
        return limit

    @staticmethod
    def _is_abbreviation(head: str) -> bool:
        """Whether ``head`` ends in a lone ``.`` after an abbreviation or a single-letter initial."""
        if not head.endswith(".") or head.endswith(".."):
            return False
        match = _LAST_TOKEN.search(head[:-1])
        if match is None:
            return False
        token = match.group(1).lstrip("(\"'“‘").lower()
        return token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())
