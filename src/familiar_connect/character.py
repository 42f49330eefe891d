"""A familiar's character: ``character.toml`` (settings) and ``character.md`` (persona).

A default familiar ships inside the package (``default_familiar/``). A
familiar's own files live in ``<data dir>/familiars/<id>/`` and need only the
keys they change: tables are deep-merged over the default, key by key. The
merged result is validated with strict pydantic models, so an unknown key, a
wrong type or an out-of-range value is an error that names the file, the key
and the reason.

Names, aliases and the persona are length-capped: they come from an operator,
but they go into every prompt, and the security promises ask for caps on
user-provided configuration.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from familiar_connect.errors import CharacterConfigError
from familiar_connect.platforms.twitch.config import TwitchSection

__all__ = [
    "MAX_PERSONA_CHARS",
    "Character",
    "CharacterConfig",
    "LLMCallConfig",
    "deep_merge",
    "load_character",
]

MAX_PERSONA_CHARS = 20_000
MAX_NAME_CHARS = 64
MAX_ALIASES = 16
MAX_TOML_BYTES = 256 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _check_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_NAME_CHARS} characters")
    if any(ord(ch) < 32 or ch in "<>\u200b\u202e" for ch in value):
        raise ValueError("must not contain control characters, '<' or '>'")
    return value


class FamiliarSection(_Strict):
    display_name: str
    aliases: list[str] = Field(default_factory=list, max_length=MAX_ALIASES)

    @field_validator("display_name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_name(value)

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, value: list[str]) -> list[str]:
        return [_check_name(alias) for alias in value]


class LLMCallConfig(_Strict):
    """How one call site (reply, voice reply, memory writer, ...) uses the LLM."""

    model: str = Field(min_length=1, max_length=200)
    fallback_models: list[str] = Field(default_factory=list, max_length=8)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


class LLMSection(_Strict):
    reply: LLMCallConfig
    voice_reply: LLMCallConfig
    memory_writer: LLMCallConfig


class VoiceSection(_Strict):
    tts_voice: str = Field(default="", max_length=200)
    language: str = Field(default="en", min_length=2, max_length=16)
    greeting: str = Field(default="", max_length=500)
    auto_leave_after_s: float = Field(ge=5, le=86_400)
    endpointing_ms: int = Field(ge=10, le=5_000)
    utterance_end_ms: int = Field(ge=1000, le=5_000)
    open_to_everyone: bool = False


class LimitsSection(_Strict):
    max_input_chars: int = Field(ge=100, le=100_000)
    max_reply_chars: int = Field(ge=100, le=100_000)
    max_tool_iterations: int = Field(ge=0, le=32)
    tool_timeout_s: float = Field(gt=0, le=300)
    max_tool_result_chars: int = Field(ge=200, le=200_000)
    prompt_max_tokens: int = Field(ge=1_000, le=2_000_000)
    persona_max_tokens: int = Field(ge=100, le=200_000)
    memory_max_tokens: int = Field(ge=0, le=200_000)
    history_max_tokens: int = Field(ge=0, le=2_000_000)
    inbox_size: int = Field(ge=1, le=10_000)
    actor_idle_s: float = Field(ge=1, le=86_400)


class PlatformLists(_Strict):
    discord: list[str] = Field(default_factory=list, max_length=10_000)
    twitch: list[str] = Field(default_factory=list, max_length=10_000)
    terminal: list[str] = Field(default_factory=list, max_length=100)


class PolicySection(_Strict):
    rate_per_minute: float = Field(gt=0, le=10_000)
    burst: int = Field(ge=1, le=1_000)
    user_daily_tokens: int = Field(ge=0)
    user_daily_cost_usd: float = Field(ge=0)
    familiar_daily_tokens: int = Field(ge=0)
    familiar_daily_cost_usd: float = Field(ge=0)
    answer_mentions_outside_subscriptions: bool = True
    unprompted_gap_s: float = Field(default=30.0, ge=0, le=86_400)
    allow: PlatformLists = Field(default_factory=PlatformLists)
    deny: PlatformLists = Field(default_factory=PlatformLists)


class MemoryWriterSection(_Strict):
    enabled: bool = True
    every_n_turns: int = Field(ge=1, le=10_000)
    idle_s: float = Field(ge=1, le=86_400)


class CharacterConfig(_Strict):
    """The validated, merged ``character.toml``."""

    familiar: FamiliarSection
    llm: LLMSection
    voice: VoiceSection
    limits: LimitsSection
    policy: PolicySection
    memory_writer: MemoryWriterSection
    twitch: TwitchSection = Field(default_factory=TwitchSection)


class Character(BaseModel):
    """A familiar: its id, its settings and its persona."""

    model_config = ConfigDict(frozen=True)

    familiar_id: str
    config: CharacterConfig
    persona: str
    source_dir: Path | None = None

    @property
    def display_name(self) -> str:
        return self.config.familiar.display_name

    @property
    def aliases(self) -> list[str]:
        return self.config.familiar.aliases


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into ``base``: tables merge key by key, other values replace."""
    merged: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _default_text(name: str) -> str:
    return resources.files("familiar_connect").joinpath("default_familiar", name).read_text("utf-8")


def _read_text(path: Path, *, max_bytes: int) -> str:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise CharacterConfigError(f"{path}: is {size} bytes; the limit is {max_bytes} bytes")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CharacterConfigError(f"{path}: is not valid UTF-8 text") from exc
    except OSError as exc:
        raise CharacterConfigError(f"{path}: cannot be read ({exc.strerror})") from exc


def _parse_toml(text: str, origin: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CharacterConfigError(f"{origin}: is not valid TOML ({exc})") from exc


def _format_errors(origin: str, exc: ValidationError) -> tuple[str, ...]:
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known key (check the spelling against the default character.toml)"
        lines.append(f"{origin}: {key}: {message}")
    return tuple(lines)


def load_character(familiar_id: str, familiar_dir: Path | None) -> Character:
    """Load and validate a familiar's character, falling back to the packaged default.

    Args:
        familiar_id: the familiar's id (``FAMILIAR_ID``).
        familiar_dir: ``<data dir>/familiars/<id>``; its ``character.toml`` and
            ``character.md`` are optional. None loads only the default.

    Raises:
        CharacterConfigError: naming the file, the key and the reason.
    """
    data = _parse_toml(_default_text("character.toml"), "default character.toml")
    origin = "default character.toml"
    persona = _default_text("character.md")
    if familiar_dir is not None:
        toml_path = familiar_dir / "character.toml"
        if toml_path.is_file():
            origin = str(toml_path)
            override = _parse_toml(_read_text(toml_path, max_bytes=MAX_TOML_BYTES), origin)
            data = deep_merge(data, override)
        persona_path = familiar_dir / "character.md"
        if persona_path.is_file():
            persona = _read_text(persona_path, max_bytes=MAX_PERSONA_CHARS * 4)
            if len(persona) > MAX_PERSONA_CHARS:
                raise CharacterConfigError(
                    f"{persona_path}: the persona is {len(persona)} characters; "
                    f"the limit is {MAX_PERSONA_CHARS}"
                )
    try:
        config = CharacterConfig.model_validate(data)
    except ValidationError as exc:
        raise CharacterConfigError(
            "The character configuration is not valid:", problems=_format_errors(origin, exc)
        ) from None
    return Character(
        familiar_id=familiar_id, config=config, persona=persona.strip(), source_dir=familiar_dir
    )
