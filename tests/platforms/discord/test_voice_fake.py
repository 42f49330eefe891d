"""The fake Discord voice server, driven by the real discord.py voice client and voice-recv."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator

import discord
import pytest
from discord.ext import voice_recv

from tests.fakes.certs import TlsCert
from tests.fakes.discord_fake import FakeDiscord
from tests.fakes.discord_voice import (
    OP_SELECT_PROTOCOL,
    FakeDiscordVoice,
    rms,
    stereo_frames,
)
from tests.fakes.discord_world import ALICE_ID, BOB_ID, VOICE_ID
from tests.platforms.discord.test_voice_kit import running_client, tone


@pytest.fixture(name="fake")
async def fixture_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


@pytest.fixture(name="voice")
async def fixture_voice(fake: FakeDiscord, cert: TlsCert) -> AsyncIterator[FakeDiscordVoice]:
    async with FakeDiscordVoice(fake, cert) as voice:
        yield voice


@pytest.fixture(name="client")
async def fixture_client(
    fake: FakeDiscord, voice: FakeDiscordVoice, cert: TlsCert
) -> AsyncIterator[discord.Client]:
    async with running_client(fake, cert) as client:
        yield client


async def connect(client: discord.Client) -> voice_recv.VoiceRecvClient:
    channel = client.get_channel(VOICE_ID)
    assert isinstance(channel, discord.VoiceChannel)
    return await channel.connect(cls=voice_recv.VoiceRecvClient, timeout=10)


class RecordingSink(voice_recv.AudioSink):
    """Collects decoded PCM per user id (voice-recv calls ``write`` on its router thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.pcm: dict[int | None, list[bytes]] = {}

    def wants_opus(self) -> bool:
        return False

    def write(self, user: discord.abc.User | None, data: voice_recv.VoiceData) -> None:
        with self.lock:
            self.pcm.setdefault(user.id if user else None, []).append(data.pcm)

    def frames(self, user_id: int) -> list[bytes]:
        with self.lock:
            return list(self.pcm.get(user_id, []))

    def cleanup(self) -> None:
        pass


class TestFakeDiscordVoice:
    async def test_join_handshake(
        self, fake: FakeDiscord, voice: FakeDiscordVoice, client: discord.Client
    ) -> None:
        """op 4 leads through the voice gateway and UDP discovery to a connected client."""
        vc = await connect(client)
        assert vc.is_connected()
        assert int(fake.voice_state_updates[-1]["channel_id"]) == VOICE_ID
        (identify,) = voice.identifies
        assert identify["max_dave_protocol_version"] >= 1
        assert identify["session_id"] == fake.session_id
        (select,) = voice.select_protocols
        assert select["data"]["mode"] == "aead_xchacha20_poly1305_rtpsize"
        assert select["data"]["address"] == "127.0.0.1"
        assert vc.mode == "aead_xchacha20_poly1305_rtpsize"
        assert voice.connected

    async def test_leave(
        self, fake: FakeDiscord, voice: FakeDiscordVoice, client: discord.Client
    ) -> None:
        """Disconnecting sends op 4 with no channel and closes the voice websocket."""
        vc = await connect(client)
        await vc.disconnect()
        assert fake.voice_state_updates[-1]["channel_id"] is None
        await voice.wait_for(lambda: not voice.connected)
        assert voice.bot_channel_id is None
        assert client.voice_clients == []

    async def test_user_audio_reaches_voice_recv(
        self, voice: FakeDiscordVoice, client: discord.Client
    ) -> None:
        """A member's paced Opus RTP is decrypted, decoded and attributed to that member."""
        vc = await connect(client)
        sink = RecordingSink()
        vc.listen(sink)
        sent = await voice.user_speaks("alice", tone(0.5))
        assert sent == 25 + 5
        await voice.wait_for(lambda: len(sink.frames(ALICE_ID)) >= 20)
        frames = sink.frames(ALICE_ID)
        assert all(len(f) == 3840 for f in frames)
        assert max(rms(f) for f in frames) > 1_000
        assert vc._ssrc_to_id  # the SPEAKING op mapped the ssrc

    async def test_two_speakers_at_once(
        self, voice: FakeDiscordVoice, client: discord.Client
    ) -> None:
        """Two members talking at the same time arrive as two separate streams."""
        vc = await connect(client)
        sink = RecordingSink()
        vc.listen(sink)
        await asyncio.gather(
            voice.user_speaks("alice", tone(0.4, freq_hz=300)),
            voice.user_speaks("bob", tone(0.4, freq_hz=900)),
        )
        await voice.wait_for(
            lambda: len(sink.frames(ALICE_ID)) >= 15 and len(sink.frames(BOB_ID)) >= 15
        )

    async def test_bot_audio_is_decoded(
        self, voice: FakeDiscordVoice, client: discord.Client
    ) -> None:
        """What the bot plays arrives at the fake as decodable, non-silent Opus."""
        vc = await connect(client)
        pcm = b"".join(stereo_frames(tone(0.4)))
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        vc.play(
            discord.PCMAudio(io.BytesIO(pcm)), after=lambda _e: loop.call_soon_threadsafe(done.set)
        )
        await asyncio.wait_for(done.wait(), timeout=10)
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= 18)
        assert all(len(p.pcm) == 3840 for p in voice.bot_packets)
        assert voice.bot_packet_errors == 0
        assert any(s.get("speaking") for s in voice.bot_speaking)

    async def test_refuses_client_without_dave(
        self, voice: FakeDiscordVoice, client: discord.Client, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Like Discord, the fake closes a client that offers no DAVE with 4017."""
        monkeypatch.setattr(
            discord.voice_state.VoiceConnectionState,
            "max_dave_protocol_version",
            property(lambda _s: 0),
        )
        channel = client.get_channel(VOICE_ID)
        assert isinstance(channel, discord.VoiceChannel)
        with pytest.raises((discord.ConnectionClosed, TimeoutError)):
            await channel.connect(cls=voice_recv.VoiceRecvClient, timeout=2, reconnect=False)
        assert voice.select_protocols == [] and not voice.connected
        assert all(f.op != OP_SELECT_PROTOCOL for f in voice.received)
