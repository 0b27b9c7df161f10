"""Serving a recording file that may still be growing.

A live call's WAV grows by about a second of audio at every flush, and its header's sizes
are rewritten after each. A plain ``FileResponse`` declares the size it saw at ``stat``
and then reads to the end of the file, so a flush in between sends more bytes than the
declared ``Content-Length`` and the server must drop the connection. A live recording is
therefore served as a *snapshot*: the stereo frames complete at ``stat`` time, with the
header's RIFF and ``data`` sizes set to match, so every download is a valid WAV file.
Range requests read exact byte counts already and go to ``FileResponse``, as do finished
recordings.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["attachment", "recording_file_response"]

_HEADER_BYTES = 44  # the canonical header WavWriter writes
_FRAME_BYTES = 4  # stereo 16-bit
_CHUNK_BYTES = 64 * 1024


def attachment(filename: str) -> str:
    """``Content-Disposition`` for a download named ``filename``, as Starlette writes it."""
    quoted = quote(filename)
    return (
        f"attachment; filename*=utf-8''{quoted}"
        if quoted != filename
        else f'attachment; filename="{filename}"'
    )


def recording_file_response(
    path: str, *, live: bool, range_requested: bool, filename: str | None, headers: Mapping[str, str]
) -> Response:
    """The WAV at ``path``: a sized snapshot when ``live`` and the whole file is asked for."""
    if not live or range_requested:
        return FileResponse(path, media_type="audio/wav", filename=filename, headers=dict(headers))
    return _Snapshot(path, filename, headers)


class _Snapshot(Response):
    """The frames of a growing WAV complete when the request is answered, sized to match."""

    def __init__(self, path: str, filename: str | None, headers: Mapping[str, str]) -> None:
        super().__init__(media_type="audio/wav", headers=dict(headers))
        self.path = path
        self.filename = filename

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        size = await asyncio.to_thread(os.path.getsize, self.path)
        if size >= _HEADER_BYTES:
            size -= (size - _HEADER_BYTES) % _FRAME_BYTES  # a flush may be mid-way through a frame
        headers = {k: v for k, v in self.headers.items() if k != "content-length"}
        headers.update({"content-length": str(size), "accept-ranges": "bytes"})
        if self.filename is not None:
            headers["content-disposition"] = attachment(self.filename)
        response = StreamingResponse(_read(self.path, size), media_type="audio/wav", headers=headers)
        await response(scope, receive, send)


async def _read(path: str, size: int) -> AsyncIterator[bytes]:
    with open(path, "rb") as file:  # noqa: ASYNC230 - each read below runs in a thread
        sent = 0
        while sent < size:
            chunk = await asyncio.to_thread(file.read, min(_CHUNK_BYTES, size - sent))
            if not chunk:
                return  # the file was cut short (retention): the client sees a short body
            if sent == 0 and len(chunk) >= _HEADER_BYTES and chunk[:4] == b"RIFF":
                chunk = _sized(chunk, size)
            sent += len(chunk)
            yield chunk


def _sized(head: bytes, size: int) -> bytes:
    """``head`` (the file's first bytes) with the RIFF and ``data`` sizes of a ``size``-byte file."""
    patched = bytearray(head)
    patched[4:8] = struct.pack("<I", size - 8)
    if patched[36:40] == b"data":
        patched[40:44] = struct.pack("<I", size - _HEADER_BYTES)
    return bytes(patched)
