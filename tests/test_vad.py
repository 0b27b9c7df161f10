"""Silero VAD: real speech clips (tests/data, made by make_speech_clips.py), batching, lifecycle."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
import wave
import weakref
from pathlib import Path

import numpy as np
import pytest

from callpipe.audio.vad import (
    SileroVADAnalyzer,
    SileroVADModel,
    VADBatcher,
    VADEvent,
    VADParams,
    VADState,
    volume_from_dbfs,
)

DATA = Path(__file__).resolve().parent / "data"
BOUNDS = json.loads((DATA / "speech_clips.json").read_text())
CLIPS = {8000: "speech_8k.wav", 16000: "speech_16k.wav"}
# The speech clip has pauses of up to ~0.5 s between words: these tests want one
# utterance, so they wait longer than the (Pipecat) default stop_secs of 0.2 s.
CLIP_PARAMS = VADParams(stop_secs=0.8)
TOLERANCE = 0.15  # seconds of slack on top of start_secs / stop_secs


def load_clip(rate: int) -> tuple[bytes, float, float]:
    """PCM bytes and the speech start/end (seconds) of the clip at ``rate``."""
    name = CLIPS[rate]
    with wave.open(str(DATA / name)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
        pcm = w.readframes(w.getnframes())
    return pcm, BOUNDS[name]["speech_start"], BOUNDS[name]["speech_end"]


def pcm_of(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2").tobytes()


def noise_pcm(rate: int, seconds: float, dbfs: float, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return pcm_of(rng.standard_normal(int(rate * seconds)) * 10 ** (dbfs / 20))


class Recording(SileroVADAnalyzer):
    """Also records every window's speech probability, to compare batched vs unbatched."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.probs: list[float] = []
        self.events: list[VADEvent] = []
        self.set_listener(self.events.append)

    def _advance(self, prob: float, volume: float) -> VADEvent | None:
        self.probs.append(prob)
        return super()._advance(prob, volume)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_clip_starts_and_stops_once(rate: int) -> None:
    pcm, speech_start, speech_end = load_clip(rate)
    params = CLIP_PARAMS
    analyzer = SileroVADAnalyzer(sample_rate=rate, params=CLIP_PARAMS)
    events = analyzer.analyze(pcm)

    assert [e.kind for e in events] == ["started", "stopped"]
    started, stopped = events
    assert speech_start < started.stream_time <= speech_start + params.start_secs + TOLERANCE
    assert abs(started.speech_time - speech_start) <= 0.1
    assert speech_end + params.stop_secs <= stopped.stream_time <= speech_end + params.stop_secs + TOLERANCE
    assert abs(stopped.speech_time - speech_end) <= 0.1
    assert stopped.stream_time - stopped.speech_time == pytest.approx(params.stop_secs, abs=0.04)
    assert analyzer.state is VADState.QUIET
    assert analyzer.confidence < 0.1


@pytest.mark.parametrize("rate", [8000, 16000])
def test_shorter_stop_secs_stops_earlier(rate: int) -> None:
    pcm, _, speech_end = load_clip(rate)
    analyzer = SileroVADAnalyzer(sample_rate=rate, params=VADParams(stop_secs=0.2))
    stops = [e for e in analyzer.analyze(pcm) if e.kind == "stopped"]
    # The short pause after "Hello," (about 0.1 s) may or may not split the turn at
    # 0.2 s; the final stop must come 0.2 s (+ tolerance) after the end of speech.
    assert speech_end + 0.2 <= stops[-1].stream_time <= speech_end + 0.2 + TOLERANCE


@pytest.mark.parametrize("rate", [8000, 16000])
def test_silence_and_line_noise_emit_nothing(rate: int) -> None:
    analyzer = SileroVADAnalyzer(sample_rate=rate, params=CLIP_PARAMS)
    assert analyzer.analyze(bytes(rate * 2 * 2)) == []
    assert analyzer.analyze(noise_pcm(rate, 2.0, -50.0)) == []
    assert analyzer.state is VADState.QUIET
    assert analyzer.volume < 0.3


@pytest.mark.parametrize("rate", [8000, 16000])
def test_loud_tone_is_not_speech(rate: int) -> None:
    # Observed: Silero gives a 1 kHz tone probabilities below 0.02; only "no events and
    # not even close to the threshold" is asserted. The volume gate is wide open, so
    # it is the model that rejects it.
    t = np.arange(2 * rate) / rate
    analyzer = Recording(sample_rate=rate, params=CLIP_PARAMS)
    assert analyzer.analyze(pcm_of(0.5 * np.sin(2 * np.pi * 1000 * t))) == []
    assert max(analyzer.probs) < 0.3
    assert analyzer.volume > 0.9


def test_quiet_speech_is_gated_by_min_volume() -> None:
    pcm, _, _ = load_clip(8000)
    quiet = pcm_of(np.frombuffer(pcm, dtype="<i2") / 32768.0 * 10 ** (-30 / 20))  # speech at -54 dBFS
    assert SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS).analyze(quiet) == []
    ungated = SileroVADAnalyzer(sample_rate=8000, params=VADParams(min_volume=0.0, confidence=0.5))
    assert [e.kind for e in ungated.analyze(quiet)] == ["started", "stopped"]


def test_volume_mapping() -> None:
    assert volume_from_dbfs([-70, -60, -50, -36, -30, -20, -10]).tolist() == pytest.approx(
        [0.0, 0.0, 0.25, 0.6, 0.75, 1.0, 1.0]
    )
    # The analyzer's (smoothed) volume on steady noise follows the same mapping.
    for dbfs in (-55.0, -40.0, -30.0, -24.0):
        analyzer = SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS)
        analyzer.analyze(noise_pcm(8000, 0.5, dbfs))
        assert analyzer.volume == pytest.approx(float(volume_from_dbfs(dbfs)), abs=0.02)


def test_state_machine_with_synthetic_windows() -> None:
    analyzer = SileroVADAnalyzer(sample_rate=8000, params=VADParams(start_secs=0.1, stop_secs=0.8))
    loud = 0.9  # raw volume of a loud window

    def step(prob: float, volume: float = loud) -> VADEvent | None:
        return analyzer._advance(prob, volume)

    # start_secs 0.1 s = 3.125 windows -> 4 speech windows; a gap sends STARTING back to QUIET.
    assert [step(0.9) for _ in range(3)] == [None] * 3
    assert analyzer.state is VADState.STARTING
    assert step(0.1) is None
    assert analyzer.state is VADState.QUIET
    events = [step(0.9) for _ in range(4)]
    assert events[:3] == [None] * 3
    assert events[3] == VADEvent("started", stream_time=0.256, speech_time=pytest.approx(0.128))
    # A short gap only visits STOPPING; stop_secs 0.8 s is exactly 25 windows.
    assert step(0.1) is None
    assert analyzer.state is VADState.STOPPING
    assert step(0.9) is None
    assert analyzer.state is VADState.SPEAKING
    events = [step(0.1, 0.0) for _ in range(25)]
    assert events[:24] == [None] * 24
    stopped = events[24]
    assert stopped is not None and stopped.kind == "stopped"
    assert stopped.stream_time - stopped.speech_time == pytest.approx(0.8)
    # One quiet window inside a word (raw volume 0.1) does not drop the smoothed volume
    # below min_volume, so the state stays SPEAKING.
    assert [e.kind if e else None for e in (step(0.9) for _ in range(8))] == [None] * 3 + ["started"] + [
        None
    ] * 4
    assert analyzer.state is VADState.SPEAKING
    assert step(0.9, 0.1) is None
    assert analyzer.state is VADState.SPEAKING
    assert analyzer.volume > 0.6
    assert [e.kind for e in (step(0.1, 0.0) for _ in range(25)) if e] == ["stopped"]
    assert analyzer.state is VADState.QUIET
    # High probability with low volume is not speech.
    assert [step(0.99, 0.1) for _ in range(10)] == [None] * 10
    assert analyzer.state is VADState.QUIET


@pytest.mark.parametrize("rate", [8000, 16000])
def test_probabilities_match_reference_loop(rate: int) -> None:
    # Oracle written straight from Silero's reference OnnxWrapper semantics: each model
    # input is the previous input's last 32/64 samples (zeros at first) + the window.
    pcm, _, _ = load_clip(rate)
    window, context = (256, 32) if rate == 8000 else (512, 64)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    model = SileroVADModel.shared()
    state = np.zeros((2, 1, 128), np.float32)
    previous = np.zeros(context, np.float32)
    expected = []
    for start in range(0, len(samples) - window + 1, window):
        x = np.concatenate([previous, samples[start : start + window]])[None, :]
        prob, state = model.infer(x, state, rate)
        expected.append(float(prob[0]))
        previous = x[0, -context:]
    analyzer = Recording(sample_rate=rate, params=CLIP_PARAMS)
    analyzer.analyze(pcm)
    assert np.max(np.abs(np.subtract(analyzer.probs, expected))) < 1e-6


@pytest.mark.parametrize("rate", [8000, 16000])
def test_chunked_feeding_matches_whole_buffer(rate: int) -> None:
    pcm, _, _ = load_clip(rate)
    whole = Recording(sample_rate=rate, params=CLIP_PARAMS)
    whole_events = whole.analyze(pcm)
    chunked = Recording(sample_rate=rate, params=CLIP_PARAMS)
    chunk = rate // 50 * 2  # 20 ms
    chunked_events = [e for i in range(0, len(pcm), chunk) for e in chunked.analyze(pcm[i : i + chunk])]
    assert chunked_events == whole_events
    assert chunked.probs == whole.probs


def test_odd_byte_chunks_are_buffered() -> None:
    pcm, _, _ = load_clip(8000)
    whole = SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS).analyze(pcm)
    odd = SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS)
    assert [e for i in range(0, len(pcm), 333) for e in odd.analyze(pcm[i : i + 333])] == whole


async def test_batched_matches_unbatched() -> None:
    # 20 calls with the clip at different offsets and different chunk sizes (20, 40,
    # 60 ms: several windows of one stream pending in one flush), through the loop's
    # default batcher and its max_delay timer.
    pcm, _, _ = load_clip(8000)
    streams = []
    for k in range(20):
        audio = noise_pcm(8000, 0.013 * k, -55.0, seed=k) + pcm
        reference = Recording(sample_rate=8000, params=CLIP_PARAMS)
        reference_events = reference.analyze(audio)
        streams.append(
            (
                audio,
                320 * (1 + k % 3),
                Recording(sample_rate=8000, params=CLIP_PARAMS),
                reference_events,
                reference.probs,
            )
        )
    assert all(len(s[3]) == 2 for s in streams)

    offsets = [0] * len(streams)
    while any(offset < len(audio) for offset, (audio, *_) in zip(offsets, streams, strict=True)):
        for i, (audio, chunk, analyzer, *_) in enumerate(streams):
            analyzer.push_audio(audio[offsets[i] : offsets[i] + chunk])
            offsets[i] += chunk
        await asyncio.sleep(0.005 if offsets[0] % 1280 == 0 else 0)
    await asyncio.sleep(0.01)

    batcher = VADBatcher.for_loop()
    assert batcher.pending == 0
    for _, _, analyzer, reference_events, reference_probs in streams:
        assert analyzer.events == reference_events
        assert len(analyzer.probs) == len(reference_probs)
        assert np.max(np.abs(np.subtract(analyzer.probs, reference_probs))) < 1e-4
    assert batcher.windows == sum(len(s[4]) for s in streams)
    assert batcher.windows / batcher.inferences > 5  # it really batched


async def test_max_batch_flushes_on_next_iteration_and_splits() -> None:
    batcher = VADBatcher(max_batch=8, max_delay=10.0)
    analyzers = [Recording(sample_rate=16000, batcher=batcher, params=CLIP_PARAMS) for _ in range(10)]
    second = [Recording(sample_rate=16000, batcher=batcher, params=CLIP_PARAMS) for _ in range(3)]
    window = noise_pcm(16000, 0.032, -40.0)
    for analyzer in analyzers:
        analyzer.push_audio(window)
    assert batcher.pending == 10
    await asyncio.sleep(0)
    assert batcher.pending == 0
    assert batcher.inferences == 2  # 10 windows, at most 8 per inference
    assert all(len(a.probs) == 1 for a in analyzers)
    # Below max_batch nothing happens before max_delay, but flush() works at any time.
    for analyzer in second:
        analyzer.push_audio(window)
    await asyncio.sleep(0)
    assert batcher.pending == 3
    batcher.flush()
    assert batcher.pending == 0 and all(len(a.probs) == 1 for a in second)


async def test_mixed_sample_rates_in_one_batcher() -> None:
    batcher = VADBatcher(max_delay=10.0)
    results = {}
    for rate in (8000, 16000):
        pcm, _, _ = load_clip(rate)
        reference = SileroVADAnalyzer(sample_rate=rate, params=CLIP_PARAMS).analyze(pcm)
        analyzer = Recording(sample_rate=rate, batcher=batcher, params=CLIP_PARAMS)
        results[rate] = (pcm, analyzer, reference)
    for pcm, analyzer, _ in results.values():
        analyzer.push_audio(pcm)
    batcher.flush()
    for _, analyzer, reference in results.values():
        assert analyzer.events == reference


async def test_listener_exception_does_not_break_other_calls(caplog: pytest.LogCaptureFixture) -> None:
    pcm, _, _ = load_clip(8000)
    batcher = VADBatcher(max_delay=10.0)
    bad = SileroVADAnalyzer(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)

    def explode(event: VADEvent) -> None:
        raise RuntimeError("boom")

    bad.set_listener(explode)
    good = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    with caplog.at_level(logging.ERROR, logger="callpipe.audio.vad"):
        bad.push_audio(pcm)
        good.push_audio(pcm)
        batcher.flush()
    assert [e.kind for e in good.events] == ["started", "stopped"]
    assert "VAD listener failed" in caplog.text


async def test_closed_and_forgotten_analyzers_are_dropped() -> None:
    batcher = VADBatcher(max_delay=10.0)
    window = noise_pcm(8000, 0.064, -40.0)
    closed = SileroVADAnalyzer(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    kept = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    closed.push_audio(window)
    kept.push_audio(window)
    assert batcher.pending == 4 and batcher.pending_for(closed) == 2
    closed.close()
    assert batcher.pending == 2 and batcher.pending_for(closed) == 0
    closed.push_audio(window)  # ignored after close
    assert batcher.pending == 2
    closed_ref = weakref.ref(closed)
    del closed
    gc.collect()
    assert closed_ref() is None

    # Not closed, just dropped by its owner: referenced only until the next flush.
    forgotten = SileroVADAnalyzer(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    forgotten.push_audio(window)
    forgotten_ref = weakref.ref(forgotten)
    del forgotten
    batcher.flush()
    gc.collect()
    assert forgotten_ref() is None
    assert len(kept.probs) == 2


async def test_listener_closing_another_call_mid_flush() -> None:
    # Both calls have the whole clip pending (one flush, ~137 rounds); when the first
    # starts speaking its listener closes the second, whose later windows are skipped.
    pcm, _, _ = load_clip(8000)
    batcher = VADBatcher(max_delay=10.0)
    first = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    second = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    first.set_listener(lambda event: second.close())
    first.push_audio(pcm)
    second.push_audio(pcm)
    batcher.flush()
    assert len(first.probs) == len(pcm) // 512
    started = SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS).analyze(pcm)[0]
    # The second is processed after the first within each round: it got every round
    # before the one in which the first started.
    assert len(second.probs) == round(started.stream_time / 0.032) - 1
    assert second.events == []


async def test_flush_from_a_listener_keeps_each_stream_in_order() -> None:
    pcm, _, _ = load_clip(8000)
    extra = noise_pcm(8000, 0.032, -40.0)
    reference = Recording(sample_rate=8000, params=CLIP_PARAMS)
    reference.analyze(pcm + extra)
    batcher = VADBatcher(max_delay=0.001)
    first = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    second = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)

    def meddle(event: VADEvent) -> None:
        if event.kind == "started":
            second.push_audio(extra)  # queued behind second's windows of this flush
            batcher.flush()  # ignored inside a flush; must not overtake them

    first.set_listener(meddle)
    first.push_audio(pcm)
    second.push_audio(pcm)
    batcher.flush()
    await asyncio.sleep(0.02)
    assert batcher.pending == 0
    assert second.probs == pytest.approx(reference.probs, abs=1e-4)


async def test_reset_drops_pending_windows_and_restarts_stream_time() -> None:
    pcm, _, _ = load_clip(8000)
    batcher = VADBatcher(max_delay=10.0)
    analyzer = Recording(sample_rate=8000, batcher=batcher, params=CLIP_PARAMS)
    analyzer.push_audio(pcm[:8000])
    assert batcher.pending_for(analyzer) > 0
    analyzer.reset()
    assert batcher.pending_for(analyzer) == 0
    analyzer.push_audio(pcm)
    batcher.flush()
    assert analyzer.events == SileroVADAnalyzer(sample_rate=8000, params=CLIP_PARAMS).analyze(pcm)


def test_push_audio_without_event_loop_runs_inline() -> None:
    pcm, _, _ = load_clip(16000)
    analyzer = Recording(sample_rate=16000, params=CLIP_PARAMS)
    analyzer.push_audio(pcm)
    assert [e.kind for e in analyzer.events] == ["started", "stopped"]


def test_invalid_sample_rates() -> None:
    with pytest.raises(ValueError):
        SileroVADAnalyzer(sample_rate=44100, params=CLIP_PARAMS)
    analyzer = SileroVADAnalyzer()
    assert analyzer.sample_rate is None
    with pytest.raises(RuntimeError):
        analyzer.push_audio(bytes(640))
    with pytest.raises(ValueError):
        analyzer.set_sample_rate(44100)
    with pytest.raises(ValueError):
        SileroVADModel.shared().infer(
            np.zeros((1, 288), np.float32), np.zeros((2, 1, 128), np.float32), 44100
        )
    with pytest.raises(ValueError):  # 8 kHz window size at 16 kHz
        SileroVADModel.shared().infer(
            np.zeros((1, 288), np.float32), np.zeros((2, 1, 128), np.float32), 16000
        )


def test_params_validation_and_pipecat_style_construction() -> None:
    analyzer = SileroVADAnalyzer(params=VADParams(stop_secs=0.2))
    assert analyzer.params == VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.2, min_volume=0.6)
    with pytest.raises(ValueError):
        VADParams(confidence=1.5)
    with pytest.raises(ValueError):
        VADParams(stop_secs=-1)


def test_creating_many_analyzers_is_cheap_and_shares_the_model() -> None:
    model = SileroVADModel.shared()
    loads = SileroVADModel.load_count
    start = time.perf_counter()
    analyzers = [SileroVADAnalyzer(sample_rate=8000, params=VADParams(stop_secs=0.3)) for _ in range(1000)]
    elapsed = time.perf_counter() - start
    for analyzer in analyzers[:10]:
        analyzer.analyze(bytes(512))
    assert SileroVADModel.load_count == loads
    assert SileroVADModel.shared() is model
    assert elapsed < 0.5, f"1000 analyzers took {elapsed:.3f} s"


def test_batcher_per_loop() -> None:
    async def get() -> VADBatcher:
        batcher = VADBatcher.for_loop()
        assert VADBatcher.for_loop(asyncio.get_running_loop()) is batcher
        return batcher

    first = asyncio.run(get())
    second = asyncio.run(get())
    assert first is not second
    gc.collect()
    assert first._loop_ref() is None  # the batcher does not keep its loop alive
