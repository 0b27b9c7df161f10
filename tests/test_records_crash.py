"""``kill -9`` of a real ``callpipe serve`` mid-call: the record survives, marked process_died,
with a recording that plays up to about the last second (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
import wave
from pathlib import Path

import httpx
import pytest

from callpipe.sim.caller import SimulatedCaller
from tests.serving import API_KEY, Served, callpipe_serve
from tests.store_helpers import started_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def _record_seen(served: Served, ccid: str, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            response = await served.get(f"/api/calls/{ccid}", headers=AUTH)
            if response.status_code == 200 and response.json()["end_reason"] == "in_progress":
                data: dict[str, object] = response.json()
                return data
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{ccid} never reached the store:\n{served.output()}")


def _recorded_secs(root: Path) -> float:
    """Seconds in the longest recording under ``root`` (0 while there is none yet)."""
    longest = 0.0
    for path in root.glob("**/*.wav"):
        try:
            with wave.open(str(path), "rb") as wav:
                longest = max(longest, wav.getnframes() / wav.getframerate())
        except (OSError, EOFError, wave.Error):
            pass  # being created
    return longest


async def test_kill_9_mid_call_leaves_a_process_died_record_and_a_playable_recording(
    db_url: str, tmp_path: Path
) -> None:
    ccid = f"v3:crash-{uuid.uuid4().hex[:10]}"
    with callpipe_serve(tmp_path, env={"DATABASE_URL": db_url}) as served:
        await served.wait_ready()
        caller = SimulatedCaller(
            served.stream_url(ccid, greeting_secs=30), call_control_id=ccid, max_call_secs=40
        )
        run = asyncio.ensure_future(caller.run([], hang_up_after_secs=60))
        try:
            seen = await _record_seen(served, ccid)
            assert seen["recording_url"] == f"/api/calls/{ccid}/recording"
            # Once over a second and a half of the call is on disk, the process dies.
            deadline = time.monotonic() + 30
            while await asyncio.to_thread(_recorded_secs, tmp_path) < 1.6:
                assert time.monotonic() < deadline, served.output()
                await asyncio.sleep(0.05)
            served.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            assert await served.wait_exit(10) == -signal.SIGKILL
            await asyncio.wait({run}, timeout=10)
        finally:
            if not run.done():
                await caller.hang_up()
                await asyncio.wait({run}, timeout=5)
    # The next start on the same database (here: a store of our own) finds the dead call.
    async with started_store(db_url) as store:
        record = await store.get_call(ccid)
        assert record is not None and record.end_reason == "process_died", record
        assert record.ended_at is not None
        # As of its instance's last heartbeat (every 2 s) or its last write, whichever is later.
        assert killed_at - 2.5 <= record.ended_at <= killed_at + 0.1, killed_at - record.ended_at
        assert record.recording_path is not None
        path = Path(record.recording_path)
        assert path.is_absolute() and path.is_relative_to(tmp_path)  # made absolute by the store
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 2 and wav.getsampwidth() == 2
        secs = wav.getnframes() / wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    assert len(frames) == wav.getnframes() * 4  # the header's sizes match the data on disk
    assert secs >= 1.5, secs  # the call up to about the last second
