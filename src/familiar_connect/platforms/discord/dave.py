"""DAVE receive glue: end-to-end decryption of received voice, which voice-recv does not do.

Discord's voice is end-to-end encrypted with DAVE (an MLS group per call).
discord.py 2.7.1 negotiates DAVE through ``davey`` and encrypts what the bot
*sends*; ``discord-ext-voice-recv`` 0.5.2a179 (unmaintained) only removes the
transport encryption of what it *receives*, so without this module the
familiar would hand ciphertext to the Opus decoder.

:class:`DaveReceiveGlue` wraps the one function voice-recv calls per RTP
packet, ``vc._reader.decryptor.decrypt_rtp`` (an instance attribute bound in
``PacketDecryptor.__init__``; ``update_secret_key`` only swaps the box, so the
wrap survives key rotation). For each packet the wrapper:

1. removes the transport encryption (voice-recv's own function; a failure is
   counted and re-raised, voice-recv drops the packet);
2. passes Opus silence (``F8 FF FE``, never end-to-end encrypted) through;
3. if the connection has a ready ``dave_session``, decrypts the payload for
   the user who owns the packet's SSRC (from the SPEAKING events); on a
   failure — expected briefly during epoch transitions
   (``NoValidCryptorFound``, ``UnencryptedWhenPassthroughDisabled``) — or an
   unknown SSRC it substitutes Opus silence so the decoder keeps its timing;
   a DAVE frame (``…FA FA`` marker) that arrives before the group is ready
   becomes silence too;
4. checks that the result is a structurally valid Opus packet (TOC and frame
   count, through libopus): voice-recv's decoder thread stops listening
   altogether on the first packet libopus rejects, so an invalid one becomes
   silence here and is counted.

Counters (:class:`DaveReceiveStats`) are kept per connection and logged with
the session's own per-user decryption stats by :meth:`DaveReceiveGlue.log_stats`.

Threading: the wrapper runs on discord.py's voice socket-reader thread. It
only reads attributes of the connection (the loop thread may replace the
session meanwhile; a stale read costs at most one packet) and increments
counters that only this thread writes. :meth:`DaveReceiveGlue.stats` and
:meth:`DaveReceiveGlue.log_stats` may be called from the event loop.

The internals relied on are checked by :func:`check_voice_recv_internals`
(called by :meth:`DaveReceiveGlue.install`); a test runs it too, so a
voice-recv upgrade that moves them fails loudly instead of receiving noise.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from familiar_connect.errors import FamiliarError

__all__ = [
    "DAVE_MAGIC_MARKER",
    "OPUS_SILENCE",
    "VOICE_RECV_VERSION",
    "DaveReceiveGlue",
    "DaveReceiveStats",
    "VoiceReceiveUnsupported",
    "check_voice_recv_internals",
    "is_valid_opus",
]

log = structlog.get_logger(__name__)

OPUS_SILENCE = b"\xf8\xff\xfe"
"""The Opus frame Discord clients send for silence; DAVE leaves it unencrypted."""
DAVE_MAGIC_MARKER = b"\xfa\xfa"
"""Every DAVE-encrypted frame ends with this marker."""
VOICE_RECV_VERSION = "0.5.2a179"
"""The discord-ext-voice-recv release whose internals this glue was written against."""
_MAX_OPUS_SAMPLES = 5_760  # 120 ms at 48 kHz, the longest legal Opus packet


class VoiceReceiveUnsupported(FamiliarError):
    """The installed voice-recv does not have the internals the DAVE glue relies on."""


@dataclass(slots=True)
class DaveReceiveStats:
    """Per-connection counters of the receive path (monotonic; read them, never reset).

    Attributes:
        packets: RTP packets that reached the wrapper.
        transport_failures: packets whose transport encryption did not verify (dropped).
        silence_in: Opus silence frames received (passed through untouched).
        passthrough: packets used without DAVE (no session: DAVE is off for this call).
        decrypted: packets decrypted by the DAVE session.
        decrypt_failures: DAVE decryption failed (epoch transition, missing key): silence used.
        unknown_ssrc: the session is ready but nobody owns the SSRC yet: silence used.
        not_ready: a DAVE frame arrived before the MLS group was ready: silence used.
        invalid_opus: the payload was not a valid Opus packet: silence used.
    """

    packets: int = 0
    transport_failures: int = 0
    silence_in: int = 0
    passthrough: int = 0
    decrypted: int = 0
    decrypt_failures: int = 0
    unknown_ssrc: int = 0
    not_ready: int = 0
    invalid_opus: int = 0

    @property
    def substituted(self) -> int:
        """Packets replaced by Opus silence."""
        return self.decrypt_failures + self.unknown_ssrc + self.not_ready + self.invalid_opus


def is_valid_opus(payload: bytes) -> bool:
    """Whether libopus accepts ``payload``'s structure (TOC byte, frame count, duration).

    It does not decode the audio; it rejects what would make ``opus_decode`` fail with
    ``OPUS_INVALID_PACKET``. Loads libopus if nothing has yet.

    Raises:
        discord.opus.OpusNotLoaded: libopus cannot be found (voice cannot work at all).
    """
    if not payload:
        return False
    from discord.opus import Decoder, OpusError, is_loaded

    if not is_loaded():
        # discord.py loads libopus with its first Encoder or Decoder; in a fresh process the
        # first packet heard gets here before either exists (it was dropped with a traceback).
        Decoder.get_opus_version()
    try:
        frames = Decoder.packet_get_nb_frames(payload)
        samples = Decoder.packet_get_samples_per_frame(payload)
    except OpusError:
        return False
    return 0 < frames * samples <= _MAX_OPUS_SAMPLES


def _media_audio() -> Any:
    import davey

    return davey.MediaType.audio


def check_voice_recv_internals(voice_client: Any | None = None) -> None:
    """Fail loudly if voice-recv moved what the glue relies on.

    Checks the pinned version, that ``AudioReader`` keeps a ``decryptor`` whose
    ``decrypt_rtp`` is a per-instance attribute it calls per packet, and (given
    a listening voice client) that the client has ``_reader.decryptor``,
    ``_ssrc_to_id`` and a connection with ``dave_session``.

    Raises:
        VoiceReceiveUnsupported: naming what moved.
    """
    try:
        version = importlib.metadata.version("discord-ext-voice-recv")
    except importlib.metadata.PackageNotFoundError:
        raise VoiceReceiveUnsupported("discord-ext-voice-recv is not installed") from None
    if version != VOICE_RECV_VERSION:
        raise VoiceReceiveUnsupported(
            f"discord-ext-voice-recv {version} is installed; the DAVE receive glue was written "
            f"for {VOICE_RECV_VERSION} (check reader.py before changing the pin)"
        )
    from discord.ext.voice_recv.reader import PacketDecryptor

    probe = PacketDecryptor("aead_xchacha20_poly1305_rtpsize", bytes(32))
    if "decrypt_rtp" not in vars(probe) or not callable(probe.decrypt_rtp):
        raise VoiceReceiveUnsupported(
            "voice-recv's PacketDecryptor no longer binds decrypt_rtp per instance"
        )
    if voice_client is None:
        return
    reader = getattr(voice_client, "_reader", None)
    decryptor = getattr(reader, "decryptor", None)
    if decryptor is None or "decrypt_rtp" not in vars(decryptor):
        raise VoiceReceiveUnsupported(
            "the voice client has no _reader.decryptor.decrypt_rtp (call listen() first)"
        )
    if not isinstance(getattr(voice_client, "_ssrc_to_id", None), dict):
        raise VoiceReceiveUnsupported("VoiceRecvClient no longer keeps _ssrc_to_id")
    connection = getattr(voice_client, "_connection", None)
    if connection is None or not hasattr(connection, "dave_session"):
        raise VoiceReceiveUnsupported("the voice connection state has no dave_session")


class DaveReceiveGlue:
    """DAVE decryption spliced into one voice client's receive path.

    Create it with :meth:`install` after ``vc.listen(...)`` (each ``listen``
    makes a new reader, so install again after re-listening).

    Args:
        voice_client: a listening ``VoiceRecvClient``.
        transport_decrypt: voice-recv's original ``decrypt_rtp``.
        media_type: ``davey.MediaType.audio`` (injectable for tests).
    """

    def __init__(
        self,
        voice_client: Any,
        transport_decrypt: Callable[[Any], bytes],
        *,
        media_type: Any = None,
    ) -> None:
        self._vc = voice_client
        self._connection = voice_client._connection
        self._ssrc_to_id: dict[int, int] = voice_client._ssrc_to_id
        self._transport = transport_decrypt
        self._media = media_type if media_type is not None else _media_audio()
        self._stats = DaveReceiveStats()
        self._decryptor: Any = None

    @classmethod
    def install(cls, voice_client: Any, *, media_type: Any = None) -> DaveReceiveGlue:
        """Wrap ``voice_client._reader.decryptor.decrypt_rtp``; return the glue.

        Raises:
            VoiceReceiveUnsupported: voice-recv's internals are not what the glue expects.
        """
        check_voice_recv_internals(voice_client)
        decryptor = voice_client._reader.decryptor
        original = decryptor.decrypt_rtp
        if isinstance(getattr(original, "__self__", None), DaveReceiveGlue):
            return original.__self__  # already installed on this reader
        glue = cls(voice_client, original, media_type=media_type)
        glue._decryptor = decryptor
        decryptor.decrypt_rtp = glue.decrypt_rtp
        return glue

    def uninstall(self) -> None:
        """Restore voice-recv's own function (if this glue is still the one installed)."""
        decryptor = self._decryptor
        if decryptor is not None and getattr(decryptor.decrypt_rtp, "__self__", None) is self:
            decryptor.decrypt_rtp = self._transport
        self._decryptor = None

    @property
    def stats(self) -> DaveReceiveStats:
        """The live counters."""
        return self._stats

    def decrypt_rtp(self, packet: Any) -> bytes:
        """Transport-decrypt, then DAVE-decrypt one RTP packet's payload (socket-reader thread).

        Returns:
            an Opus payload: the user's audio, or Opus silence in its place.

        Raises:
            nacl.exceptions.CryptoError: the transport encryption did not verify
                (voice-recv logs and drops the packet).
        """
        stats = self._stats
        stats.packets += 1
        try:
            payload = self._transport(packet)
        except Exception:
            stats.transport_failures += 1
            raise
        if payload == OPUS_SILENCE:
            stats.silence_in += 1
            return payload
        session = self._connection.dave_session
        if session is not None and session.ready:
            user_id = self._ssrc_to_id.get(packet.ssrc)
            if user_id is None:
                stats.unknown_ssrc += 1
                return OPUS_SILENCE
            try:
                payload = session.decrypt(user_id, self._media, payload)
            except (ValueError, RuntimeError):
                stats.decrypt_failures += 1
                return OPUS_SILENCE
            stats.decrypted += 1
        elif session is not None and payload.endswith(DAVE_MAGIC_MARKER):
            stats.not_ready += 1
            return OPUS_SILENCE
        else:
            stats.passthrough += 1
        if not is_valid_opus(payload):
            stats.invalid_opus += 1
            return OPUS_SILENCE
        return payload

    def session_stats(self) -> dict[int, dict[str, int]]:
        """The DAVE session's own decryption stats per known user (empty without a session)."""
        session = self._connection.dave_session
        if session is None or not session.ready:
            return {}
        out: dict[int, dict[str, int]] = {}
        for user_id in set(self._ssrc_to_id.values()):
            try:
                stats = session.get_decryption_stats(user_id, self._media)
            except (ValueError, RuntimeError):
                continue
            if stats is not None:
                out[user_id] = {
                    "successes": stats.successes,
                    "failures": stats.failures,
                    "passthroughs": stats.passthroughs,
                }
        return out

    def log_stats(self, **context: Any) -> None:
        """Log the counters and the session's per-user stats as ``voice_dave_stats``."""
        session = self._connection.dave_session
        log.info(
            "voice_dave_stats",
            dave_version=getattr(self._connection, "dave_protocol_version", 0),
            dave_ready=bool(session is not None and session.ready),
            substituted=self._stats.substituted,
            users=self.session_stats(),
            **asdict(self._stats),
            **context,
        )
