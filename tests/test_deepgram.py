"""DeepgramSTTService against the fake Deepgram server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from callpipe.audio import ulaw_encode
from callpipe.pipeline import PipelineParams
from callpipe.pipeline.frames import (
    CancelFrame,
    EndFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    MetricsFrame,
    TextFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.server.background import BackgroundServer, free_port
from callpipe.services.deepgram import DeepgramSTTService
from callpipe.sim.fake_deepgram import FakeDeepgramState, create_fake_deepgram_app
from tests.conftest import tone
from tests.helpers import DEADLINE, ServiceHarness, wait_until

UP = FrameDirection.UPSTREAM
DOWN = FrameDirection.DOWNSTREAM


class Harness(ServiceHarness):
    """[up, Deepgram, down] in a running PipelineTask."""

    service: DeepgramSTTService

    def __init__(self, service: DeepgramSTTService, rate: int) -> None:
        super().__init__(service, PipelineParams(audio_in_sample_rate=rate))
        self.rate = rate

    async def audio(self, pcm: bytes, frame_ms: int = 20) -> None:
        step = self.rate * frame_ms // 1000 * 2
        for offset in range(0, len(pcm), step):
            await self.task.queue_frame(
                InputAudioRawFrame(audio=pcm[offset : offset + step], sample_rate=self.rate)
            )

    async def utterance(self, speech_secs: float = 0.5, silence_secs: float = 0.5) -> None:
        await self.task.queue_frame(UserStartedSpeakingFrame())
        await self.audio(tone(speech_secs, self.rate))
        ended_at = time.monotonic()
        await self.audio(silence(silence_secs, self.rate))
        await self.task.queue_frame(UserStoppedSpeakingFrame(speech_ended_at=ended_at))

    def finals(self) -> list[str]:
        return [f.text for f in self.down.seen(TranscriptionFrame)]


def silence(secs: float, rate: int) -> bytes:
    return bytes(int(secs * rate) * 2)


@pytest.fixture()
def fake() -> Iterator[tuple[str, FakeDeepgramState]]:
    app = create_fake_deepgram_app("dg-test", transcript=["Hello there.", "How are you today?"])
    with BackgroundServer(app) as server:
        yield server.ws_url, app.state.deepgram


def make(url: str, **kwargs: Any) -> DeepgramSTTService:
    kwargs.setdefault("reconnect_backoff_secs", 0.05)
    return DeepgramSTTService(kwargs.pop("api_key", "dg-test"), base_url=url, **kwargs)


# ------------------------------------------------------------------ happy path


async def test_speech_gives_interim_then_final_and_end_closes_the_stream(
    fake: tuple[str, FakeDeepgramState],
) -> None:
    url, state = fake
    h = await Harness(make(url), 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.utterance()
        await wait_until(lambda: bool(h.finals()))
        assert h.finals() == ["Hello there."]
        interims = h.down.seen(InterimTranscriptionFrame)
        assert [f.text for f in interims] == ["Hello"]
        assert h.down.arrival(interims[0]) <= h.down.arrival(h.down.seen(TranscriptionFrame)[0])
        final = h.down.seen(TranscriptionFrame)[0]
        assert (final.user_id, final.language) == ("caller", "en")
        # TTFB from the end of speech to the final transcript.
        await wait_until(lambda: bool(h.down.seen(MetricsFrame)))
        ttfb = h.down.seen(MetricsFrame)[0].data[0]
        assert ttfb.name == "ttfb" and ttfb.model == "nova-3" and 0 <= ttfb.value < 1.0
        # No input audio leaks past the STT.
        assert not h.down.seen(InputAudioRawFrame)
        assert h.errors() == []
        await h.end()
    finally:
        await h.cancel()

    session = state.last
    assert len(state.sessions) == 1
    assert session.query == {
        "model": "nova-3",
        "encoding": "linear16",
        "sample_rate": "16000",
        "channels": "1",
        "interim_results": "true",
        "endpointing": "300",
        "punctuate": "true",
        "smart_format": "true",
        "language": "en",
    }
    assert session.headers["authorization"] == "Token dg-test"
    # Every byte of audio arrived, as PCM16 at 16 kHz.
    assert session.audio_secs == pytest.approx(1.0, abs=0.001)
    assert bytes(session.audio[: 16000 * 2 // 2]) == tone(0.5, 16000)
    # EndFrame: CloseStream, Deepgram's Metadata summary, a normal close by the server.
    assert session.control_of("CloseStream") == [{"type": "CloseStream"}]
    assert [m["type"] for m in session.sent][-1] == "Metadata"
    assert session.close_code == 1000 and session.closed_by == "server"
    assert not h.service.connected


@pytest.mark.parametrize("rate", [8000, 16000])
async def test_mulaw_streams_8k_ulaw(fake: tuple[str, FakeDeepgramState], rate: int) -> None:
    url, state = fake
    h = await Harness(make(url, encoding="mulaw"), rate).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.utterance()
        await wait_until(lambda: bool(h.finals()))
        await h.end()
    finally:
        await h.cancel()
    session = state.last
    assert (session.query["encoding"], session.query["sample_rate"]) == ("mulaw", "8000")
    # One byte per sample at 8 kHz, whatever the pipeline's rate.
    assert len(session.audio) == pytest.approx(8000, abs=200)  # the resampler holds a few ms back
    if rate == 8000:
        assert bytes(session.audio) == ulaw_encode(tone(0.5, 8000) + silence(0.5, 8000))


async def test_extra_params_and_endpointing_off(fake: tuple[str, FakeDeepgramState]) -> None:
    url, state = fake
    service = make(
        url, endpointing_ms=None, sample_rate=8000, params={"keyterm": "callpipe", "model": "nova-2"}
    )
    h = await Harness(service, 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.utterance()
        await asyncio.sleep(0.2)
        # Without endpointing there is no final until the stream is finished...
        assert h.finals() == []
        await h.end()
        # ...and CloseStream makes Deepgram finish the utterance before it closes.
        assert h.finals() == ["Hello there."]
        assert h.down.arrival(h.down.seen(TranscriptionFrame)[0]) < h.down.arrival(h.down.seen(EndFrame)[0])
    finally:
        await h.cancel()
    query = state.last.query
    assert (query["endpointing"], query["keyterm"], query["model"], query["sample_rate"]) == (
        "false",
        "callpipe",
        "nova-2",
        "8000",
    )
    assert len(state.last.audio) == pytest.approx(8000 * 2, abs=400)  # resampled to 8 kHz PCM16


async def test_keepalive_is_sent_only_while_idle(fake: tuple[str, FakeDeepgramState]) -> None:
    url, state = fake
    h = await Harness(make(url, keepalive_secs=0.15), 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await wait_until(lambda: len(state.last.control_of("KeepAlive")) >= 2, timeout=2.0)
        assert state.last.control_of("KeepAlive")[0] == {"type": "KeepAlive"}
        # Streaming audio (20 ms frames, paced in real time) needs no KeepAlive.
        before = len(state.last.control_of("KeepAlive"))
        for _ in range(20):
            await h.audio(silence(0.02, 16000))
            await asyncio.sleep(0.02)
        assert len(state.last.control_of("KeepAlive")) <= before + 1
        await wait_until(lambda: h.service.keepalives_sent == len(state.last.control_of("KeepAlive")))
        await h.end()
    finally:
        await h.cancel()


# ------------------------------------------------------------------ failures


async def test_error_close_is_reported_and_the_stream_comes_back(fake: tuple[str, FakeDeepgramState]) -> None:
    url, state = fake
    state.error_after_messages = 5
    h = await Harness(make(url), 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.audio(silence(0.2, 16000))
        await wait_until(lambda: bool(h.errors()))
        error = h.errors()[0]
        assert not error.fatal and "1011" in error.error and "NET-0000" in error.error
        await wait_until(lambda: len(state.sessions) == 2 and h.service.connected)
        await h.utterance()
        await wait_until(lambda: bool(h.finals()))
        assert h.finals() == ["Hello there."]
        # The call is still up: frames still flow.
        await h.task.queue_frame(TextFrame("still here"))
        await wait_until(lambda: any(f.text == "still here" for f in h.down.seen(TextFrame)))
        assert not h.task.has_finished()
        await h.end()
    finally:
        await h.cancel()
    assert state.sessions[0].close_code == 1011


async def test_dropped_stream_reconnects_and_later_transcripts_work(
    fake: tuple[str, FakeDeepgramState],
) -> None:
    url, state = fake
    h = await Harness(make(url), 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.utterance()
        await wait_until(lambda: len(h.finals()) == 1)
        state.drop_after_messages = 3  # the stream goes away mid-utterance
        await h.utterance()
        await wait_until(lambda: len(state.sessions) == 2 and h.service.connected)
        assert state.sessions[0].close_code == 1001
        # A plain drop is not an error worth reporting: it is handled.
        assert h.errors() == []
        # Audio queued while the stream was down went to the new one; what was in flight
        # when it dropped may be lost, so the interrupted utterance may or may not count.
        heard = len(h.finals())
        await h.utterance()
        # ">=": the interrupted utterance's final, if any, may still land after ``heard``.
        await wait_until(lambda: len(h.finals()) >= heard + 1)
        assert state.sessions[1].audio_secs >= 1.0
        await h.end()
    finally:
        await h.cancel()


async def test_transient_handshake_failures_are_retried_with_backoff(
    fake: tuple[str, FakeDeepgramState],
) -> None:
    url, state = fake
    state.reject_connections = 2  # HTTP 503 twice, then accepted
    h = await Harness(make(url, reconnect_attempts=3), 16000).start()
    try:
        await h.audio(tone(0.3, 16000))  # queued while connecting
        await wait_until(lambda: h.service.connected)
        assert [status for status, _ in state.rejected] == [503, 503]
        await h.audio(silence(0.5, 16000))
        await wait_until(lambda: bool(h.finals()))
        assert h.finals() == ["Hello there."]
        assert h.errors() == []
        await h.end()
    finally:
        await h.cancel()


async def test_unreachable_service_gives_up_after_bounded_attempts_and_the_call_goes_on() -> None:
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    h = await Harness(make(url, reconnect_attempts=2, connect_timeout_secs=1.0), 16000).start()
    try:
        await wait_until(lambda: bool(h.errors()))
        error = h.errors()[0]
        assert not error.fatal
        assert "unavailable after 3 attempts" in error.error
        assert h.service.connections == 0
        # Audio after giving up is dropped at once, and the pipeline still runs.
        await h.audio(tone(1.0, 16000))
        assert h.service.buffered_audio_secs == 0
        await h.task.queue_frame(TextFrame("still here"))
        await wait_until(lambda: any(f.text == "still here" for f in h.down.seen(TextFrame)))
        await h.end()
    finally:
        await h.cancel()


async def test_audio_queue_is_bounded_and_never_blocks_while_disconnected() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    # Long backoff: the service stays "reconnecting" for the whole test.
    service = make(url, reconnect_attempts=5, reconnect_backoff_secs=30.0, connect_timeout_secs=1.0)
    h = await Harness(service, 16000).start()
    try:
        pcm = tone(5.0, 16000)
        started = time.monotonic()
        for offset in range(0, len(pcm), 640):  # 250 frames of 20 ms, straight into the service
            await service.queue_frame(InputAudioRawFrame(audio=pcm[offset : offset + 640], sample_rate=16000))
        assert time.monotonic() - started < 0.5
        assert 1.9 <= service.buffered_audio_secs <= 2.0
        assert service.dropped_audio_bytes == pytest.approx(3.0 * 32000, abs=700)
    finally:
        await h.cancel()


async def test_bad_api_key_is_a_clear_error_and_is_not_retried(fake: tuple[str, FakeDeepgramState]) -> None:
    url, state = fake
    h = await Harness(make(url, api_key="wrong-key"), 16000).start()
    try:
        await wait_until(lambda: bool(h.errors()))
        error = h.errors()[0]
        assert not error.fatal
        assert "rejected the API key (HTTP 401)" in error.error and "Invalid credentials" in error.error
        assert "wrong-key" not in error.error
        await asyncio.sleep(0.2)
        assert [status for status, _ in state.rejected] == [401]
        assert state.rejected[0][1]["authorization"] == "Token wrong-key"
        assert state.sessions == []
        assert not h.task.has_finished()
        await h.end()
    finally:
        await h.cancel()


async def test_slow_results_show_in_the_latency_and_nothing_is_lost(
    fake: tuple[str, FakeDeepgramState],
) -> None:
    url, state = fake
    state.result_delay_secs = 0.4
    h = await Harness(make(url), 16000).start()
    try:
        await wait_until(lambda: h.service.connected)
        await h.utterance()
        stopped_at = time.monotonic()
        await wait_until(lambda: bool(h.finals()))
        final = h.down.seen(TranscriptionFrame)[0]
        assert h.down.arrival(final) - stopped_at >= 0.35
        await wait_until(lambda: bool(h.down.seen(MetricsFrame)))
        assert h.down.seen(MetricsFrame)[0].data[0].value >= 0.35
        await h.utterance()
        await wait_until(lambda: len(h.finals()) == 2)
        assert h.finals() == ["Hello there.", "How are you today?"]
        assert [f.text for f in h.down.seen(InterimTranscriptionFrame)] == ["Hello", "How are"]
        await h.end()
    finally:
        await h.cancel()


async def test_cancel_closes_the_stream_at_once(fake: tuple[str, FakeDeepgramState]) -> None:
    url, state = fake
    h = await Harness(make(url), 16000).start()
    await wait_until(lambda: h.service.connected)
    await h.audio(tone(0.3, 16000))
    started = time.monotonic()
    await h.task.queue_frame(CancelFrame(reason="caller hung up"))
    assert h.run is not None
    await asyncio.wait_for(h.run, DEADLINE)
    assert time.monotonic() - started < 1.0
    await wait_until(lambda: state.last.closed_at is not None)
    assert state.last.control_of("CloseStream") == [{"type": "CloseStream"}]
    assert not h.service.connected


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="encoding"):
        DeepgramSTTService("k", encoding="opus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="API key"):
        DeepgramSTTService("")
    service = DeepgramSTTService("secret-key", encoding="mulaw", base_url="wss://example.test/")
    assert service.url.startswith("wss://example.test/v1/listen?model=nova-3&encoding=mulaw&sample_rate=8000")
    assert "secret-key" not in service.url
