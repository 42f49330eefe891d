"""Character files: the packaged default, deep merge, and errors that name file, key and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar_connect.character import MAX_PERSONA_CHARS, deep_merge, load_character
from familiar_connect.errors import CharacterConfigError


@pytest.fixture(name="familiar_dir")
def _familiar_dir(tmp_path: Path) -> Path:
    path = tmp_path / "familiars" / "aria"
    path.mkdir(parents=True)
    return path


class TestDeepMerge:
    def test_tables_merge_key_by_key(self) -> None:
        """A nested override changes only the keys it names."""
        merged = deep_merge({"a": {"x": 1, "y": 2}, "b": 3}, {"a": {"y": 20}})
        assert merged == {"a": {"x": 1, "y": 20}, "b": 3}

    def test_lists_replace_rather_than_extend(self) -> None:
        """A list in the override replaces the default list."""
        assert deep_merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


class TestLoadCharacter:
    def test_default_familiar_loads(self) -> None:
        """The packaged default validates and has a persona."""
        character = load_character("default", None)
        assert character.display_name == "Familiar"
        assert character.persona
        assert character.config.llm.reply.model

    def test_partial_override_merges_over_default(self, familiar_dir: Path) -> None:
        """A character.toml with one key keeps every other default."""
        (familiar_dir / "character.toml").write_text(
            '[familiar]\ndisplay_name = "Aria"\naliases = ["ari"]\n[llm.reply]\nmodel = "x/y"\n'
        )
        character = load_character("aria", familiar_dir)
        assert character.display_name == "Aria"
        assert character.aliases == ["ari"]
        assert character.config.llm.reply.model == "x/y"
        assert character.config.llm.reply.temperature == 0.8
        assert character.config.limits.max_tool_iterations == 6

    def test_persona_from_character_md(self, familiar_dir: Path) -> None:
        """character.md replaces the default persona."""
        (familiar_dir / "character.md").write_text("You are Aria, a fox spirit.\n")
        assert load_character("aria", familiar_dir).persona == "You are Aria, a fox spirit."

    def test_unknown_key_names_file_and_key(self, familiar_dir: Path) -> None:
        """A misspelt key is an error naming the file and the dotted key."""
        path = familiar_dir / "character.toml"
        path.write_text("[llm.reply]\ntemprature = 0.5\n")
        with pytest.raises(CharacterConfigError) as info:
            load_character("aria", familiar_dir)
        text = str(info.value)
        assert str(path) in text
        assert "llm.reply.temprature" in text
        assert "not a known key" in text

    def test_wrong_type_and_range_reported_together(self, familiar_dir: Path) -> None:
        """A wrong type and an out-of-range value are both reported in one error."""
        (familiar_dir / "character.toml").write_text(
            '[llm.reply]\ntemperature = 7.0\n[limits]\nmax_tool_iterations = "many"\n'
        )
        with pytest.raises(CharacterConfigError) as info:
            load_character("aria", familiar_dir)
        assert len(info.value.problems) == 2
        assert "llm.reply.temperature" in str(info.value)
        assert "limits.max_tool_iterations" in str(info.value)

    def test_invalid_toml_is_a_config_error(self, familiar_dir: Path) -> None:
        """A syntax error in character.toml is reported with the file name."""
        (familiar_dir / "character.toml").write_text("[familiar\n")
        with pytest.raises(CharacterConfigError, match="not valid TOML"):
            load_character("aria", familiar_dir)

    def test_overlong_persona_rejected(self, familiar_dir: Path) -> None:
        """A persona over the cap is an error stating the length and the limit."""
        (familiar_dir / "character.md").write_text("x" * (MAX_PERSONA_CHARS + 1))
        with pytest.raises(CharacterConfigError, match=str(MAX_PERSONA_CHARS)):
            load_character("aria", familiar_dir)

    def test_overlong_name_and_too_many_aliases_rejected(self, familiar_dir: Path) -> None:
        """Names over 64 characters and more than 16 aliases are errors."""
        aliases = ", ".join(f'"a{i}"' for i in range(17))
        (familiar_dir / "character.toml").write_text(
            f'[familiar]\ndisplay_name = "{"n" * 65}"\naliases = [{aliases}]\n'
        )
        with pytest.raises(CharacterConfigError) as info:
            load_character("aria", familiar_dir)
        assert "familiar.display_name" in str(info.value)
        assert "familiar.aliases" in str(info.value)

    def test_control_characters_in_name_rejected(self, familiar_dir: Path) -> None:
        """A display name with control characters or angle brackets is an error."""
        (familiar_dir / "character.toml").write_text('[familiar]\ndisplay_name = "A\\u0007<b>"\n')
        with pytest.raises(CharacterConfigError, match="display_name"):
            load_character("aria", familiar_dir)

    def test_non_utf8_persona_rejected(self, familiar_dir: Path) -> None:
        """A persona file that is not UTF-8 is a clear error, not a UnicodeDecodeError."""
        (familiar_dir / "character.md").write_bytes(b"\xff\xfe\x00bad")
        with pytest.raises(CharacterConfigError, match="UTF-8"):
            load_character("aria", familiar_dir)
