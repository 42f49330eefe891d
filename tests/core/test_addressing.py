"""Detecting whether a message is addressed to the familiar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.core.addressing import AddressDetector, _fold


@pytest.fixture(name="detector")
def _detector() -> AddressDetector:
    return AddressDetector("Aria", aliases=["Ari the Cat", "  "])


class TestAddressDetector:
    @pytest.mark.parametrize(
        "text",
        [
            "Aria, what do you think?",
            "hey aria!",
            "ARIA",
            "thanks @Aria",
            "is that you, aria?",
            "Aria's favourite",
            "ＡＲＩＡ come here",  # full-width letters normalise under NFKC
            "A\u200bria are you there",  # a zero-width space cannot hide the name
            "ask ari  the\ncat",  # a multi-word alias matches across any whitespace
        ],
    )
    def test_name_as_whole_word_addresses(self, detector: AddressDetector, text: str) -> None:
        """The name or an alias as a whole word, in any case or width, addresses the familiar."""
        assert detector.is_addressed(text, mentioned=False, replied_to=False)

    @pytest.mark.parametrize(
        "text", ["Ariadne was here", "malaria season", "aria_bot", "aria2", "nobody", ""]
    )
    def test_name_inside_a_word_does_not(self, detector: AddressDetector, text: str) -> None:
        """The name inside a longer word, or absent, does not address the familiar."""
        assert not detector.is_addressed(text, mentioned=False, replied_to=False)

    def test_mention_addresses(self, detector: AddressDetector) -> None:
        """A platform mention addresses the familiar whatever the text says."""
        assert detector.is_addressed("hello", mentioned=True, replied_to=False)

    def test_reply_addresses(self, detector: AddressDetector) -> None:
        """A reply to the familiar addresses it whatever the text says."""
        assert detector.is_addressed("hello", mentioned=False, replied_to=True)

    def test_non_latin_name(self) -> None:
        """Names in other scripts match as whole words too."""
        detector = AddressDetector("Ёлка")
        assert detector.mentions_name("привет, ёлка!")
        assert not detector.mentions_name("ёлками")

    def test_blank_names_match_nothing(self) -> None:
        """With no usable name only mentions and replies count."""
        detector = AddressDetector("   ")
        assert detector.names == ()
        assert not detector.is_addressed("anything", mentioned=False, replied_to=False)

    @given(
        st.text(
            alphabet=st.characters(categories=["Zs", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"]),
            max_size=5,
        ),
        st.text(
            alphabet=st.characters(categories=["Zs", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"]),
            max_size=5,
        ),
    )
    def test_name_between_separators_always_matches(self, before: str, after: str) -> None:
        """The name surrounded by any spaces and punctuation is always found."""
        detector = AddressDetector("Aria")
        text = f"{before}Aria{after}"
        assert detector.mentions_name(text)

    @given(st.text(alphabet=st.characters(categories=["L", "Nd"]), min_size=1, max_size=5))
    def test_name_glued_to_letters_never_matches(self, suffix: str) -> None:
        """The name followed directly by letters or digits is a different word."""
        detector = AddressDetector("Aria")
        assert not detector.mentions_name(f"Aria{suffix}") or "aria" in suffix.casefold()

    @given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
    def test_plain_ascii_shortcut_agrees_with_full_folding(self, text: str) -> None:
        """For printable ASCII the quick lower-casing decides exactly as the full Unicode fold."""
        detector = AddressDetector("Aria", aliases=["Ari the Cat"])
        for candidate in (text, f"{text} aria", f"ARI  THE cat{text}", f"x{text}aria!"):
            assert detector.mentions_name(candidate) == (
                detector._pattern is not None
                and detector._pattern.search(_fold(candidate)) is not None
            )
