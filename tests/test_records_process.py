"""``kill -9`` of a real ``callpipe serve`` mid-call: the record and the recording survive.

The first process is killed while its bot is talking; the next start on the same data
directory marks the call ``process_died`` (the store's sweep), and its recording, written
incrementally with the WAV sizes rewritten at each flush, plays up to about the last second.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
import wave
from pathlib import Path

import numpy as np
import pytest

from callpipe.sim.caller import SimulatedCaller
from tests.serving import API_KEY, callpipe_serve

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _frames(path: Path) -> int:
    try:
        with wave.open(str(path)) as wav:
            return wav.getnframes()
    except (OSError, EOFError, wave.Error):
        return 0


@pytest.mark.slow
async def test_kill_9_mid_call_leaves_a_process_died_record_and_a_playable_recording(tmp_path: Path) -> None:
    env = {"DATA_DIR": str(tmp_path / "data")}
    ccid = f"v3:killed-{uuid.uuid4().hex[:10]}"
    recordings = tmp_path / "data" / "recordings"
    with callpipe_serve(tmp_path, env=env, name="first") as first:
        await first.wait_ready()
        caller = SimulatedCaller(
            first.stream_url(ccid, greeting_secs=30.0), call_control_id=ccid, record=False
        )
        run = asyncio.create_task(caller.run([], hang_up_after_secs=60.0))
        await asyncio.wait_for(caller.connected.wait(), 20)
        deadline = time.monotonic() + 30
        while True:  # until about 3 s of the call are on disk
            files = list(recordings.glob("*/*.wav"))
            if files and _frames(files[0]) >= 3 * 8000:
                break
            assert time.monotonic() < deadline, first.output()
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        first.proc.kill()  # SIGKILL: no shutdown code runs
        await asyncio.to_thread(first.proc.wait, 10)
        killed_at = time.time()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 10)

    with callpipe_serve(tmp_path, env=env, name="second") as second:
        await second.wait_ready()
        response = await second.get(f"/api/calls/{ccid}", headers=AUTH)
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["end_reason"] == "process_died", record
        assert record["recording_url"]
        wav_response = await second.get(record["recording_url"], headers=AUTH)
        assert wav_response.status_code == 200
    path = tmp_path / "downloaded.wav"
    path.write_bytes(wav_response.content)
    with wave.open(str(path)) as wav:  # a valid file, sizes as of the last flush
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        frames = wav.readframes(wav.getnframes())
    stereo = np.frombuffer(frames, dtype=np.int16).reshape(-1, 2)
    started = dt.datetime.fromisoformat(record["started_at"].replace("Z", "+00:00")).timestamp()
    lived = killed_at - started
    # Up to about the last second before the kill (one flush interval, plus scheduling).
    assert lived - 2.0 <= len(stereo) / 8000 <= lived + 0.2, (len(stereo) / 8000, lived)
    bot = stereo[8000:, 1].astype(np.float64)
    assert np.sqrt(np.mean(bot**2)) > 3000  # the greeting tone, on the right channel
