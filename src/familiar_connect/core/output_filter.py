"""Streaming filter between the model and the user: the ``<silent>`` sentinel and leaked markup.

Models sometimes write things that must never reach a channel or a voice: the ``<silent>``
sentinel the prompt asks for when the familiar should stay quiet, tool-call markup that leaked into
the text (``<tool_call>…</tool_call>``, ``<function=…>…</function>``), reasoning blocks
(``<think>…</think>``) and chat-template special tokens (``<|im_end|>``, ``<｜end▁of▁sentence｜>``).
:class:`OutputFilter` removes them from a stream of deltas while letting ordinary text through at
once.

Holdback is bounded: only text from a ``<`` that could still become one of those tags is held,
at most :data:`MAX_HOLD_CHARS` characters; inside a block that is being removed, only the last few
characters (enough to recognise its closing tag) are kept. The output does not depend on how the
stream was cut into deltas.
"""

from __future__ import annotations

import re

__all__ = ["MAX_HOLD_CHARS", "SILENT_SENTINEL", "OutputFilter"]

SILENT_SENTINEL = "<silent>"
"""The reply the prompt asks for when the familiar chooses to say nothing."""

MAX_HOLD_CHARS = 64
"""The most characters held back waiting to see whether a ``<`` starts a tag."""

# Opening tag -> closing tag of blocks removed with their content (matched case-insensitively).
_BLOCKS: dict[str, str] = {
    "<tool_call>": "</tool_call>",
    "<function=": "</function>",
    "<think>": "</think>",
}
# Tags removed on their own: the sentinel, and stray closers of removed blocks.
_SINGLE_TAGS: tuple[str, ...] = (SILENT_SENTINEL, *_BLOCKS.values())
_ALL_TAGS: tuple[str, ...] = (*_BLOCKS, *_SINGLE_TAGS)
_CLOSERS: dict[str, re.Pattern[str]] = {
    close: re.compile(re.escape(close), re.IGNORECASE) for close in _BLOCKS.values()
}
# Chat-template special tokens: <|name|>, also with the full-width bar some templates use.
_NAME_MAX = MAX_HOLD_CHARS - 4  # "<|" + name + "|>" never exceeds the holdback
_SPECIAL = re.compile(rf"<[|｜][^\s<>|｜]{{1,{_NAME_MAX}}}[|｜]>")
_SPECIAL_PREFIX = re.compile(rf"<(?:[|｜][^\s<>|｜]{{0,{_NAME_MAX}}}[|｜]?)?\Z")


class OutputFilter:
    """Filters one reply. Create a new one (or call :meth:`reset`) per reply.

    Contract:
        - ``feed(d1) + feed(d2) + ... + finish()`` is the same string for every way of cutting the
          same reply into deltas, and :attr:`silent` ends up the same;
        - a ``<silent>`` before any visible text makes the reply silent: it and everything after
          it are dropped (a bare ``<silent>`` reply is the common case; trailing explanations
          such as ``"<silent> (not addressed)"`` must not be spoken either). A ``<silent>`` after
          visible text is just removed;
        - removed blocks left unclosed at the end are dropped entirely: a half tool call is never
          shown;
        - leading whitespace of the reply is not emitted.

    Attributes:
        silent: True once the reply is known to be silent. Final after :meth:`finish`, which also
            sets it when a sentinel was seen and nothing visible was emitted.
        removed_chars: how many characters were filtered out (for the log).
    """

    __slots__ = ("_buf", "_close", "_sentinel_seen", "_visible", "removed_chars", "silent")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything, ready for a new reply."""
        self.silent = False
        self.removed_chars = 0
        self._buf = ""
        self._close: str | None = None  # closing tag of the block being removed
        self._visible = False  # some non-whitespace text was emitted
        self._sentinel_seen = False

    @property
    def held_chars(self) -> int:
        """Characters currently held back (bounded by :data:`MAX_HOLD_CHARS`)."""
        return len(self._buf)

    def feed(self, delta: str) -> str:
        """Add a delta of model text; return the text that is safe to emit now (maybe ``""``)."""
        if self.silent:
            self.removed_chars += len(delta)
            return ""
        self._buf += delta
        return self._drain(final=False)

    def finish(self) -> str:
        """End the reply: return whatever held text turned out to be plain, and settle ``silent``."""
        out = "" if self.silent else self._drain(final=True)
        if self._buf:
            self.removed_chars += len(self._buf)
            self._buf = ""
        if self._sentinel_seen and not self._visible:
            self.silent = True
        return out

    def _emit(self, text: str, out: list[str]) -> None:
        if not self._visible:
            text = text.lstrip()
            if not text:
                return
            self._visible = True
        out.append(text)

    def _drain(self, *, final: bool) -> str:
        out: list[str] = []
        while self._buf and not self.silent:
            if self._close is not None:
                if not self._skip_block(self._close):
                    break
                continue
            lt = self._buf.find("<")
            if lt < 0:
                self._emit(self._buf, out)
                self._buf = ""
                break
            if lt:
                self._emit(self._buf[:lt], out)
                self._buf = self._buf[lt:]
            if not self._take_tag(final=final, out=out):
                break
        return "".join(out)

    def _skip_block(self, close: str) -> bool:
        """Drop text inside a removed block; return False when more input is needed."""
        found = _CLOSERS[close].search(self._buf)
        if found:
            end = found.end()
            self.removed_chars += end
            self._buf = self._buf[end:]
            self._close = None
            return True
        # Keep only what could be the start of the closing tag.
        keep = len(close) - 1
        if len(self._buf) > keep:
            self.removed_chars += len(self._buf) - keep
            self._buf = self._buf[-keep:]
        return False

    def _take_tag(self, *, final: bool, out: list[str]) -> bool:
        """Handle the ``<`` at the start of the buffer; return False when more input is needed."""
        buf = self._buf
        for tag in _ALL_TAGS:
            if buf[: len(tag)].lower() == tag:
                self.removed_chars += len(tag)
                self._buf = buf[len(tag) :]
                if tag in _BLOCKS:
                    self._close = _BLOCKS[tag]
                elif tag == SILENT_SENTINEL:
                    self._sentinel_seen = True
                    if not self._visible:
                        self.silent = True
                        self.removed_chars += len(self._buf)
                        self._buf = ""
                return True
        special = _SPECIAL.match(buf)
        if special:
            self.removed_chars += special.end()
            self._buf = buf[special.end() :]
            return True
        if not final and len(buf) < MAX_HOLD_CHARS:
            head = buf.lower()
            if any(tag.startswith(head) for tag in _ALL_TAGS) or _SPECIAL_PREFIX.match(buf):
                return False  # could still become a tag: hold it
        self._emit("<", out)
        self._buf = buf[1:]
        return True
