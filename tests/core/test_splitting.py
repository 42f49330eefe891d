"""Splitting long replies into Discord-sized parts."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from familiar_connect.core.splitting import MIN_SPLIT_LIMIT, split_message


def _visible(text: str) -> str:
    """Non-whitespace content with code-fence markers removed."""
    return re.sub(r"\s+", "", text.replace("`", ""))


def _is_subsequence(needle: str, haystack: str) -> bool:
    rest = iter(haystack)
    return all(char in rest for char in needle)


def _fences_balanced(part: str) -> bool:
    return part.count("```") % 2 == 0


class TestSplitMessage:
    def test_short_message_is_one_part(self) -> None:
        """A message within the limit is returned whole."""
        assert split_message("hello there") == ["hello there"]

    @pytest.mark.parametrize("text", ["", "   ", "\n\n\t"])
    def test_blank_message_has_no_parts(self, text: str) -> None:
        """Nothing to send yields no parts."""
        assert split_message(text) == []

    def test_prefers_paragraph_boundaries(self) -> None:
        """A paragraph break in the second half of the window is where the cut goes."""
        first = "a" * 60 + " " + "b" * 20
        text = first + "\n\n" + "c " * 30
        parts = split_message(text, limit=100)
        assert parts[0] == first

    def test_falls_back_to_sentences_then_words(self) -> None:
        """Without newlines, the cut is at a sentence end, else between words."""
        text = "One sentence here. " * 10
        parts = split_message(text, limit=50)
        assert all(p.endswith(".") for p in parts)
        words = "word " * 40
        assert all(
            not p.startswith(" ") and "wor d" not in p for p in split_message(words, limit=33)
        )

    def test_hard_cut_for_one_long_word(self) -> None:
        """A single word longer than the limit is cut hard, losing nothing."""
        parts = split_message("x" * 250, limit=100)
        assert [len(p) for p in parts] == [96, 96, 58]
        assert "".join(parts) == "x" * 250

    def test_code_block_is_closed_and_reopened_with_language(self) -> None:
        """A cut inside a fenced block closes it and reopens it with the same tag."""
        code = "\n".join(f"line_{i} = {i}" for i in range(40))
        text = f"Here:\n```python\n{code}\n```\nDone."
        parts = split_message(text, limit=120)
        assert len(parts) > 2
        assert all(_fences_balanced(p) for p in parts)
        for part in parts[1:-1]:
            assert part.startswith("```python\n")
            assert part.endswith("\n```")
        assert _visible("".join(parts)).replace("python", "") == _visible(text).replace(
            "python", ""
        )

    def test_does_not_leave_an_empty_block_behind(self) -> None:
        """A cut right after an opening fence moves before the fence instead."""
        text = "a" * 70 + "\n```py\n" + "print(1)\n" * 10 + "```"
        parts = split_message(text, limit=80)
        assert parts[0] == "a" * 70

    def test_long_language_tag_is_dropped_when_it_cannot_fit(self) -> None:
        """A tag too long to repeat is left off the reopened fence rather than stalling."""
        tag = "x" * 30
        text = f"```{tag}\n" + "y " * 100 + "\n```"
        parts = split_message(text, limit=40)
        assert all(len(p) <= 40 for p in parts)
        assert parts[1].startswith("```\n")

    def test_rejects_tiny_limit(self) -> None:
        """A limit too small to hold a reopened fence is refused."""
        with pytest.raises(ValueError, match="limit"):
            split_message("hello", limit=MIN_SPLIT_LIMIT - 1)

    @settings(max_examples=300)
    @example(text="```aaaa\nword aaaa", limit=16)  # a reopened fence repeats its tag
    @given(
        st.lists(
            st.sampled_from(list("ab .!?\n`é🐱") + ["```", "```\n", "\n\n", "word ", "xxxxxx"]),
            max_size=200,
        ).map("".join),
        st.integers(min_value=MIN_SPLIT_LIMIT, max_value=200),
    )
    def test_parts_fit_and_preserve_content(self, text: str, limit: int) -> None:
        """Every part fits, none is blank, and all non-whitespace content survives in order."""
        parts = split_message(text, limit=limit)
        assert all(len(p) <= limit for p in parts)
        assert all(p.strip() for p in parts)
        # A fence reopened in the next part repeats its language tag, so the output may
        # hold a few extra characters per part, but every input character survives in order.
        joined, original = _visible("".join(parts)), _visible(text)
        assert _is_subsequence(original, joined)
        assert len(joined) - len(original) <= len(parts) * limit

    @settings(max_examples=200)
    @given(
        st.lists(
            st.sampled_from(["para one. ", "two\n", "\n\n", "```js\n", "```\n", "code();\n"]),
            max_size=120,
        ),
        st.integers(min_value=MIN_SPLIT_LIMIT, max_value=120),
    )
    def test_fences_stay_balanced(self, pieces: list[str], limit: int) -> None:
        """When the input's fences are balanced, so is every part."""
        text = "".join(pieces)
        if not _fences_balanced(text):
            text += "\n```"
        parts = split_message(text, limit=limit)
        assert all(_fences_balanced(p) for p in parts)
        assert all(len(p) <= limit for p in parts)
