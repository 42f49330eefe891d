"""Azure adapters with the real SDK against the loopback USP fake.

The fake runs in this test's event loop; the SDK runs in a child process
(:mod:`tests.speech.azure_runner`) because the SDK can abort the interpreter at exit, and a
native abort must not take pytest with it. Every child must exit 0 with no ``FATAL`` on stderr:
that is the check that the adapters dispose every SDK object.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.azure_speech import STT_PATH, FakeAzureSpeech, SttScript, utterance

pytestmark = pytest.mark.slow

AZURE_KEY = "az-test-canary-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 60.0  # a guard for a hung child, never reached when things work


@pytest.fixture(name="fake_azure")
async def fixture_fake_azure() -> AsyncIterator[FakeAzureSpeech]:
    async with FakeAzureSpeech(key=AZURE_KEY, seconds_per_char=0.02, chunk_ms=100) as fake:
        yield fake


async def run_child(
    fake: FakeAzureSpeech, scenario: str, *, key: str = AZURE_KEY, **options: Any
) -> dict[str, Any]:
    """Run one runner scenario against ``fake``; assert a clean exit; return its JSON."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.speech.azure_runner",
        scenario,
        fake.ws_base_url,
        key,
        json.dumps(options),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CHILD_TIMEOUT_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    stderr = err.decode(errors="replace")
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{stderr[-4000:]}"
    assert "FATAL" not in stderr, stderr[-4000:]
    assert key not in stderr and key not in out.decode(errors="replace")
    return json.loads(out.decode().strip().splitlines()[-1])


class TestAzureTranscriberAgainstFake:
    async def test_transcribes_an_utterance(self, fake_azure: FakeAzureSpeech) -> None:
        """Tone in, finalize: speech start, an interim and a confident speech-final final come back."""
        fake_azure.script_stt(SttScript(steps=utterance("Hey Familiar, what's up?")))
        result = await run_child(
            fake_azure, "stt_transcribe", keyterms=["Familiar", "familiar", "Alice"], seconds=1.0
        )
        events = result["events"]
        assert [e["kind"] for e in events] == [
            "speech_started",
            "interim",
            "final",
            "utterance_end",
        ]
        final = events[2]
        assert (final["text"], final["confidence"], final["speech_final"]) == (
            "Hey Familiar, what's up?",
            0.93,
            True,
        )
        assert (final["start"], final["end"]) == (0.1, 0.9)
        # The end of speech is reported in the speaker's audio, without the inserted silence.
        assert events[3]["end"] == pytest.approx(1.0, abs=0.01)
        assert result["error"] is None and result["open_streams"] == 0
        # 48 kHz in, 16 kHz out, plus the silence finalize inserted.
        expected = result["fed_bytes"] / 3 + result["inserted_s"] * 32_000
        assert result["written_bytes"] == pytest.approx(expected, abs=64)

    async def test_the_wire_carries_what_azure_needs(self, fake_azure: FakeAzureSpeech) -> None:
        """Path, locale, key header, USP subprotocol, 16 kHz mono audio, the phrase list and endpointing."""
        fake_azure.script_stt(SttScript(steps=utterance("Hello.")))
        await run_child(
            fake_azure,
            "stt_transcribe",
            keyterms=["Familiar", "Alice"],
            language="en-GB",
            wait_interim=False,  # one word: no hypothesis
        )
        session = fake_azure.stt_sessions[0]
        assert fake_azure.requests_to(STT_PATH)
        assert (session.query["language"], session.query["format"]) == ("en-GB", "detailed")
        assert (session.key, session.protocol) == (AZURE_KEY, "USP")
        source = session.speech_config["context"]["audio"]["source"]
        assert (source["samplerate"], source["bitspersample"], source["channelcount"]) == (
            "16000",
            "16",
            "1",
        )
        channels, rate = struct.unpack("<HI", session.wav_header[22:28])
        assert (channels, rate) == (1, 16_000)
        items = session.speech_context["dgi"]["Groups"][0]["Items"]
        assert [i["Text"] for i in items] == ["Familiar", "Alice"]
        segmentation = session.speech_context["phraseDetection"]["CONVERSATION"]["segmentation"]
        assert segmentation["segmentationSilenceTimeoutMs"] == 300
        # One second of speech and the finalize silence (300 + 200 ms) reached the service.
        assert session.audio_ms >= 1400
        assert session.ended == "end_of_stream"

    async def test_refused_key_fails_open_and_is_not_retried(
        self, fake_azure: FakeAzureSpeech
    ) -> None:
        """A wrong key makes open_stream raise ProviderAuthError (401) after a single attempt."""
        result = await run_child(fake_azure, "stt_open_fails", key="wrong-key-000")
        assert result["error"]["type"] == "ProviderAuthError"
        assert result["error"]["status"] == 401 and result["open_streams"] == 0
        assert [s.ended for s in fake_azure.stt_sessions] == ["rejected"]

    async def test_drop_mid_utterance_loses_no_words(self, fake_azure: FakeAzureSpeech) -> None:
        """The connection drops after 300 ms; the SDK reconnects, replays, and the whole phrase arrives."""
        fake_azure.script_stt(
            SttScript(drop_after_ms=300), SttScript(steps=utterance("Hello there friend."))
        )
        result = await run_child(fake_azure, "stt_transcribe", seconds=1.0, wait_interim=False)
        finals = [e for e in result["events"] if e["kind"] == "final"]
        assert [f["text"] for f in finals] == ["Hello there friend."]
        assert (result["disconnects"], result["reconnects"]) == (1, 1)
        first, second = fake_azure.stt_sessions[:2]
        assert first.ended == "dropped"
        assert second.audio_ms >= 1000  # the replay covered the whole utterance

    async def test_key_refused_on_reconnect_ends_events(self, fake_azure: FakeAzureSpeech) -> None:
        """A key refused when the SDK reconnects ends events() with ProviderAuthError; audio is then ignored."""
        fake_azure.script_stt(SttScript(drop_after_ms=300), SttScript(reject_status=401))
        result = await run_child(fake_azure, "stt_fails_later", seconds=1.0)
        assert result["error"]["type"] == "ProviderAuthError"
        assert result["disconnects"] == 1 and result["fed_after_failure_ignored"]


class TestAzureSynthesizerAgainstFake:
    async def test_speaks_replies_with_word_timings(self, fake_azure: FakeAzureSpeech) -> None:
        """Clauses become 48 kHz audio and cumulative word timings over one warm connection."""
        result = await run_child(
            fake_azure, "tts_speak", replies=[["Hello there,", "how are you?"], ["Second."]]
        )
        first, second = result["replies"]
        sent = fake_azure.tts_requests
        assert " ".join(r.text for r in sent[:-1]) == "Hello there, how are you?"
        assert first["bytes"] == sum(r.audio_bytes for r in sent[:-1]) and first["peak"] > 1000
        assert second["bytes"] == sent[-1].audio_bytes and first["error"] is None
        words = [w[0] for w in first["words"]]
        assert words == ["Hello", "there", "how", "are", "you"]
        starts = [w[1] for w in first["words"]]
        assert starts == sorted(starts) and first["words"][-1][2] <= first["bytes"] / 96_000
        assert second["words"][0][1] == 0.0  # each reply counts from its own first sample
        # The warm-up connection is the one every request used.
        assert (result["connects"], fake_azure.tts_connections) == (1, 1)

    async def test_the_wire_carries_format_voice_and_language(
        self, fake_azure: FakeAzureSpeech
    ) -> None:
        """Requests ask for raw 48 kHz mono PCM with word boundaries, in the configured voice."""
        await run_child(fake_azure, "tts_speak", replies=[["Fish & chips <3"]])
        request = fake_azure.tts_requests[0]
        audio = request.context["synthesis"]["audio"]
        assert audio["outputFormat"] == "raw-48khz-16bit-mono-pcm"
        assert audio["metadataOptions"]["wordBoundaryEnabled"] is True
        assert 'name="en-GB-SoniaNeural"' in request.ssml and 'xml:lang="en-GB"' in request.ssml
        assert request.text == "Fish & chips <3" and "&amp;" in request.ssml

    async def test_cancel_stops_the_request_and_the_next_reply_plays(
        self, fake_azure: FakeAzureSpeech
    ) -> None:
        """Barge-in stops the request at the service; the next reply is spoken in full."""
        fake_azure.chunk_interval_s = 0.1  # the long first reply takes seconds to send
        long_reply = "Hello there, how are you doing today, my friend? " * 3
        result = await run_child(
            fake_azure,
            "tts_speak",
            replies=[[long_reply], ["Second."]],
            cancel_after_bytes=9600,
        )
        first, second = result["replies"]
        assert first["cancelled"] and first["error"] is None
        stopped, spoken = fake_azure.tts_requests
        full_bytes = int(len(stopped.text) * 0.02 * 48_000) * 2
        assert stopped.abandoned and not stopped.completed
        assert first["bytes"] <= stopped.audio_bytes < full_bytes
        assert spoken.completed and second["bytes"] == spoken.audio_bytes
        assert result["cancels"] == 1

    async def test_failures_are_translated_and_the_next_reply_recovers(
        self, fake_azure: FakeAzureSpeech
    ) -> None:
        """Invalid SSML is ProviderBadRequest, a silent service ProviderTimeout; a good reply in between works."""
        fake_azure.fail_next_synthesis(1007, "Invalid SSML")
        fake_azure.answer_next_synthesis()
        fake_azure.stall_next_synthesis()
        result = await run_child(
            fake_azure, "tts_speak", replies=[["One."], ["Two."], ["Three."]], stall_timeout_s=0.5
        )
        bad, good, stalled = result["replies"]
        assert (bad["error"]["type"], bad["error"]["status"]) == ("ProviderBadRequest", 400)
        assert good["error"] is None and good["bytes"] > 0
        assert stalled["error"]["type"] == "ProviderTimeout"

    async def test_refused_key_is_an_auth_error(self, fake_azure: FakeAzureSpeech) -> None:
        """A wrong key fails the reply's stream with ProviderAuthError (401)."""
        result = await run_child(fake_azure, "tts_speak", key="wrong-key-000", warm=False)
        error = result["replies"][0]["error"]
        assert (error["type"], error["status"]) == ("ProviderAuthError", 401)
        assert fake_azure.tts_requests == []
