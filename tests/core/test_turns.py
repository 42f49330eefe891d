"""Voice turn detection: transcripts and time in, turn signals out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from familiar_connect.core.turns import (
    SpeechOnset,
    TurnConfig,
    TurnDetected,
    TurnDetector,
    TurnDiscarded,
    TurnSignal,
)
from familiar_connect.speech.stt.base import TranscriptEvent

MS = 1_000_000


def final(
    text: str, at_ms: int, *, speech_final: bool = False, confidence: float | None = 0.9
) -> TranscriptEvent:
    return TranscriptEvent(
        "final", received_ns=at_ms * MS, text=text, speech_final=speech_final, confidence=confidence
    )


def interim(text: str, at_ms: int) -> TranscriptEvent:
    return TranscriptEvent("interim", received_ns=at_ms * MS, text=text)


def started(at_ms: int) -> TranscriptEvent:
    return TranscriptEvent("speech_started", received_ns=at_ms * MS)


def utterance_end(at_ms: int) -> TranscriptEvent:
    return TranscriptEvent("utterance_end", received_ns=at_ms * MS)


def turns(signals: list[TurnSignal]) -> list[TurnDetected]:
    return [s for s in signals if isinstance(s, TurnDetected)]


def speak(detector: TurnDetector, speaker: str, from_ms: int, to_ms: int) -> list[TurnSignal]:
    """Voiced 20 ms packets from ``from_ms`` to ``to_ms``."""
    out: list[TurnSignal] = []
    for t in range(from_ms + 20, to_ms + 1, 20):
        out += detector.on_audio(speaker, now_ns=t * MS)
    return out


@pytest.fixture(name="detector")
def _detector() -> TurnDetector:
    return TurnDetector(TurnConfig(idle_end_ms=1000, barge_in_min_voiced_ms=None))


class TestTurnDetector:
    def test_speech_final_ends_the_turn_with_stamps(self, detector: TurnDetector) -> None:
        """A final with speech_final completes the turn, stamped with voiced-audio end and STT final."""
        speak(detector, "alice", 0, 1200)
        detector.on_transcript("alice", interim("hey nova", 700))
        out = detector.on_transcript(
            "alice", final("hey nova, what's up?", 1500, speech_final=True)
        )
        assert out == [
            TurnDetected(
                speaker_id="alice",
                text="hey nova, what's up?",
                speech_start_ns=0,
                speech_end_ns=1200 * MS,
                stt_final_ns=1500 * MS,
                confidence=0.9,
                reason="speech_final",
            )
        ]
        assert not detector.in_turn("alice")

    def test_finals_accumulate_until_utterance_end(self, detector: TurnDetector) -> None:
        """Several finals without speech_final join into one turn closed by UtteranceEnd."""
        detector.on_transcript("alice", final("so I was thinking", 500, confidence=0.95))
        detector.on_transcript("alice", final("about the weekend", 900, confidence=0.8))
        out = detector.on_transcript("alice", utterance_end(1900))
        [turn] = turns(out)
        assert turn.text == "so I was thinking about the weekend"
        assert turn.reason == "utterance_end"
        assert turn.stt_final_ns == 900 * MS
        assert turn.confidence == pytest.approx(0.8)

    def test_utterance_end_without_final_waits(self, detector: TurnDetector) -> None:
        """UtteranceEnd with only an interim does not end the turn (the final is on its way)."""
        detector.on_transcript("alice", interim("hello", 300))
        assert detector.on_transcript("alice", utterance_end(1300)) == []
        assert detector.in_turn("alice")

    def test_speech_final_can_be_disabled(self) -> None:
        """With end_on_speech_final off, endpointing does not end the turn; UtteranceEnd does."""
        detector = TurnDetector(TurnConfig(end_on_speech_final=False))
        assert (
            turns(detector.on_transcript("a", final("hello there", 500, speech_final=True))) == []
        )
        assert turns(detector.on_transcript("a", utterance_end(1500)))[0].text == "hello there"

    def test_empty_speech_final_closes_earlier_finals(self, detector: TurnDetector) -> None:
        """An empty final with speech_final (a Finalize answer) ends a turn that has text."""
        detector.on_transcript("alice", final("tell me a joke", 500))
        [turn] = turns(detector.on_transcript("alice", final("", 900, speech_final=True)))
        assert turn.text == "tell me a joke"

    def test_idle_timer_ends_the_turn_with_the_interim(self, detector: TurnDetector) -> None:
        """A stalled provider cannot swallow a turn: after idle_end_ms the interim text is used."""
        speak(detector, "alice", 0, 600)
        detector.on_transcript("alice", interim("are you there", 700))
        assert detector.next_deadline_ns() == 1700 * MS
        assert detector.poll(1699 * MS) == []
        [turn] = turns(detector.poll(1700 * MS))
        assert (turn.text, turn.reason) == ("are you there", "idle")
        assert turn.speech_end_ns == 600 * MS
        assert turn.stt_final_ns == 1700 * MS
        assert detector.next_deadline_ns() is None

    def test_audio_keeps_the_turn_open(self, detector: TurnDetector) -> None:
        """Voiced audio resets the idle timer, so a slow talker is not cut off."""
        detector.on_transcript("alice", final("well", 100))
        speak(detector, "alice", 100, 1500)
        assert detector.poll(2000 * MS) == []
        assert turns(detector.poll(2500 * MS))[0].text == "well"

    def test_unvoiced_audio_does_not_keep_the_turn_open(self, detector: TurnDetector) -> None:
        """Silence frames (Discord's trailing packets) do not count as activity."""
        detector.on_transcript("alice", final("okay then", 100))
        detector.on_audio("alice", now_ns=900 * MS, voiced=False)
        assert turns(detector.poll(1100 * MS))[0].text == "okay then"

    @pytest.mark.parametrize("text", ["mhm", "Mm-hmm.", "uh huh", "hmm", "Um.", "a"])
    def test_back_channels_are_discarded(self, detector: TurnDetector, text: str) -> None:
        """Fillers and one-letter noise are not a turn; they are reported as discarded."""
        out = detector.on_transcript("alice", final(text, 400, speech_final=True))
        assert out == [TurnDiscarded("alice", text)]
        assert detector.discarded == 1 and detector.turns == 0

    def test_minimum_words_is_configurable(self) -> None:
        """min_words raises the bar for what counts as a turn."""
        detector = TurnDetector(TurnConfig(min_words=3))
        out = detector.on_transcript("a", final("yes please", 400, speech_final=True))
        assert out == [TurnDiscarded("a", "yes please")]

    def test_acknowledgement_alone_is_a_turn(self, detector: TurnDetector) -> None:
        """'Yeah.' answers a question, so it is a turn (just never an interruption)."""
        assert turns(detector.on_transcript("a", final("Yeah.", 400, speech_final=True)))

    def test_onset_needs_substantive_words(self, detector: TurnDetector) -> None:
        """Barge-in fires on the first two real words, not on fillers or acknowledgements."""
        assert detector.on_transcript("a", interim("mhm yeah", 200)) == []
        assert detector.on_transcript("a", interim("mhm yeah okay wait", 300)) == []
        out = detector.on_transcript("a", interim("mhm yeah okay wait stop", 400))
        assert out == [SpeechOnset("a", 400 * MS, "mhm yeah okay wait stop")]
        assert detector.on_transcript("a", interim("mhm yeah okay wait stop talking", 500)) == []

    def test_onset_from_voiced_duration(self) -> None:
        """With barge_in_min_voiced_ms set, enough voiced audio signals onset before any words."""
        detector = TurnDetector(TurnConfig(barge_in_min_voiced_ms=200))
        out = speak(detector, "a", 0, 400)
        assert out == [SpeechOnset("a", 200 * MS, "")]

    def test_cough_is_too_short_for_onset(self) -> None:
        """A 120 ms burst stays below the voiced-duration threshold: no interruption."""
        detector = TurnDetector(TurnConfig(barge_in_min_voiced_ms=300))
        assert speak(detector, "a", 0, 120) == []
        assert turns(detector.poll(5000 * MS)) == []
        assert not detector.in_turn("a")

    def test_speakers_are_independent(self, detector: TurnDetector) -> None:
        """Two people talking at once get separate turns; one's pause does not end the other's."""
        detector.on_transcript("alice", interim("I think that", 100))
        detector.on_transcript("bob", final("no way", 150))
        [bob] = turns(detector.on_transcript("bob", final("", 400, speech_final=True)))
        assert bob.speaker_id == "bob" and bob.text == "no way"
        assert detector.in_turn("alice")
        [alice] = turns(
            detector.on_transcript("alice", final("I think that works", 600, speech_final=True))
        )
        assert alice.text == "I think that works"

    def test_long_turn_is_split_at_a_final(self) -> None:
        """A speaker who talks past max_turn_s is split at the next final and carries on."""
        detector = TurnDetector(TurnConfig(max_turn_s=2.0, barge_in_min_voiced_ms=None))
        speak(detector, "a", 0, 1000)
        assert turns(detector.on_transcript("a", final("one two three", 1000))) == []
        [first] = turns(detector.on_transcript("a", final("four five six", 2100)))
        assert (first.text, first.reason, first.split) == (
            "one two three four five six",
            "max_length",
            True,
        )
        assert detector.in_turn("a")
        [second] = turns(detector.on_transcript("a", final("seven", 2500, speech_final=True)))
        assert second.text == "seven"
        assert detector.splits == 1

    def test_long_text_is_split_and_truncated(self) -> None:
        """max_turn_chars bounds a turn's text, and a single oversized transcript is cut."""
        detector = TurnDetector(TurnConfig(max_turn_chars=20))
        [turn] = turns(detector.on_transcript("a", final("x" * 50, 100)))
        assert len(turn.text) == 20 and turn.split
        assert detector.truncated == 1

    def test_end_speaker_flushes_and_forgets(self, detector: TurnDetector) -> None:
        """A speaker who leaves mid-turn gets their words delivered, then is forgotten."""
        detector.on_transcript("a", final("bye for", 100))
        detector.on_transcript("a", interim("now", 200))
        [turn] = turns(detector.end_speaker("a", 300 * MS))
        assert (turn.text, turn.reason) == ("bye for now", "flush")
        assert "a" not in detector.speakers
        assert detector.end_speaker("a", 400 * MS) == []

    def test_forget_drops_without_signal(self, detector: TurnDetector) -> None:
        """forget() (an opt-out) discards the state and emits nothing."""
        detector.on_transcript("a", final("private words", 100))
        detector.forget("a")
        assert detector.poll(10_000 * MS) == []

    def test_speaker_cap_evicts_idle_speakers_first(self) -> None:
        """Past max_speakers, the least recently active speaker without an open turn goes."""
        detector = TurnDetector(TurnConfig(max_speakers=2))
        detector.on_audio("idle", now_ns=1, voiced=False)
        detector.on_transcript("busy", interim("hello there", 2))
        detector.on_transcript("new", interim("hi", 3))
        assert set(detector.speakers) == {"busy", "new"}
        assert detector.evicted == 1

    def test_speech_end_never_after_stt_final(self, detector: TurnDetector) -> None:
        """Timing stamps stay in order even when audio notes arrive after the final."""
        detector.on_transcript("a", final("hello there", 500))
        speak(detector, "a", 500, 800)
        [turn] = turns(detector.on_transcript("a", final("", 600, speech_final=True)))
        assert turn.speech_start_ns <= turn.speech_end_ns <= turn.stt_final_ns

    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.sampled_from(
                    ["speech_started", "interim", "final", "utterance_end", "audio", "poll"]
                ),
                st.sampled_from(["", "mhm", "hello", "hello there friend", "what time is it"]),
                st.booleans(),
            ),
            max_size=60,
        )
    )
    def test_any_sequence_yields_ordered_stamps(
        self, steps: list[tuple[str, str, str, bool]]
    ) -> None:
        """Whatever arrives, every turn has text and start <= end-of-speech <= STT final."""
        detector = TurnDetector(TurnConfig(idle_end_ms=100))
        signals: list[TurnSignal] = []
        for i, (speaker, kind, text, flag) in enumerate(steps):
            now = (i + 1) * 40 * MS
            if kind == "audio":
                signals += detector.on_audio(speaker, now_ns=now, voiced=flag)
            elif kind == "poll":
                signals += detector.poll(now)
            else:
                event = TranscriptEvent(kind, received_ns=now, text=text, speech_final=flag)  # type: ignore[arg-type]
                signals += detector.on_transcript(speaker, event)
        signals += detector.poll(10**15)
        for turn in turns(signals):
            assert turn.text.strip()
            assert turn.speech_start_ns <= turn.speech_end_ns <= turn.stt_final_ns
        assert detector.next_deadline_ns() is None


class TestTurnConfig:
    def test_rejects_nonsense(self) -> None:
        """Non-positive timers and caps are refused at construction."""
        with pytest.raises(ValueError):
            TurnConfig(idle_end_ms=0)
        with pytest.raises(ValueError):
            TurnConfig(max_turn_chars=0)
        with pytest.raises(ValueError):
            TurnConfig(barge_in_min_words=0)
