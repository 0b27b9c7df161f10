"""Shared model workers: fair across calls, bounded, deadlines, cancellation; and warm-up readiness."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from callpipe.log import call_id
from callpipe.server.app import create_app
from callpipe.server.background import free_port
from callpipe.server.settings import ServerSettings
from callpipe.services import warmup
from callpipe.services.workers import ModelDeadline, ModelOverloaded, ModelWorkers


def _blocker() -> tuple[threading.Event, threading.Event]:
    started, release = threading.Event(), threading.Event()
    return started, release


async def test_calls_are_served_round_robin_not_first_come() -> None:
    pool = ModelWorkers("test", workers=1, max_pending=16)
    started, release = _blocker()
    order: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(5)

    first = pool.submit(hold, key="warm")
    assert started.wait(5)
    # Call A queues three jobs, then call B one: B's must not wait behind all of A's.
    futures = [pool.submit(lambda n=n: order.append(f"A{n}"), key="A") for n in range(3)]
    futures.append(pool.submit(lambda: order.append("B0"), key="B"))
    release.set()
    for future in [first, *futures]:
        await asyncio.wait_for(asyncio.wrap_future(future), 5)
    assert order == ["A0", "B0", "A1", "A2"]


async def test_a_full_queue_refuses_at_once_and_the_wait_is_reported() -> None:
    pool = ModelWorkers("test", workers=1, max_pending=2)
    started, release = _blocker()

    def hold() -> str:
        started.set()
        release.wait(5)
        return "held"

    running = pool.submit(hold, key="a")
    assert started.wait(5)
    queued = [pool.submit(lambda: "queued", key="b"), pool.submit(lambda: "queued", key="c")]
    with pytest.raises(ModelOverloaded):
        pool.submit(lambda: "too many", key="d")
    assert pool.stats.refused == 1
    await asyncio.sleep(0.1)
    release.set()
    results = [await asyncio.wrap_future(f) for f in [running, *queued]]
    assert [r.value for r in results] == ["held", "queued", "queued"]
    assert results[1].queue_wait >= 0.1  # it waited behind the held job, and says so


async def test_a_job_past_its_deadline_is_dropped_not_run() -> None:
    pool = ModelWorkers("test", workers=1)
    started, release = _blocker()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(5)

    pool.submit(hold, key="a")
    assert started.wait(5)
    late = asyncio.ensure_future(pool.run(lambda: ran.append("late"), deadline=0.05))
    await asyncio.sleep(0.15)
    release.set()
    with pytest.raises(ModelDeadline):
        await asyncio.wait_for(late, 5)
    assert ran == [] and pool.stats.expired == 1


async def test_a_cancelled_await_skips_the_queued_job() -> None:
    pool = ModelWorkers("test", workers=1)
    started, release = _blocker()
    ran: list[str] = []

    def hold() -> None:
        started.set()
        release.wait(5)

    pool.submit(hold, key="a")
    assert started.wait(5)
    call_id.set("call-b")
    waiting = asyncio.ensure_future(pool.run(lambda: ran.append("skipped")))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    done = await asyncio.wrap_future(pool.submit(lambda: ran.append("after"), key="c"))
    assert done.value is None
    assert ran == ["after"] and pool.stats.cancelled == 1


async def test_readiness_is_503_until_every_registered_model_is_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    # Only this test's model (the real ones other tests registered are not its subject).
    monkeypatch.setattr(warmup, "_warmers", {})
    monkeypatch.setattr(warmup, "_done", set())
    warmup.register("test:slow-model", lambda: release.wait(10) and None)
    assert not warmup.models_warm()

    async def bot(_args: object) -> None:
        return None

    port = free_port()
    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}", callpipe_insecure_streams=True, _env_file=None
    )  # type: ignore[call-arg]
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(create_app(bot, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.ensure_future(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(500):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "warming_up"
            assert (await http.get("/livez")).status_code == 200  # the loop answers meanwhile
            release.set()
            for _ in range(500):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert (await http.get("/readyz")).json()["status"] == "ok"
            assert warmup.models_warm()
    finally:
        release.set()
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def test_an_overloaded_recognizer_asks_the_caller_to_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faster_whisper", reason="needs callpipe[local]")
    from callpipe.pipeline import PipelineParams
    from callpipe.pipeline.frames import (
        InputAudioRawFrame,
        TTSSpeakFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
    )
    from callpipe.services.whisper import STT_FALLBACK_LINE, WhisperSTTService
    from tests.helpers import ServiceHarness, wait_until

    async def overloaded(*_args: object) -> None:
        raise ModelOverloaded("whisper: 8 jobs already waiting")

    stt = WhisperSTTService(model="unused", speculative=False)
    monkeypatch.setattr(stt, "run_stt_timed", overloaded)
    harness = await ServiceHarness(stt, PipelineParams(audio_in_sample_rate=8000)).start()
    for frame in (
        UserStartedSpeakingFrame(),
        InputAudioRawFrame(audio=bytes(3200), sample_rate=8000),
        UserStoppedSpeakingFrame(),
    ):
        await harness.task.queue_frame(frame)
    await wait_until(lambda: bool(harness.down.seen(TTSSpeakFrame)))
    assert [f.text for f in harness.down.seen(TTSSpeakFrame)] == [STT_FALLBACK_LINE]
    await harness.cancel()


async def test_a_sentence_that_misses_its_deadline_becomes_the_filler_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("piper", reason="needs callpipe[local]")
    from callpipe.services.piper import FILLER_LINE, PiperTTSService

    tts = PiperTTSService(sample_rate=8000)
    await asyncio.to_thread(tts.load)  # the voice and its filler lines, as at start-up
    filler = [pcm async for pcm in tts.run_tts(FILLER_LINE)]
    assert len(filler) == 1 and len(filler[0]) > 8000  # said from the cache, no synthesis

    async def too_late(_text: str, *, deadline: float | None = None) -> None:
        raise ModelDeadline("piper: waited 2.10s for a worker")

    monkeypatch.setattr(tts, "synthesize_timed", too_late)
    assert [pcm async for pcm in tts.run_tts("Your appointment is on Thursday at three.")] == filler
