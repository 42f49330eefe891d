"""Choosing speech providers: keys pick the default, missing credentials are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar_connect.character import load_character
from familiar_connect.errors import ConfigError
from familiar_connect.settings import load_settings
from familiar_connect.speech.factory import build_speech, voice_configured
from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer


def _character(tmp_path: Path, voice_id: str = "voice-123") -> object:
    familiar_dir = tmp_path / "fam"
    familiar_dir.mkdir(exist_ok=True)
    (familiar_dir / "character.toml").write_text(f'[voice]\ntts_voice = "{voice_id}"\n')
    return load_character("fam", familiar_dir)


class TestBuildSpeech:
    async def test_keys_select_deepgram_and_cartesia(self, tmp_path: Path) -> None:
        """With both keys and no explicit choice, Deepgram and Cartesia are built."""
        settings = load_settings(
            env_file=None, deepgram_api_key="dg-key-0123456789", cartesia_api_key="ca-0123456789"
        )
        stt, tts = build_speech(settings, _character(tmp_path))
        assert isinstance(stt, DeepgramTranscriber) and isinstance(tts, CartesiaSynthesizer)
        assert voice_configured(settings)
        await stt.aclose()
        await tts.aclose()

    def test_nothing_configured_builds_nothing(self, tmp_path: Path) -> None:
        """Without speech keys there is no voice, and that is not an error."""
        settings = load_settings(env_file=None)
        assert build_speech(settings, _character(tmp_path)) == (None, None)
        assert not voice_configured(settings)

    def test_chosen_provider_without_key_is_named(self, tmp_path: Path) -> None:
        """STT_PROVIDER=deepgram without its key names DEEPGRAM_API_KEY."""
        settings = load_settings(env_file=None, stt_provider="deepgram")
        with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
            build_speech(settings, _character(tmp_path))

    def test_cartesia_needs_a_voice_id(self, tmp_path: Path) -> None:
        """Cartesia without a voice id in character.toml names the key to set."""
        settings = load_settings(env_file=None, cartesia_api_key="ca-0123456789")
        with pytest.raises(ConfigError, match="tts_voice"):
            build_speech(settings, _character(tmp_path, voice_id=""))

    def test_azure_is_refused_in_this_build(self, tmp_path: Path) -> None:
        """Choosing Azure says plainly that this build cannot run it."""
        settings = load_settings(env_file=None, tts_provider="azure")
        with pytest.raises(ConfigError, match="not available in this build"):
            build_speech(settings, _character(tmp_path))
