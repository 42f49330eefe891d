"""Choosing speech providers: keys pick the default, missing credentials are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from familiar_connect.character import load_character
from familiar_connect.errors import ConfigError
from familiar_connect.settings import load_settings
from familiar_connect.speech.factory import build_speech, provider_choices, voice_configured
from familiar_connect.speech.stt.azure import AzureTranscriber
from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
from familiar_connect.speech.tts.azure import AzureSynthesizer
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

    async def test_azure_key_and_region_build_both_azure_providers(self, tmp_path: Path) -> None:
        """An Azure key with a region selects Azure both ways, in the character's language and voice."""
        settings = load_settings(
            env_file=None, azure_speech_key="az-key-0123456789", azure_speech_region="westeurope"
        )
        stt, tts = build_speech(settings, _character(tmp_path, voice_id="en-GB-SoniaNeural"))
        assert isinstance(stt, AzureTranscriber) and isinstance(tts, AzureSynthesizer)
        assert (stt.region, stt.locale, tts.voice) == ("westeurope", "en-US", "en-GB-SoniaNeural")
        assert voice_configured(settings)
        assert provider_choices(settings) == ("azure", "azure")
        await stt.aclose()
        await tts.aclose()

    def test_other_keys_win_over_azure_by_default(self, tmp_path: Path) -> None:
        """With Deepgram, Cartesia and Azure keys and no choice, Deepgram and Cartesia are used."""
        settings = load_settings(
            env_file=None,
            deepgram_api_key="dg-key-0123456789",
            cartesia_api_key="ca-0123456789",
            azure_speech_key="az-key-0123456789",
        )
        assert provider_choices(settings) == ("deepgram", "cartesia")

    def test_azure_without_key_names_it(self, tmp_path: Path) -> None:
        """STT_PROVIDER=azure without a key names AZURE_SPEECH_KEY."""
        settings = load_settings(env_file=None, stt_provider="azure")
        with pytest.raises(ConfigError, match="AZURE_SPEECH_KEY"):
            build_speech(settings, _character(tmp_path))

    def test_azure_without_region_names_it_once(self, tmp_path: Path) -> None:
        """An Azure key without region or host names AZURE_SPEECH_REGION, once for both directions."""
        settings = load_settings(env_file=None, azure_speech_key="az-key-0123456789")
        with pytest.raises(ConfigError, match="AZURE_SPEECH_REGION") as caught:
            build_speech(settings, _character(tmp_path))
        assert len(caught.value.problems) == 1

    def test_azure_refuses_plaintext_remote_host(self, tmp_path: Path) -> None:
        """AZURE_SPEECH_HOST with ws:// to a remote host is refused; TLS is required off loopback."""
        settings = load_settings(
            env_file=None,
            azure_speech_key="az-key-0123456789",
            azure_speech_host="ws://speech.example.com",
        )
        with pytest.raises(ConfigError, match="AZURE_SPEECH_HOST"):
            build_speech(settings, _character(tmp_path))

    def test_azure_tts_refuses_a_cartesia_voice_id(self, tmp_path: Path) -> None:
        """A Cartesia voice id left in tts_voice is named instead of failing on the first reply."""
        settings = load_settings(
            env_file=None,
            tts_provider="azure",
            azure_speech_key="az-key-0123456789",
            azure_speech_region="westeurope",
        )
        voice_id = "a0e99841-438c-4a64-b679-ae501e7d6091"
        with pytest.raises(ConfigError, match="tts_voice"):
            build_speech(settings, _character(tmp_path, voice_id=voice_id))
