"""The voice conversation's ``ReplySink``: clauses in, speech out, and only what was heard recorded.

The orchestrator streams a reply into :class:`VoiceReplySink` as clauses
(mode ``"clauses"``); the sink keeps one text-to-speech
:class:`~familiar_connect.speech.tts.base.SynthesisContext` per reply and
pumps its audio into the connection's
:class:`~familiar_connect.platforms.discord.playback.PlaybackLane`, so the
first frame plays as soon as 20 ms of the first clause are synthesised::

    begin()          open the TTS context (in the background, overlapping the LLM's first token)
    send(clause)     ctx.say(clause); audio → playback as it arrives
    end(text)        ctx.finish(); wait until everything was played; return the spoken words
    cancel()         barge-in: playback stops within a frame, the context is cancelled;
                     return only the words that were played

**What was said.** History must hold what people heard. The sink counts the
audio samples handed to discord.py's player and compares them with the
provider's :class:`~familiar_connect.speech.tts.base.WordTiming` list: the
words that *ended* before the playback stopped were spoken. Those words are
mapped back onto the clause text by position (whitespace-separated), so
punctuation survives. Without word timings it falls back to the played
fraction of the synthesised audio, rounded down to whole words.

**When TTS fails** (at ``begin``, on a clause, or mid-stream) the familiar
does not go silent: audio already synthesised is still played, and in
``end`` the rest of the reply (every word not covered by that audio) is posted
as text through ``post_text`` — the linked text channel — or logged when there
is none. ``end`` then returns the spoken words plus the posted text.

Timing stamps for the turn record (``first_audio``, ``first_frame``) are
available from :meth:`VoiceReplySink.reply_stamps` after ``end``/``cancel``.

Threading: loop only (playback hands frames to discord.py's thread itself).

Cancellation: the orchestrator may cancel any awaiting method (barge-in,
shutdown) and then calls :meth:`VoiceReplySink.cancel`, which is idempotent
and leaves the sink ready for the next ``begin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from familiar_connect.logs import log_redactor
from familiar_connect.platforms.discord.playback import (
    SAMPLE_RATE_HZ,
    PlaybackLane,
    ReplyPlayback,
)
from familiar_connect.speech.tts.base import (
    AudioChunk,
    SynthesisContext,
    Synthesizer,
    WordTiming,
)

__all__ = ["VoiceReplySink", "VoiceSinkStats", "spoken_prefix"]

log = structlog.get_logger(__name__)

_MAX_WORD_TIMINGS = 20_000
_CANCEL_TIMEOUT_S = 2.0
_MAX_LOGGED_FALLBACK_CHARS = 2_000

PostText = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class VoiceSinkStats:
    """Counters across replies (for the dashboard and the log)."""

    replies: int = 0
    clauses: int = 0
    interrupted: int = 0
    tts_failures: int = 0
    text_fallbacks: int = 0
    word_timings_dropped: int = 0


@dataclass(slots=True)
class _Reply:
    playback: ReplyPlayback
    opening: asyncio.Task[SynthesisContext | None] | None = None
    context: SynthesisContext | None = None
    pump: asyncio.Task[None] | None = None
    clauses: list[str] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)
    audio_samples: int = 0
    first_audio_ns: int | None = None
    failed: bool = False
    failed_after_s: float = 0.0
    finished: bool = False
    closed: bool = False
    delivered: str = ""


def spoken_prefix(
    text_words: list[str],
    timings: list[WordTiming],
    *,
    played_s: float,
    audio_s: float,
) -> int:
    """How many of ``text_words`` were heard when playback reached ``played_s``.

    Args:
        text_words: the reply's words as sent to TTS (whitespace-split clauses).
        timings: the provider's word timings, seconds from the reply's first sample.
        played_s: seconds of the reply's audio that were played.
        audio_s: seconds of audio synthesised in total (for the no-timings estimate).

    Returns:
        a count in ``0..len(text_words)``: words whose audio ended by ``played_s``.
    """
    if not text_words:
        return 0
    if timings:
        heard = sum(1 for word in timings if word.end_s <= played_s + 1e-6)
    elif audio_s > 0:
        heard = int(len(text_words) * min(played_s / audio_s, 1.0))
    else:
        heard = 0
    return min(heard, len(text_words))


class VoiceReplySink:
    """``ReplySink`` (mode ``"clauses"``) that speaks into one voice connection.

    Args:
        synthesizer: the text-to-speech provider (one warm connection per process).
        lane: the connection's playback lane.
        post_text: posts the unspoken rest of a reply (and notices) in the linked
            text channel; ``None`` logs them instead.
        on_tts_failure: told when text-to-speech fails during a reply (the dashboard's row).
        clock_ns: monotonic clock.
    """

    mode = "clauses"

    def __init__(
        self,
        synthesizer: Synthesizer,
        lane: PlaybackLane,
        *,
        post_text: PostText | None = None,
        on_tts_failure: Callable[[BaseException], None] | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._synthesizer = synthesizer
        self._on_tts_failure = on_tts_failure
        self._lane = lane
        self._post_text = post_text
        self._clock_ns = clock_ns
        self._reply: _Reply | None = None
        self.stats = VoiceSinkStats()

    # --- state -----------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """The familiar's voice is playing (or about to)."""
        return self._lane.speaking

    def reply_stamps(self) -> dict[str, int]:
        """``{"first_audio": ns, "first_frame": ns}`` of the latest reply (stamped ones only)."""
        reply = self._reply
        if reply is None:
            return {}
        stamps: dict[str, int] = {}
        if reply.first_audio_ns is not None:
            stamps["first_audio"] = reply.first_audio_ns
        if reply.playback.first_frame_ns is not None:
            stamps["first_frame"] = reply.playback.first_frame_ns
        return stamps

    def interrupt(self) -> bool:
        """Barge-in: stop playback now (within one frame). Returns whether anything was playing.

        The reply itself is ended by the orchestrator (it cancels the turn, then
        calls :meth:`cancel`); this only makes the silence immediate.
        """
        was_speaking = self._lane.speaking
        self._lane.stop()
        if was_speaking:
            self.stats.interrupted += 1
        return was_speaking

    # --- ReplySink ---------------------------------------------------------------------------

    async def begin(self) -> None:
        """Start a reply: open its TTS context in the background."""
        previous = self._reply
        if previous is not None and not previous.closed:
            await self._abort(previous)
        reply = _Reply(playback=self._lane.new_reply())
        reply.opening = asyncio.get_running_loop().create_task(
            self._open(reply), name="voice:tts-open"
        )
        self._reply = reply
        self.stats.replies += 1

    async def send(self, piece: str) -> None:
        """Speak the next clause (a continuation of the same utterance)."""
        # A model can be talked into repeating a secret it saw; it is never said aloud
        # (the text path redacts what it posts the same way).
        piece = log_redactor().redact(piece)
        reply = self._reply
        if reply is None or reply.closed:
            await self.begin()
            reply = self._reply
            assert reply is not None
        reply.clauses.append(piece)
        self.stats.clauses += 1
        context = await self._context(reply)
        if context is None:
            return
        try:
            await context.say(piece)
        except Exception as exc:
            self._fail(reply, exc)
            return
        if reply.pump is None:
            reply.pump = asyncio.get_running_loop().create_task(
                self._pump(reply, context), name="voice:tts-pump"
            )

    async def end(self, text: str) -> str:
        """Finish the reply: wait until all of it was spoken; return what people got.

        Returns:
            the spoken words, plus the text posted instead when TTS failed.
        """
        reply = self._reply
        if reply is None or reply.closed:
            return reply.delivered if reply is not None else ""
        context = await self._context(reply)
        if context is not None and not reply.failed:
            try:
                await context.finish()
            except Exception as exc:
                self._fail(reply, exc)
        if reply.pump is not None:
            await reply.pump
        if reply.clauses and not reply.audio_samples and not reply.failed:
            self._fail(reply, RuntimeError("the provider returned no audio"))
        if reply.failed and reply.context is not None:
            await self._quiet_cancel(reply.context)
        await reply.playback.finish()
        reply.finished = True
        spoken, rest = self._split(reply)
        if reply.failed and rest:
            await self._fallback(rest)
            delivered = f"{spoken} {rest}".strip()
        else:
            delivered = spoken
        reply.delivered = delivered
        reply.closed = True
        return delivered

    async def cancel(self) -> str | None:
        """Stop now; return only the words that were played. Idempotent."""
        reply = self._reply
        if reply is None:
            return ""
        if reply.closed:
            return reply.delivered
        await self._abort(reply)
        return reply.delivered

    async def notice(self, text: str) -> None:
        """Post a notice (limits, errors) in the linked text channel, or log it."""
        if self._post_text is None:
            log.info("voice_notice_not_posted", chars=len(text), text=text[:200])
            return
        try:
            await self._post_text(text)
        except Exception:
            log.warning("voice_notice_failed", exc_info=True)

    # --- internals ---------------------------------------------------------------------------

    async def _open(self, reply: _Reply) -> SynthesisContext | None:
        try:
            reply.context = await self._synthesizer.new_context()
        except Exception as exc:
            self._fail(reply, exc)
            return None
        return reply.context

    async def _context(self, reply: _Reply) -> SynthesisContext | None:
        if reply.failed:
            return None
        if reply.opening is not None:
            await asyncio.shield(reply.opening)
        return None if reply.failed else reply.context

    async def _pump(self, reply: _Reply, context: SynthesisContext) -> None:
        try:
            async for item in context.stream():
                if isinstance(item, WordTiming):
                    if len(reply.words) < _MAX_WORD_TIMINGS:
                        reply.words.append(item)
                    else:
                        self.stats.word_timings_dropped += 1
                    continue
                if not isinstance(item, AudioChunk) or not item.pcm:
                    continue
                if reply.first_audio_ns is None:
                    reply.first_audio_ns = item.received_ns or self._clock_ns()
                reply.audio_samples += len(item.pcm) // 2
                await reply.playback.feed(item.pcm)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(reply, exc)

    def _fail(self, reply: _Reply, exc: BaseException) -> None:
        if reply.failed:
            return
        reply.failed = True
        reply.failed_after_s = reply.audio_samples / SAMPLE_RATE_HZ
        self.stats.tts_failures += 1
        if self._on_tts_failure is not None:
            try:
                self._on_tts_failure(exc)
            except Exception:
                log.warning("voice_tts_failure_listener_failed", exc_info=True)
        log.warning(
            "voice_tts_failed",
            provider=getattr(self._synthesizer, "name", "?"),
            error=type(exc).__name__,
            detail=str(exc)[:200],
            audio_s=round(reply.failed_after_s, 3),
        )

    def _split(self, reply: _Reply) -> tuple[str, str]:
        """(spoken words, words not spoken) of a reply that has stopped playing."""
        words = " ".join(reply.clauses).split()
        audio_s = reply.audio_samples / SAMPLE_RATE_HZ
        played_s = reply.playback.played_s
        if reply.finished and not reply.failed and audio_s > 0 and played_s >= audio_s - 1e-6:
            count = len(words)  # every sample synthesised was played
        else:
            count = spoken_prefix(words, reply.words, played_s=played_s, audio_s=audio_s)
        return " ".join(words[:count]), " ".join(words[count:])

    async def _abort(self, reply: _Reply) -> None:
        """Stop a reply that did not end normally (barge-in, shutdown, silent reply)."""
        reply.playback.stop()
        if reply.opening is not None and not reply.opening.done():
            reply.opening.cancel()
        if reply.pump is not None and not reply.pump.done():
            reply.pump.cancel()
        for task in (reply.opening, reply.pump):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if reply.context is not None:
            await self._quiet_cancel(reply.context)
        spoken, _ = self._split(reply)
        reply.delivered = spoken
        reply.closed = True

    async def _quiet_cancel(self, context: SynthesisContext) -> None:
        try:
            async with asyncio.timeout(_CANCEL_TIMEOUT_S):
                await context.cancel()
        except Exception:
            log.debug("voice_tts_cancel_failed", exc_info=True)

    async def _fallback(self, rest: str) -> None:
        self.stats.text_fallbacks += 1
        if self._post_text is None:
            log.warning(
                "voice_reply_fallback_logged",
                chars=len(rest),
                text=rest[:_MAX_LOGGED_FALLBACK_CHARS],
            )
            return
        try:
            await self._post_text(rest)
        except Exception:
            log.error("voice_reply_fallback_failed", chars=len(rest), exc_info=True)
