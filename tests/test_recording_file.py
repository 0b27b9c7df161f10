"""A live recording is served as a valid, sized snapshot while its file grows."""

from __future__ import annotations

import asyncio
import io
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np

from callpipe.records.recording import WavWriter
from callpipe.server import recording_file
from callpipe.server.recording_file import recording_file_response


async def _serve(response: Any) -> tuple[dict[str, str], bytes]:
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await response({"type": "http", "method": "GET", "headers": []}, receive, send)
    start = messages[0]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return headers, b"".join(m.get("body", b"") for m in messages[1:])


async def test_a_growing_recording_is_cut_at_a_frame_and_its_header_sized(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    writer = WavWriter(path, 8000)
    writer.write((np.ones(8000, dtype=np.int16) * 7).tobytes(), [], pad_to=0, final=False)
    # A flush in progress: three bytes of the next frame are on disk, and the header
    # already counts the whole next second (it is rewritten right after the audio).
    data = bytearray(path.read_bytes()) + b"\x01\x02\x03"
    data[40:44] = struct.pack("<I", 16000 * 4)
    path.write_bytes(bytes(data))
    response = recording_file_response(
        str(path), live=True, range_requested=False, filename="a.wav", headers={"x-served": "here"}
    )
    headers, body = await _serve(response)
    assert headers["content-length"] == str(len(body)) == str(44 + 8000 * 4)
    assert headers["x-served"] == "here" and 'filename="a.wav"' in headers["content-disposition"]
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getnchannels(), wav.getnframes()) == (2, 8000)
    assert struct.unpack("<I", body[4:8])[0] == len(body) - 8


async def test_a_snapshot_never_sends_more_than_it_declared(tmp_path: Path) -> None:
    path = tmp_path / "live.wav"
    path.write_bytes(b"RIFF" + bytes(40) + bytes(4 * 100_000))
    # The file grows after the size was taken: only the declared bytes go out.
    chunks = [chunk async for chunk in recording_file._read(str(path), 44 + 4 * 1000)]
    assert sum(len(c) for c in chunks) == 44 + 4 * 1000


def test_finished_recordings_and_ranges_are_plain_file_responses(tmp_path: Path) -> None:
    path = tmp_path / "done.wav"
    path.write_bytes(b"RIFF" + bytes(40))
    for live, ranged in ((False, False), (True, True)):
        response = recording_file_response(
            str(path), live=live, range_requested=ranged, filename=None, headers={}
        )
        assert type(response).__name__ == "FileResponse"
