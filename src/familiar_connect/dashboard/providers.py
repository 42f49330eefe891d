"""Provider health: Discord gateway and voice, Twitch EventSub, speech-to-text, text-to-speech, the LLM.

Three sources feed it:

- the :class:`~familiar_connect.supervisor.Supervisor`'s statuses (state,
  restarts, last error) of the services that talk to each provider, matched by
  service name (:attr:`ProviderSpec.services`);
- the orchestrator's ``turn_finished`` events (via :meth:`ProviderBoard.observe`):
  the LLM model actually used, fallbacks taken, failures and, when the event
  carries it, the provider's error text;
- adapters, through :meth:`ProviderBoard.report` (reconnects, connection state,
  errors the supervisor never sees because the adapter recovers by itself).

Error texts are kept short here and redacted on the way out (``_safe``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from familiar_connect.character import Character
from familiar_connect.llm.openrouter import LLMClientStats
from familiar_connect.settings import Settings
from familiar_connect.speech.factory import provider_choices
from familiar_connect.supervisor import ServiceStatus

__all__ = ["PROVIDERS", "ProviderBoard", "ProviderSpec"]

_MAX_ERROR_CHARS = 300
_BAD_STATES = frozenset({"restarting", "failed"})


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider row.

    Attributes:
        provider_id: stable id used by :meth:`ProviderBoard.report`.
        name: what the operator sees.
        services: supervisor service names whose status is this provider's.
    """

    provider_id: str
    name: str
    services: tuple[str, ...]


PROVIDERS: tuple[ProviderSpec, ...] = (
    ProviderSpec("discord_gateway", "Discord gateway", ("discord", "discord_gateway")),
    ProviderSpec("discord_voice", "Discord voice", ("discord_voice", "voice")),
    ProviderSpec("twitch_eventsub", "Twitch EventSub", ("twitch", "twitch_eventsub")),
    ProviderSpec("stt", "Speech-to-text", ("stt", "deepgram", "azure_stt")),
    ProviderSpec("tts", "Text-to-speech", ("tts", "cartesia", "azure_tts")),
    ProviderSpec("llm", "LLM", ("llm", "openrouter")),
)
"""Every provider the dashboard shows, in display order."""


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _clip(text: object) -> str:
    value = text if isinstance(text, str) else str(text)
    return value[:_MAX_ERROR_CHARS]


@dataclass(slots=True)
class _Report:
    state: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None
    reconnects: int = 0


@dataclass(slots=True)
class _LLM:
    model_used: str | None = None
    fallbacks: int = 0
    last_fallback: str | None = None
    failures: int = 0
    turns: int = 0
    last_outcome: str | None = None
    last_ok_at: str | None = None


class ProviderBoard:
    """What the dashboard knows about each provider.

    Args:
        settings: which providers are configured (and the LLM endpoint's host).
        character: the LLM call sites' configured models and fallbacks.
        llm_stats: the LLM client's own counters (retries it recovered from never
            reach a turn's outcome), if there is a client.
    """

    def __init__(
        self, settings: Settings, character: Character, llm_stats: LLMClientStats | None = None
    ) -> None:
        self._settings = settings
        # As the app chooses them: set explicitly, or picked from the keys present.
        self._speech = provider_choices(settings)
        self._llm_stats = llm_stats
        llm = character.config.llm
        self._fallbacks = {
            "reply": frozenset(llm.reply.fallback_models),
            "voice_reply": frozenset(llm.voice_reply.fallback_models),
        }
        self._primary = {"reply": llm.reply.model, "voice_reply": llm.voice_reply.model}
        self._reports: dict[str, _Report] = {spec.provider_id: _Report() for spec in PROVIDERS}
        self._llm = _LLM()

    # --- inputs --------------------------------------------------------------------------

    def observe(self, kind: str, data: Mapping[str, Any]) -> None:
        """Read LLM facts from an orchestrator event (``turn_finished`` only). Never raises."""
        if kind != "turn_finished":
            return
        llm = self._llm
        outcome = str(data.get("outcome", ""))
        llm.turns += 1
        llm.last_outcome = outcome[:16]
        model = data.get("model")
        if isinstance(model, str) and model:
            llm.model_used = model[:200]
            site = "voice_reply" if data.get("modality") == "voice" else "reply"
            if model != self._primary[site] and model in self._fallbacks[site]:
                llm.fallbacks += 1
                llm.last_fallback = model[:200]
        if outcome == "failed":
            llm.failures += 1
            report = self._reports["llm"]
            error = data.get("error")
            report.last_error = (
                _clip(error) if error else "a turn failed; the provider's message is in the log"
            )
            report.last_error_at = _now_iso()
        elif outcome in ("replied", "silent"):
            llm.last_ok_at = _now_iso()

    def report(
        self,
        provider_id: str,
        *,
        state: str | None = None,
        error: str | None = None,
        reconnected: bool = False,
    ) -> None:
        """Adapters: record a provider's state, an error, or a reconnect.

        Raises:
            KeyError: unknown ``provider_id`` (see :data:`PROVIDERS`).
        """
        entry = self._reports[provider_id]
        if state is not None:
            entry.state = state[:32]
        if error is not None:
            entry.last_error = _clip(error)
            entry.last_error_at = _now_iso()
        if reconnected:
            entry.reconnects += 1

    # --- reads ---------------------------------------------------------------------------

    def _configured(self, provider_id: str) -> bool:
        settings = self._settings
        stt, tts = self._speech
        return {
            "discord_gateway": settings.discord_configured,
            "discord_voice": settings.discord_configured and stt is not None and tts is not None,
            "twitch_eventsub": settings.twitch_configured,
            "stt": stt is not None,
            "tts": tts is not None,
            "llm": settings.llm_configured,
        }[provider_id]

    def _display_name(self, spec: ProviderSpec) -> str:
        settings = self._settings
        stt, tts = self._speech
        if spec.provider_id == "stt" and stt:
            return f"{spec.name} ({stt.capitalize()})"
        if spec.provider_id == "tts" and tts:
            return f"{spec.name} ({tts.capitalize()})"
        if spec.provider_id == "llm":
            host = urlsplit(settings.openrouter_base_url).netloc
            return "LLM (OpenRouter)" if host == "openrouter.ai" else f"LLM ({host})"
        return spec.name

    def rows(self, statuses: Mapping[str, ServiceStatus]) -> list[dict[str, Any]]:
        """One row per provider: configured, state, restarts, reconnects, last error, details."""
        rows: list[dict[str, Any]] = []
        for spec in PROVIDERS:
            report = self._reports[spec.provider_id]
            service = next((statuses[name] for name in spec.services if name in statuses), None)
            configured = self._configured(spec.provider_id)
            state = report.state or (service.state if service is not None else None)
            last_error = report.last_error
            last_error_at = report.last_error_at
            if service is not None and service.last_error and not last_error:
                last_error = _clip(service.last_error)
            details: dict[str, Any] = {}
            if spec.provider_id == "llm":
                llm = self._llm
                if state is None and llm.last_outcome is not None:
                    state = "failing" if llm.last_outcome == "failed" else "ok"
                details = {
                    "model_used": llm.model_used,
                    "fallbacks": llm.fallbacks,
                    "last_fallback": llm.last_fallback,
                    "turns": llm.turns,
                    "failures": llm.failures,
                    "last_ok_at": llm.last_ok_at,
                    **self._client_counters(),
                }
            if state is None:
                state = "waiting" if configured else "not configured"
            rows.append(
                {
                    "provider": spec.provider_id,
                    "name": self._display_name(spec),
                    "configured": configured,
                    "state": state,
                    "restarts": service.restarts if service is not None else 0,
                    "reconnects": report.reconnects,
                    "last_error": last_error,
                    "last_error_at": last_error_at,
                    "details": details,
                }
            )
        return rows

    @staticmethod
    def services(statuses: Mapping[str, ServiceStatus]) -> list[dict[str, Any]]:
        """Every supervised service: name, state, restarts, last error."""
        return [
            {
                "service": status.name,
                "state": status.state,
                "restarts": status.restarts,
                "last_error": _clip(status.last_error) if status.last_error else None,
            }
            for status in statuses.values()
        ]

    def healthy(self, statuses: Mapping[str, ServiceStatus]) -> bool:
        """No service restarting or failed, and the LLM's last turn did not fail."""
        if any(status.state in _BAD_STATES for status in statuses.values()):
            return False
        if any(report.state in _BAD_STATES for report in self._reports.values()):
            return False
        return self._llm.last_outcome != "failed"

    @property
    def llm(self) -> dict[str, Any]:
        """LLM counters, for ``/metrics``."""
        llm = self._llm
        return {
            "turns": llm.turns,
            "failures": llm.failures,
            "fallbacks": llm.fallbacks,
            **self._client_counters(),
        }

    def _client_counters(self) -> dict[str, int]:
        stats = self._llm_stats
        if stats is None:
            return {}
        return {"requests_retried": stats.retries, "retries_recovered": stats.recovered}
