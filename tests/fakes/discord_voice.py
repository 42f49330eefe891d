"""Loopback fake of Discord's voice server, for the real discord.py voice client and voice-recv.

:class:`FakeDiscordVoice` plugs into a :class:`~tests.fakes.discord_fake.FakeDiscord`:
it answers the bot's op 4 on the main gateway with ``VOICE_SERVER_UPDATE``
(the gateway fake already echoes ``VOICE_STATE_UPDATE``) pointing at itself,
then serves what discord.py 2.7.1 needs to be connected to voice:

* a **TLS websocket voice gateway v8** on ``127.0.0.1`` (discord.py hard-codes
  ``wss://{endpoint}/?v=8``; the certificate comes from :mod:`tests.fakes.certs`
  and the client needs its CA): HELLO (op 8), heartbeats (op 3 → op 6),
  IDENTIFY (op 0, checked against the gateway session and the token handed
  out; a client offering no DAVE is closed with 4017 as Discord does) →
  READY (op 2), SELECT_PROTOCOL (op 1) → SESSION_DESCRIPTION (op 4, with
  ``dave_protocol_version: 0``: DAVE needs an MLS external sender, which this
  fake does not play), CLIENTS_CONNECT (op 11), SPEAKING (op 5, ssrc → user),
  CLIENT_DISCONNECT (op 13), RESUME (op 7) → RESUMED (op 9);
* **UDP** on ``127.0.0.1``: IP discovery, then RTP both ways with
  ``aead_xchacha20_poly1305_rtpsize`` (PyNaCl) and real Opus (libopus through
  :mod:`discord.opus`).

Verbs: :meth:`~FakeDiscordVoice.user_speaks` (PCM in, paced Opus RTP out, as a
member's client would send it), :meth:`~FakeDiscordVoice.client_disconnect`,
:meth:`~FakeDiscordVoice.close_voice`. What the bot sends is decrypted and
decoded as it arrives (:attr:`~FakeDiscordVoice.bot_packets`,
:meth:`~FakeDiscordVoice.bot_audio_pcm`, :meth:`~FakeDiscordVoice.nonsilent_bot_frames`)::

    cert = make_cert(tmp_path)
    async with FakeDiscord() as fake, FakeDiscordVoice(fake, cert) as voice:
        client = discord.Client(intents=..., connector=aiohttp.TCPConnector(ssl=cert.client_context()))
        ...
        vc = await client.get_channel(VOICE_ID).connect(cls=VoiceRecvClient)
        await voice.user_speaks("alice", tone(0.5))
        vc.play(source)
        await voice.wait_for(lambda: voice.nonsilent_bot_frames() >= 10)

Everything recorded is bounded (``max_recorded_packets``, ``max_recorded_frames``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import struct
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import discord.opus
import nacl.exceptions
import nacl.secret
import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes._server import FakeServer
from tests.fakes.certs import TlsCert
from tests.fakes.discord_fake import FakeDiscord

__all__ = [
    "OPUS_SILENCE",
    "BotPacket",
    "FakeDiscordVoice",
    "VoiceFrame",
    "rms",
    "stereo_frames",
]

T = TypeVar("T")

OP_IDENTIFY = 0
OP_SELECT_PROTOCOL = 1
OP_READY = 2
OP_HEARTBEAT = 3
OP_SESSION_DESCRIPTION = 4
OP_SPEAKING = 5
OP_HEARTBEAT_ACK = 6
OP_RESUME = 7
OP_HELLO = 8
OP_RESUMED = 9
OP_CLIENTS_CONNECT = 11
OP_CLIENT_DISCONNECT = 13

CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_SESSION_NO_LONGER_VALID = 4006
CLOSE_UNKNOWN_ENCRYPTION_MODE = 4016
CLOSE_E2EE_REQUIRED = 4017

OPUS_SILENCE = b"\xf8\xff\xfe"
SAMPLES_PER_FRAME = 960
STEREO_FRAME_BYTES = SAMPLES_PER_FRAME * 2 * 2
_RTP_VERSION_PAYLOAD = b"\x80\x78"
_FIRST_USER_SSRC = 5001
_SILENCE_RMS = 64.0
_INVALID_OPUS = b"\x03"  # code-3 packet without its frame-count byte: libopus rejects it


@dataclass(frozen=True, slots=True)
class VoiceFrame:
    """One JSON frame the bot sent on the voice websocket."""

    op: int
    d: Any
    connection: int
    t_ns: int


@dataclass(frozen=True, slots=True)
class BotPacket:
    """One RTP packet from the bot, decrypted and decoded.

    Attributes:
        pcm: 48 kHz stereo s16le, 3,840 bytes for a 20 ms frame.
        rms: root mean square of ``pcm`` (0 for silence).
        t_ns: ``time.monotonic_ns()`` when the fake received it.
    """

    sequence: int
    timestamp: int
    ssrc: int
    opus: bytes
    pcm: bytes
    rms: float
    t_ns: int

    @property
    def silent(self) -> bool:
        """True for Opus silence and for audio too quiet to be speech."""
        return self.opus == OPUS_SILENCE or self.rms <= _SILENCE_RMS


def rms(pcm: bytes) -> float:
    """Root mean square of s16le samples (any channel layout)."""
    if len(pcm) < 2:
        return 0.0
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16).astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples)))


def stereo_frames(pcm: bytes | np.ndarray, *, channels: int = 1) -> list[bytes]:
    """Cut 48 kHz s16le audio into 20 ms stereo frames (the last one zero-padded).

    Args:
        pcm: bytes (``channels`` interleaved) or an int16 array, 1-D mono or
            ``(n, 2)`` stereo.
        channels: for bytes input, 1 (mono) or 2 (stereo).
    """
    if isinstance(pcm, np.ndarray):
        array = pcm.astype(np.int16, copy=False)
        if array.ndim == 1:
            stereo = np.repeat(array, 2)
        elif array.ndim == 2 and array.shape[1] == 2:
            stereo = array.reshape(-1)
        else:
            raise ValueError("expected a 1-D mono or (n, 2) stereo int16 array")
    else:
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16)
        stereo = np.repeat(samples, 2) if channels == 1 else samples
    data = stereo.tobytes()
    remainder = len(data) % STEREO_FRAME_BYTES
    if remainder:
        data += bytes(STEREO_FRAME_BYTES - remainder)
    return [data[i : i + STEREO_FRAME_BYTES] for i in range(0, len(data), STEREO_FRAME_BYTES)]


@dataclass(slots=True)
class _Session:
    """One voice websocket connection of the bot."""

    ws: web.WebSocketResponse
    number: int
    guild_id: int | None = None
    user_id: int | None = None
    ssrc: int = 0
    mode: str | None = None
    secret_key: bytes | None = None
    announced: set[int] = field(default_factory=set)


@dataclass(slots=True)
class _Speaker:
    """A member's outgoing RTP stream (what their Discord client would send)."""

    ssrc: int
    sequence: int
    timestamp: int
    encoder: discord.opus.Encoder
    nonce: int = 0


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeDiscordVoice) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport here

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._datagram(data, addr)


class FakeDiscordVoice(FakeServer):
    """Discord's voice server on loopback (TLS websocket + UDP), DAVE disabled.

    Args:
        discord: the fake gateway whose op 4 this server answers; its
            ``gateway.on_voice_state`` hook is taken over.
        cert: the TLS certificate to serve (:func:`tests.fakes.certs.make_cert`).
        heartbeat_interval_ms: announced in HELLO (discord.py heartbeats at
            ``min(interval, 5 s)``).
        modes: encryption modes offered in READY, in order; discord.py picks
            the first one it supports.
        require_dave: close an IDENTIFY offering ``max_dave_protocol_version`` 0
            with 4017, as Discord does.
        max_recorded_packets: bound of :attr:`bot_packets`.
        max_recorded_frames: bound of :attr:`received`.

    Attributes:
        answer_voice_state: send VOICE_SERVER_UPDATE for the bot's op 4 (turn
            off to make a join time out).
        ack_heartbeats: answer the bot's heartbeats.
        bot_channel_id: the voice channel the bot asked to be in, or ``None``.
        connection_count: voice websockets accepted.
        keepalives: voice-recv's 8-byte UDP keepalives received.
        bot_packet_errors: bot RTP packets that failed to decrypt or decode.
        session_ready: set once SESSION_DESCRIPTION went out on the current
            connection (user audio can flow).
    """

    def __init__(
        self,
        discord: FakeDiscord,
        cert: TlsCert,
        *,
        heartbeat_interval_ms: int = 41_250,
        modes: tuple[str, ...] = ("aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"),
        require_dave: bool = True,
        max_recorded_packets: int = 50_000,
        max_recorded_frames: int = 10_000,
    ) -> None:
        super().__init__()
        self.discord = discord
        self.cert = cert
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.modes = modes
        self.require_dave = require_dave
        self.answer_voice_state = True
        self.ack_heartbeats = True
        self.bot_channel_id: int | None = None
        self.connection_count = 0
        self.keepalives = 0
        self.bot_packet_errors = 0
        self.session_ready = asyncio.Event()
        self._frames: collections.deque[VoiceFrame] = collections.deque(maxlen=max_recorded_frames)
        self._packets: collections.deque[BotPacket] = collections.deque(maxlen=max_recorded_packets)
        self._tokens: dict[int, str] = {}
        self._current: _Session | None = None
        self._client_addr: tuple[str, int] | None = None
        self._speakers: dict[int, _Speaker] = {}
        self._decoders: dict[int, discord.opus.Decoder] = {}
        self._udp: _Udp | None = None
        self._tick = asyncio.Event()
        discord.gateway.on_voice_state = self._on_voice_state
        self.app.router.add_get("/", self._voice_ws)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Serve TLS on an ephemeral loopback port and open the UDP socket.

        Cancellation: safe; a half-started server is cleaned up.
        """
        if self._runner is not None:
            raise RuntimeError("the fake voice server is already started")
        self._stopping = False
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.cert.server_context())
            await site.start()
            loop = asyncio.get_running_loop()
            _, protocol = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=("127.0.0.1", 0)
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._udp = protocol
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the voice websocket and the UDP socket, then stop serving. Idempotent."""
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        self._udp = None
        await super().stop()

    async def __aenter__(self) -> FakeDiscordVoice:
        await self.start()
        return self

    # -- endpoints ---------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """What VOICE_SERVER_UPDATE announces: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def udp_port(self) -> int:
        """The UDP port announced in READY."""
        assert self._udp is not None and self._udp.transport is not None
        return int(self._udp.transport.get_extra_info("sockname")[1])

    # -- recorded traffic --------------------------------------------------

    @property
    def received(self) -> list[VoiceFrame]:
        """Every JSON frame the bot sent on any voice websocket, oldest first."""
        return list(self._frames)

    def frames(self, op: int) -> list[Any]:
        """The ``d`` of every received voice frame with opcode ``op``."""
        return [f.d for f in self._frames if f.op == op]

    @property
    def identifies(self) -> list[dict[str, Any]]:
        """IDENTIFY payloads received."""
        return self.frames(OP_IDENTIFY)

    @property
    def select_protocols(self) -> list[dict[str, Any]]:
        """SELECT_PROTOCOL payloads received."""
        return self.frames(OP_SELECT_PROTOCOL)

    @property
    def bot_speaking(self) -> list[dict[str, Any]]:
        """The bot's SPEAKING (op 5) payloads, e.g. ``{"speaking": 1, "ssrc": ...}``."""
        return self.frames(OP_SPEAKING)

    @property
    def connected(self) -> bool:
        """A voice websocket is open and has its session description."""
        current = self._current
        return current is not None and not current.ws.closed and current.secret_key is not None

    @property
    def bot_packets(self) -> list[BotPacket]:
        """Every RTP packet of the bot, decoded, oldest first."""
        return list(self._packets)

    def bot_packet_count(self) -> int:
        """How many of the bot's RTP packets have been recorded."""
        return len(self._packets)

    def bot_audio_pcm(self, since: int = 0) -> bytes:
        """The bot's audio as 48 kHz stereo s16le, from packet index ``since`` on."""
        return b"".join(p.pcm for p in list(self._packets)[since:])

    def nonsilent_bot_frames(self, since: int = 0) -> int:
        """How many of the bot's frames (from index ``since``) carry audible audio."""
        return sum(1 for p in list(self._packets)[since:] if not p.silent)

    async def wait_for(
        self, predicate: Callable[[], T], *, timeout_s: float = 10.0, poll_s: float = 0.01
    ) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        Re-checked after every voice frame and bot packet, and every ``poll_s``.

        Raises:
            TimeoutError: still falsy after ``timeout_s``.

        Cancellation: safe; nothing is left behind.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                result = predicate()
                if result:
                    return result
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await self._tick.wait()

    def _changed(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    # -- verbs ---------------------------------------------------------------

    async def user_speaks(
        self,
        user: int | str,
        pcm: bytes | np.ndarray,
        *,
        channels: int = 1,
        pace_s: float = 0.02,
        trailing_silence_frames: int = 5,
        transform: Callable[[bytes], bytes] | None = None,
        undecryptable: Collection[int] = (),
        undecodable: Collection[int] = (),
    ) -> int:
        """A member speaks: SPEAKING (first time per connection), then paced Opus RTP.

        Like a Discord client, the member sends 20 ms Opus frames and, after
        the audio, a few Opus silence frames, then nothing.

        Args:
            user: member id or name (from the fake Discord's world).
            pcm: 48 kHz s16le audio; see :func:`stereo_frames`.
            channels: channel count of ``pcm`` when it is bytes.
            pace_s: gap between packets (20 ms is real time; 0 sends a burst).
            trailing_silence_frames: Opus silence frames sent after the audio.
            transform: applied to each Opus payload before transport
                encryption (stands in for DAVE end-to-end encryption).
            undecryptable: indexes of frames sent with a broken transport
                authentication tag (the bot cannot decrypt them).
            undecodable: indexes of frames whose payload is replaced by an
                invalid Opus packet (decrypts fine, cannot be decoded).

        Returns:
            the number of RTP packets sent.

        Raises:
            RuntimeError: the bot is not connected to voice.
        """
        session = self._current
        if session is None or session.secret_key is None or self._client_addr is None:
            raise RuntimeError("the bot is not connected to voice; await session_ready first")
        member = self.discord.world.user(user)
        speaker = self._speaker(member.id)
        if member.id not in session.announced:
            session.announced.add(member.id)
            await self._send(
                session.ws,
                {
                    "op": OP_SPEAKING,
                    "d": {"user_id": str(member.id), "ssrc": speaker.ssrc, "speaking": 1},
                },
            )
        payloads = [
            speaker.encoder.encode(f, SAMPLES_PER_FRAME)
            for f in stereo_frames(pcm, channels=channels)
        ]
        payloads.extend([OPUS_SILENCE] * trailing_silence_frames)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, opus in enumerate(payloads):
            if index in undecodable:
                opus = _INVALID_OPUS
            elif transform is not None and opus != OPUS_SILENCE:
                opus = transform(opus)
            packet = self._user_packet(session, speaker, opus, corrupt=index in undecryptable)
            self._sendto(packet)
            if pace_s > 0 and index + 1 < len(payloads):
                await asyncio.sleep(max(0.0, start + (index + 1) * pace_s - loop.time()))
        return len(payloads)

    async def client_disconnect(self, user: int | str) -> None:
        """A member leaves the call: CLIENT_DISCONNECT (op 13) on the voice websocket."""
        session = self._current
        member = self.discord.world.user(user)
        if session is not None:
            session.announced.discard(member.id)
            await self._send(
                session.ws, {"op": OP_CLIENT_DISCONNECT, "d": {"user_id": str(member.id)}}
            )

    async def close_voice(self, code: int = 4015, message: str = "") -> None:
        """Close the current voice websocket with ``code`` (4015: the client resumes)."""
        session = self._current
        if session is not None:
            await self.close_websocket(session.ws, code=code, message=message.encode())

    # -- main gateway hook ------------------------------------------------

    async def _on_voice_state(self, data: dict[str, Any]) -> None:
        guild_id = int(data.get("guild_id") or 0)
        channel_id = int(data["channel_id"]) if data.get("channel_id") else None
        self.bot_channel_id = channel_id
        self._changed()
        if channel_id is None or not self.answer_voice_state:
            return
        token = secrets.token_hex(16)
        self._tokens[guild_id] = token
        await self.discord.send_event(
            "VOICE_SERVER_UPDATE",
            {"token": token, "guild_id": str(guild_id), "endpoint": self.endpoint},
        )

    # -- voice websocket ---------------------------------------------------

    async def _voice_ws(self, request: web.Request) -> web.StreamResponse:
        ws = await self.prepare_websocket(request)
        self.connection_count += 1
        session = _Session(ws=ws, number=self.connection_count)
        try:
            await self._send(
                ws,
                {"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms, "v": 8}},
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    continue  # binary frames are DAVE's MLS messages; DAVE is off here
                try:
                    frame = json.loads(msg.data)
                    op = int(frame["op"])
                except (ValueError, KeyError, TypeError):
                    await self.close_websocket(ws, code=4002, message=b"Failed to decode payload.")
                    break
                data = frame.get("d")
                self._frames.append(VoiceFrame(op, data, session.number, time.monotonic_ns()))
                self._changed()
                if op == OP_HEARTBEAT:
                    if self.ack_heartbeats:
                        nonce = data.get("t") if isinstance(data, dict) else data
                        await self._send(ws, {"op": OP_HEARTBEAT_ACK, "d": {"t": nonce}})
                elif op == OP_IDENTIFY:
                    await self._identify(session, data if isinstance(data, dict) else {})
                elif op == OP_SELECT_PROTOCOL:
                    await self._select_protocol(session, data if isinstance(data, dict) else {})
                elif op == OP_RESUME:
                    await self._resume(session, data if isinstance(data, dict) else {})
                if ws.closed:
                    break
        finally:
            self._websockets.discard(ws)
            if self._current is session:
                self.session_ready.clear()
            self._changed()
        return ws

    async def _identify(self, session: _Session, data: Mapping[str, Any]) -> None:
        guild_id = int(data.get("server_id") or 0)
        token = self._tokens.get(guild_id)
        if token is None or data.get("token") != token:
            await self.close_websocket(
                session.ws, code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed."
            )
            return
        if (
            data.get("session_id") != self.discord.session_id
            or int(data.get("user_id") or 0) != self.discord.world.bot.id
        ):
            await self.close_websocket(
                session.ws,
                code=CLOSE_SESSION_NO_LONGER_VALID,
                message=b"Session is no longer valid.",
            )
            return
        if self.require_dave and int(data.get("max_dave_protocol_version") or 0) < 1:
            await self.close_websocket(
                session.ws, code=CLOSE_E2EE_REQUIRED, message=b"E2EE/DAVE protocol required."
            )
            return
        session.guild_id = guild_id
        session.user_id = int(data["user_id"])
        session.ssrc = 1000 + self.connection_count
        self._current = session
        self.session_ready.clear()
        await self._send(
            session.ws,
            {
                "op": OP_READY,
                "d": {
                    "ssrc": session.ssrc,
                    "ip": "127.0.0.1",
                    "port": self.udp_port,
                    "modes": list(self.modes),
                    "heartbeat_interval": 1,
                    "experiments": [],
                },
            },
        )

    async def _select_protocol(self, session: _Session, data: Mapping[str, Any]) -> None:
        mode = (data.get("data") or {}).get("mode")
        # Only xchacha is implemented here (discord.py 2.7.1 supports no other AEAD mode).
        if mode != "aead_xchacha20_poly1305_rtpsize" or mode not in self.modes:
            await self.close_websocket(
                session.ws, code=CLOSE_UNKNOWN_ENCRYPTION_MODE, message=b"Unknown encryption mode."
            )
            return
        session.mode = mode
        session.secret_key = secrets.token_bytes(32)
        await self._send(
            session.ws,
            {
                "op": OP_SESSION_DESCRIPTION,
                "d": {
                    "mode": mode,
                    "secret_key": list(session.secret_key),
                    "dave_protocol_version": 0,
                    "audio_codec": "opus",
                    "video_codec": None,
                    "media_session_id": secrets.token_hex(8),
                },
            },
        )
        await self._announce_members(session)
        self.session_ready.set()
        self._changed()

    async def _resume(self, session: _Session, data: Mapping[str, Any]) -> None:
        previous = self._current
        guild_id = int(data.get("server_id") or 0)
        if (
            previous is None
            or previous.secret_key is None
            or data.get("token") != self._tokens.get(guild_id)
            or data.get("session_id") != self.discord.session_id
        ):
            await self.close_websocket(
                session.ws,
                code=CLOSE_SESSION_NO_LONGER_VALID,
                message=b"Session is no longer valid.",
            )
            return
        session.guild_id, session.user_id, session.ssrc = (
            previous.guild_id,
            previous.user_id,
            previous.ssrc,
        )
        session.mode, session.secret_key = previous.mode, previous.secret_key
        self._current = session
        await self._send(session.ws, {"op": OP_RESUMED, "d": None})
        self.session_ready.set()

    async def _announce_members(self, session: _Session) -> None:
        guild = self.discord.world.guilds.get(session.guild_id or 0)
        if guild is None or self.bot_channel_id is None:
            return
        bot_id = self.discord.world.bot.id
        user_ids = [
            str(uid)
            for uid, channel_id in guild.voice_states.items()
            if channel_id == self.bot_channel_id and uid != bot_id
        ]
        if user_ids:
            await self._send(session.ws, {"op": OP_CLIENTS_CONNECT, "d": {"user_ids": user_ids}})

    @staticmethod
    async def _send(ws: web.WebSocketResponse, frame: Mapping[str, Any]) -> None:
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await ws.send_str(json.dumps(frame))

    # -- UDP -----------------------------------------------------------------

    def _datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        if len(data) == 74 and data[:2] == b"\x00\x01":
            ssrc = struct.unpack_from(">I", data, 4)[0]
            ip = str(addr[0]).encode("ascii")
            reply = (
                struct.pack(">HHI", 2, 70, ssrc)
                + ip.ljust(64, b"\x00")
                + struct.pack(">H", addr[1])
            )
            self._client_addr = (str(addr[0]), int(addr[1]))
            if self._udp is not None and self._udp.transport is not None:
                self._udp.transport.sendto(reply, addr)
        elif len(data) == 8:
            self.keepalives += 1
        elif len(data) >= 16 and data[0] >> 6 == 2 and not 200 <= data[1] <= 204:
            self._bot_rtp(data)
        self._changed()

    def _bot_rtp(self, data: bytes) -> None:
        session = self._current
        if session is None or session.secret_key is None:
            self.bot_packet_errors += 1
            return
        extended = bool(data[0] & 0x10)
        header_len = 12 + 4 * (data[0] & 0x0F) + (4 if extended else 0)
        header = data[:header_len]
        nonce = data[-4:] + bytes(20)
        try:
            plain = nacl.secret.Aead(session.secret_key).decrypt(data[header_len:-4], header, nonce)
            if extended:
                words = struct.unpack_from(">H", data, header_len - 2)[0]
                plain = plain[4 * words :]
            sequence, timestamp, ssrc = struct.unpack_from(">HII", data, 2)
            decoder = self._decoders.get(ssrc)
            if decoder is None:
                decoder = self._decoders[ssrc] = discord.opus.Decoder()
            pcm = decoder.decode(plain, fec=False)
        except (nacl.exceptions.CryptoError, discord.opus.OpusError, ValueError, struct.error):
            self.bot_packet_errors += 1
            return
        self._packets.append(
            BotPacket(
                sequence=sequence,
                timestamp=timestamp,
                ssrc=ssrc,
                opus=plain,
                pcm=pcm,
                rms=rms(pcm),
                t_ns=time.monotonic_ns(),
            )
        )

    def _speaker(self, user_id: int) -> _Speaker:
        speaker = self._speakers.get(user_id)
        if speaker is None:
            speaker = self._speakers[user_id] = _Speaker(
                ssrc=_FIRST_USER_SSRC + len(self._speakers),
                sequence=secrets.randbelow(1 << 15),
                timestamp=secrets.randbelow(1 << 30),
                encoder=discord.opus.Encoder(application="voip"),
            )
        return speaker

    @staticmethod
    def _user_packet(session: _Session, speaker: _Speaker, opus: bytes, *, corrupt: bool) -> bytes:
        assert session.secret_key is not None
        header = _RTP_VERSION_PAYLOAD + struct.pack(
            ">HII", speaker.sequence, speaker.timestamp, speaker.ssrc
        )
        nonce = struct.pack(">I", speaker.nonce)
        speaker.nonce = (speaker.nonce + 1) % (1 << 32)
        speaker.sequence = (speaker.sequence + 1) % (1 << 16)
        speaker.timestamp = (speaker.timestamp + SAMPLES_PER_FRAME) % (1 << 32)
        sealed = (
            nacl.secret.Aead(session.secret_key).encrypt(opus, header, nonce + bytes(20)).ciphertext
        )
        if corrupt:
            sealed = sealed[:-1] + bytes([sealed[-1] ^ 0xFF])
        return header + sealed + nonce

    def _sendto(self, packet: bytes) -> None:
        if self._udp is None or self._udp.transport is None or self._client_addr is None:
            raise RuntimeError("no UDP peer yet")
        self._udp.transport.sendto(packet, self._client_addr)
