"""A bot written exactly like Pipecat's Telnyx guide runs under `callpipe serve` unchanged."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from callpipe.audio.vad import SileroVADAnalyzer, VADParams
from callpipe.pipeline import Pipeline, PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, parse_telephony_websocket
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn
from callpipe.sim.texml import place_texml_call
from callpipe.telnyx import TelnyxFrameSerializer
from callpipe.transports.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from tests.conftest import tone

SEEN: list[dict[str, Any]] = []


async def guide_bot(runner_args: RunnerArguments) -> None:
    # Straight from the guide: the bot parses the handshake itself.
    transport_type, call_data = await parse_telephony_websocket(runner_args.websocket)
    SEEN.append({"transport_type": transport_type, **call_data})
    serializer = TelnyxFrameSerializer(
        stream_id=call_data["stream_id"],
        outbound_encoding=call_data["outbound_encoding"],
        inbound_encoding="PCMU",
        call_control_id=call_data["call_control_id"],
        api_key=os.getenv("TELNYX_API_KEY"),
    )
    transport = FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.2)),
            serializer=serializer,
        ),
    )
    pipeline = Pipeline(
        [transport.input(), CannedReplyProcessor(tone(0.5), 8000, greeting=tone(0.4)), transport.output()]
    )
    task = PipelineTask(
        pipeline, params=PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: Any, client: Any) -> None:
        await task.cancel()

    await PipelineRunner(handle_sigint=False).run(task)


# The voice URL's secret path segment authenticates Telnyx's TeXML fetch (TEXML_PATH_SECRET).
PATH_SECRET = secrets.token_urlsafe(18)


async def test_guide_style_bot_runs_under_the_server(speech_8k: bytes) -> None:
    SEEN.clear()
    port = free_port()
    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret=secrets.token_urlsafe(16),  # type: ignore[arg-type]
        texml_path_secret=PATH_SECRET,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    with BackgroundServer(create_app(guide_bot, settings), port=port) as server:
        _, caller = await place_texml_call(
            f"{server.base_url}/texml/{PATH_SECRET}?campaign_id=c-7",
            from_number="+15550001111",
            to_number="+15550002222",
        )
        result = await asyncio.wait_for(caller.run([CallerTurn(audio=speech_8k)], hang_up_after_secs=0.8), 30)
    assert SEEN and SEEN[0]["transport_type"] == "telnyx"
    assert SEEN[0]["from"] == "+15550001111" and SEEN[0]["to"] == "+15550002222"
    assert SEEN[0]["query_params"] == {"campaign_id": "c-7"}  # no token or internals leak into it
    assert result.greeting_latency is not None
    assert result.turns[0].response_latency is not None
