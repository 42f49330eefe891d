"""Choose and build the familiar's speech providers from settings and its character.

STT: ``STT_PROVIDER`` names one (``deepgram`` or ``azure``); left unset, the
first provider whose key is configured is used. TTS likewise with
``TTS_PROVIDER`` (``cartesia`` or ``azure``). A selected provider without its
credentials, or a provider this build cannot run, is a configuration error
naming what to set — found at start-up, not when someone first speaks.
"""

from __future__ import annotations

from familiar_connect.character import Character
from familiar_connect.errors import ConfigError
from familiar_connect.settings import Settings
from familiar_connect.speech.stt.base import Transcriber
from familiar_connect.speech.tts.base import Synthesizer

__all__ = ["build_speech", "voice_configured"]

AZURE_UNAVAILABLE = (
    "Azure Speech is not available in this build (its SDK is not installed); "
    "use Deepgram/Cartesia or leave the *_PROVIDER variable unset"
)


def voice_configured(settings: Settings) -> bool:
    """Whether any speech provider has credentials (voice is offered at all)."""
    return settings.deepgram_api_key is not None or settings.cartesia_api_key is not None


def _stt_choice(settings: Settings) -> str | None:
    if settings.stt_provider is not None:
        return settings.stt_provider
    if settings.deepgram_api_key is not None:
        return "deepgram"
    return None


def _tts_choice(settings: Settings) -> str | None:
    if settings.tts_provider is not None:
        return settings.tts_provider
    if settings.cartesia_api_key is not None:
        return "cartesia"
    return None


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
    if stt_choice == "azure" or tts_choice == "azure":
        problems.append(f"STT_PROVIDER/TTS_PROVIDER: {AZURE_UNAVAILABLE}")
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
    if problems:
        raise ConfigError("Voice providers are not configured:", problems=tuple(problems))
    return stt, tts
