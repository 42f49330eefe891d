"""Text hygiene: invisible characters, safe labels, and visible truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.core.sanitize import (
    DEFAULT_NAME,
    cap_text,
    sanitize_name,
    strip_control,
    truncation_marker,
)

_INVISIBLE = (
    [chr(c) for c in range(0x00, 0x20) if c not in (0x09, 0x0A, 0x0D)]
    + ["\x7f", "\x85", "\x9f"]
    + ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2060", "\u2064", "\ufeff"]
    + ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"]
)


class TestStripControl:
    @pytest.mark.parametrize("ch", _INVISIBLE)
    def test_removes_invisible_character(self, ch: str) -> None:
        """Each control, zero-width and bidi character is removed."""
        assert strip_control(f"a{ch}b") == "ab"

    def test_keeps_newline_and_tab(self) -> None:
        """Newlines and tabs survive, since they carry layout."""
        assert strip_control("a\nb\tc") == "a\nb\tc"

    def test_normalises_crlf_and_lone_cr(self) -> None:
        """CRLF and lone CR become LF instead of vanishing and merging lines."""
        assert strip_control("a\r\nb\rc") == "a\nb\nc"

    def test_line_separators_become_newlines(self) -> None:
        """U+2028 and U+2029 become plain newlines."""
        assert strip_control("a\u2028b\u2029c") == "a\nb\nc"

    def test_keeps_ordinary_unicode(self) -> None:
        """Letters, emoji and combining marks are untouched."""
        text = "Zoë 🐱 ça va, 日本語"
        assert strip_control(text) == text

    @given(st.text())
    def test_output_has_no_invisible_characters(self, text: str) -> None:
        """No stripped character survives, whatever the input."""
        out = strip_control(text)
        assert not any(ch in out for ch in _INVISIBLE)
        assert "\r" not in out

    @given(st.text())
    def test_is_idempotent(self, text: str) -> None:
        """Stripping twice changes nothing more."""
        once = strip_control(text)
        assert strip_control(once) == once


class TestSanitizeName:
    def test_plain_name_is_unchanged(self) -> None:
        """An ordinary name passes through."""
        assert sanitize_name("Alice Smith") == "Alice Smith"

    def test_removes_fence_breaking_characters(self) -> None:
        """Angle brackets, square brackets, backticks and quotes are removed."""
        assert sanitize_name('Bob"><data source="x">`[y]`\'') == "Bob data source= x y"

    def test_nfkc_folds_full_width_brackets_before_removal(self) -> None:
        """Full-width brackets normalise to ASCII and are then removed."""
        assert sanitize_name("＜Eve＞") == "Eve"

    def test_collapses_whitespace_and_newlines(self) -> None:
        """Newlines and runs of spaces become single spaces."""
        assert sanitize_name("  a \n\n b\t c  ") == "a b c"

    def test_strips_zero_width_and_bidi(self) -> None:
        """Invisible characters cannot disguise a name."""
        assert sanitize_name("Al\u200bi\u202ece") == "Alice"

    def test_caps_length(self) -> None:
        """The result is at most max_chars long."""
        assert sanitize_name("x" * 100, max_chars=10) == "x" * 10

    @pytest.mark.parametrize("name", ["", "   ", "<>[]", "\u200b\u200b"])
    def test_empty_result_falls_back(self, name: str) -> None:
        """A name with nothing printable left becomes the fallback."""
        assert sanitize_name(name) == DEFAULT_NAME

    def test_custom_fallback(self) -> None:
        """The fallback can be chosen by the caller."""
        assert sanitize_name("", fallback="unknown") == "unknown"

    def test_rejects_non_positive_cap(self) -> None:
        """A cap below one character is a programming error."""
        with pytest.raises(ValueError, match="max_chars"):
            sanitize_name("a", max_chars=0)

    @given(st.text(), st.integers(min_value=1, max_value=80))
    def test_result_is_safe_single_line(self, name: str, max_chars: int) -> None:
        """Any name becomes a non-empty single line with no breaking character, within the cap."""
        out = sanitize_name(name, max_chars=max_chars)
        assert 1 <= len(out) <= max_chars
        assert not any(ch in out for ch in "<>[]`\"'\n\t\r")
        assert out == out.strip()


class TestCapText:
    def test_short_text_is_unchanged(self) -> None:
        """Text within the cap comes back as is, not truncated."""
        assert cap_text("hello", max_chars=5) == ("hello", False)

    def test_long_text_gets_visible_marker(self) -> None:
        """A cut appends the marker with the number of characters left out."""
        text = "word " * 40
        out, truncated = cap_text(text, max_chars=60)
        assert truncated
        assert len(out) <= 60
        kept = out.split(" …[truncated ")[0]
        assert out.endswith(f"…[truncated {len(text) - len(kept)} chars]")
        assert text.startswith(kept)

    def test_cuts_at_a_word_boundary(self) -> None:
        """When whitespace is near the cut, the cut does not split a word."""
        out, _ = cap_text("alpha beta gamma delta epsilon zeta eta theta " * 3, max_chars=60)
        kept = out.split(" …[")[0]
        assert kept.split()[-1] in {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"}

    def test_hard_cut_without_whitespace(self) -> None:
        """A single long word is cut hard rather than dropped."""
        out, truncated = cap_text("x" * 500, max_chars=100)
        assert truncated
        assert out.startswith("x" * 50)
        assert len(out) <= 100

    def test_tiny_cap_yields_marker_alone(self) -> None:
        """A cap smaller than the marker still marks the cut."""
        assert cap_text("x" * 500, max_chars=5) == (truncation_marker(500), True)

    def test_negative_cap_is_rejected(self) -> None:
        """A negative cap is a programming error."""
        with pytest.raises(ValueError, match="negative"):
            cap_text("x", max_chars=-1)

    @given(st.text(), st.integers(min_value=0, max_value=300))
    def test_never_silent_and_bounded(self, text: str, max_chars: int) -> None:
        """Every cut is marked, the kept text is a prefix, and the result fits when it can."""
        out, truncated = cap_text(text, max_chars=max_chars)
        if not truncated:
            assert out == text
            return
        marker = out[out.rindex("…[truncated ") :]
        kept = out[: -len(marker)].rstrip(" ")
        assert text.startswith(kept)
        assert marker == truncation_marker(len(text) - len(kept))
        assert len(out) <= max(max_chars, len(truncation_marker(len(text))))
