"""The framework's added latency on the speech-to-speech path: ``python3 bench/bench_realtime.py``.

Three parts over real sockets on 127.0.0.1: the fake OpenAI Realtime API (this process,
a thread), the bot ``[transport.input(), OpenAIRealtimeService, transport.output()]``
(a child process, so the phones and the fake do not share its GIL) and N phone lines
(this process) streaming μ-law every 20 ms. Each call is greeted, then the caller speaks
twice and the model answers each time. For every bot turn the call's record gives the
moment the model's first audio delta was read off the model's socket (the timeline's
``llm_first_token``) and the moment the output handed the first ``media`` message to the
caller's socket (``first_audio_sent``); their difference is what callpipe adds.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import httpx

from callpipe.server.background import BackgroundServer, free_port
from callpipe.sim.fake_realtime import (
    FakeRealtimeReply,
    FakeRealtimeState,
    create_fake_realtime_app,
    tone_ulaw,
)
from callpipe.sim.realtime_bot import PhoneLine

SPEECH = tone_ulaw(0.6, freq=300.0, level=0.5)


def serve_bot(port: int, model_url: str) -> None:
    """The bot's server (child process), with ``GET /results``: each bot turn's added latency in ms."""
    import uvicorn

    from callpipe.services.openai_realtime import OpenAIRealtimeService
    from callpipe.sim.realtime_bot import create_realtime_bot_app

    app, calls = create_realtime_bot_app(
        lambda: OpenAIRealtimeService("sk-bench", base_url=model_url, greeting="hello"), observe=True
    )

    @app.get("/results")
    async def results() -> dict[str, Any]:
        added: list[float] = []
        for call in calls:
            assert call.observer is not None
            for turn in call.observer.record.turns:
                lat = turn.latency
                if (
                    turn.speaker == "bot"
                    and lat
                    and lat.llm_first_token_ms is not None
                    and lat.first_audio_sent_ms is not None
                ):
                    added.append(lat.first_audio_sent_ms - lat.llm_first_token_ms)
        return {"added_ms": added, "calls": len(calls)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def one_call(url: str, index: int) -> int:
    await asyncio.sleep(index * 0.02)  # calls arrive over a second, not in one instant
    async with PhoneLine(url) as phone:
        await wait(lambda: len(phone.marks) >= 2, 10)  # the greeting's first-chunk and end marks
        for turn in range(2):
            heard = len(phone.bot_audio())
            phone.say(SPEECH)
            await wait(lambda h=heard: len(phone.bot_audio()) >= h + 4000, 10)  # type: ignore[misc]
            await wait(lambda n=turn: len(phone.marks) >= 2 * (n + 2), 10)  # type: ignore[misc]
        return len(phone.media)


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


async def run(calls: int, bot_port: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{bot_port}/ws"
    outcomes = await asyncio.gather(*(one_call(url, i) for i in range(calls)), return_exceptions=True)
    errors = [repr(o) for o in outcomes if isinstance(o, BaseException)]
    failed = len(errors)
    if errors:
        print("failures:", sorted(set(errors))[:3])
    async with httpx.AsyncClient() as client:
        data: dict[str, Any] = (await client.get(f"http://127.0.0.1:{bot_port}/results")).json()
    data["failed"] = failed
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 50])
    args = parser.parse_args()
    state = FakeRealtimeState(
        greeting=FakeRealtimeReply("Hello", audio=tone_ulaw(0.6)),
        replies=[FakeRealtimeReply("Sure", audio=tone_ulaw(0.8, freq=600.0))],
    )
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}")
    with BackgroundServer(create_fake_realtime_app(state)) as fake:
        for calls in args.calls:
            port = free_port()
            child = multiprocessing.get_context("spawn").Process(
                target=serve_bot, args=(port, fake.base_url + "/v1"), daemon=True
            )
            child.start()
            try:
                asyncio.run(wait_for_port(port))
                data = asyncio.run(run(calls, port))
            finally:
                child.terminate()
                child.join(5)
            added = sorted(data["added_ms"])
            if not added:
                print(f"{calls} calls: no measurements ({data})")
                continue
            p95 = added[min(len(added) - 1, int(0.95 * len(added)))]
            print(
                f"{calls:3d} calls, {len(added)} bot turns, {data['failed']} failed: first model audio in -> "
                f"first media out median {statistics.median(added):.2f} ms, p95 {p95:.2f} ms, max {added[-1]:.2f} ms"
            )
    print(f"load average after: {os.getloadavg()}")


async def wait_for_port(port: int) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                await client.get(f"http://127.0.0.1:{port}/results")
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise TimeoutError("the bot did not start")


if __name__ == "__main__":
    main()
