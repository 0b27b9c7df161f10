"""Speculative transcription: the VAD's "paused"/"resumed" events and the STT that acts on them."""

from __future__ import annotations

import asyncio

import pytest

from callpipe.audio.vad import SileroVADAnalyzer, VADParams
from callpipe.pipeline import PipelineParams
from callpipe.pipeline.frames import (
    InputAudioRawFrame,
    MetricsFrame,
    TranscriptionFrame,
    UserSpeechPausedFrame,
    UserSpeechResumedFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.services.stt import SegmentedSTTService
from tests.helpers import ServiceHarness, wait_until

RATE = 8000


def silence(secs: float) -> bytes:
    return bytes(2 * int(RATE * secs))


def test_vad_says_paused_in_a_short_silence_and_resumed_when_speech_comes_back(speech_8k: bytes) -> None:
    analyzer = SileroVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.6))
    analyzer.set_pause_secs(0.1)
    events = analyzer.analyze(silence(0.3) + speech_8k + silence(0.2) + speech_8k + silence(1.0))
    kinds = [e.kind for e in events]
    # One turn (the gap is shorter than the stop window), with pauses inside it - the gap
    # and the speaker's own - each followed by "resumed", and a last pause before the stop.
    assert kinds[0] == "started" and kinds[-2:] == ["paused", "stopped"]
    assert kinds.count("started") == kinds.count("stopped") == 1
    middle = kinds[1:-2]
    assert middle and middle == ["paused", "resumed"] * (len(middle) // 2)
    paused, stopped = events[-2], events[-1]
    # The pause comes ~0.1 s into the silence, the stop ~0.3 s; both place the speech's end alike.
    assert 0.09 <= paused.stream_time - paused.speech_time <= 0.17
    assert paused.speech_time == stopped.speech_time


def test_without_pause_secs_the_vad_only_starts_and_stops(speech_8k: bytes) -> None:
    analyzer = SileroVADAnalyzer(sample_rate=RATE, params=VADParams(stop_secs=0.6))
    events = analyzer.analyze(silence(0.3) + speech_8k + silence(0.2) + speech_8k + silence(1.0))
    assert [e.kind for e in events] == ["started", "stopped"]


class CountingSTT(SegmentedSTTService):
    """Transcribes to the number of bytes it was given, slowly, and records each run."""

    def __init__(self) -> None:
        super().__init__(speculative=True, preroll_secs=0.0)
        self.runs: list[int] = []
        self.release = asyncio.Event()

    async def run_stt(self, pcm: bytes, sample_rate: int) -> str:
        self.runs.append(len(pcm))
        await self.release.wait()
        return f"{len(pcm)} bytes"


def audio(secs: float) -> InputAudioRawFrame:
    return InputAudioRawFrame(audio=b"\x01\x00" * int(RATE * secs), sample_rate=RATE)


@pytest.fixture()
async def harness() -> ServiceHarness:
    params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    return await ServiceHarness(CountingSTT(), params).start()


async def test_a_speculative_transcript_is_the_turns_transcript_when_the_stop_follows(
    harness: ServiceHarness,
) -> None:
    stt = harness.service
    assert isinstance(stt, CountingSTT)
    for frame in (UserStartedSpeakingFrame(), audio(1.0), UserSpeechPausedFrame()):
        await harness.task.queue_frame(frame)
    await wait_until(lambda: stt.runs == [2 * RATE])  # started at the pause, before any stop
    await harness.task.queue_frame(audio(0.2))  # the rest of the stop window (silence)
    await harness.task.queue_frame(UserStoppedSpeakingFrame())
    stt.release.set()
    await wait_until(lambda: bool(harness.down.seen(TranscriptionFrame)))
    assert [f.text for f in harness.down.seen(TranscriptionFrame)] == [f"{2 * RATE} bytes"]
    assert stt.runs == [2 * RATE]  # no second decode at the stop
    names = [d.name for f in harness.down.seen(MetricsFrame) for d in f.data]
    assert "transcript_after_stop" in names
    await harness.cancel()


async def test_resumed_speech_throws_the_speculation_away(harness: ServiceHarness) -> None:
    stt = harness.service
    assert isinstance(stt, CountingSTT)
    for frame in (UserStartedSpeakingFrame(), audio(1.0), UserSpeechPausedFrame()):
        await harness.task.queue_frame(frame)
    await wait_until(lambda: len(stt.runs) == 1)
    for frame in (UserSpeechResumedFrame(), audio(0.5), UserStoppedSpeakingFrame()):
        await harness.task.queue_frame(frame)
    await wait_until(lambda: len(stt.runs) == 2)
    stt.release.set()
    await wait_until(lambda: bool(harness.down.seen(TranscriptionFrame)))
    await asyncio.sleep(0.05)  # a late speculative result would show up here
    # The whole utterance, including what came after the pause, and only once.
    assert [f.text for f in harness.down.seen(TranscriptionFrame)] == [f"{3 * RATE} bytes"]
    assert stt.runs == [2 * RATE, 3 * RATE]
    await harness.cancel()


async def test_the_scripted_reply_is_previewed_without_changing_the_conversation() -> None:
    from callpipe.pipeline.frames import SpeculativeTranscriptionFrame, TTSPrefetchFrame
    from callpipe.services.scripted import ScriptedLLMService

    llm = ScriptedLLMService()
    assert llm.preview("Thursday, please.").startswith("Sure, what time on Thursday")
    assert llm.preview("I'd like to book a cleaning on Friday at 3 pm.").startswith("You're booked")
    # Nothing was booked by previewing: the same words get the same answer.
    assert llm.preview("Thursday, please.").startswith("Sure, what time on Thursday")
    params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    harness = await ServiceHarness(llm, params).start()
    await harness.task.queue_frame(SpeculativeTranscriptionFrame(text="What are your hours on Saturday?"))
    await wait_until(lambda: bool(harness.down.seen(TTSPrefetchFrame)))
    assert [f.text for f in harness.down.seen(TTSPrefetchFrame)] == [
        "We're open Saturdays from 9 AM to 1 PM."
    ]
    await harness.cancel()


async def test_piper_speaks_a_prefetched_sentence_without_synthesizing_it_again() -> None:
    pytest.importorskip("piper", reason="needs callpipe[local]")
    from callpipe.pipeline.frames import TTSAudioRawFrame, TTSPrefetchFrame, TTSSpeakFrame
    from callpipe.services.piper import PiperTTSService
    from callpipe.services.workers import ModelResult

    texts: list[str] = []

    class Counting(PiperTTSService):
        async def synthesize_timed(self, text: str, *, deadline: float | None = None) -> ModelResult[bytes]:
            texts.append(text)
            return ModelResult(b"\x00\x01" * 800, 0.0, 0.0)

    tts = Counting(sample_rate=RATE)
    params = PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE)
    harness = await ServiceHarness(tts, params).start()
    await harness.task.queue_frame(TTSPrefetchFrame(text="Sure, what time works?"))
    await harness.task.queue_frame(TTSSpeakFrame("Sure, what time works?"))
    await wait_until(lambda: bool(harness.down.seen(TTSAudioRawFrame)))
    await harness.task.queue_frame(TTSPrefetchFrame(text="A sentence never asked for."))
    await harness.task.queue_frame(TTSSpeakFrame("Something else."))
    await wait_until(lambda: texts.count("Something else.") == 1)
    assert texts == ["Sure, what time works?", "A sentence never asked for.", "Something else."]
    await harness.cancel()


def test_a_long_sentence_is_split_at_its_first_comma_for_a_faster_first_audio() -> None:
    pytest.importorskip("piper", reason="needs callpipe[local]")
    from callpipe.services.piper import split_long_sentence

    assert split_long_sentence("Hi Maria, thanks for calling Bright Smile Dental, this is Ava.") == [
        "Hi Maria,",
        "thanks for calling Bright Smile Dental, this is Ava.",
    ]
    assert split_long_sentence("Sure, what time on Thursday works for you?") == [
        "Sure, what time on Thursday works for you?"  # one word before the comma: not worth it
    ]
    assert split_long_sentence("Thanks for calling Bright Smile Dental, Maria.") == [
        "Thanks for calling Bright Smile Dental, Maria."  # the rest is too short
    ]
