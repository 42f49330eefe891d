"""The streaming output filter: the silent sentinel and leaked markup."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from familiar_connect.core.output_filter import MAX_HOLD_CHARS, OutputFilter


def _run(deltas: list[str]) -> tuple[str, bool]:
    filt = OutputFilter()
    out = ""
    for delta in deltas:
        out += filt.feed(delta)
        assert filt.held_chars < MAX_HOLD_CHARS
    out += filt.finish()
    return out, filt.silent


def _whole(text: str) -> tuple[str, bool]:
    return _run([text])


def _split(text: str, cuts: list[int]) -> list[str]:
    cuts = sorted(cuts)
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


class TestOutputFilter:
    def test_plain_text_passes_through_immediately(self) -> None:
        """Text with no angle bracket is emitted at once, nothing held."""
        filt = OutputFilter()
        assert filt.feed("Hello there") == "Hello there"
        assert filt.finish() == ""
        assert not filt.silent

    @pytest.mark.parametrize("text", ["<silent>", "  <silent>\n", "<SILENT>", "\n<Silent>  "])
    def test_bare_sentinel_is_silent(self, text: str) -> None:
        """A reply that is only the sentinel emits nothing and is silent."""
        assert _whole(text) == ("", True)

    def test_sentinel_is_silent_before_finish(self) -> None:
        """A leading sentinel makes the filter silent as soon as it is seen."""
        filt = OutputFilter()
        assert filt.feed("<sil") == ""
        assert filt.feed("ent>") == ""
        assert filt.silent

    def test_leading_sentinel_suppresses_explanation(self) -> None:
        """Text after a leading sentinel is dropped too."""
        assert _whole("<silent> (I was not addressed.)") == ("", True)

    def test_sentinel_after_text_is_only_removed(self) -> None:
        """A sentinel in the middle of a real reply is stripped, the reply still goes out."""
        assert _whole("Sure thing<silent>!") == ("Sure thing!", False)

    def test_tool_call_block_is_removed(self) -> None:
        """Leaked tool-call markup and its content never reach the user."""
        text = 'Let me check.<tool_call>{"name": "search", "args": {}}</tool_call> Done.'
        assert _whole(text) == ("Let me check. Done.", False)

    def test_function_block_is_removed(self) -> None:
        """Llama-style function markup is removed with its arguments."""
        assert _whole('A<function=lookup>{"q": 1}</function>B') == ("AB", False)

    def test_think_block_is_removed(self) -> None:
        """Reasoning blocks are not shown or spoken."""
        assert _whole("<think>plan the answer</think>\n\nHello!") == ("Hello!", False)

    @pytest.mark.parametrize("token", ["<|im_end|>", "<|eot_id|>", "<｜end▁of▁sentence｜>"])
    def test_special_tokens_are_removed(self, token: str) -> None:
        """Chat-template special tokens are stripped."""
        assert _whole(f"Bye{token}") == ("Bye", False)

    def test_unclosed_block_is_dropped_entirely(self) -> None:
        """A tool call cut off by the end of the stream is not shown in part."""
        assert _whole('Hi <tool_call>{"name": "sea') == ("Hi ", False)

    def test_stray_closing_tag_is_removed(self) -> None:
        """A closing tag without its opener is removed."""
        assert _whole("ok</tool_call>") == ("ok", False)

    @pytest.mark.parametrize("text", ["1 < 2", "a <b>bold</b>", "x <= y", "<3 you", "<|x y|>"])
    def test_ordinary_angle_brackets_survive(self, text: str) -> None:
        """Angle brackets that start no known tag are ordinary text."""
        assert _whole(text) == (text, False)

    def test_holds_back_only_a_possible_tag(self) -> None:
        """Only the part that could still become a tag is held, then released."""
        filt = OutputFilter()
        assert filt.feed("Hello <sil") == "Hello "
        assert filt.feed("ly goose") == "<silly goose"

    def test_holdback_is_bounded(self) -> None:
        """A special-token-like run longer than the bound is released as text."""
        filt = OutputFilter()
        long_name = "<|" + "a" * (MAX_HOLD_CHARS + 5)
        assert filt.feed(long_name) == long_name

    def test_block_content_is_not_buffered(self) -> None:
        """Inside a removed block only a closing-tag-sized tail is kept in memory."""
        filt = OutputFilter()
        filt.feed("<tool_call>")
        for _ in range(100):
            assert filt.feed("x" * 1000) == ""
        assert filt.held_chars < len("</tool_call>")
        assert filt.removed_chars >= 100_000

    def test_leading_whitespace_is_not_emitted(self) -> None:
        """Whitespace before the first visible text is dropped."""
        assert _whole("\n\n  Hi") == ("Hi", False)

    def test_sentinel_after_removed_block_still_silent(self) -> None:
        """Leaked markup before the sentinel does not count as visible text."""
        assert _whole("<think>no</think>\n<silent>") == ("", True)

    def test_reset_starts_a_new_reply(self) -> None:
        """After reset a silent filter speaks again."""
        filt = OutputFilter()
        filt.feed("<silent>")
        filt.reset()
        assert filt.feed("Hi") == "Hi"
        assert not filt.silent

    @settings(max_examples=300)
    @given(
        st.lists(
            st.sampled_from(
                [
                    "a",
                    " ",
                    "\n",
                    "<",
                    ">",
                    "|",
                    "<silent>",
                    "<tool_call>",
                    "</tool_call>",
                    "<function=f>",
                    "</function>",
                    "<think>",
                    "</think>",
                    "<|eot_id|>",
                    "<|x",
                    "hello ",
                ]
            ),
            max_size=40,
        ).map("".join),
        st.data(),
    )
    def test_any_chunking_gives_the_same_output(self, text: str, data: st.DataObject) -> None:
        """Cutting the same stream into different deltas changes neither output nor silence."""
        cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=15))
        assert _run(_split(text, cuts)) == _whole(text)

    @given(st.text(alphabet=st.characters(exclude_characters="<"), max_size=200))
    def test_text_without_brackets_is_untouched(self, text: str) -> None:
        """Without a "<" the output is the input minus leading whitespace."""
        assert _whole(text)[0] == text.lstrip()
