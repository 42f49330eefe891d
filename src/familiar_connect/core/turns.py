"""Turn detection for voice (sans-I/O): decide when a speaker has finished saying something.

Inputs are values, not sockets: each speaker's :class:`~familiar_connect.speech.stt.base.TranscriptEvent`
stream, optional audio-activity notes (``on_audio``, from packets arriving or an energy VAD), and
the current ``time.monotonic_ns()`` passed in to :meth:`TurnDetector.poll`. Outputs are signals:

* :class:`SpeechOnset`: a speaker started saying something that is more than a back-channel; the
  voice pipeline uses it to cut the familiar off (barge-in). At most one per turn.
* :class:`TurnDetected`: a speaker's turn is complete (text and timing stamps).
* :class:`TurnDiscarded`: a finished stretch was only a back-channel ("mhm", a cough the
  recogniser wrote down as "hm") and does not count as a turn.

A turn ends at the first of:

1. a ``final`` with ``speech_final`` (the provider's endpointing saw a pause), when
   :attr:`TurnConfig.end_on_speech_final` is set;
2. an ``utterance_end`` after at least one final (the provider's word-gap timer);
3. the idle timer: no voiced audio and no transcript for :attr:`TurnConfig.idle_end_ms` (Discord
   stops sending packets in silence, and a stalled provider must not swallow the turn; the
   latest interim text is used when no final came);
4. the length cap: a final that takes the turn past ``max_turn_s`` or ``max_turn_chars`` ends
   this part (``reason="max_length"``, ``split=True``) and the speaker continues in a new turn.

Speakers are independent: each has its own state, and one speaker's silence never ends
another's turn. Answering one turn at a time and folding turns that arrive mid-reply into the
next one is the orchestrator's job, not this module's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from familiar_connect.speech.stt.base import TranscriptEvent

__all__ = [
    "DEFAULT_ACKNOWLEDGEMENT_WORDS",
    "DEFAULT_FILLER_WORDS",
    "SpeechOnset",
    "TurnConfig",
    "TurnDetected",
    "TurnDetector",
    "TurnDiscarded",
    "TurnEndReason",
    "TurnSignal",
]

DEFAULT_FILLER_WORDS: frozenset[str] = frozenset(
    {"mhm", "mm", "mmm", "hm", "hmm", "uh", "um", "umm", "ah", "oh", "huh", "uh-huh", "mm-hmm"}
)
"""Sounds that are never a turn or an interruption on their own."""

DEFAULT_ACKNOWLEDGEMENT_WORDS: frozenset[str] = frozenset(
    {"yeah", "yes", "yep", "yup", "okay", "ok", "right", "sure", "cool", "nice", "wow", "true"}
)
"""Words a listener says while the familiar talks: a turn when alone, never an interruption."""

TurnEndReason: TypeAlias = Literal["speech_final", "utterance_end", "idle", "max_length", "flush"]

_NS_PER_MS = 1_000_000
_DEFAULT_FRAME_NS = 20 * _NS_PER_MS
_PUNCTUATION = re.compile(r"[^\w\s'-]+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Knobs of turn detection; every duration carries its unit.

    Attributes:
        end_on_speech_final: end a turn on the provider's endpointing (fastest reply).
        idle_end_ms: end a turn after this long with no voiced audio and no transcript.
        min_words: fewer words than this is a back-channel, not a turn.
        min_chars: fewer letters and digits than this is a back-channel, not a turn.
        filler_words: words that alone never make a turn or an interruption.
        acknowledgement_words: words that never make an interruption (but can be a turn).
        barge_in_min_words: words (besides fillers and acknowledgements) needed for an onset.
        barge_in_min_voiced_ms: voiced audio that makes an onset before any words arrive;
            ``None`` waits for words.
        max_turn_s: a turn is split at the first final after it has run this long.
        max_turn_chars: a turn is split at the first final that takes it past this length;
            a single transcript longer than this is truncated.
        max_speakers: speakers tracked at once; the least recently active idle one is forgotten.
    """

    end_on_speech_final: bool = True
    idle_end_ms: int = 1200
    min_words: int = 1
    min_chars: int = 2
    filler_words: frozenset[str] = DEFAULT_FILLER_WORDS
    acknowledgement_words: frozenset[str] = DEFAULT_ACKNOWLEDGEMENT_WORDS
    barge_in_min_words: int = 2
    barge_in_min_voiced_ms: int | None = 600
    max_turn_s: float = 30.0
    max_turn_chars: int = 2000
    max_speakers: int = 64

    def __post_init__(self) -> None:
        if self.idle_end_ms <= 0:
            raise ValueError("idle_end_ms must be positive")
        if self.min_words < 0 or self.min_chars < 0 or self.barge_in_min_words < 1:
            raise ValueError("word and character minimums must be non-negative (onset: >= 1)")
        if self.max_turn_s <= 0 or self.max_turn_chars <= 0 or self.max_speakers <= 0:
            raise ValueError("max_turn_s, max_turn_chars and max_speakers must be positive")


@dataclass(frozen=True, slots=True)
class SpeechOnset:
    """A speaker started saying something substantive (barge-in trigger).

    Attributes:
        speaker_id: who.
        at_ns: monotonic time of the evidence (transcript arrival or voiced audio).
        text: what was heard so far; empty when voiced duration alone triggered it.
    """

    speaker_id: str
    at_ns: int
    text: str


@dataclass(frozen=True, slots=True)
class TurnDetected:
    """A speaker's turn is complete.

    Attributes:
        speaker_id: who.
        text: the transcript of the turn, whitespace collapsed.
        speech_start_ns: first evidence of speech in the turn.
        speech_end_ns: end of the last voiced audio (the voice latency origin); when no audio
            notes were given, the arrival of the last transcript.
        stt_final_ns: when the final transcript arrived (or when the idle timer decided).
        confidence: the lowest confidence among the turn's finals, when the provider gave one.
        reason: what ended it.
        split: the turn was cut at the length cap and the speaker is still talking.
    """

    speaker_id: str
    text: str
    speech_start_ns: int
    speech_end_ns: int
    stt_final_ns: int
    confidence: float | None
    reason: TurnEndReason
    split: bool = False


@dataclass(frozen=True, slots=True)
class TurnDiscarded:
    """A finished stretch that was only a back-channel; it is not a turn.

    Attributes:
        speaker_id: who.
        text: what the recogniser wrote (for logs and counters, never the prompt).
    """

    speaker_id: str
    text: str


TurnSignal: TypeAlias = SpeechOnset | TurnDetected | TurnDiscarded


@dataclass(slots=True)
class _Speaker:
    finals: list[str] = field(default_factory=list)
    final_chars: int = 0
    interim: str = ""
    confidence: float | None = None
    speech_start_ns: int | None = None
    last_voiced_ns: int | None = None
    voiced_ns: int = 0
    last_activity_ns: int = 0
    last_transcript_ns: int | None = None
    stt_final_ns: int | None = None
    onset_sent: bool = False

    @property
    def in_turn(self) -> bool:
        return self.speech_start_ns is not None

    def begin(self, at_ns: int) -> None:
        if self.speech_start_ns is None:
            self.speech_start_ns = at_ns

    def reset(self, *, keep_onset: bool = False) -> None:
        self.finals.clear()
        self.final_chars = 0
        self.interim = ""
        self.confidence = None
        self.speech_start_ns = None
        self.last_voiced_ns = None
        self.voiced_ns = 0
        self.last_transcript_ns = None
        self.stt_final_ns = None
        self.onset_sent = self.onset_sent and keep_onset


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _words(text: str) -> list[str]:
    return _PUNCTUATION.sub(" ", text.lower()).split()


class TurnDetector:
    """Per-speaker turn state machine; feed it events, poll it with the time, act on its signals.

    Counters (for the dashboard): :attr:`turns`, :attr:`discarded`, :attr:`splits`,
    :attr:`truncated`, :attr:`evicted`.

    Args:
        config: thresholds; the defaults suit Deepgram with ``endpointing=300`` and
            ``utterance_end_ms=1000``.
    """

    def __init__(self, config: TurnConfig | None = None) -> None:
        self.config = config or TurnConfig()
        self._speakers: dict[str, _Speaker] = {}
        self.turns = 0
        self.discarded = 0
        self.splits = 0
        self.truncated = 0
        self.evicted = 0

    # -- inputs -------------------------------------------------------------------

    def on_audio(
        self,
        speaker_id: str,
        *,
        now_ns: int,
        duration_ns: int = _DEFAULT_FRAME_NS,
        voiced: bool = True,
    ) -> list[TurnSignal]:
        """Note audio from a speaker that ended at ``now_ns``.

        Args:
            speaker_id: who.
            now_ns: monotonic time the audio arrived (its end).
            duration_ns: how much audio it was.
            voiced: whether it holds voice (an energy VAD's verdict); unvoiced audio only keeps
                the speaker from being forgotten.

        Returns:
            A :class:`SpeechOnset` once the turn's voiced audio reaches
            ``barge_in_min_voiced_ms``, otherwise nothing.
        """
        speaker = self._speaker(speaker_id, now_ns)
        if not voiced:
            return []
        speaker.begin(now_ns - duration_ns)
        speaker.last_voiced_ns = now_ns
        speaker.voiced_ns += duration_ns
        speaker.last_activity_ns = now_ns
        threshold = self.config.barge_in_min_voiced_ms
        if (
            threshold is not None
            and not speaker.onset_sent
            and speaker.voiced_ns >= threshold * _NS_PER_MS
        ):
            speaker.onset_sent = True
            return [SpeechOnset(speaker_id, now_ns, "")]
        return []

    def on_transcript(self, speaker_id: str, event: TranscriptEvent) -> list[TurnSignal]:
        """Take one transcript event of ``speaker_id`` and return the signals it causes."""
        now_ns = event.received_ns
        speaker = self._speaker(speaker_id, now_ns)
        speaker.last_activity_ns = max(speaker.last_activity_ns, now_ns)
        if event.kind == "speech_started":
            speaker.begin(now_ns)
            return []
        if event.kind == "utterance_end":
            if speaker.finals:
                return self._complete(speaker_id, speaker, "utterance_end", now_ns)
            return []
        text = self._cap(_normalise(event.text))
        speaker.last_transcript_ns = now_ns
        if event.kind == "interim":
            if not text:
                return []
            speaker.begin(now_ns)
            speaker.interim = text
            return self._maybe_onset(speaker_id, speaker, now_ns)
        # A final replaces whatever interim covered the same audio.
        speaker.interim = ""
        signals: list[TurnSignal] = []
        if text:
            speaker.begin(now_ns)
            speaker.finals.append(text)
            speaker.final_chars += len(text) + 1
            speaker.stt_final_ns = now_ns
            if event.confidence is not None:
                speaker.confidence = (
                    event.confidence
                    if speaker.confidence is None
                    else min(speaker.confidence, event.confidence)
                )
            signals += self._maybe_onset(speaker_id, speaker, now_ns)
        if not speaker.finals:
            return signals
        if event.speech_final and self.config.end_on_speech_final:
            return signals + self._complete(speaker_id, speaker, "speech_final", now_ns)
        if text and self._too_long(speaker, now_ns):
            return signals + self._complete(speaker_id, speaker, "max_length", now_ns)
        return signals

    def poll(self, now_ns: int) -> list[TurnSignal]:
        """Run the idle timer: end every turn that has been quiet for ``idle_end_ms``."""
        limit_ns = self.config.idle_end_ms * _NS_PER_MS
        signals: list[TurnSignal] = []
        for speaker_id, speaker in list(self._speakers.items()):
            if speaker.in_turn and now_ns - speaker.last_activity_ns >= limit_ns:
                signals += self._complete(speaker_id, speaker, "idle", now_ns)
        return signals

    def next_deadline_ns(self) -> int | None:
        """When :meth:`poll` could next end a turn, or ``None`` when no turn is open."""
        limit_ns = self.config.idle_end_ms * _NS_PER_MS
        deadlines = [s.last_activity_ns + limit_ns for s in self._speakers.values() if s.in_turn]
        return min(deadlines) if deadlines else None

    def end_speaker(self, speaker_id: str, now_ns: int) -> list[TurnSignal]:
        """The speaker left or their stream closed: end an open turn now and forget them."""
        speaker = self._speakers.pop(speaker_id, None)
        if speaker is None or not speaker.in_turn:
            return []
        return self._complete(speaker_id, speaker, "flush", now_ns)

    def forget(self, speaker_id: str) -> None:
        """Drop a speaker's state without a signal (e.g. they opted out of voice processing)."""
        self._speakers.pop(speaker_id, None)

    def in_turn(self, speaker_id: str) -> bool:
        """Whether ``speaker_id`` has a turn open."""
        speaker = self._speakers.get(speaker_id)
        return speaker is not None and speaker.in_turn

    @property
    def speakers(self) -> Iterable[str]:
        """Speakers currently tracked."""
        return tuple(self._speakers)

    # -- internals ----------------------------------------------------------------

    def _speaker(self, speaker_id: str, now_ns: int) -> _Speaker:
        speaker = self._speakers.get(speaker_id)
        if speaker is not None:
            return speaker
        if len(self._speakers) >= self.config.max_speakers:
            self._evict()
        speaker = _Speaker(last_activity_ns=now_ns)
        self._speakers[speaker_id] = speaker
        return speaker

    def _evict(self) -> None:
        idle = [(s.last_activity_ns, k) for k, s in self._speakers.items() if not s.in_turn]
        pool = idle or [(s.last_activity_ns, k) for k, s in self._speakers.items()]
        _, victim = min(pool)
        del self._speakers[victim]
        self.evicted += 1

    def _cap(self, text: str) -> str:
        limit = self.config.max_turn_chars
        if len(text) <= limit:
            return text
        self.truncated += 1
        return text[:limit]

    def _too_long(self, speaker: _Speaker, now_ns: int) -> bool:
        start = speaker.speech_start_ns if speaker.speech_start_ns is not None else now_ns
        return (
            speaker.final_chars >= self.config.max_turn_chars
            or now_ns - start >= self.config.max_turn_s * 1e9
        )

    def _substantive_words(self, text: str) -> list[str]:
        skip = self.config.filler_words | self.config.acknowledgement_words
        return [w for w in _words(text) if w not in skip]

    def _maybe_onset(self, speaker_id: str, speaker: _Speaker, now_ns: int) -> list[TurnSignal]:
        if speaker.onset_sent:
            return []
        heard = " ".join([*speaker.finals, speaker.interim]).strip()
        if len(self._substantive_words(heard)) < self.config.barge_in_min_words:
            return []
        speaker.onset_sent = True
        return [SpeechOnset(speaker_id, now_ns, heard)]

    def _is_backchannel(self, text: str) -> bool:
        words = _words(text)
        if len(words) < self.config.min_words:
            return True
        if sum(ch.isalnum() for ch in text) < self.config.min_chars:
            return True
        return all(w in self.config.filler_words for w in words)

    def _complete(
        self, speaker_id: str, speaker: _Speaker, reason: TurnEndReason, now_ns: int
    ) -> list[TurnSignal]:
        parts = list(speaker.finals)
        use_interim = bool(speaker.interim) and reason in ("idle", "flush")
        if use_interim:
            parts.append(speaker.interim)
        text = _normalise(" ".join(parts))
        split = reason == "max_length"
        start_ns = speaker.speech_start_ns if speaker.speech_start_ns is not None else now_ns
        if use_interim or speaker.stt_final_ns is None:
            final_ns = now_ns
        else:
            final_ns = speaker.stt_final_ns
        if speaker.last_voiced_ns is not None:
            end_ns = speaker.last_voiced_ns
        else:
            end_ns = speaker.last_transcript_ns or now_ns
        end_ns = min(end_ns, final_ns)
        confidence = speaker.confidence
        speaker.reset(keep_onset=split)
        if split:
            # The speaker is still talking: the next part starts now.
            speaker.speech_start_ns = now_ns
            self.splits += 1
        if not text:
            return []
        if self._is_backchannel(text):
            self.discarded += 1
            return [TurnDiscarded(speaker_id, text)]
        self.turns += 1
        return [
            TurnDetected(
                speaker_id=speaker_id,
                text=text,
                speech_start_ns=min(start_ns, end_ns),
                speech_end_ns=end_ns,
                stt_final_ns=final_ns,
                confidence=confidence,
                reason=reason,
                split=split,
            )
        ]
