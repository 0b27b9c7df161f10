"""The stream's other tracks and its failures, end to end through ``/start``, the fake Call
Control API and a simulated callee on a real WebSocket:

* ``stream_track=both_tracks``: Telnyx also streams the outbound track (what the caller
  hears, here the bot's own greeting); the bot hears only the caller's inbound track.
* a Telnyx ``error`` message on the stream, and the ``streaming.failed`` webhook (on a
  live call, and for a stream that never reached a bot), end the call's record with
  ``end_reason="error"`` and the reason in its events.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from callpipe.sim.caller import CallerTurn
from callpipe.telnyx import stream as ts
from callpipe.telnyx.webhooks import sign_webhook
from tests.test_media_codecs import (
    BOT_RATE,
    GREETING,
    TELNYX_KEY,
    World,
    _resample,
    _speech,
    best_correlation,
    dial,
    start,
    world,
)


@pytest.mark.slow
async def test_both_tracks_the_bot_hears_only_the_caller(tmp_path: Path) -> None:
    with world(tmp_path, callee_codec="PCMU") as w:
        result = await dial(w, stream_track="both_tracks")
        (heard,) = w.runs
        (call,) = (w.sim._state.calls if w.sim._state is not None else {}).values()
        assert call.params["stream_track"] == "both_tracks"
        # The caller side sent both tracks, a frame of each every 20 ms ...
        assert result.outbound_frames_sent > 100
        counters = heard.transport.stream.counters
        assert counters.media_filtered == result.outbound_frames_sent
        assert counters.media_out_of_order == 0  # chunks are numbered per track
        # ... and the bot's input is the caller's speech, never the greeting it heard back.
        pcm = np.frombuffer(bytes(heard.pcm), dtype=np.int16).astype(np.float64)
        assert best_correlation(pcm, _resample(_speech(), 8000, 8000)) > 0.9
        assert best_correlation(pcm, _resample(GREETING, BOT_RATE, 8000)) < 0.3
        # One caller turn, one reply: the bot never took its own voice for a turn.
        (turn,) = result.turns
        assert turn.first_bot_audio_heard_at is not None and result.clears == []


@pytest.mark.slow
async def test_a_telnyx_error_message_ends_the_call_with_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error = ts.Error(code=100003, title="Malformed frame", detail="The media payload could not be decoded")
    script = [
        CallerTurn(audio=_speech(), sample_rate=8000, text="hello"),
        CallerTurn(error=error, quiet_secs=0.3),
    ]
    with world(tmp_path, callee_codec="PCMU", script=script) as w:
        # What create_telnyx_transport reads to hang the call up through the API.
        monkeypatch.setenv("TELNYX_API_KEY", TELNYX_KEY)
        monkeypatch.setenv("TELNYX_API_BASE_URL", w.sim_api_base)
        ccid = await start(w)
        session = await w.sim_session(ccid)
        record = await w.record(ccid)
    # The bot ended the call (its hang-up reaches the callee as Telnyx's stop, or the socket closes).
    assert session.result is not None and session.result.closed_by in ("telnyx", "bot")
    assert (record.end_reason, record.hangup_by) == ("error", "server")
    (event,) = [e for e in record.events if e.type == "error" and e.name == "telnyx_stream_error"]
    assert "100003 Malformed frame: The media payload could not be decoded" in event.data["reason"]
    # The bot hung the call up through the API (nobody was left to talk to).
    assert session.call.hangup_source == "caller"


@pytest.mark.slow
async def test_streaming_failed_on_a_live_call_ends_it_with_error(tmp_path: Path) -> None:
    script = [CallerTurn(audio=b"", sample_rate=8000, pause_secs=10.0, wait_for_bot=False)]
    with world(tmp_path, callee_codec="PCMU", script=script) as w:
        ccid = await start(w)
        for _ in range(500):
            if w.runs:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the greeting is playing
        await _webhook(w, "streaming.failed", ccid, failure_reason="connection_lost", stream_id="s-1")
        session = await w.sim_session(ccid)
        record = await w.record(ccid)
    assert session.result is not None and session.result.closed_by == "bot"
    assert (record.end_reason, record.hangup_by) == ("error", "server")
    assert [e.data["reason"] for e in record.events if e.type == "error"] == ["connection_lost"]
    assert "streaming.failed" in [e.name for e in record.events if e.type == "webhook"]


@pytest.mark.slow
async def test_a_stream_that_never_reached_a_bot_leaves_an_error_record(tmp_path: Path) -> None:
    # The callee's phone speaks a codec the fake cannot stream: Telnyx sends streaming.failed.
    with world(tmp_path, callee_codec="OPUS") as w:
        ccid = await start(w)
        session = await w.sim_session(ccid)
        record = await w.record(ccid)
        assert not w.runs  # no bot ever ran
    assert "streaming.failed" in [d.event_type for d in w.sim.webhooks_for(ccid)]
    assert (record.direction, record.end_reason, record.hangup_by) == ("outbound", "error", "server")
    assert [e.data["reason"] for e in record.events if e.type == "error"] == ["unsupported_codec"]
    # callpipe hung the silent call up instead of leaving the callee on the line.
    assert session.call.hangup_source == "caller"


async def _webhook(w: World, event_type: str, ccid: str, **payload: object) -> None:
    envelope = {
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": str(uuid.uuid4()),
            "occurred_at": "2026-01-01T00:00:00.000000Z",
            "payload": {"call_control_id": ccid, **payload},
        },
        "meta": {"attempt": 1},
    }
    body = json.dumps(envelope).encode()
    async with httpx.AsyncClient(base_url=w.server.base_url, timeout=10) as http:
        response = await http.post(
            "/webhooks/telnyx", content=body, headers=sign_webhook(body, w.signing_key)
        )
    assert response.status_code == 200, response.text
