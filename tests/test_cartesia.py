"""CartesiaTTSService against the fake Cartesia server, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from callpipe.pipeline import PipelineParams
from callpipe.pipeline.frames import (
    EndFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from callpipe.pipeline.processor import FrameDirection
from callpipe.server.background import BackgroundServer, free_port
from callpipe.services.cartesia import CartesiaTTSService
from callpipe.sim.fake_cartesia import FakeCartesiaState, create_fake_cartesia_app
from tests.helpers import DEADLINE, ServiceHarness, wait_until

UP = FrameDirection.UPSTREAM
DOWN = FrameDirection.DOWNSTREAM
CHARS_PER_SEC = 14.0  # the fake's speaking rate (secs_per_char = 1/14)


class Harness(ServiceHarness):
    """[up, Cartesia, down] in a running PipelineTask."""

    service: CartesiaTTSService

    def __init__(self, service: CartesiaTTSService) -> None:
        super().__init__(service, PipelineParams(audio_out_sample_rate=service.sample_rate))

    async def start(self, *, connected: bool = True) -> Harness:
        await super().start()
        if connected:
            await wait_until(lambda: self.service.connected)
        return self

    async def reply(self, *chunks: str) -> None:
        """Stream an LLM reply (text chunks between start/end frames)."""
        await self.task.queue_frames(
            [LLMFullResponseStartFrame(), *(LLMTextFrame(c) for c in chunks), LLMFullResponseEndFrame()]
        )

    def replies_done(self) -> int:
        return len(self.down.seen(LLMFullResponseEndFrame))

    def audio(self) -> list[TTSAudioRawFrame]:
        return self.down.seen(TTSAudioRawFrame)

    def audio_secs(self) -> float:
        return sum(f.duration for f in self.audio())


def speech_secs(*sentences: str) -> float:
    return sum(max(0.1, len(s) / CHARS_PER_SEC) for s in sentences)


@pytest.fixture()
def fake() -> Iterator[tuple[str, FakeCartesiaState]]:
    app = create_fake_cartesia_app("ct-test")
    with BackgroundServer(app) as server:
        yield server.ws_url, app.state.cartesia


def make(url: str, **kwargs: Any) -> CartesiaTTSService:
    kwargs.setdefault("reconnect_backoff_secs", 0.05)
    return CartesiaTTSService(kwargs.pop("api_key", "ct-test"), voice_id="voice-1", base_url=url, **kwargs)


# ------------------------------------------------------------------ happy path


async def test_a_reply_is_spoken_on_one_context_sentence_by_sentence(
    fake: tuple[str, FakeCartesiaState],
) -> None:
    url, state = fake
    h = await Harness(make(url)).start()
    try:
        await h.reply("Hello ", "there. How are ", "you today?")
        await wait_until(lambda: h.replies_done() == 1)
        # The base class's frames, in order: start, audio interleaved with words, stop, end.
        kinds = [type(f) for f, d, _ in h.down.frames if d is DOWN and not isinstance(f, MetricsFrame)]
        kinds = [k for i, k in enumerate(kinds) if i == 0 or k is not kinds[i - 1]]  # collapse runs
        assert kinds[:3] == [StartFrame, LLMFullResponseStartFrame, TTSStartedFrame]
        assert kinds[-2:] == [TTSStoppedFrame, LLMFullResponseEndFrame]
        words = [f.text for f in h.down.seen(TTSTextFrame)]
        assert words == ["Hello", "there.", "How", "are", "you", "today?"]
        assert {f.sample_rate for f in h.audio()} == {8000}
        assert h.audio_secs() == pytest.approx(speech_secs("Hello there.", "How are you today?"), abs=0.01)
        metrics = h.down.seen(MetricsFrame)
        assert (
            len(metrics) == 2 and metrics[0].data[0].name == "ttfb" and metrics[0].data[0].model == "voice-1"
        )
        assert h.errors() == []

        # A second reply gets a context of its own, on the same socket.
        await h.task.queue_frame(TTSSpeakFrame("Goodbye now."))
        await wait_until(lambda: h.replies_done() == 2)
        await h.end()
    finally:
        await h.cancel()

    assert len(state.connections) == 1
    connection = state.connections[0]
    assert connection.headers["x-api-key"] == "ct-test"
    assert connection.headers["cartesia-version"] == "2025-04-16"
    assert "api_key" not in connection.query  # the key stays out of the URL
    assert connection.closed_by == "client"

    first, second = state.contexts.values()
    assert first.first_request == {
        "context_id": first.context_id,
        "model_id": "sonic-2",
        "transcript": "Hello there. ",
        "voice": {"mode": "id", "id": "voice-1"},
        "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 8000},
        "language": "en",
        "continue": True,
    }
    # Sentences continue the context, each followed by a flush; the reply's end closes it.
    assert [(i["transcript"], i["continue"], i.get("flush", False)) for i in first.inputs] == [
        ("Hello there. ", True, False),
        ("", True, True),
        ("How are you today? ", True, False),
        ("", True, True),
        ("", False, False),
    ]
    assert [m["type"] for m in first.sent if m["type"] != "chunk"] == ["flush_done", "flush_done", "done"]
    assert first.errors == [] and not first.cancelled
    assert second.transcripts == ["Goodbye now. "] and second.done_sent
    assert second.context_id != first.context_id
    assert state.cancels() == []


async def test_mulaw_output_is_decoded_to_pcm(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    h = await Harness(make(url, encoding="pcm_mulaw")).start()
    try:
        await h.task.queue_frame(TTSSpeakFrame("Testing mu-law."))
        await wait_until(lambda: h.replies_done() == 1)
        await h.end()
    finally:
        await h.cancel()
    ctx = next(iter(state.contexts.values()))
    assert ctx.first_request["output_format"]["encoding"] == "pcm_mulaw"
    pcm = b"".join(f.audio for f in h.audio())
    assert len(pcm) == 2 * ctx.audio_bytes  # one byte per sample on the wire, two in the pipeline
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    assert float(np.sqrt(np.mean(samples**2))) == pytest.approx(0.3 * 32767 / np.sqrt(2), rel=0.05)


async def test_other_sample_rates_reach_the_pipeline(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    h = await Harness(make(url, sample_rate=16000)).start()
    try:
        await h.task.queue_frame(TTSSpeakFrame("Wideband audio."))
        await wait_until(lambda: h.replies_done() == 1)
        await h.end()
    finally:
        await h.cancel()
    assert {f.sample_rate for f in h.audio()} == {16000}
    assert h.audio_secs() == pytest.approx(speech_secs("Wideband audio."), abs=0.01)
    assert next(iter(state.contexts.values())).sample_rate == 16000


async def test_end_frame_waits_for_the_goodbye_then_closes_the_socket(
    fake: tuple[str, FakeCartesiaState],
) -> None:
    url, state = fake
    state.delay_secs = 0.005
    h = await Harness(make(url)).start()
    try:
        await h.task.queue_frames([TTSSpeakFrame("Thanks for calling, goodbye."), EndFrame()])
        assert h.run is not None
        await asyncio.wait_for(h.run, DEADLINE)
    finally:
        await h.cancel()
    assert h.audio_secs() == pytest.approx(speech_secs("Thanks for calling, goodbye."), abs=0.01)
    kinds = [type(f) for f in h.down.seen()]
    assert kinds.index(EndFrame) > max(i for i, k in enumerate(kinds) if k is TTSAudioRawFrame)
    await wait_until(lambda: state.connections[0].closed_at is not None)
    assert not h.service.connected


# ---------------------------------------------------------------------- barge-in


async def test_barge_in_cancels_the_context_and_stops_the_audio(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    state.delay_secs = 0.02  # 40 ms chunks at twice real time: the reply takes seconds
    h = await Harness(make(url)).start()
    try:
        long_sentence = "This is a rather long answer that goes on and on for quite a while indeed."
        await h.reply(long_sentence)
        await wait_until(lambda: len(h.audio()) >= 5)
        context_id = h.service.context_id
        assert context_id is not None
        await h.task.queue_frame(InterruptionFrame())
        await wait_until(lambda: state.cancels() == [context_id])
        pushed = len(h.audio())
        await asyncio.sleep(0.3)
        assert len(h.audio()) == pushed  # nothing more after the barge-in
        ctx = state.contexts[context_id]
        assert ctx.cancelled and not ctx.done_sent
        assert ctx.chunks < 5 + 0.3 / 0.02 + 5  # Cartesia stopped generating, too
        assert h.audio_secs() < speech_secs(long_sentence) / 2
        assert h.service.context_id is None
        assert h.errors() == []

        # The next reply starts a fresh context and is spoken in full.
        state.delay_secs = 0.0
        await h.task.queue_frame(TTSSpeakFrame("Sure, go ahead."))
        await wait_until(lambda: any(f.text == "ahead." for f in h.down.seen(TTSTextFrame)))
        await wait_until(lambda: h.replies_done() >= 1)
        fresh = [c for c in state.contexts.values() if c.context_id != context_id]
        assert len(fresh) == 1 and fresh[0].transcripts == ["Sure, go ahead. "] and fresh[0].done_sent
        await h.end()
    finally:
        await h.cancel()


async def test_interruption_between_sentences_cancels_the_open_context(
    fake: tuple[str, FakeCartesiaState],
) -> None:
    url, state = fake
    h = await Harness(make(url)).start()
    try:
        # The LLM has produced one sentence and is still thinking about the next.
        await h.task.queue_frames([LLMFullResponseStartFrame(), LLMTextFrame("First part done. And")])
        await wait_until(lambda: any(f.text == "done." for f in h.down.seen(TTSTextFrame)))
        context_id = h.service.context_id
        assert context_id is not None
        await h.task.queue_frame(InterruptionFrame())
        await wait_until(lambda: state.cancels() == [context_id])
        assert h.service.context_id is None
        await h.end()
    finally:
        await h.cancel()


# ---------------------------------------------------------------------- failures


async def test_error_message_is_reported_and_the_reply_goes_on(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    state.error_on = "boom"
    h = await Harness(make(url)).start()
    try:
        await h.reply("This one goes boom. ", "This one is fine.")
        await wait_until(lambda: h.replies_done() == 1)
        errors = h.errors()
        assert len(errors) == 1 and not errors[0].fatal
        assert "Cartesia error" in errors[0].error and "boom" in errors[0].error
        # The failed context is dropped; the next sentence is spoken on a new one.
        assert h.audio_secs() == pytest.approx(speech_secs("This one is fine."), abs=0.01)
        failed, fresh = state.contexts.values()
        assert failed.errors and fresh.transcripts == ["This one is fine. "] and fresh.done_sent
        assert not h.task.has_finished()
        await h.task.queue_frame(TextFrame("still here"))  # the pipeline still runs
        await h.end()
    finally:
        await h.cancel()
    assert len(state.connections) == 1


async def test_dropped_socket_mid_reply_raises_then_reconnects(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    state.drop_after_chunks = 3
    h = await Harness(make(url)).start()
    try:
        await h.task.queue_frame(TTSSpeakFrame("A sentence long enough to need many chunks of audio."))
        await wait_until(lambda: h.replies_done() == 1)
        errors = h.errors()
        assert len(errors) == 1 and "lost mid-reply" in errors[0].error and "1011" in errors[0].error
        assert len(h.audio()) >= 3
        # The service reconnects by itself; the next reply is spoken in full.
        await wait_until(lambda: len(state.connections) == 2 and h.service.connected)
        await h.task.queue_frame(TTSSpeakFrame("Back again."))
        await wait_until(lambda: h.replies_done() == 2)
        assert len(h.errors()) == 1
        assert sum(f.duration for f in h.audio()) > speech_secs("Back again.")
        await h.end()
    finally:
        await h.cancel()


async def test_slow_first_chunk_shows_in_ttfb_and_nothing_is_lost(
    fake: tuple[str, FakeCartesiaState],
) -> None:
    url, state = fake
    state.first_chunk_delay_secs = 0.3
    h = await Harness(make(url)).start()
    try:
        await h.reply("One sentence here. ", "And another one.")
        await wait_until(lambda: h.replies_done() == 1)
        ttfbs = [m.data[0].value for m in h.down.seen(MetricsFrame)]
        assert len(ttfbs) == 2 and all(value >= 0.3 for value in ttfbs)
        assert h.audio_secs() == pytest.approx(
            speech_secs("One sentence here.", "And another one."), abs=0.01
        )
        assert h.errors() == []
        await h.end()
    finally:
        await h.cancel()


async def test_a_wedged_socket_times_out_instead_of_hanging(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    state.first_chunk_delay_secs = 2.0
    h = await Harness(make(url, response_timeout_secs=0.3)).start()
    try:
        await h.task.queue_frame(TTSSpeakFrame("Hello?"))
        await wait_until(lambda: bool(h.errors()), timeout=2.0)
        assert "no answer from Cartesia in 0.3s" in h.errors()[0].error
        # The abandoned context is cancelled so Cartesia does not keep generating for it.
        await wait_until(lambda: len(state.cancels()) == 1)
    finally:
        await h.cancel()


async def test_bad_api_key_is_a_clear_error_and_the_call_goes_on(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    h = await Harness(make(url, api_key="wrong-key")).start(connected=False)
    try:
        await wait_until(lambda: bool(h.errors()))
        assert "rejected the API key (HTTP 401)" in h.errors()[0].error
        assert "wrong-key" not in h.errors()[0].error
        await h.task.queue_frame(TTSSpeakFrame("Anyone there?"))
        await wait_until(lambda: h.replies_done() == 1)
        assert len(h.errors()) == 2 and all(not e.fatal for e in h.errors())
        assert h.audio() == []
        assert [status for status, _ in state.rejected] == [401]  # a bad key is not retried
        assert not h.task.has_finished()
        await h.end()
    finally:
        await h.cancel()


async def test_transient_handshake_failure_is_retried(fake: tuple[str, FakeCartesiaState]) -> None:
    url, state = fake
    state.reject_connections = 1
    h = await Harness(make(url)).start()
    try:
        await h.task.queue_frame(TTSSpeakFrame("Made it."))
        await wait_until(lambda: h.replies_done() == 1)
        assert [status for status, _ in state.rejected] == [503]
        assert h.errors() == [] and h.audio()
        await h.end()
    finally:
        await h.cancel()


async def test_unreachable_service_reports_an_error() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    h = await Harness(make(url, reconnect_attempts=1)).start(connected=False)
    try:
        await wait_until(lambda: bool(h.errors()))
        assert (
            "cannot connect to Cartesia" in h.errors()[0].error and "after 2 attempts" in h.errors()[0].error
        )
        await h.end()
    finally:
        await h.cancel()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="sample rates"):
        CartesiaTTSService("k", voice_id="v", sample_rate=11025)
    with pytest.raises(ValueError, match="encoding"):
        CartesiaTTSService("k", voice_id="v", encoding="mp3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="voice_id"):
        CartesiaTTSService("k", voice_id="")
    assert CartesiaTTSService("k", voice_id="v", base_url="wss://x.test/").url == "wss://x.test/tts/websocket"
