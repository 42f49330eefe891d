"""Choose and build the familiar's speech providers from settings and its character.

STT: ``STT_PROVIDER`` names one (``deepgram`` or ``azure``); left unset, the
first provider whose key is configured is used (Deepgram before Azure). TTS
likewise with ``TTS_PROVIDER`` (``cartesia`` or ``azure``; Cartesia first). A
selected provider without its credentials is a configuration error naming what
to set — found at start-up, not when someone first speaks.

Azure needs ``AZURE_SPEECH_KEY`` and either ``AZURE_SPEECH_REGION`` or
``AZURE_SPEECH_HOST`` (``wss://``; plain ``ws://`` only for a loopback fake).
Building the Azure providers creates no SDK object yet.
"""

from __future__ import annotations

import re

from familiar_connect.character import Character
from familiar_connect.errors import ConfigError
from familiar_connect.settings import Settings
from familiar_connect.speech.stt.base import Transcriber
from familiar_connect.speech.tts.base import Synthesizer

__all__ = ["build_speech", "provider_choices", "voice_configured"]

# A Cartesia voice id (a UUID) left in [voice] tts_voice when switching to Azure.
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def voice_configured(settings: Settings) -> bool:
    """Whether any speech provider has credentials (voice is offered at all)."""
    return (
        settings.deepgram_api_key is not None
        or settings.cartesia_api_key is not None
        or settings.azure_speech_key is not None
    )


def _stt_choice(settings: Settings) -> str | None:
    if settings.stt_provider is not None:
        return settings.stt_provider
    if settings.deepgram_api_key is not None:
        return "deepgram"
    if settings.azure_speech_key is not None:
        return "azure"
    return None


def _tts_choice(settings: Settings) -> str | None:
    if settings.tts_provider is not None:
        return settings.tts_provider
    if settings.cartesia_api_key is not None:
        return "cartesia"
    if settings.azure_speech_key is not None:
        return "azure"
    return None


def provider_choices(settings: Settings) -> tuple[str | None, str | None]:
    """The speech-to-text and text-to-speech providers these settings select (None: off)."""
    return _stt_choice(settings), _tts_choice(settings)


def _azure_problems(settings: Settings, variable: str) -> list[str]:
    """What is missing or wrong for Azure, one line per variable (empty when usable)."""
    from familiar_connect.speech.azure_sdk import check_endpoint, validate_host

    if settings.azure_speech_key is None:
        return [f"AZURE_SPEECH_KEY: required when {variable}=azure"]
    host, region = settings.azure_speech_host, settings.azure_speech_region
    try:
        if host:
            validate_host(host)
        else:
            check_endpoint(region=region, host=None)
    except ValueError as exc:
        name = "AZURE_SPEECH_HOST" if host else "AZURE_SPEECH_REGION"
        return [f"{name}: {exc}"]
    return []


def build_speech(
    settings: Settings, character: Character
) -> tuple[Transcriber | None, Synthesizer | None]:
    """The configured transcriber and synthesizer (None where no provider is chosen).

    Raises:
        ConfigError: a chosen provider lacks credentials or cannot run in this build.
    """
    from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
    from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer

    voice = character.config.voice
    problems: list[str] = []
    stt: Transcriber | None = None
    tts: Synthesizer | None = None
    stt_choice, tts_choice = _stt_choice(settings), _tts_choice(settings)
    azure_key = settings.azure_speech_key
    if stt_choice == "azure":
        from familiar_connect.speech.stt.azure import AzureTranscriber

        azure_problems = _azure_problems(settings, "STT_PROVIDER")
        problems += azure_problems
        if not azure_problems and azure_key is not None:
            stt = AzureTranscriber(
                azure_key.get_secret_value(),
                region=settings.azure_speech_region,
                host=settings.azure_speech_host,
                language=voice.language,
                segmentation_silence_ms=min(max(voice.endpointing_ms, 100), 5000),
            )
    if stt_choice == "deepgram":
        if settings.deepgram_api_key is None:
            problems.append("DEEPGRAM_API_KEY: required when STT_PROVIDER=deepgram")
        else:
            stt = DeepgramTranscriber(
                settings.deepgram_api_key.get_secret_value(),
                ws_base=settings.deepgram_ws_base,
                http_base=settings.deepgram_http_base,
                language=voice.language,
                endpointing_ms=voice.endpointing_ms,
                utterance_end_ms=voice.utterance_end_ms,
            )
    if tts_choice == "cartesia":
        if settings.cartesia_api_key is None:
            problems.append("CARTESIA_API_KEY: required when TTS_PROVIDER=cartesia")
        elif not voice.tts_voice:
            problems.append(
                "[voice] tts_voice in character.toml: Cartesia needs a voice id "
                "(copy one from the Cartesia voice library)"
            )
        else:
            tts = CartesiaSynthesizer(
                settings.cartesia_api_key.get_secret_value(),
                base_url=settings.cartesia_base_url,
                ws_base_url=settings.cartesia_ws_base_url,
                voice_id=voice.tts_voice,
                language=voice.language,
            )
    if tts_choice == "azure":
        from familiar_connect.speech.tts.azure import AzureSynthesizer

        azure_problems = _azure_problems(settings, "TTS_PROVIDER")
        if voice.tts_voice and _UUID.fullmatch(voice.tts_voice):
            azure_problems.append(
                "[voice] tts_voice in character.toml: this looks like a Cartesia voice id; "
                "Azure needs a voice name such as en-GB-SoniaNeural (or leave it empty)"
            )
        # The same missing variable is named once when both directions use Azure.
        problems += [p for p in azure_problems if p not in problems]
        if not azure_problems and azure_key is not None:
            tts = AzureSynthesizer(
                azure_key.get_secret_value(),
                region=settings.azure_speech_region,
                host=settings.azure_speech_host,
                voice=voice.tts_voice,
                language=voice.language,
            )
    if problems:
        raise ConfigError("Voice providers are not configured:", problems=tuple(problems))
    return stt, tts
