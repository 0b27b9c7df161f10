"""Why a call ended, as its record says: each end reason from a real call through ``create_app``.

A small canned bot (greeting tone, ends on '#') under the real server; a
:class:`SimulatedCaller` on a real WebSocket; the record comes out of a :class:`MemorySink`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import msgspec
import pytest

from callpipe.pipeline.pipeline import Pipeline
from callpipe.pipeline.task import PipelineParams, PipelineRunner, PipelineTask
from callpipe.records.model import CallRecord
from callpipe.records.sink import MemorySink
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn, SimulatedCaller
from callpipe.telnyx.webhooks import generate_webhook_keypair, sign_webhook
from tests.conftest import tone


async def _bot(runner_args: RunnerArguments) -> None:
    greeting = float(runner_args.call_data["query_params"].get("greeting", "0.3"))
    transport = create_telnyx_transport(runner_args, vad=False)
    responder = CannedReplyProcessor(tone(0.2), 8000, greeting=tone(greeting), hang_up_digit="#")
    task = PipelineTask(
        Pipeline([transport.input(), responder, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000),
        idle_timeout_secs=runner_args.pipeline_idle_timeout_secs,
    )
    await PipelineRunner().run(task)


@contextmanager
def _serve(
    tmp_path: Any, bot: Any = _bot, **settings: Any
) -> Iterator[tuple[BackgroundServer, MemorySink, Any]]:
    port = free_port()
    signing_key, public_key = generate_webhook_keypair()
    values: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{port}",
        "callpipe_insecure_streams": True,
        "telnyx_public_key": public_key,
        "data_dir": str(tmp_path),
        "records": False,
        **settings,
    }
    app = create_app(bot, ServerSettings(_env_file=None, **values))  # type: ignore[call-arg]
    sink = MemorySink()
    app.state.callpipe.record_sink = sink
    with BackgroundServer(app, port=port) as server:
        yield server, sink, signing_key


async def _finished(sink: MemorySink, ccid: str) -> CallRecord:
    for _ in range(200):
        if ccid in sink.finished:
            return sink.finished[ccid]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished record; live: {list(sink.live)}")


def _caller(server: BackgroundServer, greeting: float = 0.3) -> SimulatedCaller:
    ccid = f"v3:end-{uuid.uuid4().hex[:8]}"
    return SimulatedCaller(f"{server.ws_url}/ws?greeting={greeting}", call_control_id=ccid, record=False)


async def test_caller_hangs_up(tmp_path: Any) -> None:
    with _serve(tmp_path) as (server, sink, _):
        caller = _caller(server)
        await asyncio.wait_for(caller.run([], hang_up_after_secs=0.3), 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("caller_hangup", "caller")


async def test_bot_ends_the_call(tmp_path: Any) -> None:
    with _serve(tmp_path) as (server, sink, _):
        caller = _caller(server)
        await asyncio.wait_for(caller.run([CallerTurn(dtmf="#")], hang_up_after_secs=5.0), 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("bot_ended", "bot")
    assert [(e.type, e.name) for e in record.events] == [("dtmf", "#")]


async def test_max_call_duration(tmp_path: Any) -> None:
    with _serve(tmp_path, max_call_secs=1.0) as (server, sink, _):
        caller = _caller(server, greeting=5.0)
        await asyncio.wait_for(caller.run([], hang_up_after_secs=10.0), 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("max_duration", "server")
    assert record.duration_secs is not None and record.duration_secs < 3


async def test_idle_timeout(tmp_path: Any) -> None:
    with _serve(tmp_path, idle_timeout_secs=0.8) as (server, sink, _):
        caller = _caller(server, greeting=0.2)
        await asyncio.wait_for(caller.run([], hang_up_after_secs=10.0), 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("idle_timeout", "server")


async def test_a_call_hangup_webhook_ends_it_as_the_caller_hanging_up(tmp_path: Any) -> None:
    with _serve(tmp_path) as (server, sink, signing_key):
        caller = _caller(server, greeting=5.0)
        run = asyncio.create_task(caller.run([], hang_up_after_secs=10.0))
        for _ in range(200):
            if caller.call_control_id in sink.live:
                break
            await asyncio.sleep(0.05)
        body = msgspec.json.encode(
            {
                "data": {
                    "record_type": "event",
                    "event_type": "call.hangup",
                    "id": str(uuid.uuid4()),
                    "occurred_at": "2024-01-01T00:00:00.000000Z",
                    "payload": {
                        "call_control_id": caller.call_control_id,
                        "hangup_cause": "normal_clearing",
                        "hangup_source": "callee",
                    },
                }
            }
        )
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            response = await http.post(
                "/webhooks/telnyx", content=body, headers=sign_webhook(body, signing_key)
            )
            assert response.status_code == 200
        await asyncio.wait_for(run, 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("caller_hangup", "callee")
    assert [e.name for e in record.events if e.type == "webhook"] == ["call.hangup"]


@pytest.mark.parametrize("setting", [True, False])
async def test_dial_params_are_kept_unless_switched_off(tmp_path: Any, setting: bool) -> None:
    with _serve(tmp_path, record_call_params=setting) as (server, sink, _):
        ccid = f"v3:params-{uuid.uuid4().hex[:8]}"
        caller = SimulatedCaller(
            f"{server.ws_url}/ws?greeting=0.2&campaign=spring", call_control_id=ccid, record=False
        )
        await asyncio.wait_for(caller.run([], hang_up_after_secs=0.3), 20)
        record = await _finished(sink, ccid)
    if setting:
        assert record.query_params is not None and record.query_params["campaign"] == "spring"
    else:
        assert record.query_params is None and record.body is None


async def test_a_failing_bot_ends_the_call_as_an_error_with_its_reason(tmp_path: Any) -> None:
    async def broken(runner_args: RunnerArguments) -> None:
        raise RuntimeError("the CRM is down")

    with _serve(tmp_path, bot=broken) as (server, sink, _):
        caller = _caller(server)
        await asyncio.wait_for(caller.run([], hang_up_after_secs=0.3), 20)
        record = await _finished(sink, caller.call_control_id)
    assert (record.end_reason, record.hangup_by) == ("error", "server")
    errors = [e for e in record.events if e.type == "error"]
    assert [e.name for e in errors] == ["bot_exception"]
    assert errors[0].data["reason"] == "RuntimeError: the CRM is down"


def test_a_successful_transfer_tool_ends_the_call_as_transferred() -> None:
    from callpipe.records.observer import CallObserver

    observer = CallObserver(CallRecord(call_control_id="t1"), MemorySink())
    observer.tool_call("transfer_call", {"to": "+15551230000"}, {"error": "not available"})
    assert observer.end_noted is None  # a failed transfer does not end the call
    observer.tool_call("transfer_call", {"to": "+15551230000"}, {"status": "transferring"})
    observer.note_end("caller_hangup", "caller")  # Telnyx stops the stream once it is bridged
    assert observer.end_noted == "transferred"
