"""Turn untrusted search text into a safe FTS5 query.

User and model text must never reach ``MATCH`` as syntax: ``AND``, ``NEAR(``,
``"``, ``*``, ``^``, ``:`` and parentheses are FTS5 operators, and an
unbalanced quote is a syntax error. We split the text into word tokens
(``\\w+`` after NFC normalisation, close to FTS5's ``unicode61`` tokenizer),
drop everything else, and quote each token as its own phrase. Phrases
separated by spaces are an implicit AND in FTS5, so every word must appear.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["MAX_QUERY_CHARS", "MAX_QUERY_TERMS", "MAX_TERM_CHARS", "fts5_terms"]

MAX_QUERY_CHARS = 1_024
"""Only this much of the search text is looked at."""
MAX_QUERY_TERMS = 16
"""At most this many distinct words are searched for."""
MAX_TERM_CHARS = 64
"""Longer words are cut to this length."""

_WORD = re.compile(r"\w+")


def fts5_terms(text: str) -> str | None:
    """Return an FTS5 expression requiring every word of ``text``, or None.

    The result contains only double-quoted word phrases, so it can be
    combined with column filters and ``AND`` safely. Returns None when
    ``text`` has no word characters (nothing to search for).
    """
    normalised = unicodedata.normalize("NFC", text[:MAX_QUERY_CHARS])
    terms: dict[str, str] = {}
    for match in _WORD.finditer(normalised):
        term = match.group(0)[:MAX_TERM_CHARS]
        # Dedupe case-insensitively but search the word as written: the
        # tokenizer folds case itself, and casefold() would turn "ß" into "ss".
        terms.setdefault(term.lower(), term)
        if len(terms) >= MAX_QUERY_TERMS:
            break
    if not terms:
        return None
    # \w never matches '"', but escape anyway so this stays safe if the
    # pattern above is ever widened.
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms.values())
