"""Discord voice: join and leave, hear each speaker, answer out loud, stop when talked over.

:class:`VoiceManager` owns the process's single voice connection (a
``discord.ext.voice_recv.VoiceRecvClient``) and wires its parts together::

    join(channel) ─▶ VoiceRecvClient ─▶ listen(SpeakerSink)      receive  (voice_receive.py)
                                      ├ DaveReceiveGlue           DAVE      (dave.py)
                                      └ PlaybackLane(vc.play)     playback  (playback.py)
    VoiceListener ── TurnDetected ─▶ Utterance ─▶ orchestrator.submit(…, VoiceReplySink)
                  └─ SpeechOnset ──▶ barge-in: sink.interrupt() + orchestrator.cancel(key)

- **One connection per process.** A second :meth:`VoiceManager.join` elsewhere
  is refused (``"busy"``); the same channel again is ``"already_here"``.
- **Auto-leave** once the channel has had no humans for ``auto_leave_after_s``;
  a kick or a deleted channel is noticed and cleaned up the same way. Moves
  are followed (the conversation key is the current channel).
- **A lost connection is rejoined.** When the voice websocket drops (a 1006,
  4006, 4015...), discord.py reconnects in the background, but with
  voice-recv listening its UDP reader can stay blocked on the old socket, so
  the handshake never finishes and the familiar would sit in the channel deaf
  and mute. A connection that is not back within ``reconnect_grace_s`` is
  torn down and joined afresh; if that fails, the linked text channel is told.
- **Speech-to-text refusing its key** turns listening off for the connection
  (never retried) and the linked text channel is told once.
- **Privacy**: audio of users who opted out is dropped on the receive thread,
  before any provider sees it; one who opts out mid-sentence has their
  stream closed and pending words forgotten.
- **Barge-in**: a :class:`~familiar_connect.core.turns.SpeechOnset` (enough
  voiced audio or enough substantive words) while the familiar is speaking or
  generating stops playback within a frame and cancels the turn (LLM stream,
  TTS context); the sink records only the played words. While the familiar is
  busy, a turn made only of back-channel words ("mhm", "yeah") is not
  submitted, so it cannot interrupt either.
- **Greeting**: optional, synthesised once and cached on disk, played on join.

Threading: loop only, except the receive sink (see :mod:`.voice_receive`).

Cancellation: :meth:`VoiceManager.join` may be cancelled (a half-made
connection is disconnected); :meth:`VoiceManager.leave` and
:meth:`VoiceManager.aclose` should run to completion (call them in ``finally``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import re
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import discord
import structlog
from discord.ext import voice_recv

from familiar_connect.core.events import Author, ConversationKey, Platform, Utterance
from familiar_connect.core.turns import SpeechOnset, TurnDetected
from familiar_connect.errors import ProviderConnectionError
from familiar_connect.platforms.discord.dave import DaveReceiveGlue
from familiar_connect.platforms.discord.playback import PlaybackLane
from familiar_connect.platforms.discord.sink import DiscordTextSink, OutboundLimiter, SinkStats
from familiar_connect.platforms.discord.voice_receive import (
    ListenConfig,
    ReceiveStats,
    SpeakerSink,
    VoiceListener,
)
from familiar_connect.platforms.discord.voice_sink import VoiceReplySink
from familiar_connect.speech.stt.base import Transcriber
from familiar_connect.speech.tts.base import AudioChunk, Synthesizer
from familiar_connect.status import StatusReporter, report_status

if TYPE_CHECKING:
    from familiar_connect.character import Character
    from familiar_connect.conversation.orchestrator import Orchestrator

__all__ = ["JoinResult", "VoiceConfig", "VoiceManager", "VoiceStats"]

log = structlog.get_logger(__name__)

JoinResult = Literal["joined", "already_here", "busy"]

_MAX_TASKS = 64
STT_REFUSED_NOTICE = (
    "I can't hear anyone in voice right now: the speech-to-text service refused my key. "
    "The operator can find why in the log; I still read text here."
)
VOICE_LOST_NOTICE = (
    "I lost my voice connection and couldn't get back in. Use /join-voice to bring me back."
)
_MAX_GREETING_BYTES = 15 * 48_000 * 2  # 15 s of 48 kHz mono s16le
_WORD = re.compile(r"[\w'-]+")


@dataclass(frozen=True, slots=True)
class VoiceConfig:
    """Knobs of the voice presence (see ``docs/voice.md``).

    Attributes:
        auto_leave_after_s: leave once the channel has had no humans this long.
        connect_timeout_s: give up joining after this long.
        disconnect_timeout_s: bound on waiting for Discord to confirm a leave.
        monitor_interval_s: how often presence is re-checked without an event.
        reconnect_grace_s: how long a dropped connection may stay down while discord.py
            reconnects by itself before it is torn down and joined afresh.
        stats_interval_s: how often the DAVE and receive counters are logged.
        playback_buffer_s: synthesised audio buffered per reply at most.
        max_keyterms: names sent to STT for biasing.
        greeting: said on joining; empty for none.
        greeting_cache_dir: where the synthesised greeting is cached (``None``: not cached).
        listen: the receive side's knobs (STT streams, turn detection).
    """

    auto_leave_after_s: float = 120.0
    connect_timeout_s: float = 20.0
    disconnect_timeout_s: float = 5.0
    monitor_interval_s: float = 1.0
    reconnect_grace_s: float = 10.0
    stats_interval_s: float = 60.0
    playback_buffer_s: float = 10.0
    max_keyterms: int = 50
    greeting: str = ""
    greeting_cache_dir: Path | None = None
    listen: ListenConfig = field(default_factory=ListenConfig)

    @classmethod
    def from_character(
        cls, character: Character, *, cache_dir: Path | None = None, **overrides: Any
    ) -> VoiceConfig:
        """The config for a familiar's ``[voice]`` table (plus explicit overrides)."""
        voice = character.config.voice
        options: dict[str, Any] = {
            "auto_leave_after_s": voice.auto_leave_after_s,
            "greeting": voice.greeting,
            "greeting_cache_dir": cache_dir,
        }
        options.update(overrides)
        return cls(**options)


@dataclass(slots=True)
class VoiceStats:
    """Counters of the voice presence (monotonic since start)."""

    joins: int = 0
    leaves: int = 0
    connections_lost: int = 0
    rejoins: int = 0
    rejoin_failures: int = 0
    stt_refused: int = 0
    utterances: int = 0
    barge_ins: int = 0
    backchannels_while_busy: int = 0
    receive: ReceiveStats = field(default_factory=ReceiveStats)


@dataclass(slots=True)
class _Connection:
    vc: voice_recv.VoiceRecvClient
    glue: DaveReceiveGlue
    lane: PlaybackLane
    sink: VoiceReplySink
    listener: VoiceListener
    text_channel: discord.abc.Messageable | None = None
    authors: dict[int, Author] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    monitor: asyncio.Task[None] | None = None
    closed: bool = False

    @property
    def key(self) -> ConversationKey:
        return ConversationKey(
            Platform.DISCORD, str(self.vc.channel.id), guild_id=str(self.vc.guild.id)
        )

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        if self.closed or len(self.tasks) >= _MAX_TASKS:
            coro.close()
            log.warning("voice_task_refused", name=name, closed=self.closed)
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class VoiceManager:
    """The familiar's voice presence: one connection, per-speaker STT, spoken replies.

    Args:
        orchestrator: receives utterances (``submit``) and barge-ins (``cancel``).
        transcriber: opens one streaming STT session per speaker (the per-speaker factory).
        synthesizer: speaks replies (one warm connection per process).
        is_opted_out: ``(platform, user_id) -> bool``; called on the receive thread,
            so it must be a plain lookup (``PrivacyService.is_opted_out`` is).
        familiar_name / aliases: keyterms for STT (the members' names are added).
        operator_ids: Discord user ids marked as operators on their utterances.
        config: knobs.
        outbound / sink_stats: the Discord adapter's text limiter and counters, used
            for text fallbacks and notices in the linked text channel.
    """

    def __init__(
        self,
        *,
        orchestrator: Orchestrator,
        transcriber: Transcriber,
        synthesizer: Synthesizer,
        is_opted_out: Callable[[str, str], bool],
        familiar_name: str,
        aliases: Sequence[str] = (),
        operator_ids: Collection[str] = (),
        config: VoiceConfig | None = None,
        outbound: OutboundLimiter | None = None,
        sink_stats: SinkStats | None = None,
    ) -> None:
        self.orchestrator = orchestrator
        self.transcriber = transcriber
        self.synthesizer = synthesizer
        self.is_opted_out = is_opted_out
        self.familiar_name = familiar_name
        self.aliases = tuple(aliases)
        self.operator_ids = frozenset(operator_ids)
        self.config = config or VoiceConfig()
        self.outbound = outbound or OutboundLimiter()
        self.sink_stats = sink_stats or SinkStats()
        self.stats = VoiceStats()
        self.report: StatusReporter | None = None
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._rejoin_task: asyncio.Task[None] | None = None
        self._closing = False

    # --- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Joined (the voice client may be reconnecting underneath)."""
        return self._conn is not None and not self._conn.closed

    @property
    def channel(self) -> discord.abc.Connectable | None:
        """The voice channel the familiar is in."""
        return self._conn.vc.channel if self._conn is not None else None

    @property
    def voice_client(self) -> voice_recv.VoiceRecvClient | None:
        return self._conn.vc if self._conn is not None else None

    @property
    def sink(self) -> VoiceReplySink | None:
        """The voice conversation's reply sink."""
        return self._conn.sink if self._conn is not None else None

    @property
    def listener(self) -> VoiceListener | None:
        """The receive side of the current connection."""
        return self._conn.listener if self._conn is not None else None

    @property
    def dave(self) -> DaveReceiveGlue | None:
        """The receive glue of the current connection (its counters)."""
        return self._conn.glue if self._conn is not None else None

    @property
    def key(self) -> ConversationKey | None:
        """The voice conversation's key."""
        return self._conn.key if self._conn is not None else None

    def is_subscribed(self, key: ConversationKey) -> bool:
        """While joined, the familiar hears everything said in its voice channel."""
        conn = self._conn
        return conn is not None and not conn.closed and key == conn.key

    def keyterms(self) -> list[str]:
        """The familiar's names and the voice members' display names, for STT biasing."""
        terms = [self.familiar_name, *self.aliases]
        conn = self._conn
        if conn is not None:
            for member in getattr(conn.vc.channel, "members", []):
                if not member.bot:
                    terms.append(member.display_name)
        unique = list(dict.fromkeys(term[:50] for term in terms if term))
        return unique[: self.config.max_keyterms]

    # --- join / leave ---------------------------------------------------------------------------

    async def join(
        self,
        channel: discord.VoiceChannel | discord.StageChannel,
        *,
        text_channel: discord.abc.Messageable | None = None,
    ) -> JoinResult:
        """Join ``channel``, listen and answer there; ``text_channel`` gets text fallbacks.

        Returns:
            ``"joined"``, ``"already_here"`` or ``"busy"`` (connected elsewhere).

        Raises:
            ProviderConnectionError: the voice connection could not be made.
            VoiceReceiveUnsupported: voice-recv's internals changed (see :mod:`.dave`).
        """
        async with self._lock:
            conn = self._conn
            if conn is not None:
                if not conn.closed and conn.vc.is_connected():
                    return "already_here" if conn.vc.channel.id == channel.id else "busy"
                await self._teardown(conn, reason="stale")
            await self._drop_stale(channel.guild)
            try:
                vc = await channel.connect(
                    cls=voice_recv.VoiceRecvClient,
                    timeout=self.config.connect_timeout_s,
                    reconnect=True,
                )
            except (
                TimeoutError,
                discord.ClientException,
                discord.ConnectionClosed,
                OSError,
            ) as exc:
                await self._drop_stale(channel.guild)
                raise ProviderConnectionError(
                    f"could not join the voice channel: {type(exc).__name__}",
                    provider="discord_voice",
                ) from exc
            except asyncio.CancelledError:
                await asyncio.shield(self._drop_stale(channel.guild))
                raise
            try:
                conn = self._wire(vc, text_channel)
            except BaseException:
                await asyncio.shield(self._drop_stale(channel.guild))
                raise
            self._conn = conn
            self.stats.joins += 1
            self._report("discord_voice", state="connected")
            conn.monitor = asyncio.get_running_loop().create_task(
                self._monitor(conn), name="voice:monitor"
            )
            conn.spawn(self._log_stats(conn), name="voice:stats")
            if self.config.greeting:
                conn.spawn(self._greet(conn), name="voice:greeting")
            log.info("voice_joined", guild_id=vc.guild.id, channel_id=vc.channel.id)
            return "joined"

    async def _drop_stale(self, guild: discord.Guild) -> None:
        """Disconnect a voice client left behind by a failed or cancelled join."""
        stale = guild.voice_client
        if stale is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.disconnect_timeout_s):
                await stale.disconnect(force=True)

    def _wire(
        self, vc: voice_recv.VoiceRecvClient, text_channel: discord.abc.Messageable | None
    ) -> _Connection:
        listen = self.config.listen
        # Callbacks only run on the loop after this method returns, but a failed
        # install below must not leave them pointing at nothing.
        box: list[_Connection] = []

        def audio(*frame: Any) -> None:
            if box:
                self._audio(box[0], *frame)

        listener = VoiceListener(
            self.transcriber,
            keyterms=self.keyterms,
            on_onset=lambda onset: self._onset(box[0], onset) if box else None,
            on_turn=lambda turn: self._turn(box[0], turn) if box else None,
            config=listen,
            stats=self.stats.receive,
            on_stt_disabled=lambda provider: self._stt_refused(box[0], provider) if box else None,
        )
        receiver = SpeakerSink(
            audio,
            loop=asyncio.get_running_loop(),
            is_opted_out=self.is_opted_out,
            stats=self.stats.receive,
            max_pending_frames=listen.max_pending_frames,
        )
        lane = PlaybackLane(vc.play, max_buffer_s=self.config.playback_buffer_s)
        post = self._poster(text_channel) if text_channel is not None else None
        sink = VoiceReplySink(
            self.synthesizer, lane, post_text=post, on_tts_failure=self._tts_failed
        )
        vc.listen(receiver)
        glue = DaveReceiveGlue.install(vc)
        conn = _Connection(
            vc=vc, glue=glue, lane=lane, sink=sink, listener=listener, text_channel=text_channel
        )
        box.append(conn)
        return conn

    def _poster(
        self, channel: discord.abc.Messageable
    ) -> Callable[[str], Coroutine[Any, Any, None]]:
        async def post(text: str) -> None:
            sink = DiscordTextSink(
                channel, reply_to=None, limiter=self.outbound, stats=self.sink_stats
            )
            await sink.end(text)

        return post

    async def leave(self, *, reason: str = "command") -> bool:
        """Leave voice. Returns whether the familiar was connected."""
        async with self._lock:
            conn = self._conn
            if conn is None:
                return False
            await self._teardown(conn, reason=reason)
            return True

    async def aclose(self) -> None:
        """Leave (shutdown). The providers belong to the caller and stay open."""
        self._closing = True
        task = self._rejoin_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.leave(reason="shutdown")

    async def _teardown(self, conn: _Connection, *, reason: str) -> None:
        """Stop speaking and listening, then disconnect. Caller holds ``self._lock``."""
        if conn.closed:
            if self._conn is conn:
                self._conn = None
            return
        conn.closed = True
        key = conn.key
        conn.lane.stop()
        self.orchestrator.cancel(key)
        current = asyncio.current_task()
        if conn.monitor is not None and conn.monitor is not current:
            conn.monitor.cancel()
        for task in list(conn.tasks):
            if task is not current:
                task.cancel()
        await conn.listener.aclose()
        with contextlib.suppress(Exception):
            await conn.sink.cancel()
        conn.glue.log_stats(channel_id=key.channel_id, reason=reason)
        conn.glue.uninstall()
        vc = conn.vc
        if vc.is_connected() or vc in vc.client.voice_clients:
            try:
                async with asyncio.timeout(self.config.disconnect_timeout_s):
                    await vc.disconnect(force=True)
            except (TimeoutError, discord.ClientException, OSError) as exc:
                log.warning("voice_disconnect_incomplete", error=type(exc).__name__)
        pending = [t for t in (conn.monitor, *conn.tasks) if t is not None and t is not current]
        if pending:
            await asyncio.wait(pending, timeout=self.config.disconnect_timeout_s)
        if self._conn is conn:
            self._conn = None
        self.stats.leaves += 1
        if reason != "connection_lost":
            self._report("discord_voice", state="idle")
        log.info("voice_left", channel_id=key.channel_id, reason=reason)

    # --- presence ---------------------------------------------------------------------------------

    def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        """Wire from the client's ``on_voice_state_update``: re-check presence at once."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        channel_id = getattr(conn.vc.channel, "id", None)
        touched = {getattr(before.channel, "id", None), getattr(after.channel, "id", None)}
        if channel_id in touched or member.id == conn.vc.user.id:
            conn.wake.set()

    async def _monitor(self, conn: _Connection) -> None:
        """Humans gone for ``auto_leave_after_s`` → leave; kicked or channel gone → clean up;
        connection down for ``reconnect_grace_s`` → join afresh."""
        alone_since: float | None = None
        down_since: float | None = None
        while not conn.closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.monitor_interval_s):
                    await conn.wake.wait()
            conn.wake.clear()
            vc = conn.vc
            if vc not in vc.client.voice_clients or vc.channel is None:
                async with self._lock:
                    await self._teardown(conn, reason="disconnected")
                return
            now = time.monotonic()
            if _voice_up(vc):
                down_since = None
            elif down_since is None:
                # A move or a resume is down for a moment too; discord.py gets a grace period.
                down_since = now
                log.info("voice_connection_down", channel_id=vc.channel.id)
            elif now - down_since >= self.config.reconnect_grace_s:
                self.stats.connections_lost += 1
                self._report("discord_voice", state="reconnecting", error="voice connection lost")
                log.warning(
                    "voice_connection_lost",
                    channel_id=vc.channel.id,
                    down_s=round(now - down_since, 2),
                )
                self._start_rejoin(conn)
                return
            humans = {m.id for m in getattr(vc.channel, "members", []) if not m.bot}
            for user_id in [u for u in conn.listener.speakers if u not in humans]:
                conn.spawn(
                    conn.listener.drop_speaker(user_id, keep_words=True),
                    name=f"voice:speaker-left:{user_id}",
                )
            for user_id in list(conn.authors):
                if self.is_opted_out(Platform.DISCORD.value, str(user_id)):
                    self._forget(conn, user_id)
            if humans:
                alone_since = None
            elif alone_since is None:
                alone_since = now
            elif now - alone_since >= self.config.auto_leave_after_s:
                async with self._lock:
                    await self._teardown(conn, reason="alone")
                return

    # --- lost connections ------------------------------------------------------------------------

    def _start_rejoin(self, conn: _Connection) -> None:
        if self._closing or (self._rejoin_task is not None and not self._rejoin_task.done()):
            return
        self._rejoin_task = asyncio.get_running_loop().create_task(
            self._rejoin(conn), name="voice:rejoin"
        )

    async def _rejoin(self, conn: _Connection) -> None:
        """Tear down a connection that did not come back, and join its channel afresh."""
        async with self._lock:
            if self._conn is not conn or conn.closed:
                return
            channel = conn.vc.channel
            _stop_reconnecting(conn.vc)
            await self._teardown(conn, reason="connection_lost")
        if self._closing or not isinstance(channel, discord.VoiceChannel | discord.StageChannel):
            return
        try:
            result = await self.join(channel, text_channel=conn.text_channel)
        except Exception as exc:  # whatever failed, the people in the channel are told
            self.stats.rejoin_failures += 1
            self._report(
                "discord_voice", state="failed", error=f"rejoin failed: {type(exc).__name__}"
            )
            log.warning("voice_rejoin_failed", channel_id=channel.id, error=type(exc).__name__)
            await conn.sink.notice(VOICE_LOST_NOTICE)
            return
        self.stats.rejoins += 1
        self._report("discord_voice", reconnected=True)
        log.info("voice_rejoined", channel_id=channel.id, result=result)

    def _stt_refused(self, conn: _Connection, provider: str) -> None:
        self.stats.stt_refused += 1
        self._report("stt", state="failed", error=f"{provider} refused the credentials")
        conn.spawn(conn.sink.notice(STT_REFUSED_NOTICE), name="voice:stt-refused-notice")
        log.warning("voice_listening_off", provider=provider, channel_id=conn.key.channel_id)

    # --- status ----------------------------------------------------------------------------------

    def attach_status(self, report: StatusReporter) -> None:
        """Report to the dashboard: ``report(provider_id, state=..., error=..., reconnected=...)``.

        The voice presence reports the ``discord_voice`` row, listening failures and the
        text-to-speech errors of replies; a transcriber with its own ``report`` attribute
        (Deepgram: reconnects) gets the ``stt`` row.
        """
        self.report = report
        if hasattr(self.transcriber, "report"):
            self.transcriber.report = functools.partial(report, "stt")

    def _report(self, provider_id: str, **fields: Any) -> None:
        report_status(self.report, provider_id, **fields)

    def _tts_failed(self, error: BaseException) -> None:
        self._report("tts", error=f"{type(error).__name__}: {error}")

    async def _log_stats(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            receive = self.stats.receive
            conn.glue.log_stats(
                channel_id=getattr(conn.vc.channel, "id", None),
                frames_in=receive.frames_in,
                frames_dropped_overflow=receive.frames_dropped_overflow,
                turns=receive.turns,
                utterances=self.stats.utterances,
                barge_ins=self.stats.barge_ins,
            )

    # --- audio, turns, barge-in ---------------------------------------------------------------

    def _audio(
        self,
        conn: _Connection,
        user_id: int,
        name: str,
        display: str,
        mono: bytes,
        level: float,
        t_ns: int,
    ) -> None:
        if conn.closed:
            return
        if self.is_opted_out(Platform.DISCORD.value, str(user_id)):
            self._forget(conn, user_id)
            return
        if user_id not in conn.authors:
            conn.authors[user_id] = Author(
                Platform.DISCORD,
                str(user_id),
                name,
                display_name=display if display != name else None,
                is_operator=str(user_id) in self.operator_ids,
            )
        conn.listener.audio(user_id, mono, level, t_ns)

    def forget(self, platform: str, user_id: str) -> None:
        """Someone opted out: close their stream and drop words not yet submitted.

        Their audio is already dropped on the receive thread from the next packet on
        (the opted-out check is live); this also ends what is in flight. Wire it to
        the privacy service's opt-out.
        """
        conn = self._conn
        if conn is not None and platform == Platform.DISCORD.value and user_id.isdigit():
            self._forget(conn, int(user_id))

    def _forget(self, conn: _Connection, user_id: int) -> None:
        if conn.authors.pop(user_id, None) is None:
            return
        conn.spawn(
            conn.listener.drop_speaker(user_id, keep_words=False),
            name=f"voice:opted-out:{user_id}",
        )
        log.info("voice_speaker_forgotten", user_id=user_id)

    def _busy(self, conn: _Connection) -> bool:
        """The familiar is speaking, or generating what it will say."""
        return conn.sink.speaking or self.orchestrator.is_replying(conn.key)

    def _onset(self, conn: _Connection, onset: SpeechOnset) -> None:
        if conn.closed or not self._busy(conn):
            return
        self.stats.barge_ins += 1
        conn.sink.interrupt()
        cancelled = self.orchestrator.cancel(conn.key)
        log.info("voice_barge_in", speaker_id=onset.speaker_id, turn_cancelled=cancelled)

    def _turn(self, conn: _Connection, turn: TurnDetected) -> None:
        if conn.closed:
            return
        author = conn.authors.get(int(turn.speaker_id))
        if author is None or self.is_opted_out(Platform.DISCORD.value, author.user_id):
            return  # opted out meanwhile
        if self._busy(conn) and self._only_backchannel(conn, turn.text):
            self.stats.backchannels_while_busy += 1
            log.debug("voice_backchannel_ignored", speaker_id=turn.speaker_id)
            return
        utterance = Utterance(
            key=conn.key,
            author=author,
            text=turn.text,
            speech_start_ns=turn.speech_start_ns,
            speech_end_ns=turn.speech_end_ns,
            stt_final_ns=turn.stt_final_ns,
            confidence=turn.confidence,
        )
        self.stats.utterances += 1
        result = self.orchestrator.submit(utterance, conn.sink)
        log.info(
            "voice_utterance",
            speaker_id=turn.speaker_id,
            words=len(turn.text.split()),
            reason=turn.reason,
            result=result,
        )

    @staticmethod
    def _only_backchannel(conn: _Connection, text: str) -> bool:
        turns = conn.listener.config.turns
        quiet = turns.filler_words | turns.acknowledgement_words
        words = _WORD.findall(text.lower())
        return bool(words) and all(word in quiet for word in words)

    # --- greeting -------------------------------------------------------------------------------

    async def _greet(self, conn: _Connection) -> None:
        try:
            pcm = await self._greeting_audio()
        except Exception as exc:
            log.warning("voice_greeting_failed", error=type(exc).__name__)
            return
        if not pcm or conn.closed:
            return
        playback = conn.lane.new_reply()
        await playback.feed(pcm)
        await playback.finish()

    def _greeting_path(self) -> Path | None:
        directory = self.config.greeting_cache_dir
        if directory is None:
            return None
        key = f"{self.synthesizer.name}\0{self.config.greeting}".encode()
        return directory / f"greeting-{hashlib.sha256(key).hexdigest()[:24]}.pcm"

    async def _greeting_audio(self) -> bytes:
        """The greeting as 48 kHz mono PCM: from the disk cache, else synthesised and cached."""
        path = self._greeting_path()
        if path is not None:
            cached = await asyncio.to_thread(_read_cached, path)
            if cached:
                return cached
        context = await self.synthesizer.new_context()
        chunks: list[bytes] = []
        size = 0
        try:
            await context.say(self.config.greeting)
            await context.finish()
            async for item in context.stream():
                if isinstance(item, AudioChunk):
                    size += len(item.pcm)
                    if size > _MAX_GREETING_BYTES:
                        break
                    chunks.append(item.pcm)
        finally:
            if size > _MAX_GREETING_BYTES:
                await context.cancel()
        pcm = b"".join(chunks)
        if path is not None and pcm and size <= _MAX_GREETING_BYTES:
            await asyncio.to_thread(_write_atomic, path, pcm)
        return pcm


def _voice_up(vc: voice_recv.VoiceRecvClient) -> bool:
    """Connected, with a voice websocket that has not been closed.

    After a close discord.py may keep its state at "connected" while it tries to resume
    (4015), so the websocket itself is looked at too (aiohttp's; discord.py opens it
    without autoclose, so a close frame received shows as its ``close_code``).
    """
    if not vc.is_connected():
        return False
    socket = getattr(getattr(vc, "ws", None), "ws", None)
    return not getattr(socket, "closed", False) and getattr(socket, "close_code", None) is None


def _stop_reconnecting(vc: voice_recv.VoiceRecvClient) -> None:
    """Stop discord.py's background reconnect loop before the connection is dropped.

    ``VoiceClient.disconnect`` leaves that task running; one that wakes after the
    teardown would send a voice state update of its own and knock the fresh
    connection out. A private attribute of discord.py 2.7 (checked, not assumed).
    """
    state = getattr(vc, "_connection", None)
    runner = getattr(state, "_runner", None)
    if isinstance(runner, asyncio.Task) and runner is not asyncio.current_task():
        runner.cancel()
        state._runner = None  # type: ignore[union-attr]


def _read_cached(path: Path) -> bytes:
    try:
        if path.stat().st_size > _MAX_GREETING_BYTES:
            return b""
        return path.read_bytes()
    except OSError:
        return b""


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
