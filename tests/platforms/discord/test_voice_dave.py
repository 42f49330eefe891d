"""The DAVE receive glue: stub-session unit tests, the real receive stack, and the internals canary."""

from __future__ import annotations

import inspect
import struct
import threading
from types import SimpleNamespace
from typing import Any

import davey
import discord
import discord.opus
import nacl.exceptions
import nacl.secret
import pytest
from discord.ext import voice_recv
from discord.ext.voice_recv import rtp
from discord.ext.voice_recv.reader import AudioReader, PacketDecryptor
from structlog.testing import capture_logs

from familiar_connect.platforms.discord.dave import (
    DAVE_MAGIC_MARKER,
    OPUS_SILENCE,
    DaveReceiveGlue,
    check_voice_recv_internals,
    is_valid_opus,
)
from tests.fakes.discord_voice import FakeDiscordVoice, rms, stereo_frames
from tests.fakes.discord_world import ALICE_ID
from tests.platforms.discord.test_voice_kit import tone

MODE = "aead_xchacha20_poly1305_rtpsize"
KEY = bytes(range(32))
SSRC = 4242
XOR = 0x5A


def xor(data: bytes) -> bytes:
    return bytes(b ^ XOR for b in data)


def opus_frame() -> bytes:
    (frame,) = stereo_frames(tone(0.02))
    return discord.opus.Encoder().encode(frame, 960)


def rtp_packet(payload: bytes, *, key: bytes = KEY, sequence: int = 1) -> rtp.RTPPacket:
    header = b"\x80\x78" + struct.pack(">HII", sequence, sequence * 960, SSRC)
    nonce = struct.pack(">I", sequence)
    sealed = nacl.secret.Aead(key).encrypt(payload, header, nonce + bytes(20)).ciphertext
    return rtp.decode_rtp(header + sealed + nonce)


class StubSession:
    """Stands in for davey.DaveSession: "decrypts" by XOR, can fail for chosen users."""

    def __init__(self, *, ready: bool = True, failing: frozenset[int] = frozenset()) -> None:
        self.ready = ready
        self.failing = failing
        self.calls: list[tuple[int, Any]] = []

    def decrypt(self, user_id: int, media_type: Any, packet: bytes) -> bytes:
        self.calls.append((user_id, media_type))
        if user_id in self.failing:
            raise ValueError("Failed to decrypt: NoValidCryptorFound")
        return xor(packet)

    def get_decryption_stats(self, user_id: int, media_type: Any) -> Any:
        return SimpleNamespace(successes=len(self.calls), failures=0, passthroughs=0)


def stub_voice_client(session: Any = None) -> Any:
    """The three attributes of a listening VoiceRecvClient the glue touches."""
    return SimpleNamespace(
        _reader=SimpleNamespace(decryptor=PacketDecryptor(MODE, KEY)),
        _ssrc_to_id={SSRC: ALICE_ID},
        _connection=SimpleNamespace(
            dave_session=session, dave_protocol_version=1 if session else 0
        ),
    )


class TestDaveReceiveGlue:
    def test_passthrough_without_session(self) -> None:
        """With DAVE off (no session) the transport-decrypted Opus is returned as it is."""
        vc = stub_voice_client()
        glue = DaveReceiveGlue.install(vc)
        opus = opus_frame()
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(opus)) == opus
        assert glue.stats.passthrough == 1 and glue.stats.packets == 1

    def test_decrypts_with_session_for_ssrc_owner(self) -> None:
        """A ready session decrypts the payload for the user who owns the packet's SSRC."""
        session = StubSession()
        vc = stub_voice_client(session)
        glue = DaveReceiveGlue.install(vc)
        opus = opus_frame()
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(xor(opus))) == opus
        assert session.calls == [(ALICE_ID, davey.MediaType.audio)]
        assert glue.stats.decrypted == 1

    def test_decrypt_failure_becomes_silence(self) -> None:
        """A DAVE failure (epoch transition) yields Opus silence and is counted."""
        vc = stub_voice_client(StubSession(failing=frozenset({ALICE_ID})))
        glue = DaveReceiveGlue.install(vc)
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(xor(opus_frame()))) == OPUS_SILENCE
        assert glue.stats.decrypt_failures == 1 and glue.stats.substituted == 1

    def test_unknown_ssrc_becomes_silence(self) -> None:
        """Before SPEAKING names the SSRC's owner, a DAVE packet cannot be decrypted: silence."""
        vc = stub_voice_client(StubSession())
        vc._ssrc_to_id.clear()
        glue = DaveReceiveGlue.install(vc)
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(opus_frame())) == OPUS_SILENCE
        assert glue.stats.unknown_ssrc == 1

    def test_dave_frame_before_group_ready_becomes_silence(self) -> None:
        """A frame with the DAVE marker that arrives while the MLS group is not ready is silenced."""
        vc = stub_voice_client(StubSession(ready=False))
        glue = DaveReceiveGlue.install(vc)
        encrypted = opus_frame() + b"\x00\x01" + DAVE_MAGIC_MARKER
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(encrypted)) == OPUS_SILENCE
        assert glue.stats.not_ready == 1

    def test_invalid_opus_becomes_silence(self) -> None:
        """A payload libopus would reject never reaches voice-recv's decoder thread."""
        vc = stub_voice_client()
        glue = DaveReceiveGlue.install(vc)
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(b"\x03")) == OPUS_SILENCE
        assert glue.stats.invalid_opus == 1

    def test_opus_silence_passes_untouched(self) -> None:
        """Opus silence is never end-to-end encrypted, so it skips the session."""
        session = StubSession()
        vc = stub_voice_client(session)
        glue = DaveReceiveGlue.install(vc)
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(OPUS_SILENCE)) == OPUS_SILENCE
        assert session.calls == [] and glue.stats.silence_in == 1

    def test_transport_failure_is_counted_and_raised(self) -> None:
        """A packet whose transport tag does not verify is counted and left to voice-recv to drop."""
        vc = stub_voice_client()
        glue = DaveReceiveGlue.install(vc)
        with pytest.raises(nacl.exceptions.CryptoError):
            vc._reader.decryptor.decrypt_rtp(rtp_packet(opus_frame(), key=bytes(32)))
        assert glue.stats.transport_failures == 1

    def test_survives_secret_key_rotation(self) -> None:
        """voice-recv's key update swaps only the box, so the wrapper stays in place."""
        vc = stub_voice_client()
        glue = DaveReceiveGlue.install(vc)
        new_key = bytes(reversed(KEY))
        vc._reader.decryptor.update_secret_key(new_key)
        opus = opus_frame()
        assert vc._reader.decryptor.decrypt_rtp(rtp_packet(opus, key=new_key)) == opus
        assert glue.stats.packets == 1

    def test_install_is_idempotent_and_uninstall_restores(self) -> None:
        """Installing twice returns the same glue; uninstalling restores voice-recv's function."""
        vc = stub_voice_client()
        original = vc._reader.decryptor.decrypt_rtp
        glue = DaveReceiveGlue.install(vc)
        assert DaveReceiveGlue.install(vc) is glue
        glue.uninstall()
        assert vc._reader.decryptor.decrypt_rtp == original

    def test_log_stats(self) -> None:
        """The periodic log line carries the counters and the session's per-user stats."""
        vc = stub_voice_client(StubSession())
        glue = DaveReceiveGlue.install(vc)
        vc._reader.decryptor.decrypt_rtp(rtp_packet(xor(opus_frame())))
        with capture_logs() as logs:
            glue.log_stats(guild_id=900)
        (line,) = logs
        assert line["event"] == "voice_dave_stats"
        assert line["decrypted"] == 1 and line["guild_id"] == 900
        assert line["users"] == {ALICE_ID: {"successes": 1, "failures": 0, "passthroughs": 0}}

    def test_is_valid_opus(self) -> None:
        """Real Opus and Opus silence are valid; empty and truncated packets are not."""
        assert is_valid_opus(opus_frame()) and is_valid_opus(OPUS_SILENCE)
        assert not is_valid_opus(b"") and not is_valid_opus(b"\x03")


class RecordingSink(voice_recv.AudioSink):
    """Collects decoded PCM of one user (voice-recv calls ``write`` on its router thread)."""

    def __init__(self, user_id: int) -> None:
        super().__init__()
        self.user_id = user_id
        self.lock = threading.Lock()
        self.frames: list[bytes] = []

    def wants_opus(self) -> bool:
        return False

    def write(self, user: discord.abc.User | None, data: voice_recv.VoiceData) -> None:
        if user is not None and user.id == self.user_id:
            with self.lock:
                self.frames.append(data.pcm)

    def loud_frames(self) -> int:
        with self.lock:
            return sum(1 for f in self.frames if rms(f) > 1_000)

    def cleanup(self) -> None:
        pass


class TestDaveGlueThroughVoiceStack:
    async def test_stub_session_decrypts_member_audio(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """Audio "end-to-end encrypted" by the fake is decrypted by the glue and decoded."""
        voice, vc = stack
        sink = RecordingSink(ALICE_ID)
        vc.listen(sink)
        glue = DaveReceiveGlue.install(vc)
        vc._connection.dave_session = StubSession()
        await voice.user_speaks("alice", tone(0.5), transform=xor)
        await voice.wait_for(lambda: sink.loud_frames() >= 15)
        assert glue.stats.decrypted >= 20
        assert glue.stats.decrypt_failures == 0

    async def test_bad_packets_are_skipped_and_counted(
        self, stack: tuple[FakeDiscordVoice, voice_recv.VoiceRecvClient]
    ) -> None:
        """Undecryptable and undecodable packets are counted; audio after them still arrives."""
        voice, vc = stack
        sink = RecordingSink(ALICE_ID)
        vc.listen(sink)
        glue = DaveReceiveGlue.install(vc)
        await voice.user_speaks("alice", tone(0.6), undecryptable={2, 3}, undecodable={5})
        await voice.wait_for(lambda: sink.loud_frames() >= 15)
        assert glue.stats.transport_failures == 2
        assert glue.stats.invalid_opus == 1
        assert vc.is_listening()


class TestVoiceRecvInternals:
    """Canary: fails loudly when a voice-recv or discord.py upgrade moves what the glue uses."""

    def test_version_and_decryptor_shape(self) -> None:
        """The pinned voice-recv is installed and still binds decrypt_rtp per instance."""
        check_voice_recv_internals()

    def test_reader_calls_decryptor_per_packet(self) -> None:
        """AudioReader builds a PacketDecryptor and calls its decrypt_rtp for every RTP packet."""
        assert "PacketDecryptor(" in inspect.getsource(AudioReader.__init__)
        assert "self.decryptor.decrypt_rtp(packet)" in inspect.getsource(AudioReader.callback)

    def test_key_rotation_swaps_only_the_box(self) -> None:
        """update_secret_key replaces the box, not the (wrapped) decrypt function."""
        source = inspect.getsource(PacketDecryptor.update_secret_key)
        assert "self.box" in source and "decrypt_rtp" not in source

    def test_ssrc_map_filled_from_speaking(self) -> None:
        """The voice client keeps _ssrc_to_id, filled from SPEAKING (op 5)."""
        assert "_ssrc_to_id" in inspect.getsource(voice_recv.VoiceRecvClient.__init__)
        assert "vc._add_ssrc(uid, ssrc)" in inspect.getsource(voice_recv.gateway.hook)

    def test_router_still_needs_the_opus_check(self) -> None:
        """voice-recv's decoder loop still has no guard, so one bad Opus packet would stop it."""
        source = inspect.getsource(voice_recv.router.PacketRouter._do_run)
        assert "try" not in source

    def test_dave_session_api(self) -> None:
        """discord.py keeps a davey session on the connection; davey offers what the glue calls."""
        source = inspect.getsource(discord.voice_state.VoiceConnectionState.__init__)
        assert "self.dave_session" in source
        for name in ("decrypt", "get_decryption_stats", "ready"):
            assert hasattr(davey.DaveSession, name)
        assert davey.MediaType.audio is not None
