"""Discord voice for the reliability rig: fake voice server, fake Deepgram, fake Cartesia, helpers.

:func:`voice_rig` starts the same familiar as :func:`tests.reliability.rig.rig` (Discord,
dashboard, OpenRouter client, stores, JSON log) and gives its Discord adapter a voice
presence wired the way ``familiar run`` wires it (``app._discord_service``): a
:class:`~familiar_connect.platforms.discord.voice.VoiceManager` with the real
:class:`~familiar_connect.speech.stt.deepgram.DeepgramTranscriber` and
:class:`~familiar_connect.speech.tts.cartesia.CartesiaSynthesizer`, built from settings that
point at :class:`~tests.fakes.deepgram.FakeDeepgram` and
:class:`~tests.fakes.cartesia.FakeCartesia`. Discord voice is
:class:`~tests.fakes.discord_voice.FakeDiscordVoice` (TLS voice gateway, UDP, real Opus),
trusted through ``FAMILIAR_EXTRA_CA_FILE``.

Only the provider clients' timing knobs differ from production (short finalize and
reconnect backoffs, see :data:`STT_KNOBS`), so a test waits tenths of a second, not seconds.

Each utterance is said by a member who has not spoken yet (:meth:`VoiceRig.say`): a
speaker's Deepgram connection stays open between sentences, and a fresh speaker is what
makes the next connection take the next :class:`~tests.fakes.deepgram.Session` script.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import discord
from aiohttp import web

from familiar_connect.app import attach_voice
from familiar_connect.core.events import ConversationKey, Platform
from familiar_connect.core.turns import TurnConfig
from familiar_connect.platforms.discord.voice import VoiceConfig, VoiceManager
from familiar_connect.platforms.discord.voice_receive import ListenConfig
from familiar_connect.speech.stt.deepgram import DeepgramTranscriber
from familiar_connect.speech.tts.cartesia import CartesiaSynthesizer
from tests.fakes.cartesia import FakeCartesia
from tests.fakes.certs import make_cert
from tests.fakes.deepgram import FakeDeepgram, Session, utterance
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_voice import FakeDiscordVoice
from tests.fakes.discord_world import GENERAL_ID, GUILD_ID, VOICE_ID, World
from tests.fakes.openrouter import FakeOpenRouter
from tests.platforms.discord.test_voice_kit import tone
from tests.reliability.figures import timeout_s
from tests.reliability.rig import DISCORD_TOKEN, Rig, rig

__all__ = [
    "CARTESIA_KEY",
    "DEEPGRAM_KEY",
    "STT_KNOBS",
    "VOICE_KEY",
    "VOICE_KNOBS",
    "DroppableVoice",
    "VoiceRig",
    "voice_rig",
]

DEEPGRAM_KEY = "rig-deepgram-key-0123456789abcdef"
CARTESIA_KEY = "rig-cartesia-key-0123456789abcdef"
VOICE_KEY = ConversationKey(Platform.DISCORD, str(VOICE_ID), guild_id=str(GUILD_ID))
"""The voice conversation: the voice channel is its key."""

VOICE_CHARACTER = '\n[voice]\ntts_voice = "voice-reliability"\n'

STT_KNOBS: dict[str, Any] = {
    "finalize_after_idle_s": 0.1,
    "reconnect_backoff_base_s": 0.01,
    "reconnect_backoff_max_s": 0.05,
}
"""Deepgram client knobs shortened for tests (production waits longer; nothing else differs)."""

SECONDS_PER_CHAR = 0.004
"""Audio the fake Cartesia makes per character: a 60-character reply plays for 0.24 s."""
VOICE_KNOBS: dict[str, Any] = {
    "monitor_interval_s": 0.05,
    "reconnect_grace_s": 1.0,
    "listen": ListenConfig(finalize_after_idle_ms=150, turns=TurnConfig(idle_end_ms=800)),
}
"""Voice manager knobs shortened for tests (production: 1 s monitor, 10 s grace, 500/1200 ms)."""
FIRST_SPEAKER_ID = 3000
_SPOKEN_FRACTION = 0.9
"""Share of a member's audio the scripted sentence spans: Opus may drop a frame, and a
shorter span would leave the member "still talking" after the final (a barge-in)."""


class DroppableVoice(FakeDiscordVoice):
    """The fake voice server, able to drop the voice websocket's TCP connection (close 1006).

    :meth:`~FakeDiscordVoice.close_voice` closes with a code; a network drop sends none,
    which the client sees as 1006.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ws_requests: list[web.Request] = []

    async def _voice_ws(self, request: web.Request) -> web.StreamResponse:
        self._ws_requests.append(request)
        del self._ws_requests[:-4]  # bounded: only the current one matters
        return await super()._voice_ws(request)

    async def drop_voice(self) -> None:
        """Cut the current voice websocket's TCP connection without a close frame."""
        if self._ws_requests:
            await self.drop_connection(self._ws_requests[-1], reset=True)


@dataclass
class VoiceRig:
    """A running familiar joined to nothing yet, with its voice fakes and helpers."""

    rig: Rig
    voice: DroppableVoice
    deepgram: FakeDeepgram
    cartesia: FakeCartesia
    manager: VoiceManager
    speakers: list[str] = field(default_factory=list)
    _next_speaker: int = 0

    @property
    def client(self) -> discord.Client:
        assert self.rig.service.client is not None
        return self.rig.service.client

    def posted(self, channel_id: int = GENERAL_ID) -> list[str]:
        """What the familiar wrote in the linked text channel (fallbacks, notices)."""
        return self.rig.posted(channel_id)

    async def join(self, *, by: str = "alice") -> None:
        """``by`` runs ``/join-voice`` in #general (the real command); wait until connected."""
        await self.rig.discord.wait_for(
            lambda: self.rig.discord.synced_commands(GUILD_ID), timeout_s=timeout_s(20)
        )
        interaction = await self.rig.discord.slash("join-voice", user=by, channel_id=GENERAL_ID)
        await self.voice.wait_for(
            lambda: self.manager.connected and self.voice.session_ready.is_set(),
            timeout_s=timeout_s(20),
        )
        await self.rig.discord.wait_for(
            lambda: self.rig.discord.interaction_callbacks(interaction), timeout_s=timeout_s(20)
        )

    def next_speaker(self) -> str:
        """A member in the voice channel who has not spoken yet (so a fresh STT connection)."""
        if self._next_speaker >= len(self.speakers):
            raise RuntimeError("no unused speaker left: give voice_rig(speakers=...) more")
        name = self.speakers[self._next_speaker]
        self._next_speaker += 1
        return name

    async def say(
        self,
        text: str,
        *,
        sessions: Sequence[Session] = (),
        seconds: float = 0.35,
        speaker: str | None = None,
        pace_s: float = 0.02,
    ) -> str:
        """A new member says ``text``: Deepgram is scripted to hear it, their Opus goes out.

        Args:
            text: what Deepgram will transcribe (on the last of ``sessions``).
            sessions: connection scripts to use first (faults), before the one that hears it.
            seconds: how long the member speaks.
            speaker: a member who has not spoken yet (default: the next one).
            pace_s: gap between the member's packets (0.02 is real time).

        Returns:
            the speaker's name.
        """
        audio = tone(seconds)
        heard = int(audio.nbytes * _SPOKEN_FRACTION)
        self.deepgram.script(*sessions, Session(steps=utterance(text, audio_bytes=heard)))
        name = speaker or self.next_speaker()
        await self.voice.user_speaks(name, audio, pace_s=pace_s)
        return name

    async def wait_utterances(self, count: int) -> None:
        """Wait until ``count`` voice utterances in all were submitted to the orchestrator."""
        await self.voice.wait_for(
            lambda: self.manager.stats.utterances >= count, timeout_s=timeout_s(20)
        )

    async def wait_audible(self, frames: int, *, since: int = 0) -> None:
        """Wait until the familiar played ``frames`` audible frames (from packet ``since`` on)."""
        await self.voice.wait_for(
            lambda: self.voice.nonsilent_bot_frames(since) >= frames, timeout_s=timeout_s(20)
        )

    async def settle(self) -> None:
        """Wait until the voice conversation is idle (reply played) and history is written."""
        await self.rig.idle(VOICE_ID)

    async def voice_rows(self) -> list[tuple[str, str]]:
        """The voice conversation's history rows, ``(role, content)``, oldest first."""
        await self.rig.familiar.history_writer.flush()
        turns = await self.rig.familiar.history.recent("discord", VOICE_KEY.as_str(), limit=200)
        return [(turn.role, turn.content) for turn in turns]

    async def spoken_turn(self, text: str, reply: str) -> None:
        """A member says ``text``; the familiar answers ``reply`` out loud (audible frames).

        ``text`` should name the familiar ("Familiar, ..."): unaddressed voice turns close
        together are only listened to (``unprompted_gap_s``), not answered.
        """
        packets = self.voice.bot_packet_count()
        utterances = self.manager.stats.utterances
        self.rig.llm.reply_text(reply)
        await self.say(text)
        await self.wait_utterances(utterances + 1)
        await self.wait_audible(5, since=packets)
        await self.settle()
        assert ("user", text) in await self.voice_rows()
        assert ("assistant", reply) in await self.voice_rows()


def _world(speakers: int) -> tuple[World, list[str]]:
    world = World.default()
    names = [f"speaker{index}" for index in range(speakers)]
    for index, name in enumerate(names):
        world.add_member(GUILD_ID, FIRST_SPEAKER_ID + index, name)
    return world, names


def _voice_manager(
    r: Rig, stt_options: Mapping[str, Any], voice_config: Mapping[str, Any]
) -> VoiceManager:
    """The voice presence as ``app._discord_service`` builds it (speech timing knobs aside)."""
    familiar = r.familiar
    settings = familiar.settings
    voice = familiar.character.config.voice
    assert settings.deepgram_api_key is not None and settings.cartesia_api_key is not None
    transcriber = DeepgramTranscriber(
        settings.deepgram_api_key.get_secret_value(),
        ws_base=settings.deepgram_ws_base,
        http_base=settings.deepgram_http_base,
        language=voice.language,
        endpointing_ms=voice.endpointing_ms,
        utterance_end_ms=voice.utterance_end_ms,
        **{**STT_KNOBS, **stt_options},
    )
    synthesizer = CartesiaSynthesizer(
        settings.cartesia_api_key.get_secret_value(),
        base_url=settings.cartesia_base_url,
        ws_base_url=settings.cartesia_ws_base_url,
        voice_id=voice.tts_voice,
        language=voice.language,
    )
    manager = attach_voice(
        familiar,
        r.service,
        transcriber,
        synthesizer,
        config=VoiceConfig.from_character(
            familiar.character,
            cache_dir=settings.familiar_dir / "cache",
            **{**VOICE_KNOBS, **voice_config},
        ),
    )
    # What app.connect_adapters does once the dashboard exists.
    manager.attach_status(r.dashboard.providers.report)
    return manager


@contextlib.asynccontextmanager
async def voice_rig(
    tmp_path: Path,
    *,
    toml: str = "",
    settings: Mapping[str, Any] | None = None,
    stt_options: Mapping[str, Any] | None = None,
    voice_config: Mapping[str, Any] | None = None,
    speakers: int = 6,
    deepgram: FakeDeepgram | None = None,
    cartesia: FakeCartesia | None = None,
    discord_token: str = DISCORD_TOKEN,
    llm: FakeOpenRouter | None = None,
    log_level: str = "DEBUG",
) -> AsyncIterator[VoiceRig]:
    """Start the rig with voice configured (Deepgram + Cartesia fakes); alice, bob and
    ``speakers`` more members are in the voice channel. Call :meth:`VoiceRig.join` to join.

    ``settings`` override the rig's (e.g. canary keys); ``stt_options`` the Deepgram client's
    knobs, ``voice_config`` the :class:`VoiceConfig`'s; ``deepgram``/``cartesia`` are started
    fakes to use instead of new ones (their keys must match the settings').
    """
    cert = make_cert(tmp_path / "tls")
    world, names = _world(speakers)
    async with contextlib.AsyncExitStack() as stack:
        discord_fake = await stack.enter_async_context(
            FakeDiscord(bot_token=discord_token, world=world)
        )
        voice = await stack.enter_async_context(DroppableVoice(discord_fake, cert))
        if deepgram is None:
            deepgram = await stack.enter_async_context(FakeDeepgram(api_key=DEEPGRAM_KEY))
        if cartesia is None:
            cartesia = await stack.enter_async_context(
                FakeCartesia(api_key=CARTESIA_KEY, seconds_per_char=SECONDS_PER_CHAR)
            )
        options: dict[str, Any] = {
            "deepgram_api_key": DEEPGRAM_KEY,
            "cartesia_api_key": CARTESIA_KEY,
            "deepgram_ws_base": deepgram.ws_base_url,
            "deepgram_http_base": deepgram.base_url,
            "cartesia_base_url": cartesia.base_url,
            "cartesia_ws_base_url": cartesia.ws_base_url,
            "familiar_extra_ca_file": cert.ca_path,
            "discord_token": discord_token,
        }
        options.update(settings or {})
        r = await stack.enter_async_context(
            rig(
                tmp_path,
                toml=VOICE_CHARACTER + toml,
                settings=options,
                discord=discord_fake,
                llm=llm,
                log_level=log_level,
            )
        )
        manager = _voice_manager(r, stt_options or {}, voice_config or {})
        for name in ("alice", "bob", *names):
            await discord_fake.voice_state(name, VOICE_ID)
        yield VoiceRig(r, voice, deepgram, cartesia, manager, names)
        # The rig's shutdown closes the manager and both providers (DiscordService.run);
        # leave first so no turn is mid-reply when the stores close.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(manager.aclose(), timeout=timeout_s(10))
