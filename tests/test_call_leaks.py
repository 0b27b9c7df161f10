"""A finished call leaves nothing behind: its pipeline, transport and record are freed.

A long-running server that kept any part of each call would grow its heap with every call
served, and with it every full garbage collection (each one a stall of the audio of every
live call). Real calls through ``create_app`` with records and recordings on (SQLite), on
real WebSockets; afterwards, weak references to each call's objects must be dead.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
import weakref
from pathlib import Path
from typing import Any

import httpx

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.records.observer import current_observer
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from tests.conftest import tone

API_KEY = "leaks-api-key-Xx81"


def _bot(kept: list[weakref.ref[Any]]) -> Any:
    async def bot(runner_args: RunnerArguments) -> None:
        transport = create_telnyx_transport(runner_args)
        responder = CannedReplyProcessor(tone(0.3), 8000, greeting=tone(0.3))
        task = PipelineTask(
            Pipeline([transport.input(), responder, transport.output()]),
            params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        )
        observer = current_observer.get()
        assert observer is not None
        kept.extend(weakref.ref(obj) for obj in (transport, responder, task, observer, runner_args))
        await PipelineRunner().run(task)

    return bot


async def _ended(http: httpx.AsyncClient, ccid: str) -> None:
    for _ in range(200):
        response = await http.get(f"/api/calls/{ccid}")
        if response.status_code == 200 and response.json()["end_reason"] != "in_progress":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the record of {ccid} did not end")


def _holders(obj: Any) -> list[str]:
    """What still refers to ``obj`` (for the failure message)."""
    return sorted({type(referrer).__qualname__ for referrer in gc.get_referrers(obj)})


async def _serve_calls(
    tmp_path: Path, speech_8k: bytes, kept: list[weakref.ref[Any]], *, calls: int, freed: Any
) -> None:
    """Serve ``calls`` real calls, then, with the server still up, run ``freed()``."""
    port = free_port()
    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_insecure_streams=True,
        callpipe_api_key=API_KEY,  # type: ignore[arg-type]
        data_dir=str(tmp_path),
        _env_file=None,  # type: ignore[call-arg]
    )
    with BackgroundServer(create_app(_bot(kept), settings), port=port) as server:
        async with httpx.AsyncClient(
            base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http:
            for _ in range(calls):
                ccid = f"v3:leak-{uuid.uuid4().hex[:8]}"
                caller = SimulatedCaller(f"{server.ws_url}/ws", call_control_id=ccid, record=False)
                await asyncio.wait_for(
                    caller.run([CallerTurn(audio=speech_8k, text="hello")], hang_up_after_secs=0.3), 30
                )
                await _ended(http, ccid)
            assert len(kept) == 5 * calls
            # Still serving: only what the running server holds can keep a call alive.
            await freed()


def _alive(kept: list[weakref.ref[Any]]) -> dict[str, list[str]]:
    return {type(obj).__qualname__: _holders(obj) for ref in kept if (obj := ref()) is not None}


async def test_finished_calls_leave_no_objects_behind(tmp_path: Path, speech_8k: bytes) -> None:
    kept: list[weakref.ref[Any]] = []

    async def freed() -> None:
        for _ in range(50):
            gc.collect()
            if all(ref() is None for ref in kept):
                break
            await asyncio.sleep(0.05)  # a call's last task may still be finishing
        assert _alive(kept) == {}

    await _serve_calls(tmp_path, speech_8k, kept, calls=3, freed=freed)


async def test_a_finished_call_is_freed_by_reference_counting(tmp_path: Path, speech_8k: bytes) -> None:
    """No cycle holds a call's pipeline, task, processors, transport or record: they go as
    soon as the call ends, not at the next full collection (which walks the whole heap
    while every live call waits)."""
    kept: list[weakref.ref[Any]] = []

    async def freed() -> None:
        for _ in range(100):
            if all(ref() is None for ref in kept):
                break
            await asyncio.sleep(0.05)  # a call's last task may still be finishing
        assert _alive(kept) == {}

    gc.collect()
    gc.disable()
    try:
        await _serve_calls(tmp_path, speech_8k, kept, calls=2, freed=freed)
    finally:
        gc.enable()
