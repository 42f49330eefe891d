"""Turning untrusted text into safe FTS5 queries."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from familiar_connect.storage._fts import MAX_QUERY_TERMS, MAX_TERM_CHARS, fts5_terms


@pytest.fixture(name="fts", scope="module")
def fixture_fts() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE docs USING fts5 (body, tokenize = 'unicode61')")
    conn.execute("INSERT INTO docs (body) VALUES ('near and or not the quick brown fox')")
    yield conn
    conn.close()


class TestFts5Terms:
    def test_words_become_quoted_phrases(self) -> None:
        """Each word is quoted, so operators and punctuation are plain text."""
        assert fts5_terms('cats AND "dogs" NEAR( x* ^y {body}:z') == (
            '"cats" "AND" "dogs" "NEAR" "x" "y" "body" "z"'
        )

    def test_text_without_words_gives_none(self) -> None:
        """Punctuation-only text means there is nothing to search for."""
        assert fts5_terms(' "*()^:-+ ') is None
        assert fts5_terms("") is None

    def test_terms_are_deduplicated_and_bounded(self) -> None:
        """Repeated words count once, and only the first few distinct words are kept."""
        assert fts5_terms("Cat cat CAT dog") == '"Cat" "dog"'
        many = " ".join(f"w{i}" for i in range(100))
        assert fts5_terms(many).count('"') == 2 * MAX_QUERY_TERMS  # type: ignore[union-attr]
        assert fts5_terms("x" * 500) == '"' + "x" * MAX_TERM_CHARS + '"'

    @pytest.mark.parametrize(
        "query", ["AND", "OR", "NOT", "NEAR(", '"', "*", "the quick", "body: fox", "(fox"]
    )
    def test_hostile_queries_run(self, fts: sqlite3.Connection, query: str) -> None:
        """Queries made of FTS5 operators run without syntax errors and match as words."""
        terms = fts5_terms(query)
        if terms is None:
            return
        rows = fts.execute("SELECT count(*) FROM docs WHERE docs MATCH ?", (terms,)).fetchall()
        assert rows[0][0] in (0, 1)

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=200))
    def test_any_text_is_a_valid_match(self, fts: sqlite3.Connection, text: str) -> None:
        """No text, however hostile, produces an invalid MATCH expression."""
        terms = fts5_terms(text)
        if terms is not None:
            fts.execute("SELECT rowid FROM docs WHERE docs MATCH ?", (terms,)).fetchall()
