"""The canned bot on callpipe: the counterpart of ``bench/pipecat_bot.py``.

Run with callpipe's python::

    python3 bench/callpipe_bot.py --port 8765 \\
        --reply bench/data/reply_8k.wav --greeting bench/data/greeting_8k.wav

``/ws`` is :func:`callpipe.sim.bots.create_canned_bot_app` (built as Pipecat's Telnyx
guide builds a bot): it greets the caller and answers every end of a user turn, as
detected by Silero VAD (``--stop-secs``), with the same pre-recorded audio. ``/healthz``
answers "ok" once the server is up; ``/debug/tasks`` counts the asyncio tasks.
``--records DIR`` adds call records and recordings (:class:`RecordsOn`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import time
import uuid
import wave
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from callpipe.audio.vad import SileroVADModel, VADParams
from callpipe.server.heap import freeze_startup_heap, space_full_collections
from callpipe.sim.bots import CannedBotConfig, create_canned_bot_app

SAMPLE_RATE = 8000


def read_pcm(path: str | Path, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The frames of a mono 16-bit WAV file at ``sample_rate``."""
    with wave.open(str(path), "rb") as wav:
        if (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) != (1, 2, sample_rate):
            raise SystemExit(f"{path}: expected mono 16-bit {sample_rate} Hz")
        return wav.readframes(wav.getnframes())


def create_app(reply: bytes, greeting: bytes | None, stop_secs: float) -> FastAPI:
    """The canned-bot app plus ``/healthz`` and ``/debug/tasks``."""
    app, _calls = create_canned_bot_app(
        CannedBotConfig(
            reply=reply,
            greeting=greeting,
            sample_rate=SAMPLE_RATE,
            vad_params=VADParams(stop_secs=stop_secs),
            api_key=None,
            keep_calls=False,  # a server that runs for the whole benchmark keeps no calls
        )
    )

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/debug/tasks")
    async def debug_tasks() -> dict[str, int]:
        return {"tasks": len(asyncio.all_tasks())}

    return app


# What ``--switchable`` lets ``GET /debug/records/<part>`` choose for the calls that follow.
RECORD_PARTS = ("off", "store", "recording", "both")


class RecordsOn:
    """ASGI wrapper: every call gets a record and a recording, as under ``callpipe serve``.

    Each WebSocket runs with a :class:`~callpipe.records.observer.CallObserver` in its
    context (writing through an embedded SQLite store in ``directory``) and its stereo
    recording in ``directory/recordings``: the same work ``_run_bot`` adds to a call.
    With ``switchable``, ``GET /debug/records/<part>`` (one of :data:`RECORD_PARTS`) sets
    what the next calls get: nothing, the stored record only, the recording only (the
    record goes nowhere), or both; ``bench/records_parts.py`` compares them in one process.
    """

    def __init__(self, app: Any, directory: Path, *, switchable: bool = False) -> None:
        from callpipe.store.sql import SqlCallStore

        self.app = app
        self.directory = directory
        self.store = SqlCallStore(None, data_dir=directory)
        self.switchable = switchable
        self.part = "both"
        self._started: asyncio.Task[None] | None = None

    async def _start_store(self) -> None:
        await self.store.start()
        freeze_startup_heap()  # as `callpipe serve` does once its store is up

    def _store_ready(self) -> bool:
        return self._started is not None and self._started.done() and self._started.exception() is None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from callpipe.records.model import CallRecord
        from callpipe.records.observer import CallObserver, current_observer
        from callpipe.records.sink import NullSink

        if scope["type"] == "lifespan" and self._started is None:
            # Open the store (imports, migrations) at start-up, as `callpipe serve` does,
            # not under the first calls.
            self._started = asyncio.ensure_future(self._start_store())
        if scope["type"] == "http" and scope["path"] == "/healthz" and not self._store_ready():
            # Not healthy until the store is open: the load must not start during the
            # migrations and first imports (a one-off start-up cost, not a call's).
            await PlainTextResponse("starting", status_code=503)(scope, receive, send)
            return
        if self.switchable and scope["type"] == "http" and scope["path"].startswith("/debug/records/"):
            await self._switch(scope["path"].rsplit("/", 1)[1])(scope, receive, send)
            return
        if scope["type"] != "websocket" or self.part == "off":
            await self.app(scope, receive, send)
            return
        if self._started is None:
            self._started = asyncio.ensure_future(self._start_store())
        await asyncio.shield(self._started)
        record = CallRecord(call_control_id=f"bench-{uuid.uuid4().hex[:12]}", started_at=time.time())
        observer = CallObserver(
            record,
            self.store.sink if self.part != "recording" else NullSink(),
            recording_dir=self.directory / "recordings" if self.part != "store" else None,
        )
        current_observer.set(observer)
        observer.touch()
        try:
            await self.app(scope, receive, send)
        finally:
            await observer.finish()

    def _switch(self, part: str) -> PlainTextResponse:
        if part not in RECORD_PARTS:
            return PlainTextResponse(
                f"unknown part {part!r}; one of {', '.join(RECORD_PARTS)}", status_code=404
            )
        self.part = part
        return PlainTextResponse(part)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--reply", required=True, help="8 kHz mono 16-bit WAV")
    parser.add_argument("--greeting", default=None, help="8 kHz mono 16-bit WAV")
    parser.add_argument("--stop-secs", type=float, default=0.2)
    parser.add_argument(
        "--records", default=None, help="keep records (SQLite) and recordings in this directory"
    )
    parser.add_argument(
        "--switchable",
        action="store_true",
        help="with --records: GET /debug/records/off|store|recording|both sets what the next calls get",
    )
    args = parser.parse_args(argv)
    reply = read_pcm(args.reply)
    greeting = read_pcm(args.greeting) if args.greeting else None
    SileroVADModel.shared()  # load the VAD model now, not on the first call
    freeze_startup_heap()  # as `callpipe serve` does once its models are loaded
    space_full_collections()  # and as it does at start-up
    app: Any = create_app(reply, greeting, args.stop_secs)
    if args.records:
        app = RecordsOn(app, Path(args.records), switchable=args.switchable)
    loop = "uvloop" if importlib.util.find_spec("uvloop") is not None else "auto"
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", loop=loop, ws_max_size=262144
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
