"""The Twitch adapter: EventSub over websocket in, the orchestrator's replies out to chat or voice.

:class:`TwitchService` is a supervised service (see :mod:`familiar_connect.supervisor`). Its
:meth:`~TwitchService.run`:

1. reads the bot's (and, when logged in, the broadcaster's) tokens from the encrypted vault,
   logs twitchio in with them (validating, refreshing an expiring one and saving the new pair
   back), and checks their scopes against the enabled features: a bot token without the chat
   scopes stops the start with a message naming them; a broadcaster token without, say,
   ``bits:read`` turns that feature off, says so, and goes on;
2. resolves the channel and subscribes to what ``[twitch]`` enables, each with the token Twitch
   requires (chat with the bot's, channel events with the broadcaster's);
3. turns what arrives into inputs without awaiting anything on the way (chat folding in
   :mod:`.chat`, event policy in :mod:`.events`, a priority inbox in :mod:`.inbox`), and lets
   :mod:`.feed` hand them to the orchestrator: ambient chat and remember-only events as
   memory, the rest together when the conversation is idle, highest priority first, answered
   in chat (:mod:`.sink`) or out loud in the voice conversation the familiar is in;
4. keeps going through twitchio's reconnects, counting them; a revoked subscription turns its
   feature off; a connection lost for good (twitchio gave up on it for ``connection_grace_s``)
   restarts the service (the supervisor backs off); a token Twitch rejects even after a refresh
   stops the process with a clear message.

Which input wants an answer reaches the orchestrator through :meth:`TwitchService.is_subscribed`
(registered in ``Familiar.subscription_checks``): it is true only for the conversation the
adapter is submitting answerable inputs to, at that moment, so ambient chat and sub-threshold
events are remembered, not answered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from familiar_connect.conversation.sinks import ReplySink
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.errors import (
    ConfigError,
    FamiliarError,
    ProviderAuthError,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeout,
    StorageError,
    VaultKeyError,
)
from familiar_connect.logs import log_redactor
from familiar_connect.platforms.twitch.chat import ChatFolder
from familiar_connect.platforms.twitch.client import (
    FamiliarTwitchClient,
    HelixChatPoster,
    subscription_payload,
    twitchio_error,
)
from familiar_connect.platforms.twitch.config import TwitchSection
from familiar_connect.platforms.twitch.events import EventPolicy, channel_input
from familiar_connect.platforms.twitch.feed import TurnFeeder, VoiceTarget
from familiar_connect.platforms.twitch.inbox import PriorityInbox
from familiar_connect.platforms.twitch.scopes import FEATURES, describe_missing, missing_scopes
from familiar_connect.platforms.twitch.sink import (
    ChatSendLimiter,
    ChatSinkStats,
    TwitchChatSink,
)
from familiar_connect.platforms.twitch.tokens import StoredToken, TwitchTokenStore
from familiar_connect.status import StatusReporter, report_status
from familiar_connect.storage.vault import Vault

if TYPE_CHECKING:
    from familiar_connect.app import Familiar

__all__ = ["TwitchService", "TwitchStatus"]

log = structlog.get_logger(__name__)

_START_TIMEOUT_S = 60.0
_MAX_BACKGROUND_TASKS = 64
_KIND_BY_SUB_TYPE = {feature.sub_type: kind for kind, feature in FEATURES.items()}


@dataclass(slots=True)
class TwitchStatus:
    """What the adapter knows about its connection (read by the dashboard and the tests).

    Attributes:
        state: ``starting``, ``ready``, ``idle`` (every subscription revoked) or ``stopped``.
        channel_id: the broadcaster's user id once resolved.
        subscribed: feature kinds subscribed.
        disabled: feature kinds turned off, with the reason (``missing_scope:...``,
            ``revoked:...``, ``not_authorised``, ``no_broadcaster_login``).
        welcomes: EventSub welcomes received (first connections and reconnects).
        reconnects: welcomes after the service was ready (session_reconnect, dropped
            connections, keepalive timeouts).
        socket_closes: EventSub sockets closed.
        revocations: subscriptions Twitch revoked.
        token_refreshes: tokens refreshed (and written back to the vault).
        token_saves_failed: refreshed tokens that could not be written back.
        submitted: inputs handed to the orchestrator, by its answer (``queued``...).
    """

    state: str = "starting"
    channel_id: str = ""
    bot_login: str = ""
    broadcaster_login: str = ""
    subscribed: list[str] = field(default_factory=list)
    disabled: dict[str, str] = field(default_factory=dict)
    welcomes: int = 0
    reconnects: int = 0
    socket_closes: int = 0
    revocations: int = 0
    token_refreshes: int = 0
    token_saves_failed: int = 0
    submitted: dict[str, int] = field(default_factory=dict)


class TwitchService:
    """Runs the Twitch client and bridges it to the familiar.

    Args:
        familiar: the running familiar (orchestrator, database, character).
        config: the ``[twitch]`` policy; defaults to the character's, or the defaults.
        voice: returns the voice conversation (:class:`~.feed.VoiceTarget`: its key and its
            reply sink) while the familiar is in one, else None.
        operator_ids: Twitch user ids treated as operators (default: the broadcaster).
        report: ``report(state=..., error=..., reconnected=...)`` for the dashboard's
            provider board.
        flush_interval_s: how often ambient chat is remembered and connections are checked.
        connection_grace_s: how long a needed EventSub connection may be missing (twitchio not
            reconnecting it) before the service fails and is restarted.

    ``voice`` and ``report`` are plain attributes too, so the app can attach them once the
    voice manager and the dashboard exist.
    """

    name = "twitch"

    def __init__(
        self,
        familiar: Familiar,
        *,
        config: TwitchSection | None = None,
        voice: Callable[[], VoiceTarget | None] | None = None,
        operator_ids: Collection[str] | None = None,
        report: StatusReporter | None = None,
        flush_interval_s: float = 0.5,
        connection_grace_s: float = 3.0,
    ) -> None:
        self.familiar = familiar
        self.settings = familiar.settings
        self.character = familiar.character
        if config is None:
            configured = getattr(familiar.character.config, "twitch", None)
            config = configured if isinstance(configured, TwitchSection) else TwitchSection()
        self.config = config
        self.voice = voice
        self._operator_ids = frozenset(operator_ids) if operator_ids is not None else None
        self.report = report
        self.flush_interval_s = flush_interval_s
        self.connection_grace_s = connection_grace_s
        self._lost_since_ns: int | None = None

        self.status = TwitchStatus()
        self.ready = asyncio.Event()
        self.sink_stats = ChatSinkStats()
        self.limiter = ChatSendLimiter(messages_per_30s=self.config.chat_messages_per_30s)
        self.inbox = PriorityInbox(
            max_items=self.config.max_pending, max_wait_s=self.config.max_wait_s
        )
        self.key: ConversationKey | None = None
        self.chat: ChatFolder | None = None
        self.events: EventPolicy | None = None
        self.client: FamiliarTwitchClient | None = None

        self._store: TwitchTokenStore | None = None
        self._poster: HelixChatPoster | None = None
        self.feeder: TurnFeeder | None = None
        self._stopping = False
        self._fatal: asyncio.Future[None] | None = None
        self._token_for: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- service ----------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe and relay until cancelled.

        Raises:
            ConfigError: Twitch is not set up (settings, master key, login, chat scopes).
            ProviderAuthError: Twitch rejected the app credentials or a token for good.
            ProviderConnectionError, ProviderTimeout, ProviderError: a connection or request
                failed (the supervisor restarts the service).

        Cancellation: the stop signal; the client, its sockets and its sessions are closed
        and refreshed tokens still being written are given a moment to finish.
        """
        loop = asyncio.get_running_loop()
        self._fatal = loop.create_future()
        self._stopping = False
        # Counters add up across restarts; what describes one connection starts afresh.
        self.status.state = "starting"
        self.status.subscribed = []
        self.status.disabled = {}
        self._token_for = {}
        self.feeder = None
        self._lost_since_ns = None
        workers: list[asyncio.Task[None]] = []
        try:
            try:
                async with asyncio.timeout(_START_TIMEOUT_S):
                    await self._start()
            except TimeoutError:
                raise ProviderTimeout(
                    "connecting to Twitch took too long", provider="twitch"
                ) from None
            self.status.state = "ready"
            self.ready.set()
            self._tell(state="connected")
            log.info(
                "twitch_ready",
                channel_id=self.status.channel_id,
                bot=self.status.bot_login,
                subscribed=self.status.subscribed,
                disabled=self.status.disabled,
            )
            assert self.feeder is not None
            workers = [
                loop.create_task(self.feeder.run(), name="twitch:feeder"),
                loop.create_task(self._flusher(), name="twitch:flusher"),
            ]
            done, _ = await asyncio.wait(
                [self._fatal, *workers], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()  # raise what ended it
        finally:
            self._stopping = True
            self.ready.clear()
            self.status.state = "stopped"
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            try:
                if self._tasks:
                    # Refreshed tokens being written must land, or the next start needs a login.
                    await asyncio.wait(list(self._tasks), timeout=5.0)
                if self.client is not None:
                    await self.client.aclose()
            finally:
                self.client = None
                if not self._fatal.done():
                    self._fatal.cancel()

    def is_subscribed(self, key: ConversationKey) -> bool:
        """Whether the orchestrator should answer ``key``'s input now (see the module docstring)."""
        feeder = self.feeder
        return feeder is not None and feeder.hear_all and key == feeder.submitting

    def snapshot(self) -> dict[str, Any]:
        """Every counter, for the dashboard (no secrets)."""
        return {
            "status": asdict(self.status),
            "chat": asdict(self.chat.stats) if self.chat is not None else {},
            "events": dict(self.events.counts) if self.events is not None else {},
            "inbox": {
                **asdict(self.inbox.stats),
                "remember_dropped": self.feeder.remember_dropped if self.feeder else 0,
                "voice_unavailable": self.feeder.voice_unavailable if self.feeder else 0,
            },
            "sends": asdict(self.sink_stats),
        }

    # --- start-up -----------------------------------------------------------------------

    def _settings_problems(self) -> list[str]:
        settings = self.settings
        problems = []
        if not settings.twitch_client_id:
            problems.append("TWITCH_CLIENT_ID: not set (the application's client id)")
        if settings.twitch_client_secret is None:
            problems.append("TWITCH_CLIENT_SECRET: not set (the application's client secret)")
        if not settings.twitch_channel:
            problems.append("TWITCH_CHANNEL: not set (the channel's login name)")
        if not settings.master_keys():
            problems.append(
                "FAMILIAR_MASTER_KEY: not set; Twitch tokens are stored encrypted with it"
            )
        return problems

    async def _load_tokens(self) -> dict[str, StoredToken]:
        try:
            self._store = TwitchTokenStore(Vault(self.familiar.db, self.settings.master_keys()))
            tokens = dict(await self._store.load_all())
            # Whatever logs (ours or a library's), these values are scrubbed from it.
            log_redactor().add_secrets(
                value for token in tokens.values() for value in token.secret_values()
            )
            return tokens
        except VaultKeyError as exc:
            raise ConfigError(
                f"The stored Twitch tokens cannot be decrypted ({exc}). Set the master key they "
                "were stored with, or log in again with `familiar twitch login`."
            ) from None

    async def _start(self) -> None:
        problems = self._settings_problems()
        if problems:
            raise ConfigError("Twitch is not set up:", problems=tuple(problems))
        tokens = await self._load_tokens()
        bot = tokens.get("bot")
        if bot is None:
            raise ConfigError(
                "No Twitch bot account is logged in. Run `familiar twitch login --as bot` "
                "(and `--as broadcaster` for follows, subscriptions, cheers and redemptions)."
            )
        wanted = self.settings.twitch_bot_login
        if wanted and wanted.lower() != bot.login.lower():
            raise ConfigError(
                f"The stored bot token belongs to {bot.login}, but TWITCH_BOT_LOGIN is {wanted}. "
                "Log the right account in with `familiar twitch login --as bot`."
            )
        broadcaster = tokens.get("broadcaster")
        secret = self.settings.twitch_client_secret
        assert secret is not None and self.settings.twitch_client_id
        client = FamiliarTwitchClient(
            client_id=self.settings.twitch_client_id,
            client_secret=secret.get_secret_value(),
            bot_id=bot.user_id,
            tokens=[bot, *([broadcaster] if broadcaster else [])],
            handler=self,
        )
        self.client = client
        await self._login(client)
        channel_id, channel_login = await self._resolve_channel(client)
        self.status.channel_id = channel_id
        self.status.bot_login = bot.login
        self._check_scopes(client, bot, broadcaster, channel_id)
        self._build_pipeline(client, bot, channel_id)
        self.status.broadcaster_login = broadcaster.login if broadcaster else channel_login
        await self._subscribe(client)

    async def _login(self, client: FamiliarTwitchClient) -> None:
        try:
            await client.login(load_tokens=True, save_tokens=False)
        except FamiliarError:
            raise
        except Exception as exc:
            raise twitchio_error(exc) from None

    async def _resolve_channel(self, client: FamiliarTwitchClient) -> tuple[str, str]:
        channel = (self.settings.twitch_channel or "").strip().lstrip("#").lower()
        try:
            if channel.isdigit():
                users = await client.fetch_users(ids=[channel])
            else:
                users = await client.fetch_users(logins=[channel])
        except Exception as exc:
            raise twitchio_error(exc, what="looking up TWITCH_CHANNEL") from None
        if not users:
            raise ConfigError(f"TWITCH_CHANNEL {channel!r} is not a Twitch account.")
        return str(users[0].id), str(users[0].name)

    def _check_scopes(
        self,
        client: FamiliarTwitchClient,
        bot: StoredToken,
        broadcaster: StoredToken | None,
        channel_id: str,
    ) -> None:
        bot_scopes = set(client.validated["bot"].scopes or ())
        missing_chat = missing_scopes(bot_scopes, FEATURES["chat"].scopes)
        if missing_chat:
            raise ConfigError(describe_missing({"chat": missing_chat}, role="bot"))
        broadcaster_scopes: set[str] | None = None
        if broadcaster is not None:
            validated = client.validated["broadcaster"]
            if str(validated.user_id) != channel_id:
                raise ConfigError(
                    f"The stored broadcaster token belongs to {validated.login}, not to the "
                    f"channel {self.settings.twitch_channel}. Log the channel's own account in "
                    "with `familiar twitch login --as broadcaster`."
                )
            broadcaster_scopes = set(validated.scopes or ())
            broadcaster_id = channel_id
        elif bot.user_id == channel_id:
            broadcaster_scopes, broadcaster_id = bot_scopes, bot.user_id
        else:
            broadcaster_id = ""
        missing: dict[str, list[str]] = {}
        for kind, feature in FEATURES.items():
            if kind == "chat" or not self.config.kind(kind).enabled:
                continue
            if feature.role == "broadcaster" and broadcaster_scopes is None:
                if feature.scopes:
                    self.status.disabled[kind] = "no_broadcaster_login"
                    continue
                self._token_for[kind] = bot.user_id  # raids need no authorisation
                continue
            lacking = missing_scopes(broadcaster_scopes or (), feature.scopes)
            if lacking:
                missing[kind] = lacking
                self.status.disabled[kind] = "missing_scope:" + ",".join(lacking)
                continue
            self._token_for[kind] = broadcaster_id
        self._token_for["chat"] = bot.user_id
        if missing:
            log.error("twitch_scopes_missing", detail=describe_missing(missing, role="broadcaster"))
        off = sorted(k for k, why in self.status.disabled.items() if why == "no_broadcaster_login")
        if off:
            log.warning(
                "twitch_broadcaster_not_logged_in",
                features_off=off,
                fix="familiar twitch login --as broadcaster",
            )

    def _build_pipeline(
        self, client: FamiliarTwitchClient, bot: StoredToken, channel_id: str
    ) -> None:
        key = ConversationKey(Platform.TWITCH, channel_id)
        self.key = key
        operators = self._operator_ids if self._operator_ids is not None else {channel_id}
        config = self.config
        self.chat = ChatFolder(
            key=key,
            bot_user_id=bot.user_id,
            familiar_name=self.character.display_name,
            aliases=self.character.aliases,
            bot_login=bot.login,
            operator_ids=operators,
            context_lines=config.context_lines,
            max_addressed=config.max_pending,
            history_lines_per_s=config.history_lines_per_s,
            ignore_prefixes=config.ignore_prefixes,
        )
        self.events = EventPolicy(config, key=key, operator_ids=operators)
        for kind, reason in self.status.disabled.items():
            self.events.disable(kind, reason)
        self._poster = HelixChatPoster(client, broadcaster_id=channel_id, bot_id=bot.user_id)
        self.feeder = TurnFeeder(
            self.familiar.orchestrator,
            key=key,
            chat=self.chat,
            events=self.events,
            inbox=self.inbox,
            config=config,
            unprompted_gap_s=self.character.config.policy.unprompted_gap_s,
            make_chat_sink=self._chat_sink,
            voice=self._voice_target,
            counts=self.status.submitted,
        )

    async def _subscribe(self, client: FamiliarTwitchClient) -> None:
        assert self.events is not None and self.key is not None
        for kind in FEATURES:
            if kind not in self._token_for or not self.config.kind(kind).enabled:
                continue
            payload = subscription_payload(
                kind, broadcaster_id=self.key.channel_id, bot_id=self._token_for["chat"]
            )
            try:
                await client.subscribe_websocket(payload, token_for=self._token_for[kind])
            except FamiliarError:
                raise
            except Exception as exc:
                error = twitchio_error(exc, what=f"subscribing to {FEATURES[kind].label}")
                if error.status != 403:
                    raise error from None
                if kind == "chat":
                    raise ConfigError(f"Twitch refused the chat subscription: {error}") from None
                self.status.disabled[kind] = "not_authorised"
                self.events.disable(kind, "not_authorised")
                log.error("twitch_subscription_refused", kind=kind, error=str(error))
                continue
            self.status.subscribed.append(kind)

    # --- twitchio callbacks (the hot path: no awaits) ------------------------------------

    def on_chat(self, message: Any) -> None:
        chat = self.chat
        if chat is None or "chat" in self.status.disabled:
            return
        if chat.ingest(message, time.monotonic_ns()) == "addressed" and self.feeder is not None:
            self.feeder.wake()

    def on_channel_event(self, kind: str, model: Any) -> None:
        events = self.events
        if events is None:
            return
        now_ns = time.monotonic_ns()
        try:
            decision = events.decide(channel_input(kind, model), now_ns)
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("twitch_event_unreadable", kind=kind, error=type(exc).__name__)
            return
        if self.feeder is not None:
            self.feeder.take_decision(decision, now_ns)

    def on_revoked(self, sub_type: str, status: str) -> None:
        kind = _KIND_BY_SUB_TYPE.get(sub_type, sub_type)
        self.status.revocations += 1
        self.status.disabled[kind] = f"revoked:{status}"
        if kind in self.status.subscribed:
            self.status.subscribed.remove(kind)
        if self.events is not None and kind in FEATURES:
            self.events.disable(kind, f"revoked:{status}")
        log.error("twitch_subscription_revoked", kind=kind, reason=status)
        self._tell(error=f"Twitch revoked the {kind} subscription ({status})")

    def on_welcome(self, session_id: str) -> None:
        self.status.welcomes += 1
        if self.ready.is_set():
            self.status.reconnects += 1
            log.info("twitch_eventsub_reconnected", reconnects=self.status.reconnects)
            self._tell(state="connected", reconnected=True)

    def on_socket_closed(self) -> None:
        self.status.socket_closes += 1

    def on_refreshed(
        self, user_id: str, access_token: str, refresh_token: str, scopes: tuple[str, ...]
    ) -> None:
        self.status.token_refreshes += 1
        log_redactor().add_secrets([access_token, refresh_token])
        log.info("twitch_token_refreshed", user_id=user_id)
        if self._store is not None:
            self._spawn(self._save_refreshed(user_id, access_token, refresh_token, scopes))

    async def _save_refreshed(
        self, user_id: str, access_token: str, refresh_token: str, scopes: tuple[str, ...]
    ) -> None:
        assert self._store is not None
        try:
            await self._store.save_refreshed(user_id, access_token, refresh_token, scopes)
        except StorageError as exc:
            self.status.token_saves_failed += 1
            log.error("twitch_token_not_saved", user_id=user_id, error=str(exc))

    # --- answers -------------------------------------------------------------------------

    def _chat_sink(self, reply_to: str | None) -> ReplySink:
        assert self._poster is not None
        return TwitchChatSink(
            self._poster,
            limiter=self.limiter,
            stats=self.sink_stats,
            reply_to=reply_to,
            max_messages=self.config.max_reply_messages,
            on_auth_failure=self._auth_failed,
            on_send_failure=self._send_failed,
        )

    def _voice_target(self) -> VoiceTarget | None:
        if self.voice is None:
            return None
        try:
            return self.voice()
        except Exception:
            log.warning("twitch_voice_lookup_failed", exc_info=True)
            return None

    # --- health ---------------------------------------------------------------------------

    async def _flusher(self) -> None:
        """Remember ambient chat and watch the connections, every ``flush_interval_s``."""
        while True:
            await asyncio.sleep(self.flush_interval_s)
            if self.feeder is not None:
                self.feeder.flush()
            self._check_connections()

    def _check_connections(self) -> None:
        client = self.client
        if client is None or self._stopping or not self.ready.is_set():
            return
        needed = {self._token_for[k] for k in self.status.subscribed if k in self._token_for}
        if not needed:
            if self.status.state != "idle":
                self.status.state = "idle"
                log.error("twitch_nothing_subscribed", disabled=self.status.disabled)
            return
        if not needed - client.connected_tokens():
            self._lost_since_ns = None
            return
        now_ns = time.monotonic_ns()
        if self._lost_since_ns is None:
            self._lost_since_ns = now_ns
        if now_ns - self._lost_since_ns >= self.connection_grace_s * 1e9:
            self._fail(
                ProviderConnectionError(
                    "Twitch closed the EventSub connection and twitchio did not reconnect",
                    provider="twitch",
                )
            )

    def _auth_failed(self, error: ProviderAuthError) -> None:
        self._fail(error)

    def _send_failed(self, error: ProviderError) -> None:
        # The connection is fine (state unchanged); the operator still sees the lost reply.
        self._tell(error=f"a chat message could not be posted: {error}")

    def _fail(self, error: BaseException) -> None:
        self._tell(state="failed", error=str(error))
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(error)

    def _tell(self, **report: Any) -> None:
        report_status(self.report, **report)

    def _spawn(self, coro: Any) -> None:
        if len(self._tasks) >= _MAX_BACKGROUND_TASKS:
            coro.close()
            log.error("twitch_background_tasks_full")
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
