"""Where things live in a familiar's memory directory.

One place for the layout every writer and reader shares (the context builder,
the memory tools, the memory writer, privacy requests)::

    self/                                    operator notes (tools may read, never write)
    people/<platform>-<user id>.md           one note per person
    topics/<slug>.md                         notes per topic
    sessions/<YYYY-MM-DD>-<conversation>.md  dated summaries
"""

from __future__ import annotations

__all__ = ["LAYOUT_DIRS", "SELF_DIR", "people_note_path", "session_note_path", "topic_note_path"]

SELF_DIR = "self"
LAYOUT_DIRS = (SELF_DIR, "people", "topics", "sessions")


def _safe(value: str, *, max_chars: int = 64) -> str:
    return "".join(ch for ch in value if ch.isascii() and (ch.isalnum() or ch in "-_"))[:max_chars]


def people_note_path(platform: str, user_id: str) -> str:
    """``people/<platform>-<user id>.md`` (only ASCII letters, digits, ``-`` and ``_`` kept)."""
    return f"people/{_safe(platform) or 'unknown'}-{_safe(user_id) or 'unknown'}.md"


def topic_note_path(slug: str) -> str:
    """``topics/<slug>.md`` for an already-slugged topic."""
    return f"topics/{_safe(slug) or 'topic'}.md"


def session_note_path(day_iso: str, conversation_slug: str) -> str:
    """``sessions/<YYYY-MM-DD>-<conversation>.md``."""
    return f"sessions/{_safe(day_iso, max_chars=10)}-{_safe(conversation_slug, max_chars=80) or 'conversation'}.md"
