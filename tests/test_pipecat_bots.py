"""callpipe's own Pipecat-style bots (``examples/pipecat_style``): the names and shapes of Pipecat's guide.

The four bots (Pipecat 1.0 and 1.4 styles, dial-in and dial-out) use every import path and
name that Pipecat's Telnyx example bots use; each holds a simulated call against the local
provider fakes (reached through the base-URL environment variables): a greeting (dial-in)
or the callee's hello (dial-out), an answer, the hang-up. Dial-out runs through
``outbound_server.py``, a server of the user's own, so ``create_transport`` reads the
handshake outside ``callpipe serve``; its ``/start`` places the call with the fake Telnyx
API, whose simulated callee fetches ``/answer`` and streams.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import httpx
import pytest

from callpipe.server.background import BackgroundServer, free_port
from callpipe.sim.caller import CallerTurn
from callpipe.sim.fake_api import FakeTelnyxSimulator, create_fake_telnyx_app
from tests.pipecat_harness import (
    HANG_UP_AFTER_SECS,
    check_call,
    inbound_call,
    load_module,
    provider_fakes,
    unload,
)

BOTS = Path(__file__).resolve().parent.parent / "examples" / "pipecat_style"

# What Pipecat's four Telnyx example bots and their server import (module after the package
# name -> names), as a Pipecat user's port needs them.
PIPECAT_GUIDE_IMPORTS = {
    "audio.vad.silero": {"SileroVADAnalyzer"},
    "frames.frames": {"LLMRunFrame"},
    "pipeline.pipeline": {"Pipeline"},
    "pipeline.runner": {"PipelineRunner"},
    "pipeline.task": {"PipelineParams", "PipelineTask"},
    "pipeline.worker": {"PipelineParams", "PipelineWorker"},
    "processors.aggregators.llm_context": {"LLMContext"},
    "processors.aggregators.llm_response_universal": {"LLMContextAggregatorPair", "LLMUserAggregatorParams"},
    "runner.types": {"RunnerArguments", "WebSocketRunnerArguments"},
    "runner.utils": {"create_transport", "parse_telephony_websocket"},
    "runner.run": {"main"},
    "serializers.telnyx": {"TelnyxFrameSerializer"},
    "services.cartesia.tts": {"CartesiaTTSService"},
    "services.deepgram.stt": {"DeepgramSTTService"},
    "services.openai.llm": {"OpenAILLMService"},
    "transports.base_transport": {"BaseTransport"},
    "transports.websocket.fastapi": {"FastAPIWebsocketParams", "FastAPIWebsocketTransport"},
    "workers.runner": {"WorkerRunner"},
}


def _imports(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("callpipe."):
            found.setdefault(node.module.removeprefix("callpipe."), set()).update(a.name for a in node.names)  # type: ignore[union-attr]
    return found


def test_the_bots_use_every_name_of_pipecats_examples() -> None:
    used: dict[str, set[str]] = {}
    for path in BOTS.glob("*.py"):
        for module, names in _imports(path).items():
            used.setdefault(module, set()).update(names)
    for module, names in PIPECAT_GUIDE_IMPORTS.items():
        assert names <= used.get(module, set()), (
            f"callpipe.{module}: {names - used.get(module, set())} unused"
        )


@pytest.mark.slow
@pytest.mark.parametrize("bot", ["inbound_bot.py", "inbound_bot_v1.py"])
async def test_inbound_bot(bot: str, speech_8k: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    with provider_fakes(monkeypatch) as fakes:
        result = await inbound_call(BOTS / bot, speech_8k)
        await check_call(result, fakes, greets_first=True)
    assert fakes.openai.requests[0].body["messages"][0]["content"].startswith("You take phone calls")


@pytest.mark.slow
@pytest.mark.parametrize("bot", ["outbound_bot", "outbound_bot_v1"])
async def test_outbound_bot_through_a_server_of_your_own(
    bot: str, speech_8k: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    simulator = FakeTelnyxSimulator(
        callee_script=lambda call: [CallerTurn(audio=speech_8k, quiet_secs=1.0)],
        callee_silence_secs=HANG_UP_AFTER_SECS,
    )
    port = free_port()
    for name, value in {
        "TELNYX_ACCOUNT_SID": "AC-test",
        "TELNYX_APPLICATION_SID": "app-1",
        "TELNYX_PHONE_NUMBER": "+15550009999",
        "PUBLIC_URL": f"http://127.0.0.1:{port}",
        "OUTBOUND_API_KEY": "start-key",
        "OUTBOUND_BOT": bot,
    }.items():
        monkeypatch.setenv(name, value)
    server_file = BOTS / "outbound_server.py"
    with (
        provider_fakes(monkeypatch) as fakes,
        BackgroundServer(create_fake_telnyx_app("test-key", simulator=simulator)) as telnyx,
    ):
        monkeypatch.setenv("TELNYX_API_KEY", "test-key")
        monkeypatch.setenv("TELNYX_API_BASE_URL", telnyx.base_url + "/v2")
        module = load_module(server_file, f"outbound_server_{bot}")
        try:
            with BackgroundServer(module.app, port=port) as server:
                async with httpx.AsyncClient() as http:
                    refused = await http.post(
                        server.base_url + "/start", json={"phone_number": "+15551230000"}
                    )
                    assert refused.status_code == 401
                    started = await http.post(
                        server.base_url + "/start",
                        json={"phone_number": "+15551230000", "body": {"customer": "Zoë"}},
                        headers={"Authorization": "Bearer start-key"},
                    )
                assert started.status_code == 200, started.text
                await asyncio.wait_for(_wait_for_session(simulator), 10)
                session = next(iter(simulator.sessions.values()))
                await session.wait_finished(60)
        finally:
            unload(server_file.parent)
    assert session.result is not None, session.errors
    await check_call(session.result, fakes, greets_first=False)


async def _wait_for_session(simulator: FakeTelnyxSimulator) -> None:
    while not simulator.sessions:  # noqa: ASYNC110 - the simulator has no "call placed" event
        await asyncio.sleep(0.02)
