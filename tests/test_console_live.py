"""Live calls in the console, end to end: a simulated call (and a browser call) through a real
server whose observer writes records into the real store, watched in a real Chromium.

- A simulated caller dials in through TeXML; the dashboard's live list shows the call as
  it happens, and its Hang up button ends it (through the operator control path); the call
  then appears in the list and its page renders what was said.
- ``/phone?autocall=1`` with Chromium's fake microphone talks to the built-in assistant
  (embedded Whisper, scripted receptionist, Piper): the bot's reply comes back to the page,
  the caller's words reach the record (and the page's live transcript), and the call ends
  cleanly when the page hangs up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from callpipe.pipeline import Pipeline, PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from callpipe.sim.caller import CallerTurn
from callpipe.sim.texml import place_texml_call
from tests.conftest import tone
from tests.console_support import PASSWORD, chromium, sign_in, wait_js
from tests.test_console_phone import FAKE_MIC, speech_then_silence

pytestmark = pytest.mark.slow

TEXML_SECRET = "live-texml-path-secret-0123"


def _settings(port: int, data_dir: Path) -> ServerSettings:
    return ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret="live-test-secret-Pp58",  # type: ignore[arg-type]
        callpipe_api_key=PASSWORD,  # type: ignore[arg-type]
        data_dir=str(data_dir),
        texml_path_secret=TEXML_SECRET,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )


async def _talkative_bot(runner_args: RunnerArguments) -> None:
    """Greets and answers every caller turn with words the record can show."""
    transport = create_telnyx_transport(runner_args)
    responder = CannedReplyProcessor(
        tone(1.2),
        8000,
        greeting=tone(0.8, freq=330),
        reply_words=["thanks", "for", "calling", "the", "clinic"],
        hang_up_digit="#",
    )
    params = PipelineParams(audio_in_sample_rate=8000, audio_out_sample_rate=8000)
    await PipelineRunner().run(
        PipelineTask(Pipeline([transport.input(), responder, transport.output()]), params=params)
    )


@pytest.fixture()
def live_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    port = free_port()
    with BackgroundServer(
        create_app(_talkative_bot, _settings(port, tmp_path / "data")), port=port
    ) as server:
        yield server


async def _record(
    client: httpx.AsyncClient, ccid: str, predicate: Any, timeout: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/console/api/calls/{ccid}")
        if response.status_code == 200 and predicate(response.json()):
            return dict(response.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"record of {ccid} not as expected: {response.text[:500]}")
        await asyncio.sleep(0.2)


async def test_a_live_call_shows_up_and_is_hung_up_from_the_dashboard(
    live_server: BackgroundServer, speech_8k: bytes, tmp_path: Path
) -> None:
    server = live_server
    _, caller = await place_texml_call(
        f"{server.base_url}/texml/{TEXML_SECRET}",
        from_number="+15551230001",
        to_number="+15559990000",
        max_call_secs=60,
    )
    turns = [CallerTurn(audio=speech_8k, sample_rate=8000, text="hello", quiet_secs=0.5)]
    call = asyncio.ensure_future(caller.run(turns, hang_up_after_secs=45))
    try:
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await sign_in(page, server.base_url)
            row = page.locator(
                f'#live-calls tr.live-call:has(button[data-hangup="{caller.call_control_id}"])'
            )
            await row.wait_for(timeout=15_000)
            text = await row.inner_text()
            assert "+1••••••0001" in text and "+15551230001" not in text  # masked
            # What is being said now: the bot's reply, as the caller heard it.
            await wait_js(
                page,
                "[...document.querySelectorAll('#live-calls .now-text')].some(e => e.textContent.includes('calling the clinic'))",
                15,
            )
            await page.screenshot(path=str(tmp_path / "live.png"))
            cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
            # The row shows a reply's text before the caller has heard it (heard_text comes
            # with the marks' echoes, slower on a loaded machine): hang up once it was heard.
            async with httpx.AsyncClient(base_url=server.base_url, cookies=cookies) as client:
                await _record(
                    client,
                    caller.call_control_id,
                    lambda r: any("calling the clinic" in (t.get("heard_text") or "") for t in r["turns"]),
                )
            await row.locator("button").click()
            result = await asyncio.wait_for(call, 10)
            assert result.closed_by == "bot"
            await wait_js(page, "document.querySelectorAll('#live-calls tr.live-call').length === 0", 10)
            async with httpx.AsyncClient(base_url=server.base_url, cookies=cookies) as client:
                record = await _record(
                    client, caller.call_control_id, lambda r: r["end_reason"] != "in_progress"
                )
            bot_turns = [t for t in record["turns"] if t["speaker"] == "bot"]
            assert any("calling the clinic" in (t["heard_text"] or "") for t in bot_turns), record["turns"]
            await page.goto(f"{server.base_url}/dashboard")
            await page.locator(f'#calls tr[data-id="{caller.call_control_id}"]').click()
            await page.wait_for_selector("#waveform[data-drawn]")
            assert "calling the clinic" in await page.inner_text("#transcript")
    finally:
        if not call.done():
            await caller.hang_up()
            await asyncio.wait_for(call, 10)


@pytest.fixture()
def assistant_server(tmp_path: Path) -> Iterator[BackgroundServer]:
    pytest.importorskip("faster_whisper", reason="needs callpipe[local] (the test command installs it)")
    from callpipe.services.assistant import AssistantConfig, preload_models, run_assistant

    preload_models()

    async def bot(runner_args: RunnerArguments) -> None:
        await run_assistant(runner_args, AssistantConfig(vad_stop_secs=0.4))

    port = free_port()
    with BackgroundServer(create_app(bot, _settings(port, tmp_path / "data")), port=port) as server:
        yield server


async def test_phone_call_to_the_assistant_lands_in_the_records(
    assistant_server: BackgroundServer, tmp_path: Path
) -> None:
    server = assistant_server
    # Silence while the greeting plays, then the sentence, then silence while the bot answers.
    mic = speech_then_silence(tmp_path / "mic.wav", silence_secs=20.0, before_secs=8.0)
    async with chromium(*FAKE_MIC, f"--use-file-for-fake-audio-capture={mic}") as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await sign_in(page, server.base_url, next_path="/phone?autocall=1&from=%2B15550001234")
        await wait_js(page, "window.callpipePhone.state === 'in call'", 15)
        ccid = await page.evaluate("() => window.callpipePhone.callControlId")
        # The caller's sentence shows in the page's live transcript (from the record), and
        # the bot answers it with a latency figure.
        await wait_js(page, "document.querySelector('#live-transcript li.caller') !== null", 30)
        assert "hear me" in (await page.inner_text("#live-transcript li.caller")).lower()
        await wait_js(page, "document.querySelectorAll('#live-transcript li.bot .latency').length >= 1", 30)
        # The greeting and the answer were played by the page.
        await wait_js(page, "window.callpipePhone.playedSecs > 4.0", 20)
        # Every mark is echoed once the audio before it has played (on a loaded machine
        # the last reply may still be playing here).
        echoed = "window.callpipePhone.marksEchoed === window.callpipePhone.marksReceived"
        await wait_js(page, f"{echoed} && window.callpipePhone.marksReceived > 0", 20)
        await page.click("#hangup")
        await wait_js(page, "window.callpipePhone.closeCode !== null", 10)
        stats = await page.evaluate("() => window.callpipePhone")
        assert stats["closeCode"] in (1000, 1005) and stats["state"] == "call ended"
        assert stats["marksEchoed"] == stats["marksReceived"] > 0
        cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
        async with httpx.AsyncClient(base_url=server.base_url, cookies=cookies) as client:
            record = await _record(client, ccid, lambda r: r["end_reason"] != "in_progress")
        assert record["from"] == "+15550001234"
        assert record["end_reason"] == "caller_hangup"
        caller_text = " ".join(t["text"] for t in record["turns"] if t["speaker"] == "caller").lower()
        assert "hear me" in caller_text
        assert record["recording_url"]
        assert errors == []
