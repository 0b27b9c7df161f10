"""A call's record and recording, filled while a real call runs through ``callpipe serve``.

The built-in assistant runs unchanged on real sockets against the wire-protocol fakes of
Deepgram, OpenAI and Cartesia; a :class:`SimulatedCaller` speaks, barges in, presses a
key; the bot ends the call with ``end_call``. The record (through a :class:`MemorySink`, or
read back over ``/api/calls`` from the SQLite or a real PostgreSQL store) and the stereo
WAV (on disk, or downloaded through the API) are then checked against what happened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import pytest

from callpipe.records.model import CallRecord
from callpipe.records.sink import MemorySink
from callpipe.runner import RunnerArguments
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.services.assistant import run_assistant
from callpipe.sim.caller import CallerTurn, CallResult, SimulatedCaller
from callpipe.sim.fake_cartesia import create_fake_cartesia_app
from callpipe.sim.fake_deepgram import create_fake_deepgram_app
from callpipe.sim.fake_openai import FakeToolCall, ScriptEvent, create_fake_openai_app
from callpipe.telnyx.webhooks import generate_webhook_keypair, sign_webhook

CALLER = "+15557654321"
GREETING = "Hello, this is Sunny Dental. How can I help you today?"
LONG_REPLY = (
    "Sure, we have openings on Monday morning, Tuesday afternoon, Wednesday morning,"
    " Thursday at noon and Friday at four. Which one would suit you best?"
)
BOOKED = "Tomorrow at nine is booked for you."
GOODBYE = "Thank you for calling, goodbye!"
FIRST_WORDS = "I would like to book a cleaning"
SECOND_WORDS = "tomorrow morning please"


def _responder(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[ScriptEvent]:
    """Answers by what the caller last did (what a real model would, for this script)."""
    last = messages[-1]
    content = str(last.get("content") or "")
    if last["role"] == "system":
        return [GREETING]
    if last["role"] == "tool":
        return []
    if "book" in content:
        return [LONG_REPLY]
    if "tomorrow" in content:
        return [BOOKED]
    return [GOODBYE, FakeToolCall("end_call", {})]


API_KEY = "cp-api-key-records-1"


@dataclass
class Served:
    """The server, and where its records go: a MemorySink, or the store (SQLite or PostgreSQL) read over the API."""

    server: BackgroundServer
    sink: MemorySink | None
    recordings: Path
    signing_key: Any
    tmp_path: Path

    @property
    def ws(self) -> str:
        return self.server.ws_url + "/ws"

    async def record(self, ccid: str, *, final: bool) -> CallRecord | None:
        """The call's record as the sink or the API has it (``final``: only once finished)."""
        if self.sink is not None:
            return self.sink.finished.get(ccid) if final else self.sink.live.get(ccid)
        async with httpx.AsyncClient(base_url=self.server.base_url) as http:
            auth = {"Authorization": f"Bearer {API_KEY}"}
            response = await http.get(f"/api/calls/{ccid}", headers=auth)
            if response.status_code == 404:
                return None
            assert response.status_code == 200, response.text
            data = response.json()
            if final and data["end_reason"] == "in_progress":
                return None
            record = _record_from_json(data)
            if data["recording_url"]:
                wav = await http.get(data["recording_url"], headers=auth)
                if (wav.status_code == 404 or len(wav.content) < 44) and not final:
                    return None  # the file is being created
                assert wav.status_code == 200 and wav.content[:4] == b"RIFF"
                path = self.tmp_path / f"downloaded-{uuid.uuid4().hex}.wav"
                path.write_bytes(wav.content)
                record.recording_path = str(path)
            return record


def _epoch(text: str | None) -> float | None:
    return None if text is None else dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _record_from_json(data: dict[str, Any]) -> CallRecord:
    """``GET /api/calls/{id}`` back into a :class:`CallRecord` (ISO times -> UNIX seconds)."""
    data = {k: v for k, v in data.items() if k not in ("duration_secs", "recording_url")}
    for key in ("started_at", "answered_at", "ended_at"):
        data[key] = _epoch(data[key])
    for turn in data["turns"]:
        turn["started_at"], turn["ended_at"] = _epoch(turn["started_at"]), _epoch(turn["ended_at"])
        for tool in turn["tool_calls"]:
            tool["at"] = _epoch(tool["at"])
    for event in data["events"]:
        event["at"] = _epoch(event["at"])
    return msgspec.convert(data, CallRecord)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Served]:
    deepgram = create_fake_deepgram_app("dg-key", transcript=[FIRST_WORDS, SECOND_WORDS])
    openai = create_fake_openai_app("sk-key", script=_responder)
    cartesia = create_fake_cartesia_app("ct-key")
    with (
        BackgroundServer(deepgram) as dg,
        BackgroundServer(openai) as oa,
        BackgroundServer(cartesia) as ct,
    ):
        for name, value in {
            "DEEPGRAM_API_KEY": "dg-key",
            "DEEPGRAM_BASE_URL": dg.ws_url,
            "OPENAI_API_KEY": "sk-key",
            "OPENAI_BASE_URL": oa.base_url + "/v1",
            "CARTESIA_API_KEY": "ct-key",
            "CARTESIA_VOICE_ID": "voice-1",
            "CARTESIA_BASE_URL": ct.ws_url,
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("TELNYX_API_KEY", raising=False)

        async def bot(runner_args: RunnerArguments) -> None:
            runner_args.record.set(outcome="booked", crm_id="A-17")
            runner_args.record.custom["score"] = {"nps": 9}
            with pytest.raises(TypeError, match="not JSON-serializable"):
                runner_args.record.set(when=object())
            await run_assistant(runner_args)

        port = free_port()
        signing_key, public_key = generate_webhook_keypair()
        recordings = tmp_path / "recordings"
        settings = ServerSettings(  # type: ignore[call-arg]
            _env_file=None,
            public_url=f"http://127.0.0.1:{port}",
            callpipe_insecure_streams=True,
            telnyx_public_key=public_key,
            recording_dir=str(recordings),
            data_dir=str(tmp_path / "data"),
            callpipe_api_key=API_KEY,
            # The store's own database: a SQLite file in data_dir, or one on the real PostgreSQL server.
            database_url=request.getfixturevalue("postgres_server").new_database()
            if request.param == "postgresql"
            else None,
        )
        app = create_app(bot, settings)
        sink = MemorySink() if request.param == "memory" else None
        app.state.callpipe.record_sink = sink
        with BackgroundServer(app, port=port) as server:
            yield Served(server, sink, recordings, signing_key, tmp_path)


def _webhook(event_type: str, ccid: str, **payload: Any) -> bytes:
    return msgspec.json.encode(
        {
            "data": {
                "record_type": "event",
                "event_type": event_type,
                "id": str(uuid.uuid4()),
                "occurred_at": "2024-01-01T00:00:00.000000Z",
                "payload": {"call_control_id": ccid, **payload},
            }
        }
    )


async def _wav_while_live(served: Served, caller: SimulatedCaller) -> tuple[int, int]:
    """Mid-call: the recording on disk is already a valid WAV (frames, rate)."""
    for _ in range(600):  # (a bound, not a measure: the first call of a loaded box is slow to start)
        live = await served.record(caller.call_control_id, final=False)
        if live is not None and live.recording_path and live.turns:
            break
        await asyncio.sleep(0.05)
    # The file grows about once a second while the call goes on: wait (bounded) until it
    # holds at least a second, which is what the test checks is playable mid-call.
    for _ in range(200):
        live = await served.record(caller.call_control_id, final=False)
        assert live is not None and live.recording_path and live.end_reason == "in_progress"
        with wave.open(live.recording_path) as wav:
            frames, rate = wav.getnframes(), wav.getframerate()
        if frames >= rate:
            return frames, rate
        await asyncio.sleep(0.05)
    return frames, rate


async def _run_call(served: Served, speech: bytes) -> tuple[CallResult, CallRecord, tuple[int, int]]:
    caller = SimulatedCaller(served.ws, from_number=CALLER, to_number="+15550002222")
    turns = [
        CallerTurn(barge_in_after=0.01),  # (says nothing: waits for the greeting to be heard)
        CallerTurn(audio=speech, text=FIRST_WORDS),
        CallerTurn(audio=speech, text=SECOND_WORDS, barge_in_after=0.8),
        CallerTurn(dtmf="5", pause_secs=0.3),
    ]
    run = asyncio.create_task(caller.run(turns, hang_up_after_secs=8.0))
    await caller.connected.wait()
    live_wav = await _wav_while_live(served, caller)
    async with httpx.AsyncClient(base_url=served.server.base_url) as http:
        amd = _webhook("call.machine.detection.ended", caller.call_control_id, result="human")
        headers = sign_webhook(amd, served.signing_key)
        assert (await http.post("/webhooks/telnyx", content=amd, headers=headers)).status_code == 200
    result = await asyncio.wait_for(run, 40)
    for _ in range(100):
        record = await served.record(caller.call_control_id, final=True)
        if record is not None:
            return result, record, live_wav
        await asyncio.sleep(0.05)
    raise AssertionError("the call's record was not finished")


@pytest.mark.slow
async def test_a_call_leaves_a_full_record_and_a_stereo_recording(
    served: Served, speech_8k: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    result, record, (live_frames, live_rate) = await _run_call(served, speech_8k)
    assert not result.errors, result.errors

    # Identity, lifecycle, the bot's fields, events.
    assert record.call_control_id == result.call_control_id
    assert (record.direction, record.from_, record.to) == ("inbound", CALLER, "+15550002222")
    assert (record.codec, record.sample_rate) == ("PCMU", 8000)
    assert record.end_reason == "bot_ended" and record.hangup_by == "bot"
    assert record.ended_at is not None and record.duration_secs is not None
    assert record.custom == {"outcome": "booked", "crm_id": "A-17", "score": {"nps": 9}}
    kinds = [(e.type, e.name) for e in record.events]
    assert ("dtmf", "5") in kinds and ("webhook", "call.machine.detection.ended") in kinds
    assert record.amd == {"event": "call.machine.detection.ended", "result": "human"}

    # Turns in order, heard text, the barge-in.
    speakers = [t.speaker for t in record.turns]
    assert speakers == ["bot", "caller", "bot", "caller", "bot", "bot"], [
        (t.speaker, t.text) for t in record.turns
    ]
    greeting, first, cut, second, booked, goodbye = record.turns
    assert greeting.text == GREETING and greeting.heard_text == GREETING and not greeting.interrupted
    assert (first.text, second.text) == (FIRST_WORDS, SECOND_WORDS)
    assert cut.text == LONG_REPLY and cut.interrupted
    assert cut.heard_text and len(cut.heard_text) < len(cut.text) and LONG_REPLY.startswith(cut.heard_text)
    assert booked.text == BOOKED and booked.heard_text == BOOKED and not booked.interrupted
    assert goodbye.text == GOODBYE and [c.name for c in goodbye.tool_calls] == ["end_call"]
    assert goodbye.tool_calls[0].result == {"status": "ending"}

    # Latency: null where it does not apply (the greeting), else every stage, in order.
    assert greeting.latency is not None
    assert greeting.latency.vad_stop_ms is None and greeting.latency.stt_final_ms is None
    for turn in (cut, booked):
        lat = turn.latency
        assert lat is not None
        stages = [lat.llm_first_token_ms, lat.tts_first_audio_ms, lat.first_audio_sent_ms, lat.heard_ms]
        assert lat.vad_stop_ms is not None and lat.stt_final_ms is not None, lat
        assert all(v is not None for v in stages), lat
        assert 0 < lat.vad_stop_ms <= stages[0], lat  # type: ignore[operator]
        assert lat.stt_final_ms <= stages[0], lat  # type: ignore[operator]
        assert stages == sorted(stages), lat  # type: ignore[type-var]

    # Usage per provider.
    usage = record.usage
    assert usage.stt_audio_secs["deepgram:nova-3"] == pytest.approx(record.duration_secs, abs=1.5)
    assert usage.llm_prompt_tokens["openai:gpt-4o-mini"] > 0
    assert usage.llm_completion_tokens["openai:gpt-4o-mini"] > 0
    spoken = [GREETING, LONG_REPLY, BOOKED, GOODBYE]
    assert usage.tts_characters["cartesia:sonic-2"] <= sum(len(s) for s in spoken)
    assert usage.tts_characters["cartesia:sonic-2"] >= len(GREETING) + len(BOOKED)

    _check_recording(record, live_frames, live_rate, cut_turn=cut, next_bot=booked)
    _check_logs(caplog)


def _check_recording(
    record: CallRecord, live_frames: int, live_rate: int, *, cut_turn: Any, next_bot: Any
) -> None:
    assert record.recording_path is not None
    assert live_rate == 8000 and live_frames >= 8000  # playable mid-call: at least a second
    with wave.open(record.recording_path) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = wav.readframes(wav.getnframes())
    stereo = np.frombuffer(frames, dtype=np.int16).reshape(-1, 2).astype(np.float64)
    assert record.duration_secs is not None
    assert len(stereo) / 8000 == pytest.approx(record.duration_secs, abs=0.6)

    def rms(channel: int, start: float, end: float) -> float:
        a, b = int((start - record.started_at) * 8000), int((end - record.started_at) * 8000)
        part = stereo[max(0, a) : max(0, a, b), channel]  # (an empty window, never a wrapped one)
        return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0

    cut_at = cut_turn.ended_at
    assert rms(1, cut_at - 0.5, cut_at - 0.05) > 1000  # the bot was talking...
    assert rms(1, cut_at + 0.06, next_bot.started_at - 0.05) < 30  # ...and was cut at the barge-in
    assert rms(0, cut_at - 0.3, cut_at) > 300  # the caller was talking over it
    assert rms(0, record.started_at + 0.1, record.started_at + 0.4) < 30  # caller silent at first
    assert rms(1, record.started_at, record.turns[0].started_at - 0.05) < 30  # before the greeting


def _check_logs(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records if r.levelno >= logging.INFO)
    for secret in (FIRST_WORDS, SECOND_WORDS, "openings on Monday", "Sunny Dental", "booked for you", CALLER):
        assert secret not in text, f"{secret!r} is in the INFO logs"
    assert "+1555•••4321" in text or CALLER not in text
