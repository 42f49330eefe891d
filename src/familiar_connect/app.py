"""The composition root: build every part of a familiar from its settings, run it, close it.

:func:`open_familiar` opens the familiar's directory, database, memory store,
indexes, LLM client, tools and orchestrator, and closes them in reverse order
(flushing history and index updates) when the ``async with`` ends — whatever
ends it. :class:`App` runs the familiar's services (the orchestrator, the
background writers and every configured platform) under one
:class:`~familiar_connect.supervisor.Supervisor`, with SIGINT/SIGTERM wired to a
clean stop. ``familiar chat`` uses the same :func:`open_familiar`, so the
terminal talks to exactly the familiar the platforms do.

Nothing here talks to a network at import time; every endpoint comes from
:class:`~familiar_connect.settings.Settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from familiar_connect.character import Character, LLMCallConfig
from familiar_connect.conversation.context import ContextBuilder
from familiar_connect.conversation.memory_tools import memory_tools
from familiar_connect.conversation.orchestrator import Orchestrator
from familiar_connect.conversation.tools import ToolRegistry
from familiar_connect.conversation.turn import TurnRunner
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.core.policy import (
    AccessPolicy,
    BudgetLedger,
    InputLimiter,
    RateLimiter,
    TurnPolicy,
)
from familiar_connect.core.prompt import PromptBudget
from familiar_connect.dashboard import DashboardService
from familiar_connect.endpoints import apply_library_endpoints
from familiar_connect.errors import ConfigError, StorageError
from familiar_connect.llm.openrouter import OpenRouterClient
from familiar_connect.llm.types import CallSettings, UsageReport
from familiar_connect.logs import log_redactor, safe_error_text
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.layout import LAYOUT_DIRS
from familiar_connect.memory.store import MemoryStore
from familiar_connect.memory.writer import MemoryWriter
from familiar_connect.privacy import PrivacyService
from familiar_connect.settings import Settings
from familiar_connect.speech.factory import build_speech
from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.history import HistoryStore, HistoryWriter
from familiar_connect.storage.notes_index import NotesIndex, RebuildResult
from familiar_connect.storage.privacy import PrivacyStore
from familiar_connect.storage.subscriptions import SubscriptionStore
from familiar_connect.storage.usage import UsageRecord, UsageStore
from familiar_connect.storage.watermarks import WatermarkStore
from familiar_connect.supervisor import Service, Supervisor

__all__ = ["App", "Familiar", "FunctionService", "build_app", "call_settings", "open_familiar"]

if TYPE_CHECKING:  # the platforms load only when configured (start-up time, RSS)
    from familiar_connect.platforms.discord import DiscordService
    from familiar_connect.platforms.discord.voice import VoiceConfig, VoiceManager
    from familiar_connect.speech.stt.base import Transcriber
    from familiar_connect.speech.tts.base import Synthesizer

log = structlog.get_logger(__name__)

# The familiar's own author id in history (its replies), per process.
FAMILIAR_AUTHOR_ID = "familiar"


@dataclass
class FunctionService:
    """A service made from a coroutine function (``run`` until cancelled)."""

    name: str
    target: Callable[[], Awaitable[None]]

    async def run(self) -> None:
        await self.target()


def call_settings(config: LLMCallConfig) -> CallSettings:
    """The LLM client's per-call settings for one call site of the character."""
    return CallSettings(
        model=config.model,
        fallback_models=tuple(config.fallback_models),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        reasoning_effort=config.reasoning_effort,
    )


@dataclass
class Familiar:
    """Every long-lived part of one running familiar."""

    settings: Settings
    character: Character
    db: Database
    memory: AsyncMemoryStore
    notes_index: NotesIndex
    history: HistoryStore
    history_writer: HistoryWriter
    usage: UsageStore
    privacy: PrivacyStore
    privacy_service: PrivacyService
    subscriptions: SubscriptionStore
    llm: OpenRouterClient
    tools: ToolRegistry
    orchestrator: Orchestrator
    memory_writer: MemoryWriter | None
    services: list[Service] = field(default_factory=list)
    subscription_checks: list[Callable[[ConversationKey], bool]] = field(default_factory=list)

    def is_subscribed(self, key: ConversationKey) -> bool:
        """Whether any platform hears everything in ``key`` (the terminal always does)."""
        if key.platform is Platform.TERMINAL:
            return True
        return any(check(key) for check in self.subscription_checks)


def _build_policy(character: Character, opted_out: set[tuple[str, str]]) -> TurnPolicy:
    policy = character.config.policy
    allow = {
        platform: (frozenset(ids) if ids else None)
        for platform, ids in policy.allow.model_dump().items()
    }
    deny = {platform: frozenset(ids) for platform, ids in policy.deny.model_dump().items()}
    return TurnPolicy(
        access=AccessPolicy(allow=allow, deny=deny, opted_out={f"{p}:{u}" for p, u in opted_out}),
        rate_limiter=RateLimiter(policy.rate_per_minute / 60.0, policy.burst),
        budget=BudgetLedger(
            per_user_daily_tokens=policy.user_daily_tokens or None,
            per_user_daily_cost_usd=policy.user_daily_cost_usd or None,
            familiar_daily_tokens=policy.familiar_daily_tokens or None,
            familiar_daily_cost_usd=policy.familiar_daily_cost_usd or None,
        ),
        input_limiter=InputLimiter(character.config.limits.max_input_chars),
    )


def _prompt_budget(character: Character) -> PromptBudget:
    limits = character.config.limits
    return PromptBudget(
        max_total_tokens=limits.prompt_max_tokens,
        max_persona_tokens=limits.persona_max_tokens,
        max_memory_tokens=max(limits.memory_max_tokens, 64),
        max_history_tokens=max(limits.history_max_tokens, 64),
        max_input_tokens=max(limits.max_input_chars // 2, 160),
        max_item_chars=limits.max_input_chars,
    )


def _prepare_dirs(familiar_dir: Path) -> Path:
    familiar_dir.mkdir(parents=True, exist_ok=True)
    # The familiar's files are the operator's alone.
    os.chmod(familiar_dir, 0o700)
    memory_root = familiar_dir / "memory"
    for name in LAYOUT_DIRS:
        (memory_root / name).mkdir(parents=True, exist_ok=True)
    return memory_root


async def _rebuild_notes_index(store: MemoryStore, notes_index: NotesIndex) -> RebuildResult:
    """Bring the search index in line with every note on disk (the start-up service).

    ``iter_notes`` is uncapped, unlike the model's glob. The rebuild pulls from it in
    worker threads a chunk at a time, so the files are read off the event loop and
    never all held in memory at once.
    """
    return await notes_index.rebuild(store.iter_notes())


@contextlib.asynccontextmanager
async def open_familiar(settings: Settings, character: Character) -> AsyncIterator[Familiar]:
    """Open every part of the familiar; close all of it when the block ends.

    Raises:
        StorageError, MigrationError: the database cannot be opened.
        MemoryStoreError, AuditLogError: the memory directory cannot be used.
    """
    # Whatever configured logging, text shown to people is scrubbed of these secrets too.
    log_redactor().add_secrets(settings.secret_values())
    async with contextlib.AsyncExitStack() as stack:
        # Library globals (discord.py, twitchio) point at the configured endpoints for as long
        # as the familiar is open; set once here so restarting one adapter never resets another's.
        stack.callback(apply_library_endpoints(settings))
        familiar_dir = settings.familiar_dir
        memory_root = await asyncio.to_thread(_prepare_dirs, familiar_dir)
        db = await open_database(familiar_dir / "familiar.db")
        stack.push_async_callback(db.close)

        store = await asyncio.to_thread(
            MemoryStore, memory_root, audit_path=familiar_dir / "audit.jsonl"
        )
        memory = AsyncMemoryStore(store)
        notes_index = NotesIndex(db)
        stack.push_async_callback(notes_index.aclose)
        memory.add_write_listener(notes_index.listener_for(asyncio.get_running_loop()))

        history = HistoryStore(db)
        history_writer = HistoryWriter(history)
        stack.push_async_callback(_close_history_writer, history_writer)
        usage = UsageStore(db)
        privacy = PrivacyStore(db)
        subscriptions = SubscriptionStore(db)
        watermarks = await WatermarkStore.create(db)

        llm = OpenRouterClient(
            base_url=settings.openrouter_base_url,
            api_key=(
                settings.openrouter_api_key.get_secret_value()
                if settings.openrouter_api_key is not None
                else None
            ),
            connect_timeout_s=settings.llm_connect_timeout_s,
            read_timeout_s=settings.llm_read_timeout_s,
            referer=settings.openrouter_referer,
            title=settings.openrouter_title,
            max_retries=settings.llm_max_retries,
            # One stream per conversation answering at once; httpx's default of 20 queues the rest.
            max_connections=settings.llm_max_connections,
        )
        stack.push_async_callback(llm.aclose)

        limits = character.config.limits
        tools = ToolRegistry(memory_root=memory_root)
        for tool in memory_tools(memory, notes_index):
            tools.register(tool)
        llm_config = character.config.llm
        calls = {
            "reply": call_settings(llm_config.reply),
            "voice_reply": call_settings(llm_config.voice_reply),
            "memory_writer": call_settings(llm_config.memory_writer),
        }
        policy = _build_policy(character, await privacy.opted_out_users())
        today = datetime.now(UTC).date()
        today_usage = await usage.totals_for_day(today)
        policy.budget.charge_familiar(today, today_usage.tokens, today_usage.cost_usd)

        def opted_out(platform: str, user_id: str) -> bool:
            return policy.access.is_opted_out(f"{platform}:{user_id}")

        async def record_writer_usage(report: UsageReport) -> None:
            cost = report.cost_usd or 0.0
            policy.budget.charge_familiar(datetime.now(UTC).date(), report.total_tokens, cost)
            await usage.record(
                UsageRecord(
                    created_at=datetime.now(UTC),
                    call_site="memory_writer",
                    model=report.model or calls["memory_writer"].model,
                    prompt_tokens=report.prompt_tokens,
                    completion_tokens=report.completion_tokens,
                    cost_usd=cost,
                    platform="system",
                    user_id="",
                    ttft_ms=report.ttft_ms,
                )
            )

        writer_config = character.config.memory_writer
        memory_writer = (
            MemoryWriter(
                llm=llm,
                call=calls["memory_writer"],
                store=memory,
                history=history,
                watermarks=watermarks,
                familiar_name=character.display_name,
                every_n_turns=writer_config.every_n_turns,
                idle_s=writer_config.idle_s,
                exclude_author=opted_out,
                on_usage=record_writer_usage,
            )
            if writer_config.enabled
            else None
        )
        if memory_writer is not None:
            # Runs before the database closes: a pass cancelled mid-write finishes or rolls back.
            stack.push_async_callback(memory_writer.aclose)
        orchestrator = Orchestrator(
            character=character,
            familiar_user_id=FAMILIAR_AUTHOR_ID,
            runner=TurnRunner(
                llm=llm,
                tools=tools,
                max_tool_iterations=limits.max_tool_iterations,
                tool_timeout_s=limits.tool_timeout_s,
                max_tool_result_chars=limits.max_tool_result_chars,
                max_reply_chars=limits.max_reply_chars,
            ),
            context=ContextBuilder(
                character=character,
                memory=memory,
                notes_index=notes_index,
                history=history,
                budget=_prompt_budget(character),
                exclude_author=opted_out,
            ),
            policy=policy,
            calls=calls,
            history_writer=history_writer,
            usage=usage,
            note_turn=memory_writer.note_turn if memory_writer is not None else None,
            unprompted_gap_s=character.config.policy.unprompted_gap_s,
        )
        privacy_service = PrivacyService(
            store=privacy,
            history=history,
            history_writer=history_writer,
            memory=memory,
            orchestrator=orchestrator,
        )

        async def rebuild_index() -> None:
            await _rebuild_notes_index(store, notes_index)

        services: list[Service] = [
            FunctionService("orchestrator", orchestrator.run),
            FunctionService("history_writer", history_writer.run),
            FunctionService("notes_index_rebuild", rebuild_index),
        ]
        if memory_writer is not None:
            services.append(FunctionService("memory_writer", memory_writer.run))
        familiar = Familiar(
            settings=settings,
            character=character,
            db=db,
            memory=memory,
            notes_index=notes_index,
            history=history,
            history_writer=history_writer,
            usage=usage,
            privacy=privacy,
            privacy_service=privacy_service,
            subscriptions=subscriptions,
            llm=llm,
            tools=tools,
            orchestrator=orchestrator,
            memory_writer=memory_writer,
            services=services,
        )
        orchestrator.is_subscribed = familiar.is_subscribed
        yield familiar


async def _close_history_writer(writer: HistoryWriter) -> None:
    try:
        await writer.aclose()
    except StorageError as exc:
        log.error("history_not_flushed_on_close", error=str(exc))


# --- platforms -------------------------------------------------------------------------


def _discord_service(familiar: Familiar) -> Service:
    from familiar_connect.platforms.discord import DiscordService

    service = DiscordService(familiar)
    familiar.subscription_checks.append(service.is_subscribed)
    transcriber, synthesizer = build_speech(familiar.settings, familiar.character)
    if transcriber is not None and synthesizer is not None:
        attach_voice(familiar, service, transcriber, synthesizer)
    elif transcriber is not None or synthesizer is not None:
        raise ConfigError(
            "Voice needs both a speech-to-text and a text-to-speech provider: set "
            "DEEPGRAM_API_KEY and CARTESIA_API_KEY, or AZURE_SPEECH_KEY with "
            "AZURE_SPEECH_REGION (or none of them, for text only)."
        )
    return service


def attach_voice(
    familiar: Familiar,
    service: DiscordService,
    transcriber: Transcriber,
    synthesizer: Synthesizer,
    *,
    config: VoiceConfig | None = None,
) -> VoiceManager:
    """Give the Discord adapter its voice presence, wired to this familiar.

    ``config`` defaults to the character's ``[voice]`` section, with the greeting cache
    in the familiar's directory.
    """
    from familiar_connect.platforms.discord.voice import VoiceConfig, VoiceManager

    if config is None:
        config = VoiceConfig.from_character(
            familiar.character, cache_dir=familiar.settings.familiar_dir / "cache"
        )
    voice = VoiceManager(
        orchestrator=familiar.orchestrator,
        transcriber=transcriber,
        synthesizer=synthesizer,
        is_opted_out=familiar.privacy_service.is_opted_out,
        familiar_name=familiar.character.display_name,
        aliases=familiar.character.aliases,
        operator_ids=service.operator_ids,
        config=config,
        outbound=service.outbound,
        sink_stats=service.sink_stats,
    )
    service.voice = voice
    familiar.subscription_checks.append(voice.is_subscribed)
    return voice


def _twitch_service(familiar: Familiar) -> Service:
    from familiar_connect.platforms.twitch import TwitchService

    service = TwitchService(familiar)
    familiar.subscription_checks.append(service.is_subscribed)
    return service


_PROVIDER_OF_SERVICE = {"discord": "discord_gateway", "twitch": "twitch_eventsub"}
"""The dashboard provider row each adapter reports its connection to."""


def connect_adapters(services: list[Service], dashboard: DashboardService | None) -> None:
    """Bind adapters (and the voice presence) to the dashboard's provider rows; let Twitch speak."""
    if dashboard is not None:
        for service in services:
            provider_id = _PROVIDER_OF_SERVICE.get(service.name)
            if provider_id is not None and hasattr(service, "report"):
                service.report = functools.partial(dashboard.providers.report, provider_id)  # type: ignore[attr-defined]
            voice = getattr(service, "voice", None)
            if voice is not None:
                voice.attach_status(dashboard.providers.report)
    twitch = next((s for s in services if s.name == "twitch"), None)
    if twitch is None:
        return
    from familiar_connect.platforms.twitch import VoiceTarget

    discord = next((s for s in services if s.name == "discord"), None)
    voice = getattr(discord, "voice", None)
    if voice is not None:

        def voice_target() -> VoiceTarget | None:
            sink, key = voice.sink, voice.key
            if not voice.connected or sink is None or key is None:
                return None
            return VoiceTarget(key, sink)

        twitch.voice = voice_target  # type: ignore[attr-defined]


PlatformFactory = Callable[[Familiar], Service]


@dataclass
class App:
    """The familiar with its platforms, run by ``familiar run``."""

    settings: Settings
    character: Character
    platforms: dict[str, PlatformFactory] = field(default_factory=dict)
    unavailable: list[str] = field(default_factory=list)
    supervisor: Supervisor | None = None

    def has_platforms(self) -> bool:
        """At least one configured platform can run in this build."""
        return bool(self.platforms)

    def unavailable_note(self) -> str:
        """A sentence naming configured platforms this build cannot run yet, or ``""``."""
        if not self.unavailable:
            return ""
        return (
            " Configured but not available in this build yet: "
            + ", ".join(self.unavailable)
            + " (see README, Status)."
        )

    async def run(self, *, install_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM or a fatal error; close everything before returning.

        Raises:
            ConfigError, ProviderAuthError: a service hit a fatal error.
        """
        async with open_familiar(self.settings, self.character) as familiar:
            services = list(familiar.services)
            services.extend(factory(familiar) for factory in self.platforms.values())
            dashboard = DashboardService(familiar) if self.settings.dashboard_enabled else None
            if dashboard is not None:
                services.append(dashboard)
            connect_adapters(services, dashboard)
            self.supervisor = Supervisor(services, describe_error=safe_error_text)
            if dashboard is not None:
                dashboard.supervisor = self.supervisor
            loop = asyncio.get_running_loop()
            if install_signals:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(signum, self._on_signal, signum)
            try:
                log.info(
                    "familiar_ready",
                    familiar=self.settings.familiar_id,
                    services=[service.name for service in services],
                )
                await self.supervisor.run()
            finally:
                if install_signals:
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(signum)
        log.info("familiar_stopped", familiar=self.settings.familiar_id)

    def _on_signal(self, signum: int) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        if self.supervisor is not None:
            self.supervisor.stop()


def build_app(settings: Settings, character: Character) -> App:
    """The app for these settings: which platforms are configured and can run in this build."""
    app = App(settings=settings, character=character)
    if settings.discord_configured:
        app.platforms["discord"] = _discord_service
    if settings.twitch_configured:
        app.platforms["twitch"] = _twitch_service
    return app
