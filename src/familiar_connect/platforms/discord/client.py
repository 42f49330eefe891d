"""The Discord adapter: one discord.py client for the process, messages to the orchestrator.

:class:`DiscordService` is a supervised service (see
:mod:`familiar_connect.supervisor`). It logs in, connects to the gateway
(discord.py resumes and reconnects by itself), and turns each
``MESSAGE_CREATE`` it should act on into a
:class:`~familiar_connect.core.events.TextMessage` with a
:class:`~familiar_connect.platforms.discord.sink.DiscordTextSink`.

Where the familiar listens: in subscribed channels (and threads of subscribed
channels) it hears everything; elsewhere it only hears messages that mention
it or reply to it, when the character allows that; DMs only from
``DISCORD_DM_ALLOWLIST`` (anyone else gets one polite refusal per run).

Start-up failures are translated for the operator: a rejected token is a
:class:`~familiar_connect.errors.ProviderAuthError` and missing privileged
intents a :class:`~familiar_connect.errors.ConfigError` naming them — both stop
the process with exit code 2.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
import structlog
from discord import app_commands

from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.errors import (
    ConfigError,
    ProviderAuthError,
    ProviderConnectionError,
    StorageError,
)
from familiar_connect.platforms.discord.commands import register_commands
from familiar_connect.platforms.discord.sink import DiscordTextSink, OutboundLimiter, SinkStats
from familiar_connect.platforms.discord.translate import ignore_reason, to_text_message
from familiar_connect.status import StatusReporter, report_status
from familiar_connect.storage.subscriptions import Subscription

if TYPE_CHECKING:
    from familiar_connect.app import Familiar
    from familiar_connect.platforms.discord.voice import VoiceManager

__all__ = ["DiscordService", "build_intents"]

log = structlog.get_logger(__name__)

DM_REFUSAL = (
    "Sorry, I only talk in DMs with people my operator has allowed. "
    "You can talk to me in the server instead."
)
PRIVILEGED_INTENTS_HELP = (
    "Discord refused the connection because the bot's privileged intents are not enabled. "
    "In the Discord developer portal, open your application → Bot → Privileged Gateway "
    "Intents and enable MESSAGE CONTENT INTENT and SERVER MEMBERS INTENT, then start again."
)
_MAX_REFUSED_DMS = 10_000
_MAX_BACKGROUND_TASKS = 256


def build_intents() -> discord.Intents:
    """Guilds, messages, message content and members (privileged), voice states."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.dm_messages = True
    intents.message_content = True  # privileged
    intents.members = True  # privileged
    intents.voice_states = True
    return intents


class _FamiliarClient(discord.Client):
    """discord.Client whose events go to the adapter."""

    def __init__(self, adapter: DiscordService, **options: Any) -> None:
        super().__init__(**options)
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        await self.adapter.load_subscriptions()

    async def on_ready(self) -> None:
        await self.adapter.on_ready(self)

    async def on_guild_join(self, guild: discord.Guild) -> None:
        await self.adapter.sync_commands(self, guild)

    async def on_message(self, message: discord.Message) -> None:
        self.adapter.on_message(self, message)

    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        if self.adapter.voice is not None:
            self.adapter.voice.on_voice_state_update(member, before, after)

    async def on_connect(self) -> None:
        self.adapter.on_gateway_connected()

    async def on_disconnect(self) -> None:
        self.adapter.on_gateway_disconnected()

    async def on_resumed(self) -> None:
        self.adapter.on_gateway_resumed()


class DiscordService:
    """Runs the Discord client and bridges it to the familiar.

    Args:
        familiar: the running familiar (orchestrator, stores, privacy service).
        guild_ready_timeout_s: discord.py's wait for guilds before ``on_ready``.
        outbound: per-channel send limiter.
        voice: the voice presence (``None`` when no speech providers are configured).

    ``report`` is a plain attribute: the app binds it to the dashboard's Discord gateway
    row, which then shows the connection state and counts reconnects (resumes and new
    sessions after a drop) that discord.py handles without the supervisor noticing.
    """

    name = "discord"

    def __init__(
        self,
        familiar: Familiar,
        *,
        guild_ready_timeout_s: float = 2.0,
        outbound: OutboundLimiter | None = None,
        voice: VoiceManager | None = None,
    ) -> None:
        self.familiar = familiar
        self.voice = voice
        self.settings = familiar.settings
        self.character = familiar.character
        self.operator_ids = frozenset(self.settings.discord_operator_ids)
        self.dm_allowlist = frozenset(self.settings.discord_dm_allowlist)
        self.guild_ready_timeout_s = guild_ready_timeout_s
        self.outbound = outbound or OutboundLimiter()
        self.sink_stats = SinkStats()
        self.subscribed: set[str] = set()
        self.client: _FamiliarClient | None = None
        self.ready = asyncio.Event()
        self.synced_guilds: set[int] = set()
        self._refused_dms: OrderedDict[int, None] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.report: StatusReporter | None = None
        self.gateway_disconnects = 0
        self._gateway_was_connected = False

    # --- service ------------------------------------------------------------------

    async def run(self) -> None:
        """Log in and stay connected until cancelled.

        Raises:
            ProviderAuthError: Discord rejected the token (fatal).
            ConfigError: privileged intents are not enabled (fatal).
            ProviderConnectionError: the gateway connection failed (restarted).
        """
        client = _FamiliarClient(
            self,
            intents=build_intents(),
            connector=self._connector(),
            guild_ready_timeout=self.guild_ready_timeout_s,
            chunk_guilds_at_startup=False,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        register_commands(client.tree, self)
        self.client = client
        try:
            token = self.settings.discord_token
            if token is None:
                raise ConfigError("DISCORD_TOKEN is not set")
            try:
                await client.login(token.get_secret_value())
            except discord.LoginFailure:
                raise ProviderAuthError(
                    "Discord rejected DISCORD_TOKEN (401). Copy the bot token again from the "
                    "developer portal (Bot → Reset Token) into .env.",
                    provider="discord",
                    status=401,
                ) from None
            except (aiohttp.ClientError, OSError, discord.HTTPException) as exc:
                raise ProviderConnectionError(
                    f"cannot reach Discord's API: {type(exc).__name__}", provider="discord"
                ) from exc
            try:
                await client.connect(reconnect=True)
            except discord.PrivilegedIntentsRequired:
                raise ConfigError(PRIVILEGED_INTENTS_HELP) from None
            except discord.ConnectionClosed as exc:
                if exc.code == 4004:
                    raise ProviderAuthError(
                        "Discord's gateway rejected DISCORD_TOKEN (close code 4004).",
                        provider="discord",
                        status=exc.code,
                    ) from None
                raise ProviderConnectionError(
                    f"the Discord gateway closed the connection (code {exc.code})",
                    provider="discord",
                    status=exc.code,
                ) from exc
            except (aiohttp.ClientError, OSError, discord.GatewayNotFound) as exc:
                raise ProviderConnectionError(
                    f"cannot reach Discord's gateway: {type(exc).__name__}", provider="discord"
                ) from exc
        finally:
            self.ready.clear()
            for task in list(self._tasks):
                task.cancel()
            if self.voice is not None:
                try:
                    await self.voice.aclose()
                    await self.voice.transcriber.aclose()
                    await self.voice.synthesizer.aclose()
                except Exception:
                    log.warning("voice_close_failed", exc_info=True)
            await client.close()
            self.client = None

    def _connector(self) -> aiohttp.TCPConnector | None:
        if self.settings.familiar_extra_ca_file is None:
            return None
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=str(self.settings.familiar_extra_ca_file))
        return aiohttp.TCPConnector(ssl=context)

    # --- subscriptions ------------------------------------------------------------

    async def load_subscriptions(self) -> None:
        try:
            rows = await self.familiar.subscriptions.list(platform="discord", kind="text")
        except StorageError as exc:
            log.error("discord_subscriptions_not_loaded", error=str(exc))
            return
        self.subscribed = {row.channel_id for row in rows}
        log.info("discord_subscriptions_loaded", channels=len(self.subscribed))

    def is_subscribed(self, key: ConversationKey) -> bool:
        """Whether the familiar hears everything in this conversation."""
        if key.platform is not Platform.DISCORD:
            return False
        if key.guild_id is None:
            return True  # a DM that got this far is allowed
        if key.channel_id in self.subscribed:
            return True
        client = self.client
        if client is None:
            return False
        channel = client.get_channel(int(key.channel_id))
        parent_id = getattr(channel, "parent_id", None)
        return parent_id is not None and str(parent_id) in self.subscribed

    async def subscribe(self, channel: discord.abc.GuildChannel | discord.Thread, by: str) -> bool:
        added = await self.familiar.subscriptions.add(
            Subscription(
                platform="discord",
                channel_id=str(channel.id),
                kind="text",
                guild_id=str(channel.guild.id),
                created_at=datetime.now(UTC),
                created_by=by,
            )
        )
        self.subscribed.add(str(channel.id))
        return added

    async def unsubscribe(self, channel_id: int) -> bool:
        removed = await self.familiar.subscriptions.remove("discord", str(channel_id), "text")
        self.subscribed.discard(str(channel_id))
        return removed

    # --- events -------------------------------------------------------------------

    def on_gateway_connected(self) -> None:
        """A new gateway session (the first, or a fresh one after a drop that could not resume)."""
        reconnected = self._gateway_was_connected
        self._gateway_was_connected = True
        if reconnected:
            log.info("discord_gateway_reconnected", resumed=False)
        report_status(self.report, state="connected", reconnected=reconnected)

    def on_gateway_disconnected(self) -> None:
        """The gateway connection dropped; discord.py reconnects by itself."""
        self.gateway_disconnects += 1
        log.info("discord_gateway_disconnected", disconnects=self.gateway_disconnects)
        report_status(self.report, state="reconnecting")

    def on_gateway_resumed(self) -> None:
        """The dropped session was resumed: no event was lost."""
        log.info("discord_gateway_reconnected", resumed=True)
        report_status(self.report, state="connected", reconnected=True)

    async def on_ready(self, client: _FamiliarClient) -> None:
        log.info(
            "discord_ready",
            user=str(client.user),
            guilds=len(client.guilds),
            subscribed=len(self.subscribed),
        )
        for guild in client.guilds:
            await self.sync_commands(client, guild)
        if self.settings.discord_sync_commands_globally:
            try:
                await client.tree.sync()
                log.info("discord_commands_synced_globally")
            except discord.HTTPException as exc:
                log.error("discord_command_sync_failed", scope="global", status=exc.status)
        self.ready.set()

    async def sync_commands(self, client: _FamiliarClient, guild: discord.Guild) -> None:
        """Make the slash commands available in ``guild`` at once (guild sync is instant)."""
        if guild.id in self.synced_guilds:
            return
        client.tree.copy_global_to(guild=guild)
        try:
            await client.tree.sync(guild=guild)
        except discord.HTTPException as exc:
            log.error("discord_command_sync_failed", guild_id=guild.id, status=exc.status)
            return
        self.synced_guilds.add(guild.id)
        log.info("discord_commands_synced", guild_id=guild.id)

    def on_message(self, client: discord.Client, message: discord.Message) -> None:
        """Route one message; never raises (a bad message must not stop the gateway)."""
        received_ns = time.monotonic_ns()
        bot = client.user
        if bot is None:
            return
        reason = ignore_reason(message, bot_user_id=bot.id)
        if reason is not None:
            return
        if message.guild is None:
            if str(message.author.id) not in self.dm_allowlist:
                self._refuse_dm(message)
                return
        else:
            event_key = str(message.channel.id)
            parent = getattr(message.channel, "parent_id", None)
            subscribed = event_key in self.subscribed or (
                parent is not None and str(parent) in self.subscribed
            )
            addressed = any(user.id == bot.id for user in message.mentions) or (
                message.reference is not None
                and isinstance(message.reference.resolved, discord.Message)
                and message.reference.resolved.author.id == bot.id
            )
            outside_ok = self.character.config.policy.answer_mentions_outside_subscriptions
            if not subscribed and not (addressed and outside_ok):
                return
        event = to_text_message(
            message,
            bot_user_id=bot.id,
            operator_ids=self.operator_ids,
            received_ns=received_ns,
        )
        sink = DiscordTextSink(
            message.channel, reply_to=message, limiter=self.outbound, stats=self.sink_stats
        )
        result = self.familiar.orchestrator.submit(event, sink)
        log.debug("discord_message_routed", channel_id=message.channel.id, result=result)

    def _refuse_dm(self, message: discord.Message) -> None:
        author_id = message.author.id
        if author_id in self._refused_dms:
            return
        self._refused_dms[author_id] = None
        if len(self._refused_dms) > _MAX_REFUSED_DMS:
            self._refused_dms.popitem(last=False)
        log.info("discord_dm_refused", user_id=author_id)
        self.spawn(self._send_refusal(message.channel))

    async def _send_refusal(self, channel: discord.abc.Messageable) -> None:
        try:
            await channel.send(DM_REFUSAL, allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException as exc:
            log.warning("discord_dm_refusal_failed", status=exc.status)

    def spawn(self, coro: Any) -> None:
        """Run a small side task (owned here, cancelled on stop, bounded in number)."""
        if len(self._tasks) >= _MAX_BACKGROUND_TASKS:
            coro.close()
            log.warning("discord_background_tasks_full")
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
