"""The memory directory layout: note paths are always safe file names in their folder."""

from __future__ import annotations

from familiar_connect.memory.layout import people_note_path, session_note_path, topic_note_path


class TestLayout:
    def test_people_note_path(self) -> None:
        """A person's note is people/<platform>-<id>.md."""
        assert people_note_path("discord", "1234") == "people/discord-1234.md"

    def test_unsafe_characters_never_reach_the_path(self) -> None:
        """Traversal, separators and non-ASCII look-alikes are dropped from every part."""
        assert people_note_path("discord", "../../etc/passwd") == "people/discord-etcpasswd.md"
        assert people_note_path("dis/cord", "\uff0e\uff0e\u2215x") == "people/discord-x.md"
        assert topic_note_path("../secret") == "topics/secret.md"
        assert session_note_path("2026-11-22", "../x") == "sessions/2026-11-22-x.md"

    def test_empty_parts_get_placeholders(self) -> None:
        """An id with nothing usable left still names a file inside the folder."""
        assert people_note_path("", "///") == "people/unknown-unknown.md"
        assert topic_note_path("...") == "topics/topic.md"
