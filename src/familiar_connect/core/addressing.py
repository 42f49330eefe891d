"""Is a message addressed to the familiar? Mentions, replies, or its name as a whole word.

Matching is Unicode-aware: both the names and the text are NFKC-normalised, stripped of
zero-width and bidi characters and case-folded, so ``"ＡＲＩＡ"``, ``"ARIA"`` and ``"A\\u200bria"``
all match ``"Aria"``. A name counts only as a whole word: the characters either side must not be
letters, digits or underscores, so ``"Aria,"``, ``"hey aria!"`` and ``"@aria"`` match and
``"Ariadne"`` does not.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from familiar_connect.core.sanitize import strip_control

__all__ = ["AddressDetector"]

_WHITESPACE_RUN = re.compile(r"\s+")


def _fold(text: str) -> str:
    """Normalise for matching: NFKC, invisible characters removed, case-folded, spaces collapsed."""
    folded = strip_control(unicodedata.normalize("NFKC", text)).casefold()
    return _WHITESPACE_RUN.sub(" ", folded)


class AddressDetector:
    """Decides whether a message speaks to the familiar.

    Args:
        name: the familiar's name.
        aliases: other names it answers to (nicknames, short forms). Empty or blank names are
            ignored; names of several words match across any run of whitespace.
    """

    __slots__ = ("_pattern", "names")

    def __init__(self, name: str, aliases: Iterable[str] = ()) -> None:
        folded = {_fold(n).strip() for n in (name, *aliases)}
        self.names: tuple[str, ...] = tuple(sorted(n for n in folded if n))
        if not self.names:
            self._pattern: re.Pattern[str] | None = None
            return
        # Longest first so "aria rose" wins over "aria" inside an alternation.
        ordered = sorted(self.names, key=len, reverse=True)
        alternation = "|".join(re.escape(n).replace(r"\ ", r"\s+") for n in ordered)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)")

    def mentions_name(self, text: str) -> bool:
        """Return whether the familiar's name or an alias appears in ``text`` as a whole word."""
        if self._pattern is None:
            return False
        # Most chat is plain printable ASCII, for which NFKC, the control-character strip and
        # casefold() all reduce to lower(): skip them (a third of a Twitch line's ingest cost).
        folded = text.lower() if text.isascii() and text.isprintable() else _fold(text)
        return self._pattern.search(folded) is not None

    def is_addressed(self, text: str, *, mentioned: bool, replied_to: bool) -> bool:
        """Return whether a message is addressed to the familiar.

        Args:
            text: the message text as received.
            mentioned: the platform reports an @-mention of the familiar.
            replied_to: the message replies to one of the familiar's messages.

        Returns:
            True on a mention, a reply, or the name/an alias as a whole word in ``text``.
        """
        return mentioned or replied_to or self.mentions_name(text)
