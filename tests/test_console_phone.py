"""/phone in a real headless Chromium with a fake microphone, against a real server and bot.

The page captures the (fake) microphone, resamples and encodes it in an AudioWorklet,
and speaks Telnyx's media-stream protocol to the server's own ``/ws``; the bot's audio
comes back through the page's jitter buffer and its marks are echoed.
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from callpipe.pipeline import Pipeline, PipelineParams, PipelineRunner, PipelineTask
from callpipe.runner import RunnerArguments, create_telnyx_transport
from callpipe.server.app import create_app
from callpipe.server.background import BackgroundServer, free_port
from callpipe.server.settings import ServerSettings
from callpipe.sim.bots import CannedReplyProcessor
from tests.conftest import DATA, read_wav, tone
from tests.console_support import PASSWORD, chromium, sign_in, wait_js
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

FAKE_MIC = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def speech_then_silence(path: Path, silence_secs: float = 6.0, before_secs: float = 0.0) -> Path:
    """The test sentence between silences: Chromium loops the file, so the caller waits between."""
    pcm, rate = read_wav(DATA / "speech_16k.wav")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(2 * int(rate * before_secs)) + pcm + bytes(2 * int(rate * silence_secs)))
    return path


@dataclass
class BotLog:
    calls: list[dict[str, Any]] = field(default_factory=list)
    responders: list[CannedReplyProcessor] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)


def canned_bot(log: BotLog) -> Any:
    """Greets with a tone, answers each caller turn with a tone, ends on '#'."""

    async def bot(runner_args: RunnerArguments) -> None:
        log.calls.append(dict(runner_args.call_data))
        rate = int(runner_args.call_data.get("sample_rate", 8000))
        transport = create_telnyx_transport(runner_args)
        responder = CannedReplyProcessor(
            tone(0.6, rate=rate), rate, greeting=tone(1.0, rate=rate, freq=330), hang_up_digit="#"
        )
        log.responders.append(responder)
        params = PipelineParams(audio_in_sample_rate=rate, audio_out_sample_rate=rate)
        await PipelineRunner().run(
            PipelineTask(Pipeline([transport.input(), responder, transport.output()]), params=params)
        )
        log.ended.append(runner_args.call_data["call_control_id"])

    return bot


@pytest.fixture()
def phone_server(tmp_path: Path) -> Iterator[tuple[BackgroundServer, BotLog]]:
    log = BotLog()
    port = free_port()
    settings = ServerSettings(
        public_url=f"http://127.0.0.1:{port}",
        callpipe_secret="phone-test-secret-Vv73",  # type: ignore[arg-type]
        callpipe_api_key=PASSWORD,  # type: ignore[arg-type]
        data_dir=str(tmp_path / "data"),
        _env_file=None,  # type: ignore[call-arg]
    )
    with BackgroundServer(create_app(canned_bot(log), settings), port=port) as server:
        yield server, log


@pytest.mark.parametrize("hd", [False, True], ids=["pcmu-8k", "l16-16k"])
async def test_autocall_talks_to_the_bot_over_the_phone_path(
    phone_server: tuple[BackgroundServer, BotLog], tmp_path: Path, hd: bool
) -> None:
    server, log = phone_server
    mic = speech_then_silence(tmp_path / "mic.wav")
    query = "autocall=1&from=%2B15557654321&params=name%3DMaria%2C%20campaign%3Dc-7" + ("&hd=1" if hd else "")
    async with chromium(*FAKE_MIC, f"--use-file-for-fake-audio-capture={mic}") as browser:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await sign_in(page, server.base_url, next_path=f"/phone?{query}")
        await wait_js(page, "window.callpipePhone.state === 'in call'", 15)
        # The greeting and at least one reply (to the caller's sentence) are played.
        await wait_js(page, "window.callpipePhone.playedSecs > 1.4", 20)
        stats = await page.evaluate("() => window.callpipePhone")
        assert stats["mediaReceived"] > 20 and stats["marksReceived"] >= 1, stats
        await wait_js(page, "window.callpipePhone.marksEchoed === window.callpipePhone.marksReceived", 10)
        responder = log.responders[0]
        assert responder.turns >= 1, "the bot never heard the caller's sentence"
        call = log.calls[0]
        assert call["from"] == "+15557654321"
        assert call["custom_parameters"] == {"name": "Maria", "campaign": "c-7"}
        assert call["call_control_id"] == stats["callControlId"]
        assert call["outbound_encoding"] == ("L16" if hd else "PCMU")
        if hd:
            # Mute sends silence, like a phone: the stream keeps its 20 ms pace.
            await page.click("#mute")
            assert await page.get_attribute("#mute", "aria-pressed") == "true"
            sent = await page.evaluate("() => window.callpipePhone.mediaSent")
            await wait_js(page, f"window.callpipePhone.mediaSent > {sent + 25}", 5)
            await page.click("#hangup")  # the caller hangs up: stop, then close
        else:
            await page.click('#dialpad button[data-digit="#"]')  # DTMF: the bot ends the call
        await wait_js(page, "window.callpipePhone.closeCode !== null", 10)
        stats = await page.evaluate("() => window.callpipePhone")
        assert stats["closeCode"] in (1000, 1005), stats
        assert stats["state"] == "call ended"
        # About 50 frames a second were sent while the call was up.
        assert stats["mediaSent"] > 100, stats
        if not hd:
            assert responder.dtmf == ["#"]
        assert errors == []
    # The page sees the close a moment before the bot's function returns.
    await wait_until(lambda: bool(log.ended), timeout=10)
    assert log.ended == [stats["callControlId"]]


async def test_a_refused_microphone_is_explained(phone_server: tuple[BackgroundServer, BotLog]) -> None:
    server, log = phone_server
    async with chromium("--use-fake-device-for-media-stream") as browser:
        context = await browser.new_context(permissions=[])
        page = await context.new_page()
        await sign_in(page, server.base_url, next_path="/phone?autocall=1")
        await wait_js(page, "window.callpipePhone.error === 'microphone'", 15)
        text = await page.inner_text("#phone-message")
        assert "Microphone access was refused" in text
        assert await page.inner_text("#phone-status") == "not connected"
    assert log.calls == []


def test_worklet_codec_matches_g711() -> None:
    """The page's μ-law encoder is the worklet's; check its table against ours on all codes."""
    from callpipe.audio import get_codec

    source = (Path(__file__).parents[1] / "src/callpipe/console/static/phone-worklet.js").read_text()
    assert "muLawEncode" in source and "MU_TABLE" in source
    codec = get_codec("PCMU", 8000)
    decoded = np.frombuffer(codec.new_instance().decode(bytes(range(256))), dtype=np.int16)
    # The JS table formula, evaluated here, gives the same 256 values.
    values = []
    for i in range(256):
        u = ~i & 0xFF
        exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
        magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
        values.append(-magnitude if u & 0x80 else magnitude)
    assert values == decoded.tolist()
