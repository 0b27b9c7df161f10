"""Pipecat's import paths and API shapes on callpipe (issue 11): the port is one substitution."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from callpipe.audio.vad import SileroVADAnalyzer, VADParams
from callpipe.frames import AudioRawFrame, LLMRunFrame, OutputAudioRawFrame
from callpipe.pipeline import Pipeline, PipelineTask
from callpipe.pipeline.vad_placement import NO_VAD_WARNING
from callpipe.pipeline.worker import PipelineWorker, WorkerRunner
from callpipe.runner import RunnerArguments, TelnyxCallData
from callpipe.server.background import free_port
from callpipe.services.cartesia import CartesiaTTSService
from callpipe.services.deepgram import DeepgramSTTService
from callpipe.services.llm import LLMContext, LLMContextAggregatorPair, LLMUserAggregatorParams
from callpipe.services.openai import OpenAILLMService

STYLE_BOT = Path(__file__).resolve().parent.parent / "examples" / "pipecat_style" / "inbound_bot.py"

# Every module path (after the package name) and name a Pipecat Telnyx bot imports.
PIPECAT_IMPORTS = {
    "audio.vad.silero": ["SileroVADAnalyzer"],
    "audio.vad.vad_analyzer": ["VADParams"],
    "frames.frames": ["LLMRunFrame", "EndFrame", "TTSSpeakFrame", "AudioRawFrame", "TranscriptionFrame"],
    "pipeline.pipeline": ["Pipeline"],
    "pipeline.runner": ["PipelineRunner"],
    "pipeline.task": ["PipelineParams", "PipelineTask"],
    "pipeline.worker": ["PipelineParams", "PipelineWorker"],
    "workers.runner": ["WorkerRunner"],
    "processors.aggregators.llm_context": ["LLMContext"],
    "processors.aggregators.llm_response_universal": ["LLMContextAggregatorPair", "LLMUserAggregatorParams"],
    "processors.frame_processor": ["FrameDirection", "FrameProcessor"],
    "runner.types": ["RunnerArguments", "WebSocketRunnerArguments", "TelnyxCallData", "CallData"],
    "runner.utils": ["create_transport", "parse_telephony_websocket"],
    "runner.run": ["main"],
    "serializers.telnyx": ["TelnyxFrameSerializer"],
    "transports.base_transport": ["BaseTransport"],
    "transports.websocket.fastapi": ["FastAPIWebsocketParams", "FastAPIWebsocketTransport"],
    "services.openai.llm": ["OpenAILLMService"],
    "services.deepgram.stt": ["DeepgramSTTService"],
    "services.cartesia.tts": ["CartesiaTTSService"],
}


@pytest.mark.parametrize("path", sorted(PIPECAT_IMPORTS))
def test_every_pipecat_import_path_exists(path: str) -> None:
    module = importlib.import_module(f"callpipe.{path}")
    for name in PIPECAT_IMPORTS[path]:
        assert hasattr(module, name), f"callpipe.{path} has no {name}"


def test_vad_defaults_are_pipecats() -> None:
    # Pipecat's values (pipecat/audio/vad/vad_analyzer.py: VAD_CONFIDENCE, VAD_START_SECS,
    # VAD_STOP_SECS, VAD_MIN_VOLUME).
    assert VADParams() == VADParams(confidence=0.7, start_secs=0.2, stop_secs=0.2, min_volume=0.6)
    assert SileroVADAnalyzer().params.stop_secs == 0.2


def test_pair_unpacks_and_keeps_its_methods() -> None:
    vad = SileroVADAnalyzer()
    pair = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=vad))
    user, assistant = pair
    assert user is pair.user() and assistant is pair.assistant()
    assert pair.user().vad_analyzer is vad
    assert LLMContextAggregatorPair(LLMContext()).user().transcript_timeout_secs == 1.5


def test_service_settings_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "DEEPGRAM_BASE_URL", "CARTESIA_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    llm = OpenAILLMService(
        api_key="k", settings=OpenAILLMService.Settings(system_instruction="Be brief.", model="m-1")
    )
    context = LLMContext([{"role": "developer", "content": "Introduce yourself."}])
    request = llm.build_request(context)
    assert request["model"] == "m-1"
    assert request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Introduce yourself."},
    ]
    assert context.messages == [{"role": "developer", "content": "Introduce yourself."}]  # not stored
    tts = CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice="v-1"))
    assert (tts.voice_id, tts.url) == ("v-1", "wss://api.cartesia.ai/tts/websocket")
    assert CartesiaTTSService(api_key="k", voice_id="v-2").voice_id == "v-2"  # the older keyword
    assert (
        CartesiaTTSService("k", voice_id="v", url="wss://c.test/tts/websocket").url
        == "wss://c.test/tts/websocket"
    )
    stt = DeepgramSTTService(api_key="k", audio_passthrough=True)
    assert stt.audio_passthrough and stt.base_url == "wss://api.deepgram.com"
    assert DeepgramSTTService(api_key="k", base_url="api.example.test").base_url == "wss://api.example.test"
    assert DeepgramSTTService(api_key="k", base_url="http://127.0.0.1:9/").base_url == "ws://127.0.0.1:9"


def test_base_urls_and_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("DEEPGRAM_BASE_URL", "ws://127.0.0.1:2")
    monkeypatch.setenv("CARTESIA_BASE_URL", "ws://127.0.0.1:3")
    monkeypatch.setenv("CARTESIA_API_KEY", "c-env")
    monkeypatch.setenv("DEEPGRAM_API_KEY", "d-env")
    assert OpenAILLMService().base_url == "http://127.0.0.1:1/v1"
    assert OpenAILLMService(base_url="http://other.test/v1").base_url == "http://other.test/v1"  # code wins
    assert DeepgramSTTService().base_url == "ws://127.0.0.1:2"
    assert CartesiaTTSService(voice_id="v").url == "ws://127.0.0.1:3/tts/websocket"


def test_audio_raw_frame_is_constructible_as_in_pipecat() -> None:
    frame = AudioRawFrame(audio=b"\x01\x00" * 160, sample_rate=8000, num_channels=1)
    assert isinstance(frame, AudioRawFrame) and isinstance(frame, OutputAudioRawFrame)
    assert (frame.num_frames, frame.duration) == (160, 0.02)
    with pytest.raises(AttributeError):  # derived frames stay slotted
        frame.extra = 1  # type: ignore[attr-defined]


def test_call_data_answers_pipecat_attributes_and_dict_keys() -> None:
    data = TelnyxCallData(
        {
            "stream_id": "s-1",
            "call_control_id": "v3:c",
            "from": "+1555",
            "to": "+1666",
            "outbound_encoding": "PCMU",
            "custom_parameters": {"a": "1"},
        }
    )
    assert (data.from_number, data.to_number, data.call_id, data.stream_id) == (
        "+1555",
        "+1666",
        "v3:c",
        "s-1",
    )
    assert data.outbound_encoding == "PCMU" and data["from"] == "+1555" and data.body == {"a": "1"}
    assert data.client_state is None  # missing keys read as None, as in Pipecat
    args = RunnerArguments(websocket=None, call_data={"from": "+1"}, body=None)  # type: ignore[arg-type]
    assert (
        isinstance(args.call_data, TelnyxCallData) and args.call_data.from_number == "+1" and args.body == {}
    )
    assert not RunnerArguments(websocket=None).call_data  # type: ignore[arg-type]


async def test_a_pipeline_with_an_aggregator_but_no_vad_warns(caplog: pytest.LogCaptureFixture) -> None:
    user, _ = LLMContextAggregatorPair(LLMContext())
    task = PipelineTask(Pipeline([user]))
    with caplog.at_level(logging.WARNING, logger="callpipe.pipeline"):
        runner = asyncio.ensure_future(task.run())
        await asyncio.sleep(0)
        await task.cancel()
        await runner
    assert NO_VAD_WARNING in caplog.text
    caplog.clear()
    user, _ = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    task = PipelineTask(Pipeline([user]))
    with caplog.at_level(logging.WARNING, logger="callpipe.pipeline"):
        runner = asyncio.ensure_future(task.run())
        await asyncio.sleep(0)
        await task.cancel()
        await runner
    assert NO_VAD_WARNING not in caplog.text


async def test_worker_runner_runs_added_workers() -> None:
    seen: list[object] = []
    user, _ = LLMContextAggregatorPair(LLMContext())
    worker = PipelineWorker(Pipeline([user]))

    @worker.event_handler("on_pipeline_started")
    async def started(w: PipelineWorker) -> None:
        seen.append(w)
        await w.queue_frames([LLMRunFrame()])
        await w.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await asyncio.wait_for(runner.run(), 5)
    assert seen == [worker] and worker.has_finished()
    with pytest.raises(RuntimeError, match="add_workers"):
        await WorkerRunner().run()


# ------------------------------------------------------------ the dev runner


def test_dev_runner_flags_map_to_callpipe_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    from callpipe.runner.run import runner_settings

    monkeypatch.delenv("PUBLIC_URL", raising=False)
    monkeypatch.setenv("CALLPIPE_SECRET", "s" * 32)
    args, overrides = runner_settings(["-t", "telnyx", "--proxy", "https://abc.ngrok.io/"])
    assert (args.host, args.port) == ("localhost", 7860)  # Pipecat's defaults
    assert overrides == {"public_url": "https://abc.ngrok.io"}
    args, overrides = runner_settings(["-x", "bot.example.com", "--port", "8000"])
    assert args.port == 8000 and overrides["public_url"] == "https://bot.example.com"
    monkeypatch.delenv("CALLPIPE_SECRET")
    _, overrides = runner_settings([])
    assert overrides["public_url"] == "http://localhost:7860" and len(overrides["callpipe_secret"]) >= 32


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-t", "twilio"], "Telnyx calls only"),
        (["-t", "daily"], "use -t telnyx"),
        (["--direct"], "Daily room"),
        (["--esp32"], "Telnyx calls only"),
        (["--whatsapp"], "WhatsApp"),
        (["-f", "downloads"], "downloads folder"),
        (["--workers", "2"], "unknown option"),
    ],
)
def test_dev_runner_says_why_a_flag_differs(argv: list[str], message: str) -> None:
    from callpipe.runner.run import runner_settings

    with pytest.raises(SystemExit, match=message):
        runner_settings(argv)


@pytest.mark.slow
def test_python_bot_py_serves_the_bot(tmp_path: Path) -> None:
    """``python inbound_bot.py -t telnyx --proxy HOST`` (Pipecat's command) runs callpipe's server."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PUBLIC_URL", "CALLPIPE_"))}
    command = [sys.executable, str(STYLE_BOT), "-t", "telnyx", "--proxy", "bot.example.com"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # a fresh interpreter loading the models, on a busy machine
        while True:
            assert process.poll() is None, "the runner exited"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)  # a separate process: there is nothing to await
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert "https://bot.example.com/texml" in output
    assert "CALLPIPE_SECRET is not set" in output


async def test_a_stream_without_token_is_told_what_to_paste(caplog: pytest.LogCaptureFixture) -> None:
    import secrets

    import websockets

    from callpipe.server.app import create_app
    from callpipe.server.background import BackgroundServer
    from callpipe.server.settings import ServerSettings
    from callpipe.server.tokens import MISSING_TOKEN_REASON

    async def bot(runner_args: RunnerArguments) -> None:
        raise AssertionError("no bot may run for a stream without a token")

    settings = ServerSettings(
        public_url="https://bot.example.com",
        callpipe_secret=secrets.token_urlsafe(16),  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    with BackgroundServer(create_app(bot, settings)) as server, caplog.at_level(logging.WARNING):
        # What a TeXML Bin copied from Pipecat's guide opens: wss://HOST/ws, no token.
        async with websockets.connect(server.ws_url + "/ws") as ws:
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
    assert (ws.close_code, ws.close_reason) == (1008, MISSING_TOKEN_REASON)
    assert "callpipe texml" in caplog.text and "<Pause" in caplog.text


def test_more_settings_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEEPGRAM_BASE_URL", raising=False)
    assert (
        CartesiaTTSService(api_key="k", settings=CartesiaTTSService.Settings(voice_id="v-3")).voice_id
        == "v-3"
    )
    stt = DeepgramSTTService(
        api_key="k",
        settings=DeepgramSTTService.Settings(
            model="nova-2", endpointing=False, smart_format=False, extra={"keyterm": "callpipe"}
        ),
    )
    query = stt.url.split("?", 1)[1].split("&")
    assert {"model=nova-2", "endpointing=false", "smart_format=false", "keyterm=callpipe"} <= set(query)
    assert (
        "endpointing=250"
        in DeepgramSTTService(api_key="k", settings=DeepgramSTTService.Settings(endpointing=250)).url
    )
    with pytest.raises(AttributeError):
        _ = TelnyxCallData()._private  # only public names read as call data


async def test_transport_helpers_say_what_to_do_outside_callpipe_serve() -> None:
    from types import SimpleNamespace

    from starlette.datastructures import State

    from callpipe.runner import create_telnyx_transport, create_transport

    # A server of your own: nothing parsed the handshake, so the synchronous helper
    # cannot build a serializer; it says which call reads it instead of a KeyError.
    args = RunnerArguments(websocket=SimpleNamespace(state=State()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="await create_transport"):
        create_telnyx_transport(args)
    # The handshake already parsed on the socket (here: by hand) is used by both helpers,
    # and a params dict without a "telnyx" entry is a clear error.
    handshake = {
        "stream_id": "s-1",
        "call_control_id": "v3:c",
        "outbound_encoding": "PCMU",
        "sample_rate": 8000,
    }
    args.websocket.state.callpipe_telephony = handshake
    with pytest.raises(ValueError, match="'telnyx'"):
        await create_transport(args, {"twilio": lambda: None})
    assert args.call_data.call_id == "v3:c"
