"""Clause chunking of a streamed reply for text-to-speech."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from familiar_connect.core.chunking import ClauseChunker, strip_speech_markup


def _stream(chunker: ClauseChunker, deltas: list[str]) -> list[str]:
    out: list[str] = []
    for delta in deltas:
        out += chunker.feed(delta)
    return out + chunker.flush()


def _by_chars(text: str) -> list[str]:
    return list(text)


@pytest.fixture(name="chunker")
def _chunker() -> ClauseChunker:
    return ClauseChunker(min_chars=20, max_chars=220)


class TestClauseChunker:
    def test_sentence_released_when_next_char_arrives(self, chunker: ClauseChunker) -> None:
        """A sentence end is confirmed by the whitespace after it, then released at once."""
        assert chunker.feed("Hello there.") == []
        assert chunker.feed(" How") == ["Hello there."]
        assert chunker.flush() == ["How"]

    def test_short_sentences_are_not_held_for_min_chars(self, chunker: ClauseChunker) -> None:
        """A short sentence goes out on its own: first audio matters more than chunk size."""
        assert _stream(chunker, _by_chars("Hi! Yes? Okay.")) == ["Hi!", "Yes?", "Okay."]

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (
                "Mr. Smith and Dr. Jones met at noon today.",
                ["Mr. Smith and Dr. Jones met at noon today."],
            ),
            (
                "Use a tool, e.g. a hammer, for this job.",
                ["Use a tool, e.g. a hammer,", "for this job."],
            ),
            (
                "The value of pi is 3.14 or so, roughly speaking.",
                ["The value of pi is 3.14 or so,", "roughly speaking."],
            ),
            ("It costs $29.99 in most stores.", ["It costs $29.99 in most stores."]),
            ("Written by J. R. R. Tolkien long ago.", ["Written by J. R. R. Tolkien long ago."]),
        ],
    )
    def test_abbreviations_and_decimals_do_not_split(self, text: str, expected: list[str]) -> None:
        """Abbreviations, initials and decimals are not sentence ends."""
        chunker = ClauseChunker(min_chars=20, max_chars=220)
        assert _stream(chunker, _by_chars(text)) == expected

    def test_first_clause_goes_early(self, chunker: ClauseChunker) -> None:
        """The first chunk may end at a comma once it has min_chars, for faster first audio."""
        chunks = _stream(chunker, _by_chars("Well, I have been thinking about it, and yes we can."))
        assert chunks[0] == "Well, I have been thinking about it,"

    def test_later_clauses_wait_for_length(self, chunker: ClauseChunker) -> None:
        """After the first chunk, a comma only ends a chunk past half of max_chars."""
        text = "Sure. I like tea, coffee, and cocoa, but mostly tea in the morning."
        chunks = _stream(chunker, _by_chars(text))
        assert chunks == ["Sure.", "I like tea, coffee, and cocoa, but mostly tea in the morning."]

    def test_short_clause_is_not_split(self, chunker: ClauseChunker) -> None:
        """A comma before min_chars does not end a chunk."""
        chunks = _stream(chunker, _by_chars("Oh, right, sure thing."))
        assert chunks == ["Oh, right, sure thing."]

    def test_long_text_without_punctuation_cuts_at_word(self) -> None:
        """Without boundaries the chunk is cut at max_chars on a word boundary."""
        chunker = ClauseChunker(min_chars=5, max_chars=30)
        chunks = _stream(chunker, ["word " * 20])
        assert all(len(c) <= 30 for c in chunks)
        assert all(set(c.split()) == {"word"} for c in chunks)

    def test_one_huge_word_is_cut_hard(self) -> None:
        """A word longer than max_chars is cut rather than held forever."""
        chunker = ClauseChunker(min_chars=5, max_chars=30)
        chunks = _stream(chunker, ["x" * 100])
        assert [len(c) for c in chunks] == [30, 30, 30, 10]

    def test_strips_markdown_markup(self, chunker: ClauseChunker) -> None:
        """Emphasis, code ticks and heading marks are not spoken."""
        chunks = _stream(chunker, _by_chars("# Title\n**Bold** and _it_ with `code`."))
        assert " ".join(chunks) == "Title Bold and it with code."

    def test_hash_mid_line_is_kept(self, chunker: ClauseChunker) -> None:
        """Only a heading's leading marks are removed."""
        assert _stream(chunker, ["You are #1 today."]) == ["You are #1 today."]

    def test_number_alone_does_not_end_a_chunk(self, chunker: ClauseChunker) -> None:
        """A list number such as "1." joins the text that follows it."""
        chunks = _stream(chunker, _by_chars("1. Milk. 2. Eggs."))
        assert chunks == ["1. Milk.", "2. Eggs."]

    def test_flush_resets_for_next_reply(self, chunker: ClauseChunker) -> None:
        """After flush, a new reply starts fresh, including the eager first clause."""
        _stream(chunker, _by_chars("First reply, which is long enough to split early, sure."))
        chunks = _stream(
            chunker, _by_chars("The second reply is here, and it also splits early, yes.")
        )
        assert chunks[0] == "The second reply is here,"

    def test_rejects_bad_bounds(self) -> None:
        """min_chars must be positive and not above max_chars."""
        with pytest.raises(ValueError, match="min_chars"):
            ClauseChunker(min_chars=30, max_chars=20)

    @settings(max_examples=200)
    @given(
        st.lists(
            st.sampled_from(list("abc xyz.,;:!?…—*_`#\n") + ["Mr.", "3.14", "e.g.", "word "]),
            max_size=200,
        ).map("".join),
        st.data(),
    )
    def test_output_preserves_content(self, text: str, data: st.DataObject) -> None:
        """Joined chunks equal the input minus markup, whatever the deltas, each within bounds."""
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        chunker = ClauseChunker(min_chars=10, max_chars=60)
        chunks = _stream(chunker, deltas)
        assert all(0 < len(c) <= 60 and c == c.strip() for c in chunks)
        assert "".join("".join(chunks).split()) == "".join(strip_speech_markup(text).split())

    @settings(max_examples=100)
    @given(st.text(alphabet=st.sampled_from(list("ab .,;!?\n")), max_size=300), st.data())
    def test_chunking_of_deltas_does_not_matter(self, text: str, data: st.DataObject) -> None:
        """Feeding the reply whole or in any pieces gives the same chunks, hard cuts included."""
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=20)))
        deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        whole = _stream(ClauseChunker(min_chars=10, max_chars=40), [text])
        pieces = _stream(ClauseChunker(min_chars=10, max_chars=40), deltas)
        assert whole == pieces
